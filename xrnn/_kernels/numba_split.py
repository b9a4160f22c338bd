"""A one-direction layer's hidden units split between two cores.

A one-direction layer has a single recurrence, so it cannot run a direction per core as
a bidirectional one does (:mod:`.numba_threaded`). But each hidden unit's gates read
only that unit's rows of the weights, and its own c: split the units in two halves,
and each core computes its half's rows of the recurrent product (``h W_hh^T`` for its
units' gate rows, NumPy's BLAS on one thread), then its half's gates, c and h. Only
``h`` is shared: before step ``s``'s product, each core waits until the other has
written its half of ``h[s]``. The wait is a spin on a counter per core (atomic loads
and stores, :func:`_load_acquire`, :func:`_store_release`), not a lock: a step lasts
microseconds to milliseconds, and a thread woken by the kernel would take longer.

The product costs what OpenBLAS's own two threads cost on the whole (each core packs
half of ``W_hh``), and the gates, which ran on one core after the product, run on both.
Each half's weight rows are gathered into a copy per call (its gates' rows, contiguous),
and its input projection is its own product.

Used without a tape (inference: the backward stays the fused steps'), for layers above
the whole-loop limits, from the main thread with BLAS on one thread (as for
:mod:`.numba_threaded`); measured in benchmarks/NOTES.md (issue 13, sixth pass).
"""

from __future__ import annotations

import ctypes

import numpy as np
from llvmlite import binding
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import blas, numba_threaded
from .numba_layer import (_GRU, _LSTM, _FusedLayer, _elman_row, _gru_cell, _jit,
                          _lstm_cell, one_blas_thread, steps_inactive)
from .workspace import scratch

binding.add_symbol("xrnn_sched_yield",
                   ctypes.cast(ctypes.CDLL(None).sched_yield, ctypes.c_void_p).value)
_sched_yield = types.ExternalFunction("xrnn_sched_yield", types.int32())

#: Slots of the counters array: each half's last finished step (64 bytes apart, so
#: that the two cores never write the same cache line), and the abort flag.
_DONE, _ABORT = (0, 16), 32


@intrinsic
def _load_acquire(typingctx, array, index):
    """``array[index]`` (int64), read from memory every time (never hoisted out of a
    loop), ordered before the loads that follow it."""
    def codegen(context, builder, signature, args):
        view = context.make_array(signature.args[0])(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, signature.args[0], view,
                                           [args[1]])
        return builder.load_atomic(pointer, ordering="acquire", align=8)
    return types.int64(array, index), codegen


@intrinsic
def _store_release(typingctx, array, index, value):
    """``array[index] = value`` (int64), ordered after the stores before it."""
    def codegen(context, builder, signature, args):
        view = context.make_array(signature.args[0])(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, signature.args[0], view,
                                           [args[1]])
        builder.store_atomic(args[2], pointer, ordering="release", align=8)
        return context.get_dummy_value()
    return types.void(array, index, value), codegen


@_jit
def _wait(counters, slot, step):
    """Spin until ``counters[slot] >= step``; False if the abort flag went up first."""
    spins = 0
    while _load_acquire(counters, slot) < step:
        if _load_acquire(counters, _ABORT) != 0:
            return False
        spins += 1
        if spins >= 64:  # the other core's thread may be descheduled: give way
            _sched_yield()
            spins = 0
    return True


@_jit
def _half_forward(code, half, lo, hi, gx, start, count, w_hh, x_bias, hh_bias, h, c, a,
                  tanh_c, z, inactive, counters):
    """Steps ``start`` to ``start + count`` of units ``lo:hi``: ``gx`` (chunk, B, G*n)
    their input projection, ``w_hh`` (G*n, P) and the biases (G*n,) their gate rows
    (gate-major: i, f, g, o of these units); ``h`` (T+1, B, P) and ``c`` (T+1, B, H)
    the shared states; ``a`` (B, G*n), ``tanh_c`` (B, n), ``z`` (B, G*n) this half's
    scratch; ``inactive`` (T, B). Returns False if the other half aborted."""
    other = _DONE[1 - half]
    mine = _DONE[half]
    for s in range(start, start + count):
        if not _wait(counters, other, s):
            return False
        blas.matmul(h[s], w_hh, True, z)
        x_rows = gx[s - start]
        for b in range(h.shape[1]):
            out = h[s + 1, b, lo:hi]
            if inactive[s, b]:
                out[:] = h[s, b, lo:hi]
                if code == _LSTM:
                    c[s + 1, b, lo:hi] = c[s, b, lo:hi]
                continue
            zr, xr = z[b], x_rows[b]
            if code == _LSTM:
                for j in range(zr.size):
                    zr[j] += xr[j] + x_bias[j]
                _lstm_cell(zr, c[s, b, lo:hi], c[s + 1, b, lo:hi], a[b], tanh_c[b], out)
            elif code == _GRU:
                for j in range(zr.size):
                    zr[j] += hh_bias[j]
                _gru_cell(zr, xr, x_bias, h[s, b, lo:hi], a[b], out)
            else:
                _elman_row(zr, xr, x_bias, out, code)
        _store_release(counters, mine, s + 1)
    return True



