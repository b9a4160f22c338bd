"""Recurrent modules: parameters and configuration over the functional core."""

from __future__ import annotations

import math
import warnings
from typing import Any

import array_api_compat
import numpy as np

from ..backend import get_namespace
from ..functional.cells import GRU_CELL, LN_GRU_CELL, LN_LSTM_CELL, LSTM_CELL, Cell, elman_cell
from ..functional.checks import check_all_finite
from ..functional.dropout import check_probability
from ..functional.rnn import check_reset, lstm_states, run_recurrent
from ..functional.weights import iter_parameter_shapes
from .arguments import check_dtype_name, check_positive_int
from .init import create, uniform
from .module import Module, is_grad_enabled


class RecurrentBase(Module):
    """Shared by every recurrent layer: PyTorch's parameter names, shapes and init.

    A recurrent module is called as ``m(x, h0=None)`` and returns ``(output, h_n)``.
    """

    returns_state = True

    def __init__(self, cell: Cell, input_size: int, hidden_size: int, num_layers: int,
                 bias: bool, batch_first: bool, dropout: float, bidirectional: bool,
                 dtype: str, seed: int | None, proj_size: int = 0,
                 recurrent_dropout: float = 0.0, zoneout: float = 0.0,
                 weight_dropout: float = 0.0) -> None:
        super().__init__()
        self.cell = cell
        self.input_size = check_positive_int(input_size, "input_size")
        self.hidden_size = check_positive_int(hidden_size, "hidden_size")
        self.num_layers = check_positive_int(num_layers, "num_layers")
        self.dropout = check_probability(dropout)
        if self.dropout > 0 and num_layers == 1:
            warnings.warn("dropout > 0 only acts between layers, so it does nothing with "
                          f"num_layers=1 (dropout={dropout})", UserWarning, stacklevel=3)
        self.recurrent_dropout = check_probability(recurrent_dropout, "recurrent_dropout")
        self.zoneout = check_probability(zoneout, "zoneout")
        self.weight_dropout = check_probability(weight_dropout, "weight_dropout")
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.dtype = check_dtype_name(dtype)
        if isinstance(proj_size, bool) or not isinstance(proj_size, int) or not (
                0 <= proj_size < hidden_size):
            raise ValueError(f"proj_size must be an integer in [0, hidden_size={hidden_size}), "
                             f"got {proj_size!r}")
        self.proj_size = proj_size
        init_seq, dropout_seq = np.random.SeedSequence(seed).spawn(2)
        init_rng = np.random.default_rng(init_seq)
        self._dropout_rng = np.random.default_rng(dropout_seq)
        bound = 1.0 / math.sqrt(hidden_size)
        for name, shape in iter_parameter_shapes(input_size, hidden_size, cell.gates,
                                                 num_layers, bidirectional, bias, proj_size,
                                                 cell.norms):
            if name.startswith("ln_"):  # LayerNorm: weights 1, biases 0
                value = 1.0 if name.startswith("ln_weight") else 0.0
                self.register_parameter(name, create(shape, self.dtype,
                                                     lambda size, v=value: np.full(size, v)))
            else:
                self.register_parameter(name, uniform(init_rng, shape, bound, self.dtype))

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _recurrent(self, x: Any, initial_states: tuple[Any | None, ...], **options: Any):
        """``run_recurrent`` with this module's weights and configuration; ``options``
        override or add to it."""
        config = dict(num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                      dropout=self.dropout, bidirectional=self.bidirectional,
                      training=self.training, generator=self._dropout_rng,
                      proj_size=self.proj_size, recurrent_dropout=self.recurrent_dropout,
                      zoneout=self.zoneout, weight_dropout=self.weight_dropout)
        return run_recurrent(x, initial_states, [p.data for p in self._parameters.values()],
                             self.cell, **(config | options))

    def _run(self, x: Any, initial_states: tuple[Any | None, ...], lengths: Any,
             check_finite: bool, reset: Any = None) -> tuple[Any, tuple[Any, ...]]:
        output, finals, vjp = self._recurrent(x, initial_states, with_vjp=is_grad_enabled(),
                                              lengths=lengths, check_finite=check_finite,
                                              reset=reset)
        self.save_for_backward(vjp)
        return output, finals

    def _backward(self, grad_output: Any, grad_finals: tuple[Any | None, ...],
                  return_state_grad: bool) -> Any:
        (vjp,) = self.saved_for_backward()
        grad_x, grad_states, grad_weights = vjp(grad_output, *grad_finals)
        for parameter, grad in zip(self._parameters.values(), grad_weights):
            parameter.accumulate(grad)
        vjp.release()  # this call's tape is consumed: its arrays serve the next forward
        return (grad_x, *grad_states) if return_state_grad else grad_x

    def _step(self, x_t: Any, states: tuple[Any | None, ...], check_finite: bool,
              reset: Any = None) -> tuple[Any, tuple[Any, ...]]:
        """One timestep through every layer: x_t (B, H_in) or (H_in,) -> y_t (B, H_out);
        ``reset`` (B,) booleans (one for unbatched x_t) restart those rows from zeros."""
        if self.bidirectional:
            raise ValueError("step() needs a unidirectional layer: a bidirectional one reads "
                             "the sequence backwards too, so it needs the whole sequence")
        if not hasattr(x_t, "ndim") or x_t.ndim not in (1, 2):
            raise ValueError("expected one timestep of shape (B, H_in) or (H_in,), got "
                             f"{getattr(x_t, 'shape', type(x_t).__name__)}")
        if check_finite:  # here, so that the message indexes x_t itself
            check_all_finite(x_t, "input")
        xp = get_namespace(x_t)
        if reset is not None:
            states = _restart(xp, states, reset, tuple(x_t.shape[:-1]))
        sequence = xp.expand_dims(x_t, axis=0)  # (1, B, H_in) or (1, H_in), time-major
        output, finals, _ = self._recurrent(sequence, states, batch_first=False,
                                            check_finite=check_finite)
        return output[0, ...], finals

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(input_shape)
        if len(shape) not in (2, 3) or shape[-1] != self.input_size:
            layout = "(B, T, H_in)" if self.batch_first else "(T, B, H_in)"
            raise ValueError(f"{type(self).__name__} expects input shape {layout} or (T, H_in) "
                             f"with H_in={self.input_size}, got {shape}")
        return shape[:-1] + (self.num_directions * (self.proj_size or self.hidden_size),)

    def config(self) -> dict[str, Any]:
        options = dict(input_size=self.input_size, hidden_size=self.hidden_size,
                       num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                       dropout=self.dropout, bidirectional=self.bidirectional, dtype=self.dtype,
                       recurrent_dropout=self.recurrent_dropout, zoneout=self.zoneout,
                       weight_dropout=self.weight_dropout)
        return options

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        defaults = {"num_layers": 1, "bias": True, "batch_first": False, "dropout": 0.0,
                    "bidirectional": False, "proj_size": 0, "recurrent_dropout": 0.0,
                    "zoneout": 0.0, "weight_dropout": 0.0, "layer_norm": False}
        for name, default in defaults.items():
            if getattr(self, name, default) != default:
                text += f", {name}={getattr(self, name)}"
        return text


