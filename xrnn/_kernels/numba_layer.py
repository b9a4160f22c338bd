"""The compiled CPU path (optional, ``pip install xrnn[fast]``): Numba, four ways.

- **Whole loop** (:class:`_CompiledLayer`, small layers: :func:`fits`). The NumPy fast
  path (:mod:`.numpy_layer`) would spend its time on Python and on its ~10 NumPy calls
  per step. Here the whole time loop of a layer, forward and BPTT, is one compiled call:
  the recurrent product as explicit loops (contiguous inner axis, vectorised by LLVM;
  Numba's ``np.dot`` would need SciPy) and every gate in the same pass, on one thread (a
  thread pool would cost more than it gains and fight OpenBLAS's for the cores), with
  the layer's other products on one BLAS thread too.
- **A direction per thread** (:mod:`.numba_threaded`, bidirectional layers above the
  whole-loop limits): each direction's loop one compiled call, with BLAS products, the
  two on two cores.
- **Hidden units split between two threads** (:mod:`.numba_split`, one-direction layers
  above the limits): each thread its half of the units' product and gates, forward and
  backward, the two meeting once a step.
- **Fused steps** (:class:`_FusedLayer`, every other layer, and layers with per-step
  options): the NumPy kernel's loop and BLAS products, with each step's elementwise work
  (8-14 NumPy calls) one compiled call per direction.

Either way the gates' ``exp``/``tanh`` are vectorised float32 polynomials
(:mod:`.numba_math`), and the weights are read in PyTorch's layout (gate order i, f, g, o
and r, z, n, unscaled; ``W^T`` as a transposed view): unlike the NumPy kernel's steps,
compiled code needs no reordered, scaled copy of the weights, which cost up to a third
of a B = 1 LSTM forward (NOTES.md). Everything else is the NumPy kernel's: the buffers
(the tape), the input projection by chunks of steps, the output, the weight gradients
batched over time. Functions are compiled per dtype on first use and cached on disk
(``cache=True``). Measured in benchmarks/NOTES.md (issue 13).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numba
import numpy as np
import threadpoolctl

from ..functional.cells import Cell
from ..functional.weights import LayerWeights
from . import blas, numpy_layer, packed
from .blas import _accumulate
from .numba_math import exp, fma, tanh
from .workspace import scratch

#: Per cell family, the largest ``B * G * H * P`` (multiply-adds of one direction's
#: recurrent product per step) whose whole loop runs compiled; above it the loop is the
#: NumPy kernel's with fused compiled steps (:class:`_FusedLayer`), whose products are
#: BLAS's (blocked, threaded). Measured in benchmarks/NOTES.md (issue 13).
MAX_STEP_WORK = {"rnn": 1 << 16, "lstm": 1 << 18, "gru": 1 << 18}
#: From this size of h on, at most :data:`DOT_BATCH` rows and for these cells, the whole
#: loop's product takes dot products with the rows of ``W_hh`` itself; else it adds up
#: rows of a transposed copy made per call. (1, 128) x (128, 512): 3.13 us against
#: 3.54 us plus the copy, 51 us a call. A/B forward, (100,1,64,128,1,1): LSTM 0.76x, RNN
#: 0.95x, GRU 1.02-1.08x; LSTM (100,2,64,128,1,1) 0.93x, (100,4,64,128,1,1) 1.07x; at 64
#: units the two are within 5% (NOTES.md, issue 13, sixth pass).
DOT_HIDDEN = 128
DOT_BATCH = 2
DOT_KINDS = ("lstm", "rnn_tanh", "rnn_relu", "rnn_identity")
#: From :data:`BATCH_DOT_BATCH` rows and :data:`BATCH_DOT_HIDDEN` values of h on, where
#: the panels do not apply (:data:`PANELS_BATCH`: past their rows, or another dtype), every
#: cell's whole loop makes each step's product for all rows at once, dot products four
#: rows at a time (:func:`_batch_dots`), with no transposed copy. (4, 128) x (128, 512):
#: 8.7 us against 14.0 a row at a time from the copy; (8, 64) x (64, 256) 5.6 against
#: 7.1; (16, 32) x (32, 128) 5.5 against 3.4 (NOTES.md, issue 13, eighth pass).
BATCH_DOT_BATCH, BATCH_DOT_HIDDEN = 4, 64
#: From 2 to this many rows, the fused steps' recurrent products are compiled ones on one
#: thread (:func:`.blas.matmul`: the forward's dot products from
#: :data:`.blas.DOTS_INNER` values of h on, the backward's sums of rows), not NumPy's
#: ``matmul`` on BLAS's threads. Forward: (4, 256) x (256, 1024) 44 us against 81,
#: (4, 512) x (512, 2048) 160 against 289, but at 8 rows 69 against 60, 284 against
#: 223; backward: (2, 2048) x (2048, 512) 110 against 249, (4, 2048) x (2048, 512) 181
#: against 250 (NOTES.md, issue 13, eighth pass).
FUSED_ONE_THREAD_BATCH = 4
#: From this many rows and values of h on, the whole loop's forward products run on
#: ``W_hh``'s panels, packed once a call (:mod:`.packed`): 0.6-0.8x the time of the dot
#: products at (4-32, 32-128) x (32-128, 4 * (32-128)) on one core; in the layers 0.75-0.97x
#: the forward's time (NOTES.md, issue 13, twenty-third pass).
PANELS_BATCH, PANELS_HIDDEN = 4, 32
#: Elman activations, as the compiled code's codes.
_ACTIVATION = {"rnn_tanh": 0, "rnn_relu": 1, "rnn_identity": 2}
#: The other cells' codes, for the loops that take the cell as an argument; every code.
_LSTM, _GRU = 3, 4
_CODES = {**_ACTIVATION, "lstm": _LSTM, "gru": _GRU}
KINDS = (*_ACTIVATION, "lstm", "gru")

#: "contract" lets LLVM fuse multiply-adds (FMA); "arcp" and "nsz" let it rewrite
#: divisions and signed zeros. No flag that assumes away NaN or inf ("nnan", "ninf"):
#: NaN in an input still comes out as NaN.
_FLAGS = {"error_model": "numpy", "fastmath": {"contract", "arcp", "nsz"}}
_jit = numba.njit(cache=True, nogil=True, **_FLAGS)
#: For a row's work that its callers' loops call row by row: compiled into each caller
#: (a call per row cost 0.4 ns a unit of the LSTM cell at (32, 128)).
_inlined = numba.njit(inline="always", **_FLAGS)


def _step_work(x, weights: Sequence[LayerWeights]) -> int:
    """``B * G * H * P``: one direction's recurrent multiply-adds per step."""
    return x.shape[1] * weights[0].w_hh.shape[0] * weights[0].w_hh.shape[1]


