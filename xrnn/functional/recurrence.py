"""The one recurrence driver shared by every cell type, forward and backward (BPTT).

Shapes (time-major): ``x`` (T, B, H_in); each state component (L*D, B, H);
output (T, B, D*H). L = num_layers, D = 2 if bidirectional else 1, G = cell.gates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import array_api_compat
import numpy as np

from .._kernels import layer_runner
from .cells import Cell, State, layer_norm, layer_norm_backward
from .dropout import dropout_mask, keep_mask
from .weights import LayerWeights

#: ``backward(grad_output, grad_finals) -> (grad_x, grad_states, grad_weights)``.
Backward = Callable[[Any, Sequence[Any]], tuple[Any, tuple[Any, ...], list[LayerWeights]]]


def _flat(xp, a):
    """(T, B, F) -> (T*B, F)."""
    return xp.reshape(a, (a.shape[0] * a.shape[1], a.shape[2]))


def _add(a, b):
    """``a + b`` where ``None`` stands for zero."""
    return b if a is None else a if b is None else a + b


def input_projection(xp, x, w: LayerWeights, cell: Cell):
    """``x W_ih^T + b`` for a whole sequence in one matrix product: (T, B, H_in) -> (T, B, G*H).
    A LayerNorm cell normalises ``x W_ih^T`` first: it returns ``(gx, norm_cache)``."""
    gx = _flat(xp, x) @ xp.matrix_transpose(w.w_ih)
    if cell.norms:
        gx, cache = layer_norm(xp, gx, *w.ln[:2])
        for b in (w.b_ih, w.b_hh if cell.folds_hidden_bias else None):
            gx = gx if b is None else gx + b
        return xp.reshape(gx, (x.shape[0], x.shape[1], gx.shape[-1])), cache
    if w.b_ih is not None:  # in place on the fresh product (plain rebinding on immutable backends)
        gx += w.b_ih + w.b_hh if cell.folds_hidden_bias else w.b_ih
    return xp.reshape(gx, (x.shape[0], x.shape[1], gx.shape[-1]))


def scale_gate_rows(xp, w: LayerWeights, cell: Cell) -> LayerWeights:
    """``w`` with each gate block's rows of ``w_ih``, ``w_hh`` and the biases multiplied
    by ``cell.gate_scale`` (powers of two: exact), as the cell's ``step`` expects."""
    if cell.gate_scale is None:
        return w
    size = w.w_hh.shape[0] // cell.gates
    scale = xp.concat([xp.full((size,), s, dtype=w.w_hh.dtype,
                               device=array_api_compat.device(w.w_hh)) for s in cell.gate_scale])
    column = xp.reshape(scale, (scale.shape[0], 1))
    return w._replace(w_ih=w.w_ih * column, w_hh=w.w_hh * column,
                      b_ih=None if w.b_ih is None else w.b_ih * scale,
                      b_hh=None if w.b_hh is None else w.b_hh * scale)


class StepHooks(NamedTuple):
    """Per-step options of one layer and direction (``None``: off); the generic path and
    every kernel in ``xrnn._kernels`` take them.

    ``reset`` (T, B, 1) booleans in original time positions: where true, the state
    entering step t is the initial state (for the reverse direction, ``reset`` is
    already shifted so that each segment starts at its last step). ``h_mask`` (B, H_out)
    multiplies ``h_{t-1}`` where it enters ``W_hh`` (recurrent dropout); the carried
    state is not masked. ``zoneout``, one entry per state component, each a (T, B, size)
    0/1 array (training: 1 keeps the previous value of that unit) or a float p (eval):
    ``s_t = d * s_{t-1} + (1 - d) * s_new``.
    """

    reset: Any = None
    h_mask: Any = None
    zoneout: tuple[Any, ...] | None = None


NO_HOOKS = StepHooks()


