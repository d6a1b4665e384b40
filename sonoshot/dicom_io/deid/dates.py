"""dates.py
========

Shift DA and DT values by a whole number of days (PS3.15 E.3.6, Retain Longitudinal Temporal
Information with Modified Dates). Times (TM) are unchanged by a whole-day shift, and the time
and UTC offset parts of a DT (``&ZZXX``) are kept as they are. Partial values keep their
precision: ``YYYY`` and ``YYYYMM`` shift the first day of the period and keep as many digits.
DA ranges (``A-B``) are shifted at both ends.
"""

from __future__ import annotations

import re
from datetime import date, timedelta

_DA = re.compile(r"^(\d{4})(\d{2})?(\d{2})?$")


class DateValueError(ValueError):
    """A DA or DT value cannot be parsed, so it cannot be shifted."""


def shift_da(value: str, days: int) -> str:
    """Shift one DA value (``YYYYMMDD``, partial ``YYYY``/``YYYYMM``, or a range ``A-B``).

    Raises
    ------
    DateValueError
        If the value is not a date of those forms.
    """
    value = value.strip()
    if not value:
        return value
    if "-" in value:
        return "-".join(shift_da(part, days) if part else "" for part in value.split("-", 1))
    match = _DA.match(value)
    if not match:
        raise DateValueError(f"not a DICOM date: {len(value)} characters")
    year, month, day = match.group(1), match.group(2) or "01", match.group(3) or "01"
    try:
        shifted = date(int(year), int(month), int(day)) + timedelta(days=days)
    except (ValueError, OverflowError) as exc:
        raise DateValueError(f"not a valid calendar date: {exc}") from exc
    return shifted.strftime("%Y%m%d")[: len(value)]


def shift_dt(value: str, days: int) -> str:
    """Shift the date part of one DT value, keeping time, fraction and UTC offset as they are.

    Raises
    ------
    DateValueError
        If the value does not start with a DICOM date.
    """
    value = value.strip()
    if not value:
        return value
    digits = len(value) - len(value.lstrip("0123456789"))
    date_digits = min(digits, 8)
    if date_digits not in (4, 6, 8):
        raise DateValueError("DT value does not start with YYYY, YYYYMM or YYYYMMDD")
    return shift_da(value[:date_digits], days) + value[date_digits:]
