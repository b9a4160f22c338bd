"""Backend-specific fast paths behind the generic driver's per-layer interface.

:func:`layer_runner` picks the kernel for an array namespace, cell and dtype, or
``None`` when the generic path (``xrnn.functional.recurrence``) should run. Both give
the same results to floating-point rounding; ``XRNN_KERNELS=0`` in the environment, or
``with kernels_enabled(False):``, forces the generic path (for comparisons and tests).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import array_api_compat

_enabled = os.environ.get("XRNN_KERNELS", "1").strip() not in ("0", "false", "no", "off")


@contextmanager
def kernels_enabled(enabled: bool) -> Iterator[None]:
    """Turn the fast paths on or off for the duration of a ``with`` block."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    try:
        yield
    finally:
        _enabled = previous


def layer_runner(xp, cell, dtype) -> Callable | None:
    """The fast ``run_layer(x, states, weights, cell, *, keep, active)`` for this case, or
    ``None``: NumPy arrays of float32 or float64 (float16 takes the generic path)."""
    if not _enabled or not array_api_compat.is_numpy_namespace(xp):
        return None
    import numpy as np

    from . import numpy_layer

    if cell.name not in numpy_layer.KINDS or dtype not in (np.float32, np.float64):
        return None
    return numpy_layer.run_layer
