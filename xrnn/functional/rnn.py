"""The functional RNN, LSTM and GRU with PyTorch's semantics, forward and backward."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import array_api_compat
import numpy as np

from ..backend import get_namespace, to_numpy
from .cells import GRU_CELL, LN_GRU_CELL, LN_LSTM_CELL, LSTM_CELL, Cell, elman_cell
from .checks import check_all_finite, check_input, check_lengths, check_state
from .dropout import as_generator, check_probability
from .recurrence import run_layers
from .weights import group_weights, parameter_names

#: ``vjp(grad_output, *grad_finals) -> (grad_x, grad_initial_states, grad_weights)``.
VJP = Callable[..., tuple[Any, tuple[Any, ...], Any]]


def run_recurrent(x: Any, initial_states: Sequence[Any | None], weights: Sequence[Any] | Mapping,
                  cell: Cell, *, num_layers: int, bias: bool, batch_first: bool,
                  dropout: float, bidirectional: bool, training: bool,
                  generator: np.random.Generator | int | None, with_vjp: bool = False,
                  proj_size: int = 0, lengths: Any = None, check_finite: bool = False,
                  recurrent_dropout: float = 0.0, zoneout: float = 0.0,
                  weight_dropout: float = 0.0, reset: Any = None
                  ) -> tuple[Any, tuple[Any, ...], VJP | None]:
    """Check arguments, arrange the layout and call the shared driver; any cell type.

    ``initial_states`` holds one entry (or ``None`` for zeros) per state component.
    Returns ``(output, final_states, vjp)``; ``vjp`` is ``None`` unless ``with_vjp``.
    It maps the gradients of ``output`` and of each final state (``None`` for zero),
    in the caller's layout, to ``(grad_x, grad_initial_states, grad_weights)``, with
    ``grad_weights`` in the form ``weights`` came in (flat list or name mapping).
    ``check_finite`` raises ``ValueError`` for a NaN or infinity in ``x`` (steps past
    ``lengths``, never read, are not checked) or in a given initial state.
    ``vjp`` may be called any number of times until ``vjp.release()``, which hands what
    the CPU kernels recorded to the next forward (a training step's arrays, reused by
    the next step, instead of new memory: page faults cost a quarter of a mid-size step).
    ``recurrent_dropout``, ``zoneout``, ``weight_dropout`` and ``reset``: see :func:`rnn`.
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
    dropout = check_probability(dropout)
    recurrent_dropout, zoneout, weight_dropout = (
        check_probability(p, name) for p, name in ((recurrent_dropout, "recurrent_dropout"),
                                                   (zoneout, "zoneout"),
                                                   (weight_dropout, "weight_dropout")))
    groups = group_weights(weights, gates=cell.gates, num_layers=num_layers,
                           bidirectional=bidirectional, bias=bias, proj_size=proj_size,
                           norms=cell.norms)
    flat = [w for g in groups for w in g.flat()]
    check_input(x, flat, input_size=groups[0].w_ih.shape[1], batch_first=batch_first)
    xp = get_namespace(*flat)
    unbatched = x.ndim == 2

    def to_driver_layout(a):  # caller's (B,T,F) / (T,F) -> (T, B, F)
        if unbatched:
            a = xp.expand_dims(a, axis=0 if batch_first else 1)
        return xp.permute_dims(a, (1, 0, 2)) if batch_first else a

    def to_caller_layout(a):  # inverse of to_driver_layout
        a = xp.permute_dims(a, (1, 0, 2)) if batch_first else a
        return (a[0, ...] if batch_first else a[:, 0, ...]) if unbatched else a

    x = to_driver_layout(x)
    batch = x.shape[1]
    active = None
    if lengths is not None:
        if unbatched:
            raise ValueError("lengths needs batched input (a batch axis to index)")
        host = check_lengths(lengths, x.shape[0], batch)
        valid = np.arange(x.shape[0])[:, None] < host[None, :]
        active = xp.asarray(valid[:, :, None], device=array_api_compat.device(x))
        x = xp.where(active, x, xp.zeros_like(x))  # padding never reaches a product
    starts = None
    if reset is not None:
        steps = x.shape[0]
        layout = ("(T,) for unbatched input" if unbatched else
                  "(B, T) with batch_first" if batch_first else "(T, B)")
        host = check_reset(reset, (steps,) if unbatched else
                           (batch, steps) if batch_first else (steps, batch), f", i.e. {layout}")
        host = host.T if batch_first and not unbatched else host
        starts = xp.asarray(np.reshape(host, (steps, batch, 1)), device=array_api_compat.device(x))
    if check_finite:
        check_all_finite(to_caller_layout(x), "input")
    directions = 2 if bidirectional else 1
    states = []
    for k, (given, size) in enumerate(zip(initial_states, cell.state_sizes(groups[0]))):
        name = "h0" if k == 0 else "c0"
        shape = (num_layers * directions, batch, size)
        if given is None:
            states.append(xp.zeros(shape, dtype=x.dtype, device=array_api_compat.device(x)))
            continue
        check_state(given, (shape[0], size) if unbatched else shape, name, x)
        if check_finite:
            check_all_finite(given, name)
        states.append(xp.expand_dims(given, axis=1) if unbatched else given)
    drawn = training and (dropout or recurrent_dropout or zoneout or weight_dropout)
    output, finals, backward = run_layers(
        xp, x, tuple(states), groups, cell, num_layers=num_layers, bidirectional=bidirectional,
        dropout=dropout, training=training,
        generator=as_generator(generator) if drawn else None, keep=with_vjp,
        active=active, recurrent_dropout=recurrent_dropout, zoneout=zoneout,
        weight_dropout=weight_dropout, reset=starts)
    output = to_caller_layout(output)
    finals = tuple(f[:, 0, ...] for f in finals) if unbatched else finals
    if backward is None:
        return output, finals, None

    def vjp(grad_output: Any | None, *grad_finals: Any | None):
        if len(grad_finals) > len(finals):
            raise TypeError(f"expected at most {len(finals)} final-state gradients, "
                            f"got {len(grad_finals)}")
        grad_finals = tuple(grad_finals) + (None,) * (len(finals) - len(grad_finals))
        expected = [(grad_output, output, "grad_output", "the output's shape")] + [
            (g, f, f"gradient of final state {k}", f"final state {k}'s shape")
            for k, (g, f) in enumerate(zip(grad_finals, finals))]
        for given, like, name, layout in expected:
            if given is not None:
                check_state(given, tuple(like.shape), name, like, layout=layout)
        grad_x, grad_states, grad_groups = backward(
            None if grad_output is None else to_driver_layout(grad_output),
            [None if g is None else (xp.expand_dims(g, axis=1) if unbatched else g)
             for g in grad_finals])
        grad_x = to_caller_layout(grad_x)
        if unbatched:
            grad_states = tuple(g[:, 0, ...] for g in grad_states)
        grad_flat = [g for group in grad_groups for g in group.flat()]
        if isinstance(weights, Mapping):
            names = parameter_names(num_layers, bidirectional, bias, proj_size, cell.norms)
            return grad_x, grad_states, dict(zip(names, grad_flat))
        return grad_x, grad_states, grad_flat

    vjp.release = backward.release
    return output, finals, vjp


