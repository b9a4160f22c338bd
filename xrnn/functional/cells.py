"""Recurrent cells: the only thing that differs between recurrent layer types.

A cell is a pair of pure functions over one timestep.

``step(xp, gx_t, state, w_hh_t, b_hh, h_in=None) -> (state, cache)`` takes the
hoisted input projection ``gx_t`` (B, G*H), the previous state (a tuple of (B, H)
arrays whose first entry is the output ``h``), the transposed recurrent weight
``w_hh_t`` (H, G*H), unless the cell folds it into the input projection the
recurrent bias ``b_hh`` (G*H,), and ``h_in``, the ``h`` that enters the product with
``W_hh`` when it differs from ``state[0]`` (recurrent dropout; ``None`` otherwise).
It returns the new state and whatever its backward needs beyond the states.

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
    gate_scale: tuple[float, ...] | None = None
    """Per gate block, a power of two the driver multiplies that block's weight and bias
    rows by before the forward (exact in floating point), so that ``step`` receives,
    e.g., halved pre-activations for its sigmoid gates: ``sigmoid(z) = (1 + tanh(z/2))/2``
    then takes one ``tanh`` over every gate at once. ``step_backward`` still returns
    gradients of the unscaled pre-activations."""
    state_sizes: Callable[[Any], tuple[int, ...]] = lambda w: (w.w_hh.shape[1],)
    """Last-axis size of each state component, from one layer's :class:`LayerWeights`."""
    norms: tuple[str, ...] = ()
    """The LayerNorms of a LayerNorm cell ('ih', 'hh' and, for the LSTM, 'c'), whose
    weights and biases follow a group's other weights in ``LayerWeights.ln``."""


def _preactivation(gx_t, h, w_hh_t):
    z = h @ w_hh_t
    z += gx_t  # in place on the fresh product; plain rebinding on immutable backends
    return z


def _elman(name: str, activation: Callable, derivative: Callable) -> Cell:
    """An Elman cell ``h_t = f(gx_t + h_{t-1} W_hh^T)``; ``derivative(xp, h, dh)`` is
    ``dh * f'(z)`` written in terms of the output ``h = f(z)``."""

    def step(xp, gx_t, state, w_hh_t, b_hh, h_in=None):
        h = state[0] if h_in is None else h_in
        return (activation(xp, _preactivation(gx_t, h, w_hh_t)),), None

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


def _blocks(z, count: int):
    """Split (B, count*H) into ``count`` (B, H) column blocks (views)."""
    size = z.shape[-1] // count
    return [z[:, k * size:(k + 1) * size] for k in range(count)]


def _sigmoid_from_tanh(t):
    """``sigmoid(z)`` from ``t = tanh(z/2)``."""
    s = 0.5 * t
    s += 0.5  # in place on the fresh product
    return s


def _lstm_step(xp, gx_t, state, w_hh_t, b_hh, h_in=None):
    c = state[1]
    # i, f, o arrive halved (gate_scale)
    t = xp.tanh(_preactivation(gx_t, state[0] if h_in is None else h_in, w_hh_t))
    i, f, _, o = _blocks(_sigmoid_from_tanh(t), 4)
    g = _blocks(t, 4)[2]
    c_new = f * c
    c_new += i * g
    tanh_c = xp.tanh(c_new)
    return (o * tanh_c, c_new), (i, f, g, o, tanh_c)


def _lstm_step_backward(xp, d_state, state, state_prev, cache):
    dh, dc = d_state
    i, f, g, o, tanh_c = cache
    dc = dc + dh * o * (1.0 - tanh_c * tanh_c)
    dz = xp.concat([dc * g * i * (1.0 - i), dc * state_prev[1] * f * (1.0 - f),
                    dc * i * (1.0 - g * g), dh * tanh_c * o * (1.0 - o)], axis=-1)
    return dz, dz, (None, dc * f)