def _restart(xp, states: tuple[Any | None, ...], reset: Any, batch: tuple[int, ...]
             ) -> tuple[Any | None, ...]:
    """``states`` (each (L, B, size), or (L, size) unbatched, or ``None`` for zeros) with
    the rows where ``reset`` (shape ``batch``: (B,) or () unbatched) is true set to zero."""
    host = check_reset(reset, batch, " (one per batch row of x_t)")
    if not host.any():
        return states
    if host.ndim == 0 or host.all():
        return (None,) * len(states)
    return tuple(None if s is None else xp.where(
        xp.asarray(host[None, :, None], device=array_api_compat.device(s)), xp.zeros_like(s), s)
        for s in states)


class RNN(RecurrentBase):
    r"""Elman RNN, argument for argument ``torch.nn.RNN``.

    For each layer and direction,
    :math:`h_t = f(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh})`, where
    :math:`f` is tanh, relu or identity and layer ``k > 0`` reads the (dropout-masked,
    when training) output of layer ``k-1``.

    Args:
        input_size: H_in. hidden_size: H. num_layers: L.
        nonlinearity: ``"tanh"`` | ``"relu"`` | ``"identity"`` (a linear recurrence).
        bias: use ``bias_ih`` / ``bias_hh``. batch_first: input/output are (B, T, ...).
        dropout: probability of zeroing each output of every layer but the last, in training.
        bidirectional: D = 2 when true.
        dtype: ``"float32"``, ``"float64"`` or ``"float16"`` (not on array_api_strict: the
        standard has no float16). seed: seeds the init and the dropout and zoneout masks.
        recurrent_dropout, zoneout, weight_dropout: probabilities, as in
        :func:`xrnn.functional.rnn` (recurrent and weight dropout act in training only;
        zoneout uses its expectation in eval mode).

    Call ``rnn(x, h0=None) -> (output, h_n)``:
        x: (T, B, H_in), (B, T, H_in) if batch_first, or (T, H_in) unbatched.
        h0: (L*D, B, H) (never batch-first) or (L*D, H) unbatched; zeros when None.
        output: (T, B, D*H) (or (B, T, D*H)); directions concatenated on the last axis.
        h_n: (L*D, B, H), layer-major, direction-minor: ``h_n[2*k + 1]`` is layer k's
        reverse direction, whose final state sits at ``output[0, :, H:]``, not ``output[-1]``.

    Parameters (PyTorch names, U(-1/sqrt(H), 1/sqrt(H)) init): ``weight_ih_l{k}{suffix}``
    (H, H_in) for k = 0 else (H, D*H); ``weight_hh_l{k}{suffix}`` (H, H);
    ``bias_ih_l{k}{suffix}``, ``bias_hh_l{k}{suffix}`` (H,); suffix ``_reverse`` for D = 2.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, *,
                 dtype: str = "float32", seed: int | None = None,
                 recurrent_dropout: float = 0.0, zoneout: float = 0.0,
                 weight_dropout: float = 0.0) -> None:
        self.nonlinearity = nonlinearity
        super().__init__(elman_cell(nonlinearity), input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, dtype, seed,
                         recurrent_dropout=recurrent_dropout, zoneout=zoneout,
                         weight_dropout=weight_dropout)

    def forward(self, x: Any, h0: Any | None = None, lengths: Any = None, *,
                check_finite: bool = False, reset: Any = None) -> tuple[Any, Any]:
        """``(output, h_n)``; ``lengths`` (B,) for a padded batch of variable-length
        sequences, ``check_finite`` to reject NaN or infinite values in ``x`` or
        ``h0`` with a ``ValueError``, and ``reset`` (T, B) booleans ((B, T) if
        batch_first) to restart sequence b from ``h0`` at step t (episode boundaries),
        as :func:`xrnn.functional.rnn`."""
        output, (h_n,) = self._run(x, (h0,), lengths, check_finite, reset)
        return output, h_n

    def backward(self, grad_output: Any, grad_h_n: Any | None = None, *,
                 return_state_grad: bool = False) -> Any:
        """BPTT through the last forward call not yet backpropagated (training or eval
        mode, same dropout masks); see :class:`xrnn.Module` for repeated calls.

        Adds every parameter's gradient to its ``grad`` and returns ``grad_input``
        (shaped like the input), or ``(grad_input, grad_h0)`` with ``return_state_grad``.
        ``grad_output`` is shaped like ``output`` (``None`` for zero), ``grad_h_n``
        like ``h_n``.
        """
        return self._backward(grad_output, (grad_h_n,), return_state_grad)

    def step(self, x_t: Any, h: Any | None = None, *, check_finite: bool = False,
             reset: Any = None) -> tuple[Any, Any]:
        """Streaming inference: feed one timestep, get ``(y_t, h)``.

        x_t (B, H_in) or (H_in,); h (L, B, H) (or (L, H)), ``None`` for zeros; y_t
        (B, H). Calling it over t = 0..T-1, passing ``h`` on, gives the same outputs
        as ``forward`` over the whole sequence. Unidirectional layers only.
        ``check_finite`` as in ``forward``. ``reset`` (B,) booleans (one bool for an
        unbatched x_t): those rows start a new sequence from zeros at this step, as
        ``forward(x, reset=...)`` with ``h0=None`` (an episode boundary). In eval mode
        (what streaming is for) zoneout acts as its expectation, as in ``forward``; in
        training mode each call draws its own masks, so recurrent dropout's mask, one
        per sequence in ``forward``, changes at every step.
        """
        y_t, (h,) = self._step(x_t, (h,), check_finite, reset)
        return y_t, h

    def config(self) -> dict[str, Any]:
        return dict(super().config(), nonlinearity=self.nonlinearity)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text + (f", nonlinearity={self.nonlinearity!r}" if self.nonlinearity != "tanh"
                       else "")


class LSTM(RecurrentBase):
    r"""Long short-term memory, argument for argument ``torch.nn.LSTM``.

    For each layer and direction, with gates in PyTorch's order (i, f, g, o):
    :math:`i, f, o = \sigma(\cdot)`, :math:`g = \tanh(x_t W_{ig}^T + b_{ig} + h_{t-1}
    W_{hg}^T + b_{hg})`, :math:`c_t = f \odot c_{t-1} + i \odot g`,
    :math:`h_t = o \odot \tanh(c_t)`, then :math:`h_t W_{hr}^T` when ``proj_size`` > 0.

    Args: as :class:`RNN` (no ``nonlinearity``), plus ``proj_size`` P in [0, H):
    H_out = P when P > 0, else H, and ``layer_norm``: the LayerNorm LSTM of
    :func:`xrnn.functional.lstm`, with parameters ``ln_weight_ih_l{k}``, ``ln_bias_ih_l{k}``,
    ``ln_weight_hh_l{k}``, ``ln_bias_hh_l{k}`` (4H,) and ``ln_weight_c_l{k}``,
    ``ln_bias_c_l{k}`` (H,) (weights 1, biases 0) after each group's; PyTorch has no such
    layer, so ``xrnn.io.torch_state_dict`` refuses it.

    Call ``lstm(x, hx=None) -> (output, (h_n, c_n))``:
        x: (T, B, H_in), (B, T, H_in) if batch_first, or (T, H_in) unbatched.
        hx: ``(h0, c0)``, h0 (L*D, B, H_out) and c0 (L*D, B, H), never batch-first;
        zeros when None.
        output: (T, B, D*H_out); h_n (L*D, B, H_out); c_n (L*D, B, H).

    Parameters (PyTorch names, U(-1/sqrt(H), 1/sqrt(H)) init; suffix ``_reverse`` for
    D = 2): ``weight_ih_l{k}`` (4H, H_in) for k = 0 else (4H, D*H_out);
    ``weight_hh_l{k}`` (4H, H_out); ``bias_ih_l{k}``, ``bias_hh_l{k}`` (4H,);
    ``weight_hr_l{k}`` (P, H) when P > 0.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, *,
                 dtype: str = "float32", seed: int | None = None,
                 recurrent_dropout: float = 0.0, zoneout: float = 0.0,
                 weight_dropout: float = 0.0, layer_norm: bool = False) -> None:
        self.layer_norm = bool(layer_norm)
        super().__init__(LN_LSTM_CELL if layer_norm else LSTM_CELL, input_size, hidden_size,
                         num_layers, bias, batch_first,
                         dropout, bidirectional, dtype, seed, proj_size,
                         recurrent_dropout=recurrent_dropout, zoneout=zoneout,
                         weight_dropout=weight_dropout)

    def forward(self, x: Any, hx: tuple[Any, Any] | None = None, lengths: Any = None, *,
                check_finite: bool = False, reset: Any = None) -> tuple[Any, tuple[Any, Any]]:
        """``(output, (h_n, c_n))``; ``lengths``, ``check_finite`` and ``reset`` as in
        :meth:`RNN.forward` (``check_finite`` covers ``x``, ``h0`` and ``c0``; a reset
        restarts from ``(h0, c0)``)."""
        output, (h_n, c_n) = self._run(x, lstm_states(hx), lengths, check_finite, reset)
        return output, (h_n, c_n)

    def config(self) -> dict[str, Any]:
        return dict(super().config(), proj_size=self.proj_size, layer_norm=self.layer_norm)

    def step(self, x_t: Any, hx: tuple[Any, Any] | None = None, *,
             check_finite: bool = False, reset: Any = None) -> tuple[Any, tuple[Any, Any]]:
        """Streaming inference, as :meth:`RNN.step`: ``(y_t, (h, c))`` from one timestep
        x_t (B, H_in) and the state ``hx = (h, c)`` (``None`` for zeros); ``reset`` (B,)
        booleans restart those rows from zero h and c."""
        y_t, (h, c) = self._step(x_t, lstm_states(hx, "(h, c)"), check_finite, reset)
        return y_t, (h, c)

    def backward(self, grad_output: Any, grad_hx: tuple[Any, Any] | None = None, *,
                 return_state_grad: bool = False) -> Any:
        """BPTT through the last unconsumed forward call, as :meth:`RNN.backward`; ``grad_hx`` is
        ``(grad_h_n, grad_c_n)`` (either may be ``None``), and with
        ``return_state_grad`` the result is ``(grad_input, (grad_h0, grad_c0))``."""
        grads = self._backward(grad_output, (None, None) if grad_hx is None else tuple(grad_hx),
                               return_state_grad)
        return (grads[0], grads[1:]) if return_state_grad else grads


