"""Per-thread scratch buffers that the CPU kernels reuse from call to call.

Memory that a process touches for the first time costs a page fault per 4 KiB page. On
the 2-core benchmark VM that is about 3 us a page (0.75 ms per MiB): a (200, 64, 256,
512, 2, 2) LSTM forward allocated and first touched about 300 MiB of buffers per call,
and glibc gives blocks that large back to the system when they are freed, so every call
paid the faults again (benchmarks/NOTES.md, issue 13). The buffers that no caller sees
after the call (the input projection's chunk; without a tape the states by step and
the reversed input) come from here instead: one flat buffer per name, dtype and thread,
grown to the largest size asked for and reused.

A layer uses its buffers only while its own forward runs (its output and final states
are copied out of them before it returns), so the next layer, or the next call, may
take them over. Thread-local, so threads (Dask's threaded scheduler, user threads)
never share one. Buffers larger than
:data:`MAX_BYTES` are plain allocations. :func:`release` frees this thread's buffers.
"""

from __future__ import annotations

import math
import threading

import numpy as np

#: Largest buffer kept for reuse (bytes); larger requests get a fresh array.
MAX_BYTES = 64 << 20
_local = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised C-contiguous array of ``shape`` and ``dtype``, a view of this
    thread's reusable buffer ``name`` (its contents are whatever the last user left)."""
    dtype = np.dtype(dtype)
    size = math.prod(shape)
    if size * dtype.itemsize > MAX_BYTES:
        return np.empty(shape, dtype=dtype)
    pool = _local.__dict__.setdefault("pool", {})
    flat = pool.get((name, dtype))
    if flat is None or flat.size < size:
        flat = pool[name, dtype] = np.empty(size, dtype=dtype)
    return flat[:size].reshape(shape)


def held_bytes() -> int:
    """Bytes this thread's buffers hold."""
    return sum(flat.nbytes for flat in _local.__dict__.get("pool", {}).values())


def release() -> None:
    """Free this thread's buffers (they are made again on the next call that needs them)."""
    _local.__dict__.pop("pool", None)
