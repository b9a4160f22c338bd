"""Elementwise activations; they act on any shape, so they compose with (T, B, F) sequences."""

from __future__ import annotations

from typing import Any

from ..backend import get_namespace
from .module import Module, check_gradient_shape


class ReLU(Module):
    """``max(x, 0)`` elementwise (NaN propagates); the gradient at 0 is 0, as in PyTorch."""

    def forward(self, x: Any) -> Any:
        self.save_for_backward(x)
        return get_namespace(x).maximum(x, 0.0)

    def backward(self, grad_output: Any) -> Any:
        xp = get_namespace(grad_output)
        (x,) = self.saved_for_backward()
        check_gradient_shape(self, grad_output, x)
        return xp.where(x > 0.0, grad_output, xp.zeros_like(grad_output))


class Tanh(Module):
    """``tanh(x)`` elementwise."""

    def forward(self, x: Any) -> Any:
        y = get_namespace(x).tanh(x)
        self.save_for_backward(y)
        return y

    def backward(self, grad_output: Any) -> Any:
        (y,) = self.saved_for_backward()
        check_gradient_shape(self, grad_output, y)
        return grad_output * (1.0 - y * y)


class Sigmoid(Module):
    """``1 / (1 + exp(-x))`` elementwise, computed as ``(1 + tanh(x/2)) / 2`` (no overflow)."""

    def forward(self, x: Any) -> Any:
        y = 0.5 + 0.5 * get_namespace(x).tanh(0.5 * x)
        self.save_for_backward(y)
        return y

    def backward(self, grad_output: Any) -> Any:
        (y,) = self.saved_for_backward()
        check_gradient_shape(self, grad_output, y)
        return grad_output * y * (1.0 - y)


class Identity(Module):
    """Returns its input unchanged."""

    def forward(self, x: Any) -> Any:
        get_namespace(x)  # rejects non-arrays
        self.save_for_backward(tuple(x.shape))
        return x

    def backward(self, grad_output: Any) -> Any:
        (shape,) = self.saved_for_backward()
        check_gradient_shape(self, grad_output, shape)
        return grad_output
