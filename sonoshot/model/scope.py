"""scope.py
========

What a detector was fitted for, and whether an instance lies inside it.

A scope maps DICOM keywords to allowed values, e.g. ``{"BodyPartExamined": ("BREAST",)}``
(``sonoshot fit --scope BodyPartExamined=BREAST``); an empty scope admits everything. Real
ultrasound files rarely carry Body Part Examined (none of the shared test files does), so
:func:`check_scope` decides in this order and says on what basis:

1. **A scope key is present** (non-empty) in the header: its value must be one of the allowed
   values (case-insensitive; for Body Part Examined a narrower part counts, e.g. LIVER inside
   ABDOMEN). A present value that disagrees puts the instance outside the scope. Keys other
   than Body Part Examined that are absent say nothing.
2. **Body Part Examined is in the scope but absent**: the body part is inferred from what the
   header says in coded form (Anatomic Region Sequence codes, the ultrasound Image Type's
   third value such as ABDOMINAL or OBSTETRICAL, an ECG trace among the ultrasound regions),
   else from free text (Study / Series Description, Protocol Name, procedure descriptions)
   with the small keyword table :data:`BODY_PART_WORDS`. Inferred parts of which none is
   allowed put the instance outside the scope ("Echocardiogram" is a heart, not a breast).
3. **Nothing can be inferred**: the instance is in scope, and the decision says so (the
   basis "no body part recorded").

Reasons name only DICOM keywords and body-part terms from the table, never the header's own
free text, so they carry no PHI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.dataset import Dataset

BODY_PART = "BodyPartExamined"
# Body Part Examined terms (PS3.16 Annex L) -> whole words (regular expressions) that name them
BODY_PART_WORDS: dict[str, tuple[str, ...]] = {
    "BREAST": (r"breasts?", r"mamma(e|ry)?", r"mama", r"brust"),
    "HEART": (r"heart", r"cardiac", r"cardio\w*", r"echocardio\w*", r"echo", r"tte", r"tee",
              r"trans-?th?oracic", r"trans-?o?esophageal", r"murmur", r"vsd", r"asd",
              r"ventric\w*", r"atri(al|um)", r"mitral", r"tricuspid", r"parasternal"),
    "THYROID": (r"thyroid", r"tiroides", r"schilddr\w*"),
    "NECK": (r"neck", r"carotids?"),
    "LIVER": (r"liver", r"hepatic", r"higado"),
    "KIDNEY": (r"kidneys?", r"renal"),
    "ABDOMEN": (r"abdom\w*", r"gallbladder", r"spleen", r"pancrea\w*"),
    "PELVIS": (r"pelvi[cs]", r"uter\w*", r"ovar\w*", r"endovaginal", r"transvaginal",
               r"gyn\w*", r"obstetric\w*", r"ob", r"f(o)?etal", r"f(o)?etus", r"pregnan\w*"),
    "SCROTUM": (r"scrot\w*", r"testi(s|cle|cular)\w*"),
    "PROSTATE": (r"prostat\w*", r"transrectal"),
    "EXTREMITY": (r"musculoskeletal", r"msk", r"shoulder", r"elbow", r"codo", r"wrist",
                  r"knee", r"ankle", r"tendons?"),
    "HEAD": (r"transcranial", r"cranial", r"brain"),
}
PARENTS = {"LIVER": "ABDOMEN", "KIDNEY": "ABDOMEN", "THYROID": "NECK"}
# the ultrasound Image Type's third value (PS3.3 C.8.5.6.1.1) -> body part
IMAGE_TYPE_PARTS = {
    "BREAST": "BREAST", "THYROID": "THYROID", "ABDOMINAL": "ABDOMEN", "RETROPERITONEAL": "ABDOMEN",
    "OBSTETRICAL": "PELVIS", "GYNECOLOGY": "PELVIS", "PELVIC": "PELVIS", "ENDOVAGINAL": "PELVIS",
    "TRANSVAGINAL": "PELVIS", "TRANSTHORACIC": "HEART", "TRANSESOPHAGEAL": "HEART",
    "TEE": "HEART", "EPICARDIAL": "HEART", "FETAL HEART": "HEART", "MUSCULOSKELETAL": "EXTREMITY",
    "SCROTAL": "SCROTUM", "TRANSRECTAL": "PROSTATE", "ENDORECTAL": "PROSTATE",
    "TRANSCRANIAL": "HEAD", "NEONATAL HEAD": "HEAD",
}
# SNOMED CT codes of Anatomic Region Sequence items (CID 4031) -> body part
ANATOMY_CODES = {
    "76752008": "BREAST", "T-04000": "BREAST", "80891009": "HEART", "T-32000": "HEART",
    "69748006": "THYROID", "T-B6000": "THYROID", "45048000": "NECK", "T-D1600": "NECK",
    "10200004": "LIVER", "T-62000": "LIVER", "64033007": "KIDNEY", "T-71000": "KIDNEY",
    "818981001": "ABDOMEN", "113345001": "ABDOMEN", "T-D4000": "ABDOMEN",
    "816092008": "PELVIS", "12921003": "PELVIS", "T-D6000": "PELVIS",
    "20233005": "SCROTUM", "T-98000": "SCROTUM", "41216001": "PROSTATE", "T-92000": "PROSTATE",
}
ECG_TRACE = 0x000A  # Region Data Type (0018,6014) of an ECG trace
TEXT_KEYWORDS = ("StudyDescription", "SeriesDescription", "ProtocolName",
                 "RequestedProcedureDescription", "PerformedProcedureStepDescription")
_PATTERNS = {part: re.compile(r"\b(" + "|".join(words) + r")\b", re.IGNORECASE)
             for part, words in BODY_PART_WORDS.items()}
_STRING_VRS = {"CS", "LO", "SH", "ST", "LT", "UT", "AE", "UC", "DS", "IS", "PN"}

Scope = dict[str, tuple[str, ...]]


class ScopeError(ValueError):
    """A scope specification names no DICOM string attribute or has no value."""


@dataclass(frozen=True)
class ScopeDecision:
    """Whether an instance is inside a detector's scope, and why."""

    problem: str | None  # None when in scope, else a short PHI-free reason
    basis: str  # what the decision rests on, e.g. "BodyPartExamined BREAST"


