"""Fused compiled steps for the LayerNorm LSTM and GRU (``layer_norm=True``; ``fast`` extra).

The NumPy LayerNorm kernel (:mod:`.layernorm_layer`: its loop, BLAS products, tape,
hooks and batched input LayerNorm) with each step's elementwise work in one compiled
call per direction, forward and backward, as :class:`.numba_layer._FusedLayer` does for
the plain cells: the hidden-side LayerNorm, the gates, the cell update and the LSTM's
LayerNorm of ``c`` in one pass over each batch row, instead of about 20 NumPy calls.
Arguments are (B, ·) C-contiguous views of that kernel's buffers (equations and buffer
names there) in PyTorch's gate layout, like the plain compiled steps; ``w_hh`` and
``ln_hh`` are the hidden-side LayerNorm's weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numba
import numpy as np

from ..functional.cells import LN_EPS, Cell
from ..functional.recurrence import StepHooks
from ..functional.weights import LayerWeights
from . import blas, layernorm_layer, numba_layer, numba_threaded
from .numba_layer import _gru_back, _gru_step, _jit
from .numba_math import _FAST, exp, tanh

#: Sums may be reassociated, so that LLVM vectorises them: only in these reductions,
#: never in ``exp``, whose rounding trick reassociation would undo.
_sum_jit = numba.njit(cache=True, nogil=True, error_model="numpy",
                      fastmath=_FAST | {"reassoc"})


@_sum_jit
def _sum(a):
    total = a.dtype.type(0)
    for j in range(a.size):
        total += a[j]
    return total


@_sum_jit
def _dot(a, b):
    total = a.dtype.type(0)
    for j in range(a.size):
        total += a[j] * b[j]
    return total


@_jit
def _normalise_row(v, eps):
    """``v`` (already centred) divided in place by its standard deviation; returns
    ``rstd = 1 / sqrt(mean(v^2) + eps)``."""
    rstd = v.dtype.type(1) / np.sqrt(_dot(v, v) / v.dtype.type(v.size) + eps)
    for j in range(v.size):
        v[j] *= rstd
    return rstd


@_jit
def _normalise_row_backward(dv_hat, v_hat, rstd, out):
    """``out = rstd (dv_hat - mean(dv_hat) - v_hat mean(dv_hat v_hat))`` (may be
    ``dv_hat`` itself): the gradient of a LayerNorm's centred input."""
    size = dv_hat.dtype.type(dv_hat.size)
    mean, cross = _sum(dv_hat) / size, _dot(dv_hat, v_hat) / size
    for j in range(dv_hat.size):
        out[j] = rstd * (dv_hat[j] - mean - v_hat[j] * cross)


@_jit
def _ln_lstm_step(hat, hh_rstd, w_hh, gx, c_prev, c_new, c_hat, c_rstd, w_c, b_c, a,
                  tanh_c, h_out, eps):
    """``hat`` (B, G*H), the centred ``h W_hh^T``, normalised in place (``hh_rstd``
    (B, 1)); gates ``a``; new c, its normalised ``c_hat`` (``c_rstd``); tanh; h."""
    batch, width = hat.shape
    hidden = width // 4
    one = hat.dtype.type(1)
    units = hat.dtype.type(hidden)
    for b in range(batch):
        row, gates, xr = hat[b], a[b], gx[b]
        hh_rstd[b, 0] = _normalise_row(row, eps)
        for j in range(width):  # pre-activations, i, f, g, o
            gates[j] = row[j] * w_hh[j] + xr[j]
        i_f, g, o = gates[:2 * hidden], gates[2 * hidden:3 * hidden], gates[3 * hidden:]
        for j in range(2 * hidden):  # (blocks indexed from 0: numba_layer._lstm_cell)
            i_f[j] = one / (one + exp(-i_f[j]))
        for j in range(hidden):
            g[j] = tanh(g[j])
        for j in range(hidden):
            o[j] = one / (one + exp(-o[j]))
        c_old, c_row, centred = c_prev[b], c_new[b], c_hat[b]
        for j in range(hidden):
            c_row[j] = i_f[hidden + j] * c_old[j] + i_f[j] * g[j]
        mean = _sum(c_row) / units
        for j in range(hidden):
            centred[j] = c_row[j] - mean
        c_rstd[b, 0] = _normalise_row(centred, eps)
        t_row, out = tanh_c[b], h_out[b]
        for j in range(hidden):
            t_row[j] = tanh(centred[j] * w_c[j] + b_c[j])
        for j in range(hidden):
            out[j] = o[j] * t_row[j]


