"""De-identification ahead of completion (sonoshot.daemon.ahead), on real ultrasound files.

The stage may use an outcome only when it is what it would compute itself now: the same bytes,
from the same file, with the same policy and key; otherwise it gets None and does the work.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pydicom
import pytest

from sonoshot.daemon import ahead as ahead_module
from sonoshot.daemon.ahead import DeidAhead
from sonoshot.dicom_io.deid import DeidPolicy, deidentify_file
from tests.peers import wait_for

KEY = bytes(range(32))
POLICY = DeidPolicy(ocr=False)
SOURCE = "orthanc-Issue16.dcm"  # a 34-frame ultrasound cine with regions


class Planner:
    """What the stage's plan would say, and every call it got."""

    def __init__(self, policy: DeidPolicy | None = POLICY) -> None:
        self.policy = policy
        self.calls: list[str] = []

    def __call__(self, relative: str, header: pydicom.Dataset) -> DeidPolicy | None:
        self.calls.append(relative)
        assert header.SOPInstanceUID  # the header only, read from the spool
        return self.policy


@pytest.fixture
def spool(tmp_path, shared_dicom) -> Path:
    root = tmp_path / "spool"
    for n in range(3):
        (root / "1.2" / "3.4").mkdir(parents=True, exist_ok=True)
        ds = pydicom.dcmread(shared_dicom / SOURCE)
        ds.SOPInstanceUID = f"1.2.3.4.{n}"
        ds.save_as(root / "1.2" / "3.4" / f"{n}.dcm", enforce_file_format=True)
    return root


@pytest.fixture
def started(spool, tmp_path):
    made: list[DeidAhead] = []

    def start(planner: Planner) -> DeidAhead:
        made.append(DeidAhead(spool, tmp_path / "work" / ".ahead", planner, KEY))
        made[-1].start()
        return made[-1]

    yield start
    for ahead in made:
        ahead.stop()


def _done(ahead: DeidAhead, relative: str) -> bool:
    with ahead._changed:
        return relative in ahead._done


def test_an_outcome_taken_is_what_the_stage_would_compute(started, spool, tmp_path):
    ahead = started(Planner())
    ahead.stored("1.2/3.4/0.dcm")
    wait_for(lambda: _done(ahead, "1.2/3.4/0.dcm"), timeout=60, what="the instance de-identified ahead")
    taken = ahead.take("1.2/3.4/0.dcm", spool / "1.2/3.4/0.dcm", POLICY, KEY, tmp_path / "claim")
    assert taken is not None and taken.seconds > 0
    outcome = taken.outcome
    assert outcome.ok and outcome.output.parent == tmp_path / "claim"
    fresh = deidentify_file(spool / "1.2/3.4/0.dcm", tmp_path / "fresh", POLICY, KEY)
    assert outcome.output.read_bytes() == fresh.output.read_bytes()
    assert outcome.output.name == fresh.output.name
    assert list((tmp_path / "work" / ".ahead").iterdir()) == []  # handed over, nothing left behind
    assert ahead.take("1.2/3.4/0.dcm", spool / "1.2/3.4/0.dcm", POLICY, KEY, tmp_path / "claim") is None  # once


@pytest.mark.parametrize("change", ["policy", "key", "file"])
def test_an_outcome_that_no_longer_holds_is_not_used(started, spool, tmp_path, change):
    ahead = started(Planner())
    ahead.stored("1.2/3.4/0.dcm")
    wait_for(lambda: _done(ahead, "1.2/3.4/0.dcm"), timeout=60, what="the instance de-identified ahead")
    policy, key = POLICY, KEY
    if change == "policy":
        policy = DeidPolicy(ocr=False, clean_descriptors=False)
    elif change == "key":
        key = bytes(32)
    else:  # deleted and received again: another file at the same spool path
        source = spool / "1.2/3.4/0.dcm"
        shutil.copyfile(source, spool / "copy.dcm")
        source.unlink()
        (spool / "copy.dcm").rename(source)
    assert ahead.take("1.2/3.4/0.dcm", spool / "1.2/3.4/0.dcm", policy, key, tmp_path / "claim") is None
    assert not (tmp_path / "claim").exists() and list((tmp_path / "work" / ".ahead").iterdir()) == []