def parse_scope(specs: Sequence[str]) -> Scope:
    """``["BodyPartExamined=BREAST", "Modality=US"]`` as a scope; ``KEY=A,B`` allows several
    values, and repeating a key adds values.

    Raises
    ------
    ScopeError
        If a spec lacks ``=`` or a value, or its key is not a DICOM keyword of a string VR.
    """
    scope: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        allowed = [v.strip().upper() for v in values.split(",") if v.strip()]
        if not sep or not allowed:
            raise ScopeError(f"scope {spec!r}: expected KEYWORD=VALUE[,VALUE...]")
        if key not in keyword_dict or dictionary_VR(keyword_dict[key]) not in _STRING_VRS:
            raise ScopeError(f"scope {spec!r}: {key!r} is not a DICOM keyword of a text "
                             "attribute (e.g. BodyPartExamined)")
        scope.setdefault(key, []).extend(v for v in allowed if v not in scope.get(key, []))
    return {k: tuple(v) for k, v in scope.items()}


def validate_scope(scope: Mapping[str, Sequence[str]]) -> Scope:
    """A scope read from a bundle, checked like :func:`parse_scope`.

    Raises
    ------
    ScopeError
        If a key or value is invalid.
    """
    return parse_scope([f"{k}={','.join(v)}" for k, v in scope.items()])


def _expand(part: str) -> set[str]:
    return {part, PARENTS[part]} if part in PARENTS else {part}


def _values(header: Dataset, keyword: str) -> list[str]:
    value = header.get(keyword)
    if value is None or value == "":
        return []
    items = [value] if isinstance(value, str) or not isinstance(value, Sequence) else value
    return [str(v).strip().upper() for v in items if str(v).strip()]


def infer_body_parts(header: Dataset) -> tuple[set[str], str]:
    """Body parts a header names without Body Part Examined, and where they came from:
    coded attributes first, then free text (every text attribute that names a part);
    empty when nothing says."""
    coded = {ANATOMY_CODES[str(item.get("CodeValue", ""))]
             for item in header.get("AnatomicRegionSequence") or []
             if str(item.get("CodeValue", "")) in ANATOMY_CODES}
    if coded:
        return coded, "AnatomicRegionSequence"
    image_type = _values(header, "ImageType")
    if len(image_type) > 2 and image_type[2] in IMAGE_TYPE_PARTS:
        return {IMAGE_TYPE_PARTS[image_type[2]]}, "ImageType"
    if any(int(r.get("RegionDataType") or 0) == ECG_TRACE
           for r in header.get("SequenceOfUltrasoundRegions") or []):
        return {"HEART"}, "an ECG trace region"
    found, sources = set(), []
    for keyword in TEXT_KEYWORDS:
        text = " ".join(_values(header, keyword))
        parts = {part for part, pattern in _PATTERNS.items() if pattern.search(text)}
        if parts:
            found |= parts
            sources.append(keyword)
    return found, "/".join(sources)


def check_scope(scope: Mapping[str, Sequence[str]], header: Dataset) -> ScopeDecision:
    """Decide whether ``header`` lies inside ``scope`` (see the module docstring)."""
    if not scope:
        return ScopeDecision(None, "the detector has no scope")
    basis = []
    for key, allowed in scope.items():
        present = _values(header, key)
        if not present:
            continue
        wanted = set(allowed)
        if key == BODY_PART:
            ok = any(_expand(v) & wanted for v in present)
            known = [v for v in present if v in BODY_PART_WORDS or v in wanted]
            said = "/".join(known) if known else "another body part"
        else:
            ok = bool(set(present) & wanted)
            said = "another value"
        if not ok:
            return ScopeDecision(f"outside the detector's scope: {key} is {said}, the detector "
                                 f"is for {'/'.join(allowed)}", f"{key} {said}")
        basis.append(f"{key} {'/'.join(sorted(set(present) & wanted) or present)}")
    if BODY_PART in scope and not _values(header, BODY_PART):
        parts, source = infer_body_parts(header)
        allowed = set(scope[BODY_PART])
        if parts and not any(_expand(p) & allowed for p in parts):
            said = "/".join(sorted(parts))
            return ScopeDecision(f"outside the detector's scope: {source} indicates {said}, "
                                 f"the detector is for {'/'.join(scope[BODY_PART])}",
                                 f"{said} inferred from {source}")
        basis.append(f"{'/'.join(sorted(parts))} inferred from {source}" if parts
                     else "no body part recorded: assumed in scope")
    return ScopeDecision(None, "; ".join(basis) or "no scope attribute recorded: assumed in scope")