def _keep(zoneout, t: int):
    """Zoneout's ``d`` at step ``t``: a (B, size) 0/1 array, or the float p in eval mode."""
    return zoneout if isinstance(zoneout, float) else zoneout[t, ...]


def run_direction(xp, x, state: State, w: LayerWeights, cell: Cell, *, reverse: bool,
                  keep: bool = False, active=None, hooks: StepHooks = NO_HOOKS):
    """Run ``cell`` over one layer in one direction.

    Returns the per-step outputs (T, B, H) at their original time positions, the
    final state (for ``reverse``, the state after reading step 0) and, with
    ``keep``, the tape ``(states, caches, unprojected, entering, fresh, norm_cache)``
    that the backward needs, indexed by time (``entering``: the state each step read;
    ``fresh``: the cell's own new state before zoneout, with zoneout only;
    ``norm_cache``: a LayerNorm cell's input normalisation). ``active`` (T, B, 1)
    booleans, for variable lengths: where false, the state passes through unchanged and
    the output is zero, so each sequence's reverse direction starts at its own last
    valid step. ``hooks``: see :class:`StepHooks`.
    """
    w = scale_gate_rows(xp, w, cell)
    gx, norm_cache = input_projection(xp, x, w, cell) if cell.norms else (
        input_projection(xp, x, w, cell), None)
    norm = {"norm": w.ln[2:]} if cell.norms else {}  # the hh (and c) LayerNorms
    w_hh_t = xp.matrix_transpose(w.w_hh)
    w_hr_t = None if w.w_hr is None else xp.matrix_transpose(w.w_hr)
    b_hh = None if cell.folds_hidden_bias else w.b_hh
    steps = x.shape[0]
    state0 = state
    states: list[Any] = [None] * steps
    caches: list[Any] = [None] * steps
    unprojected: list[Any] = [None] * steps  # the cell's own h when the driver projects it
    entering: list[Any] = [None] * steps
    fresh: list[Any] = [None] * steps
    outputs: list[Any] = [None] * steps
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        if hooks.reset is not None:
            state = tuple(xp.where(hooks.reset[t, ...], s0, s) for s0, s in zip(state0, state))
        h_in = None if hooks.h_mask is None else state[0] * hooks.h_mask
        new, cache = cell.step(xp, gx[t, ...], state, w_hh_t, b_hh, h_in, **norm)
        if w_hr_t is not None:
            if keep:
                unprojected[t] = new[0]
            new = (new[0] @ w_hr_t,) + new[1:]
        if hooks.zoneout is not None:
            fresh[t] = new
            new = tuple(_keep(z, t) * s + (1.0 - _keep(z, t)) * n
                        for z, s, n in zip(hooks.zoneout, state, new))
        if keep:
            entering[t] = state
        if active is None:
            state = new
            outputs[t] = new[0]
        else:
            on = active[t, ...]
            state = tuple(xp.where(on, n, s) for n, s in zip(new, state))
            outputs[t] = xp.where(on, new[0], xp.zeros_like(new[0]))
        states[t] = state
        if keep:
            caches[t] = cache
    tape = (states, caches, unprojected, entering, fresh, norm_cache) if keep else None
    return xp.stack(outputs), state, tape


