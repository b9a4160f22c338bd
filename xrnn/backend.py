"""The backend dispatcher: the only module that knows backend names.

The backend is read from the environment variable ``XRNN_BACKEND`` at first use
(``numpy`` when unset) and can be changed in code with :func:`set_backend` or,
for a block, :func:`use_backend`. Library code never imports NumPy or CuPy to
compute: it asks :func:`get_namespace` for the array-API namespace ``xp`` of its
inputs (or of the selected backend when it creates arrays).
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "asarray",
    "available_backends",
    "backend_of",
    "dtype_name",
    "get_backend",
    "get_namespace",
    "move",
    "set_backend",
    "to_numpy",
    "use_backend",
]

#: Backend names accepted by ``XRNN_BACKEND`` and :func:`set_backend`.
BACKENDS: tuple[str, ...] = ("numpy", "cupy", "torch", "array_api_strict")
ENV_VAR = "XRNN_BACKEND"

_NAMESPACE_MODULES = {
    "numpy": "array_api_compat.numpy",
    "cupy": "array_api_compat.cupy",
    "torch": "array_api_compat.torch",
    "array_api_strict": "array_api_strict",
}

_NO_GPU = "no usable CUDA GPU"  # starts the reason when CuPy is installed but cannot run

_selected: str | None = None  # read from the environment at first use
_namespaces: dict[str, ModuleType] = {}  # backends already checked and imported


class BackendUnavailableError(RuntimeError):
    """A known backend was asked for but cannot run here (package or device missing)."""


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name.strip().lower() not in BACKENDS:
        raise ValueError(
            f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}"
        )
    return name.strip().lower()


def _unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot run here, or None when it can."""
    package = {"array_api_strict": "array_api_strict"}.get(name, name)
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        hint = {"cupy": " (pip install 'xrnn[cuda]')", "torch": " (pip install 'xrnn[parity]')",
                "array_api_strict": " (pip install 'xrnn[test]')"}.get(name, "")
        return f"{package} is not installed{hint}: {exc}"
    if name == "cupy":
        try:
            count = module.cuda.runtime.getDeviceCount()
        except Exception as exc:  # CUDA driver or runtime missing
            return (f"{_NO_GPU}: CuPy is installed but no CUDA device is usable "
                    f"({type(exc).__name__}: {exc})")
        if count < 1:
            return f"{_NO_GPU}: CuPy is installed but no CUDA device is visible"
    return None


def available_backends() -> dict[str, str | None]:
    """Map each backend name to ``None`` if it can run here, else the reason it cannot."""
    return {name: _unavailable_reason(name) for name in BACKENDS}


def _namespace_for(name: str) -> ModuleType:
    if name not in _namespaces:
        reason = _unavailable_reason(name)
        if reason is not None:
            headline, _, detail = reason.partition(": ")
            if headline == _NO_GPU:  # the fix is a setting, not a package: say which
                raise BackendUnavailableError(
                    f"backend {name!r} is unavailable: {_NO_GPU}\n  {detail}\n"
                    f"set {ENV_VAR}=numpy (or xrnn.set_backend('numpy')) to run on the CPU")
            raise BackendUnavailableError(f"backend {name!r} is unavailable: {reason}")
        _namespaces[name] = importlib.import_module(_NAMESPACE_MODULES[name])
    return _namespaces[name]


def get_backend() -> str:
    """The selected backend's name (reads ``XRNN_BACKEND`` on first use)."""
    global _selected
    if _selected is None:
        raw = os.environ.get(ENV_VAR, "numpy") or "numpy"
        try:
            name = _check_name(raw)
        except ValueError as exc:
            raise ValueError(f"{ENV_VAR}={raw!r}: {exc}") from None
        _namespace_for(name)  # fail now, never fall back silently
        _selected = name
    return _selected


def set_backend(name: str) -> None:
    """Select the backend by name for arrays created from now on."""
    global _selected
    name = _check_name(name)
    _namespace_for(name)
    _selected = name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[ModuleType]:
    """Select ``name`` inside a ``with`` block and restore the previous choice after it.

    Yields the backend's namespace ``xp``.
    """
    global _selected
    previous = _selected
    set_backend(name)
    try:
        yield get_namespace()
    finally:
        _selected = previous


def backend_of(array: Any) -> str:
    """The backend name an array belongs to (``TypeError`` for non-arrays)."""
    if type(array) is np.ndarray:  # the common case, without array_api_compat's checks
        return "numpy"
    if array_api_compat.is_numpy_array(array):
        return "numpy"
    if array_api_compat.is_cupy_array(array):
        return "cupy"
    if array_api_compat.is_torch_array(array):
        return "torch"
    if type(array).__module__.startswith("array_api_strict"):
        return "array_api_strict"
    if isinstance(array, tuple):
        given = ("a tuple; recurrent layers return (output, h_n): pass output = rnn(x)[0] "
                 "(xrnn.asarray(data) makes an array of Python data)")
    elif isinstance(array, list):
        given = ("list; xrnn.asarray(data) makes an array of Python data (recurrent layers "
                 "return a tuple (output, h_n): pass output = rnn(x)[0])")
    else:
        given = type(array).__name__
    raise TypeError(f"expected an array of one of the backends {', '.join(BACKENDS)}, got {given}")