def fits(x, weights: Sequence[LayerWeights], cell: Cell) -> bool:
    """Whether this layer's whole loop runs compiled: a supported cell without projection,
    small enough (:data:`MAX_STEP_WORK`)."""
    if cell.name not in KINDS or weights[0].w_hr is not None:
        return False
    return _step_work(x, weights) <= MAX_STEP_WORK[cell.name.split("_")[0]]


@functools.cache
def _blas_libraries() -> list:
    """The loaded BLAS libraries (NumPy's OpenBLAS, and any other), found once."""
    return threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers


@contextlib.contextmanager
def one_blas_thread() -> Iterator[bool]:
    """Run the block's BLAS calls on one thread (process-wide, like every BLAS setting),
    then restore the previous counts; yields whether that took.

    On the main thread, where NumPy's OpenBLAS count is known, only that library (the
    one BLAS that xrnn calls) is set, by writing its count directly
    (:func:`.blas.one_thread`: no worker started, about 1 us); otherwise every BLAS
    library is set through threadpoolctl. Whether OpenBLAS's own API takes the setting
    varies: it ignored it off the main thread in the fifth pass, and in the CI suite,
    after the Dask tests, on the main thread too; OpenBLAS 0.3.31 took it from other
    threads elsewhere (NOTES.md, issue 13, fifth and seventeenth passes).

    A small layer's products gain little from a second OpenBLAS thread when the other
    core is idle, and are stalled 10-300x by it when that core is busy (another process,
    or torch's spinning OpenMP threads): (100, 64) @ (64, 512) took 14 ms on two threads
    beside one busy process, 0.12 ms on one (NOTES.md, issue 13).
    """
    if threading.current_thread() is threading.main_thread():
        with blas.one_thread() as single:  # (NumPy's OpenBLAS, the only BLAS used here)
            if single:
                yield True
                return
    libraries = _blas_libraries()
    counts = [library.get_num_threads() for library in libraries]
    for library in libraries:
        library.set_num_threads(1)
    try:
        yield all(library.get_num_threads() == 1 for library in libraries)
    finally:
        for library, count in zip(libraries, counts):
            library.set_num_threads(count)


# compiled loops ---------------------------------------------------------------------------
# Shapes as in numpy_layer: gx (D, chunk, B, GH); w_t (D, P, GH), or W_hh itself (D, GH, P)
# but in mode ``_TRANSPOSED``; h (D, T+1, B, P);
# c (D, T+1, B, H); taped buffers (D, T or 1, B, ·); inactive (D, T, B).
# Every constant is made in the arrays' dtype (``one = z.dtype.type(1)``): a Python float
# literal would turn float32 arithmetic into float64. Inner loops run over units, are
# contiguous and branch-free, so LLVM vectorises the products and the gate algebra,
# exp and tanh included in float32 (``numba_math``: polynomials, not libm calls).

@numba.njit(cache=True, nogil=True, error_model="numpy",
            fastmath={"contract", "arcp", "nsz", "reassoc"})
def _dots(z, bias, h_row, w):
    """``z = bias + w h_row`` (w (W, K)): four rows' dot products at a time, each summed
    in any order ("reassoc", so that LLVM vectorises the sums)."""
    width, size = w.shape
    rest = width - width % 4
    for j in range(0, rest, 4):
        r0, r1, r2, r3 = w[j], w[j + 1], w[j + 2], w[j + 3]
        s0 = s1 = s2 = s3 = z.dtype.type(0)
        for k in range(size):
            hk = h_row[k]
            s0 += r0[k] * hk
            s1 += r1[k] * hk
            s2 += r2[k] * hk
            s3 += r3[k] * hk
        z[j], z[j + 1], z[j + 2], z[j + 3] = (s0 + bias[j], s1 + bias[j + 1], s2 + bias[j + 2],
                                              s3 + bias[j + 3])
    for j in range(rest, width):
        total, row = z.dtype.type(0), w[j]
        for k in range(size):
            total += row[k] * h_row[k]
        z[j] = total + bias[j]


@numba.njit(cache=True, nogil=True, error_model="numpy",
            fastmath={"contract", "arcp", "nsz", "reassoc"})
