"""host.py
=======

Facts about the machine this process runs on, free of heavy imports, for every stage.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def lower_priority(nice: int, what: str) -> None:
    """Lower the calling thread's CPU priority by ``nice`` (Linux: this thread only, and the
    threads and processes it starts); where that is not permitted (a seccomp filter, say) it
    runs at the receiver's priority and ``what`` is named in a warning."""
    if not nice:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as exc:
        log.warning("%s run at the receiver's priority: %s", what, exc.strerror)
