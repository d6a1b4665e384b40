"""logs.py
=======

Logging set-up: plain text or JSON lines. Log records carry UIDs, AE titles, pseudonyms and
counts only; no module formats a patient name, ID or birth date into a message.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time

from sonoshot.config import LoggingConfig


class JsonLines(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and exception text)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(config: LoggingConfig) -> None:
    """Send sonoshot's log to stderr at the configured level and format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if config.json else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level)
    for noisy in ("pynetdicom", "apscheduler", "alembic", "highdicom"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # Real devices write invalid values (UIDs with leading zeros); reading stays lenient and quiet.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.getLogger("pynetdicom.utils").setLevel(logging.ERROR)


class RateLimitedLog:
    """Warnings about what peers do (refused connections, malformed PDUs), at most ``burst`` lines
    per ``key`` in each ``window_s``: a flood from one misbehaving host cannot flood the journal.
    When a window had more, the next line of that key says how many were left out.
    """

    def __init__(self, logger: logging.Logger, burst: int = 20, window_s: float = 60.0) -> None:
        self.logger, self.burst, self.window_s = logger, burst, window_s
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int, int]] = {}  # key -> (window start, logged, left out)

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            start, logged, left_out = self._windows.get(key, (now, 0, 0))
            if now - start >= self.window_s:
                if left_out:
                    self.logger.warning("%d more like the next one in the last %.0f s were not logged (%s)",
                                        left_out, now - start, key)
                start, logged, left_out = now, 0, 0
            if logged >= self.burst:
                self._windows[key] = (start, logged, left_out + 1)
                return
            self._windows[key] = (start, logged + 1, left_out)
        self.logger.warning(message, *args)
