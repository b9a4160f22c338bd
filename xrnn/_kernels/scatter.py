"""Row scatter-add fast paths (an embedding's gradient) for NumPy and torch.

:func:`scatter_add_runner` returns ``add(indices, values, num_rows)`` for a namespace
that has a native scatter-add, or ``None``: then ``xrnn.functional.embedding`` runs its
generic Array API version (CuPy included). Both sum the values of repeated indices; only
the order of the additions (so the rounding) may differ. ``XRNN_KERNELS=0`` (or
``xrnn._kernels.kernels_enabled(False)``) forces the generic path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import array_api_compat

from .. import _kernels


def _numpy_add(indices: Any, values: Any, num_rows: int) -> Any:
    import numpy as np

    out = np.zeros((num_rows,) + tuple(values.shape[1:]), dtype=values.dtype)
    np.add.at(out, indices, values)
    return out


def _torch_add(indices: Any, values: Any, num_rows: int) -> Any:
    import torch

    out = torch.zeros((num_rows,) + tuple(values.shape[1:]), dtype=values.dtype,
                      device=values.device)
    return out.index_add_(0, indices.to(torch.int64), values)


def scatter_add_runner(xp: Any) -> Callable[[Any, Any, int], Any] | None:
    """The native ``add(indices (N,), values (N, ...), num_rows) -> (num_rows, ...)`` for
    ``xp``, or ``None`` where the generic path should run."""
    if not _kernels._enabled:
        return None
    if array_api_compat.is_numpy_namespace(xp):
        return _numpy_add
    if array_api_compat.is_torch_namespace(xp):
        return _torch_add
    return None