def check_reset(reset: Any, shape: tuple[int, ...], described: str) -> np.ndarray:
    """``reset`` as host booleans of ``shape``, else ``TypeError`` / ``ValueError`` (whose
    message gives ``shape`` followed by ``described``)."""
    try:
        host = np.asarray(to_numpy(reset))
    except TypeError:
        host = np.asarray(reset)
    if host.dtype != np.bool_:
        raise TypeError(f"reset must be booleans, got dtype {host.dtype}")
    if host.shape != shape:
        raise ValueError(f"expected reset of shape {shape}{described}, got {host.shape}")
    return host


def _options(arguments: dict[str, Any]) -> dict[str, Any]:
    """A public function's keyword arguments (its ``locals()``) for :func:`run_recurrent`."""
    return {k: v for k, v in arguments.items() if k not in ("x", "h0", "hx", "weights",
                                                            "nonlinearity", "layer_norm")}


def _call(cell: Cell, x, initial_states, weights, options: dict, with_vjp: bool):
    return run_recurrent(x, initial_states, weights, cell, with_vjp=with_vjp, **options)


def lstm_states(hx: Any, names: str = "(h0, c0)") -> tuple[Any, Any]:
    """An LSTM's state pair ``hx`` as a tuple (``(None, None)`` for ``None``), else
    ``TypeError`` naming the expected ``names``."""
    if hx is None:
        return None, None
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"expected hx = {names} or None for an LSTM, got {type(hx).__name__}")
    return tuple(hx)