def _batch_dots(z, bias, h, w):
    """``z = bias + h w^T`` (z (B, W), h (B, K), w (W, K)): for four rows of ``h`` at a
    time, two rows of ``w`` against all four in one pass over K (eight sums, so each row
    of ``w`` is read once per four rows of ``h``); the rows left over by :func:`_dots`.
    (:func:`.blas._rows_dots`, for :func:`.blas.matmul`, pairs rows the other way: four
    of ``w`` against two of ``a``, faster at two or three rows.)"""
    batch, size = h.shape
    width = w.shape[0]
    fours, pairs = batch - batch % 4, width - width % 2
    for b in range(0, fours, 4):
        h0, h1, h2, h3 = h[b], h[b + 1], h[b + 2], h[b + 3]
        for j in range(0, pairs, 2):
            r0, r1 = w[j], w[j + 1]
            s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = z.dtype.type(0)
            for k in range(size):
                w0, w1 = r0[k], r1[k]
                s00 += w0 * h0[k]
                s01 += w1 * h0[k]
                s10 += w0 * h1[k]
                s11 += w1 * h1[k]
                s20 += w0 * h2[k]
                s21 += w1 * h2[k]
                s30 += w0 * h3[k]
                s31 += w1 * h3[k]
            z[b, j], z[b, j + 1] = s00 + bias[j], s01 + bias[j + 1]
            z[b + 1, j], z[b + 1, j + 1] = s10 + bias[j], s11 + bias[j + 1]
            z[b + 2, j], z[b + 2, j + 1] = s20 + bias[j], s21 + bias[j + 1]
            z[b + 3, j], z[b + 3, j + 1] = s30 + bias[j], s31 + bias[j + 1]
        for j in range(pairs, width):
            row = w[j]
            for q in range(4):
                total, h_row = z.dtype.type(0), h[b + q]
                for k in range(size):
                    total += row[k] * h_row[k]
                z[b + q, j] = total + bias[j]
    for b in range(fours, batch):
        _dots(z[b], bias, h[b], w)


#: How the whole loop's forward makes ``h W_hh^T`` (:data:`DOT_HIDDEN`): a row at a time
#: from a transposed copy of ``W_hh`` (:func:`_accumulate`), a row at a time as dot
#: products with ``W_hh``'s rows (:func:`_dots`), or all rows of a step at once as dot
#: products four rows at a time (:func:`_batch_dots`), or all rows at once on ``W_hh``'s
#: packed panels (:func:`.packed.matmul`).
_TRANSPOSED, _ROW_DOTS, _BATCH_DOTS, _PANELS = 0, 1, 2, 3


@_inlined
def _step_product(zs, bias, h, w, panels, mode):
    """``zs = bias + h W^T`` for all of a step's rows ``h`` (B, K): on ``panels`` in mode
    :data:`_PANELS`, else as :func:`_batch_dots` with ``W`` (W, K) itself."""
    if mode == _PANELS:
        packed.matmul(h, panels, zs)
        for b in range(zs.shape[0]):
            row = zs[b]
            for j in range(row.size):
                row[j] += bias[j]
    else:
        _batch_dots(zs, bias, h, w)


@_jit
def _product(z, bias, h_row, w, mode):
    """``z = bias + h_row W^T``: ``w`` is ``W^T`` (K, W) in mode :data:`_TRANSPOSED`,
    else ``W`` itself (W, K), read by rows either way."""
    if mode == _TRANSPOSED:
        z[:] = bias
        _accumulate(z, h_row, w)
    else:
        _dots(z, bias, h_row, w)


@_jit
def _elman_forward(gx, start, count, w_t, panels, mode, bias, h, inactive, activation):
    directions, _, batch, width = gx.shape
    zs = np.empty((batch, width), dtype=gx.dtype)
    zero = zs.dtype.type(0)
    for s in range(start, start + count):
        for d in range(directions):
            if mode >= _BATCH_DOTS:
                _step_product(zs, bias[d], h[d, s], w_t[d], panels[d], mode)
            for b in range(batch):
                out, z = h[d, s + 1, b], zs[b]
                if inactive[d, s, b]:
                    out[:] = h[d, s, b]
                    continue
                if mode < _BATCH_DOTS:
                    _product(z, bias[d], h[d, s, b], w_t[d], mode)
                x_row = gx[d, s - start, b]
                if activation == 0:
                    for j in range(width):
                        out[j] = tanh(z[j] + x_row[j])
                elif activation == 1:
                    for j in range(width):
                        out[j] = max(z[j] + x_row[j], zero)
                else:
                    for j in range(width):
                        out[j] = z[j] + x_row[j]


@_inlined
def _four_blocks(v):
    """The LSTM's gate blocks i, f, g, o of ``v``, each a view of its own
    (:func:`_lstm_cell`)."""
    n = v.size // 4
    return v[:n], v[n:2 * n], v[2 * n:3 * n], v[3 * n:]


@_inlined
def _lstm_cell(z, c_old, c_new, gates, t_row, h_new):
    """One batch row of the LSTM: ``gates`` i, f, g, o from their pre-activations ``z``,
    the new c, its tanh ``t_row`` and the new h. The four gates and c in one loop (four
    independent ``exp`` to interleave; each block a view of its own, so that LLVM
    vectorises the loop: with offsets into one array it did not), tanh(c) and h in two
    more: 4.7-4.9 ns a unit at (32, 128) against 5.4-5.9 in six loops (NOTES.md, issue
    13, twelfth pass). (Loops index blocks from 0: a loop over ``range(2 * hidden, 3 * hidden)``
    kept its negative-index check and ran 1.6x slower.)"""
    one = z.dtype.type(1)
    two = one + one
    z_i, z_f, z_g, z_o = _four_blocks(z)
    i, f, g, o = _four_blocks(gates)
    hidden = z_i.size
    for j in range(hidden):
        i_j = one / (one + exp(-z_i[j]))
        f_j = one / (one + exp(-z_f[j]))
        g_j = two / (one + exp(-two * z_g[j])) - one  # tanh
        i[j], f[j], g[j] = i_j, f_j, g_j
        o[j] = one / (one + exp(-z_o[j]))
        c_new[j] = fma(f_j, c_old[j], i_j * g_j)  # (the same rounding in both cells)
    for j in range(hidden):
        t_row[j] = tanh(c_new[j])
    for j in range(hidden):
        h_new[j] = o[j] * t_row[j]


