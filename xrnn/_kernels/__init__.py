"""Backend-specific fast paths behind the generic driver's per-layer interface.

:func:`layer_runner` picks the kernel for an array namespace, cell and dtype, or
``None`` when the generic path (``xrnn.functional.recurrence``) should run. Both give
the same results to floating-point rounding. On NumPy that is the compiled kernel
(:mod:`.numba_layer`, when Numba is installed: ``pip install xrnn[fast]``) for small
layers and the NumPy kernel (:mod:`.numpy_layer`) otherwise; LayerNorm cells
(``layer_norm=True``) have their own NumPy kernel (:mod:`.layernorm_layer`, which takes
the per-step hooks too). ``XRNN_KERNELS=0`` in the
environment, or ``with kernels_enabled(False):``, forces the generic path;
``XRNN_KERNELS=numpy`` / ``kernels_enabled("numpy")`` keeps only the NumPy kernel (for
comparisons and tests).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import array_api_compat

_OFF = ("0", "false", "no", "off")
#: False (generic path only), "numpy" (NumPy kernel only) or True (every kernel)
_enabled: bool | str = os.environ.get("XRNN_KERNELS", "1").strip().lower()
_enabled = False if _enabled in _OFF else "numpy" if _enabled == "numpy" else True


@contextmanager
def kernels_enabled(enabled: bool | str) -> Iterator[None]:
    """Turn the fast paths on (``True``), off (``False``) or to the NumPy kernel only
    (``"numpy"``) for the duration of a ``with`` block."""
    global _enabled
    if enabled not in (True, False, "numpy"):
        raise ValueError(f"kernels_enabled takes True, False or 'numpy', got {enabled!r}")
    previous, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = previous


@functools.cache
def _compiled():
    """The compiled kernel's module, or ``None`` when Numba is missing or fails to load.
    Looked up once: a failed import is not cached by Python and would cost milliseconds
    on every forward."""
    try:
        from . import numba_layer
    except ImportError:
        return None
    return numba_layer


def cpu_path() -> str:
    """Which kernel a NumPy float32/float64 layer runs on, in words (``xrnn info``)."""
    if not _enabled:
        return "generic driver (XRNN_KERNELS off)"
    compiled = None if _enabled == "numpy" else _compiled()
    if compiled is None:
        reason = "XRNN_KERNELS=numpy" if _enabled == "numpy" else "numba not installed"
        return f"NumPy kernel ({reason})"
    limits = ", ".join(f"{k} {v}" for k, v in compiled.MAX_STEP_WORK.items())
    return (f"numba {compiled.numba.__version__} kernel for small layers "
            f"(B*G*H*P <= {limits}), NumPy kernel above")


def layer_runner(xp, cell, dtype, *, hooked: bool = False) -> Callable | None:
    """The fast ``run_layer(x, states, weights, cell, *, keep, active)`` for this case, or
    ``None``: NumPy arrays of float32 or float64 (float16 takes the generic path).
    ``hooked``: the layers have per-step options (reset, recurrent dropout, zoneout), so
    the runner must take ``hooks=`` (one ``StepHooks`` per direction): only the NumPy
    kernel does."""
    if not _enabled or not array_api_compat.is_numpy_namespace(xp):
        return None
    import numpy as np

    from . import layernorm_layer, numpy_layer

    if dtype not in (np.float32, np.float64):
        return None
    if cell.norms:  # never the compiled kernel, which has no LayerNorm
        return layernorm_layer.run_layer if cell.name in layernorm_layer.KINDS else None
    if cell.name not in numpy_layer.KINDS:
        return None
    compiled = None if _enabled == "numpy" or hooked else _compiled()
    return numpy_layer.run_layer if compiled is None else compiled.run_layer
