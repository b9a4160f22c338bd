"""Helpers for the shapes learners start from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .backend import asarray, get_namespace


def from_timesteps(steps: Sequence[Any], *, dtype: str = "float32") -> Any:
    """Stack a list of timesteps into a (T, B, F) array of the selected backend.

    Each step is (B, F) — a batch of feature vectors — or (F,) for a single sequence
    (then B = 1). Nested lists work too: ``from_timesteps([[0.1, 0.2], [0.3, 0.4]])``
    is one sequence of T = 2 steps with F = 2 features, shape (2, 1, 2).
    """
    if len(steps) == 0:
        raise ValueError("from_timesteps needs at least one timestep, got an empty sequence")
    arrays = [asarray(step, dtype=dtype) for step in steps]
    shapes = {tuple(a.shape) for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"all timesteps must have the same shape, got {sorted(shapes)}")
    rank = arrays[0].ndim
    if rank not in (1, 2):
        raise ValueError(f"each timestep must be (F,) or (B, F), got shape {tuple(arrays[0].shape)}")
    xp = get_namespace(*arrays)
    sequence = xp.stack(arrays)
    return xp.expand_dims(sequence, axis=1) if rank == 1 else sequence