def direction_backward(xp, x, state0: State, w: LayerWeights, cell: Cell, tape, *,
                       reverse: bool, grad_output, grad_final: Sequence[Any], active=None,
                       hooks: StepHooks = NO_HOOKS):
    """BPTT through one layer and direction.

    Returns ``(grad_x, grad_state0, grad_weights)``; the weight gradients are
    computed after the time loop, each as one matrix product over all timesteps.
    """
    states, caches, unprojected, entering, fresh, norm_cache = tape
    norm_grads = None  # a LayerNorm cell's per-step extras, summed over time
    steps = len(states)
    d_projected: list[Any] = [None] * steps  # gradients of the projected h_t
    forward_order = list(range(steps - 1, -1, -1) if reverse else range(steps))
    d_state = list(grad_final)
    d_start: list[Any] = [None] * len(state0)  # reaching the initial state through resets
    d_gx: list[Any] = [None] * steps
    d_gh: list[Any] = [None] * steps
    if active is not None and grad_output is not None:  # padded outputs are constant zeros
        grad_output = xp.where(active, grad_output, xp.zeros_like(grad_output))
    for t in reversed(forward_order):
        d_state[0] = _add(d_state[0], None if grad_output is None else grad_output[t, ...])
        d_state = [xp.zeros_like(s) if d is None else d for d, s in zip(d_state, states[t])]
        passed = None
        if active is not None:  # inactive: the state went through untouched, output was 0
            on = active[t, ...]
            passed = [xp.where(on, xp.zeros_like(d), d) for d in d_state]
            d_state = [xp.where(on, d, xp.zeros_like(d)) for d in d_state]
        state = states[t]
        kept = None
        if hooks.zoneout is not None:  # s_t = d * s_{t-1} + (1 - d) * s_new
            kept = [d * _keep(z, t) for z, d in zip(hooks.zoneout, d_state)]
            d_state = [d * (1.0 - _keep(z, t)) for z, d in zip(hooks.zoneout, d_state)]
            state = fresh[t]
        if w.w_hr is not None:  # h_t = m_t W_hr^T: back to the cell's own output m_t
            d_projected[t] = d_state[0]
            d_state[0] = d_state[0] @ w.w_hr
            state = (unprojected[t],) + state[1:]
        d_gx[t], d_gh[t], direct, *extras = cell.step_backward(
            xp, tuple(d_state), state, entering[t], caches[t])
        if extras:
            norm_grads = extras[0] if norm_grads is None else [_add(a, e) for a, e in
                                                                zip(norm_grads, extras[0])]
        d_state = list(direct)
        d_h = d_gh[t] @ w.w_hh
        d_state[0] = _add(d_state[0], d_h if hooks.h_mask is None else d_h * hooks.h_mask)
        for extra in (kept, passed):
            if extra is not None:
                d_state = [_add(d, e) for d, e in zip(d_state, extra)]
        if hooks.reset is not None:  # the step read the initial state: no gradient crosses
            r = hooks.reset[t, ...]
            d_start = [_add(g, xp.where(r, d, xp.zeros_like(d))) for g, d in zip(d_start, d_state)]
            d_state = [xp.where(r, xp.zeros_like(d), d) for d in d_state]
    d_gx_all = _flat(xp, xp.stack(d_gx))
    d_gh_all = d_gx_all if cell.folds_hidden_bias and not cell.norms else (
        _flat(xp, xp.stack(d_gh)))
    h_prev = xp.stack([entering[t][0] for t in range(steps)])
    if hooks.h_mask is not None:
        h_prev = h_prev * hooks.h_mask
    grad_b_ih = None if w.b_ih is None else xp.sum(d_gx_all, axis=0)
    grad_b_hh = None if w.b_hh is None else (
        xp.sum(d_gx_all, axis=0) if cell.folds_hidden_bias else
        norm_grads[0] if norm_grads is not None else xp.sum(d_gh_all, axis=0))
    grad_ln = None
    if cell.norms:  # back through the input LayerNorm: gx = LN(x W_ih^T) + biases
        d_gx_all, d_w_ih_ln, d_b_ih_ln = layer_norm_backward(xp, d_gx_all, norm_cache)
        grad_ln = (d_w_ih_ln, d_b_ih_ln, *norm_grads[1:])
    grad_x = xp.reshape(d_gx_all @ w.w_ih, (steps, x.shape[1], x.shape[2]))
    grad_w = LayerWeights(
        xp.matrix_transpose(d_gx_all) @ _flat(xp, x),
        xp.matrix_transpose(d_gh_all) @ _flat(xp, h_prev),
        grad_b_ih, grad_b_hh,
        None if w.w_hr is None else
        xp.matrix_transpose(_flat(xp, xp.stack(d_projected))) @ _flat(xp, xp.stack(unprojected)),
        grad_ln,
    )
    return grad_x, tuple(_add(d, g) for d, g in zip(d_state, d_start)), grad_w