class _SplitLayer(_FusedLayer):
    """A one-direction layer without a tape, its hidden units in two halves on two
    threads (module docstring); the fused steps where BLAS cannot go to one thread."""

    def __init__(self, x, states, weights, cell, keep, active):
        super().__init__(x, states, weights, cell, keep, active)
        self.steps_inactive = steps_inactive(self)[0]
        hidden, gates, batch, dtype = self.H, self.gates, self.batch, self.dtype
        self.halves = ((0, hidden // 2), (hidden // 2, hidden))
        chunk = self.gx.shape[1]

        def rows(a, lo, hi):  # the gate rows of units lo:hi, gate-major
            return a.reshape(gates, hidden, -1)[:, lo:hi].reshape(gates * (hi - lo), -1)

        self.w_hh_half, self.w_ih_half, self.x_bias_half, self.hh_bias_half = [], [], [], []
        self.gx_half, self.z_half, self.a_half, self.tanh_c_half = [], [], [], []
        for t, (lo, hi) in enumerate(self.halves):
            width = gates * (hi - lo)
            w_hh = scratch(f"split_w_hh{t}", (width, self.P), dtype)
            w_hh[...] = rows(self.w_hh_stack[0], lo, hi)
            w_ih = scratch(f"split_w_ih{t}", (width, x.shape[2]), dtype)
            w_ih[...] = rows(self.w_ih[0], lo, hi)
            self.w_hh_half.append(w_hh)
            self.w_ih_half.append(w_ih)
            self.x_bias_half.append(rows(self.x_bias[0], lo, hi).reshape(-1).copy())
            self.hh_bias_half.append(rows(self.hh_bias[0], lo, hi).reshape(-1).copy())
            self.gx_half.append(scratch(f"split_gx{t}", (chunk, batch, width), dtype))
            self.z_half.append(np.empty((batch, width), dtype))
            self.a_half.append(np.empty((batch, width), dtype))
            self.tanh_c_half.append(np.empty((batch, hi - lo), dtype))
        self.c_or_unused = np.empty((1, 1, 1), dtype) if self.c is None else self.c[0]
        self.counters = np.zeros(_ABORT + 1, dtype=np.int64)

    def forward(self):
        with one_blas_thread() as single:
            if single:
                numba_threaded._on_two_threads(self._forward_half)
                return
        super().forward()

    def _forward_half(self, t: int) -> None:
        try:
            lo, hi = self.halves[t]
            gx, x = self.gx_half[t], self.x_steps[0]
            chunk = gx.shape[0]
            for start in range(0, self.steps, chunk):
                count = min(chunk, self.steps - start)
                rows = count * self.batch
                np.matmul(x[start:start + count].reshape(rows, -1), self.w_ih_half[t].T,
                          out=gx[:count].reshape(rows, -1))
                if not _half_forward(self.code, t, lo, hi, gx, start, count, self.w_hh_half[t],
                                     self.x_bias_half[t], self.hh_bias_half[t], self.h[0],
                                     self.c_or_unused, self.a_half[t], self.tanh_c_half[t],
                                     self.z_half[t], self.steps_inactive, self.counters):
                    return
        except BaseException:
            self.counters[_ABORT] = 1  # the other half stops waiting for this one
            raise


def splits(weights, cell, keep: bool, hooks) -> bool:
    """Whether a layer above the whole-loop limits runs its hidden units in two halves
    on two threads: one direction of two units or more, no tape, no per-step hooks or
    projection, two cores or more."""
    return (len(weights) == 1 and not keep and hooks is None and weights[0].w_hr is None
            and weights[0].w_hh.shape[0] >= 2 * cell.gates and blas.AVAILABLE
            and numba_threaded.usable_cores() >= 2)
