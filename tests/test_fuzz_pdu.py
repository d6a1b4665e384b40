"""PDU-level fuzzing of a real ``sonoshot serve`` from raw sockets (in the manner of pynetdicom's
``tests/parrot.py`` peer, as the requestor).

Fuzz workers open more than 10,000 short-lived connections from many loopback addresses, each
delivering at least one malformed PDU: random bytes, every PDU type with wrong lengths, unknown
types, A-ASSOCIATE-RQs with truncated or oversized variable items, out-of-order PDUs (P-DATA
before association, a second A-ASSOCIATE-RQ, an A-ASSOCIATE-AC sent to the acceptor, A-RELEASE
in the middle of a message), broken P-DATA (presentation data values of wrong lengths, unknown
presentation contexts, data before a command), fragmented and oversized command sets, declared
huge PDUs, PDUs cut short. Meanwhile a legitimate sender (DCMTK ``storescu``) stores small
studies and DCMTK ``echoscu`` checks the daemon answers every half second. At the end: the daemon
is up, answered every C-ECHO, lost no acknowledged instance, left no partial file and logged no
traceback. ``SONOSHOT_PDU_FUZZ_SEED`` replays a run.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import UltrasoundImageStorage, Verification

from tests.daemon import Daemon
from tests.peers import DCMTK_ENV
from tests.rawpeer import (A_ASSOCIATE_AC, RELEASE_RQ, RawPeer, associate_rq, c_echo_rq, c_store_rq, command, p_data,
                           pdu)
from tests.scenarios import SMALL_US, acknowledged, make_study, storescu_args
from tests.util import require_binary

SEED = int(os.environ.get("SONOSHOT_PDU_FUZZ_SEED", "20261202"))
CONNECTIONS = 10_400  # each delivers at least one malformed PDU
WORKERS = 6
IN_ASSOCIATION = 0.25  # share of cases that associate first, then misbehave
CONTEXTS = ((Verification, (ImplicitVRLittleEndian,)), (UltrasoundImageStorage, (ExplicitVRLittleEndian,)))


# -- A-ASSOCIATE-RQ pieces, to break one at a time -------------------------------------------

def item(item_type: int, body: bytes, declared: int | None = None) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body) if declared is None else declared) + body


def rq_body(items: bytes, called: bytes = b"SONOSHOT".ljust(16), calling: bytes = b"FUZZER".ljust(16),
            version: int = 1) -> bytes:
    return struct.pack(">HH", version, 0) + called + calling + b"\0" * 32 + items


def context_item(context_id: int, abstract: bytes, syntaxes: list[bytes]) -> bytes:
    return item(0x20, bytes([context_id, 0, 0, 0]) + item(0x30, abstract) + b"".join(item(0x40, s) for s in syntaxes))


APPLICATION = item(0x10, b"1.2.840.10008.3.1.1.1")
ECHO_CONTEXT = context_item(1, Verification.encode(), [ImplicitVRLittleEndian.encode()])
USER_INFO = item(0x50, item(0x51, struct.pack(">L", 16384)) + item(0x52, b"1.2.3.4"))


def broken_request(rng: random.Random) -> bytes:
    """An A-ASSOCIATE-RQ with one part broken (its PDU length consistent with what is sent)."""
    choice = rng.randrange(12)
    if choice == 0:  # an item length past the end
        items = APPLICATION + item(0x20, ECHO_CONTEXT[4:], declared=rng.choice((0xFFFF, len(ECHO_CONTEXT) + 50)))
    elif choice == 1:  # a truncated item
        items = APPLICATION + ECHO_CONTEXT[:rng.randrange(1, len(ECHO_CONTEXT))]
    elif choice == 2:  # oversized variable items
        items = item(0x10, b"1." * 32000) + ECHO_CONTEXT + USER_INFO
    elif choice == 3:  # the largest user identity a user information item holds, or one that lies about its size
        primary, secondary = rng.choice(((32000, 32000), (0xFFFF, 0), (0, 0xFFFF)))
        identity = bytes([2, 0]) + struct.pack(">H", primary) + b"u" * min(primary, 32000) + struct.pack(
            ">H", secondary) + b"p" * min(secondary, 32000)
        items = APPLICATION + ECHO_CONTEXT + item(0x50, item(0x51, struct.pack(">L", 0)) + item(0x58, identity))
    elif choice == 4:  # 200 presentation contexts, ids wrapping past 255
        items = APPLICATION + b"".join(context_item((2 * n + 1) % 256, Verification.encode(), [b"1.2"])
                                       for n in range(200)) + USER_INFO
    elif choice == 5:  # unknown item types and empty items
        items = APPLICATION + item(rng.randrange(0x60, 0x100), b"x" * rng.randrange(100)) + item(0x20, b"") + USER_INFO
    elif choice == 6:  # UIDs that are not UIDs, of every length
        items = item(0x10, rng.randbytes(rng.randrange(0, 200))) + context_item(
            1, rng.randbytes(rng.randrange(0, 200)), [rng.randbytes(rng.randrange(0, 80))]) + USER_INFO
    elif choice == 7:  # a maximum length sub-item of the wrong size
        items = APPLICATION + ECHO_CONTEXT + item(0x50, item(0x51, b"\0" * rng.choice((0, 1, 3, 5, 200))))
    elif choice == 8:  # no application context, no presentation context
        items = USER_INFO
    elif choice == 9:  # random bytes for every item
        items = rng.randbytes(rng.randrange(1, 3000))
    elif choice == 10:  # a wrong protocol version, unprintable AE titles
        return rq_body(APPLICATION + ECHO_CONTEXT + USER_INFO, called=rng.randbytes(16), calling=b"\0" * 16,
                       version=rng.choice((0, 2, 0xFFFF)))
    else:  # a sub-item length inside a presentation context past the item's end
        body = bytes([1, 0, 0, 0]) + item(0x30, Verification.encode(), declared=0x2000)
        items = APPLICATION + item(0x20, body) + USER_INFO
    return rq_body(items)


# -- the cases ---------------------------------------------------------------------------------

def before_association(rng: random.Random) -> tuple[str, list[bytes]]:
    """A case that sends its malformed PDU(s) without associating; returns its name and the bytes."""
    choice = rng.randrange(9)
    if choice == 0:
        return "random-bytes", [rng.randbytes(rng.randrange(1, 4000))]
    if choice == 1:  # every PDU type with a wrong length (shorter or longer than what is sent)
        body = rng.randbytes(rng.randrange(0, 300))
        return "wrong-length", [pdu(rng.randrange(1, 8), body, declared=max(0, len(body) + rng.choice((-3, -1, 1, 7))))]
    if choice == 2:
        return "unknown-type", [pdu(rng.choice([0, *range(8, 256)]), rng.randbytes(rng.randrange(0, 100)))]
    if choice == 3:
        return "broken-request", [pdu(0x01, broken_request(rng))]
    if choice == 4:
        return "declared-huge", [pdu(rng.randrange(1, 8), b"", declared=rng.choice((2**32 - 1, 2**31, 300_000)))]
    if choice == 5:  # out of order: what only an association may carry
        return "out-of-order", [rng.choice((p_data((1, 0x03, c_echo_rq())), RELEASE_RQ, pdu(0x06, b"\0" * 4),
                                            pdu(0x02, associate_rq()[6:]), pdu(0x03, b"\0\x01\x01\x01")))]
    if choice == 6:  # a request cut short, then the connection closed
        rq = associate_rq()
        return "cut-short", [rq[:rng.randrange(1, len(rq))]]
    if choice == 7:  # a valid request, then garbage before the answer is read
        return "request-then-garbage", [associate_rq() + rng.randbytes(rng.randrange(1, 500))]
    return "bit-flipped-request", [bytes(b ^ (1 << rng.randrange(8)) if rng.random() < 0.02 else b
                                         for b in associate_rq(contexts=CONTEXTS))]


def in_association(rng: random.Random) -> tuple[str, list[bytes]]:
    """A case that associates (Verification and US Image Storage, ids 1 and 3), then misbehaves."""
    sop = generate_uid()
    store = c_store_rq(UltrasoundImageStorage, sop)
    choice = rng.randrange(10)
    if choice == 0:  # presentation data values whose lengths do not add up
        length = rng.choice((0, 1, 2, 0xFFFFFFFF, 50))
        return "bad-pdv-length", [pdu(0x04, struct.pack(">LBB", length, 1, 0x03) + c_echo_rq())]
    if choice == 1:  # a command set in many fragments, then A-RELEASE-RQ in the middle of the message
        fragments = [p_data((1, 0x01, c_echo_rq()[n:n + 7])) for n in range(0, len(c_echo_rq()), 7)][:-1]
        return "release-mid-command", [*fragments, RELEASE_RQ]
    if choice == 2:  # a command set that never ends
        return "endless-command", [p_data((1, 0x01, rng.randbytes(16000))) for _ in range(5)]
    if choice == 3:  # garbage as a command set, or an unknown command field
        garbage = rng.choice((rng.randbytes(rng.randrange(1, 300)), command(CommandField=0x0FFF, MessageID=1)))
        return "bad-command", [p_data((1, 0x03, garbage))]
    if choice == 4:  # data before any command, or on a context that was never proposed
        return "misplaced-data", [p_data((rng.choice((1, 3, 5, 255)), rng.choice((0x00, 0x02)), rng.randbytes(200)))]
    if choice == 5:  # a C-STORE cut off by A-RELEASE-RQ after part of its dataset
        return "release-mid-dataset", [p_data((3, 0x03, store)), p_data((3, 0x00, rng.randbytes(5000))), RELEASE_RQ]
    if choice == 6:  # a C-STORE whose dataset is garbage (a failure status, the association goes on), then junk
        return "garbage-dataset", [p_data((3, 0x03, store)), p_data((3, 0x02, rng.randbytes(3000))),
                                   rng.randbytes(rng.randrange(1, 100))]
    if choice == 7:  # a second A-ASSOCIATE-RQ, or an A-ASSOCIATE-AC from the requestor
        return "association-pdu-again", [rng.choice((associate_rq(), pdu(0x02, associate_rq()[6:])))]
    if choice == 8:  # a declared-huge P-DATA-TF
        return "huge-p-data", [pdu(0x04, b"", declared=rng.choice((2**32 - 1, 1048577, 16 * 2**20)))]
    return "echo-with-dataset", [p_data((1, 0x03, command(AffectedSOPClassUID=Verification, CommandField=0x0030,
                                                         MessageID=1, CommandDataSetType=0x0000))),
                                 *[p_data((1, 0x00, b"\0" * 60000)) for _ in range(20)]]


class Fuzzer(threading.Thread):
    """One fuzz worker: ``count`` connections, each one case, from its own loopback addresses."""

    def __init__(self, port: int, worker: int, count: int, seed: int) -> None:
        super().__init__(name=f"fuzzer-{worker}", daemon=True)
        self.port, self.worker, self.count = port, worker, count
        self.rng = random.Random(seed)
        self.cases: Counter[str] = Counter()
        self.malformed = 0
        self.associated = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for n in range(self.count):
                self.one(f"127.0.{20 + self.worker}.{1 + n % 250}")
        except BaseException as exc:  # reported by the test
            self.error = exc

    def one(self, source: str) -> None:
        associate = self.rng.random() < IN_ASSOCIATION
        name, chunks = (in_association if associate else before_association)(self.rng)
        try:
            peer = RawPeer(self.port, source, timeout=5)
        except OSError:  # the backlog is full for a moment: a refused connect is no case
            time.sleep(0.01)
            return
        with peer:
            if associate:
                answer = peer.associate(associate_rq(calling="FUZZER", contexts=CONTEXTS))
                if answer[0] != A_ASSOCIATE_AC:
                    raise AssertionError(f"{name}: association refused ({answer[0]})")
                self.associated += 1
            for chunk in chunks:
                if not peer.send(chunk):
                    break
            self.cases[name] += 1
            self.malformed += 1
            peer.closed_by_peer(0.1)  # read what the daemon answers; close if it waits for more


class Prober(threading.Thread):
    """DCMTK echoscu every ``interval_s``; records each answer's success and latency."""

    def __init__(self, port: int, aet: str, interval_s: float = 0.5) -> None:
        super().__init__(name="prober", daemon=True)
        self.port, self.aet, self.interval_s = port, aet, interval_s
        self.stop = threading.Event()
        self.answers: list[tuple[bool, float]] = []

    def run(self) -> None:
        while not self.stop.wait(self.interval_s):
            started = time.monotonic()
            result = subprocess.run(["echoscu", "-to", "10", "-aet", "PROBE", "-aec", self.aet, "127.0.0.1",
                                     str(self.port)], env=DCMTK_ENV, capture_output=True, timeout=30)
            self.answers.append((result.returncode == 0, time.monotonic() - started))


