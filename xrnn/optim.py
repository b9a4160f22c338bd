"""Optimizers (``SGD``, ``Adam``) and gradient clipping with PyTorch's exact update rules.

An optimizer holds a list of :class:`xrnn.nn.Parameter`. ``step()`` updates every
parameter whose ``.grad`` is set by rebinding ``p.data`` to a new array (same shape,
dtype and backend); ``zero_grad()`` sets every ``.grad`` to ``None``. Per-parameter
state (momentum buffers, Adam moments and step counts) lives in ``optimizer.state``,
a dict keyed by the parameter's index in the list::

    optimizer = Adam(model.parameters(), lr=1e-3)
    ...                      # set p.grad for each parameter
    clip_grad_norm_(model.parameters(), max_norm=1.0)
    optimizer.step()
    optimizer.zero_grad()
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import array_api_compat
import numpy as np

from .backend import backend_of, get_namespace, move, to_numpy
from .nn.module import Parameter

__all__ = ["SGD", "Adam", "Optimizer", "clip_grad_norm_"]


def _real(value: Any, name: str) -> float:
    """``value`` as a float if it is a real number (not a bool), else ``TypeError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return float(value)


def _parameter_list(params: Any) -> list[Parameter]:
    """``params`` (one Parameter or an iterable of them) as a list; ``TypeError`` otherwise."""
    if isinstance(params, Parameter):
        return [params]
    try:
        items = list(params)
    except TypeError:
        raise TypeError(f"params must be an iterable of xrnn.nn.Parameter (e.g. "
                        f"model.parameters()), got {type(params).__name__}") from None
    for index, item in enumerate(items):
        if not isinstance(item, Parameter):
            raise TypeError(f"params must hold xrnn.nn.Parameter objects; item {index} is a "
                            f"{type(item).__name__}")
    return items


def _checked_grad(index: int, parameter: Parameter) -> Any:
    """``parameter.grad``, checked against ``parameter.data`` (backend, dtype, shape)."""
    grad, data = parameter.grad, parameter.data
    grad_backend, data_backend = backend_of(grad), backend_of(data)
    if grad_backend != data_backend:
        raise TypeError(f"parameter {index}: grad is a {grad_backend} array but data is a "
                        f"{data_backend} array")
    if grad.dtype != data.dtype:
        raise TypeError(f"parameter {index}: grad dtype {grad.dtype} does not match the "
                        f"parameter dtype {data.dtype}")
    if tuple(grad.shape) != tuple(data.shape):
        raise ValueError(f"parameter {index}: expected grad of shape {tuple(data.shape)}, "
                         f"got {tuple(grad.shape)}")
    return grad


