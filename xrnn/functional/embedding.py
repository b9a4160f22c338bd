"""Embedding lookup and its gradient (a row scatter-add), on any backend."""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from .._kernels.scatter import scatter_add_runner
from ..backend import get_namespace

#: The most elements of one chunk's one-hot matrix in :func:`scatter_add_rows`' generic path.
MAX_ONE_HOT = 1 << 22


def check_indices(indices: Any, num_embeddings: int) -> None:
    """``TypeError`` unless ``indices`` is an integer array, ``ValueError`` naming the
    first index outside ``[0, num_embeddings)`` and where it is."""
    xp = get_namespace(indices)
    if not xp.isdtype(indices.dtype, "integral"):
        raise TypeError(f"embedding indices must be an integer array, got dtype {indices.dtype}")
    flat = xp.reshape(indices, (-1,))
    bad = (flat < 0) | (flat >= num_embeddings)
    if flat.shape[0] and bool(xp.any(bad)):
        first = int(xp.argmax(xp.astype(bad, xp.int8)))  # argmax gives the first maximum
        where = tuple(int(i) for i in np.unravel_index(first, tuple(indices.shape)))
        raise ValueError(f"embedding indices must lie in [0, {num_embeddings}) "
                         f"(num_embeddings={num_embeddings}), got {int(flat[first])} at "
                         f"index {where}")


def embedding(indices: Any, weight: Any) -> Any:
    """Rows of ``weight`` (N, E) picked by ``indices`` (any shape, integers in [0, N)):
    ``(*indices.shape, E)``, as ``torch.nn.functional.embedding``."""
    check_indices(indices, weight.shape[0])
    xp = get_namespace(indices, weight)
    flat = xp.astype(xp.reshape(indices, (-1,)), xp.int64)
    rows = xp.take(weight, flat, axis=0)
    return xp.reshape(rows, tuple(indices.shape) + (weight.shape[1],))


def scatter_add_rows(indices: Any, values: Any, num_rows: int) -> Any:
    """``out`` (num_rows, E) with ``out[i]`` the sum of the rows ``values[k]`` (values
    (N, E)) whose ``indices[k]`` (N,) is ``i``: repeated indices accumulate, other rows
    are zero. NumPy and torch use their native scatter-add; elsewhere one-hot matrix
    products over chunks of at most :data:`MAX_ONE_HOT` elements, which give the same
    sums (only the order of the additions may differ) and keep NaN and infinity in
    their own rows."""
    xp = get_namespace(indices, values)
    native = scatter_add_runner(xp)
    if native is not None:
        return native(indices, values, num_rows)
    finite = xp.isfinite(values)
    if bool(xp.all(finite)):
        return _one_hot_sum(xp, indices, values, num_rows)
    # A one-hot product would spread 0 * inf = NaN to every row: sum the finite values,
    # then set each entry that an inf, a -inf or a NaN lands in as IEEE addition would.
    zero = xp.zeros_like(values)
    total = _one_hot_sum(xp, indices, xp.where(finite, values, zero), num_rows)

    def any_in_row(hit: Any) -> Any:  # (num_rows, E): does a hit land in this entry?
        return _one_hot_sum(xp, indices, xp.astype(hit, values.dtype), num_rows) > 0

    positive, negative = any_in_row(values == xp.inf), any_in_row(values == -xp.inf)
    nan = any_in_row(xp.isnan(values)) | (positive & negative)
    total = xp.where(positive, xp.full_like(total, xp.inf), total)
    total = xp.where(negative, xp.full_like(total, -xp.inf), total)
    return xp.where(nan, xp.full_like(total, xp.nan), total)


def _one_hot_sum(xp: Any, indices: Any, values: Any, num_rows: int) -> Any:
    """``scatter_add_rows`` for finite ``values``: one-hot (num_rows, chunk) @ values."""
    device = array_api_compat.device(values)
    rows = xp.reshape(xp.arange(num_rows, dtype=xp.int64, device=device), (num_rows, 1))
    indices = xp.astype(indices, xp.int64)
    out = xp.zeros((num_rows, values.shape[1]), dtype=values.dtype, device=device)
    chunk = max(1, MAX_ONE_HOT // num_rows)
    count = indices.shape[0]
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)  # the standard leaves out-of-bounds slices unspecified
        one_hot = xp.astype(rows == xp.reshape(indices[start:stop], (1, -1)), values.dtype)
        out = out + one_hot @ values[start:stop, ...]
    return out