class GRU(RecurrentBase):
    r"""Gated recurrent unit, argument for argument ``torch.nn.GRU``.

    For each layer and direction, with gates in PyTorch's order (r, z, n):
    :math:`r, z = \sigma(x_t W_{i\cdot}^T + b_{i\cdot} + h_{t-1} W_{h\cdot}^T + b_{h\cdot})`,
    :math:`n = \tanh(x_t W_{in}^T + b_{in} + r \odot (h_{t-1} W_{hn}^T + b_{hn}))`,
    :math:`h_t = (1 - z) \odot n + z \odot h_{t-1}`.

    Args, call signature and shapes as :class:`RNN` (no ``nonlinearity``); parameters
    ``weight_ih_l{k}`` (3H, H_in or D*H), ``weight_hh_l{k}`` (3H, H), biases (3H,).
    ``layer_norm``: the LayerNorm GRU of :func:`xrnn.functional.gru`, with parameters
    ``ln_weight_ih_l{k}``, ``ln_bias_ih_l{k}``, ``ln_weight_hh_l{k}``, ``ln_bias_hh_l{k}``
    (3H,) after each group's.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, *, dtype: str = "float32",
                 seed: int | None = None, recurrent_dropout: float = 0.0,
                 zoneout: float = 0.0, weight_dropout: float = 0.0,
                 layer_norm: bool = False) -> None:
        self.layer_norm = bool(layer_norm)
        super().__init__(LN_GRU_CELL if layer_norm else GRU_CELL, input_size, hidden_size,
                         num_layers, bias, batch_first,
                         dropout, bidirectional, dtype, seed, recurrent_dropout=recurrent_dropout,
                         zoneout=zoneout, weight_dropout=weight_dropout)

    forward = RNN.forward
    backward = RNN.backward
    step = RNN.step

    def config(self) -> dict[str, Any]:
        return dict(super().config(), layer_norm=self.layer_norm)