def run_layer(xp, x, states: State, weights: Sequence[LayerWeights], cell: Cell, *,
              keep: bool = False, active=None, hooks: Sequence[StepHooks] | None = None):
    """One layer, every direction, on the generic path: ``(output, finals, backward)``.

    ``states`` each (D, B, H) and ``weights`` one group per direction; output
    (T, B, D*H); finals like ``states``; ``backward(grad_output, grad_finals) ->
    (grad_x, grad_states, grad_weights)`` with ``keep``, else ``None``. ``hooks``: one
    :class:`StepHooks` per direction. The fast paths in ``xrnn._kernels`` implement this
    same interface, ``hooks`` included.
    """
    hooks = [NO_HOOKS] * len(weights) if hooks is None else hooks
    runs = [run_direction(xp, x, tuple(s[d, ...] for s in states), w, cell,
                          reverse=d == 1, keep=keep, active=active, hooks=hooks[d])
            for d, w in enumerate(weights)]
    output = runs[0][0] if len(runs) == 1 else xp.concat([r[0] for r in runs], axis=-1)
    finals = tuple(xp.stack([r[1][k] for r in runs]) for k in range(len(states)))
    if not keep:
        return output, finals, None

    def backward(grad_output, grad_finals):
        hidden = runs[0][0].shape[-1]
        grad_x, grad_states, grad_weights = None, [], []
        for d, w in enumerate(weights):
            g_out = grad_output if grad_output is None or len(runs) == 1 else (
                grad_output[..., d * hidden:(d + 1) * hidden])
            g_x, g_state0, g_w = direction_backward(
                xp, x, tuple(s[d, ...] for s in states), w, cell, runs[d][2],
                reverse=d == 1, grad_output=g_out,
                grad_final=[None if g is None else g[d, ...] for g in grad_finals],
                active=active, hooks=hooks[d])
            grad_x = _add(grad_x, g_x)
            grad_states.append(g_state0)
            grad_weights.append(g_w)
        return (grad_x, tuple(xp.stack([g[k] for g in grad_states]) for k in range(len(states))),
                grad_weights)

    return output, finals, backward


