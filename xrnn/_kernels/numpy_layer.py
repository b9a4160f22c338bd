"""The NumPy fast path: one layer of any cell, both directions at once, forward and BPTT.

It computes what the generic driver (``xrnn.functional.recurrence``) computes, in the
same interface (:func:`run_layer`), but arranged for NumPy on the CPU:

- both directions of a layer advance together: every state and per-step buffer has a
  leading direction axis D, so one batched ``matmul`` and one call per elementwise
  operation serve both directions (the reverse direction's inputs are stored in the
  order it reads them, its "step order");
- every array the time loop touches is preallocated; each operation writes with
  ``out=`` into a slice of a buffer indexed by step, so the loop allocates nothing and
  the tape for the backward is just those buffers;
- the gates of an LSTM or GRU come from one ``exp`` over all of them:
  ``sigmoid(z) = 1 / (1 + exp(-z))``, and the LSTM's ``g = tanh(z) = 2 sigmoid(2z) - 1``.
  The gate rows of the weights are multiplied by -1 or -2 beforehand (exact), and the
  LSTM's rows are reordered i, f, o, g so the sigmoid gates are one contiguous block.
  NumPy's float32 ``exp`` is about twice as fast as its ``tanh`` here (NOTES.md);
- the input projection ``x W_ih^T`` is one product per direction for a chunk of steps,
  made just before they run (no (T, B, G*H) array for long sequences);
- the backward batches the weight gradients over all timesteps into single products;
- the per-step options of :class:`~xrnn.functional.recurrence.StepHooks` (``reset``,
  recurrent dropout's mask, zoneout) act as on the generic path, forward and backward.

Shapes: ``x`` (T, B, I); states (D, B, H) (``h`` is (D, B, P), P = proj_size or H);
output (T, B, D*P). Buffers indexed by step are (D, T, B, ...).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..functional.cells import Cell
from ..functional.recurrence import NO_HOOKS, StepHooks
from ..functional.weights import LayerWeights
from . import workspace
from .workspace import give_back, scratch, tape

#: Kernel gate order, as indices of PyTorch's gate blocks. LSTM: i, f, o, g.
_ORDER = {"lstm": (0, 1, 3, 2)}
#: Factors for the gate rows (kernel order) so that ``1 / (1 + exp(row))`` is each gate's
#: sigmoid (for the LSTM's g, the sigmoid of 2z, from which g = tanh(z) follows).
_SCALE = {"lstm": (-1.0, -1.0, -1.0, -2.0), "gru": (-1.0, -1.0, 1.0)}
#: Size (elements) of the input-projection buffer: a chunk of steps at a time, so that a
#: long sequence needs no (T, B, G*H) array and each chunk is still warm in cache.
_CHUNK_ELEMENTS = 1 << 22
#: From this many steps on, a one-direction layer whose ``W_hh`` does not start on a
#: cache line (NumPy aligns to 16 bytes; glibc puts large blocks 16 bytes past a page)
#: reads an aligned copy: the compiled loops' products with it ran 20-30% faster, and a
#: copy costs about one product (NOTES.md, issue 13, tenth pass).
ALIGN_STEPS = 8
KINDS = ("rnn_tanh", "rnn_relu", "rnn_identity", "lstm", "gru")


def column_sums(a, out=None):
    """``a.sum(axis=0)`` of a (M, N) array as one matrix-vector product, ``ones(M) @ a``:
    BLAS's gemv ran 1.1-1.8x as fast as NumPy's sum down the rows on contiguous gate
    gradients, and 2.4-3.6x on a strided half of their columns (NOTES.md, issue 13,
    twenty-first pass)."""
    return np.matmul(np.ones(a.shape[0], dtype=a.dtype), a, out=out)


def _blocks(a, order: Sequence[int], gates: int, axis: int):
    """``a`` with its ``gates`` blocks along ``axis`` rearranged in ``order``."""
    if list(order) == list(range(gates)):
        return a
    index = _block_index(tuple(order), a.shape[axis] // gates)
    return np.take(a, index, axis=axis)  # one copy (split + concatenate took 2-4x longer)


@functools.lru_cache(maxsize=64)
def _block_index(order: tuple[int, ...], size: int):
    """Indices that put blocks of ``size`` rows in ``order`` (made once per layout)."""
    index = np.arange(len(order) * size).reshape(len(order), size)[list(order)].reshape(-1)
    index.flags.writeable = False
    return index


class _Layer:
    """One layer's weights in kernel layout, and its buffers."""

    #: The gate layout the step functions read, per cell: the order of PyTorch's gate
    #: blocks and a factor for each block's rows (a cell not named: PyTorch's order, or
    #: its rows unscaled). The NumPy steps need the one ``exp`` layout above; compiled
    #: steps (numba_layer) read PyTorch's, so that no weight is copied for them.
    ORDER: dict[str, tuple[int, ...]] = _ORDER
    SCALE: dict[str, tuple[float, ...]] = _SCALE
    #: Whether a one-direction layer's loops read ``W_hh`` itself, so that it is worth an
    #: aligned copy (:data:`ALIGN_STEPS`).
    ALIGN_W_HH = True

    def __init__(self, x, states, weights: Sequence[LayerWeights], cell: Cell,
                 keep: bool, active, hooks: Sequence[StepHooks] | None = None,
                 position: tuple[int, int] = (0, 1)):
        self.kind = cell.name
        self.keep = keep
        # what passes between the layers of a stack lives in reusable buffers (fresh
        # memory costs a page fault per 4 KiB: a quarter of a (100,32,64,128,2,2) RNN's
        # time, NOTES.md, issue 13, ninth pass): the output where the next layer reads
        # it, the input's gradient where the layer below reads it; fresh arrays where the
        # caller gets them. Two names per kind, alternating, so that a layer's input and
        # output are never the same buffer.
        layer, layers = position
        self.output_buffer = f"output{layer % 2}" if layer < layers - 1 else None
        self.grad_input_buffer = f"grad_input{layer % 2}" if layer > 0 else None
        self.gates = gates = cell.gates
        steps, batch, _ = x.shape
        self.D = directions = len(weights)
        dtype = x.dtype
        self.H = hidden = weights[0].w_hh.shape[0] // gates
        self.P = weights[0].w_hh.shape[1]  # size of h: proj_size or H
        gh = gates * hidden
        self.steps, self.batch, self.dtype = steps, batch, dtype
        self._tape: list | None = [] if keep else None  # given back after the backward

        factors = self.SCALE.get(self.kind)
        #: (G*H,) the factors of the gate rows in kernel order, or None (unscaled)
        self.scale = None if factors is None else np.repeat(
            np.asarray(factors, dtype=dtype), hidden)
        rows = self._rows
        # unscaled, kernel order (the parameters themselves in PyTorch's): for the backward
        self.w_ih = [self._weight_rows(w.w_ih) for w in weights]
        if directions == 1:
            w_hh = self._weight_rows(weights[0].w_hh)
            if steps >= ALIGN_STEPS and self.ALIGN_W_HH and not workspace.aligned(w_hh):
                w_hh = self._copy(w_hh, "w_hh")  # (the loops read it every step)
            self.w_hh_stack = w_hh[None]  # (D, GH, P)
        else:  # (np.stack took 24 us: a small layer's whole loop runs in 35)
            self.w_hh_stack = self._buffer((directions, gh, self.P), "w_hh")
            self._w_hh = [self._weight_rows(w.w_hh) for w in weights]
            self._stack_w_hh(range(directions))
        self.w_hr = None if weights[0].w_hr is None else np.stack([w.w_hr for w in weights])
        self.w_hr_t = None if self.w_hr is None else np.ascontiguousarray(
            np.swapaxes(self.w_hr, 1, 2))  # (D, H, P)
        self.has_bias = weights[0].b_ih is not None
        # what only the forward reads (scaled rows): transposed views, BLAS reads them as
        # they are (a transposing copy took 9.4 ms for two 2048 x 512 matrices, and the
        # products were as fast or faster: NOTES); scaled copies are scratch
        w_hh_t = self.w_hh_stack
        w_ih_t = self.w_ih
        if self.scale is not None:
            column = self.scale[:, None]
            w_hh_t = np.multiply(w_hh_t, column, out=scratch("w_hh_t", w_hh_t.shape, dtype))
            w_ih_t = [np.multiply(w, column, out=scratch(f"w_ih_t{d}", w.shape, dtype))
                      for d, w in enumerate(w_ih_t)]
        self.w_hh_t = np.swapaxes(w_hh_t, 1, 2)  # (D, P, GH)
        self.w_ih_t = [w.T for w in w_ih_t]  # (I, GH)

        # the input projection, made a chunk of steps at a time just before they run
        self.x_steps = [x]
        if directions == 2:
            self.x_steps.append(self._buffer(x.shape, "x_steps"))
            self._reverse_input()
        # (D, G*H) the biases that go with x W_ih^T
        self.gx_bias = self.b_hn = None  # b_hn: GRU, the n block of b_hh, (D, 1, H)
        if self.has_bias:
            self.gx_bias = np.empty((directions, gh), dtype=dtype)
            for bias, w in zip(self.gx_bias, weights):
                np.add(rows(w.b_ih), rows(w.b_hh), out=bias)
                if self.kind == "gru":  # b_hn stays inside r * (h W_hn^T + b_hn)
                    bias[2 * hidden:] = rows(w.b_ih)[2 * hidden:]
                if self.scale is not None:
                    bias *= self.scale
            if self.kind == "gru":
                self.b_hn = np.stack([w.b_hh[2 * hidden:] for w in weights])[:, None, :]
        chunk = max(1, min(steps, _CHUNK_ELEMENTS // (directions * batch * gh)))
        self.gx = scratch("gx", (directions, chunk, batch, gh), dtype)  # never read back

        # states by step: h[:, s] is the state before step s, h[:, T] the final one
        # one direction without a tape or padding: the output is a view of the states (a
        # fresh array, no copy); else the output and the final states are copied out of them
        self.h_is_output = directions == 1 and not keep and active is None
        self.h = (self._output_array((1, steps + 1, batch, self.P)) if self.h_is_output
                  else self._buffer((directions, steps + 1, batch, self.P), "h"))
        self.h[:, 0] = states[0]
        # what the backward reads, by step: ``h_before[:, s]`` the h entering step s,
        # ``h_new[:, s]`` the cell's own new h at step s (for the Elman cells' derivative)
        self.h_before, self.h_new = self.h, self.h[:, 1:]
        self.h_mask = None  # recurrent dropout's (D, B, P) mask on the product's input
        self.c = None
        if self.kind == "lstm":
            self.c = self._buffer((directions, steps + 1, batch, hidden), "c")
            self.c[:, 0] = states[1]
        # per-step activations; without ``keep`` one step's worth is reused
        span = steps if keep else 1
        self.a = self._buffer((directions, span, batch, gh))
        self.tanh_c = (self._buffer((directions, span, batch, hidden))
                       if self.kind == "lstm" else None)
        self.m = (self._buffer((directions, span, batch, hidden))
                  if self.w_hr is not None else None)  # LSTM output before the projection
        self.gh = (self._buffer((directions, span, batch, gh))
                   if self.kind == "gru" else None)  # GRU: h W_hh^T (+ b_hn on the n block)
        self.z = np.empty((directions, batch, gh), dtype=dtype)
        self.tmp = np.empty((directions, batch, hidden), dtype=dtype)
        # ``inactive[:, s]`` (D, B, 1): where a padded step leaves the state unchanged
        self.inactive = None
        if active is not None:
            steps_active = np.stack([active if d == 0 else active[::-1]
                                     for d in range(directions)])
            self.inactive = ~steps_active
        self._init_hooks(hooks or [NO_HOOKS] * directions)

    def _stack_w_hh(self, directions) -> None:
        """Copy these directions' ``W_hh`` (kernel order) into ``w_hh_stack``."""
        for d in directions:
            self.w_hh_stack[d] = self._w_hh[d]

    def _reverse_input(self) -> None:
        """The reverse direction's input in its step order: ``x_steps[1] = x[::-1]``."""
        np.copyto(self.x_steps[1], self.x_steps[0][::-1])

    def _buffer(self, shape, name: str | None = None):
        """An uninitialised array of the layer's dtype. With a tape, one of the
        workspace's tape arrays (given back by :meth:`release`); without, the
        workspace's scratch ``name``, or a fresh array if no name."""
        if self._tape is not None:
            a = tape(shape, self.dtype)
            self._tape.append(a)
            return a
        if name is None:
            return workspace.empty(shape, self.dtype)
        return scratch(name, shape, self.dtype)

    def _copy(self, a, name: str):
        """``a`` copied into :meth:`_buffer` ``name``."""
        copy = self._buffer(a.shape, name)
        copy[...] = a
        return copy

    def _output_array(self, shape):
        """An uninitialised array for the output (or the states it is a view of): a fresh
        one for the caller, else the layer's output buffer (a tape array with a tape: the
        next layer's backward reads it as its input)."""
        if self.output_buffer is None:
            return workspace.empty(shape, self.dtype)
        return self._buffer(shape, self.output_buffer)

    def _grad_input_array(self, direction: int, shape):
        """An uninitialised array for a direction's share of the input's gradient: the
        reverse direction's is added to the forward one's and dropped (scratch); the
        forward one's is fresh for the caller, else the layer's gradient buffer."""
        if direction == 1:
            return scratch("grad_input_reverse", shape, self.dtype)
        if self.grad_input_buffer is None:
            return workspace.empty(shape, self.dtype)
        return scratch(self.grad_input_buffer, shape, self.dtype)

    def _rows(self, a):
        """A weight's or bias's gate blocks (along axis 0) in kernel order, or back to
        PyTorch's (the orders swap two blocks at most); ``a`` itself in PyTorch's order."""
        order = self.ORDER.get(self.kind)
        return a if a is None or order is None else _blocks(a, order, self.gates, axis=0)

    def _weight_rows(self, a):
        """A weight matrix's rows in the order the layer's products read them
        (:meth:`_rows`)."""
        return self._rows(a)

    def _rows_back(self, a):
        """A gradient's rows (along axis 0) from kernel order back to PyTorch's (here
        :meth:`_rows` itself: its orders are their own inverses)."""
        return self._rows(a)

    def _init_hooks(self, hooks: Sequence[StepHooks]) -> None:
        """The per-step options (one :class:`StepHooks` per direction, original time
        positions) in step order, and the buffers they need.

        ``reset[:, s]`` (D, B, 1): where step s reads the initial state. The entering h
        then differs from the previous output, so it gets its own buffer ``h_before``;
        the entering c is written over ``c[:, s]`` (the LSTM's backward needs no other c).
        ``zone[k]``, per state component: (D, T, B, size) keep-masks, or the float p in
        eval, and ``zone_pass[k]`` = 1 - zone[k]; the cell's own new h (before zoneout)
        goes to ``h_new``. ``h_mask`` (D, B, P): recurrent dropout, on the product's input.
        """
        directions, steps, batch, dtype = self.D, self.steps, self.batch, self.dtype
        taped = steps if self.keep else 1

        def in_step_order(per_direction):
            return np.stack([a if d == 0 else a[::-1] for d, a in enumerate(per_direction)])

        first = hooks[0]
        self.reset = None
        if first.reset is not None:
            self.reset = in_step_order([hook.reset for hook in hooks])
            self.reset_at = self.reset.any(axis=(0, 2, 3)).tolist()  # any row, per step
            self.h_before = self._buffer((directions, taped, batch, self.P))
        if first.h_mask is not None:
            self.h_mask = np.stack([hook.h_mask for hook in hooks])
            self.h_in = np.empty((directions, batch, self.P), dtype=dtype)
        self.zone = self.zone_pass = None
        if first.zoneout is not None:
            self.zone, self.zone_pass, self.zone_tmp = [], [], []
            for k, p in enumerate(first.zoneout):
                keep = p if isinstance(p, float) else in_step_order(
                    [hook.zoneout[k] for hook in hooks])
                self.zone.append(keep)
                self.zone_pass.append(1.0 - keep)
                size = self.P if k == 0 else self.H
                self.zone_tmp.append(np.empty((directions, batch, size), dtype=dtype))
            self.h_new = self._buffer((directions, taped, batch, self.P))

    def _project(self, start: int) -> None:
        """Fill ``gx[d, j]`` with step ``start + j``'s ``x W_ih^T`` (scaled rows) plus the
        biases that fold into it (all but the GRU's ``b_hn``): one product per direction."""
        count = min(self.gx.shape[1], self.steps - start)
        rows = count * self.batch
        for d in range(self.D):
            flat = self.gx[d, :count].reshape(rows, -1)
            np.matmul(self.x_steps[d][start:start + count].reshape(rows, -1), self.w_ih_t[d],
                      out=flat)
            if self.gx_bias is not None:
                flat += self.gx_bias[d]

    # forward ---------------------------------------------------------------------------

    def forward(self):
        step = getattr(self, "_step_" + self.kind.removeprefix("rnn_"))
        with np.errstate(over="ignore"):  # exp(large) = inf gives the gates' limits 0 and 1
            self._loop(step)

    def _loop(self, step):
        chunk = self.gx.shape[1]
        reset, zone, c = self.reset, self.zone, self.c
        for s in range(self.steps):
            if s % chunk == 0:
                self._project(s)
            k = s if self.keep else 0
            h_prev = self.h[:, s]
            if reset is not None:  # the state entering step s: the initial one where reset
                h_prev = self.h_before[:, k]
                np.copyto(h_prev, self.h[:, s])
                if self.reset_at[s]:
                    np.copyto(h_prev, self.h[:, 0], where=reset[:, s])
            h_in = None if self.h_mask is None else np.multiply(h_prev, self.h_mask,
                                                                out=self.h_in)
            h_new = self.h[:, s + 1] if zone is None else self.h_new[:, k]
            h_out = h_new if self.m is None else self.m[:, k]
            step(self.gx[:, s % chunk], s, k, h_prev, h_out, h_in)
            if self.m is not None:
                np.matmul(h_out, self.w_hr_t, out=h_new)
            if zone is not None:
                self._zoneout(s, 0, h_prev, h_new, self.h[:, s + 1])
                if c is not None:
                    self._zoneout(s, 1, c[:, s], c[:, s + 1], c[:, s + 1])
            if self.inactive is not None:
                np.copyto(self.h[:, s + 1], h_prev, where=self.inactive[:, s])
                if c is not None:
                    np.copyto(c[:, s + 1], c[:, s], where=self.inactive[:, s])
            if reset is not None and c is not None and s + 1 < self.steps and self.reset_at[s + 1]:
                np.copyto(c[:, s + 1], c[:, 0], where=reset[:, s + 1])

    def _zoneout(self, s: int, k: int, prev, new, out) -> None:
        """``out = d * prev + (1 - d) * new`` for state component ``k`` at step ``s``."""
        keep, passed = self.zone[k], self.zone_pass[k]
        if not isinstance(keep, float):
            keep, passed = keep[:, s], passed[:, s]
        kept = np.multiply(keep, prev, out=self.zone_tmp[k])
        np.multiply(passed, new, out=out)
        out += kept

    def _zoneout_back(self, s: int, k: int, grad, kept) -> None:
        """Split ``grad`` (of the zoned-out state) into ``kept = d * grad``, the previous
        state's share, and, in place, ``(1 - d) * grad``, the cell's new state's."""
        keep, passed = self.zone[k], self.zone_pass[k]
        if not isinstance(keep, float):
            keep, passed = keep[:, s], passed[:, s]
        np.multiply(grad, keep, out=kept)
        grad *= passed

    def _hh_product_back(self, dgh, dh):
        """``dh`` (D, B, P) = ``dgh W_hh`` (``dgh`` (D, B, G*H)): the step's gates'
        gradients back to h."""
        np.matmul(dgh, self.w_hh_stack, out=dh)

    def _hh_product(self, h_prev, h_in, out):
        """``out`` (D, B, G*H) = ``h W_hh^T`` (kernel layout), ``h`` the product's input:
        ``h_in`` if given, else ``h_prev``. (At B = 1, a gemv per direction was 18%
        faster alone but 4% slower inside the forward: NOTES.md.)"""
        return np.matmul(h_prev if h_in is None else h_in, self.w_hh_t, out=out)

    # One step of each cell, both directions: ``gx`` (D, B, G*H) the step's input projection,
    # ``s`` the step, ``k`` its slot in the taped buffers (``s``, or 0 without ``keep``),
    # ``h_prev`` (D, B, P) the h entering the step, ``h_out`` where the cell's own new h
    # goes (the LSTM's before the projection), ``h_in`` the h that enters the product with
    # ``W_hh`` when it is not ``h_prev`` (recurrent dropout's masked copy), else ``None``.
    # The LSTM reads its entering c at ``c[:, s]`` and writes its new c to ``c[:, s + 1]``.

    def _step_tanh(self, gx, s, k, h_prev, h_out, h_in=None):
        z = self._hh_product(h_prev, h_in, self.z)
        z += gx
        np.tanh(z, out=h_out)

    def _step_relu(self, gx, s, k, h_prev, h_out, h_in=None):
        z = self._hh_product(h_prev, h_in, self.z)
        z += gx
        np.maximum(z, 0.0, out=h_out)

    def _step_identity(self, gx, s, k, h_prev, h_out, h_in=None):
        self._hh_product(h_prev, h_in, h_out)
        h_out += gx

    def _step_lstm(self, gx, s, k, h_prev, h_out, h_in=None):
        z = self._hh_product(h_prev, h_in, self.z)
        c, o = self._lstm_gates(np.add(z, gx, out=self.a[:, k]), s)
        tanh_c = np.tanh(c, out=self.tanh_c[:, k])
        np.multiply(o, tanh_c, out=h_out)

    def _lstm_gates(self, a, s):
        """The LSTM's gates from their pre-activations ``a`` (scaled rows, kernel order),
        in place, and the new c (written to ``c[:, s + 1]``); returns ``(c, o)``."""
        hidden = self.H
        np.exp(a, out=a)
        a += 1.0
        np.divide(1.0, a, out=a)  # sigmoid(z) for i, f, o; sigmoid(2z) for g
        i, f, o, g = (a[..., j * hidden:(j + 1) * hidden] for j in range(4))
        g *= 2.0
        g -= 1.0
        c = np.multiply(f, self.c[:, s], out=self.c[:, s + 1])
        c += np.multiply(i, g, out=self.tmp)
        return c, o

    def _step_gru(self, gx, s, k, h_prev, h_out, h_in=None):
        gh = self._hh_product(h_prev, h_in, self.gh[:, k])
        self._gru_gates(gx, gh, self.a[:, k], h_prev, h_out)

    def _gru_gates(self, gx, gh, a, h_prev, h_out):
        """The GRU's gates ``a`` and new h from ``gx`` and ``gh`` (``h W_hh^T``, which gets
        ``b_hn`` on its n block here)."""
        hidden = self.H
        hn = gh[..., 2 * hidden:]
        if self.b_hn is not None:
            hn += self.b_hn
        rz = np.add(gx[..., :2 * hidden], gh[..., :2 * hidden], out=a[..., :2 * hidden])
        np.exp(rz, out=rz)  # rows negated: 1 / (1 + exp(-z)) = sigmoid(z)
        rz += 1.0
        np.divide(1.0, rz, out=rz)
        r, z = rz[..., :hidden], rz[..., hidden:]
        n = np.multiply(r, hn, out=a[..., 2 * hidden:])
        n += gx[..., 2 * hidden:]
        np.tanh(n, out=n)
        np.subtract(h_prev, n, out=h_out)  # h = n + z (h_prev - n)
        h_out *= z
        h_out += n

    def output(self, active):
        """(T, B, D*P): each direction's outputs at their time positions, zero where padded."""
        if self.h_is_output:
            return self.h[0, 1:]
        steps, batch = self.steps, self.batch
        out = self._output_array((steps, batch, self.D * self.P))
        out[..., :self.P] = self.h[0, 1:]
        if self.D == 2:
            out[..., self.P:] = self.h[1, :0:-1]
        if active is not None:
            np.copyto(out, 0.0, where=~active)
        return out

    def finals(self):
        states = (self.h,) if self.c is None else (self.h, self.c)
        return tuple(a[:, self.steps].copy() for a in states)

    # backward --------------------------------------------------------------------------

    def __call__(self, grad_output, grad_finals):
        """:meth:`backward`, as many times as wanted until :meth:`release`."""
        if self._tape is None:
            raise RuntimeError("this forward's tape was released after its backward: run "
                               "the forward again for another backward")
        return self.backward(grad_output, grad_finals)

    def release(self) -> None:
        """Give the tape's arrays back to the workspace, for the next forward with a tape
        (the same shapes: the next training step); the backward can run no more."""
        if self._tape is not None:
            arrays, self._tape = self._tape, None
            give_back(arrays)

    def backward(self, grad_output, grad_finals):
        """BPTT; returns ``(grad_x, grad_states, grad_weights)`` like the generic driver."""
        directions, steps, batch, gh = self.D, self.steps, self.batch, self.gx.shape[-1]
        hidden, dtype = self.H, self.dtype
        grad_steps = None  # grad_output per direction in step order, zero where padded
        if grad_output is not None:
            grad_steps = self._buffer((directions, steps, batch, self.P))
            grad_steps[0] = grad_output[..., :self.P]
            if directions == 2:
                grad_steps[1] = grad_output[::-1, :, self.P:]
            if self.inactive is not None:
                np.copyto(grad_steps, 0.0, where=self.inactive)
        dh = (np.zeros((directions, batch, self.P), dtype=dtype) if grad_finals[0] is None
              else np.array(grad_finals[0], dtype=dtype))
        dc = None
        if self.kind == "lstm":
            dc = (np.zeros((directions, batch, hidden), dtype=dtype) if grad_finals[1] is None
                  else np.array(grad_finals[1], dtype=dtype))
        dz_all = self._buffer((directions, steps, batch, gh))
        dgh_all = self._buffer(dz_all.shape) if self.kind == "gru" else dz_all
        dh_all = (self._buffer((directions, steps, batch, self.P))
                  if self.w_hr is not None else None)  # d(projected h), for d W_hr
        saved = None
        if self.inactive is not None:
            saved = [np.empty_like(dh)] + ([] if dc is None else [np.empty_like(dc)])
        grads = (dh,) if dc is None else (dh, dc)
        kept = None if self.zone is None else [np.empty_like(g) for g in grads]
        starts = None  # gradients reaching the initial state through resets
        if self.reset is not None:
            starts = [np.zeros_like(g) for g in grads]
        scratch = np.empty((directions, batch, gh), dtype=dtype)
        dm = np.empty((directions, batch, hidden), dtype=dtype) if dh_all is not None else None
        step_back = getattr(self, "_back_" + self.kind.removeprefix("rnn_"))
        for s in range(steps - 1, -1, -1):
            if grad_steps is not None:
                dh += grad_steps[:, s]
            if saved is not None:  # a padded step passes its state's gradient through
                np.copyto(saved[0], dh)
                if dc is not None:
                    np.copyto(saved[1], dc)
            if kept is not None:  # back through s_t = d s_{t-1} + (1 - d) s_new
                for k, grad in enumerate(grads):
                    self._zoneout_back(s, k, grad, kept[k])
            d_out = dh
            if dh_all is not None:  # h = m W_hr^T: back to m
                np.copyto(dh_all[:, s], dh)
                d_out = np.matmul(dh, self.w_hr, out=dm)
            dz, dgh = dz_all[:, s], dgh_all[:, s]
            direct = step_back(s, d_out, dc, dz, dgh, scratch)
            if saved is not None:
                np.copyto(dz, 0.0, where=self.inactive[:, s])
                if dh_all is not None:
                    np.copyto(dh_all[:, s], 0.0, where=self.inactive[:, s])
                if dgh is not dz:
                    np.copyto(dgh, 0.0, where=self.inactive[:, s])
            self._hh_product_back(dgh, dh)
            if self.h_mask is not None:
                dh *= self.h_mask
            if direct is not None:
                dh += direct
            if kept is not None:
                for grad, share in zip(grads, kept):
                    grad += share
            if saved is not None:
                np.copyto(dh, saved[0], where=self.inactive[:, s])
                if dc is not None:
                    np.copyto(dc, saved[1], where=self.inactive[:, s])
            if starts is not None and self.reset_at[s]:  # no gradient crosses a reset
                reset = self.reset[:, s]
                for grad, start in zip(grads, starts):
                    np.add(start, grad, out=start, where=reset)
                    np.copyto(grad, 0.0, where=reset)
        if starts is not None:
            for grad, start in zip(grads, starts):
                grad += start
        return self._gradients(dz_all, dgh_all, dh_all, dh, dc)

    # The backward of one step, both directions: ``dh`` (D, B, P) and ``dc`` (LSTM) the
    # gradients of the cell's own new state at step ``s`` (``dc`` updated in place to the
    # entering c's); fills ``dz`` (D, B, G*H), the gradient of the input projection, and
    # ``dgh`` that of the recurrent product (the same array unless GRU); returns the
    # gradient of the entering h along paths outside ``W_hh``, or ``None``. Reads the tape
    # by step: ``h_before``, ``h_new``, ``c``, ``a``, ...

    def _back_tanh(self, s, dh, dc, dz, dgh, scratch):
        h = self.h_new[:, s]
        np.multiply(h, h, out=dz)
        np.subtract(1.0, dz, out=dz)
        dz *= dh

    def _back_relu(self, s, dh, dc, dz, dgh, scratch):
        dz[...] = 0.0
        np.copyto(dz, dh, where=self.h_new[:, s] > 0.0)

    def _back_identity(self, s, dh, dc, dz, dgh, scratch):
        np.copyto(dz, dh)

    def _back_lstm(self, s, dh, dc, dz, dgh, scratch):
        hidden = self.H
        tanh_c = self.tanh_c[:, s]
        o = self.a[:, s, ..., 2 * hidden:3 * hidden]
        t = np.multiply(tanh_c, tanh_c, out=self.tmp)  # dc += dh o (1 - tanh(c)^2)
        np.subtract(1.0, t, out=t)
        t *= o
        t *= dh
        dc += t
        self._lstm_gates_back(s, dh, dc, dz, scratch)
        return None

    def _lstm_gates_back(self, s, dh, dc, dz, scratch) -> None:
        """``dz``: the gradient of step ``s``'s gate pre-activations (kernel order i, f, o,
        g) from ``dh`` and ``dc`` (the gradient of its new c, complete); ``dc`` becomes
        the previous c's."""
        hidden = self.H
        a, tanh_c = self.a[:, s], self.tanh_c[:, s]
        i, f, g = a[..., :hidden], a[..., hidden:2 * hidden], a[..., 3 * hidden:]
        np.multiply(dc, g, out=dz[..., :hidden])
        np.multiply(dc, self.c[:, s], out=dz[..., hidden:2 * hidden])
        np.multiply(dh, tanh_c, out=dz[..., 2 * hidden:3 * hidden])
        np.multiply(dc, i, out=dz[..., 3 * hidden:])
        slope = np.multiply(a, a, out=scratch)  # sigmoid' = s - s^2, tanh' = 1 - g^2
        np.subtract(a[..., :3 * hidden], slope[..., :3 * hidden], out=slope[..., :3 * hidden])
        np.subtract(1.0, slope[..., 3 * hidden:], out=slope[..., 3 * hidden:])
        dz *= slope
        dc *= f

    def _back_gru(self, s, dh, dc, dz, dgh, scratch):
        hidden = self.H
        a, hn = self.a[:, s], self.gh[:, s][..., 2 * hidden:]
        rz, n = a[..., :2 * hidden], a[..., 2 * hidden:]
        r, z = rz[..., :hidden], rz[..., hidden:]
        dn = dz[..., 2 * hidden:]  # dh (1 - z) (1 - n^2)
        np.multiply(n, n, out=dn)
        np.subtract(1.0, dn, out=dn)
        dn *= dh
        dn *= np.subtract(1.0, z, out=self.tmp)
        np.multiply(dn, hn, out=dz[..., :hidden])  # dr = dn hn r (1 - r)
        # dz = dh (h - n) z (1 - z)
        np.subtract(self.h_before[:, s], n, out=dz[..., hidden:2 * hidden])
        dz[..., hidden:2 * hidden] *= dh
        slope = np.subtract(1.0, rz, out=scratch[..., :2 * hidden])
        slope *= rz
        dz[..., :2 * hidden] *= slope
        dgh[..., :2 * hidden] = dz[..., :2 * hidden]
        np.multiply(dn, r, out=dgh[..., 2 * hidden:])
        return np.multiply(dh, z, out=self.tmp)

    def _product_input(self, d: int):
        """(T, B, P): what entered direction ``d``'s product with ``W_hh`` at each step."""
        h = self.h_before[d, :self.steps]
        return h if self.h_mask is None else h * self.h_mask[d]

    def _gradients(self, dz_all, dgh_all, dh_all, dh, dc):
        """``(grad_x, grad_states, grad_weights)`` from the gate gradients by step."""
        per_direction = [self._direction_gradients(d, dz_all, dgh_all, dh_all)
                         for d in range(self.D)]
        return self._combine(per_direction, dh, dc)

    def _direction_gradients(self, d: int, dz_all, dgh_all, dh_all):
        """Direction ``d``'s share: ``(grad_x in its step order, its LayerWeights)``, the
        weight gradients batched over all steps (PyTorch's gate order)."""
        _, steps, batch, gh = dz_all.shape
        rows = self._rows_back
        dz = dz_all[d].reshape(steps * batch, gh)
        dgh = dgh_all[d].reshape(steps * batch, gh)
        x = self.x_steps[d]
        h_prev = self._product_input(d).reshape(steps * batch, self.P)
        b_ih = b_hh = None
        if self.has_bias:  # (one sum where the two are the same array: all cells but GRU)
            b_ih = rows(column_sums(dz))
            b_hh = b_ih.copy() if dgh_all is dz_all else rows(column_sums(dgh))
        grad_x = self._grad_input_array(d, x.shape)
        np.matmul(dz, self.w_ih[d], out=grad_x.reshape(steps * batch, -1))
        return grad_x, LayerWeights(
            rows(dz.T @ x.reshape(steps * batch, -1)), rows(dgh.T @ h_prev), b_ih, b_hh,
            None if dh_all is None else
            dh_all[d].reshape(steps * batch, self.P).T
            @ self.m[d].reshape(steps * batch, self.H))

    @staticmethod
    def _combine(per_direction, dh, dc):
        """The driver's ``(grad_x, grad_states, grad_weights)`` from the directions'
        shares: the reverse direction's grad_x back in time order, added."""
        grad_x = per_direction[0][0]
        if len(per_direction) == 2:
            grad_x += per_direction[1][0][::-1]
        return grad_x, (dh,) + (() if dc is None else (dc,)), [w for _, w in per_direction]


#: How many layers this kernel has run in this process: tests read it to see which path ran.
layers_run = 0


def run_layer(x, states: tuple[Any, ...], weights: Sequence[LayerWeights], cell: Cell, *,
              keep: bool, active=None, hooks: Sequence[StepHooks] | None = None,
              position: tuple[int, int] = (0, 1)):
    """One layer (all its directions) of ``cell``: ``(output, finals, backward or None)``.

    ``x`` (T, B, I); ``states`` each (D, B, ·); ``weights`` one :class:`LayerWeights` per
    direction; ``active`` (T, B, 1) booleans for variable lengths; ``hooks`` one
    :class:`~xrnn.functional.recurrence.StepHooks` per direction (reset, recurrent dropout,
    zoneout), as the generic path's ``run_layer``. ``backward(grad_output, grad_finals)
    -> (grad_x, grad_states, grad_weights)`` (``None`` entries mean zero) is the layer;
    ``backward.release()`` gives its tape's arrays to the next forward. ``position``
    ``(layer, num_layers)``: where the layer is in its stack. An output that another
    layer reads, and an input's gradient that another layer's backward reads, are
    reusable buffers, valid until the next call (the output, with a tape, until
    ``release``).
    """
    global layers_run
    layers_run += 1
    layer = _Layer(x, states, weights, cell, keep, active, hooks, position)
    layer.forward()
    return layer.output(active), layer.finals(), (layer if keep else None)
