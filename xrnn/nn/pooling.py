"""One vector per sequence: the last step, the mean or the maximum over time.

Each layer takes a sequence (T, B, F), (B, T, F) with ``batch_first=True``, or (T, F)
unbatched, and ``lengths`` (B,) for a padded batch (each in [1, T]; steps at or past a
sequence's length are ignored, whatever they hold); it returns (B, F) (or (F,)).
``batch_first`` (and ``LastStep``'s ``bidirectional``) left ``None`` are taken from the
nearest preceding recurrent layer when the layer is added to a :class:`Sequential`;
used on its own, such a layer raises ``ValueError`` rather than guess.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from ..backend import get_namespace
from ..functional.checks import check_lengths
from .module import Module, check_gradient_shape, is_grad_enabled


def _optional_bool(value: Any, name: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{name} must be True, False or None (inherit it in a Sequential), "
                         f"got {value!r}")
    return value


class _OverTime(Module):
    """Shared by the pooling layers: the layout, the input checks, the mask of valid steps."""

    #: Read by ``Sequential.summary``: the time axis ends here.
    reduces_time = True
    _layout_options: tuple[str, ...] = ("batch_first",)

    def __init__(self, batch_first: bool | None = None) -> None:
        super().__init__()
        self.batch_first = _optional_bool(batch_first, "batch_first")

    def inherit_layout(self, recurrent: Module) -> None:
        """Take each option still ``None`` from ``recurrent`` (``Sequential.add`` calls this
        with the nearest preceding recurrent layer)."""
        for name in self._layout_options:
            if getattr(self, name) is None:
                setattr(self, name, bool(getattr(recurrent, name)))

    def _check_layout(self) -> None:
        unset = [name for name in self._layout_options if getattr(self, name) is None]
        if unset:
            name = type(self).__name__
            example = ", ".join(f"{option}=..." for option in self._layout_options)
            raise ValueError(f"{name} has {' and '.join(unset)} unset (None): pass "
                             f"{name}({example}) to match the layer whose output it reads, or "
                             "add it to a Sequential after that recurrent layer, which fills "
                             "them in")

    def _time_axis(self, ndim: int) -> int:
        return 1 if ndim == 3 and self.batch_first else 0

    def _prepare(self, x: Any, lengths: Any) -> tuple[Any, Any, int, np.ndarray]:
        """``(xp, x3, axis, lengths)``: ``x`` batched ((T, 1, F) if unbatched), its time
        axis, and host lengths (B,), all T without ``lengths``."""
        self._check_layout()
        xp = get_namespace(x)
        if x.ndim not in (2, 3):
            layout = "(B, T, F)" if self.batch_first else "(T, B, F)"
            raise ValueError(f"{type(self).__name__} expects a sequence {layout} or (T, F) "
                             f"unbatched, got shape {tuple(x.shape)}")
        if not xp.isdtype(x.dtype, "real floating"):
            raise TypeError(f"{type(self).__name__} takes a real floating array, got dtype "
                            f"{x.dtype}")
        if x.ndim == 2:
            if lengths is not None:
                raise ValueError("lengths needs batched input (a batch axis to index)")
            x = xp.expand_dims(x, axis=1)
        axis = self._time_axis(x.ndim) if x.ndim == 3 else 0
        steps, batch = x.shape[axis], x.shape[1 - axis]
        if steps == 0:
            raise ValueError(f"{type(self).__name__} needs at least one step, got shape "
                             f"{tuple(x.shape)}")
        host = (np.full(batch, steps, dtype=np.int64) if lengths is None
                else check_lengths(lengths, steps, batch))
        return xp, x, axis, host

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        self._check_layout()
        shape = tuple(input_shape)
        if len(shape) not in (2, 3):
            raise ValueError(f"{type(self).__name__} expects a sequence (T, B, F), (B, T, F) "
                             f"or (T, F), got shape {shape}")
        axis = self._time_axis(len(shape))
        return shape[:axis] + shape[axis + 1:]

    def config(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._layout_options}

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)}" for name in self._layout_options)


def _step_mask(xp: Any, x3: Any, axis: int, select: np.ndarray) -> Any:
    """Host booleans (T, B) as a device mask shaped to broadcast against ``x3``:
    (T, B, 1), or (B, T, 1) when time is axis 1."""
    host = select if axis == 0 else select.T
    return xp.asarray(np.array(host[..., None]), device=array_api_compat.device(x3))  # a copy


def _valid_steps(steps: int, lengths: np.ndarray) -> np.ndarray:
    """(T, B) booleans: step t of sequence b lies within its length."""
    return np.arange(steps)[:, None] < lengths[None, :]


def _unbatch(array: Any, unbatched: bool) -> Any:
    """Drop the batch axis that ``_prepare`` added to unbatched input: (1, F) -> (F,),
    or, for a gradient, (T, 1, F) -> (T, F)."""
    if not unbatched:
        return array
    return array[0, ...] if array.ndim == 2 else array[:, 0, ...]


class LastStep(_OverTime):
    """Each sequence's output at its own last step: (T, B, F) -> (B, F).

    With ``lengths``, sequence b's last step is ``lengths[b] - 1``. After a
    bidirectional layer (``bidirectional=True``), the forward half (the first F/2
    features) is taken there and the reverse half at step 0, where the reverse direction
    ends: the result is the top layer's final states, ``h_n[-2]`` and ``h_n[-1]``
    concatenated. The gradient reaches only those steps.
    """

    _layout_options = ("batch_first", "bidirectional")

    def __init__(self, batch_first: bool | None = None, bidirectional: bool | None = None
                 ) -> None:
        super().__init__(batch_first)
        self.bidirectional = _optional_bool(bidirectional, "bidirectional")

    def forward(self, x: Any, lengths: Any = None) -> Any:
        """x (T, B, F) (or (B, T, F), (T, F)) -> (B, F) (or (F,))."""
        xp, x3, axis, lengths = self._prepare(x, lengths)
        steps, batch, features = x3.shape[axis], x3.shape[1 - axis], x3.shape[-1]
        if self.bidirectional and features % 2:
            raise ValueError(f"LastStep(bidirectional=True) needs an even number of features "
                             f"(two directions), got {features}")
        sequence = np.arange(batch)

        def rows(step: np.ndarray) -> Any:  # each sequence's row in x3 as (T*B, F) or (B*T, F)
            flat = sequence * steps + step if axis == 1 else step * batch + sequence
            return xp.asarray(flat, device=array_api_compat.device(x3))

        table = xp.reshape(x3, (-1, features))
        out = xp.take(table, rows(lengths - 1), axis=0)
        if self.bidirectional:
            half = features // 2
            first = xp.take(table, rows(np.zeros_like(lengths)), axis=0)
            out = xp.concat([out[:, :half], first[:, half:]], axis=-1)
        self.save_for_backward(tuple(x3.shape), axis, lengths, self.bidirectional,
                               x.ndim == 2)
        return _unbatch(out, x.ndim == 2)

    def backward(self, grad_output: Any) -> Any:
        """(B, F) -> (T, B, F) (the input's shape), zero but at the selected steps."""
        shape, axis, lengths, bidirectional, unbatched = self.saved_for_backward()
        batch, features = shape[1 - axis], shape[-1]
        check_gradient_shape(self, grad_output, (features,) if unbatched else (batch, features))
        xp = get_namespace(grad_output)
        grad = xp.expand_dims(xp.reshape(grad_output, (batch, features)), axis=axis)
        zero = xp.zeros((), dtype=grad.dtype, device=array_api_compat.device(grad))
        steps = np.arange(shape[axis])[:, None]
        at_last = _step_mask(xp, grad, axis, steps == (lengths - 1)[None, :])
        if not bidirectional:
            return _unbatch(xp.where(at_last, grad, zero), unbatched)
        half = features // 2
        at_first = _step_mask(xp, grad, axis, np.broadcast_to(steps == 0, (shape[axis], batch)))
        return _unbatch(xp.concat([xp.where(at_last, grad[..., :half], zero),
                                   xp.where(at_first, grad[..., half:], zero)], axis=-1),
                        unbatched)


class MeanOverTime(_OverTime):
    """The mean over each sequence's valid steps: (T, B, F) -> (B, F); with ``lengths``,
    sequence b averages its first ``lengths[b]`` steps (padding is ignored)."""

    def forward(self, x: Any, lengths: Any = None) -> Any:
        """x (T, B, F) (or (B, T, F), (T, F)) -> (B, F) (or (F,))."""
        xp, x3, axis, lengths = self._prepare(x, lengths)
        valid = _step_mask(xp, x3, axis, _valid_steps(x3.shape[axis], lengths))
        zero = xp.zeros((), dtype=x3.dtype, device=array_api_compat.device(x3))
        counts = xp.asarray(lengths[:, None], dtype=x3.dtype, device=array_api_compat.device(x3))
        out = xp.sum(xp.where(valid, x3, zero), axis=axis) / counts
        self.save_for_backward(tuple(x3.shape), axis, valid, counts, x.ndim == 2)
        return _unbatch(out, x.ndim == 2)

    def backward(self, grad_output: Any) -> Any:
        """(B, F) -> the input's shape: ``grad / lengths[b]`` at each valid step, else 0."""
        shape, axis, valid, counts, unbatched = self.saved_for_backward()
        batch, features = shape[1 - axis], shape[-1]
        check_gradient_shape(self, grad_output, (features,) if unbatched else (batch, features))
        xp = get_namespace(grad_output)
        grad = xp.reshape(grad_output, (batch, features)) / counts
        zero = xp.zeros((), dtype=grad.dtype, device=array_api_compat.device(grad))
        return _unbatch(xp.where(valid, xp.expand_dims(grad, axis=axis), zero), unbatched)


class MaxOverTime(_OverTime):
    """The maximum over each sequence's valid steps, feature by feature: (T, B, F) ->
    (B, F); with ``lengths``, padding is ignored. The gradient goes to the arg-max step
    (the first one, on ties); NaN propagates."""

    def forward(self, x: Any, lengths: Any = None) -> Any:
        """x (T, B, F) (or (B, T, F), (T, F)) -> (B, F) (or (F,))."""
        xp, x3, axis, lengths = self._prepare(x, lengths)
        valid = _step_mask(xp, x3, axis, _valid_steps(x3.shape[axis], lengths))
        masked = xp.where(valid, x3, xp.full_like(x3, -xp.inf))
        out = xp.max(masked, axis=axis)
        if is_grad_enabled():
            self.save_for_backward(tuple(x3.shape), axis, xp.argmax(masked, axis=axis),
                                   x.ndim == 2)
        return _unbatch(out, x.ndim == 2)

    def backward(self, grad_output: Any) -> Any:
        """(B, F) -> the input's shape: the gradient at each feature's arg-max step, else 0."""
        shape, axis, argmax, unbatched = self.saved_for_backward()
        batch, features = shape[1 - axis], shape[-1]
        check_gradient_shape(self, grad_output, (features,) if unbatched else (batch, features))
        xp = get_namespace(grad_output)
        device = array_api_compat.device(grad_output)
        steps = xp.reshape(xp.arange(shape[axis], dtype=argmax.dtype, device=device),
                           (-1, 1, 1) if axis == 0 else (1, -1, 1))
        picked = steps == xp.expand_dims(argmax, axis=axis)
        grad = xp.expand_dims(xp.reshape(grad_output, (batch, features)), axis=axis)
        zero = xp.zeros((), dtype=grad.dtype, device=device)
        return _unbatch(xp.where(picked, grad, zero), unbatched)
