"""The profile table against the standard, keys, date shifting and the policy description."""

from __future__ import annotations

import json

import pytest

from sonoshot.config import DeidConfig
from sonoshot.dicom_io.deid import DeidKeyError, DeidPolicy, keyed_uid, load_key, patient_pseudonym
from sonoshot.dicom_io.deid.dates import DateValueError, shift_da, shift_dt
from sonoshot.dicom_io.deid.profile import EDITION, PROFILE, ROWS, resolve

OPTION_COLUMNS = {"rtnLongModifDatesOpt": "L", "rtnLongFullDatesOpt": "F", "rtnPatCharsOpt": "P",
                  "rtnDevIdOpt": "D", "rtnInstIdOpt": "I", "rtnUIDsOpt": "U", "cleanDescOpt": "C",
                  "cleanGraphOpt": "G", "cleanStructContOpt": "S", "rtnSafePrivOpt": "V"}


def test_table_matches_the_standard_row_by_row(shared):
    standard = json.loads((shared / "data/standard/confidentiality_profile_attributes.json").read_text())
    assert EDITION == "2024b" and len(ROWS) == len(standard) == 621
    ours = {row.tag.upper(): row for row in ROWS}
    for entry in standard:
        tag = "GGGG,EEEE" if "ODD" in entry["tag"] else entry["tag"][1:10].upper()
        row = ours[tag]
        assert row.basic == entry["basicProfile"], tag
        expected = {letter: entry[col] for col, letter in OPTION_COLUMNS.items() if col in entry}
        assert row.options == expected, tag


@pytest.mark.parametrize(("tag", "options", "action"), [
    (0x00100010, frozenset(), "Z"),  # Patient's Name
    (0x00080080, frozenset(), "Z"),  # Institution Name X/Z/D
    (0x00080012, frozenset(), "D"),  # Instance Creation Date X/D
    (0x00080012, frozenset("L"), "C"),
    (0x00101010, frozenset("P"), "K"),  # Patient's Age
    (0x00181000, frozenset("D"), "K"),  # Device Serial Number
    (0x00081030, frozenset("C"), "C"),  # Study Description
    (0x00081030, frozenset(), "X"),
    (0x00081140, frozenset(), "U"),  # Referenced Image Sequence X/Z/U*
])
def test_resolve(tag, options, action):
    assert resolve(PROFILE[tag], options) == action


def test_load_key(tmp_path):
    path = tmp_path / "deid.key"
    with pytest.raises(DeidKeyError, match="does not exist"):
        load_key(path)
    path.write_text("ab" * 31)
    with pytest.raises(DeidKeyError, match="31 bytes, at least 32"):
        load_key(path)
    path.write_text("not hex")
    with pytest.raises(DeidKeyError, match="not hex"):
        load_key(path)
    path.write_text("ab" * 32 + "\n")
    assert load_key(path) == b"\xab" * 32


def test_keyed_uid_and_pseudonym_are_repeatable_and_keyed():
    key, other = b"k" * 32, b"o" * 32
    uid = keyed_uid(key, "1.2.840.113619.2.1")
    assert uid == keyed_uid(key, "1.2.840.113619.2.1") != keyed_uid(other, "1.2.840.113619.2.1")
    assert uid.startswith("2.25.") and len(uid) <= 64 and int(uid[5:]) < 2**128
    assert patient_pseudonym(key, "123") == patient_pseudonym(key, "123") != patient_pseudonym(other, "123")
    with pytest.raises(DeidKeyError):
        keyed_uid(b"short", "1.2")


@pytest.mark.parametrize(("value", "shifted"), [
    ("20200301", "20200229"), ("2020", "2019"), ("202003", "202002"), ("20200301-20200302", "20200229-20200301"),
    ("", ""),
])
def test_shift_da(value, shifted):
    assert shift_da(value, -1 if len(value) != 4 else -300) == shifted


def test_shift_dt_keeps_time_and_offset():
    assert shift_dt("20200301101112.123+0100", -1) == "20200229101112.123+0100"
    assert shift_dt("2020+0100", -300) == "2019+0100"
    with pytest.raises(DateValueError):
        shift_dt("12", -1)
    with pytest.raises(DateValueError):
        shift_da("20201340", -1)


def test_policy_from_config_and_describe():
    policy = DeidPolicy.from_config(DeidConfig(retain_patient_characteristics=True, ocr_max_frames=3))
    lines = list(policy.describe())
    assert "option Retain Patient Characteristics: on" in lines
    assert "(0010,1010) Patient's Age: K" in lines
    assert any("PS3.15 2024b" in line for line in lines)
    with pytest.raises(ValueError, match="ocr_max_frames"):
        DeidPolicy(ocr_max_frames=0)
