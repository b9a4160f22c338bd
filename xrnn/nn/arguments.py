"""Checks of constructor arguments shared by the modules."""

from __future__ import annotations

from typing import Any

from ..backend import get_namespace, resolve_dtype

FLOAT_DTYPES = ("float16", "float32", "float64")


def check_dtype_name(dtype: str) -> str:
    """``dtype`` if it names a supported floating dtype (else ``ValueError``) that the
    selected backend has (else ``TypeError``: array_api_strict has no float16)."""
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(FLOAT_DTYPES)}, got {dtype!r}")
    resolve_dtype(get_namespace(), dtype)
    return dtype


def check_positive_int(value: Any, name: str) -> int:
    """``value`` if it is a positive int, else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value
