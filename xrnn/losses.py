"""Loss functions returning the loss and its gradient, on any backend.

Each function returns ``(loss, grad)``: the loss (a 0-d array for ``"mean"`` and
``"sum"``, the per-element losses for ``"none"``) and the gradient of the reduced
loss (of the sum, for ``"none"``) with respect to the prediction, with the
prediction's shape, dtype and backend. Values match ``torch.nn.functional``.

The classes :class:`MSELoss` and :class:`CrossEntropyLoss` wrap them: calling one
returns the loss and remembers the gradient, which ``backward()`` hands back::

    loss_fn = CrossEntropyLoss()
    loss = loss_fn(logits, target)
    grad_logits = loss_fn.backward()
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat

from .backend import backend_of, get_namespace

__all__ = ["CrossEntropyLoss", "MSELoss", "REDUCTIONS", "cross_entropy", "mse_loss"]

#: The accepted values of ``reduction``.
REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")


def check_reduction(reduction: Any) -> str:
    """``reduction`` if it is one of :data:`REDUCTIONS`, else ``ValueError``."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}, "
                         f"got {reduction!r}")
    return reduction


def _check_same_backend(prediction: Any, target: Any, names: tuple[str, str]) -> None:
    pred_backend, target_backend = backend_of(prediction), backend_of(target)
    if pred_backend != target_backend:
        raise TypeError(f"{names[0]} is a {pred_backend} array but {names[1]} is a "
                        f"{target_backend} array; move one of them (xrnn.backend.asarray)")


def _check_floating(xp: Any, x: Any, name: str) -> None:
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{name} must be a real floating array, got dtype {x.dtype}")


def mse_loss(input: Any, target: Any, reduction: str = "mean") -> tuple[Any, Any]:
    """Mean squared error ``(input - target) ** 2``, as ``torch.nn.functional.mse_loss``.

    Shapes: ``input`` and ``target`` any shape, exactly the same (no broadcasting),
    same floating dtype and backend. Returns ``(loss, grad)``: ``loss`` is 0-d for
    ``"mean"``/``"sum"`` and ``input``-shaped for ``"none"``; ``grad`` is the gradient
    of the reduced loss (the sum for ``"none"``) with respect to ``input``.
    """
    reduction = check_reduction(reduction)
    _check_same_backend(input, target, ("input", "target"))
    xp = get_namespace(input, target)
    _check_floating(xp, input, "input")
    _check_floating(xp, target, "target")
    if input.dtype != target.dtype:
        raise TypeError(f"target dtype {target.dtype} does not match the input dtype "
                        f"{input.dtype}; convert one of them")
    if tuple(input.shape) != tuple(target.shape):
        raise ValueError(f"expected target of the input's shape {tuple(input.shape)}, "
                         f"got {tuple(target.shape)}")
    diff = input - target
    losses = diff * diff
    if reduction == "none":
        return losses, 2.0 * diff
    if reduction == "sum":
        return xp.sum(losses), 2.0 * diff
    count = math.prod(input.shape)
    return xp.mean(losses), (2.0 / max(count, 1)) * diff


