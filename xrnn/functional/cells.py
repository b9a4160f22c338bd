"""Recurrent cells: the only thing that differs between recurrent layer types.

A cell's ``step(xp, gx_t, state, w_hh_t, b_hh) -> state`` takes the hoisted input
projection of one timestep ``gx_t`` (B, G*H), the previous state (a tuple of
(B, H) arrays whose first entry is the output ``h``), the transposed recurrent
weight ``w_hh_t`` (H, G*H) and, unless the cell folds it into the input
projection, the recurrent bias ``b_hh`` (G*H,). It returns the new state tuple.
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
    step: Callable[[Any, Any, State, Any, Any], State]
    folds_hidden_bias: bool = True  # b_hh can be added once to the hoisted input projection
    state_sizes: Callable[[Any], tuple[int, ...]] = lambda w: (w.w_hh.shape[1],)
    """Last-axis size of each state component, from one layer's :class:`LayerWeights`."""


def _preactivation(gx_t, h, w_hh_t):
    z = h @ w_hh_t
    z += gx_t  # in place on the fresh product; plain rebinding on immutable backends
    return z


def _tanh_step(xp, gx_t, state, w_hh_t, b_hh):
    return (xp.tanh(_preactivation(gx_t, state[0], w_hh_t)),)


def _relu_step(xp, gx_t, state, w_hh_t, b_hh):
    return (xp.maximum(_preactivation(gx_t, state[0], w_hh_t), 0.0),)


def _identity_step(xp, gx_t, state, w_hh_t, b_hh):
    return (_preactivation(gx_t, state[0], w_hh_t),)


#: Elman cells ``h_t = f(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)`` by nonlinearity ``f``.
ELMAN_CELLS: dict[str, Cell] = {
    "tanh": Cell("rnn_tanh", 1, _tanh_step),
    "relu": Cell("rnn_relu", 1, _relu_step),
    "identity": Cell("rnn_identity", 1, _identity_step),
}


def elman_cell(nonlinearity: str) -> Cell:
    """The Elman cell for ``nonlinearity`` ('tanh', 'relu' or 'identity')."""
    try:
        return ELMAN_CELLS[nonlinearity]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown nonlinearity {nonlinearity!r}; expected one of {', '.join(ELMAN_CELLS)}"
        ) from None