@_jit
def _ln_gru_step(hat, hh_rstd, w_hh, gh, gx, no_bias, b_hn, h_prev, a, h_out, eps):
    """``hat`` normalised in place, ``gh = hat * w_hh`` (+ ``b_hn``, zeros on r and z,
    added by the plain GRU step), then the plain GRU step (``no_bias``: zeros, the biases
    on the input side are in ``gx``)."""
    for b in range(hat.shape[0]):
        row, out = hat[b], gh[b]
        hh_rstd[b, 0] = _normalise_row(row, eps)
        for j in range(row.size):
            out[j] = row[j] * w_hh[j]
    _gru_step(gh, gx, no_bias, b_hn, h_prev, a, h_out)


@_jit
def _hh_backward(d_post, ln_hh, hh_hat, hh_rstd, d_product, b):
    """Row ``b`` of ``d_product``, the gradient of ``h W_hh^T``, from ``d_post``'s, that of
    the hidden-side LayerNorm's output."""
    row, out = d_post[b], d_product[b]
    for j in range(row.size):
        out[j] = row[j] * ln_hh[j]
    _normalise_row_backward(out, hh_hat[b], hh_rstd[b, 0], out)


@_jit
def _ln_lstm_back(dh, dc, a, tanh_c, c_prev, c_hat, c_rstd, w_c, ln_hh, hh_hat, hh_rstd,
                  inactive, d_c_out, d_post, dz, tmp):
    """From ``dh`` and ``dc``: ``d_c_out`` (of LN_c's output), ``d_post`` (of the gates'
    pre-activations), ``dz`` (of ``h W_hh^T``); ``dc`` becomes the previous c's. Padded
    rows (``inactive``) get zeros (the loop restores their dh and dc)."""
    batch, width = dz.shape
    hidden = width // 4
    one, zero = dz.dtype.type(1), dz.dtype.type(0)
    for b in range(batch):
        if inactive[b]:
            d_c_out[b, :] = zero
            d_post[b, :] = zero
            dz[b, :] = zero
            continue
        gates, tc, c_old = a[b], tanh_c[b], c_prev[b]
        row, dc_row, dy, dv, dgate = dh[b], dc[b], d_c_out[b], tmp[b], d_post[b]
        for j in range(hidden):  # h = o tanh(LN(c))
            dy[j] = (one - tc[j] * tc[j]) * gates[3 * hidden + j] * row[j]
            dv[j] = dy[j] * w_c[j]
        _normalise_row_backward(dv, c_hat[b], c_rstd[b, 0], dv)
        for j in range(hidden):
            i, f = gates[j], gates[hidden + j]
            g, o = gates[2 * hidden + j], gates[3 * hidden + j]
            dcj = dc_row[j] + dv[j]
            dgate[j] = dcj * g * (i - i * i)
            dgate[hidden + j] = dcj * c_old[j] * (f - f * f)
            dgate[2 * hidden + j] = dcj * i * (one - g * g)
            dgate[3 * hidden + j] = row[j] * tc[j] * (o - o * o)
            dc_row[j] = dcj * f
        _hh_backward(d_post, ln_hh, hh_hat, hh_rstd, dz, b)