_LEGEND = """
    Legend: T sequence length, B batch, H_in input size, H hidden size, L num_layers,
    D = 2 if bidirectional else 1."""


def rnn(x: Any, h0: Any | None, weights: Sequence[Any] | Mapping[str, Any], *,
        num_layers: int = 1, nonlinearity: str = "tanh", bias: bool = True,
        batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
        training: bool = False, generator: np.random.Generator | int | None = None,
        lengths: Any = None, check_finite: bool = False,
        recurrent_dropout: float = 0.0, zoneout: float = 0.0, weight_dropout: float = 0.0,
        reset: Any = None) -> tuple[Any, Any]:
    r"""Elman RNN over a whole sequence, as ``torch.nn.RNN``.

    For each layer and direction, :math:`h_t = f(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh})`
    with :math:`f` = tanh, relu or identity; the reverse direction reads time backwards.

    Args:
        x: (T, B, H_in), or (B, T, H_in) with ``batch_first``, or (T, H_in) unbatched.
        h0: (L*D, B, H) — never batch-first — or (L*D, H) unbatched; ``None`` for zeros.
        weights: PyTorch's flat order ``[weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0,
            weight_ih_l0_reverse, ...]`` or a mapping with those names (a ``state_dict``).
        dropout: probability of zeroing each output of every layer but the last (training only).
        generator: NumPy ``Generator`` or seed for the dropout and zoneout masks.
        lengths: (B,) integers in [1, T], for a padded batch of sequences of different
            lengths (PyTorch's packed sequences without the packing, in any order): each
            sequence's reverse direction starts at its own last valid step, ``h_n`` holds
            its state there, and outputs (and gradients) past its length are zero.
        check_finite: raise ``ValueError`` if ``x`` (within ``lengths``) or a given
            initial state holds a NaN or an infinity, naming the array, the count and
            the first index. Off by default: non-finite values then propagate as they are.
        recurrent_dropout: in training, one mask (B, H_out) per layer and direction per
            call, scaled by 1/(1-p), multiplies h_{t-1} where it enters W_hh (Gal and
            Ghahramani); the carried state is not masked.
        zoneout: each unit of the state (h, and c for an LSTM) keeps its previous value:
            ``s_t = d * s_{t-1} + (1 - d) * s_new`` with d ~ Bernoulli(p) per step and unit
            in training, d = p in eval (Krueger et al.). The output is the zoned-out h.
        weight_dropout: in training, one mask per W_hh per call, scaled by 1/(1-p)
            (DropConnect, as AWD-LSTM); the gradient reaches W_hh through the mask.
        reset: (T, B) booleans ((B, T) with ``batch_first``, (T,) unbatched): where
            ``reset[t, b]``, sequence b starts a new segment at step t, whose state
            entering step t is the initial state, in both directions (the reverse
            direction starts each segment at its last step) and in the backward.

    Returns:
        ``(output, h_n)``: output (T, B, D*H) (batch-first if asked) with directions
        concatenated on the last axis; h_n (L*D, B, H), layer-major, direction-minor.
        For a bidirectional layer ``h_n`` of the reverse direction is its state after
        reading step 0, i.e. ``output[0, :, H:]``, not ``output[-1]``.
    """
    options = _options(locals())
    output, (h_n,), _ = _call(elman_cell(nonlinearity), x, (h0,), weights, options, False)
    return output, h_n


