"""Recurrent cells: the only thing that differs between recurrent layer types.

A cell is a pair of pure functions over one timestep.

``step(xp, gx_t, state, w_hh_t, b_hh) -> (state, cache)`` takes the hoisted input
projection ``gx_t`` (B, G*H), the previous state (a tuple of (B, H) arrays whose
first entry is the output ``h``), the transposed recurrent weight ``w_hh_t``
(H, G*H) and, unless the cell folds it into the input projection, the recurrent
bias ``b_hh`` (G*H,). It returns the new state and whatever its backward needs
beyond the states.

``step_backward(xp, d_state, state, state_prev, cache) -> (d_gx, d_gh, d_prev)``
takes the gradient of the new state and returns the gradients of ``gx_t``, of the
hidden pre-activation ``h_prev W_hh^T + b_hh`` (the same array as ``d_gx`` when the
cell folds the hidden bias), and of the previous state along paths that do not go
through ``W_hh`` (``None`` for none). The driver adds ``d_gh @ W_hh`` to ``d_prev[0]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

State = tuple[Any, ...]


@dataclass(frozen=True)
class Cell:
    """What the shared recurrence driver needs to know about a cell type."""

    name: str
    gates: int  # row blocks stacked in weight_ih / weight_hh (Elman 1, GRU 3, LSTM 4)
    step: Callable[..., tuple[State, Any]]
    step_backward: Callable[..., tuple[Any, Any, tuple[Any, ...]]]
    folds_hidden_bias: bool = True  # b_hh can be added once to the hoisted input projection
    state_sizes: Callable[[Any], tuple[int, ...]] = lambda w: (w.w_hh.shape[1],)
    """Last-axis size of each state component, from one layer's :class:`LayerWeights`."""


def _preactivation(gx_t, h, w_hh_t):
    z = h @ w_hh_t
    z += gx_t  # in place on the fresh product; plain rebinding on immutable backends
    return z


def _elman(name: str, activation: Callable, derivative: Callable) -> Cell:
    """An Elman cell ``h_t = f(gx_t + h_{t-1} W_hh^T)``; ``derivative(xp, h, dh)`` is
    ``dh * f'(z)`` written in terms of the output ``h = f(z)``."""

    def step(xp, gx_t, state, w_hh_t, b_hh):
        return (activation(xp, _preactivation(gx_t, state[0], w_hh_t)),), None

    def step_backward(xp, d_state, state, state_prev, cache):
        dz = derivative(xp, state[0], d_state[0])
        return dz, dz, (None,)

    return Cell(name, 1, step, step_backward)


#: Elman cells ``h_t = f(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)`` by nonlinearity ``f``.
ELMAN_CELLS: dict[str, Cell] = {
    "tanh": _elman("rnn_tanh", lambda xp, z: xp.tanh(z),
                   lambda xp, h, dh: dh * (1.0 - h * h)),
    "relu": _elman("rnn_relu", lambda xp, z: xp.maximum(z, 0.0),
                   lambda xp, h, dh: xp.where(h > 0.0, dh, xp.zeros_like(dh))),
    "identity": _elman("rnn_identity", lambda xp, z: z, lambda xp, h, dh: dh),
}


def elman_cell(nonlinearity: str) -> Cell:
    """The Elman cell for ``nonlinearity`` ('tanh', 'relu' or 'identity')."""
    try:
        return ELMAN_CELLS[nonlinearity]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown nonlinearity {nonlinearity!r}; expected one of {', '.join(ELMAN_CELLS)}"
        ) from None