@_jit
def _ln_gru_back(dh, a, gh, h_prev, ln_hh, hh_hat, hh_rstd, inactive, dz, d_post, dgh,
                 direct):
    """The plain GRU backward (``d_post``: of ``gh``), then ``dgh`` (of ``h W_hh^T``)
    through the hidden-side LayerNorm; padded rows get zeros."""
    _gru_back(dh, a, gh, h_prev, dz, d_post, direct)
    zero = dz.dtype.type(0)
    for b in range(dz.shape[0]):
        if inactive[b]:
            d_post[b, :] = zero
            dgh[b, :] = zero
            continue
        _hh_backward(d_post, ln_hh, hh_hat, hh_rstd, dgh, b)


class _FusedNormLayer(layernorm_layer._NormLayer):
    """The NumPy LayerNorm layer with each step's elementwise work compiled."""

    ORDER = SCALE = {}  # PyTorch's layout

    def __init__(self, x, states, weights, cell, keep, active, hooks=None, position=(0, 1)):
        super().__init__(x, states, weights, cell, keep, active, hooks, position)
        self.eps = self.dtype.type(LN_EPS)
        self.all_active = np.zeros(self.batch, dtype=np.bool_)
        # the GRU step's biases: none with the input projection (they are in gx); b_hn
        # on the n block of the hidden side
        self.no_bias = np.zeros(self.gx.shape[-1], dtype=self.dtype)
        self.hn_rows = np.zeros((self.D, self.gx.shape[-1]), dtype=self.dtype)
        if self.b_hn is not None:
            self.hn_rows[:, 2 * self.H:] = self.b_hn[:, 0]

    def _inactive(self, d, s):
        return self.all_active if self.inactive is None else self.inactive[d, s, :, 0]

    def _step_lstm(self, gx, s, k, h_prev, h_out, h_in=None):
        hat = self._hh_product(h_prev, h_in, self.hh_hat[:, k])
        for d in range(self.D):
            _ln_lstm_step(hat[d], self.hh_rstd[d, k], self.ln_hh_scaled[d, 0], gx[d],
                          self.c[d, s], self.c[d, s + 1], self.c_hat[d, k], self.c_rstd[d, k],
                          self.ln_c[d, 0, 0], self.ln_c[d, 1, 0], self.a[d, k],
                          self.tanh_c[d, k], h_out[d], self.eps)

    def _step_gru(self, gx, s, k, h_prev, h_out, h_in=None):
        hat = self._hh_product(h_prev, h_in, self.hh_hat[:, k])
        for d in range(self.D):
            _ln_gru_step(hat[d], self.hh_rstd[d, k], self.ln_hh_scaled[d, 0], self.gh[d, k],
                         gx[d], self.no_bias, self.hn_rows[d], h_prev[d], self.a[d, k],
                         h_out[d], self.eps)

    def _back_lstm(self, s, dh, dc, dz, dgh, scratch):
        for d in range(self.D):
            _ln_lstm_back(dh[d], dc[d], self.a[d, s], self.tanh_c[d, s], self.c[d, s],
                          self.c_hat[d, s], self.c_rstd[d, s], self.ln_c[d, 0, 0],
                          self.ln_hh[d], self.hh_hat[d, s], self.hh_rstd[d, s],
                          self._inactive(d, s), self.d_c_out[d, s], self.d_post[d, s], dz[d],
                          self.tmp[d])

    def _back_gru(self, s, dh, dc, dz, dgh, scratch):
        for d in range(self.D):
            _ln_gru_back(dh[d], self.a[d, s], self.gh[d, s], self.h_before[d, s],
                         self.ln_hh[d], self.hh_hat[d, s], self.hh_rstd[d, s],
                         self._inactive(d, s), dz[d], self.d_post[d, s], dgh[d], self.tmp[d])
        return self.tmp


