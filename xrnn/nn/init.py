"""Parameter initialisation: drawn on the host, moved to the selected backend.

Every built-in module creates its parameters through :func:`create` (by way of
:func:`uniform` or :func:`normal`). Inside :func:`shape_only`, ``create`` draws nothing
and returns a :class:`ShapeOnly` placeholder instead, counted against a budget: this is
how ``xrnn.load`` builds the model a file describes, checks it against the file's
arrays, and only then reads them, without ever allocating what an untrusted file's
architecture claims. A custom module whose parameters come from these functions gets
the same protection.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import get_namespace


@dataclass(frozen=True)
class ShapeOnly:
    """A parameter's shape and dtype name, with no data: what :func:`create` returns
    inside :func:`shape_only`."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class _Budget:
    """The most placeholder arrays and elements one :func:`shape_only` block may create."""

    def __init__(self, max_arrays: int, max_elements: int, source: str) -> None:
        self.max_arrays, self.max_elements, self.source = max_arrays, max_elements, source
        self.arrays = self.elements = 0

    def take(self, shape: tuple[int, ...], dtype: str) -> ShapeOnly:
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
            raise ValueError(f"a parameter shape must be non-negative integers, got {shape!r}")
        self.arrays += 1
        self.elements += math.prod(shape)
        if self.arrays > self.max_arrays:
            raise ValueError(f"it needs more than {self.max_arrays} parameter arrays, the "
                             f"limit {self.source}")
        if self.elements > self.max_elements:
            raise ValueError(f"its parameters exceed {self.max_elements} elements in all, "
                             f"the limit {self.source}, at one of shape {shape} ({dtype})")
        return ShapeOnly(shape, dtype)


_budget: ContextVar[_Budget | None] = ContextVar("xrnn_shape_only", default=None)


@contextmanager
def shape_only(max_arrays: int, max_elements: int, source: str = "given"
               ) -> Iterator[None]:
    """Inside the block, :func:`create` (so :func:`uniform`, :func:`normal`) returns
    :class:`ShapeOnly` placeholders and draws nothing; creating more than
    ``max_arrays`` of them, or more than ``max_elements`` elements in all, raises
    ``ValueError`` at once, so a module built from an untrusted configuration fails
    before it loops over, or allocates, what the configuration claims. ``source`` says
    in the error where the limits come from."""
    token = _budget.set(_Budget(max_arrays, max_elements, source))
    try:
        yield
    finally:
        _budget.reset(token)


def create(shape: tuple[int, ...], dtype: str, draw: Callable[[tuple[int, ...]], Any]) -> Any:
    """A new parameter array of ``shape`` and ``dtype`` (a name) on the selected backend,
    from ``draw(shape)`` (host values, any float dtype); a :class:`ShapeOnly` placeholder,
    drawing nothing, inside :func:`shape_only`. Every initialiser goes through here."""
    shape = tuple(shape)
    budget = _budget.get()
    if budget is not None:
        return budget.take(shape, dtype)
    xp = get_namespace()
    return xp.asarray(draw(shape), dtype=getattr(xp, dtype))


def uniform(rng: np.random.Generator, shape: tuple[int, ...], bound: float, dtype: str) -> Any:
    """U(-bound, bound) drawn on the host in float64, then moved to the selected backend,
    so one seed gives the same values on every backend."""
    return create(shape, dtype, lambda size: rng.uniform(-bound, bound, size=size))


def normal(rng: np.random.Generator, shape: tuple[int, ...], mean: float, std: float,
           dtype: str) -> Any:
    """N(mean, std**2) drawn on the host in float64, then moved to the selected backend,
    so one seed gives the same values on every backend."""
    return create(shape, dtype, lambda size: rng.normal(mean, std, size=size))
