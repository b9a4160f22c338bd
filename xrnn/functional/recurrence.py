"""The one recurrence driver shared by every cell type.

Shapes (time-major): ``x`` (T, B, H_in); each state component (L*D, B, H);
output (T, B, D*H). L = num_layers, D = 2 if bidirectional else 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .cells import Cell, State
from .dropout import dropout as _dropout
from .weights import LayerWeights


def input_projection(xp, x, w: LayerWeights, cell: Cell):
    """``x W_ih^T + b`` for a whole sequence in one matrix product: (T, B, H_in) -> (T, B, G*H)."""
    steps, batch, features = x.shape
    gx = xp.reshape(x, (steps * batch, features)) @ xp.matrix_transpose(w.w_ih)
    if w.b_ih is not None:  # in place on the fresh product (plain rebinding on immutable backends)
        gx += w.b_ih + w.b_hh if cell.folds_hidden_bias else w.b_ih
    return xp.reshape(gx, (steps, batch, gx.shape[-1]))


def run_direction(xp, x, state: State, w: LayerWeights, cell: Cell, *, reverse: bool):
    """Run ``cell`` over one layer in one direction.

    Returns the per-step outputs (T, B, H) at their original time positions and
    the final state (for ``reverse``, the state after reading step 0).
    """
    gx = input_projection(xp, x, w, cell)
    w_hh_t = xp.matrix_transpose(w.w_hh)
    b_hh = None if cell.folds_hidden_bias else w.b_hh
    steps = x.shape[0]
    outputs: list[Any] = [None] * steps
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        state = cell.step(xp, gx[t, ...], state, w_hh_t, b_hh)
        outputs[t] = state[0]
    return xp.stack(outputs), state


def run_layers(xp, x, states: State, weights: Sequence[LayerWeights], cell: Cell, *,
               num_layers: int, bidirectional: bool, dropout: float, training: bool,
               generator: np.random.Generator | None):
    """Run a stacked, optionally bidirectional recurrence.

    ``states`` holds each state component as (L*D, B, H), layer-major and
    direction-minor like ``weights``. Returns ``(output, final_states)`` with
    output (T, B, D*H) from the last layer and final states in the layout of
    ``states``. Dropout (training only) follows every layer but the last.
    """
    directions = 2 if bidirectional else 1
    layer_input = x
    finals: list[State] = []
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            out, final = run_direction(xp, layer_input, tuple(s[index, ...] for s in states),
                                       weights[index], cell, reverse=direction == 1)
            outputs.append(out)
            finals.append(final)
        layer_input = outputs[0] if directions == 1 else xp.concat(outputs, axis=-1)
        if training and dropout > 0.0 and layer < num_layers - 1:
            layer_input = _dropout(layer_input, dropout, training=True, generator=generator)
    final_states = tuple(xp.stack([f[k] for f in finals]) for k in range(len(states)))
    return layer_input, final_states
