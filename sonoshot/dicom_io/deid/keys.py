"""keys.py
=======

The secret key and everything derived from it: keyed UIDs, patient pseudonyms and the
per-patient date offset. All are HMAC-SHA256 of the input under the key, so the same input and
key give the same output in every run, association and restart, and nobody without the key can
link an output back to its input.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

MIN_KEY_BYTES = 32
MAX_DATE_SHIFT_DAYS = 3650  # offsets are drawn from -3650 .. -1 days


class DeidKeyError(ValueError):
    """The de-identification key file is missing, unreadable, not hex, or too short."""


def load_key(path: str | Path) -> bytes:
    """Read the key written by ``sonoshot keygen`` (hex text, at least 32 bytes).

    Raises
    ------
    DeidKeyError
        If the file is missing or unreadable, is not hex text, or holds fewer than 32 bytes.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError as exc:
        raise DeidKeyError(f"de-identification key {path} does not exist: run `sonoshot keygen`") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DeidKeyError(f"de-identification key {path} cannot be read: {exc}") from exc
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise DeidKeyError(f"de-identification key {path} is not hex text") from exc
    if len(key) < MIN_KEY_BYTES:
        raise DeidKeyError(
            f"de-identification key {path} has {len(key)} bytes, at least {MIN_KEY_BYTES} are required"
        )
    return key


def _digest(key: bytes, purpose: str, value: str) -> bytes:
    if len(key) < MIN_KEY_BYTES:
        raise DeidKeyError(f"key has {len(key)} bytes, at least {MIN_KEY_BYTES} are required")
    return hmac.new(key, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()


def keyed_uid(key: bytes, uid: str) -> str:
    """``2.25.<n>``: ``n`` is a 128-bit UUID (version 8, RFC 9562) from HMAC-SHA256 of ``uid``.

    Raises
    ------
    DeidKeyError
        If ``key`` is shorter than 32 bytes.
    """
    raw = bytearray(_digest(key, "uid", uid.strip().rstrip("\x00"))[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8: vendor-specific
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 9562 variant
    return f"2.25.{int.from_bytes(raw, 'big')}"


def patient_pseudonym(key: bytes, patient_id: str) -> str:
    """A keyed pseudonym for a Patient ID: ``P`` and 20 decimal digits (fits LO and PN).

    Raises
    ------
    DeidKeyError
        If ``key`` is shorter than 32 bytes.
    """
    number = int.from_bytes(_digest(key, "patient", patient_id.strip())[:9], "big")
    return f"P{number % 10**20:020d}"


def date_offset_days(key: bytes, patient_id: str) -> int:
    """The keyed per-patient date shift, from -3650 to -1 days.

    Raises
    ------
    DeidKeyError
        If ``key`` is shorter than 32 bytes.
    """
    number = int.from_bytes(_digest(key, "date-offset", patient_id.strip())[:8], "big")
    return -(1 + number % MAX_DATE_SHIFT_DAYS)
