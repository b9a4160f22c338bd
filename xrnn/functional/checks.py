"""Argument checks shared by the functional core and the modules.

Each raises ``TypeError`` (backend, dtype) or ``ValueError`` (shape) naming the
expected and the given value; nothing is ever broadcast silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..backend import backend_of, dtype_name, get_backend, get_namespace, to_numpy


def check_compatible(x: Any, reference: Any, *, features: int, what: str) -> None:
    """``x`` must be a real floating array of ``reference``'s backend and dtype with
    ``features`` entries on its last axis (``what`` names that size in messages)."""
    x_backend, ref_backend = backend_of(x), backend_of(reference)
    if x_backend != ref_backend:
        convert = ("xrnn.asarray(x)" if get_backend() == ref_backend
                   else f"xrnn.backend.move(x, {ref_backend!r})")
        raise TypeError(f"input is a {x_backend} array but the parameters are {ref_backend} "
                        f"arrays: convert the input to {ref_backend} with {convert}, or move "
                        f"the model to {x_backend} with model.to({x_backend!r})")
    xp = get_namespace(x)
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"input must be a real floating array of dtype {reference.dtype}, "
                        f"got dtype {x.dtype}")
    if x.dtype != reference.dtype:
        given, wanted = dtype_name(x.dtype, xp), dtype_name(reference.dtype, xp)
        cast = (f"x.astype({wanted!r}) or " if x_backend in ("numpy", "cupy") else "")
        raise TypeError(f"input dtype {x.dtype} does not match the parameters' dtype "
                        f"{reference.dtype}: convert the input with {cast}"
                        f"xrnn.asarray(x, dtype={wanted!r}), or build the model with "
                        f"dtype={given!r}")
    if x.ndim < 1 or x.shape[-1] != features:
        raise ValueError(f"expected input with {features} features ({what}) on the last axis, "
                         f"got shape {tuple(x.shape)}")


def check_input(x: Any, weights: Sequence[Any], *, input_size: int, batch_first: bool) -> None:
    """A recurrent layer's input: rank 3 (or 2, unbatched), non-empty, fitting ``weights``."""
    backend_of(x)  # TypeError for non-arrays
    first = backend_of(weights[0])
    for w in weights[1:]:
        if backend_of(w) != first or w.dtype != weights[0].dtype:
            raise TypeError(f"all weights must share one backend and dtype, got "
                            f"{backend_of(weights[0])} {weights[0].dtype} and "
                            f"{backend_of(w)} {w.dtype}")
    if x.ndim not in (2, 3):
        layout = "(B, T, H_in)" if batch_first else "(T, B, H_in)"
        raise ValueError(f"expected input of rank 3 {layout} or rank 2 (T, H_in) unbatched, "
                         f"got rank {x.ndim} with shape {tuple(x.shape)}")
    check_compatible(x, weights[0], features=input_size, what="input_size")
    if any(n == 0 for n in x.shape[:-1]):
        raise ValueError(f"input has an empty time or batch axis: shape {tuple(x.shape)}")


def check_state(state: Any, expected: tuple[int, ...], name: str, x: Any,
                layout: str | None = None) -> None:
    """A state (or a gradient): ``x``'s backend and dtype, exactly shape ``expected``
    (``layout`` describes that shape in messages; a state's layout by default)."""
    if backend_of(state) != backend_of(x):
        raise TypeError(f"{name} is a {backend_of(state)} array but the input is a "
                        f"{backend_of(x)} array")
    if tuple(state.shape) != expected:
        if layout is None:
            layout = "(L*D, H) for unbatched input" if len(expected) == 2 else "(L*D, B, H)"
        raise ValueError(f"expected {name} of shape {expected}, i.e. {layout}, "
                         f"got {tuple(state.shape)}")
    if state.dtype != x.dtype:
        raise TypeError(f"{name} dtype {state.dtype} does not match the input dtype {x.dtype}")


def check_lengths(lengths: Any, steps: int, batch: int) -> np.ndarray:
    """Sequence lengths as host integers, one per batch entry, each in [1, steps]."""
    try:
        host = np.asarray(to_numpy(lengths))
    except TypeError:
        host = np.asarray(lengths)
    if host.ndim != 1 or host.shape[0] != batch:
        raise ValueError(f"expected one length per sequence, {batch} in all, got shape "
                         f"{host.shape}")
    if host.size and not np.issubdtype(host.dtype, np.integer):
        raise TypeError(f"lengths must be integers, got dtype {host.dtype}")
    bad = host[(host < 1) | (host > steps)]
    if bad.size:
        raise ValueError(f"every length must be in [1, T={steps}], got {bad.tolist()}")
    return host.astype(np.int64)


def check_all_finite(array: Any, name: str) -> None:
    """``ValueError`` if ``array`` holds a NaN or an infinity, naming ``name``, how many
    entries are non-finite and the index (and value) of the first in C order."""
    xp = get_namespace(array)
    bad = xp.reshape(xp.logical_not(xp.isfinite(array)), (-1,))
    count = int(xp.sum(xp.astype(bad, xp.int64)))
    if count == 0:
        return
    first = int(xp.argmax(xp.astype(bad, xp.int8)))  # argmax returns the first maximum
    index = tuple(int(i) for i in np.unravel_index(first, tuple(array.shape)))
    value = float(xp.reshape(array, (-1,))[first])
    raise ValueError(f"{name} must be finite (check_finite=True), got {count} non-finite "
                     f"of {bad.shape[0]} entries; the first is {value} at index {index}")