@_jit
def _ln_direction_forward(lstm, gx, start, count, w_hh, h, c, hh_hat, hh_rstd, ln_hh, c_hat,
                          c_rstd, w_c, b_c, a, tanh_c, gh, no_bias, hn_row, inactive, eps):
    """Steps ``start`` to ``start + count`` of one direction (its buffers, step order, as
    :func:`.numba_threaded._direction_forward`): ``w_hh`` (G*H, P) centred; the LSTM's
    (``lstm``) or the GRU's step above. Unused buffers of a cell may be any 3-d array."""
    taped = a.shape[0]
    for s in range(start, start + count):
        k = s if taped > 1 else 0
        hat = hh_hat[k]
        blas.matmul(h[s], w_hh, True, hat)
        if lstm:
            _ln_lstm_step(hat, hh_rstd[k], ln_hh, gx[s - start], c[s], c[s + 1], c_hat[k],
                          c_rstd[k], w_c, b_c, a[k], tanh_c[k], h[s + 1], eps)
        else:
            _ln_gru_step(hat, hh_rstd[k], ln_hh, gh[k], gx[s - start], no_bias, hn_row, h[s],
                         a[k], h[s + 1], eps)
        for b in range(h.shape[1]):  # a padded step leaves the state as it was
            if inactive[s, b]:
                h[s + 1, b] = h[s, b]
                if lstm:
                    c[s + 1, b] = c[s, b]


class _ThreadedNormLayer(_FusedNormLayer):
    """A bidirectional LayerNorm layer whose forward runs a direction per core, each
    direction's loop one compiled call (as :mod:`.numba_threaded` does for the plain
    cells); the backward is the fused steps'."""

    def forward(self):
        self.w_hh_rows = np.swapaxes(self.w_hh_t, 1, 2)  # (D, G*H, P), C-contiguous
        self.steps_inactive = numba_layer.steps_inactive(self)
        unused = np.empty((self.D, 1, 1, 1), dtype=self.dtype)
        lstm = self.kind == "lstm"
        self.cell_buffers = ((self.c, self.c_hat, self.c_rstd, self.tanh_c, unused) if lstm
                             else (unused, unused, unused, unused, self.gh))
        self.ln_c_rows = self.ln_c[:, :, 0] if lstm else np.zeros((self.D, 2, 1), self.dtype)
        numba_threaded.each_direction(self._forward_direction)

    def _forward_direction(self, d: int) -> None:
        chunk = self.gx.shape[1]
        c, c_hat, c_rstd, tanh_c, gh = (buffer[d] for buffer in self.cell_buffers)
        for start in range(0, self.steps, chunk):
            self._project_directions(start, range(d, d + 1))
            count = min(chunk, self.steps - start)
            _ln_direction_forward(
                self.kind == "lstm", self.gx[d], start, count, self.w_hh_rows[d], self.h[d], c,
                self.hh_hat[d], self.hh_rstd[d], self.ln_hh_scaled[d, 0], c_hat, c_rstd,
                self.ln_c_rows[d, 0], self.ln_c_rows[d, 1], self.a[d], tanh_c, gh,
                self.no_bias, self.hn_rows[d], self.steps_inactive[d], self.eps)


#: How many layers this kernel has run in this process (``layers_run``), and how many of
#: them a direction per core (``threaded_layers_run``): tests read them to see which path
#: ran.
layers_run = 0
threaded_layers_run = 0


def run_layer(x, states: tuple[Any, ...], weights: Sequence[LayerWeights], cell: Cell, *,
              keep: bool, active=None, hooks: Sequence[StepHooks] | None = None,
              position: tuple[int, int] = (0, 1)):
    """One LayerNorm layer with fused compiled steps, its forward a direction per core
    where :func:`.numba_threaded.threads` says so and the layer is above the plain
    cell's whole-loop limit: ``(output, finals, backward or None)``, the interface of
    :func:`xrnn._kernels.numpy_layer.run_layer`."""
    global layers_run, threaded_layers_run
    layers_run += 1
    limit = numba_layer.MAX_STEP_WORK[layernorm_layer.BASE_KIND[cell.name]]
    if numba_threaded.threads(weights, hooks) and numba_layer._step_work(x, weights) > limit:
        threaded_layers_run += 1
        layer = _ThreadedNormLayer(x, states, weights, cell, keep, active, hooks, position)
    else:
        layer = _FusedNormLayer(x, states, weights, cell, keep, active, hooks, position)
    layer.forward()
    return layer.output(active), layer.finals(), (layer if keep else None)
