"""routing.py
==========

Which studies go on to processing. Rules are tried in order and the first match wins; a rule
matches when every ``match`` entry equals the study's value (a DICOM keyword read from the
received header, or ``calling_ae`` / ``called_ae``). No match means ignore.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom import Dataset

from sonoshot.config import RoutingRule

NO_MATCH = RoutingRule(name="no-rule-matched", action="ignore", match={})


def _value(header: Dataset, key: str, calling_ae: str | None, called_ae: str | None) -> str:
    if key == "calling_ae":
        return calling_ae or ""
    if key == "called_ae":
        return called_ae or ""
    value = header.get(key, "")
    return "\\".join(map(str, value)) if isinstance(value, (list, tuple)) or getattr(value, "is_multival", False) \
        else str(value)


def route(header: Dataset, calling_ae: str | None, called_ae: str | None,
          rules: Sequence[RoutingRule]) -> RoutingRule:
    """The first rule whose every ``match`` entry equals the study's value, else an ignore rule."""
    for rule in rules:
        if all(_value(header, key, calling_ae, called_ae) == want for key, want in rule.match.items()):
            return rule
    return NO_MATCH
