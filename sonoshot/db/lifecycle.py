"""lifecycle.py
============

The study states and the legal moves between them: the one place that names states.

The database is the queue. A study row moves
``receiving → complete → processing → reported → delivered``; side exits are ``ignored``
(routing), ``awaiting-detector`` (no detector yet), ``out-of-scope`` (no instance inside the
detector's scope), ``quarantined`` (nothing could be de-identified or scored safely), ``failed``,
``dead-letter`` (delivery gave up) and ``withheld`` (shadow mode: its reports were kept and
discarded by ``sonoshot release --discard``, never sent). Each stage claims rows in one state
and moves them on, so restart recovery is a query.

A study that ends ``out-of-scope``, ``quarantined`` or ``failed`` keeps that state while its
"not analysed" report goes through the outbox (the result row and its deliveries say how that
went). A reload that changes what would decide it sends it back to ``complete``:
``quarantined → complete`` when the de-identification settings changed, ``out-of-scope →
complete`` when the detector changed; its next result supersedes the "not analysed" one.
"""

from __future__ import annotations

from enum import Enum


class StudyState(str, Enum):
    RECEIVING = "receiving"
    COMPLETE = "complete"
    PROCESSING = "processing"
    AWAITING_DETECTOR = "awaiting-detector"
    OUT_OF_SCOPE = "out-of-scope"
    REPORTED = "reported"
    DELIVERED = "delivered"
    DEAD_LETTER = "dead-letter"
    IGNORED = "ignored"
    QUARANTINED = "quarantined"
    FAILED = "failed"
    WITHHELD = "withheld"


class OutboxState(str, Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD_LETTER = "dead-letter"
    HELD = "held"  # shadow mode: built and kept, not sent until released
    WITHHELD = "withheld"  # a held SR that was discarded (or superseded) at release: never sent


#: Outbox states that still wait for something: a study with one of these is not settled.
OUTBOX_WAITING = frozenset({OutboxState.PENDING, OutboxState.HELD})


S = StudyState

#: A new instance may arrive in any state: the study then goes back to ``receiving`` and its
#: next result supersedes the last one.
LEGAL_MOVES: dict[StudyState, frozenset[StudyState]] = {
    S.RECEIVING: frozenset({S.COMPLETE}),
    S.COMPLETE: frozenset({S.PROCESSING}),
    S.PROCESSING: frozenset({S.IGNORED, S.REPORTED, S.AWAITING_DETECTOR, S.OUT_OF_SCOPE, S.QUARANTINED,
                             S.FAILED, S.COMPLETE}),
    S.AWAITING_DETECTOR: frozenset({S.COMPLETE}),
    S.OUT_OF_SCOPE: frozenset({S.COMPLETE}),
    S.REPORTED: frozenset({S.DELIVERED, S.DEAD_LETTER, S.WITHHELD}),
    S.DEAD_LETTER: frozenset({S.REPORTED}),
    S.DELIVERED: frozenset(),
    S.IGNORED: frozenset(),
    S.QUARANTINED: frozenset({S.COMPLETE}),
    S.FAILED: frozenset({S.COMPLETE}),
    S.WITHHELD: frozenset(),
}

#: States whose work is finished: the spool may be purged after the retention period.
SETTLED = frozenset({S.DELIVERED, S.DEAD_LETTER, S.IGNORED, S.OUT_OF_SCOPE, S.QUARANTINED, S.FAILED,
                     S.WITHHELD})


class IllegalMove(ValueError):
    """A stage tried to move a study along a path the lifecycle does not allow."""


def check_move(current: StudyState | str, new: StudyState | str) -> StudyState:
    """Return ``new`` as a :class:`StudyState` if ``current → new`` is legal.

    Raises
    ------
    IllegalMove
        If the move is not in :data:`LEGAL_MOVES` (a new instance reopening a study is
        handled by the receiver, not here).
    """
    current, new = StudyState(current), StudyState(new)
    if new not in LEGAL_MOVES[current]:
        raise IllegalMove(f"a study cannot move from '{current.value}' to '{new.value}'")
    return new
