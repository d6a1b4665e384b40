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
    handler.addFilter(PeerInputNoise())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level)
    for noisy in ("pynetdicom", "apscheduler", "alembic", "highdicom"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # Real devices write invalid values (UIDs with leading zeros); reading stays lenient and quiet.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.getLogger("pynetdicom.utils").setLevel(logging.ERROR)


class PeerInputNoise(logging.Filter):
    """pynetdicom logs what it cannot decode from a peer (an AE title that is not ASCII, a DIMSE
    message it cannot convert, a non-conformant UID) with a traceback, once per PDU: a flood a
    peer can cause. Those records keep one line, at most 20 a minute per message; sonoshot's own
    refusal lines (sonoshot.dicom_io.upper_layer) say what happened. pynetdicom's reports of
    exceptions in sonoshot's own handlers (pynetdicom.events, pynetdicom.association) stay whole.
    """

    PEER_INPUT = ("pynetdicom.utils", "pynetdicom.dimse", "pynetdicom.presentation", "pynetdicom.pdu",
                  "pynetdicom.pdu_items", "pynetdicom.pdu_primitives", "pynetdicom.acse", "pynetdicom.dul",
                  "pynetdicom.fsm", "pynetdicom.dsutils")

    def __init__(self, burst: int = 20, window_s: float = 60.0) -> None:
        super().__init__()
        self.burst, self.window_s = burst, window_s
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name not in self.PEER_INPUT:
            return True
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        key, now = (record.name, record.msg), time.monotonic()
        with self._lock:
            start, count = self._windows.get(key, (now, 0))
            if now - start >= self.window_s:
                start, count = now, 0
            self._windows[key] = (start, count + 1)
            if len(self._windows) > 1000:  # messages built from peer data are all different
                self._windows.clear()
        return count < self.burst


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
