"""The NumPy fast path for the LayerNorm LSTM and GRU (``layer_norm=True``), forward and BPTT.

The NumPy kernel's layer (:class:`~xrnn._kernels.numpy_layer._Layer`: both directions
at once, preallocated ``out=`` buffers, gates from one ``exp``, the per-step hooks) with
the cells of ``xrnn.functional.cells.LN_LSTM_CELL`` and ``LN_GRU_CELL``::

    LSTM  z = LN(x W_ih^T; ih) + LN(h W_hh^T; hh) + b_ih + b_hh,  h' = o tanh(LN(c'; c))
    GRU   gx = LN(x W_ih^T; ih) + b_ih,  gh = LN(h W_hh^T; hh) + b_hh

``LN(v; w, b) = w (v - mean v) / sqrt(var v + eps) + b`` over the last axis. How it is
arranged for NumPy:

- the gate LayerNorms are over all G*H rows, so the kernel's row reorder does not change
  them, and its row scales s (-1, -2) fold into their weights and biases:
  ``s (w v_hat + b) = (s w) v_hat + s b``;
- the mean of ``v = h W^T`` over its rows is ``h`` times the rows' mean of ``W``: with
  that mean taken out of ``W`` once (``W - mean_rows W``), the product comes out centred,
  so a LayerNorm is one ``vecdot`` (the sum of squares), three calls on a (D, B, 1)
  array (``rstd = sqrt(n / (sum + n eps))``) and one scaling;
- ``LN(x W_ih^T)`` does not depend on the recurrence: it is made for a chunk of steps at
  once with the input projection, outside the time loop, and its backward is one
  batched pass after the loop, as are the LayerNorm weights' and biases' gradients;
- the tape holds each normalised value ``v_hat`` and its ``rstd``; the backward of a
  LayerNorm is ``dv = rstd (dv_hat - mean(dv_hat) - v_hat mean(dv_hat v_hat))`` with
  ``dv_hat = w dy``.

Shapes as in :mod:`.numpy_layer`: states (D, B, ·), buffers by step (D, T, B, ·).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..functional.cells import LN_EPS, Cell
from ..functional.recurrence import StepHooks
from ..functional.weights import LayerWeights
from . import numpy_layer
from .workspace import scratch

#: LayerNorm cell -> the plain cell whose kernel layout and gate code it shares.
BASE_KIND = {"lstm_ln": "lstm", "gru_ln": "gru"}
KINDS = tuple(BASE_KIND)
#: Size (elements) of a chunk of input projections, made and normalised together (at
#: most numpy_layer's chunk): small enough that the LayerNorm's passes over it stay in
#: cache (1 MB in float32; 12% off the whole forward at (100,32,64,128,2,2): NOTES.md).
_CHUNK_ELEMENTS = 1 << 18


def _normalise(v, rstd) -> None:
    """``v`` (..., n), already centred, divided in place by its standard deviation;
    ``rstd`` (..., 1) receives ``1 / sqrt(mean(v^2) + eps)``."""
    size = v.shape[-1]
    np.vecdot(v, v, out=rstd[..., 0])
    rstd += size * LN_EPS
    np.divide(size, rstd, out=rstd)
    np.sqrt(rstd, out=rstd)
    v *= rstd


def _normalise_backward(dv_hat, v_hat, rstd, means, out) -> None:
    """``out = rstd (dv_hat - mean(dv_hat) - v_hat mean(dv_hat v_hat))``, the gradient of
    the centred input of :func:`_normalise` from that of its output (the LayerNorm's
    weight already applied); ``means`` (2, ..., 1) scratch. ``dv_hat`` is overwritten."""
    size = dv_hat.shape[-1]
    np.vecdot(dv_hat, v_hat, out=means[1, ..., 0])
    np.sum(dv_hat, axis=-1, keepdims=True, out=means[0])
    means *= 1.0 / size
    np.multiply(v_hat, means[1], out=out)
    out += means[0]
    np.subtract(dv_hat, out, out=out)
    out *= rstd


def _column_sums(a, b=None):
    """(D, T, B, n) -> (D, n): the sum over steps and batch of ``a`` (times ``b``); each
    direction's plain sum by :func:`.numpy_layer.column_sums`, as the layers' bias
    gradients."""
    directions, size = a.shape[0], a.shape[-1]
    a = a.reshape(directions, -1, size)
    if b is None:
        return np.stack([numpy_layer.column_sums(a_d) for a_d in a])
    return np.einsum("dmk,dmk->dk", a, b.reshape(directions, -1, size))


class _NormLayer(numpy_layer._Layer):
    """A LayerNorm LSTM or GRU layer: the plain cell's layer with the three (GRU: two)
    LayerNorms added to its step, its backward and its weight gradients."""

    def __init__(self, x, states, weights: Sequence[LayerWeights], cell: Cell,
                 keep: bool, active, hooks: Sequence[StepHooks] | None = None,
                 position: tuple[int, int] = (0, 1)):
        base = BASE_KIND[cell.name]
        super().__init__(x, states, weights, dataclasses.replace(cell, name=base), keep,
                         active, hooks, position)
        directions, steps, batch, dtype = self.D, self.steps, self.batch, self.dtype
        hidden, gh = self.H, self.gx.shape[-1]
        rows = self._rows  # gate blocks in kernel order
        scale = 1.0 if self.scale is None else self.scale

        ln = [w.ln for w in weights]  # (w, b) of ih, hh (and c) per direction
        # centred weights: their products have zero mean over the rows
        self.w_ih_t = [np.ascontiguousarray((w - w.mean(axis=0)).T) for w in self.w_ih]
        self.w_hh_t = np.swapaxes(  # (D, P, GH), a transposed view as in numpy_layer
            self.w_hh_stack - self.w_hh_stack.mean(axis=1, keepdims=True), 1, 2)
        self.ln_ih = np.stack([rows(n[0]) for n in ln])  # (D, GH), unscaled: for the backward
        self.ln_hh = np.stack([rows(n[2]) for n in ln])
        self.ln_ih_scaled = (self.ln_ih * scale)[:, None, None, :]  # (D, 1, 1, GH)
        self.ln_hh_scaled = (self.ln_hh * scale)[:, None, :]  # (D, 1, GH)
        # the biases on the input side (LN_ih's, b_ih) and on the hidden side (LN_hh's, b_hh)
        b_in = np.stack([rows(n[1]) for n in ln])
        b_h = np.stack([rows(n[3]) for n in ln])
        if self.has_bias:
            b_in += np.stack([rows(w.b_ih) for w in weights])
            b_h += np.stack([rows(w.b_hh) for w in weights])
        bias = b_in + b_h
        if base == "gru":  # the n block's hidden-side bias stays inside r * (...)
            bias[:, 2 * hidden:] = b_in[:, 2 * hidden:]
            self.b_hn = b_h[:, None, 2 * hidden:]  # (D, 1, H)
        self.gx_bias = (bias * scale)[:, None, None, :]  # (D, 1, 1, GH)
        self.ln_c = None
        if base == "lstm":
            self.ln_c = np.stack([np.stack(n[4:6]) for n in ln])[:, :, None, :]  # (D, 2, 1, H)
            self.mean_h = np.full((hidden, 1), 1.0 / hidden, dtype=dtype)

        # the input LayerNorm's tape: v_hat and rstd for every step (one chunk without keep)
        chunk = max(1, min(self.gx.shape[1], _CHUNK_ELEMENTS // (directions * batch * gh)))
        if chunk < self.gx.shape[1]:
            self.gx = scratch("gx", (directions, chunk, batch, gh), dtype)
        span = steps if keep else chunk
        self.ih_hat = self._buffer((directions, span, batch, gh))
        self.ih_rstd = self._buffer((directions, span, batch, 1))
        taped = steps if keep else 1
        self.hh_hat = self._buffer((directions, taped, batch, gh))
        self.hh_rstd = self._buffer((directions, taped, batch, 1))
        if base == "lstm":
            self.c_hat = self._buffer((directions, taped, batch, hidden))
            self.c_rstd = self._buffer((directions, taped, batch, 1))
            self.c_mean = np.empty((directions, batch, 1), dtype=dtype)

    def _project(self, start: int) -> None:
        """Fill ``gx[:, j]`` with step ``start + j``'s ``LN(x W_ih^T)`` in kernel layout
        plus the biases that fold into it, for a chunk of steps: one product per
        direction, then the LayerNorm over the whole chunk."""
        self._project_directions(start, range(self.D))

    def _project_directions(self, start: int, directions: range) -> None:
        """:meth:`_project` for some of the directions (consecutive)."""
        count = min(self.gx.shape[1], self.steps - start)
        rows = count * self.batch
        at = slice(start, start + count) if self.keep else slice(0, count)
        span = slice(directions.start, directions.stop)
        hat, rstd = self.ih_hat[span, at], self.ih_rstd[span, at]
        for j, d in enumerate(directions):
            np.matmul(self.x_steps[d][start:start + count].reshape(rows, -1), self.w_ih_t[d],
                      out=hat[j].reshape(rows, -1))
        _normalise(hat, rstd)
        gx = np.multiply(hat, self.ln_ih_scaled[span], out=self.gx[span, :count])
        gx += self.gx_bias[span]

    # forward ---------------------------------------------------------------------------

    def _normalised_product(self, k, h_prev, h_in):
        """``h W_hh^T`` normalised (no weight, no bias): the taped ``hh_hat[:, k]``."""
        hat = self._hh_product(h_prev, h_in, self.hh_hat[:, k])
        _normalise(hat, self.hh_rstd[:, k])
        return hat

    def _step_lstm(self, gx, s, k, h_prev, h_out, h_in=None):
        a = np.multiply(self._normalised_product(k, h_prev, h_in), self.ln_hh_scaled,
                        out=self.a[:, k])
        a += gx
        c, o = self._lstm_gates(a, s)
        c_hat = np.subtract(c, np.matmul(c, self.mean_h, out=self.c_mean), out=self.c_hat[:, k])
        _normalise(c_hat, self.c_rstd[:, k])
        u = np.multiply(c_hat, self.ln_c[:, 0], out=self.tmp)
        u += self.ln_c[:, 1]
        tanh_c = np.tanh(u, out=self.tanh_c[:, k])
        np.multiply(o, tanh_c, out=h_out)

    def _step_gru(self, gx, s, k, h_prev, h_out, h_in=None):
        # numpy_layer's GRU gates, from gh = LN(h W_hh^T) (+ b_hn on the n block) on
        gh = np.multiply(self._normalised_product(k, h_prev, h_in), self.ln_hh_scaled,
                         out=self.gh[:, k])
        self._gru_gates(gx, gh, self.a[:, k], h_prev, h_out)

    # backward --------------------------------------------------------------------------

    def backward(self, grad_output, grad_finals):
        """BPTT; returns ``(grad_x, grad_states, grad_weights)`` like the generic driver."""
        directions, steps, batch, dtype = self.D, self.steps, self.batch, self.dtype
        gh = self.gx.shape[-1]
        # gradients the base loop does not keep, by step: the LSTM's gates (the base's dz
        # then carries d(h W_hh^T)), the GRU's LN_hh output, the LSTM's LN_c output
        self.d_post = self._buffer((directions, steps, batch, gh))
        self.d_c_out = (self._buffer((directions, steps, batch, self.H))
                        if self.kind == "lstm" else None)
        self.means = np.empty((2, directions, batch, 1), dtype=dtype)
        self.tmp2 = np.empty((directions, batch, self.H), dtype=dtype)
        return super().backward(grad_output, grad_finals)

    def _masked(self, s, *grads) -> None:
        """Zero ``grads`` where step ``s`` is padded (the base loop does so for its own)."""
        if self.inactive is not None:
            for g in grads:
                np.copyto(g, 0.0, where=self.inactive[:, s])

    def _back_lstm(self, s, dh, dc, dz, dgh, scratch):
        # dz (= dgh): d(h W_hh^T), what the base multiplies by W_hh; the gates' own
        # gradient goes to d_post[:, s]
        hidden = self.H
        tanh_c = self.tanh_c[:, s]
        o = self.a[:, s, ..., 2 * hidden:3 * hidden]
        dy = np.multiply(tanh_c, tanh_c, out=self.d_c_out[:, s])  # h = o tanh(LN(c))
        np.subtract(1.0, dy, out=dy)
        dy *= o
        dy *= dh
        self._masked(s, dy)
        dv_hat = np.multiply(dy, self.ln_c[:, 0], out=self.tmp)
        _normalise_backward(dv_hat, self.c_hat[:, s], self.c_rstd[:, s], self.means, self.tmp2)
        dc += self.tmp2
        dgate = self.d_post[:, s]
        self._lstm_gates_back(s, dh, dc, dgate, scratch)
        self._masked(s, dgate)
        self._hh_backward(s, dgate, dz, scratch)
        return None

    def _back_gru(self, s, dh, dc, dz, dgh, scratch):
        # the base's GRU backward gives d(gh) in d_post[:, s]; dgh gets d(h W_hh^T)
        dpost = self.d_post[:, s]
        direct = super()._back_gru(s, dh, dc, dz, dpost, scratch)
        self._masked(s, dpost)
        self._hh_backward(s, dpost, dgh, scratch)
        return direct

    def _hh_backward(self, s, d_out, d_product, scratch) -> None:
        """``d_product``: the gradient of ``h W_hh^T`` from ``d_out``, that of LN_hh's output."""
        dv_hat = np.multiply(d_out, self.ln_hh[:, None, :], out=scratch)
        _normalise_backward(dv_hat, self.hh_hat[:, s], self.hh_rstd[:, s], self.means,
                            d_product)

    def _gradients(self, dz_all, dgh_all, dh_all, dh, dc):
        lstm = self.kind == "lstm"
        d_gates = self.d_post if lstm else dz_all  # of the pre-activations (kernel order)
        d_hh = self.d_post  # of LN_hh's output
        grad_ln = [_column_sums(d_gates, self.ih_hat), _column_sums(d_gates),
                   _column_sums(d_hh, self.hh_hat), _column_sums(d_hh)]
        if lstm:
            grad_ln += [_column_sums(self.d_c_out, self.c_hat), _column_sums(self.d_c_out)]
        # back through the input LayerNorm, every step at once, in place
        d_gates *= self.ln_ih[:, None, None, :]
        means = np.empty((2,) + self.ih_rstd.shape, dtype=self.dtype)
        d_ih = self._buffer(d_gates.shape)
        _normalise_backward(d_gates, self.ih_hat, self.ih_rstd, means, d_ih)
        grad_x, grad_states, grads = super()._gradients(
            d_ih, dz_all if lstm else dgh_all, dh_all, dh, dc)
        rows = self._rows_back
        for d, g in enumerate(grads):
            ln = [rows(v[d]) if j < 4 else v[d] for j, v in enumerate(grad_ln)]
            biases = (ln[1], ln[3]) if self.has_bias else (None, None)
            grads[d] = g._replace(b_ih=biases[0], b_hh=biases[1], ln=tuple(ln))
        return grad_x, grad_states, grads


#: How many layers this kernel has run in this process: tests read it to see which path ran.
layers_run = 0


def run_layer(x, states: tuple[Any, ...], weights: Sequence[LayerWeights], cell: Cell, *,
              keep: bool, active=None, hooks: Sequence[StepHooks] | None = None,
              position: tuple[int, int] = (0, 1)):
    """One layer (all its directions) of a LayerNorm ``cell``: ``(output, finals, backward
    or None)``, the interface of :func:`xrnn._kernels.numpy_layer.run_layer`."""
    global layers_run
    layers_run += 1
    layer = _NormLayer(x, states, weights, cell, keep, active, hooks, position)
    layer.forward()
    return layer.output(active), layer.finals(), (layer if keep else None)
