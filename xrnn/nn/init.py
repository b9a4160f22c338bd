"""Parameter initialisation: drawn on the host, moved to the selected backend."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import get_namespace


def uniform(rng: np.random.Generator, shape: tuple[int, ...], bound: float, dtype: str) -> Any:
    """U(-bound, bound) drawn on the host in float64, then moved to the selected backend,
    so one seed gives the same values on every backend."""
    xp = get_namespace()
    return xp.asarray(rng.uniform(-bound, bound, size=shape), dtype=getattr(xp, dtype))
