"""A one-direction layer's hidden units split between two cores.

A one-direction layer has a single recurrence, so it cannot run a direction per core as
a bidirectional one does (:mod:`.numba_threaded`). But each hidden unit's gates read
only that unit's rows of the weights, and its own c: split the units in two halves,
and each core computes its half's rows of the recurrent product (``h W_hh^T`` for its
units' gate rows, NumPy's BLAS on one thread), then its half's gates, c and h. Only
``h`` is shared: before step ``s``'s product, each core waits until the other has
written its half of ``h[s]``. (On packed panels, the product's part over its own half
of ``h[s]`` comes first, before the wait: in the (100,256,512,1024,1,1) LSTM forward
4.5% less time, NOTES.md, issue 13, sixteenth pass.) The wait is a spin on a counter
per core (atomic loads and stores, :func:`_load_acquire`, :func:`_store_release`), not
a lock: a step lasts microseconds to milliseconds, and a thread woken by the kernel would
take longer.

The backward mirrors it: each core computes its units' gate gradients from their
columns of dh and dc, waits until the other has written its own for the step, then its
units' columns of the product that takes them all back to h (``dz W_hh[:, units]``).
After the loop each core makes its gate rows of the weights' gradients and the input's
gradient for half the steps, so that no product runs on BLAS's threads.

The products cost what OpenBLAS's own two threads cost on the whole (each core packs
half of ``W_hh``), and the gates, which ran on one core after the product, run on both.
The layer's gate rows are in half-major order (:class:`_SplitLayer`), so each half's
rows of the biases, of the taped activations and of the gate gradients are one block;
the weights stay the parameters, and each half gathers or packs its own rows of them on
its own thread.

Each half's forward, and its backward with its share of the gradients' products, is one
compiled call that takes no GIL (:func:`_half_task_forward`, :func:`_half_task_backward`,
the products by NumPy's BLAS from compiled code, :mod:`.blas`), and the two threads start
held on different cores, let go as soon as the pool thread's half starts
(:func:`.numba_threaded._on_two_threads` with ``until_started``). On the 2-core VM, after a
quarter of a second idle, Linux woke the pool thread on the caller's core in most calls,
and two halves that wait for each other at every step then took about twice as long
per step; a thread waiting for the GIL could be woken beside the other the same way.
Held only while they start, neither sleeps afterwards, so both stay where they are, and
beside a busy process the scheduler may still move them. LSTM forward
(100,16,128,128,1,1) 0.52x the time of the halves not held; beside a busy process 1.3x
(held for the whole layer: 2.8x) (NOTES.md, issue 13, twenty-second pass).

Used for one-direction layers above the whole-loop limits, from the main thread with
BLAS on one thread (as for :mod:`.numba_threaded`); measured in benchmarks/NOTES.md
(issue 13, sixth, seventh and twenty-second passes).
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np
from llvmlite import binding
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..functional.weights import LayerWeights
from . import blas, numba_threaded, packed, workspace
from .numba_layer import (_GRU, _LSTM, _Compiled, _elman_row, _elman_row_back, _gru_cell,
                          _gru_row_back, _jit, _lstm_cell, _lstm_cell_untaped, _lstm_row_back,
                          steps_inactive)

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
def _half_forward(code, half, lo, hi, gx, start, count, w_hh, panels, x_bias, hh_bias, h, c,
                  a, tanh_c, gh, z, inactive, counters, tape):
    """Steps ``start`` to ``start + count`` of units ``lo:hi``: ``gx`` (chunk, B, G*n)
    their input projection, ``w_hh`` (G*n, P) and the biases (G*n,) their gate rows (the
    layer's rows ``G*lo:G*hi``: i, f, g, o of these units), ``panels`` those of ``w_hh``
    (:func:`.packed.panels_for`); the layer's ``h`` (T+1, B, P),
    ``c`` (T+1, B, H), taped ``a``, ``gh`` (T or 1, B, G*H) and ``tanh_c`` (T or 1, B,
    H), of which this half writes its units' columns (the LSTM's ``a`` and ``tanh_c``
    only with ``tape``); ``z`` (B, G*n) scratch;
    ``inactive`` (T, B). Unused buffers of a cell may be any 3-d array. Returns False if
    the other half aborted."""
    other, mine = _DONE[1 - half], _DONE[half]
    taped, width = a.shape[0], z.shape[1]
    first = width // (hi - lo) * lo
    cols = slice(first, first + width)
    width_h = h.shape[2]
    for s in range(start, start + count):
        k = s if taped > 1 else 0
        if panels.shape[0] > 0:  # this half's own columns of h[s] first, then the other's
            packed.matmul_part(h[s], panels, z, lo, hi, False)
            if not _wait(counters, other, s):
                return False
            packed.matmul_part(h[s], panels, z, 0, lo, True)
            packed.matmul_part(h[s], panels, z, hi, width_h, True)
        else:
            if not _wait(counters, other, s):
                return False
            packed.product(h[s], w_hh, True, panels, z)
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
                for j in range(width):
                    zr[j] += xr[j] + x_bias[j]
                if tape:
                    _lstm_cell(zr, c[s, b, lo:hi], c[s + 1, b, lo:hi], a[k, b, cols],
                               tanh_c[k, b, lo:hi], out)
                else:
                    _lstm_cell_untaped(zr, c[s, b, lo:hi], c[s + 1, b, lo:hi], out)
            elif code == _GRU:
                hh = gh[k, b, cols]  # (the backward reads it)
                for j in range(width):
                    hh[j] = zr[j] + hh_bias[j]
                _gru_cell(hh, xr, x_bias, h[s, b, lo:hi], a[k, b, cols], out)
            else:
                _elman_row(zr, xr, x_bias, out, code)
        _store_release(counters, mine, s + 1)
    return True


@_jit
def _half_backward(code, half, lo, hi, grad_steps, dh, dc, w_cols, panels, h, c, a, tanh_c,
                   gh, dz_all, dgh_all, back, inactive, counters):
    """BPTT of units ``lo:hi``: ``grad_steps`` (T, B, P) the outputs' gradients; ``dh``
    (B, P) and ``dc`` (B, H) the final states', which become the initial states' (this
    half its units' columns); fills its columns ``G*lo:G*hi`` of ``dz_all`` and
    ``dgh_all`` (T, B, G*H; one array but for the GRU); ``w_cols`` (G*H, n) its units'
    columns of ``W_hh`` and their ``panels``; ``back`` (B, n) scratch; the tape as
    :func:`_half_forward` wrote it. Each step waits for the other half's gate gradients
    before the product that takes them back to h. Returns False if the other half
    aborted."""
    other, mine = _DONE[1 - half], _DONE[half]
    steps, batch = grad_steps.shape[0], grad_steps.shape[1]
    width = w_cols.shape[0] // dh.shape[1] * (hi - lo)
    first = width // (hi - lo) * lo
    cols = slice(first, first + width)
    zero = dh.dtype.type(0)
    for s in range(steps - 1, -1, -1):
        for b in range(batch):
            row, grad = dh[b, lo:hi], grad_steps[s, b, lo:hi]
            for p in range(row.size):
                row[p] += grad[p]
            dz, dgh = dz_all[s, b, cols], dgh_all[s, b, cols]
            if inactive[s, b]:  # a padded step passes the gradient through
                dz[:] = zero
                dgh[:] = zero
            elif code == _LSTM:
                _lstm_row_back(a[s, b, cols], tanh_c[s, b, lo:hi], c[s, b, lo:hi], row,
                               dc[b, lo:hi], dz)
            elif code == _GRU:  # row becomes dh z, the path that does not go through W_hh
                _gru_row_back(a[s, b, cols], gh[s, b, cols], h[s, b, lo:hi], row, dz, dgh,
                              row)
            else:
                _elman_row_back(h[s + 1, b, lo:hi], row, dz, code)
        done = steps - s
        _store_release(counters, mine, done)
        if not _wait(counters, other, done):
            return False
        packed.product(dgh_all[s], w_cols, False, panels, back)
        for b in range(batch):
            if inactive[s, b]:
                continue
            row, product = dh[b, lo:hi], back[b]
            if code == _GRU:
                for p in range(row.size):
                    row[p] += product[p]
            else:
                row[:] = product
    return True


@_jit
def _gather_rows(w, order, out):
    """``out[r] = w[order[r]]``: rows of ``w`` in the order ``order``."""
    for r in range(order.size):
        out[r] = w[order[r]]


@_jit
def _pack_half(w_hh, lo, hi, order, w_half, panels):
    """This half's gate rows ``order`` of ``W_hh`` (G*H, P), in PyTorch's order: packed
    into ``panels`` straight from ``w_hh``, a gate block at a time, where the half's
    ``hi - lo`` units fill whole panels; else gathered into ``w_half`` (G*n, P) first
    (and only gathered, for BLAS's products, when there are no panels)."""
    units = hi - lo
    gates = order.size // units
    hidden = w_hh.shape[0] // gates
    if panels.shape[0] > 0 and units % panels.shape[2] == 0:
        per_gate = units // panels.shape[2]
        for g in range(gates):
            packed.pack_transposed(w_hh[g * hidden + lo:g * hidden + hi],
                                   panels[g * per_gate:(g + 1) * per_gate])
        return
    _gather_rows(w_hh, order, w_half)
    if panels.shape[0] > 0:
        packed.pack_transposed(w_half, panels)


@_jit
def _half_task_forward(code, half, lo, hi, x, w_ih, order, w_ih_half, gx, w_hh, w_hh_half,
                       panels, x_bias, hh_bias, h, c, a, tanh_c, gh, z, inactive, counters,
                       tape):
    """A half's whole forward in one compiled call, which takes no GIL (so that neither
    thread sleeps and wakes on the other's core: :class:`_SplitLayer`): its gate rows
    ``order`` (G*n,) of ``w_ih`` (G*H, I) gathered into ``w_ih_half`` (G*n, I), and of
    ``w_hh`` (G*H, P, C-contiguous) packed into ``panels`` (:func:`_pack_half`, with
    ``w_hh_half`` (G*n, P)); then a chunk of steps at a time (``gx`` (chunk, B, G*n)) the
    input projection of ``x`` (T, B, I), and :func:`_half_forward` over the chunk.
    Returns False if the other half aborted."""
    _gather_rows(w_ih, order, w_ih_half)
    _pack_half(w_hh, lo, hi, order, w_hh_half, panels)
    steps, batch, inputs = x.shape
    chunk, width = gx.shape[0], gx.shape[2]
    for start in range(0, steps, chunk):
        count = min(chunk, steps - start)
        blas.matmul(x[start:start + count].reshape((count * batch, inputs)), w_ih_half, True,
                    gx[:count].reshape((count * batch, width)))
        if not _half_forward(code, half, lo, hi, gx, start, count, w_hh_half, panels, x_bias,
                             hh_bias, h, c, a, tanh_c, gh, z, inactive, counters, tape):
            return False
    return True


@_jit
def _half_task_backward(code, half, lo, hi, grad_steps, dh, dc, w_hh, order, w_cols, panels, h,
                        c, a, tanh_c, gh, dz_all, dgh_all, back, inactive, counters, x, h_prev,
                        w_ih, w_ih_rows, grad_ih_rows, grad_hh_rows, grad_w_ih, grad_w_hh,
                        grad_b_ih, grad_b_hh, ones, grad_x):
    """A half's whole backward in one compiled call, which takes no GIL: ``w_hh`` (G*H,
    P) and ``w_ih`` (G*H, I) in PyTorch's order, ``order`` (G*H,) the layer's gate rows
    in half-major order (the columns of ``dz_all`` and ``dgh_all`` (T, B, G*H)). Its
    units' columns of ``w_hh``, in that order, gathered into ``w_cols`` and packed into
    ``panels`` (none when empty), and its gate rows of ``w_ih`` into its block of
    ``w_ih_rows`` (G*H, I, shared by the halves); :func:`_half_backward`; then from the
    now complete gate gradients its gate rows of ``grad_w_ih`` (``x`` (T*B, I)) and
    ``grad_w_hh`` (``h_prev`` (T*B, P)), each one product into ``grad_ih_rows`` and
    ``grad_hh_rows`` (G*n, I or P) then copied a gate at a time to PyTorch's rows (a
    product per gate took 1.16x as long at (16000, 1024) x (16000, 256)), of the bias
    gradients (column sums, by ``ones`` (T*B, 1); ``grad_b_hh`` may be ``grad_b_ih``,
    and both empty without biases), and the input's gradient ``grad_x`` for its share of
    the steps (as 2-d rows, by ``w_ih_rows``, which the other half's gate rows have
    reached by then: it wrote them before its first step, and each step waits for the
    other's). Returns False if the other half aborted."""
    units = hi - lo
    width = dz_all.shape[2]
    gates = width // dh.shape[1]
    share, first = gates * units, gates * lo
    _gather_rows(w_hh[:, lo:hi], order, w_cols)
    if panels.shape[0] > 0:
        packed.pack(w_cols, panels)
    _gather_rows(w_ih, order[first:first + share], w_ih_rows[first:first + share])
    if not _half_backward(code, half, lo, hi, grad_steps, dh, dc, w_cols, panels, h, c, a,
                          tanh_c, gh, dz_all, dgh_all, back, inactive, counters):
        return False
    steps, batch = dz_all.shape[0], dz_all.shape[1]
    hidden = dh.shape[1]
    dz_rows = dz_all.reshape((steps * batch, width))
    dgh_rows = dgh_all.reshape((steps * batch, width))
    blas.matmul_t(dz_rows[:, first:first + share], x, grad_ih_rows)
    blas.matmul_t(dgh_rows[:, first:first + share], h_prev, grad_hh_rows)
    for g in range(gates):  # this half's columns of gate g, PyTorch's rows of gate g
        cols = slice(first + g * units, first + (g + 1) * units)
        rows = slice(g * hidden + lo, g * hidden + hi)
        grad_w_ih[rows] = grad_ih_rows[g * units:(g + 1) * units]
        grad_w_hh[rows] = grad_hh_rows[g * units:(g + 1) * units]
        if grad_b_ih.shape[0] > 0:
            blas.matmul_t(dz_rows[:, cols], ones, grad_b_ih[rows])
            if grad_b_hh.ctypes.data != grad_b_ih.ctypes.data:
                blas.matmul_t(dgh_rows[:, cols], ones, grad_b_hh[rows])
    begin, end = half * steps // 2, (half + 1) * steps // 2
    if end > begin:
        blas.matmul(dz_all[begin:end].reshape(((end - begin) * batch, width)), w_ih_rows,
                    False, grad_x[begin * batch:end * batch])
    return True


class _SplitLayer(_Compiled):
    """A one-direction layer, its hidden units in two halves on two threads (module
    docstring). Its gate rows are in half-major order (:attr:`order`): the first half's
    units' i, f, g, o rows, then the second's, so that each half's rows of the biases, of
    the tape's activations and of the gate gradients are one contiguous block. The
    weights stay the parameters themselves, in PyTorch's order: each half gathers or
    packs its own rows of them on its own thread (:func:`_half_task_forward`), and writes
    its rows of their gradients where PyTorch has them. (Reordered on the main thread,
    the weights' copies took 3.2 of 7.3 ms of the LSTM forward (10,1,512,512,1,1), and
    with the gradients' 12 of 23 ms of its training: NOTES.md, issue 13, twenty-third
    pass.)"""

    ALIGN_W_HH = False  # (the halves read their own copies or panels of it)

    def __init__(self, x, states, weights, cell, keep, active, position=(0, 1)):
        gates, hidden = cell.gates, weights[0].w_hh.shape[0] // cell.gates
        self.halves = ((0, hidden // 2), (hidden // 2, hidden))
        #: (G*H,) PyTorch's gate rows in half-major order
        self.order = np.concatenate([np.arange(g * hidden + lo, g * hidden + hi)
                                     for lo, hi in self.halves for g in range(gates)])
        super().__init__(x, states, weights, cell, keep, active, position=position)
        self.steps_inactive = steps_inactive(self)[0]
        unused = np.empty((1, 1, 1), dtype=self.dtype)  # a cell's unused buffers
        self.c_or_unused = unused if self.c is None else self.c[0]
        self.tanh_c_or_unused = unused if self.tanh_c is None else self.tanh_c[0]
        self.gh_or_unused = unused if self.gh is None else self.gh[0]
        # each half's share of the input projection's and the product's buffers
        chunk, batch = self.gx.shape[1], self.batch
        self.gx_half, self.z_half = [], []
        for lo, hi in self.halves:
            first, last = gates * lo, gates * hi
            self.gx_half.append(self.gx.reshape(-1)[chunk * batch * first:chunk * batch * last]
                                .reshape(chunk, batch, last - first))
            self.z_half.append(self.z.reshape(-1)[batch * first:batch * last]
                               .reshape(batch, last - first))

    def _rows(self, a):
        """A bias's gate rows in half-major order (class docstring)."""
        return None if a is None else a[self.order]

    def _weight_rows(self, a):
        """The weight itself, C-contiguous (class docstring)."""
        return np.ascontiguousarray(a)

    def forward(self):
        counters = np.zeros(_ABORT + 1, dtype=np.int64)
        x = np.ascontiguousarray(self.x_steps[0])
        w_ih, w_hh, dtype = self.w_ih[0], self.w_hh_stack[0], self.dtype
        tasks = []
        for t, (lo, hi) in enumerate(self.halves):
            rows = slice(self.gates * lo, self.gates * hi)
            order = self.order[rows]
            w_hh_half = workspace.scratch(f"w_hh_half{t}", (order.size, w_hh.shape[1]), dtype)
            tasks.append((self.code, t, lo, hi, x, w_ih, order,
                          workspace.scratch(f"w_ih_half{t}", (order.size, w_ih.shape[1]), dtype),
                          self.gx_half[t], w_hh, w_hh_half,
                          packed.panels_buffer(w_hh_half, True, self.batch, f"w_hh_panels{t}"),
                          self.x_bias[0, rows], self.hh_bias[0, rows], self.h[0],
                          self.c_or_unused, self.a[0], self.tanh_c_or_unused, self.gh_or_unused,
                          self.z_half[t], self.steps_inactive, counters, self.keep))

        def half(t: int) -> None:
            try:
                _half_task_forward(*tasks[t])
            except BaseException:
                counters[_ABORT] = 1  # the other half stops waiting for this one
                raise

        with numba_threaded.cores_for_two_threads():  # (on the main thread: splits)
            numba_threaded._on_two_threads(half, apart=True, until_started=True)

    def backward(self, grad_output, grad_finals):
        """BPTT (:func:`_half_backward`), then the gradients batched over time, all on the
        halves' threads with BLAS on one thread (:func:`_half_task_backward`): each half
        its gate rows of the weights' gradients, and the input's gradient for half the
        steps. (On BLAS's two threads, the weight gradients left OpenBLAS's second thread
        spinning for about 100 ms after them, which slowed the next forward's halves:
        NOTES.md, issue 13, seventh pass.) Returns ``(grad_x, grad_states,
        grad_weights)`` like the generic driver."""
        grad_steps, dh, dc = self._backward_start(grad_output, grad_finals)
        steps, batch, width, dtype = self.steps, self.batch, self.gx.shape[-1], self.dtype
        dz_all = self._buffer((1, steps, batch, width))
        dgh_all = self._buffer(dz_all.shape) if self.kind == "gru" else dz_all
        x = np.ascontiguousarray(self.x_steps[0])
        grad_x = self._grad_input_array(0, x.shape)
        grad_w_ih = np.empty(self.w_ih[0].shape, dtype)
        grad_w_hh = np.empty(self.w_hh_stack[0].shape, dtype)
        grad_b_ih = grad_b_hh = None
        if self.has_bias:
            grad_b_ih = np.empty(width, dtype)
            grad_b_hh = np.empty(width, dtype) if dgh_all is not dz_all else grad_b_ih
        none = np.empty(0, dtype)
        bias_ih, bias_hh = (none, none) if grad_b_ih is None else (grad_b_ih, grad_b_hh)
        ones = np.ones((steps * batch, 1), dtype)
        h_prev = np.ascontiguousarray(self._product_input(0)).reshape(steps * batch, self.P)
        counters = np.zeros(_ABORT + 1, dtype=np.int64)
        w_ih, w_hh = self.w_ih[0], self.w_hh_stack[0]
        w_ih_rows = workspace.scratch("w_ih_rows", w_ih.shape, dtype)  # (both halves')
        tasks = []
        for t, (lo, hi) in enumerate(self.halves):
            w_cols = workspace.scratch(f"w_cols{t}", (w_hh.shape[0], hi - lo), dtype)
            share = self.gates * (hi - lo)
            tasks.append((self.code, t, lo, hi, grad_steps[0], dh[0],
                          dh[0] if dc is None else dc[0], w_hh, self.order, w_cols,
                          packed.panels_buffer(w_cols, False, batch, f"w_hh_panels{t}"),
                          self.h[0], self.c_or_unused, self.a[0], self.tanh_c_or_unused,
                          self.gh_or_unused, dz_all[0], dgh_all[0],
                          np.empty((batch, hi - lo), dtype=dtype), self.steps_inactive,
                          counters, x.reshape(steps * batch, -1), h_prev, w_ih, w_ih_rows,
                          workspace.scratch(f"grad_ih_rows{t}", (share, w_ih.shape[1]), dtype),
                          workspace.scratch(f"grad_hh_rows{t}", (share, self.P), dtype),
                          grad_w_ih, grad_w_hh, bias_ih[:, None], bias_hh[:, None], ones,
                          grad_x.reshape(steps * batch, -1)))

        def half(t: int) -> None:
            try:
                _half_task_backward(*tasks[t])
            except BaseException:
                counters[_ABORT] = 1
                raise

        with numba_threaded.cores_for_two_threads():
            numba_threaded._on_two_threads(half, apart=True, until_started=True)
        if grad_b_hh is grad_b_ih and grad_b_ih is not None:
            grad_b_hh = grad_b_ih.copy()  # (two parameters: two arrays)
        weights = LayerWeights(grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh)
        return self._combine([(grad_x, weights)], dh, dc)


#: The fewest multiply-adds of a layer call's products (``T * B * G*H * (I + P)``) for
#: which its units split between two threads. Since the halves start on two cores
#: (:class:`_SplitLayer`), the split took 0.64-1.01x the fused steps' time at 26-210 M
#: (all three cells, forward and training; NOTES.md, issue 13, twenty-second pass);
#: before, with the halves often sharing a core after a pause, a least size of 2^28 had
#: kept it from 39-157 M (seventh pass). Below 2^24 a call's hand-off and set-up (about
#: 0.1-0.3 ms) would be most of it.
MIN_WORK = 1 << 24


#: From this many batch rows on, a one-direction layer of these cells that the whole
#: loop would run (:func:`.numba_layer.fits`) splits instead, where :func:`splits`
#: allows. At (100, B, H, H, 1, 1) the LSTM's split took 0.47-0.51x the whole loop's
#: time forward at B = 8-16 and H = 64 (training 0.75x), 0.70x forward and 0.75x
#: training at B = 4 and H = 128, 0.91x and 0.98x at B = 4 and H = 64; the GRU's
#: 1.33x forward and 0.82x training at B = 16, the RNN's 1.3-2.5x forward: both keep the
#: whole loop (NOTES.md, issue 13, twenty-second pass).
BEFORE_WHOLE_LOOP = {"lstm": 4}


def before_whole_loop(x, weights, cell, hooks) -> bool:
    """Whether a layer that fits the whole loop splits instead (:data:`BEFORE_WHOLE_LOOP`)."""
    least = BEFORE_WHOLE_LOOP.get(cell.name)
    return least is not None and x.shape[1] >= least and splits(x, weights, cell, hooks)


def splits(x, weights, cell, hooks) -> bool:
    """Whether a layer above the whole-loop limits runs its hidden units in two halves
    on two threads: one direction of two units or more, no per-step hooks or projection,
    at least :data:`MIN_WORK`, two cores or more, called from the main thread (the only
    one whose BLAS setting NumPy's OpenBLAS takes: elsewhere the halves' products would
    each run on BLAS's threads, and the fused steps run instead)."""
    w_hh = weights[0].w_hh
    if len(weights) != 1 or hooks is not None or weights[0].w_hr is not None:
        return False
    work = x.shape[0] * x.shape[1] * w_hh.shape[0] * (x.shape[2] + w_hh.shape[1])
    return (w_hh.shape[0] >= 2 * cell.gates and work >= MIN_WORK and blas.AVAILABLE
            and numba_threaded.usable_cores() >= 2
            and threading.current_thread() is threading.main_thread())