@_inlined
def _lstm_cell_untaped(z, c_old, c_new, h_new):
    """:func:`_lstm_cell` where no backward follows (nothing taped): nothing goes to the
    step buffers; o goes back into its own block of ``z`` for the second loop, and
    tanh(c) straight into h. (With the gates and tanh(c) stored where nothing read them,
    the split layer's gates took 1.1-1.4x as long in its loop: NOTES.md, issue 13,
    nineteenth pass.)"""
    one = z.dtype.type(1)
    two = one + one
    z_i, z_f, z_g, z_o = _four_blocks(z)
    for j in range(z_i.size):
        i_j = one / (one + exp(-z_i[j]))
        f_j = one / (one + exp(-z_f[j]))
        g_j = two / (one + exp(-two * z_g[j])) - one  # tanh
        z_o[j] = one / (one + exp(-z_o[j]))
        c_new[j] = fma(f_j, c_old[j], i_j * g_j)  # (the same rounding in both cells)
    for j in range(z_i.size):
        h_new[j] = z_o[j] * tanh(c_new[j])


@_jit
def _lstm_forward(gx, start, count, w_t, panels, mode, bias, h, c, a, tanh_c, inactive, tape):
    directions, _, batch, width = gx.shape
    taped = a.shape[1]
    zs = np.empty((batch, width), dtype=gx.dtype)
    for s in range(start, start + count):
        k = s if taped > 1 else 0
        for d in range(directions):
            if mode >= _BATCH_DOTS:
                _step_product(zs, bias[d], h[d, s], w_t[d], panels[d], mode)
            for b in range(batch):
                if inactive[d, s, b]:
                    h[d, s + 1, b] = h[d, s, b]
                    c[d, s + 1, b] = c[d, s, b]
                    continue
                z = zs[b]
                if mode < _BATCH_DOTS:
                    _product(z, bias[d], h[d, s, b], w_t[d], mode)
                x_row = gx[d, s - start, b]
                for j in range(width):
                    z[j] += x_row[j]
                if tape:
                    _lstm_cell(z, c[d, s, b], c[d, s + 1, b], a[d, k, b], tanh_c[d, k, b],
                               h[d, s + 1, b])
                else:
                    _lstm_cell_untaped(z, c[d, s, b], c[d, s + 1, b], h[d, s + 1, b])


@_jit
def _gru_cell(hh, x_row, x_bias, h_old, gates, h_new):
    """One batch row of the GRU: gates r, z, n from ``hh`` (h W_hh^T + b_hh), ``x_row``
    (x W_ih^T) and ``x_bias`` (b_ih); the new h."""
    hidden = hh.size // 3
    one = hh.dtype.type(1)
    rz, r, z, n = gates[:2 * hidden], gates[:hidden], gates[hidden:2 * hidden], gates[2 * hidden:]
    for j in range(2 * hidden):
        rz[j] = one / (one + exp(-(x_row[j] + x_bias[j] + hh[j])))
    hn, xn, bn = hh[2 * hidden:], x_row[2 * hidden:], x_bias[2 * hidden:]
    for j in range(hidden):
        n[j] = tanh(r[j] * hn[j] + xn[j] + bn[j])
    for j in range(hidden):
        h_new[j] = (h_old[j] - n[j]) * z[j] + n[j]


@_jit
def _gru_forward(gx, start, count, w_t, panels, mode, x_bias, hh_bias, h, a, gh, inactive):
    directions, _, batch, width = gx.shape
    taped = a.shape[1]
    for s in range(start, start + count):
        k = s if taped > 1 else 0
        for d in range(directions):
            if mode >= _BATCH_DOTS:
                _step_product(gh[d, k], hh_bias[d], h[d, s], w_t[d], panels[d], mode)
            for b in range(batch):
                if inactive[d, s, b]:
                    h[d, s + 1, b] = h[d, s, b]
                    continue
                hh = gh[d, k, b]
                if mode < _BATCH_DOTS:
                    _product(hh, hh_bias[d], h[d, s, b], w_t[d], mode)
                _gru_cell(hh, gx[d, s - start, b], x_bias[d], h[d, s, b], a[d, k, b],
                          h[d, s + 1, b])


@_jit
def _lstm_row_back(gates, tc, c_old, row, dc_row, dz):
    """One batch row of the LSTM backward: gate gradients ``dz`` (i, f, g, o) from ``row``
    (dh) and ``dc_row`` (dc); ``dc_row`` becomes the previous c's."""
    hidden = dz.size // 4
    one = dz.dtype.type(1)
    for j in range(hidden):
        i, f = gates[j], gates[hidden + j]
        g, o = gates[2 * hidden + j], gates[3 * hidden + j]
        dcj = dc_row[j] + (one - tc[j] * tc[j]) * o * row[j]
        dz[j] = dcj * g * (i - i * i)
        dz[hidden + j] = dcj * c_old[j] * (f - f * f)
        dz[2 * hidden + j] = dcj * i * (one - g * g)
        dz[3 * hidden + j] = row[j] * tc[j] * (o - o * o)
        dc_row[j] = dcj * f