def run_layers(xp, x, states: State, weights: Sequence[LayerWeights], cell: Cell, *,
               num_layers: int, bidirectional: bool, dropout: float, training: bool,
               generator: np.random.Generator | None, keep: bool = False, active=None,
               recurrent_dropout: float = 0.0, zoneout: float = 0.0,
               weight_dropout: float = 0.0, reset=None):
    """Run a stacked, optionally bidirectional recurrence.

    ``states`` holds each state component as (L*D, B, H), layer-major and
    direction-minor like ``weights``. Returns ``(output, final_states, backward)``
    with output (T, B, D*H) from the last layer, final states in the layout of
    ``states``, and (with ``keep``, else ``None``) the :data:`Backward` function.
    Dropout (training only) follows every layer but the last. ``active`` (T, B, 1)
    booleans mark the valid steps of variable-length sequences (see ``run_direction``).
    ``reset`` (T, B, 1) booleans start a new segment (see :class:`StepHooks`);
    ``recurrent_dropout``, ``zoneout`` and ``weight_dropout`` are probabilities (masks
    from ``generator``, drawn per layer and direction in that order, in training; in
    eval only zoneout acts, as its expectation). Weight dropout masks ``W_hh`` before
    a layer runs, so it runs on any path. Each layer runs on a fast path from
    ``xrnn._kernels`` where one fits, else on :func:`run_layer`.
    """
    directions = 2 if bidirectional else 1
    # The one place a kernel is chosen (every kernel takes per-step hooks; they are made
    # only when on, so that small plain layers can run their whole loop compiled).
    hooked = reset is not None or zoneout > 0.0 or (training and recurrent_dropout > 0.0)
    fast = layer_runner(xp, cell, x.dtype)
    starts = None if reset is None else (
        reset, xp.concat([reset[1:, ...], xp.zeros_like(reset[:1, ...])]))  # reverse: at t+1
    layer_input = x
    finals: list[State] = []
    records = []  # per layer: (backward, dropout mask or None, W_hh masks or None)
    for layer in range(num_layers):
        group = slice(layer * directions, (layer + 1) * directions)
        layer_states = tuple(s[group, ...] for s in states)
        layer_weights = list(weights[group])
        w_masks = None
        if training and weight_dropout > 0.0:  # DropConnect on W_hh
            w_masks = [dropout_mask(w.w_hh, weight_dropout, generator) for w in layer_weights]
            layer_weights = [w._replace(w_hh=w.w_hh * m) for w, m in zip(layer_weights, w_masks)]
        hooks = [_hooks(layer_states, d, x.shape[0], starts, training, recurrent_dropout,
                        zoneout, generator) for d in range(directions)] if hooked else None
        if fast is not None:
            output, final, backward = fast(layer_input, layer_states, layer_weights, cell,
                                           keep=keep, active=active, hooks=hooks,
                                           position=(layer, num_layers))
        else:
            output, final, backward = run_layer(xp, layer_input, layer_states, layer_weights,
                                                cell, keep=keep, active=active, hooks=hooks)
        finals.append(final)
        mask = None
        if training and dropout > 0.0 and layer < num_layers - 1:
            mask = dropout_mask(output, dropout, generator)
            output = output * mask
        records.append((backward, mask, w_masks))
        layer_input = output
    final_states = tuple(xp.concat([f[k] for f in finals]) for k in range(len(states)))
    if not keep:
        return layer_input, final_states, None

    def backward(grad_output, grad_finals):
        grad_states: list[Any] = []
        grad_weights: list[Any] = []
        grad_above = grad_output  # gradient of this layer's (masked) output
        for layer in range(num_layers - 1, -1, -1):
            layer_backward, mask, w_masks = records[layer]
            if mask is not None and grad_above is not None:
                grad_above = grad_above * mask
            group = slice(layer * directions, (layer + 1) * directions)
            grad_above, g_states, g_weights = layer_backward(
                grad_above, [None if g is None else g[group, ...] for g in grad_finals])
            if w_masks is not None:  # the gradient reaches W_hh through its mask
                g_weights = [g._replace(w_hh=g.w_hh * m) for g, m in zip(g_weights, w_masks)]
            grad_states.insert(0, g_states)
            grad_weights[:0] = g_weights
        return (grad_above, tuple(xp.concat([g[k] for g in grad_states])
                                  for k in range(len(states))), grad_weights)

    def release() -> None:  # the fast paths' tapes go to the next forward (_kernels)
        for layer_backward, _, _ in records:
            if hasattr(layer_backward, "release"):
                layer_backward.release()

    backward.release = release
    return layer_input, final_states, backward


def _hooks(layer_states: State, direction: int, steps: int, starts, training: bool,
           recurrent_dropout: float, zoneout: float, generator) -> StepHooks:
    """One layer and direction's :class:`StepHooks`, drawing its masks from ``generator``."""
    like = [s[direction, ...] for s in layer_states]  # (B, size) per state component
    h_mask = None
    if training and recurrent_dropout > 0.0:
        h_mask = dropout_mask(like[0], recurrent_dropout, generator)
    zones = None
    if zoneout > 0.0:
        zones = tuple(keep_mask((steps,) + tuple(s.shape), zoneout, generator, s)
                      if training else zoneout for s in like)
    return StepHooks(None if starts is None else starts[direction], h_mask, zones)
