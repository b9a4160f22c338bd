"""``Sequential``: layers applied in order, recurrent ones included."""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from .module import Module


@functools.cache
def _takes_lengths(cls: type) -> bool:
    """Whether ``cls.forward`` has a ``lengths`` parameter."""
    return "lengths" in inspect.signature(cls.forward).parameters


class Sequential(Module):
    """Chain modules: ``Sequential(RNN(2, 8), ReLU(), Linear(8, 1))``.

    Per-timestep layers (``Linear``, activations) act on the last axis of a (T, B, F)
    sequence; a recurrent layer consumes the whole sequence and passes on its output
    sequence (its final state ``h_n`` is dropped: a following :class:`LastStep` gives
    the top layer's final states). ``model(x, lengths=lengths)`` passes ``lengths`` to
    every layer whose ``forward`` takes it (recurrent and pooling layers).
    Child parameters are named ``"{index}.{name}"``, as in ``torch.nn.Sequential``.

    A layer with an ``inherit_layout(recurrent)`` method (the pooling layers, whose
    ``batch_first`` and ``bidirectional`` default to ``None``) gets it called by
    :meth:`add` with the nearest recurrent layer before it, so that unset options take
    that layer's values; explicit values are kept.
    """

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        for layer in layers:
            self.add(layer)

    def add(self, layer: Module) -> Sequential:
        """Append ``layer``; returns ``self``."""
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential takes xrnn modules, got {type(layer).__name__}")
        recurrent = None
        for earlier in self.modules():  # in order: the last recurrent one is the nearest
            if earlier.returns_state:
                recurrent = earlier
        for module in layer.modules():
            if module.returns_state:
                recurrent = module
            elif recurrent is not None and hasattr(module, "inherit_layout"):
                module.inherit_layout(recurrent)
        self._children[str(len(self._children))] = layer
        return self

    def __len__(self) -> int:
        return len(self._children)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._children.values())

    def __getitem__(self, index: int) -> Module:
        return list(self._children.values())[index]

    def forward(self, x: Any, lengths: Any = None) -> Any:
        """Each layer in turn; ``lengths`` (B,) goes to every layer that takes it."""
        for layer in self:
            if lengths is not None and _takes_lengths(type(layer)):
                x = layer(x, lengths=lengths)
            else:
                x = layer(x)
            if layer.returns_state:
                x = x[0]
        return x

    def backward(self, grad_output: Any) -> Any:
        """Run every layer's backward in reverse order; returns the input's gradient
        (``None`` when the first layer is an :class:`Embedding`: indices have none)."""
        for layer in reversed(list(self)):
            grad_output = layer.backward(grad_output)
        return grad_output

    def config(self) -> dict[str, Any]:
        return {"layers": [{"class": type(layer).__name__, "config": layer.config()}
                           for layer in self]}

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(input_shape)
        for layer in self:
            shape = layer.output_shape(shape)
        return shape

    def summary(self, input_shape: tuple[int, ...], file: TextIO | None = None) -> str:
        """Print (to ``file``, default stdout) and return a table of each layer's output
        shape and parameter count; recurrent layers are marked, since the loop over time
        happens inside them and nowhere else."""
        rows = [("", "input", str(tuple(input_shape)), "", "")]
        shape = tuple(input_shape)
        for index, layer in enumerate(self):
            shape = layer.output_shape(shape)
            note = ("recurrent: loops over time" if layer.returns_state
                    else "over time: drops the time axis" if getattr(layer, "reduces_time", False)
                    else "per timestep")
            rows.append((str(index), repr(layer), str(shape), f"{layer.num_parameters():,}", note))
        header = ("#", "layer", "output shape", "params", "")
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(5)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [fmt.format(*header).rstrip(), "-" * (sum(widths) + 8)]
        lines += [fmt.format(*row).rstrip() for row in rows]
        lines += ["-" * (sum(widths) + 8), f"total params: {self.num_parameters():,}"]
        text = "\n".join(lines)
        print(text, file=file or sys.stdout)
        return text
