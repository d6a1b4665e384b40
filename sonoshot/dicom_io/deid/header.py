"""header.py
=========

Apply the confidentiality profile to a dataset in place: every element at every depth is
decided by its row of :data:`.profile.PROFILE` under the policy's options, then by these rules
for what the table does not list:

* private attributes (odd groups), curves (50xx) and overlays (60xx): removed;
* UI values that are not well-known (class, transfer syntax, coding scheme...): keyed UIDs;
* DA and DT values, with Retain Longitudinal Temporal Information: shifted by the keyed
  per-patient offset; without it, left as the table leaves them;
* sequences: kept and de-identified item by item.

The file meta group is rebuilt from scratch and the preamble zeroed. The result is a dataset
whose identifiers are keyed; the pixel data is left to :mod:`.pixels_clean`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from .dates import DateValueError, shift_da, shift_dt
from .keys import date_offset_days, keyed_uid, patient_pseudonym
from .phi import PhiStrings, searchable
from .policy import DeidPolicy
from .profile import PROFILE, resolve

_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "PN", "AE", "CS"})
_KEEP_UID_KEYWORDS = frozenset({"TransferSyntaxUID", "CodingSchemeUID", "ContextGroupExtensionCreatorUID"})
_DUMMY = {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000Y", "PN": "ANONYMOUS"}
REDACTED = "REDACTED"


def is_well_known_uid(keyword: str, value: str) -> bool:
    """Whether a UID is kept: class UIDs and UIDs listed in PS3.6 (pydicom's dictionary)."""
    uid = UID(value)
    return keyword.endswith("ClassUID") or keyword in _KEEP_UID_KEYWORDS or uid.name != str(uid)


class _Deidentifier:
    """One pass over one dataset; ``actions`` counts what was done, by kind (no values)."""

    def __init__(self, policy: DeidPolicy, key: bytes, patient_id: str, phi: PhiStrings) -> None:
        self.policy = policy
        self.key = key
        self.offset = date_offset_days(key, patient_id)
        self.pseudonym = patient_pseudonym(key, patient_id)
        self.tokens = sorted(phi.all, key=len, reverse=True)
        self.actions: Counter[str] = Counter()

    def dataset(self, ds: Dataset) -> None:
        for elem in list(ds):
            self.element(ds, elem)

    def element(self, ds: Dataset, elem: DataElement) -> None:
        tag = elem.tag
        if tag.is_private or tag.group & 0xFF00 in (0x5000, 0x6000):
            del ds[tag]
            self.actions["removed private, curve or overlay"] += 1
            return
        if elem.keyword in ("PatientID", "PatientName"):
            elem.value = self.pseudonym
            self.actions["pseudonymised"] += 1
            return
        row = PROFILE.get(int(tag))
        action = resolve(row, self.policy.options) if row else "K"
        if action == "X":
            del ds[tag]
        elif action == "Z":
            elem.value = [] if elem.VR == "SQ" else elem.empty_value
        elif elem.VR == "SQ":
            for item in elem.value or []:
                self.dataset(item)
        elif action == "D":
            self.dummy(elem)
        else:  # K, C and U: values that survive, keyed, shifted or cleaned
            self.survive(elem, action)
        self.actions[f"action {action}"] += 1

    def dummy(self, elem: DataElement) -> None:
        if elem.VR in ("UI", "DA", "DT"):
            self.survive(elem, "D")  # keyed UID, shifted date, or a dummy date
        elif elem.VR in _DUMMY:
            elem.value = _DUMMY[elem.VR]
        elif elem.VR in ("LO", "SH", "ST", "LT", "UT", "UC"):
            elem.value = REDACTED
        else:  # numbers, codes and binary values have no neutral dummy: zero length
            elem.value = elem.empty_value

    def survive(self, elem: DataElement, action: str) -> None:
        if elem.VR == "UI":
            elem.value = _map(elem.value, lambda v: self.uid(v, elem.keyword))
        elif elem.VR in ("DA", "DT") and self.policy.retain_modified_dates:
            elem.value = _map(elem.value, self.shifter(shift_da if elem.VR == "DA" else shift_dt))
        elif elem.VR in ("DA", "DT") and action == "D":
            elem.value = _DUMMY[elem.VR]
        elif action == "C" and elem.VR in _TEXT_VRS:
            elem.value = _map(elem.value, self.scrub)

    def shifter(self, shift: Callable[[str, int], str]) -> Callable[[str], str]:
        def apply(value: str) -> str:
            try:
                return shift(value, self.offset)
            except DateValueError:
                self.actions["unparseable date emptied"] += 1
                return ""

        return apply

    def uid(self, value: str, keyword: str = "") -> str:
        value = value.strip().rstrip("\x00")
        if not value or is_well_known_uid(keyword, value):
            return value
        return keyed_uid(self.key, value)

    def scrub(self, text: str) -> str:
        lowered = text.lower()
        for token in self.tokens:
            if not searchable(token) and token != lowered.strip():
                continue
            start = lowered.find(token)
            while start >= 0:
                text = text[:start] + "*" * len(token) + text[start + len(token):]
                lowered = text.lower()
                start = lowered.find(token)
        return text


def _map(values: object, change: Callable[[str], str]) -> object:
    """Apply ``change`` to each value of a single- or multi-valued element."""
    if values is None or values == "":
        return values
    if isinstance(values, (MultiValue, list)):
        return [change(str(v)) for v in values]
    return change(str(values))


def deidentify_header(ds: FileDataset, policy: DeidPolicy, key: bytes, phi: PhiStrings) -> Counter[str]:
    """De-identify ``ds`` in place (not its pixel data); returns counts of actions by kind.

    The file meta is replaced by a minimal group naming the keyed SOP Instance UID, and the
    preamble is zeroed.

    Raises
    ------
    DeidKeyError
        If ``key`` is shorter than 32 bytes.
    """
    worker = _Deidentifier(policy, key, str(ds.get("PatientID", "") or ""), phi)
    worker.dataset(ds)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    return worker.actions