@_jit
def _gru_row_back(gates, hh, h_old, row, dz, dgh, direct):
    """One batch row of the GRU backward: gate gradients ``dz`` (input side) and ``dgh``
    (recurrent side) from ``row`` (dh); ``direct`` (may be ``row`` itself) = dh z, the
    gradient that reaches the previous h without ``W_hh``."""
    hidden = dz.size // 3
    one = dz.dtype.type(1)
    for j in range(hidden):
        r, zj, n = gates[j], gates[hidden + j], gates[2 * hidden + j]
        dn = (one - n * n) * row[j] * (one - zj)
        dr = dn * hh[2 * hidden + j] * ((one - r) * r)
        dzj = (h_old[j] - n) * row[j] * ((one - zj) * zj)
        dz[j], dz[hidden + j], dz[2 * hidden + j] = dr, dzj, dn
        dgh[j], dgh[hidden + j], dgh[2 * hidden + j] = dr, dzj, dn * r
        direct[j] = row[j] * zj


@_jit
def _elman_row_back(out, row, dz, activation):
    """One batch row of an Elman cell's backward: ``dz`` from ``row`` (dh) and ``out``
    (the cell's new h), for the activation's code (:data:`_ACTIVATION`)."""
    one, zero = dz.dtype.type(1), dz.dtype.type(0)
    if activation == 0:
        for p in range(dz.size):
            dz[p] = (one - out[p] * out[p]) * row[p]
    elif activation == 1:
        for p in range(dz.size):
            dz[p] = row[p] if out[p] > zero else zero
    else:
        dz[:] = row


@_jit
def _batch_accumulate(out, coef, rows):
    """``out += coef @ rows`` (out (B, W), coef (B, K), rows (K, W)): for four rows of
    ``out`` at a time, two rows of ``rows`` a pass over W (each row of ``rows`` read once
    per four of ``out``); the rows left over by :func:`_accumulate`."""
    batch, size = coef.shape
    width = rows.shape[1]
    fours, pairs = batch - batch % 4, size - size % 2
    for b in range(0, fours, 4):
        o0, o1, o2, o3 = out[b], out[b + 1], out[b + 2], out[b + 3]
        c0, c1, c2, c3 = coef[b], coef[b + 1], coef[b + 2], coef[b + 3]
        for k in range(0, pairs, 2):
            r, q = rows[k], rows[k + 1]
            a0, a1, a2, a3 = c0[k], c1[k], c2[k], c3[k]
            e0, e1, e2, e3 = c0[k + 1], c1[k + 1], c2[k + 1], c3[k + 1]
            for j in range(width):
                rj, qj = r[j], q[j]
                o0[j] += a0 * rj + e0 * qj
                o1[j] += a1 * rj + e1 * qj
                o2[j] += a2 * rj + e2 * qj
                o3[j] += a3 * rj + e3 * qj
        for k in range(pairs, size):
            r = rows[k]
            a0, a1, a2, a3 = c0[k], c1[k], c2[k], c3[k]
            for j in range(width):
                o0[j] += a0 * r[j]
                o1[j] += a1 * r[j]
                o2[j] += a2 * r[j]
                o3[j] += a3 * r[j]
    for b in range(fours, batch):
        _accumulate(out[b], coef[b], rows)


@_jit
def _back_to_h(dh, dgh, w, inactive, batched, replace, back):
    """One step's gate gradients back to h: each active row of ``dh`` (B, P) becomes
    (``replace``) or gets ``dgh`` (B, G*H) @ ``w`` (G*H, P); padded rows are left alone.
    ``batched``: all rows at once (:func:`_batch_accumulate`, into ``back`` (B, P))."""
    zero = dh.dtype.type(0)
    if batched:
        back[:] = zero
        _batch_accumulate(back, dgh, w)
    for b in range(dh.shape[0]):
        if inactive[b]:
            continue
        row = dh[b]
        if batched:
            if replace:
                row[:] = back[b]
            else:
                for p in range(row.size):
                    row[p] += back[b, p]
        else:
            if replace:
                row[:] = zero
            _accumulate(row, dgh[b], w)


@_jit
def _elman_backward(grad_steps, dh, w, h, dz_all, inactive, activation, batched, back):
    directions, steps, batch, width = dz_all.shape
    zero = dh.dtype.type(0)
    for s in range(steps - 1, -1, -1):
        for d in range(directions):
            for b in range(batch):
                dz, row = dz_all[d, s, b], dh[d, b]
                grad = grad_steps[d, s, b]
                for p in range(width):
                    row[p] += grad[p]
                if inactive[d, s, b]:  # a padded step passes the gradient through
                    dz[:] = zero
                    continue
                _elman_row_back(h[d, s + 1, b], row, dz, activation)
            _back_to_h(dh[d], dz_all[d, s], w[d], inactive[d, s], batched, True, back)


@_jit
def _lstm_backward(grad_steps, dh, dc, w, c, a, tanh_c, dz_all, inactive, batched, back):
    directions, steps, batch, width = dz_all.shape
    hidden = width // 4
    zero = dh.dtype.type(0)
    for s in range(steps - 1, -1, -1):
        for d in range(directions):
            for b in range(batch):
                dz, row, dc_row = dz_all[d, s, b], dh[d, b], dc[d, b]
                grad = grad_steps[d, s, b]
                for p in range(hidden):
                    row[p] += grad[p]
                if inactive[d, s, b]:
                    dz[:] = zero
                    continue
                _lstm_row_back(a[d, s, b], tanh_c[d, s, b], c[d, s, b], row, dc_row, dz)
            _back_to_h(dh[d], dz_all[d, s], w[d], inactive[d, s], batched, True, back)


