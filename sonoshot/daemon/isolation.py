"""isolation.py
============

De-identification in helper processes. A thread that decodes, cleans and verifies pixels holds
the interpreter lock for most of its time, and the receiver's threads need that lock several
times for every instance they acknowledge: in one process, de-identification beside a stream of
instances slows the stream although it runs at a lower CPU priority (sampled with py-spy while
the daemon received and scored at once: the de-identifying thread held the lock in a fifth of
the samples). :class:`DeidHelpers` runs :func:`~sonoshot.dicom_io.deid.deidentify_file` in
separate processes at the workers' priority instead; the receiver then competes for CPU only,
where the kernel's nice levels put it first.

A helper that dies during an instance (a decoder that crashes on a hostile file, the kernel's
out-of-memory killer) takes down nothing else: the instances it had in hand are tried once more
in fresh helpers, and one that ends its helper again is quarantined
(``internal error: BrokenProcessPool``), so the PACS is told as for any other quarantine. What a
helper had written but not verified when it ended is removed. A helper ends by itself within
a second when the daemon that started it has gone, even by SIGKILL.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from sonoshot.host import lower_priority
from sonoshot.dicom_io import read_as_received
from sonoshot.dicom_io.deid import PARTIAL_SUFFIX, DeidOutcome, DeidPolicy, deidentify_file
from sonoshot.dicom_io.deid.textdetect import TextDetectorUnavailableError, text_detector

log = logging.getLogger(__name__)


PARENT_POLL_S = 1.0  # how often a helper checks that the daemon that started it still runs


def _exit_with_parent(parent: int) -> None:
    """End this helper once ``parent`` is no longer its parent (the daemon died, even by
    SIGKILL, and the helper was handed to init): a helper waiting for work would otherwise live
    on with its hundreds of MB."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def _start_helper(nice: int, text_threads: int) -> None:
    """A helper's start: a watch that ends it with the daemon, its priority (inherited by the
    threads and processes it starts), the daemon's reading mode, and the text detector loaded
    before its first instance (if the model cannot be loaded, each instance says so)."""
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="parent-watch",
                     daemon=True).start()
    lower_priority(nice, "de-identification helpers")
    read_as_received()
    try:
        text_detector(text_threads)
    except TextDetectorUnavailableError:
        pass


def _ready() -> None:
    """A task that returns once a helper has started."""


class DeidHelpers:
    """``processes`` helper processes that de-identify one instance each at a time.

    ``nice``: the helpers' CPU priority increment (Linux); ``text_threads``: the text detector's
    threads each helper loads it with. The helpers start with :meth:`start` (or on first use)
    from a fresh interpreter (``spawn``: never a fork of a process with threads) and end with
    :meth:`close`.

    Raises
    ------
    ValueError
        If ``processes`` is below 1.
    """

    def __init__(self, processes: int = 1, nice: int = 0, text_threads: int = 1) -> None:
        if processes < 1:
            raise ValueError(f'Argument "processes" must be at least 1, got {processes}.')
        self.processes, self.nice, self.text_threads = processes, nice, text_threads
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        """Start the helpers and wait until one is ready (the cost is paid here, not by a study).

        Raises
        ------
        RuntimeError
            If no helper starts.
        """
        try:
            self._current().submit(_ready).result()
        except BrokenProcessPool as exc:
            raise RuntimeError("the de-identification helper processes did not start (a program that starts "
                               "the daemon in its own process needs `if __name__ == '__main__':` around it, as "
                               "for any multiprocessing 'spawn' program)") from exc

    def deidentify(self, src: Path, out_dir: Path, policy: DeidPolicy, key: bytes) -> DeidOutcome:
        """:func:`~sonoshot.dicom_io.deid.deidentify_file` in a helper; the same outcome and
        exceptions, and a quarantine where the instance ended its helper twice."""
        outcome = self._in_helper(src, out_dir, policy, key)
        if outcome is None:
            log.warning("a de-identification helper ended during an instance (a crash or a kill); "
                        "trying it once more in a fresh helper")
            outcome = self._in_helper(src, out_dir, policy, key)
        if outcome is None:
            log.error("a de-identification helper ended twice during the same instance (a crash or a kill); "
                      "the instance is quarantined")
            return DeidOutcome.internal_error(BrokenProcessPool())
        return outcome

    def close(self) -> None:
        """Let the helpers finish the instances in hand, then end them."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _current(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self.processes, multiprocessing.get_context("spawn"),
                                                 initializer=_start_helper, initargs=(self.nice, self.text_threads))
            return self._pool

    def _in_helper(self, src: Path, out_dir: Path, policy: DeidPolicy, key: bytes) -> DeidOutcome | None:
        """The outcome, or None when the helper ended before it came (the pool is replaced)."""
        pool = self._current()
        try:
            return pool.submit(deidentify_file, src, out_dir, policy, key).result()
        except BrokenProcessPool:
            self._replace(pool)
            for unverified in out_dir.glob(f".*{PARTIAL_SUFFIX}"):  # what the helper wrote before it ended
                unverified.unlink(missing_ok=True)
            return None

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:  # the first thread to see it replaces it
                self._pool = None
        broken.shutdown(wait=False, cancel_futures=True)
