"""profile.py
==========

The confidentiality profile as data: :data:`PROFILE` maps each tag of PS3.15 Table E.1-1
(edition in :data:`.profile_table.EDITION`) to its row, and :func:`resolve` picks the one action
a row takes under the options in force.

Combined actions leave the choice to the IOD (PS3.15 E.1.1). sonoshot does not track attribute
types per IOD, so it takes the choice that keeps a Type 1 or 2 attribute present and still
holds no identifying value: ``X/Z``, ``Z/D`` and ``X/Z/D`` become Z (zero length), ``X/D``
becomes D (a dummy, or a keyed/shifted value where one exists), and ``X/Z/U*`` becomes U
(sequence kept, UIDs inside replaced).
"""

from __future__ import annotations

from dataclasses import dataclass

from .profile_table import EDITION, TABLE

__all__ = ["EDITION", "OPTION_NAMES", "PROFILE", "ROWS", "WILDCARD_ROWS", "ProfileRow", "resolve"]

OPTION_NAMES = {
    "L": "Retain Longitudinal Temporal Information with Modified Dates",
    "F": "Retain Longitudinal Temporal Information with Full Dates",
    "P": "Retain Patient Characteristics",
    "D": "Retain Device Identity",
    "I": "Retain Institution Identity",
    "U": "Retain UIDs",
    "C": "Clean Descriptors",
    "G": "Clean Graphics",
    "S": "Clean Structured Content",
    "V": "Retain Safe Private",
}
_COMBINED = {"X/Z": "Z", "Z/D": "Z", "X/Z/D": "Z", "X/D": "D", "X/Z/U*": "U"}
# Options sonoshot implements, in the order PS3.15 E.3 lets them override the basic action.
_OPTION_ORDER = ("L", "P", "D", "C")


@dataclass(frozen=True)
class ProfileRow:
    """One row of Table E.1-1: ``tag`` as ``"GGGG,EEEE"`` (may hold ``X`` wildcards)."""

    tag: str
    basic: str  # D, Z, X, U or a combination such as "X/Z/D"
    options: dict[str, str]  # option letter -> action (K, C)
    name: str


def _parse(text: str) -> list[ProfileRow]:
    rows = []
    for line in text.splitlines():
        tag, basic, options, name = (part.strip() for part in line.split("|"))
        pairs = dict(item.split("=") for item in options.split())
        rows.append(ProfileRow(tag=tag, basic=basic, options=pairs, name=name))
    return rows


def _concrete(tag: str) -> bool:
    return all(c in "0123456789ABCDEF," for c in tag)


ROWS = _parse(TABLE)
PROFILE: dict[int, ProfileRow] = {int(r.tag.replace(",", ""), 16): r for r in ROWS if _concrete(r.tag)}
# Curves (50XX,XXXX), overlays (60XX,3000/4000) and private attributes: removed whole by
# the header rules (all of groups 50xx and 60xx, every odd group).
WILDCARD_ROWS = [row for row in ROWS if not _concrete(row.tag)]


def resolve(row: ProfileRow, options: frozenset[str]) -> str:
    """The single action (D, Z, X, K, C or U) that ``row`` takes with ``options`` in force.

    ``options`` holds option letters (see :data:`OPTION_NAMES`); of those, L, P, D and C are
    applied, the others are not offered and leave the basic action.
    """
    for letter in _OPTION_ORDER:
        if letter in options and letter in row.options:
            return row.options[letter]
    return _COMBINED.get(row.basic, row.basic)