class Sender(threading.Thread):
    """A legitimate modality: DCMTK storescu sends 5-instance studies until stopped."""

    def __init__(self, port: int, source: Path, workdir: Path) -> None:
        super().__init__(name="sender", daemon=True)
        self.port, self.source, self.workdir = port, source, workdir
        self.stop = threading.Event()
        self.acknowledged: dict[str, str] = {}  # SOP Instance UID -> Study Instance UID
        self.sent = 0
        self.failures: list[str] = []

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            study, files = make_study(self.source, self.workdir / f"study{n}", count=5)
            result = subprocess.run(storescu_args(self.port, list(files), calling_aet="MODALITY"), env=DCMTK_ENV,
                                    capture_output=True, text=True, timeout=120)
            for path, response in acknowledged(result.stdout + result.stderr).items():
                if response == "Success":
                    self.acknowledged[files[path]] = study
            if result.returncode != 0:
                self.failures.append(result.stderr[-500:])
            self.sent += len(files)
            n += 1


@pytest.mark.slow
@pytest.mark.alone  # six fuzzers keep the daemon's core busy; beside another test it gets far less
@pytest.mark.timeout(900)
def test_pdu_fuzzing_with_a_legitimate_sender(tmp_path, shared_dicom):
    require_binary("echoscu", "storescu")
    # The fuzzers associate with an AE title the daemon accepts, like a misbehaving modality of the
    # site; max_associations leaves room for them and the legitimate sender and prober.
    daemon = Daemon(tmp_path / "sonoshot", {"completion": {"quiet_period_s": 600}, "logging": {"level": "WARNING"},
                                            "network": {"max_associations": 32}})
    rng = random.Random(SEED)
    with daemon:
        prober = Prober(daemon.port, daemon.aet)
        sender = Sender(daemon.port, shared_dicom / SMALL_US, tmp_path / "sent")
        fuzzers = [Fuzzer(daemon.port, w, CONNECTIONS // WORKERS + 1, rng.randrange(2**32)) for w in range(WORKERS)]
        started = time.monotonic()
        for thread in (prober, sender, *fuzzers):
            thread.start()
        for fuzzer in fuzzers:
            fuzzer.join(timeout=600)
        fuzz_seconds = time.monotonic() - started
        sender.stop.set()
        sender.join(timeout=180)
        prober.stop.set()
        prober.join(timeout=60)

        errors = [f"{f.name}: {f.error!r}" for f in fuzzers if f.error is not None or f.is_alive()]
        assert not errors, errors
        cases = sum((f.cases for f in fuzzers), Counter())
        malformed = sum(f.malformed for f in fuzzers)
        print(f"\n{malformed} connections with a malformed PDU ({sum(f.associated for f in fuzzers)} after an "
              f"association) in {fuzz_seconds:.0f} s; {sender.sent} instances sent alongside, "
              f"{len(sender.acknowledged)} acknowledged; {len(prober.answers)} C-ECHOs, the slowest "
              f"{max(s for _, s in prober.answers):.2f} s\n{dict(sorted(cases.items()))}")
        assert malformed >= 10_000 and len(cases) >= 18
        # The daemon stayed up and answered throughout.
        assert daemon.process.poll() is None
        assert len(prober.answers) >= fuzz_seconds / 2 and all(ok for ok, _ in prober.answers), prober.answers
        # Nothing the legitimate sender was told is stored went missing, and it was not refused.
        assert not sender.failures, sender.failures[:3]
        assert sender.acknowledged and len(sender.acknowledged) == sender.sent
        stored = dict(daemon.query("select i.sop_instance_uid, s.study_instance_uid from instances i "
                                   "join studies s on s.id = i.study_id"))
        assert {sop: stored.get(sop) for sop in sender.acknowledged} == sender.acknowledged
        for (path,) in daemon.query("select path from instances"):
            assert (daemon.spool / path).is_file()
        assert not list((daemon.spool / ".incoming").iterdir()), "partial files left behind"
    log = daemon.log()
    assert "Traceback" not in log, log[log.find("Traceback") - 2000:log.find("Traceback") + 3000]