@_jit
def _gru_backward(grad_steps, dh, w, h, a, gh, dz_all, dgh_all, inactive, batched, back):
    directions, steps, batch, width = dz_all.shape
    hidden = width // 3
    zero = dh.dtype.type(0)
    for s in range(steps - 1, -1, -1):
        for d in range(directions):
            for b in range(batch):
                dz, dgh, row = dz_all[d, s, b], dgh_all[d, s, b], dh[d, b]
                grad = grad_steps[d, s, b]
                for p in range(hidden):
                    row[p] += grad[p]
                if inactive[d, s, b]:
                    dz[:] = zero
                    dgh[:] = zero
                    continue
                # row becomes dh z, the path that does not go through W_hh
                _gru_row_back(a[d, s, b], gh[d, s, b], h[d, s, b], row, dz, dgh, row)
            _back_to_h(dh[d], dgh_all[d, s], w[d], inactive[d, s], batched, False, back)


# fused steps for larger layers -------------------------------------------------------------
# One direction's elementwise work for a step, after the NumPy kernel's BLAS product:
# (B, ·) C-contiguous views of its buffers (one call per direction: a (D, B, ·) view is
# not contiguous, and Numba does not vectorise non-contiguous arrays, 5x slower). Each
# call replaces 8-14 NumPy calls and passes over memory.

@_jit
def _elman_row(z, x_row, bias, out, activation):
    """One batch row: ``out = activation(z + x_row + bias)`` (codes of :data:`_ACTIVATION`)."""
    zero = z.dtype.type(0)
    if activation == 0:
        for j in range(z.size):
            out[j] = tanh(z[j] + x_row[j] + bias[j])
    elif activation == 1:
        for j in range(z.size):
            out[j] = max(z[j] + x_row[j] + bias[j], zero)
    else:
        for j in range(z.size):
            out[j] = z[j] + x_row[j] + bias[j]


@_jit
def _elman_step(z, gx, bias, h_out, activation):
    """``h_out = activation(z + gx + bias)``, row by row."""
    for b in range(z.shape[0]):
        _elman_row(z[b], gx[b], bias, h_out[b], activation)


@_jit
def _lstm_step(z, gx, bias, c_prev, c_new, a, tanh_c, h_out, tape):
    """``z += gx + bias``; new c and h; with ``tape``, the gates in ``a`` (i, f, g, o)
    and tanh(c) in ``tanh_c`` (else neither is written)."""
    for b in range(z.shape[0]):
        zr, xr = z[b], gx[b]
        for j in range(zr.size):
            zr[j] += xr[j] + bias[j]
        if tape:
            _lstm_cell(zr, c_prev[b], c_new[b], a[b], tanh_c[b], h_out[b])
        else:
            _lstm_cell_untaped(zr, c_prev[b], c_new[b], h_out[b])


@_jit
def _gru_step(gh, gx, x_bias, hh_bias, h_prev, a, h_out):
    """``gh`` (h W_hh^T) gets ``hh_bias``; gates ``a``; new h."""
    for b in range(gh.shape[0]):
        hh = gh[b]
        for j in range(hh.size):
            hh[j] += hh_bias[j]
        _gru_cell(hh, gx[b], x_bias, h_prev[b], a[b], h_out[b])


@_jit
def _tanh_back(h, dh, dz):
    """``dz = dh (1 - h^2)``."""
    one = dz.dtype.type(1)
    for b in range(dz.shape[0]):
        hr, g, out = h[b], dh[b], dz[b]
        for j in range(dz.shape[1]):
            out[j] = (one - hr[j] * hr[j]) * g[j]


@_jit
def _lstm_back(dh, dc, a, tanh_c, c_prev, dz):
    """Gate gradients ``dz`` from ``dh`` and ``dc``; ``dc`` becomes the previous c's."""
    for b in range(dz.shape[0]):
        _lstm_row_back(a[b], tanh_c[b], c_prev[b], dh[b], dc[b], dz[b])


@_jit
def _gru_back(dh, a, gh, h_prev, dz, dgh, direct):
    """Gate gradients ``dz`` (input side) and ``dgh`` (recurrent side); ``direct`` = dh z,
    the gradient that reaches the previous h without ``W_hh``."""
    for b in range(dz.shape[0]):
        _gru_row_back(a[b], gh[b], h_prev[b], dh[b], dz[b], dgh[b], direct[b])


# the layer ------------------------------------------------------------------------------

class _Compiled(numpy_layer._Layer):
    """What the compiled layers share: the weights in PyTorch's layout, and the biases
    added by the compiled steps, a row at a time, rather than in a pass of their own over
    each chunk of the input projection (as the NumPy kernel does): ``x_bias`` (D, G*H)
    goes with ``x W_ih^T`` (b_ih + b_hh; the GRU's b_ih), ``hh_bias`` with ``h W_hh^T``
    (the GRU's b_hh); zeros without bias."""

    ORDER = SCALE = {}

    def __init__(self, x, states, weights, cell, keep, active, hooks=None, position=(0, 1)):
        super().__init__(x, states, weights, cell, keep, active, hooks, position)
        self.code = _CODES[self.kind]  # (the loops that take the cell as an argument)
        self.x_bias = self.hh_bias = np.zeros((self.D, self.gx.shape[-1]), dtype=self.dtype)
        if self.has_bias:
            gru = self.kind == "gru"
            self.x_bias = (np.stack([self._rows(w.b_ih) for w in weights]) if gru
                           else self.gx_bias)
            if gru:
                self.hh_bias = np.stack([self._rows(w.b_hh) for w in weights])
        self.gx_bias = None  # (what _project would add)

    def _backward_start(self, grad_output, grad_finals):
        """What a compiled BPTT starts from: ``grad_steps`` (D, T, B, P), the outputs'
        gradients per direction in step order, zero where padded; ``dh`` and ``dc``
        (LSTM, else None) from the final states' gradients, zeros where None."""
        directions, steps, batch, dtype = self.D, self.steps, self.batch, self.dtype
        grad_steps = self._buffer((directions, steps, batch, self.P))
        if grad_output is None:
            grad_steps[...] = 0.0
        else:
            grad_steps[0] = grad_output[..., :self.P]
            if directions == 2:
                grad_steps[1] = grad_output[::-1, :, self.P:]
            if self.inactive is not None:
                np.copyto(grad_steps, 0.0, where=self.inactive)

        def start(grad, size):
            return (np.zeros((directions, batch, size), dtype=dtype) if grad is None
                    else np.array(grad, dtype=dtype))

        dc = start(grad_finals[1], self.H) if self.kind == "lstm" else None
        return grad_steps, start(grad_finals[0], self.P), dc


