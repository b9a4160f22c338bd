"""Checks of constructor arguments shared by the modules."""

from __future__ import annotations

from typing import Any

from ..backend import dtype_name, get_backend, get_namespace, resolve_dtype

FLOAT_DTYPES = ("float16", "float32", "float64")


def check_dtype_name(dtype: Any) -> str:
    """The name (``"float32"``) of a floating ``dtype`` given as that name, as a NumPy dtype
    (``np.float32``, ``np.dtype("float32")``) or as a dtype of the selected backend
    (``torch.float32``): ``ValueError`` for anything else, ``TypeError`` where the selected
    backend lacks it (array_api_strict has no float16)."""
    xp = get_namespace()
    name = dtype_name(dtype, xp)
    if name not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(FLOAT_DTYPES)} (a name, a NumPy "
                         f"dtype or a dtype of the {get_backend()!r} backend), got {dtype!r}")
    resolve_dtype(xp, name)
    return name


def check_positive_int(value: Any, name: str) -> int:
    """``value`` if it is a positive int, else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value
