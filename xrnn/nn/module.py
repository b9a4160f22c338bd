"""``Parameter`` and ``Module``: thin stateful wrappers over the functional core."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import array_api_compat
import numpy as np

from ..backend import backend_of, get_namespace, move, to_numpy

_grad_enabled: ContextVar[bool] = ContextVar("xrnn_grad_enabled", default=True)


@contextmanager
def no_grad() -> Iterator[None]:
    """Inference: inside the block, recurrent layers keep no tape for ``backward``.

    Forwards then use less memory and run faster; their outputs are the same. A
    ``backward`` through such a forward raises ``RuntimeError``. Like ``torch.no_grad``.
    """
    token = _grad_enabled.set(False)
    try:
        yield
    finally:
        _grad_enabled.reset(token)


def is_grad_enabled() -> bool:
    """False inside :func:`no_grad`."""
    return _grad_enabled.get()


class Parameter:
    """A trainable array (``data``, on the module's backend) and its gradient slot ``grad``."""

    __slots__ = ("data", "grad")

    def __init__(self, data: Any) -> None:
        self.data = data
        self.grad: Any = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> Any:
        return self.data.dtype

    def accumulate(self, grad: Any) -> None:
        """Add ``grad`` to ``self.grad`` (which starts as ``None``)."""
        self.grad = grad if self.grad is None else self.grad + grad

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, backend={backend_of(self.data)})"


class Module:
    """Base class: named parameters, child modules, train/eval mode, ``state_dict``.

    Parameter names follow PyTorch (``weight_ih_l0``, ``0.weight`` inside a
    ``Sequential``), so state dicts move between the two libraries unchanged.
    """

    #: True for recurrent modules, whose call returns ``(output, state)``.
    returns_state: bool = False

    def __init__(self) -> None:
        self.training = True
        self._parameters: dict[str, Parameter] = {}
        self._children: dict[str, Module] = {}

    # -- structure ---------------------------------------------------------
    def register_parameter(self, name: str, data: Any) -> Parameter:
        parameter = Parameter(data)
        self._parameters[name] = parameter
        return parameter

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """``(name, Parameter)`` pairs of this module and its children, in order."""
        for name, parameter in self._parameters.items():
            yield prefix + name, parameter
        for child_name, child in self._children.items():
            yield from child.named_parameters(prefix=f"{prefix}{child_name}.")

    def parameters(self) -> Iterator[Parameter]:
        """Every ``Parameter``, in ``named_parameters`` order."""
        for _, parameter in self.named_parameters():
            yield parameter

    def num_parameters(self) -> int:
        """The number of scalar parameters."""
        return sum(int(np.prod(p.shape)) for p in self.parameters())

    def zero_grad(self) -> None:
        """Reset every parameter's gradient to ``None``."""
        for parameter in self.parameters():
            parameter.grad = None

    def to(self, backend: str) -> Module:
        """Move every parameter (and gradient) to ``backend`` ('numpy', 'cupy', ...), in
        place; returns ``self``. Values and dtypes are kept exactly."""
        for parameter in self.parameters():
            parameter.data = move(parameter.data, backend)
            if parameter.grad is not None:
                parameter.grad = move(parameter.grad, backend)
        return self

    # -- modes -------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Set training mode (dropout active) here and in every child; returns ``self``."""
        self.training = bool(mode)
        for child in self._children.values():
            child.train(mode)
        return self

    def eval(self) -> Module:
        """Set evaluation mode (dropout off); returns ``self``."""
        return self.train(False)

    # -- state -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Name -> array (the module's own backend arrays, not copies).

        Use ``xrnn.io.torch_state_dict`` for a dict that ``torch.nn.Module.load_state_dict`` takes.
        """
        return {name: p.data for name, p in self.named_parameters()}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Copy arrays of any backend (NumPy, torch tensors, ...) into the parameters.

        Values are cast to the module's dtype and moved to its backend. Everything is
        checked before anything is written: a failed load leaves the module unchanged.
        """
        own = dict(self.named_parameters())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise ValueError(f"state_dict does not match {type(self).__name__}: "
                             f"missing keys {missing}, unexpected keys {unexpected}")
        updates = {}
        for name, value in state_dict.items():
            if name not in own:
                continue
            try:
                host = to_numpy(value)
            except TypeError:
                host = np.asarray(value)
            if tuple(host.shape) != own[name].shape:
                raise ValueError(f"state_dict entry {name!r} has shape {tuple(host.shape)}; "
                                 f"expected {own[name].shape}")
            target = own[name].data
            xp = get_namespace(target)
            updates[name] = xp.asarray(np.asarray(host), dtype=target.dtype,
                                       device=array_api_compat.device(target))
        for name, data in updates.items():
            own[name].data = data

    def __getattr__(self, name: str) -> Any:
        """Parameters and children by name, as in PyTorch: ``rnn.weight_ih_l0``."""
        for registry in ("_parameters", "_children"):
            found = self.__dict__.get(registry, {})
            if name in found:
                return found[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- calling -----------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def backward(self, grad_output: Any) -> Any:
        """Given the loss's gradient with respect to the last forward's output, add each
        parameter's gradient to its ``grad`` and return the gradient for the input."""
        raise NotImplementedError(f"{type(self).__name__} does not define backward")

    def _saved(self, name: str) -> Any:
        """What the last forward saved for backward, or a clear error if there was none."""
        saved = self.__dict__.get(name)
        if saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return saved

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of ``forward``'s (first) output for an input of ``input_shape``."""
        return tuple(input_shape)

    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this module (without its weights), as
        JSON-serialisable values; ``from_config`` is its inverse."""
        return {}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Module:
        """A new module built from ``config()``'s output: ``cls(**config)`` by default."""
        return cls(**config)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        if not self._children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"  ({name}): " + repr(child).replace("\n", "\n  ")
                 for name, child in self._children.items()]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"