def rnn_vjp(x: Any, h0: Any | None, weights: Sequence[Any] | Mapping[str, Any], *,
            num_layers: int = 1, nonlinearity: str = "tanh", bias: bool = True,
            batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
            training: bool = False, generator: np.random.Generator | int | None = None,
            lengths: Any = None, check_finite: bool = False,
            recurrent_dropout: float = 0.0, zoneout: float = 0.0,
            weight_dropout: float = 0.0, reset: Any = None) -> tuple[tuple[Any, Any], VJP]:
    """:func:`rnn` plus its backward (BPTT): returns ``((output, h_n), vjp)``.

    ``vjp(grad_output, grad_h_n=None) -> (grad_x, (grad_h0,), grad_weights)``: the
    gradients of a scalar loss with respect to ``x`` (shaped like ``x``), ``h0``
    ((L*D, B, H) even when ``h0`` was ``None``) and the weights (a list in flat order,
    or a name mapping if ``weights`` was one), given the loss's gradients with respect
    to ``output`` and ``h_n`` (``None`` for zero). Dropout uses the forward's masks.
    """
    options = _options(locals())
    output, (h_n,), vjp = _call(elman_cell(nonlinearity), x, (h0,), weights, options, True)
    return (output, h_n), vjp


def lstm(x: Any, hx: tuple[Any, Any] | None, weights: Sequence[Any] | Mapping[str, Any], *,
         num_layers: int = 1, bias: bool = True, batch_first: bool = False,
         dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
         training: bool = False, generator: np.random.Generator | int | None = None,
         lengths: Any = None, check_finite: bool = False,
         recurrent_dropout: float = 0.0, zoneout: float = 0.0, weight_dropout: float = 0.0,
         reset: Any = None, layer_norm: bool = False) -> tuple[Any, tuple[Any, Any]]:
    r"""LSTM over a whole sequence, as ``torch.nn.LSTM``.

    Gates (PyTorch's order i, f, g, o) from ``x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh``;
    :math:`c_t = f \odot c_{t-1} + i \odot g`, :math:`h_t = o \odot \tanh(c_t)`, then
    :math:`h_t W_{hr}^T` when ``proj_size`` P > 0 (H_out = P, else H_out = H).

    Args:
        x: (T, B, H_in), (B, T, H_in) with ``batch_first``, or (T, H_in) unbatched.
        hx: ``(h0, c0)`` with h0 (L*D, B, H_out) and c0 (L*D, B, H) (never batch-first;
            without B when unbatched), or ``None`` for zeros.
        weights: PyTorch's flat order (``weight_ih_l0, weight_hh_l0, bias_ih_l0,
            bias_hh_l0[, weight_hr_l0], ...``) or a mapping with those names; with
            ``layer_norm`` each group ends with ``ln_weight_ih, ln_bias_ih, ln_weight_hh,
            ln_bias_hh`` (4H,) and ``ln_weight_c, ln_bias_c`` (H,).
        layer_norm: the LayerNorm LSTM (Ba et al. 2016, as haste): ``z = LN(x W_ih^T; ih)
            + LN(h W_hh^T; hh) + b_ih + b_hh``, ``h_t = o * tanh(LN(c_t; c))``; the
            carried cell state is c_t. Other options as :func:`rnn`.

    Returns:
        ``(output, (h_n, c_n))``: output (T, B, D*H_out); h_n (L*D, B, H_out);
        c_n (L*D, B, H).
    """
    options = _options(locals())
    cell = LN_LSTM_CELL if layer_norm else LSTM_CELL
    output, finals, _ = _call(cell, x, lstm_states(hx), weights, options, False)
    return output, finals


