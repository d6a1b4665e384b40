"""exports.py
==========

The audit export's file formats, shared by ``sonoshot audit export`` and the console's audit
page: one row per study (:class:`sonoshot.db.queries.AuditRow`), CSV or JSON, times in UTC.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any


def utc_text(moment: datetime | None) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ``, or ``-`` for None."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else "-"


def audit_text(rows: Sequence[Any], fmt: str) -> str:
    """The audit rows as ``csv`` (a header row, even without rows) or ``json`` (a list).

    Raises
    ------
    ValueError
        If ``fmt`` is neither.
    """
    from sonoshot.db.queries import AuditRow

    fields = [f.name for f in dataclasses.fields(AuditRow)]
    records = [{k: utc_text(v) if isinstance(v, datetime) else v for k, v in dataclasses.asdict(r).items()}
               for r in rows]
    if fmt == "json":
        return json.dumps(records, indent=2) + "\n"
    if fmt != "csv":
        raise ValueError(f'Argument "fmt" must be csv or json; got {fmt!r}.')
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()
