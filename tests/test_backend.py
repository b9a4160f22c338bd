"""The dispatcher: selection, errors, conversions."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import numpy as np
import pytest

import xrnn
from xrnn import backend


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "XRNN_BACKEND"} | env
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environment, timeout=120)


def test_default_backend_is_numpy():
    result = _run("import xrnn; print(xrnn.get_backend())")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "numpy"


def test_environment_variable_selects_backend():
    result = _run("import xrnn; print(xrnn.get_backend(), type(xrnn.RNN(2, 3).weight_ih_l0.data).__module__)",
                  XRNN_BACKEND="array_api_strict")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "array_api_strict"
    assert result.stdout.split()[1].startswith("array_api_strict")


def test_unknown_environment_value_lists_valid_names(monkeypatch):
    monkeypatch.setattr(backend, "_selected", None)
    monkeypatch.setenv("XRNN_BACKEND", "tensorflow")
    with pytest.raises(ValueError, match="XRNN_BACKEND='tensorflow'.*numpy, cupy, torch, array_api_strict"):
        backend.get_backend()


def test_set_backend_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown backend 'jax'; expected one of numpy, cupy"):
        xrnn.set_backend("jax")


def test_use_backend_restores_previous_choice_even_on_error():
    before = xrnn.get_backend()
    with pytest.raises(RuntimeError):
        with xrnn.use_backend("array_api_strict"):
            assert xrnn.get_backend() == "array_api_strict"
            raise RuntimeError("inside")
    assert xrnn.get_backend() == before


def _forget_cupy(monkeypatch):
    namespaces = dict(backend._namespaces)
    namespaces.pop("cupy", None)
    monkeypatch.setattr(backend, "_namespaces", namespaces)


def test_cupy_not_installed_is_an_error_not_a_fallback(monkeypatch):
    _forget_cupy(monkeypatch)
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` fail
    with pytest.raises(backend.BackendUnavailableError, match="cupy is not installed"):
        xrnn.set_backend("cupy")
    assert backend.available_backends()["cupy"].startswith("cupy is not installed")


def test_cupy_without_cuda_device_is_an_error(monkeypatch):
    _forget_cupy(monkeypatch)
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 0))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(backend.BackendUnavailableError, match="no CUDA device is visible"):
        xrnn.set_backend("cupy")

    def broken_driver():
        raise RuntimeError("cudaErrorInsufficientDriver")

    fake.cuda.runtime.getDeviceCount = broken_driver
    with pytest.raises(backend.BackendUnavailableError, match="no CUDA device is usable.*Driver"):
        xrnn.set_backend("cupy")


def test_get_namespace_without_arrays_is_the_selected_backend(xp):
    assert xrnn.get_namespace() is xp
    assert backend.backend_of(xp.zeros(3)) == xrnn.get_backend()


def test_get_namespace_of_arrays(xp):
    a = xp.ones(3)
    assert xrnn.get_namespace(a, a).__name__ == xp.__name__


def test_mixed_backends_are_named(xp):
    other = "array_api_strict" if xrnn.get_backend() != "array_api_strict" else "numpy"
    a = xp.ones(2)
    with xrnn.use_backend(other):
        b = xrnn.asarray([1.0, 2.0])
    with pytest.raises(TypeError, match=f"different backends.*{other}"):
        xrnn.get_namespace(a, b)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_asarray_and_to_numpy_round_trip(xp, dtype):
    host = np.arange(12, dtype=dtype).reshape(3, 4) / 7
    array = xrnn.asarray(host)
    assert backend.backend_of(array) == xrnn.get_backend()
    assert array.dtype == getattr(xp, dtype)
    back = xrnn.to_numpy(array)
    assert isinstance(back, np.ndarray) and back.dtype == host.dtype
    np.testing.assert_array_equal(back, host)


def test_asarray_casts_and_takes_lists(xp):
    array = xrnn.asarray([[1, 2], [3, 4]], dtype="float64")
    assert array.dtype == xp.float64
    np.testing.assert_array_equal(xrnn.to_numpy(array), [[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(ValueError, match="unsupported dtype 'complex128'"):
        xrnn.asarray([1.0], dtype="complex128")


def test_asarray_moves_arrays_between_backends(xp):
    torch = pytest.importorskip("torch", reason="torch is needed as the source backend")
    array = xrnn.asarray(torch.arange(4, dtype=torch.float64))
    assert backend.backend_of(array) == xrnn.get_backend()
    np.testing.assert_array_equal(xrnn.to_numpy(array), [0.0, 1.0, 2.0, 3.0])


def test_backend_of_rejects_non_arrays():
    with pytest.raises(TypeError, match="got list"):
        backend.backend_of([1.0])
