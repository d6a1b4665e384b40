"""feedback.py
===========

Ground truth in: a label per study (``normal`` / ``abnormal``), optionally a short finding text
and a source, from three doors (``sonoshot feedback``, a CSV import, the web console). Every
label is stored with who gave it, through which door and from where, and is an audit event.

Finding text is never stored with PHI. It is refused (not stripped: the person writing it
should know, and a half-removed name is still a name) when it

- holds any identifying string of the study's own received headers (patient names and their
  parts, IDs, accession numbers, birth dates in common formats: the de-identifier's
  :func:`~sonoshot.dicom_io.deid.phi.collect_phi`), exactly or as a close misspelling;
- looks like a date or an identifier (a run of 5 or more digits), whoever's it is;
- cannot be screened because the study's originals are no longer in the spool;
- is longer than 200 characters.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

from pydicom import dcmread
from rapidfuzz import fuzz

from sonoshot.db.store import Store
from sonoshot.db.validation import LABELS, NewFeedback, record_feedback
from sonoshot.dicom_io.deid.phi import PhiStrings, collect_phi, searchable
from sonoshot.dicom_io.spool import Spool

MAX_FINDING = 200
FUZZY_SCORE = 90  # rapidfuzz partial ratio at which a name (4+ characters) counts as present
_DATE = re.compile(r"\d{1,4}\s*[./-]\s*\d{1,2}\s*[./-]\s*\d{1,4}")
_DIGITS = re.compile(r"\d{5,}")
_SOURCE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,31}")


class FeedbackError(ValueError):
    """A label, finding text, source or CSV row that cannot be accepted; the message says why."""


def check_label(label: str) -> str:
    """``normal`` or ``abnormal`` (case-insensitive).

    Raises
    ------
    FeedbackError
        For anything else.
    """
    value = label.strip().lower()
    if value not in LABELS:
        raise FeedbackError(f"label {label!r}: expected normal or abnormal")
    return value


def check_source(source: str | None) -> str | None:
    """A short token naming where the label came from (``ris``, ``pathology``), or None.

    Raises
    ------
    FeedbackError
        If it is not 1-32 letters, digits, ``_ . -`` starting with a letter.
    """
    if source is None or not source.strip():
        return None
    if not _SOURCE.fullmatch(source.strip()):
        raise FeedbackError(f"source {source!r}: expected 1-32 letters, digits, '_', '.' or '-', starting "
                            "with a letter")
    return source.strip()


def study_phi(store: Store, spool: Spool, study_instance_uid: str) -> PhiStrings | None:
    """Identifying strings of every received instance of the study still in the spool; None
    when none is left (or the study is unknown)."""
    study = store.study(study_instance_uid)
    if study is None:
        return None
    names: set[str] = set()
    identifiers: set[str] = set()
    read = 0
    for instance in store.instances_of(study):
        path = spool.path(instance.path)
        if instance.file_missing or not path.is_file():
            continue
        phi = collect_phi(dcmread(path, stop_before_pixels=True, force=True))
        names |= phi.names
        identifiers |= phi.identifiers
        read += 1
    return PhiStrings(frozenset(names), frozenset(identifiers)) if read else None


def screen_finding(text: str | None, phi: PhiStrings | None) -> str | None:
    """The finding text to store (whitespace collapsed), None when empty.

    Raises
    ------
    FeedbackError
        If the text is too long, looks like a date or an identifier, holds one of ``phi``'s
        strings (or a close misspelling of a name), or ``phi`` is None (nothing to screen against).
    """
    if text is None or not text.strip():
        return None
    cleaned = " ".join(text.split())
    if len(cleaned) > MAX_FINDING:
        raise FeedbackError(f"finding text is {len(cleaned)} characters; at most {MAX_FINDING}")
    if _DATE.search(cleaned) or _DIGITS.search(cleaned):
        raise FeedbackError("finding text refused: it holds a date or an identifier-like number")
    if phi is None:
        raise FeedbackError("finding text refused: the study's originals are no longer in the spool, so it "
                            "cannot be screened for PHI; give the label without text")
    lowered = cleaned.lower()
    for value in phi.all:
        if searchable(value) and value in lowered:
            raise FeedbackError("finding text refused: it holds an identifying string of the study's header")
    for name in phi.names:
        if len(name) >= 4 and fuzz.partial_ratio(name, lowered) >= FUZZY_SCORE:
            raise FeedbackError("finding text refused: it holds (a spelling of) a name from the study's header")
    return cleaned


def submit(store: Store, spool: Spool, study_instance_uid: str, label: str, recorded_by: str, channel: str,
           origin: str, finding: str | None = None, source: str | None = None) -> NewFeedback:
    """Validate, screen and record one label; returns what was stored.

    Raises
    ------
    FeedbackError
        If the label, source or finding text is refused.
    sonoshot.db.validation.UnknownStudy
        If the study was never received.
    """
    text = screen_finding(finding, study_phi(store, spool, study_instance_uid)) if finding and finding.strip() \
        else None
    new = NewFeedback(study_instance_uid.strip(), check_label(label), recorded_by, channel, origin[:64], text,
                      check_source(source))
    record_feedback(store, new)
    return new


@dataclass(frozen=True)
class CsvRow:
    line: int
    study_instance_uid: str
    label: str
    source: str | None


def parse_csv(text: str, default_source: str | None = None) -> list[CsvRow]:
    """Rows of ``study_instance_uid,label[,source]`` (a header row is optional).

    Raises
    ------
    FeedbackError
        Naming every bad line (wrong column count, empty UID, unknown label, bad source), or
        when there is no row; nothing is imported then.
    """
    rows, errors = [], []
    for number, cells in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in cells]
        if not any(cells):
            continue
        if number == 1 and cells[0].lower() == "study_instance_uid":
            continue
        if len(cells) not in (2, 3) or not cells[0]:
            errors.append(f"line {number}: expected study_instance_uid,label[,source]")
            continue
        try:
            source = check_source(cells[2] if len(cells) == 3 else default_source)
            rows.append(CsvRow(number, cells[0], check_label(cells[1]), source))
        except FeedbackError as exc:
            errors.append(f"line {number}: {exc}")
    if errors:
        raise FeedbackError("; ".join(errors))
    if not rows:
        raise FeedbackError("no rows: expected study_instance_uid,label[,source]")
    return rows