#: LSTM (PyTorch's gate order i, f, g, o): ``c_t = f * c_{t-1} + i * g``,
#: ``h_t = o * tanh(c_t)`` (then ``h_t W_hr^T`` with a projection, done by the driver).
LSTM_CELL = Cell("lstm", 4, _lstm_step, _lstm_step_backward,
                 state_sizes=lambda w: (w.w_hh.shape[1], w.w_hh.shape[0] // 4),
                 gate_scale=(0.5, 0.5, 1.0, 0.5))


def _gru_step(xp, gx_t, state, w_hh_t, b_hh, h_in=None):
    h = state[0]
    gh = (h if h_in is None else h_in) @ w_hh_t
    if b_hh is not None:
        gh += b_hh
    size = h.shape[-1]
    rz = gx_t[:, :2 * size] + gh[:, :2 * size]  # r, z arrive halved (gate_scale)
    r, z = _blocks(_sigmoid_from_tanh(xp.tanh(rz)), 2)
    hn = gh[:, 2 * size:]
    n = xp.tanh(gx_t[:, 2 * size:] + r * hn)
    return (n + z * (h - n),), (r, z, n, hn)


def _gru_step_backward(xp, d_state, state, state_prev, cache):
    dh = d_state[0]
    r, z, n, hn = cache
    dn = dh * (1.0 - z) * (1.0 - n * n)
    dr = dn * hn * r * (1.0 - r)
    dz = dh * (state_prev[0] - n) * z * (1.0 - z)
    return (xp.concat([dr, dz, dn], axis=-1), xp.concat([dr, dz, dn * r], axis=-1),
            (dh * z,))


#: GRU (PyTorch's gate order r, z, n, with ``b_hn`` inside the reset-gate product):
#: ``n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))``, ``h_t = (1 - z) * n + z * h_{t-1}``.
GRU_CELL = Cell("gru", 3, _gru_step, _gru_step_backward, folds_hidden_bias=False,
                gate_scale=(0.5, 0.5, 1.0))


#: LayerNorm's epsilon, as ``torch.nn.functional.layer_norm``'s default.
LN_EPS = 1e-5


def layer_norm(xp, v, weight, bias):
    """``weight * (v - mean) / sqrt(var + eps) + bias`` over the last axis (biased
    variance); returns it and the cache for :func:`layer_norm_backward`."""
    centred = v - xp.mean(v, axis=-1, keepdims=True)
    inv = 1.0 / xp.sqrt(xp.mean(centred * centred, axis=-1, keepdims=True) + LN_EPS)
    normed = centred * inv
    return normed * weight + bias, (normed, inv, weight)


def layer_norm_backward(xp, dy, cache):
    """``(dv, dweight, dbias)`` from the gradient ``dy`` of :func:`layer_norm`'s output
    (2-D: the parameter gradients sum over the first axis)."""
    normed, inv, weight = cache
    dn = dy * weight
    dv = inv * (dn - xp.mean(dn, axis=-1, keepdims=True)
                - normed * xp.mean(dn * normed, axis=-1, keepdims=True))
    return dv, xp.sum(dy * normed, axis=0), xp.sum(dy, axis=0)


def _ln_lstm_step(xp, gx_t, state, w_hh_t, b_hh, h_in=None, *, norm):
    c = state[1]
    gh, gh_cache = layer_norm(xp, (state[0] if h_in is None else h_in) @ w_hh_t, *norm[:2])
    i, f, g, o = _blocks(gx_t + gh, 4)
    i, f, g, o = (1.0 / (1.0 + xp.exp(-i)), 1.0 / (1.0 + xp.exp(-f)), xp.tanh(g),
                  1.0 / (1.0 + xp.exp(-o)))
    c_new = f * c + i * g
    normed_c, c_cache = layer_norm(xp, c_new, *norm[2:])
    tanh_c = xp.tanh(normed_c)
    return (o * tanh_c, c_new), (i, f, g, o, tanh_c, gh_cache, c_cache)


def _ln_lstm_step_backward(xp, d_state, state, state_prev, cache):
    dh, dc = d_state
    i, f, g, o, tanh_c, gh_cache, c_cache = cache
    d_c_new, d_w_c, d_b_c = layer_norm_backward(xp, dh * o * (1.0 - tanh_c * tanh_c), c_cache)
    dc = dc + d_c_new
    dz = xp.concat([dc * g * i * (1.0 - i), dc * state_prev[1] * f * (1.0 - f),
                    dc * i * (1.0 - g * g), dh * tanh_c * o * (1.0 - o)], axis=-1)
    d_raw, d_w_hh, d_b_hh = layer_norm_backward(xp, dz, gh_cache)
    return dz, d_raw, (None, dc * f), (None, d_w_hh, d_b_hh, d_w_c, d_b_c)


#: LayerNorm LSTM (Ba et al. 2016, as haste): ``z = LN(x W_ih^T; ih) + LN(h W_hh^T; hh)
#: + b_ih + b_hh``, gates i, f, g, o as the LSTM, ``c_t = f * c_{t-1} + i * g``,
#: ``h_t = o * tanh(LN(c_t; c))``. ``step`` takes ``norm = (w_hh, b_hh, w_c, b_c)`` of
#: the LayerNorms; ``step_backward`` returns a fourth item: the gradients of
#: ``(b_hh or None, *norm)``, and as ``d_gh`` the gradient of ``h W_hh^T`` itself.
LN_LSTM_CELL = Cell("lstm_ln", 4, _ln_lstm_step, _ln_lstm_step_backward,
                    state_sizes=LSTM_CELL.state_sizes, norms=("ih", "hh", "c"))


def _ln_gru_step(xp, gx_t, state, w_hh_t, b_hh, h_in=None, *, norm):
    h = state[0]
    gh, gh_cache = layer_norm(xp, (h if h_in is None else h_in) @ w_hh_t, *norm)
    if b_hh is not None:
        gh = gh + b_hh
    size = h.shape[-1]
    r, z = _blocks(1.0 / (1.0 + xp.exp(-(gx_t[:, :2 * size] + gh[:, :2 * size]))), 2)
    hn = gh[:, 2 * size:]
    n = xp.tanh(gx_t[:, 2 * size:] + r * hn)
    return (n + z * (h - n),), ((r, z, n, hn), gh_cache)


def _ln_gru_step_backward(xp, d_state, state, state_prev, cache):
    plain, gh_cache = cache
    d_gx, d_gh, direct = _gru_step_backward(xp, d_state, state, state_prev, plain)
    d_raw, d_w_hh, d_b_hh = layer_norm_backward(xp, d_gh, gh_cache)
    return d_gx, d_raw, direct, (xp.sum(d_gh, axis=0), d_w_hh, d_b_hh)


#: LayerNorm GRU: ``gx = LN(x W_ih^T; ih) + b_ih``, ``gh = LN(h W_hh^T; hh) + b_hh``, then
#: the GRU's equations on gx and gh; ``norm = (w_hh, b_hh)``, as :data:`LN_LSTM_CELL`.
LN_GRU_CELL = Cell("gru_ln", 3, _ln_gru_step, _ln_gru_step_backward, folds_hidden_bias=False,
                   norms=("ih", "hh"))
