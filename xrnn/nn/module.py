"""``Parameter`` and ``Module``: thin stateful wrappers over the functional core."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import array_api_compat
import numpy as np

from ..backend import backend_of, get_namespace, move, to_numpy

_grad_enabled: ContextVar[bool] = ContextVar("xrnn_grad_enabled", default=True)


@contextmanager
def no_grad() -> Iterator[None]:
    """Inference: inside the block, forwards record nothing for ``backward``.

    Forwards then use less memory and run faster; their outputs are the same. A
    ``backward`` with no recorded forward left raises ``RuntimeError``. Like
    ``torch.no_grad``.
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


def check_gradient_shape(module: Module, grad: Any, like_shape: Any,
                         name: str = "grad_output") -> None:
    """``ValueError`` unless ``grad`` has the shape ``like_shape`` (a shape, or an array
    whose shape is meant) of the output of the forward call that ``module.backward`` is
    pairing it with."""
    expected = tuple(getattr(like_shape, "shape", like_shape))
    given = getattr(grad, "shape", None)
    if given is None or tuple(given) != expected:
        shown = type(grad).__name__ if given is None else tuple(given)
        raise ValueError(f"{type(module).__name__}.backward: expected {name} of shape "
                         f"{expected}, the output of the forward call it pairs with (the "
                         f"last one not yet backpropagated), got {shown}")


