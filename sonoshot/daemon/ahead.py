"""ahead.py
========

De-identification ahead of completion (one process: receiver and de-identification stage). A
study is de-identified only once it is complete, but each of its instances is final as soon as it
is stored: spool files never change. While a study waits out its quiet period the pool is idle,
so :class:`DeidAhead` de-identifies each instance received then (in the stage's helper processes,
:mod:`sonoshot.daemon.isolation`, at the workers' priority), once no instance has arrived for
:data:`SETTLE_S` (a stream of instances is not slowed) and while no pool thread runs a stage (it
uses idle time only: a busy pool does the work later).
The de-identification stage takes an outcome when it still holds (the same file, policy and key)
and does the work itself otherwise. The work is the same function with the same checks and the
same verification from disk; only its moment changes, and the stage still decides the study.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from sonoshot.host import lower_priority
from sonoshot.dicom_io.deid import DeidOutcome, DeidPolicy, deidentify_file

log = logging.getLogger(__name__)

#: The folder under ``storage.work_dir`` that holds outcomes until they are taken (a dot folder:
#: never a study's work prefix).
AHEAD_FOLDER = ".ahead"
#: Work starts once no instance has arrived for this long.
SETTLE_S = 0.1
#: Instances waiting, and outcomes held, at most; the oldest go first (an outcome with its file).
LIMIT = 256
#: Larger instances are left to the stage: de-identification holds an instance in memory, and
#: the stage takes that memory only once the study is complete.
MAX_BYTES = 256 * 2**20
#: How long :meth:`DeidAhead.stop` waits for the instance in hand; then the thread is left to
#: end with the process (the next start empties the folder).
STOP_WAIT_S = 2.0

#: De-identifies one instance: :func:`~sonoshot.dicom_io.deid.deidentify_file`'s signature (the
#: daemon's :meth:`~sonoshot.daemon.isolation.DeidHelpers.deidentify` runs it in a helper process).
Deidentifier = Callable[[Path, Path, DeidPolicy, bytes], DeidOutcome]
#: ``(policy or None)`` for an instance (its spool path and header): None when it is not worth
#: de-identifying ahead (routed to ignore, outside the detector's scope).
Planner = Callable[[str, Dataset], DeidPolicy | None]


def _stamp(path: str | Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class _Done:
    stamp: tuple[int, int, int, int]  # of the source file that was read
    policy: DeidPolicy
    key: bytes
    outcome: DeidOutcome
    seconds: float  # the de-identification's wall time
    folder: Path  # holds the outcome's output (if any) until it is taken


@dataclass(frozen=True)
class TakenOutcome:
    """An outcome de-identified ahead, with the seconds its de-identification took then (the
    stage records them beside its own: ``timings["deidentify-ahead"]``)."""

    outcome: DeidOutcome
    seconds: float


class DeidAhead:
    """De-identifies received instances during their study's quiet period (see the module notes).

    ``spool_root``: the spool (instances by spool path); ``folder``: a private folder on the work
    store's file system (emptied at start and stop); ``plan``: the policy for an instance, or None
    to leave it to the stage; ``pool_busy``: whether a pool thread runs a stage now; ``nice``: the
    thread's CPU priority increment (Linux); ``deidentify``: what de-identifies an instance.
    """

    def __init__(self, spool_root: Path, folder: Path, plan: Planner, key: bytes,
                 pool_busy: Callable[[], bool] = lambda: False, nice: int = 0,
                 deidentify: Deidentifier = deidentify_file) -> None:
        self.spool_root, self.folder, self.plan, self.key, self.nice = spool_root, folder, plan, key, nice
        self.pool_busy = pool_busy
        self.deidentify = deidentify
        self._changed = threading.Condition()
        self._waiting: collections.deque[str] = collections.deque(maxlen=LIMIT)
        self._done: dict[str, _Done] = {}
        self._running: str | None = None
        self._last_stored = 0.0
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)  # a previous run's outcomes are not trusted
        self.folder.mkdir(parents=True, mode=0o700)
        self._thread = threading.Thread(target=self._loop, name="deid-ahead", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop and remove every outcome not taken. The instance in hand is waited for up to
        :data:`STOP_WAIT_S` (a drain is not held up by work the stage can redo)."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(STOP_WAIT_S)
            if self._thread.is_alive():
                return
        shutil.rmtree(self.folder, ignore_errors=True)

    def stored(self, relative: str) -> None:
        """The receiver stored a new instance at spool path ``relative`` (its row is committed)."""
        with self._changed:
            idle = not self._waiting  # else the thread already waits out the settling time, and rereads it
            self._waiting.append(relative)
            self._last_stored = time.monotonic()
            if idle:
                self._changed.notify_all()

    def take(self, relative: str, source: Path, policy: DeidPolicy, key: bytes, out_dir: Path) -> TakenOutcome | None:
        """The outcome of de-identifying ``source`` (spool path ``relative``) with ``policy`` and
        ``key``, its output moved into ``out_dir``; None when there is none that still holds (the
        caller de-identifies it). Waits for the instance if it is being de-identified now."""
        with self._changed:
            with contextlib.suppress(ValueError):
                self._waiting.remove(relative)  # the stage does it now
            while self._running == relative:
                self._changed.wait()
            done = self._done.pop(relative, None)
        if done is None:
            return None
        try:
            if (done.stamp, done.policy, done.key) != (_stamp(source), policy, key):
                return None
            if done.outcome.output is None:
                return TakenOutcome(done.outcome, done.seconds)
            out_dir.mkdir(parents=True, exist_ok=True)
            target = out_dir / done.outcome.output.name
            os.replace(done.outcome.output, target)
            return TakenOutcome(replace(done.outcome, output=target), done.seconds)
        except OSError:
            return None
        finally:
            shutil.rmtree(done.folder, ignore_errors=True)

    def _next(self) -> str | None:
        with self._changed:
            while not self._stopping:
                settle = self._last_stored + SETTLE_S - time.monotonic()
                if self._waiting and settle <= 0:
                    if not self.pool_busy():
                        self._running = self._waiting.popleft()
                        return self._running
                    settle = SETTLE_S  # look again then (the pool does not say when it is done)
                self._changed.wait(settle if self._waiting else None)
            return None

    def _loop(self) -> None:
        lower_priority(self.nice, "de-identification ahead")
        while (relative := self._next()) is not None:
            try:
                done = self._deidentify_ahead(relative)
            except Exception:  # a bug here must not stop the thread: the stage does the work
                log.exception("de-identification ahead failed; the stage will de-identify the instance")
                done = None
            with self._changed:
                self._running = None
                if done is not None:
                    self._done[relative] = done
                    while len(self._done) > LIMIT:
                        shutil.rmtree(self._done.pop(next(iter(self._done))).folder, ignore_errors=True)
                self._changed.notify_all()

    def _deidentify_ahead(self, relative: str) -> _Done | None:
        source = self.spool_root / relative
        try:
            stamp = _stamp(source)
            if stamp[2] > MAX_BYTES:
                return None
            header = dcmread(source, stop_before_pixels=True)
        except Exception:  # unreadable here: the stage quarantines it with the reason
            return None
        policy = self.plan(relative, header)
        if policy is None:
            return None
        folder = Path(tempfile.mkdtemp(dir=self.folder))
        started = time.perf_counter()
        try:
            outcome = self.deidentify(source, folder, policy, self.key)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return _Done(stamp, policy, self.key, outcome, time.perf_counter() - started, folder)
