"""Elementwise activations; they act on any shape, so they compose with (T, B, F) sequences."""

from __future__ import annotations

from typing import Any

from ..backend import get_namespace
from .module import Module


class ReLU(Module):
    """``max(x, 0)`` elementwise (NaN propagates); the gradient at 0 is 0, as in PyTorch."""

    def forward(self, x: Any) -> Any:
        self._input = x
        return get_namespace(x).maximum(x, 0.0)

    def backward(self, grad_output: Any) -> Any:
        xp = get_namespace(grad_output)
        return xp.where(self._saved("_input") > 0.0, grad_output, xp.zeros_like(grad_output))


class Tanh(Module):
    """``tanh(x)`` elementwise."""

    def forward(self, x: Any) -> Any:
        self._output = get_namespace(x).tanh(x)
        return self._output

    def backward(self, grad_output: Any) -> Any:
        y = self._saved("_output")
        return grad_output * (1.0 - y * y)


class Sigmoid(Module):
    """``1 / (1 + exp(-x))`` elementwise, computed as ``(1 + tanh(x/2)) / 2`` (no overflow)."""

    def forward(self, x: Any) -> Any:
        self._output = 0.5 + 0.5 * get_namespace(x).tanh(0.5 * x)
        return self._output

    def backward(self, grad_output: Any) -> Any:
        y = self._saved("_output")
        return grad_output * y * (1.0 - y)


class Identity(Module):
    """Returns its input unchanged."""

    def forward(self, x: Any) -> Any:
        get_namespace(x)  # rejects non-arrays
        return x

    def backward(self, grad_output: Any) -> Any:
        return grad_output