def _consumes_tape(backward: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a module's ``backward`` so that the forward call it read with
    :meth:`Module.saved_for_backward` leaves the tape only when it returns normally:
    after an error (a gradient of the wrong shape, say) the tape is unchanged."""

    @functools.wraps(backward)
    def wrapper(self: Module, *args: Any, **kwargs: Any) -> Any:
        outermost = not self._backward_depth  # super().backward runs inside the same call
        if outermost:
            self._tape_read = False
        self._backward_depth += 1
        try:
            result = backward(self, *args, **kwargs)
        finally:
            self._backward_depth -= 1
        if outermost and self._tape_read:
            self._tape.pop()
            self._tape_read = False
        return result

    wrapper._consumes_tape = True  # type: ignore[attr-defined]
    return wrapper


class Module:
    """Base class: named parameters, child modules, train/eval mode, ``state_dict``.

    Assigning a :class:`Module` or a :class:`Parameter` to an attribute registers it,
    as in ``torch.nn.Module``: ``self.encoder = GRU(...)`` makes the encoder's
    parameters ``encoder.weight_ih_l0``, ... of this module. Parameter names follow
    PyTorch (``weight_ih_l0``, ``0.weight`` inside a ``Sequential``), so state dicts
    move between the two libraries unchanged.

    **The contract of a subclass.** ``forward(*arrays, ...)`` computes the outputs and
    records what ``backward`` needs with :meth:`save_for_backward`.
    ``backward(*grad_outputs)`` takes gradients shaped like ``forward``'s outputs
    (``None`` for an output that the loss does not use, where the module allows it),
    reads the record with :meth:`saved_for_backward`, adds each parameter's gradient to
    its ``.grad`` (:meth:`Parameter.accumulate`) and returns the gradients of
    ``forward``'s array inputs. A module that only calls child modules records nothing
    itself: its ``backward`` calls the children's ``backward`` in reverse order.

    **Repeated calls.** Every forward call outside :func:`no_grad` keeps its own tape
    entry; every ``backward`` consumes one, the last call first. Calling a module twice
    and running ``backward`` for the second call, then the first, accumulates both
    calls' gradients exactly. A module keeps at most :attr:`tape_limit` unconsumed
    calls (the oldest is dropped, and a backward that would need it raises);
    :meth:`zero_grad` refuses to start a new step while calls are unconsumed, and
    :meth:`release` discards them.
    """

    #: True for recurrent modules, whose call returns ``(output, state)``.
    returns_state: bool = False
    #: The most unconsumed forward calls a module keeps; the oldest is dropped beyond it.
    tape_limit: int = 8

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_children", {})
        self.training = True
        self._tape: list[Any] = []
        self._dropped = 0
        self._backward_depth = 0
        self._tape_read = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        backward = cls.__dict__.get("backward")
        if backward is not None and not getattr(backward, "_consumes_tape", False):
            cls.backward = _consumes_tape(backward)

    # -- structure ---------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        registries = self.__dict__.get("_parameters"), self.__dict__.get("_children")
        if registries[0] is None and isinstance(value, (Module, Parameter)):
            raise AttributeError(f"cannot assign {type(value).__name__} {name!r} before "
                                 f"{type(self).__name__}.__init__ called super().__init__()")
        if isinstance(value, Parameter):
            self.__dict__.pop(name, None)
            self._children.pop(name, None)
            self._parameters[name] = value
        elif isinstance(value, Module):
            self.__dict__.pop(name, None)
            self._parameters.pop(name, None)
            self._children[name] = value
        else:
            if registries[0] is not None and name in self._parameters and value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to parameter {name!r} "
                                f"of {type(self).__name__}: expected a Parameter or None")
            for registry in registries:
                if registry is not None:
                    registry.pop(name, None)
            object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        for registry in (self._parameters, self._children):
            if name in registry:
                del registry[name]
                return
        object.__delattr__(self, name)

    def __getattr__(self, name: str) -> Any:
        """Parameters and children by name, as in PyTorch: ``rnn.weight_ih_l0``."""
        for registry in ("_parameters", "_children"):
            found = self.__dict__.get(registry, {})
            if name in found:
                return found[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def register_parameter(self, name: str, data: Any) -> Parameter:
        """A new :class:`Parameter` holding ``data``, registered as ``name``."""
        parameter = Parameter(data)
        self._parameters[name] = parameter
        return parameter

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """``(name, module)`` of the direct children, in registration order."""
        yield from self._children.items()

    def children(self) -> Iterator[Module]:
        """The direct children, in registration order."""
        yield from self._children.values()

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """``(name, module)`` of this module (name ``prefix``, ``""`` by default) and
        of every descendant (``"encoder"``, ``"encoder.0"``, ...), depth first."""
        yield prefix, self
        for name, child in self._children.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        """This module and every descendant, depth first."""
        for _, module in self.named_modules():
            yield module

    def named_parameters(self, prefix: str = "", remove_duplicate: bool = True
                         ) -> Iterator[tuple[str, Parameter]]:
        """``(name, Parameter)`` pairs of this module and its children, in order. A
        parameter shared by two modules (tied weights) comes once, under its first
        name, unless ``remove_duplicate=False`` (as in PyTorch)."""
        seen: set[int] = set()
        for name, parameter in self._all_parameters(prefix):
            if remove_duplicate and id(parameter) in seen:
                continue
            seen.add(id(parameter))
            yield name, parameter

    def _all_parameters(self, prefix: str) -> Iterator[tuple[str, Parameter]]:
        for name, parameter in self._parameters.items():
            yield prefix + name, parameter
        for child_name, child in self._children.items():
            yield from child._all_parameters(f"{prefix}{child_name}.")

    def parameters(self) -> Iterator[Parameter]:
        """Every ``Parameter`` once, in ``named_parameters`` order."""
        for _, parameter in self.named_parameters():
            yield parameter

    def num_parameters(self) -> int:
        """The number of scalar parameters."""
        return sum(int(np.prod(p.shape)) for p in self.parameters())

    # -- the tape of forward calls -----------------------------------------
    def save_for_backward(self, *values: Any) -> None:
        """Record one forward call: ``values`` are what ``backward`` will need.

        Called once per forward call; does nothing under :func:`no_grad`. Beyond
        :attr:`tape_limit` unconsumed calls, the oldest record is dropped.
        """
        if not is_grad_enabled():
            return
        self._tape.append(values)
        if len(self._tape) > self.tape_limit:
            del self._tape[0]
            self._dropped += 1

    def saved_for_backward(self) -> tuple[Any, ...]:
        """The values the last unconsumed forward call recorded, for ``backward``.

        The record leaves the tape when ``backward`` returns normally; if it raises,
        the tape is unchanged. Raises ``RuntimeError`` when no recorded call is left.
        """
        if not self._tape:
            name = type(self).__name__
            if self._dropped:
                raise RuntimeError(
                    f"{name}.backward: the forward call it would pair with was dropped; a "
                    f"module keeps at most tape_limit={self.tape_limit} unconsumed calls. "
                    f"Set {name}.tape_limit higher, or backpropagate sooner")
            raise RuntimeError(
                f"{name}.backward called before forward, or more times than forward: each "
                "backward consumes one recorded forward call (the last one first), and "
                "forwards under xrnn.no_grad() record nothing")
        self._tape_read = True
        return self._tape[-1]

    def unconsumed_calls(self) -> dict[str, int]:
        """``{module name: count}`` of recorded forward calls no backward consumed yet,
        for this module and its descendants (``""`` names this module)."""
        return {name: len(m._tape) for name, m in self.named_modules() if m._tape}

    def release(self) -> Module:
        """Discard every unconsumed forward record here and in every descendant (a
        forward you do not backpropagate); returns ``self``."""
        for module in self.modules():
            module._tape.clear()
            module._dropped = 0
        return self

    def zero_grad(self) -> None:
        """Start a training step: reset every parameter's gradient to ``None``.

        Raises ``RuntimeError`` if forward calls are still unconsumed: their gradients
        would otherwise be mixed into the next step's. Backpropagate them, call
        :meth:`release`, or run forwards you do not backpropagate under :func:`no_grad`.
        """
        pending = self.unconsumed_calls()
        if pending:
            where = ", ".join(f"{name or type(self).__name__}: {count}"
                              for name, count in pending.items())
            raise RuntimeError(
                f"zero_grad: forward calls that no backward consumed are still recorded "
                f"({where}). Run backward for them, call .release() to discard them, or "
                "run forwards you do not backpropagate (evaluation, inference) under "
                "xrnn.no_grad()")
        for parameter in self.parameters():
            parameter.grad = None

    def to(self, backend: str) -> Module:
        """Move every parameter (and gradient) to ``backend`` ('numpy', 'cupy', ...), in
        place; returns ``self``. Values and dtypes are kept exactly. Unconsumed forward
        records hold arrays of the old backend, so they are discarded."""
        for parameter in self.parameters():
            parameter.data = move(parameter.data, backend)
            if parameter.grad is not None:
                parameter.grad = move(parameter.grad, backend)
        self.release()
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
        return {name: p.data for name, p in self.named_parameters(remove_duplicate=False)}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Copy arrays of any backend (NumPy, torch tensors, ...) into the parameters.

        Values are cast to the module's dtype and moved to its backend. Names and every
        value's shape are checked before any value is converted or copied, so an
        untrusted mapping cannot make it allocate more than the module's own size, and
        a failed load leaves the module unchanged.
        """
        own = dict(self.named_parameters(remove_duplicate=False))
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise ValueError(f"state_dict does not match {type(self).__name__}: "
                             f"missing keys {missing}, unexpected keys {unexpected}")
        selected = {name: value for name, value in state_dict.items() if name in own}
        for name, value in selected.items():
            shape = getattr(value, "shape", None)
            if shape is None:
                raise TypeError(f"state_dict entry {name!r} is a {type(value).__name__}; "
                                "expected an array or tensor")
            if tuple(shape) != own[name].shape:
                raise ValueError(f"state_dict entry {name!r} has shape {tuple(shape)}; "
                                 f"expected {own[name].shape}")
        updates = {}
        for name, value in selected.items():
            try:
                host = to_numpy(value)
            except TypeError:
                host = np.asarray(value)
            target = own[name].data
            xp = get_namespace(target)
            updates[name] = xp.asarray(np.asarray(host), dtype=target.dtype,
                                       device=array_api_compat.device(target))
        for name, data in updates.items():
            own[name].data = data

    # -- calling -----------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def backward(self, grad_output: Any) -> Any:
        """Given the loss's gradient with respect to the output of the last unconsumed
        forward call, add each parameter's gradient to its ``grad`` and return the
        gradient for that call's input."""
        raise NotImplementedError(f"{type(self).__name__} does not define backward")

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