class Optimizer:
    """Base class: a list of parameters, per-parameter ``state`` and ``zero_grad``."""

    def __init__(self, params: Iterable[Parameter]) -> None:
        self.params: list[Parameter] = _parameter_list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("optimizer got some parameters more than once")
        #: index of the parameter in ``params`` -> its state (buffers, step count)
        self.state: dict[int, dict[str, Any]] = {}

    def to(self, backend: str) -> Optimizer:
        """Move the optimizer's state (momentum buffers, moments) to ``backend``, after
        ``model.to(backend)`` moved the parameters; returns ``self``."""
        for state in self.state.values():
            for key, value in state.items():
                if not isinstance(value, (int, float)):
                    state[key] = move(value, backend)
        return self

    def state_dict(self) -> dict[str, Any]:
        """The per-parameter state as a flat ``{"{index}.{key}": array}`` mapping (step
        counts as 0-d int64 NumPy arrays, buffers as the backend's arrays), which
        :func:`xrnn.save` writes; hyperparameters are the constructor's arguments."""
        flat: dict[str, Any] = {}
        for index, state in self.state.items():
            for key, value in state.items():
                flat[f"{index}.{key}"] = np.asarray(value, dtype=np.int64) if isinstance(
                    value, int) else value
        return flat

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (from any backend, e.g. after
        :func:`xrnn.load`): buffers are moved to each parameter's backend and dtype.
        Every entry is checked first; a failed load leaves the optimizer unchanged."""
        state: dict[int, dict[str, Any]] = {}
        for name, value in state_dict.items():
            index_text, _, key = str(name).partition(".")
            if not index_text.isdigit() or not key or int(index_text) >= len(self.params):
                raise ValueError(f"optimizer state entry {name!r}: expected '<index>.<key>' "
                                 f"with index < {len(self.params)}")
            parameter = self.params[int(index_text)]
            shape = tuple(getattr(value, "shape", ()))
            if key == "step":
                if shape != () or not np.issubdtype(np.asarray(to_numpy(value)).dtype,
                                                    np.integer):
                    raise ValueError(f"optimizer state entry {name!r}: expected a 0-d "
                                     f"integer step count, got shape {shape}")
                converted: Any = int(to_numpy(value))
            elif shape != parameter.shape:
                raise ValueError(f"optimizer state entry {name!r} has shape {shape}; "
                                 f"expected the parameter's {parameter.shape}")
            else:
                xp = get_namespace(parameter.data)
                converted = xp.asarray(np.asarray(to_numpy(value)), dtype=parameter.dtype,
                                       device=array_api_compat.device(parameter.data))
            state.setdefault(int(index_text), {})[key] = converted
        self.state = state

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to ``None``."""
        for parameter in self.params:
            parameter.grad = None

    def step(self) -> None:
        """Update every parameter whose ``.grad`` is not ``None``."""
        for index, parameter in enumerate(self.params):
            if parameter.grad is None:
                continue
            grad = _checked_grad(index, parameter)
            parameter.data = self._update(parameter.data, grad, self.state.setdefault(index, {}))

    def _update(self, data: Any, grad: Any, state: dict[str, Any]) -> Any:
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, as ``torch.optim.SGD``.

    Per step, with ``g`` the gradient::

        g = g + weight_decay * p                         (if weight_decay)
        b = g  (first step)  or  momentum * b + (1 - dampening) * g
        g = g + momentum * b  (nesterov)  or  b          (if momentum)
        p = p - lr * g
    """

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        lr, momentum = _real(lr, "lr"), _real(momentum, "momentum")
        dampening, weight_decay = _real(dampening, "dampening"), _real(weight_decay, "weight_decay")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: expected lr >= 0, got {lr}")
        if not 0.0 <= momentum:
            raise ValueError(f"Invalid momentum value: expected momentum >= 0, got {momentum}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: expected weight_decay >= 0, "
                             f"got {weight_decay}")
        if not math.isfinite(dampening):
            raise ValueError(f"Invalid dampening value: expected a finite number, got {dampening}")
        if nesterov and (momentum <= 0.0 or dampening != 0.0):
            raise ValueError(f"Nesterov momentum requires a momentum > 0 and zero dampening, "
                             f"got momentum={momentum}, dampening={dampening}")
        super().__init__(params)
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, bool(nesterov)

    def _update(self, data: Any, grad: Any, state: dict[str, Any]) -> Any:
        if self.weight_decay != 0.0:
            grad = grad + self.weight_decay * data
        if self.momentum != 0.0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = get_namespace(grad).asarray(grad, copy=True)
            else:
                buf = buf * self.momentum + (1.0 - self.dampening) * grad
            state["momentum_buffer"] = buf
            grad = grad + self.momentum * buf if self.nesterov else buf
        return data - self.lr * grad

    def __repr__(self) -> str:
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, dampening={self.dampening}, "
                f"weight_decay={self.weight_decay}, nesterov={self.nesterov})")


class Adam(Optimizer):
    """Adam with L2-style weight decay and bias corrections, as ``torch.optim.Adam``.

    Per step ``t`` (from 1), with ``g`` the gradient::

        g = g + weight_decay * p                         (if weight_decay)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        p = p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)
    """

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        lr, eps = _real(lr, "lr"), _real(eps, "eps")
        weight_decay = _real(weight_decay, "weight_decay")
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"betas must be a pair of numbers, got {betas!r}") from None
        beta1, beta2 = _real(beta1, "betas[0]"), _real(beta2, "betas[1]")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: expected lr >= 0, got {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: expected eps >= 0, got {eps}")
        if not 0.0 <= beta1 < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: expected a value in [0, 1), "
                             f"got {beta1}")
        if not 0.0 <= beta2 < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: expected a value in [0, 1), "
                             f"got {beta2}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: expected weight_decay >= 0, "
                             f"got {weight_decay}")
        super().__init__(params)
        self.lr, self.betas, self.eps, self.weight_decay = lr, (beta1, beta2), eps, weight_decay

    def _update(self, data: Any, grad: Any, state: dict[str, Any]) -> Any:
        beta1, beta2 = self.betas
        if not state:
            xp = get_namespace(data)
            state.update(step=0, exp_avg=xp.zeros_like(data), exp_avg_sq=xp.zeros_like(data))
        if self.weight_decay != 0.0:
            grad = grad + self.weight_decay * data
        step = state["step"] = state["step"] + 1
        # m.lerp(g, 1 - beta1) and v * beta2 + ((1 - beta2) * g) * g, as torch evaluates them
        m, weight = state["exp_avg"], 1.0 - beta1
        m = m + weight * (grad - m) if weight < 0.5 else grad - (grad - m) * (1.0 - weight)
        v = state["exp_avg_sq"] * beta2 + ((1.0 - beta2) * grad) * grad
        state["exp_avg"], state["exp_avg_sq"] = m, v
        step_size = self.lr / (1.0 - beta1 ** step)
        bias_correction2_sqrt = (1.0 - beta2 ** step) ** 0.5
        denom = get_namespace(v).sqrt(v) / bias_correction2_sqrt + self.eps
        return data - (step_size * m) / denom

    def __repr__(self) -> str:
        return (f"Adam(lr={self.lr}, betas={self.betas}, eps={self.eps}, "
                f"weight_decay={self.weight_decay})")


def clip_grad_norm_(params: Parameter | Iterable[Parameter], max_norm: float,
                    norm_type: float = 2.0, error_if_nonfinite: bool = False) -> Any:
    """Scale gradients so their total norm is at most ``max_norm``, as torch's ``clip_grad_norm_``.

    The total norm is the ``norm_type``-norm of the per-gradient norms (the norm of all
    gradients seen as one vector). Each ``.grad`` is rebound to
    ``grad * min(max_norm / (total_norm + 1e-6), 1)``; parameters whose grad is
    ``None`` are skipped. ``norm_type`` is a positive number or ``inf``.

    Returns the total norm before clipping, a 0-d array of the gradients' backend and
    dtype (0.0 when no parameter has a gradient).
    """
    parameters = _parameter_list(params)
    max_norm = _real(max_norm, "max_norm")
    if not 0.0 <= max_norm:
        raise ValueError(f"max_norm must be >= 0, got {max_norm}")
    try:
        norm_type = float(norm_type)
    except (TypeError, ValueError):
        raise TypeError(f"norm_type must be a positive number or inf, got {norm_type!r}") from None
    if not norm_type > 0.0:
        raise ValueError(f"norm_type must be a positive number or inf, got {norm_type}")

    with_grad = [(i, p) for i, p in enumerate(parameters) if p.grad is not None]
    if not with_grad:
        if parameters:
            data = parameters[0].data
            xp = get_namespace(data)
            return xp.asarray(0.0, dtype=data.dtype, device=array_api_compat.device(data))
        return get_namespace().asarray(0.0)
    grads = [_checked_grad(i, p) for i, p in with_grad]
    first = grads[0]
    for (index, _), grad in zip(with_grad, grads):
        if backend_of(grad) != backend_of(first) or grad.dtype != first.dtype:
            raise TypeError(f"all gradients must share one backend and dtype; parameter "
                            f"{with_grad[0][0]} has a {backend_of(first)} {first.dtype} grad, "
                            f"parameter {index} a {backend_of(grad)} {grad.dtype} grad")
    xp = get_namespace(first)
    norms = [xp.linalg.vector_norm(g, ord=norm_type) for g in grads]
    total_norm = xp.linalg.vector_norm(xp.stack(norms), ord=norm_type)
    if error_if_nonfinite and not bool(xp.isfinite(total_norm)):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is "
                           f"{float(total_norm)}; clipping is impossible (set "
                           "error_if_nonfinite=False to skip this check)")
    clip_coef = xp.clip(max_norm / (total_norm + 1e-6), max=1.0)
    for _, parameter in with_grad:
        parameter.grad = parameter.grad * clip_coef
    return total_norm
