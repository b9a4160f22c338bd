"""Backend-specific fast paths behind the generic driver's per-layer interface.

:func:`layer_runner` picks the kernel for an array namespace, cell and dtype, or
``None`` when the generic path (``xrnn.functional.recurrence``) should run. Both give
the same results to floating-point rounding. On NumPy that is the compiled kernel when
Numba is installed (``pip install xrnn[fast]``): :mod:`.numba_layer` (the whole loop
compiled for small layers; above, bidirectional layers a direction per core,
:mod:`.numba_threaded`, large one-direction layers their hidden units split between
two cores, :mod:`.numba_split`, else fused compiled steps) and :mod:`.numba_layernorm`
(LayerNorm cells); else the NumPy kernel: :mod:`.numpy_layer` and
:mod:`.layernorm_layer`. All take the per-step hooks. ``XRNN_KERNELS=0`` in the
environment, or ``with kernels_enabled(False):``, forces the generic path;
``XRNN_KERNELS=numpy`` / ``kernels_enabled("numpy")`` keeps only the NumPy kernel (for
comparisons and tests).
"""

from __future__ import annotations

import functools
import importlib
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
def _compiled(module: str = "numba_layer"):
    """A compiled kernel's module (``numba_layer``, ``numba_layernorm``), or ``None`` when
    Numba is missing or fails to load. Looked up once: a failed import is not cached by
    Python and would cost milliseconds on every forward."""
    try:
        return importlib.import_module(f".{module}", __name__)
    except ImportError:
        return None


def cpu_path() -> str:
    """Which kernel a NumPy float32/float64 layer runs on, in words (``xrnn info``)."""
    if not _enabled:
        return "generic driver (XRNN_KERNELS off)"
    compiled = None if _enabled == "numpy" else _compiled()
    if compiled is None:
        reason = "XRNN_KERNELS=numpy" if _enabled == "numpy" else "numba not installed"
        return f"NumPy kernel ({reason})"
    limits = ", ".join(f"{k} 2^{v.bit_length() - 1}" for k, v in compiled.MAX_STEP_WORK.items())
    threaded, packed = compiled.numba_threaded, compiled.numba_threaded.packed
    wider = (f"to {packed.L2_ROWS} where {packed.K_BLOCK} columns of them fit in half the "
             f"{packed.L2_BYTES >> 10} KiB L2" if packed.L2_BYTES else "L2 size unknown")
    if not threaded.blas.AVAILABLE:
        directions = "off: NumPy's BLAS is not scipy-openblas64"
    elif threaded.usable_cores() < 2:
        directions = "off: one core"
    else:
        directions = "from the main thread"
    return (f"numba {compiled.numba.__version__}: whole loop compiled for small layers "
            f"(B*G*H*P <= {limits}); above, bidirectional layers a direction per core "
            f"and one-direction layers from {compiled.numba_split.MIN_WORK:.2g} "
            f"multiply-adds a call (LSTMs of "
            f"{compiled.numba_split.BEFORE_WHOLE_LOOP['lstm']} batch rows or more also "
            f"below those limits) their hidden units split between two cores "
            f"({directions}; at one batch row and at {packed.MIN_ROWS}-{packed.MAX_ROWS}, "
            f"{wider}, each step's product on W_hh packed once a call), else fused "
            "compiled steps, "
            "as with per-step options and for LayerNorm cells")


def layer_runner(xp, cell, dtype) -> Callable | None:
    """The fast ``run_layer(x, states, weights, cell, *, keep, active, hooks, position)``
    (:func:`.numpy_layer.run_layer`) for this
    case, or ``None``: NumPy arrays of float32 or float64 (float16 takes the generic
    path); LayerNorm cells on their own kernels."""
    if not _enabled or not array_api_compat.is_numpy_namespace(xp):
        return None
    import numpy as np

    from . import layernorm_layer, numpy_layer

    if dtype not in (np.float32, np.float64):
        return None
    plain = not cell.norms
    if cell.name not in (numpy_layer.KINDS if plain else layernorm_layer.KINDS):
        return None
    numpy_kernel = numpy_layer if plain else layernorm_layer
    compiled = None if _enabled == "numpy" else _compiled(
        "numba_layer" if plain else "numba_layernorm")
    return (numpy_kernel if compiled is None else compiled).run_layer