def cross_entropy(logits: Any, target: Any, reduction: str = "mean") -> tuple[Any, Any]:
    """Softmax cross-entropy of class scores against class indices.

    Shapes: ``logits`` ``(..., C)`` with classes on the LAST axis, ``target``
    ``logits.shape[:-1]`` holding integers in ``[0, C)``. For 2-D ``(N, C)`` logits
    this is ``torch.nn.functional.cross_entropy`` exactly; for ``(T, B, C)`` sequence
    outputs torch needs the classes on axis 1, ``(N, C, d1, ...)`` (a transpose to
    ``(T, C, B)`` or a reshape to ``(T*B, C)``), which this layout spares. There is
    no ``ignore_index`` (negative targets are errors), class weighting or label
    smoothing, and probability (floating) targets are rejected.

    Returns ``(loss, grad)``: ``loss`` is 0-d for ``"mean"`` (averaged over the
    ``prod(logits.shape[:-1])`` targets) and ``"sum"``, and ``target``-shaped for
    ``"none"``; ``grad = softmax(logits) - onehot(target)`` (divided by the number of
    targets for ``"mean"``), shaped like ``logits``. The log-softmax subtracts the
    per-row maximum, so large logits stay finite.
    """
    reduction = check_reduction(reduction)
    _check_same_backend(logits, target, ("logits", "target"))
    xp = get_namespace(logits, target)
    _check_floating(xp, logits, "logits")
    if not xp.isdtype(target.dtype, "integral"):
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype} "
                        "(probability targets are not supported)")
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"expected logits of shape (..., C) with C >= 1 classes, "
                         f"got shape {tuple(logits.shape)}")
    if tuple(target.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"expected target of shape {tuple(logits.shape[:-1])} (the logits' "
                         f"shape {tuple(logits.shape)} without the class axis), "
                         f"got {tuple(target.shape)}")
    classes = logits.shape[-1]
    count = math.prod(target.shape)
    if count > 0:
        low, high = int(xp.min(target)), int(xp.max(target))
        if low < 0 or high >= classes:
            raise ValueError(f"target class indices must lie in [0, {classes}), "
                             f"got values in [{low}, {high}]")

    shifted = logits - xp.max(logits, axis=-1, keepdims=True)
    exp_shifted = xp.exp(shifted)
    sum_exp = xp.sum(exp_shifted, axis=-1, keepdims=True)
    log_probs = shifted - xp.log(sum_exp)
    classes_range = xp.arange(classes, dtype=xp.int64, device=array_api_compat.device(logits))
    onehot = xp.astype(xp.expand_dims(xp.astype(target, xp.int64), axis=-1) == classes_range,
                       logits.dtype)
    losses = -xp.sum(log_probs * onehot, axis=-1)
    grad = exp_shifted / sum_exp - onehot
    if reduction == "none":
        return losses, grad
    if reduction == "sum":
        return xp.sum(losses), grad
    return xp.mean(losses), grad * (1.0 / max(count, 1))


class _Loss:
    """A loss function object: ``loss = fn(prediction, target)``, then ``fn.backward()``."""

    def __init__(self, reduction: str = "mean") -> None:
        self.reduction = check_reduction(reduction)
        self._grad: Any = None

    def _compute(self, prediction: Any, target: Any) -> tuple[Any, Any]:
        raise NotImplementedError

    def __call__(self, prediction: Any, target: Any) -> Any:
        loss, self._grad = self._compute(prediction, target)
        return loss

    forward = __call__

    def backward(self) -> Any:
        """The gradient of the last loss with respect to the prediction (its shape)."""
        if self._grad is None:
            raise RuntimeError(f"{type(self).__name__}.backward() called before a forward "
                               "call; compute a loss first: loss = loss_fn(prediction, target)")
        return self._grad

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reduction={self.reduction!r})"


class MSELoss(_Loss):
    """Mean squared error, as ``torch.nn.MSELoss``; see :func:`mse_loss`.

    ``loss_fn(input, target)`` returns the loss; ``loss_fn.backward()`` the gradient
    with respect to ``input`` (``input``'s shape).
    """

    def _compute(self, prediction: Any, target: Any) -> tuple[Any, Any]:
        return mse_loss(prediction, target, self.reduction)


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy over the LAST axis; see :func:`cross_entropy`.

    ``loss_fn(logits, target)`` takes logits ``(..., C)`` and integer targets
    ``(...)`` and returns the loss; ``loss_fn.backward()`` the gradient with respect
    to ``logits`` (``logits``' shape).
    """

    def _compute(self, prediction: Any, target: Any) -> tuple[Any, Any]:
        return cross_entropy(prediction, target, self.reduction)
