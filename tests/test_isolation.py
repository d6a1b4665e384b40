"""De-identification in helper processes (sonoshot.daemon.isolation), on real ultrasound files:
the same outcome as in the calling process, at the workers' priority, and a helper that is
killed in the middle of an instance costs that instance at most, never the daemon."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import pydicom
import pytest

from sonoshot.daemon.isolation import DeidHelpers
from sonoshot.dicom_io.deid import DeidPolicy, QuarantineReason, deidentify_file
from tests.util import testdata as pydicom_file

KEY = bytes(range(32))
FAST = DeidPolicy(ocr=False)
LONG = "color3d_jpeg_baseline.dcm"  # 120 JPEG frames with OCR: several seconds in a helper


@pytest.fixture
def helpers():
    made = DeidHelpers(nice=5)
    made.start()
    yield made
    made.close()


def helper_pids() -> set[int]:
    return {p.pid for p in multiprocessing.active_children() if p.pid is not None}


def kill_when_started(known: set[int], timeout_s: float = 30.0) -> None:
    """SIGKILL the first helper not in ``known`` once it has had time to start working."""
    deadline = time.monotonic() + timeout_s
    while not (fresh := helper_pids() - known):
        assert time.monotonic() < deadline, "no fresh helper started"
        time.sleep(0.02)
    pid = fresh.pop()
    time.sleep(1.5)  # past its start-up (imports, the text detector), into the instance
    os.kill(pid, signal.SIGKILL)


def test_a_helper_gives_the_outcome_of_the_calling_process(helpers, shared_dicom, tmp_path):
    source = shared_dicom / "orthanc-Issue16.dcm"
    here = deidentify_file(source, tmp_path / "here", FAST, KEY)
    there = helpers.deidentify(source, tmp_path / "there", FAST, KEY)
    assert here.ok and there.ok
    assert (there.sop_instance_uid, there.method, there.text_boxes) == (here.sop_instance_uid, here.method,
                                                                        here.text_boxes)
    assert there.output.read_bytes() == here.output.read_bytes()
    assert there.report == here.report


def test_helpers_run_at_the_workers_priority(helpers):
    (pid,) = helper_pids()
    assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5)


def test_a_quarantine_in_a_helper_is_the_same_quarantine(helpers, tmp_path):
    outcome = helpers.deidentify(pydicom_file("OBXXXX1A_rle.dcm"), tmp_path, DeidPolicy(ocr=False, clean_pixel_data=False),
                                 KEY)
    expected = deidentify_file(pydicom_file("OBXXXX1A_rle.dcm"), tmp_path / "here",
                               DeidPolicy(ocr=False, clean_pixel_data=False), KEY)
    assert (outcome.ok, outcome.reason_code, outcome.reason) == (expected.ok, expected.reason_code, expected.reason)


def kill_the_helper_mid_instance(helpers: DeidHelpers, out_dir) -> tuple[threading.Thread, list, int]:
    """Start a long instance in the background and SIGKILL its helper a second into it."""
    (helper,) = helper_pids()
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(helpers.deidentify(pydicom_file(LONG), out_dir,
                                                                               DeidPolicy(), KEY)))
    thread.start()
    time.sleep(1.0)
    os.kill(helper, signal.SIGKILL)
    return thread, outcome, helper


@pytest.mark.slow
def test_a_helper_killed_during_an_instance_is_replaced_and_the_instance_done(helpers, tmp_path):
    thread, outcome, killed = kill_the_helper_mid_instance(helpers, tmp_path / "out")
    thread.join(120)
    assert outcome[0].ok, outcome[0].reason
    assert [p.name for p in (tmp_path / "out").iterdir()] == [outcome[0].output.name]
    assert killed not in helper_pids()


@pytest.mark.slow
def test_an_instance_that_ends_its_helper_twice_is_quarantined_and_the_next_one_done(helpers, tmp_path):
    thread, outcome, killed = kill_the_helper_mid_instance(helpers, tmp_path / "out")
    kill_when_started({killed})
    thread.join(120)
    (quarantined,) = outcome
    assert not quarantined.ok and quarantined.output is None
    assert quarantined.reason_code is QuarantineReason.INTERNAL_ERROR
    assert quarantined.reason == "internal error: BrokenProcessPool"
    assert not list((tmp_path / "out").glob("*")), "an unverified output was left behind"
    after = helpers.deidentify(pydicom_file("examples_ybr_color.dcm"), tmp_path / "next", FAST, KEY)
    assert after.ok and pydicom.dcmread(after.output).BurnedInAnnotation == "NO"


def test_helpers_end_when_the_daemon_is_killed():
    """A process that started helpers is SIGKILLed: its helpers end by themselves (they would
    otherwise live on, each with its hundreds of MB, after every crash of the daemon)."""
    code = ("import multiprocessing, time\n"
            "from sonoshot.daemon.isolation import DeidHelpers\n"
            "helpers = DeidHelpers()\n"
            "helpers.start()\n"
            "print(*[p.pid for p in multiprocessing.active_children()], flush=True)\n"
            "time.sleep(600)\n")
    daemon = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(pid) for pid in daemon.stdout.readline().split()]
    finally:
        daemon.kill()
        daemon.wait()
    assert pids  # the started helper
    deadline = time.monotonic() + 30
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if _running(pid)}
        time.sleep(0.2)
    assert not alive, f"helpers still running after their daemon was killed: {sorted(alive)}"


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False
