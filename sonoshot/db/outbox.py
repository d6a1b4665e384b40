"""outbox.py
=========

Shadow mode's side of the outbox. A destination in shadow mode never sends: its delivery job
moves due rows from ``pending`` to ``held`` (:func:`hold_pending`), so every SR is built, kept
in the spool and recorded, and nothing leaves. ``sonoshot release`` then puts the held rows of
a chosen period back in the outbox (:func:`release_held`) once the destination sends again, or
discards them for good (:func:`discard_held`: ``withheld``, the study settles).

A study whose latest result still has a ``pending`` or ``held`` row is not settled; retention
keeps its spool until it is released or discarded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from sonoshot.db.lifecycle import OUTBOX_WAITING, OutboxState, StudyState
from sonoshot.db.models import Delivery, Event, Result, Study, utcnow
from sonoshot.db.store import Store


@dataclass(frozen=True)
class ReleaseCounts:
    """What one release or discard did."""

    released: int  # held rows of a latest result, back in the outbox (due now)
    withheld: int  # held rows discarded, or of a superseded result (never sent)


def hold_pending(store: Store, destination: str) -> int:
    """Move every ``pending`` row of ``destination`` to ``held``; returns how many (shadow mode)."""
    with store.session() as s:
        rows = list(s.scalars(select(Delivery).where(Delivery.destination == destination,
                                                     Delivery.state == OutboxState.PENDING.value)))
        for row in rows:
            row.state = OutboxState.HELD.value
            s.add(Event(kind="delivery", outcome="held", study_instance_uid=row.result.study.study_instance_uid,
                        sop_instance_uid=row.result.sr_sop_instance_uid, detail={"destination": destination}))
        return len(rows)


def _held(s: Session, since: datetime | None, until: datetime | None, destination: str | None) -> list[Delivery]:
    query = (select(Delivery).join(Result).where(Delivery.state == OutboxState.HELD.value)
             .order_by(Result.created_at, Delivery.id).with_for_update())
    if since is not None:
        query = query.where(Result.created_at >= since)
    if until is not None:
        query = query.where(Result.created_at < until)
    if destination is not None:
        query = query.where(Delivery.destination == destination)
    return list(s.scalars(query))


def _latest_result_id(s: Session, study: Study) -> int | None:
    return s.scalar(select(Result.id).where(Result.study_id == study.id).order_by(Result.id.desc()).limit(1))


def _settle(s: Session, study: Study, now: datetime) -> None:
    """A reported study whose latest result waits on nothing any more takes its final state."""
    if study.state != StudyState.REPORTED.value:
        return
    states = set(s.scalars(select(Delivery.state).where(Delivery.result_id == _latest_result_id(s, study))))
    if states & {w.value for w in OUTBOX_WAITING}:
        return
    final = (StudyState.DEAD_LETTER if OutboxState.DEAD_LETTER.value in states
             else StudyState.DELIVERED if OutboxState.DELIVERED.value in states else StudyState.WITHHELD)
    study.state, study.state_changed_at = final.value, now
    s.add(Event(kind="study", outcome=final.value, study_instance_uid=study.study_instance_uid))


def _withhold(s: Session, row: Delivery, reason: str, by: str) -> None:
    row.state = OutboxState.WITHHELD.value
    s.add(Event(kind="delivery", outcome="withheld", study_instance_uid=row.result.study.study_instance_uid,
                sop_instance_uid=row.result.sr_sop_instance_uid,
                detail={"destination": row.destination, "reason": reason, "by": by}))


def release_held(store: Store, by: str, since: datetime | None = None, until: datetime | None = None,
                 destination: str | None = None) -> ReleaseCounts:
    """Put held rows whose result was made in ``[since, until)`` back in the outbox, due now.

    Only a study's latest result is released; a held row of a result that a later one
    superseded is withheld instead, so the PACS gets the current SR of each study once.
    ``by`` (who released) goes into the audit events.
    """
    now = utcnow()
    released = withheld = 0
    with store.session() as s:
        latest: dict[int, int | None] = {}
        for row in _held(s, since, until, destination):
            study = row.result.study
            if study.id not in latest:
                latest[study.id] = _latest_result_id(s, study)
            if row.result_id != latest[study.id]:
                _withhold(s, row, "superseded", by)
                withheld += 1
                _settle(s, study, now)
                continue
            row.state, row.next_attempt_at = OutboxState.PENDING.value, now
            s.add(Event(kind="delivery", outcome="released", study_instance_uid=study.study_instance_uid,
                        sop_instance_uid=row.result.sr_sop_instance_uid,
                        detail={"destination": row.destination, "by": by}))
            released += 1
    return ReleaseCounts(released, withheld)


def discard_held(store: Store, by: str, since: datetime | None = None, until: datetime | None = None,
                 destination: str | None = None) -> ReleaseCounts:
    """Withhold held rows whose result was made in ``[since, until)`` for good; their studies settle."""
    now = utcnow()
    count = 0
    with store.session() as s:
        for row in _held(s, since, until, destination):
            _withhold(s, row, "discarded", by)
            count += 1
            s.flush()
            _settle(s, row.result.study, now)
    return ReleaseCounts(0, count)