def steps_inactive(layer) -> np.ndarray:
    """(D, T, B) C-contiguous booleans, as the compiled loops read them: where a
    direction's step is padded (none without lengths)."""
    if layer.inactive is None:
        return np.zeros((layer.D, layer.steps, layer.batch), dtype=np.bool_)
    return np.ascontiguousarray(layer.inactive[..., 0])


class _CompiledLayer(_Compiled):
    """The NumPy kernel's layer with its forward and backward time loops compiled."""

    def __init__(self, x, states, weights, cell, keep, active, position=(0, 1)):
        super().__init__(x, states, weights, cell, keep, active, position=position)
        # the forward's product reads W_hh's panels (PANELS_BATCH), or rows: of W_hh
        # itself (dot products, DOT_HIDDEN, BATCH_DOT_BATCH), else of a transposed copy
        # (only the forward: the backward reads W_hh)
        self.panels = np.empty((self.D, 0, 1, 1), dtype=self.dtype)  # (none)
        if self._on_panels():
            self.mode = _PANELS
            self.panels = scratch("whole_loop_panels", (self.D, *packed.panels_shape(
                self.w_hh_stack.shape[1], self.P, self.dtype, self.batch)), self.dtype)
            for d in range(self.D):
                packed.pack_transposed(np.ascontiguousarray(self.w_hh_stack[d]), self.panels[d])
        elif self.P >= BATCH_DOT_HIDDEN and self.batch >= BATCH_DOT_BATCH:
            self.mode = _BATCH_DOTS
        elif self.P >= DOT_HIDDEN and self.batch <= DOT_BATCH and self.kind in DOT_KINDS:
            self.mode = _ROW_DOTS
        else:
            self.mode = _TRANSPOSED
        if self.mode == _TRANSPOSED:
            rows = scratch("w_hh_rows", self.w_hh_t.shape, self.dtype)
            rows[...] = self.w_hh_t
            self.w_hh_t = rows
        else:
            self.w_hh_t = np.ascontiguousarray(self.w_hh_stack)
        self.steps_inactive = steps_inactive(self)

    def _on_panels(self) -> bool:
        """Whether the forward's products run on ``W_hh``'s packed panels
        (:data:`PANELS_BATCH`)."""
        return (self.batch >= PANELS_BATCH and self.P >= PANELS_HIDDEN
                and self.dtype in (np.float32, np.float64)
                and packed.on_panels(self.batch, self.P, self.dtype.itemsize, True))

    def forward(self):
        with one_blas_thread():
            self._forward()

    def _forward(self):
        chunk = self.gx.shape[1]
        for start in range(0, self.steps, chunk):
            self._project(start)
            count = min(chunk, self.steps - start)
            args = (self.gx, start, count, self.w_hh_t, self.panels, self.mode, self.x_bias)
            if self.kind == "lstm":
                _lstm_forward(*args, self.h, self.c, self.a, self.tanh_c, self.steps_inactive,
                              self.keep)
            elif self.kind == "gru":
                _gru_forward(*args, self.hh_bias, self.h, self.a, self.gh, self.steps_inactive)
            else:
                _elman_forward(*args, self.h, self.steps_inactive, _ACTIVATION[self.kind])

    def backward(self, grad_output, grad_finals):
        """BPTT; returns ``(grad_x, grad_states, grad_weights)`` like the generic driver."""
        with one_blas_thread():
            return self._backward(grad_output, grad_finals)

    def _backward(self, grad_output, grad_finals):
        grad_steps, dh, dc = self._backward_start(grad_output, grad_finals)
        directions, steps, batch = self.D, self.steps, self.batch
        dz_all = self._buffer((directions, steps, batch, self.gx.shape[-1]))
        dgh_all = dz_all
        w = np.ascontiguousarray(self.w_hh_stack)
        # all rows of a step at once (_batch_accumulate) where the forward's would be dot
        # products of all rows at once (BATCH_DOT_BATCH; on panels or not)
        batched = self.P >= BATCH_DOT_HIDDEN and self.batch >= BATCH_DOT_BATCH
        back = np.empty((batch, self.P), dtype=self.dtype)
        if self.kind == "lstm":
            _lstm_backward(grad_steps, dh, dc, w, self.c, self.a, self.tanh_c, dz_all,
                           self.steps_inactive, batched, back)
        elif self.kind == "gru":
            dgh_all = self._buffer(dz_all.shape)
            _gru_backward(grad_steps, dh, w, self.h, self.a, self.gh, dz_all, dgh_all,
                          self.steps_inactive, batched, back)
        else:
            _elman_backward(grad_steps, dh, w, self.h, dz_all, self.steps_inactive,
                            _ACTIVATION[self.kind], batched, back)
        return self._gradients(dz_all, dgh_all, None, dh, dc)


def _blocks_contiguous(*arrays) -> bool:
    """Whether each direction's block of every (D, ...) array is C-contiguous."""
    return all(a[d].flags.c_contiguous for a in arrays for d in range(a.shape[0]))


