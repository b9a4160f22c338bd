"""Per-thread scratch buffers that the CPU kernels reuse from call to call.

Memory that a process touches for the first time costs a page fault per 4 KiB page. On
the 2-core benchmark VM that is about 3 us a page (0.75 ms per MiB): a (200, 64, 256,
512, 2, 2) LSTM forward allocated and first touched about 300 MiB of buffers per call,
and glibc gives blocks that large back to the system when they are freed, so every call
paid the faults again (benchmarks/NOTES.md, issue 13). The buffers that no caller sees
after the call (the input projection's chunk; without a tape the states by step and
the reversed input; the outputs and input gradients that pass between the layers of a
stack) come from here instead: one flat buffer per name, dtype and thread,
grown to the largest size asked for and reused.

A layer uses its buffers only while its own forward runs (its output and final states
are copied out of them before it returns), so the next layer, or the next call, may
take them over. Thread-local, so threads (Dask's threaded scheduler, user threads)
never share one. Buffers larger than :data:`MAX_BYTES` (a 64th of the memory, at least
64 MiB) are plain allocations.

A tape (what a backward reads: states, gates, gradients by step) lives from a forward
to its backward, so it cannot be scratch; but the next training step needs the same
arrays again. :func:`tape` hands out an array that a finished backward gave back with
:func:`give_back` (same shape and dtype), else a fresh one: page faults were a quarter
of a (100, 32, 64, 128, 2, 2) LSTM training step (NOTES.md). A thread keeps at most
:data:`MAX_TAPE_BYTES` of them (an eighth of the memory, at least 1 GiB), the newest
shapes first. :func:`release` frees this thread's buffers, both kinds.

Every array made here from :data:`MIN_ALIGNED_BYTES` on starts on a cache line
(:func:`empty`). NumPy aligns its data to 16 bytes only, and glibc puts a large block 16
bytes past a page: a compiled loop reading a (512, 128) float32 ``W_hh`` there by 32-byte
vectors took 4.65 us a product instead of 3.55 (every other load split between two cache
lines; NOTES.md, issue 13, tenth pass).
"""

from __future__ import annotations

import math
import os
import threading

import numpy as np


def _physical_memory() -> int:
    """This machine's physical memory in bytes, or 0 where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0


#: Most bytes of given-back tape arrays one thread keeps for the next forward: an eighth
#: of the physical memory, at least 1 GiB. A tape larger than this is partly fresh memory
#: on every call: the (100,256,512,1024,1,1) LSTM's 1.2 GB tape over 1 GiB made its
#: backward loop take 1.76-1.78 s a call instead of 1.12-1.16 (its gates, which write
#: the fresh gate gradients, 0.47-0.55 s instead of 0.05-0.06; NOTES.md, issue 13,
#: sixteenth pass).
MAX_TAPE_BYTES = max(1 << 30, _physical_memory() // 8)
#: Largest scratch buffer kept for reuse (bytes), a 64th of the physical memory, at least
#: 64 MiB; larger requests get a fresh array. The (100,256,512,1024,1,1) LSTM forward's
#: states by step (105 MB each) over 64 MiB were fresh memory on every call, and its gates,
#: which write them, took 79-336 ms a call against 75-163 when reused (NOTES.md, issue 13,
#: sixteenth pass).
MAX_BYTES = max(64 << 20, _physical_memory() // 64)
#: Tape arrays smaller than this are plain allocations (NumPy and the C library reuse
#: small blocks without page faults; a lookup would cost more than it saves).
MIN_TAPE_BYTES = 1 << 16
#: Byte boundary of the arrays made here (a cache line), and the size from which they
#: are aligned (below it, arrays stay in the L1 cache, where a split load costs little,
#: and aligning costs 2 us a call, a small layer's calls make dozens).
ALIGNMENT, MIN_ALIGNED_BYTES = 64, 1 << 16
_local = threading.local()


def empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised C-contiguous array of ``shape`` and ``dtype`` whose data start on
    an :data:`ALIGNMENT`-byte boundary (from :data:`MIN_ALIGNED_BYTES` on)."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_ALIGNED_BYTES:
        return np.empty(shape, dtype=dtype)
    size, item = nbytes // dtype.itemsize, dtype.itemsize
    raw = np.empty(size + ALIGNMENT // item, dtype=dtype)  # (its data: 16-byte aligned)
    start = -raw.ctypes.data % ALIGNMENT // item
    return raw[start:start + size].reshape(shape)


def aligned(a: np.ndarray) -> bool:
    """Whether ``a`` is C-contiguous and starts on an :data:`ALIGNMENT`-byte boundary."""
    return a.flags.c_contiguous and a.ctypes.data % ALIGNMENT == 0


def scratch(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised C-contiguous array of ``shape`` and ``dtype``, a view of this
    thread's reusable buffer ``name`` (its contents are whatever the last user left)."""
    dtype = np.dtype(dtype)
    size = math.prod(shape)
    if size * dtype.itemsize > MAX_BYTES:
        return empty(shape, dtype)
    pool = _local.__dict__.setdefault("pool", {})
    flat = pool.get((name, dtype))
    if flat is None or flat.size < size:
        flat = pool[name, dtype] = empty((size,), dtype)
    return flat[:size].reshape(shape)


def tape(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised array of ``shape`` and ``dtype`` for a tape: one that a finished
    backward gave back (:func:`give_back`), else a fresh one. The caller owns it until
    it gives it back."""
    dtype = np.dtype(dtype)
    if math.prod(shape) * dtype.itemsize < MIN_TAPE_BYTES:
        return empty(shape, dtype)
    free = _local.__dict__.get("tapes", {}).get((tuple(shape), dtype))
    if free:
        _local.tape_bytes -= free[-1].nbytes
        return free.pop()
    return empty(shape, dtype)


def give_back(arrays) -> None:
    """Keep ``arrays`` (from :func:`tape`; nothing may read them any more) for the next
    :func:`tape` calls of this thread, up to :data:`MAX_TAPE_BYTES`: to make room, the
    arrays of the shapes given back longest ago are freed first (a thread whose shapes
    change keeps the newest: with the old shapes kept instead, every training step of a
    model run after a larger one paid its tape's page faults again, NOTES.md, issue 13,
    seventh pass); what still does not fit is freed."""
    tapes = _local.__dict__.setdefault("tapes", {})  # (shape, dtype) -> arrays, oldest first
    held = _local.__dict__.setdefault("tape_bytes", 0)
    kept = [a for a in arrays if a.nbytes >= MIN_TAPE_BYTES]
    keys = {(a.shape, a.dtype) for a in kept}
    needed = held + sum(a.nbytes for a in kept) - MAX_TAPE_BYTES
    for key in [key for key in tapes if key not in keys]:
        if needed <= 0:
            break
        freed = sum(a.nbytes for a in tapes.pop(key))
        held, needed = held - freed, needed - freed
    for a in kept:
        if held + a.nbytes <= MAX_TAPE_BYTES:
            key = (a.shape, a.dtype)
            tapes[key] = tapes.pop(key, [])  # (now the newest)
            tapes[key].append(a)
            held += a.nbytes
    _local.tape_bytes = held


def held_bytes() -> int:
    """Bytes this thread's buffers hold (scratch and given-back tapes)."""
    return (sum(flat.nbytes for flat in _local.__dict__.get("pool", {}).values())
            + _local.__dict__.get("tape_bytes", 0))


def release() -> None:
    """Free this thread's buffers (they are made again on the next call that needs them)."""
    for name in ("pool", "tapes", "tape_bytes"):
        _local.__dict__.pop(name, None)
