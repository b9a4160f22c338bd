"""Inverted dropout with masks drawn on the host from a NumPy ``Generator``.

Drawing on the host makes a seed give the same masks on every backend; the mask
is moved to the array's backend once per call (one transfer per layer, never per
timestep).
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from ..backend import get_namespace


def as_generator(generator: np.random.Generator | int | None) -> np.random.Generator:
    """A NumPy ``Generator`` from a generator, a seed, or ``None`` (fresh entropy)."""
    if isinstance(generator, np.random.Generator):
        return generator
    return np.random.default_rng(generator)


def check_probability(p: float, name: str = "dropout") -> float:
    """``p`` as a float in [0, 1), else ``ValueError`` naming ``name``."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        what = "dropout probability" if name == "dropout" else name
        raise ValueError(f"{what} must be a number in [0, 1), got {p!r}")
    return float(p)


def dropout(x: Any, p: float, *, training: bool = True,
            generator: np.random.Generator | int | None = None) -> Any:
    """Zero each element of ``x`` with probability ``p`` and scale the rest by ``1/(1-p)``.

    Returns ``x`` unchanged when ``p == 0`` or ``training`` is false. Shapes: any.
    """
    p = check_probability(p)
    if not training or p == 0.0:
        return x
    return x * dropout_mask(x, p, as_generator(generator))


def dropout_mask(x: Any, p: float, generator: np.random.Generator) -> Any:
    """A mask like ``x`` (its shape, dtype, backend): 0 with probability ``p``, else ``1/(1-p)``."""
    keep = generator.random(tuple(x.shape)) >= p
    return get_namespace(x).asarray(keep.astype(np.float64) / (1.0 - p), dtype=x.dtype,
                                    device=array_api_compat.device(x))


def keep_mask(shape: tuple[int, ...], p: float, generator: np.random.Generator, like: Any) -> Any:
    """A 0/1 array of ``shape`` in ``like``'s dtype and backend, 1 with probability ``p``
    (zoneout's choice to keep the previous value of a unit)."""
    keep = generator.random(shape) < p
    return get_namespace(like).asarray(keep.astype(np.float64), dtype=like.dtype,
                                       device=array_api_compat.device(like))