class _FusedLayer(_Compiled):
    """The NumPy kernel's layer (its loop, BLAS products, hooks and tape) with each step's
    elementwise work, forward and backward, in one compiled call per direction: for
    layers above the limits, where the products need BLAS's blocking and threads. At 2 to
    :data:`FUSED_ONE_THREAD_BATCH` rows the recurrent products are compiled ones on one
    thread instead (:func:`.blas.matmul`): the forward's dot products from
    :data:`.blas.DOTS_INNER` values of h, the backward's sums of rows."""

    def __init__(self, x, states, weights, cell, keep, active, hooks=None, position=(0, 1)):
        super().__init__(x, states, weights, cell, keep, active, hooks, position)
        self.one_thread = blas.AVAILABLE and 2 <= self.batch <= FUSED_ONE_THREAD_BATCH
        rows = np.swapaxes(self.w_hh_t, 1, 2)  # (D, G*H, P): W_hh's rows (scaled), as made
        self.w_hh_rows = rows if (self.one_thread and self.P >= blas.DOTS_INNER
                                  and rows.flags.c_contiguous) else None

    def _hh_product(self, h_prev, h_in, out):
        h = h_prev if h_in is None else h_in
        if self.w_hh_rows is None or not _blocks_contiguous(h, out):
            return super()._hh_product(h_prev, h_in, out)
        for d in range(self.D):
            blas.matmul(h[d], self.w_hh_rows[d], True, out[d])
        return out

    def _hh_product_back(self, dgh, dh):
        if not (self.one_thread and _blocks_contiguous(dgh, dh, self.w_hh_stack)):
            return super()._hh_product_back(dgh, dh)
        for d in range(self.D):
            blas.matmul(dgh[d], self.w_hh_stack[d], False, dh[d])

    def _step_elman(self, gx, s, k, h_prev, h_out, h_in=None):
        z = self._hh_product(h_prev, h_in, self.z)
        for d in range(self.D):
            _elman_step(z[d], gx[d], self.x_bias[d], h_out[d], _ACTIVATION[self.kind])

    _step_tanh = _step_relu = _step_identity = _step_elman

    def _step_lstm(self, gx, s, k, h_prev, h_out, h_in=None):
        z = self._hh_product(h_prev, h_in, self.z)
        c, a, tanh_c = self.c, self.a, self.tanh_c
        for d in range(self.D):
            _lstm_step(z[d], gx[d], self.x_bias[d], c[d, s], c[d, s + 1], a[d, k],
                       tanh_c[d, k], h_out[d], self.keep)

    def _step_gru(self, gx, s, k, h_prev, h_out, h_in=None):
        gh = self._hh_product(h_prev, h_in, self.gh[:, k])
        for d in range(self.D):
            _gru_step(gh[d], gx[d], self.x_bias[d], self.hh_bias[d], h_prev[d], self.a[d, k],
                      h_out[d])

    def _back_tanh(self, s, dh, dc, dz, dgh, scratch):
        h = self.h_new[:, s]
        for d in range(self.D):
            _tanh_back(h[d], dh[d], dz[d])

    def _back_lstm(self, s, dh, dc, dz, dgh, scratch):
        a, tanh_c, c = self.a, self.tanh_c, self.c
        for d in range(self.D):
            _lstm_back(dh[d], dc[d], a[d, s], tanh_c[d, s], c[d, s], dz[d])

    def _back_gru(self, s, dh, dc, dz, dgh, scratch):
        a, gh, h_before = self.a, self.gh, self.h_before
        for d in range(self.D):
            _gru_back(dh[d], a[d, s], gh[d, s], h_before[d, s], dz[d], dgh[d], self.tmp[d])
        return self.tmp


#: How many layers ran their whole loop compiled (``layers_run``), with fused steps
#: (``fused_layers_run``), a direction per thread (``threaded_layers_run``) or their units
#: split between two threads (``split_layers_run``; it counts a layer built for it that
#: ran the fused steps off the main thread) in this process: tests read them.
layers_run = 0
fused_layers_run = 0
threaded_layers_run = 0
split_layers_run = 0


def run_layer(x, states: tuple[Any, ...], weights: Sequence[LayerWeights], cell: Cell, *,
              keep: bool, active=None, hooks=None, position: tuple[int, int] = (0, 1)):
    """One layer: its whole loop compiled where it :func:`fits` and has no per-step
    ``hooks`` (but a one-direction LSTM of several batch rows splits where
    :func:`.numba_split.before_whole_loop` says so); a bidirectional layer above that
    with a direction per thread where
    :func:`.numba_threaded.threads` says so, a one-direction layer with its units split
    between two threads where :func:`.numba_split.splits` says so; else
    the NumPy kernel's loop with fused compiled steps. The interface of
    :func:`xrnn._kernels.numpy_layer.run_layer`: ``(output, finals, backward or None)``."""
    global layers_run, fused_layers_run, threaded_layers_run, split_layers_run
    if hooks is None and fits(x, weights, cell) and not numba_split.before_whole_loop(
            x, weights, cell, hooks):
        layers_run += 1
        layer = _CompiledLayer(x, states, weights, cell, keep, active, position)
    elif numba_threaded.threads(weights, hooks):  # (above the limits: not fits)
        threaded_layers_run += 1
        layer = numba_threaded._ThreadedLayer(x, states, weights, cell, keep, active, position)
    elif numba_split.splits(x, weights, cell, hooks):
        split_layers_run += 1
        layer = numba_split._SplitLayer(x, states, weights, cell, keep, active, position)
    else:
        fused_layers_run += 1
        layer = _FusedLayer(x, states, weights, cell, keep, active, hooks, position)
    layer.forward()
    return layer.output(active), layer.finals(), (layer if keep else None)


from . import numba_split, numba_threaded  # noqa: E402  (layers on two threads; they
# subclass this module's layers, so they come after them)
