"""runtime.py
==========

How the backbone runs on this machine: its numeric precision and torch's intra-op threads.

- Precision (``detector.precision``): ``fp32``, ``bf16`` or ``fp16`` autocast of the backbone
  forward; ``auto`` is ``bf16`` on a CPU with native bf16 instructions (AVX512-BF16 or AMX),
  ``fp32`` on other CPUs, and ``bf16`` (``fp16`` where bf16 is not supported) on CUDA. The
  scoring state (prototypes, patch memory, head) always runs in fp32.
- Threads (``detector.threads``): torch's intra-op thread count for the whole process, set
  once at start before any worker thread uses torch; 0 means one core less than the process
  may use (at least 1), which leaves a core to the receiver and keeps two torch processes on
  a small machine from oversubscribing it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from sonoshot.host import usable_cores

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def default_threads() -> int:
    """One core less than :func:`usable_cores`, at least 1."""
    return max(1, usable_cores() - 1)


def apply_threads(threads: int) -> int:
    """Set torch's intra-op threads (``0``: :func:`default_threads`); returns the count set.

    Call it before other threads use torch: each thread picks the count up on its first
    parallel operation.

    Raises
    ------
    ValueError
        If ``threads`` is negative.
    """
    if threads < 0:
        raise ValueError(f'Argument "threads" must be 0 (automatic) or positive, got {threads}.')
    count = threads or default_threads()
    torch.set_num_threads(count)
    return count


def native_bf16(device: str = "cpu") -> bool:
    """Whether ``device`` computes bf16 natively (CPU: AVX512-BF16 or AMX tiles)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch's CPU probes
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """``auto`` made concrete for ``device``; the other values are returned as they are.

    Raises
    ------
    ValueError
        If ``precision`` is not ``auto`` or one of :data:`PRECISIONS`, or is ``fp16`` on a
        device that is not CUDA (CPU fp16 is emulated and slower than fp32).
    """
    cuda = torch.device(device).type == "cuda"
    if precision == "auto":
        if cuda:
            return "bf16" if native_bf16(device) else "fp16"
        return "bf16" if native_bf16(device) else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f'Argument "precision" must be auto or one of {", ".join(PRECISIONS)}, '
                         f"got {precision!r}.")
    if precision == "fp16" and not cuda:
        raise ValueError(f"precision fp16 needs a CUDA device, not {device!r}")
    return precision


@contextlib.contextmanager
def autocast(precision: str, device: str = "cpu") -> Iterator[None]:
    """Autocast to ``precision`` on ``device`` for the enclosed forward (fp32: nothing)."""
    dtype = _DTYPES.get(precision)
    if dtype is None:
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=dtype):
        yield
