"""logs.py
=======

Logging set-up: plain text or JSON lines. Log records carry UIDs, AE titles, pseudonyms and
counts only; no module formats a patient name, ID or birth date into a message.
"""

from __future__ import annotations

import json
import logging
import sys

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
    for noisy in ("pynetdicom", "apscheduler", "alembic", "highdicom", "procrastinate", "botocore", "boto3",
                  "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # Real devices write invalid values (UIDs with leading zeros); reading stays lenient and quiet.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.getLogger("pynetdicom.utils").setLevel(logging.ERROR)
