"""A detector's scope: parsing ``--scope``, matching present attributes, inferring the body part
from what real files say when Body Part Examined is absent, and PHI-free reasons."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from sonoshot.model import ScopeError, check_scope, parse_scope
from tests import util

BREAST = {"BodyPartExamined": ("BREAST",)}


def test_parse_scope() -> None:
    assert parse_scope(["BodyPartExamined=breast, Breast", "BodyPartExamined=AXILLA",
                        "Manufacturer=GE"]) == {"BodyPartExamined": ("BREAST", "AXILLA"),
                                                "Manufacturer": ("GE",)}
    assert parse_scope([]) == {}
    for bad, why in (("BodyPartExamined", "KEYWORD=VALUE"), ("BodyPartExamined=", "KEYWORD"),
                     ("BodyPart=BREAST", "not a DICOM keyword"),
                     ("Rows=300", "not a DICOM keyword")):
        with pytest.raises(ScopeError, match=why):
            parse_scope([bad])


def _header(**attributes) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def test_a_present_attribute_decides() -> None:
    assert check_scope(BREAST, _header(BodyPartExamined="BREAST")).problem is None
    assert check_scope(BREAST, _header(BodyPartExamined="BREAST ")).problem is None
    decision = check_scope(BREAST, _header(BodyPartExamined="HEART",
                                           StudyDescription="breast lump"))
    assert decision.problem == ("outside the detector's scope: BodyPartExamined is HEART, the "
                                "detector is for BREAST")
    abdomen = {"BodyPartExamined": ("ABDOMEN",)}
    assert check_scope(abdomen, _header(BodyPartExamined="LIVER")).problem is None  # narrower
    unknown = check_scope(BREAST, _header(BodyPartExamined="SMITHJ"))
    assert "another body part" in unknown.problem and "SMITHJ" not in unknown.problem
    other = {"Manufacturer": ("ACME",)}
    assert check_scope(other, _header(Manufacturer="ACME")).problem is None
    assert "Manufacturer is another value" in check_scope(other, _header(Manufacturer="X")).problem
    assert check_scope(other, _header()).problem is None  # absent: says nothing
    assert check_scope({}, _header(BodyPartExamined="HEART")).problem is None


def test_free_text_and_coded_hints_when_body_part_is_absent() -> None:
    echo = check_scope(BREAST, _header(StudyDescription="Echo for Smith^John"))
    assert echo.problem == ("outside the detector's scope: StudyDescription indicates HEART, "
                            "the detector is for BREAST")
    assert "Smith" not in echo.problem and "Echo" not in echo.problem
    both = _header(StudyDescription="US BREAST", SeriesDescription="echo-guided")
    assert check_scope(BREAST, both).problem is None  # any allowed part keeps it in scope
    assert "ImageType" in check_scope(BREAST, _header(
        ImageType=["ORIGINAL", "PRIMARY", "ABDOMINAL"])).problem
    assert check_scope(BREAST, _header(ImageType=["ORIGINAL", "PRIMARY", "SMALL PARTS"])
                       ).problem is None
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "80891009", "SCT", "Heart"
    coded = _header(AnatomicRegionSequence=[code], StudyDescription="breast")
    assert "AnatomicRegionSequence indicates HEART" in check_scope(BREAST, coded).problem
    nothing = check_scope(BREAST, _header(StudyDescription="", Manufacturer="SonoSite"))
    assert nothing.problem is None and nothing.basis == "no body part recorded: assumed in scope"


@pytest.mark.parametrize(("name", "problem"), [
    ("orthanc-Issue16.dcm", "an ECG trace region indicates HEART"),  # the paediatric echo
    ("dcm4che-US-PAL-8-10x-echo", "StudyDescription indicates HEART"),
    ("dcm4che-YBR_422.dcm", "ImageType indicates EXTREMITY"),  # musculoskeletal, elbow
    ("orthanc-Issue164.dcm", "ImageType indicates PELVIS"),  # obstetrical
    ("orthanc-PrivateTags.dcm", "ImageType indicates ABDOMEN"),
    ("orthanc-jp2k91YBR-ICT.dcm", None),  # small parts: could be a breast
    ("orthanc-1.2.840.10008.1.2.4.50.dcm", None),  # protocol "Freeform": nothing to go on
])
def test_real_files_against_a_breast_scope(shared_dicom: Path, name: str,
                                           problem: str | None) -> None:
    decision = check_scope(BREAST, pydicom.dcmread(shared_dicom / name, stop_before_pixels=True))
    if problem is None:
        assert decision.problem is None
    else:
        assert decision.problem is not None and problem in decision.problem


def test_sonosite_cardiac_clip_is_outside_a_breast_scope() -> None:
    """pydicom's ``examples_ybr_color.dcm`` has no body part and no description, but its Image
    Type says EPICARDIAL and its pixels show a parasternal long-axis view of a heart."""
    header = pydicom.dcmread(util.testdata("examples_ybr_color.dcm"), stop_before_pixels=True)
    decision = check_scope(BREAST, header)
    assert decision.problem == ("outside the detector's scope: ImageType indicates HEART, the "
                                "detector is for BREAST")
    assert check_scope({}, header).problem is None


def test_nothing_recorded_is_in_scope_and_says_so() -> None:
    header = pydicom.dcmread(util.testdata("US1_J2KR.dcm"), stop_before_pixels=True)
    decision = check_scope(BREAST, header)  # GE small parts: a breast is possible
    assert decision.problem is None
    assert decision.basis == "no body part recorded: assumed in scope"
