"""Elementwise activations; they act on any shape, so they compose with (T, B, F) sequences."""

from __future__ import annotations

from typing import Any

from ..backend import get_namespace
from .module import Module


class ReLU(Module):
    """``max(x, 0)`` elementwise (NaN propagates)."""

    def forward(self, x: Any) -> Any:
        return get_namespace(x).maximum(x, 0.0)


class Tanh(Module):
    """``tanh(x)`` elementwise."""

    def forward(self, x: Any) -> Any:
        return get_namespace(x).tanh(x)


class Sigmoid(Module):
    """``1 / (1 + exp(-x))`` elementwise, computed as ``(1 + tanh(x/2)) / 2`` (no overflow)."""

    def forward(self, x: Any) -> Any:
        return 0.5 + 0.5 * get_namespace(x).tanh(0.5 * x)


class Identity(Module):
    """Returns its input unchanged."""

    def forward(self, x: Any) -> Any:
        get_namespace(x)  # rejects non-arrays
        return x