def test_nothing_starts_while_instances_keep_arriving(started, spool, monkeypatch):
    monkeypatch.setattr(ahead_module, "SETTLE_S", 0.5)
    planner = Planner()
    ahead = started(planner)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # a stream: a new instance every 0.2 s
        ahead.stored("1.2/3.4/0.dcm")
        time.sleep(0.2)
        assert planner.calls == []
    wait_for(lambda: planner.calls, timeout=10, what="work once the stream stopped")


def test_the_stage_takes_over_what_has_not_started(started, spool, tmp_path, monkeypatch):
    monkeypatch.setattr(ahead_module, "SETTLE_S", 30.0)
    planner = Planner()
    ahead = started(planner)
    ahead.stored("1.2/3.4/1.dcm")
    assert ahead.take("1.2/3.4/1.dcm", spool / "1.2/3.4/1.dcm", POLICY, KEY, tmp_path / "claim") is None
    with ahead._changed:
        assert not ahead._waiting  # not de-identified a second time later


def test_the_stage_waits_for_the_instance_in_hand(started, spool, tmp_path):
    ahead = started(Planner())
    ahead.stored("1.2/3.4/2.dcm")
    wait_for(lambda: ahead._running == "1.2/3.4/2.dcm", timeout=10, interval=0.005, what="the work to start")
    taken = ahead.take("1.2/3.4/2.dcm", spool / "1.2/3.4/2.dcm", POLICY, KEY, tmp_path / "claim")
    assert taken is not None and taken.outcome.ok and taken.outcome.output.is_file()


def test_what_the_stage_would_not_deidentify_is_left_alone(started, spool, tmp_path):
    planner = Planner(policy=None)  # routed to ignore, or outside the detector's scope
    ahead = started(planner)
    ahead.stored("1.2/3.4/0.dcm")
    wait_for(lambda: planner.calls, timeout=10, what="the plan")
    wait_for(lambda: ahead._running is None, timeout=10, what="the thread to go idle")
    assert ahead.take("1.2/3.4/0.dcm", spool / "1.2/3.4/0.dcm", POLICY, KEY, tmp_path / "claim") is None
    assert list((tmp_path / "work" / ".ahead").iterdir()) == []


def test_stop_removes_outcomes_not_taken(started, spool, tmp_path):
    ahead = started(Planner())
    ahead.stored("1.2/3.4/0.dcm")
    wait_for(lambda: _done(ahead, "1.2/3.4/0.dcm"), timeout=60, what="the instance de-identified ahead")
    assert any((tmp_path / "work" / ".ahead").rglob("*.dcm"))
    ahead.stop()
    assert not (tmp_path / "work" / ".ahead").exists()


def test_large_instances_are_left_to_the_stage(started, spool, tmp_path, monkeypatch):
    monkeypatch.setattr(ahead_module, "MAX_BYTES", (spool / "1.2/3.4/0.dcm").stat().st_size - 1)
    planner = Planner()
    ahead = started(planner)
    ahead.stored("1.2/3.4/0.dcm")
    time.sleep(ahead_module.SETTLE_S + 0.5)
    wait_for(lambda: ahead._running is None, timeout=10, what="the thread to go idle")
    assert planner.calls == []  # not even its header was read
    assert ahead.take("1.2/3.4/0.dcm", spool / "1.2/3.4/0.dcm", POLICY, KEY, tmp_path / "claim") is None


def test_nothing_starts_while_the_pool_runs_a_stage(spool, tmp_path):
    busy = [True]
    planner = Planner()
    ahead = DeidAhead(spool, tmp_path / "work" / ".ahead", planner, KEY, pool_busy=lambda: busy[0])
    ahead.start()
    try:
        ahead.stored("1.2/3.4/0.dcm")
        time.sleep(ahead_module.SETTLE_S * 5)
        assert planner.calls == []  # idle time only
        busy[0] = False
        wait_for(lambda: planner.calls, timeout=10, what="work once the pool is idle")
    finally:
        ahead.stop()