def get_namespace(*arrays: Any) -> ModuleType:
    """The array-API namespace ``xp`` of ``arrays``; of the selected backend when none are given.

    Arrays of different backends raise ``TypeError`` naming them.
    """
    if not arrays:
        return _namespace_for(get_backend())
    if all(type(a) is np.ndarray for a in arrays):  # the common case, checked cheaply
        return _namespace_for("numpy")
    names = {backend_of(a) for a in arrays if a is not None}
    if len(names) > 1:
        raise TypeError(
            f"arrays from different backends were mixed: {', '.join(sorted(names))}; "
            "move them to one backend first (xrnn.backend.asarray or model.to(...))"
        )
    return array_api_compat.array_namespace(*(a for a in arrays if a is not None))


def to_numpy(array: Any) -> np.ndarray:
    """Any backend's array as a host NumPy array (NumPy arrays are returned as they are)."""
    name = backend_of(array)
    if name == "numpy":
        return array
    if name == "cupy":
        return array.get()
    if name == "torch":
        return array.detach().cpu().resolve_conj().numpy()
    return np.from_dlpack(array)


def move(array: Any, name: str) -> Any:
    """``array`` on backend ``name`` (same dtype and values). DLPack is used where both
    sides can share memory; otherwise the data goes through host memory, explicitly."""
    name = _check_name(name)
    if backend_of(array) == name:
        return array
    xp = _namespace_for(name)
    try:
        moved = xp.from_dlpack(array)
    except (TypeError, ValueError, RuntimeError, BufferError, AttributeError, NotImplementedError):
        moved = None
    # DLPack keeps the source's device (a CuPy array becomes a CUDA torch tensor), while
    # each backend's arrays live on its default device (torch's here: the CPU).
    if moved is not None and array_api_compat.device(moved) == array_api_compat.device(
            xp.empty((0,))):
        return moved
    return xp.asarray(to_numpy(array))


_DTYPE_NAMES = ("float16", "float32", "float64", "int32", "int64", "bool")


def dtype_name(dtype: Any, xp: ModuleType | None = None) -> str | None:
    """The name (``"float32"``, ...) of ``dtype`` given as that name, as a NumPy dtype or
    scalar type (``np.float32``, ``np.dtype("float32")``) or as a dtype of ``xp`` (the
    selected backend's namespace by default: ``torch.float32``); None for anything else."""
    if isinstance(dtype, str):
        return dtype if dtype in _DTYPE_NAMES else None
    if isinstance(dtype, (np.dtype, type)):
        try:
            name = np.dtype(dtype).name
        except TypeError:
            return None
        return name if name in _DTYPE_NAMES else None
    xp = get_namespace() if xp is None else xp
    for name in _DTYPE_NAMES:
        candidate = getattr(xp, name, None)
        if type(candidate) is type(dtype) and candidate == dtype:
            return name
    return None


def resolve_dtype(xp: ModuleType, dtype: Any) -> Any:
    """``xp``'s dtype for a name such as ``"float32"`` or a NumPy dtype (unrecognised
    non-string values pass through); ``ValueError`` for an unknown name, ``TypeError``
    where ``xp`` lacks it (float16 on array_api_strict)."""
    if dtype is None:
        return None
    name = dtype_name(dtype, xp)
    if name is None:
        if isinstance(dtype, str):
            raise ValueError(f"unsupported dtype {dtype!r}; expected a name such as 'float32' "
                             "or 'float64'")
        return dtype
    if not hasattr(xp, name):
        raise TypeError(f"dtype {name!r} is not available on the {get_backend()!r} backend "
                        f"(the Array API standard defines no {name}); use float32 or "
                        f"float64 there, or a backend that has {name}")
    return getattr(xp, name)


def asarray(obj: Any, dtype: Any = None) -> Any:
    """``obj`` (nested lists, scalars, or any backend's array) as an array of the selected backend.

    ``dtype`` is a name (``"float32"``) or a dtype of the selected backend. Python data
    takes NumPy's dtype rules (floats -> float64) on every backend unless ``dtype`` is
    given. An array of another backend is copied through host memory: an explicit,
    visible transfer.
    """
    xp = get_namespace()
    target = get_backend()
    try:
        source = backend_of(obj)
    except TypeError:
        obj = np.asarray(obj)
        source = "numpy"
    if source != target:
        obj = to_numpy(obj)
    return xp.asarray(obj, dtype=resolve_dtype(xp, dtype))
