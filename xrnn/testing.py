"""Testing helpers usable on every backend."""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import backend_of, to_numpy

_DEFAULT_TOLERANCE = {  # dtype name -> (rtol, atol)
    "float16": (1e-3, 1e-3),
    "float32": (1e-5, 1e-5),
    "float64": (1e-10, 1e-12),
}


def _host(array: Any) -> np.ndarray:
    try:
        return np.asarray(to_numpy(array))
    except TypeError:  # plain Python or NumPy-convertible data
        return np.asarray(array)


def assert_close(actual: Any, desired: Any, *, rtol: float | None = None,
                 atol: float | None = None, backend: str | None = None) -> None:
    """Assert ``actual`` (an array of any backend) equals ``desired`` within tolerance.

    Shapes must match exactly (no broadcasting). ``backend``, when given, is the
    backend ``actual`` must belong to. Default tolerances come from ``actual``'s
    dtype: float32 rtol = atol = 1e-5; float64 rtol 1e-10, atol 1e-12.
    """
    if backend is not None and backend_of(actual) != backend:
        raise AssertionError(f"expected a {backend} array, got a {backend_of(actual)} array")
    a, d = _host(actual), _host(desired)
    if a.shape != d.shape:
        raise AssertionError(f"shape mismatch: actual {a.shape}, desired {d.shape}")
    default_rtol, default_atol = _DEFAULT_TOLERANCE.get(a.dtype.name, (0.0, 0.0))
    np.testing.assert_allclose(a, d, rtol=default_rtol if rtol is None else rtol,
                               atol=default_atol if atol is None else atol)