def lstm_vjp(x: Any, hx: tuple[Any, Any] | None, weights: Sequence[Any] | Mapping[str, Any], *,
             num_layers: int = 1, bias: bool = True, batch_first: bool = False,
             dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
             training: bool = False, generator: np.random.Generator | int | None = None,
             lengths: Any = None, check_finite: bool = False,
             recurrent_dropout: float = 0.0, zoneout: float = 0.0,
             weight_dropout: float = 0.0, reset: Any = None, layer_norm: bool = False
             ) -> tuple[tuple[Any, tuple[Any, Any]], VJP]:
    """:func:`lstm` plus its backward: ``((output, (h_n, c_n)), vjp)`` with
    ``vjp(grad_output, grad_h_n=None, grad_c_n=None) -> (grad_x, (grad_h0, grad_c0),
    grad_weights)``, as :func:`rnn_vjp`."""
    options = _options(locals())
    cell = LN_LSTM_CELL if layer_norm else LSTM_CELL
    output, finals, vjp = _call(cell, x, lstm_states(hx), weights, options, True)
    return (output, finals), vjp


def gru(x: Any, h0: Any | None, weights: Sequence[Any] | Mapping[str, Any], *,
        num_layers: int = 1, bias: bool = True, batch_first: bool = False,
        dropout: float = 0.0, bidirectional: bool = False, training: bool = False,
        generator: np.random.Generator | int | None = None,
        lengths: Any = None, check_finite: bool = False,
        recurrent_dropout: float = 0.0, zoneout: float = 0.0, weight_dropout: float = 0.0,
        reset: Any = None, layer_norm: bool = False) -> tuple[Any, Any]:
    r"""GRU over a whole sequence, as ``torch.nn.GRU``.

    Gates (PyTorch's order r, z, n): :math:`r, z = \sigma(x W_{i\cdot}^T + b_{i\cdot} +
    h W_{h\cdot}^T + b_{h\cdot})`, :math:`n = \tanh(x W_{in}^T + b_{in} + r \odot
    (h W_{hn}^T + b_{hn}))`, :math:`h_t = (1 - z) \odot n + z \odot h_{t-1}`.
    Shapes and options as :func:`rnn`; ``layer_norm``: ``gx = LN(x W_ih^T; ih) + b_ih``,
    ``gh = LN(h W_hh^T; hh) + b_hh`` (parameters ``ln_weight_ih, ln_bias_ih, ln_weight_hh,
    ln_bias_hh`` (3H,) after each group's), then the equations above on gx and gh.
    """
    options = _options(locals())
    cell = LN_GRU_CELL if layer_norm else GRU_CELL
    output, (h_n,), _ = _call(cell, x, (h0,), weights, options, False)
    return output, h_n


def gru_vjp(x: Any, h0: Any | None, weights: Sequence[Any] | Mapping[str, Any], *,
            num_layers: int = 1, bias: bool = True, batch_first: bool = False,
            dropout: float = 0.0, bidirectional: bool = False, training: bool = False,
            generator: np.random.Generator | int | None = None,
            lengths: Any = None, check_finite: bool = False,
            recurrent_dropout: float = 0.0, zoneout: float = 0.0,
            weight_dropout: float = 0.0, reset: Any = None, layer_norm: bool = False
            ) -> tuple[tuple[Any, Any], VJP]:
    """:func:`gru` plus its backward, as :func:`rnn_vjp`."""
    options = _options(locals())
    cell = LN_GRU_CELL if layer_norm else GRU_CELL
    output, (h_n,), vjp = _call(cell, x, (h0,), weights, options, True)
    return (output, h_n), vjp


for _function in (rnn, lstm, gru):
    _function.__doc__ += _LEGEND
