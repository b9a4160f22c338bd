"""What a new user met (issue 12): each error names the real fix, and the fix it names works."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

import xrnn
from xrnn import backend


def other_backend() -> str:
    """An available backend other than the selected one."""
    return "array_api_strict" if xrnn.get_backend() == "numpy" else "numpy"


def ones(shape, dtype="float32"):
    return xrnn.asarray(np.ones(shape), dtype=dtype)


# -- an array of another backend: which side is which ----------------------------------------

def test_torch_tensor_into_numpy_model_names_both_fixes(torch):
    with xrnn.use_backend("numpy"):
        model = xrnn.RNN(3, 4, seed=0)
        x = torch.ones(5, 2, 3)
        with pytest.raises(TypeError) as info:
            model(x)
        message = str(info.value)
        assert "input is a torch array but the parameters are numpy arrays" in message
        assert "xrnn.asarray(x)" in message and "model.to('torch')" in message
        assert "model.to('numpy')" not in message  # the model is on NumPy already
        model(xrnn.asarray(x))  # the first fix named works
        model.to("torch")(x)  # and so does the second


def test_input_of_another_backend_when_the_model_was_moved(xp):
    mine, other = xrnn.get_backend(), other_backend()
    model = xrnn.Linear(3, 2, seed=0).to(other)  # the model is not on the selected backend
    x = ones((4, 3))
    with pytest.raises(TypeError) as info:
        model(x)
    message = str(info.value)
    assert f"input is a {mine} array but the parameters are {other} arrays" in message
    assert f"xrnn.backend.move(x, {other!r})" in message and f"model.to({mine!r})" in message
    assert "xrnn.asarray(x)" not in message  # it would convert to the selected backend
    model(xrnn.backend.move(x, other))


# -- a float64 input into a float32 model ----------------------------------------------------

@pytest.mark.parametrize("layer", ["rnn", "linear"])
def test_dtype_mismatch_names_the_conversions(xp, layer):
    model = xrnn.RNN(3, 4, seed=0) if layer == "rnn" else xrnn.Linear(3, 4, seed=0)
    x = ones((5, 2, 3), dtype="float64")
    with pytest.raises(TypeError) as info:
        model(x)
    message = str(info.value)
    assert "float64" in message and "float32" in message
    assert "xrnn.asarray(x, dtype='float32')" in message
    assert "dtype='float64'" in message.split("build the model with", 1)[1]
    assert ("x.astype('float32')" in message) == (xrnn.get_backend() in ("numpy", "cupy"))
    model(xrnn.asarray(x, dtype="float32"))
    if xrnn.get_backend() == "numpy":
        model(x.astype("float32"))
    wide = xrnn.RNN(3, 4, seed=0, dtype="float64") if layer == "rnn" else xrnn.Linear(
        3, 4, seed=0, dtype="float64")
    wide(x)


# -- dtype= takes NumPy and backend dtypes, and stores the name ------------------------------

def dtype_forms(xp, name: str) -> list:
    return [name, getattr(np, name), np.dtype(name), getattr(xp, name)]


@pytest.mark.parametrize("layer", [xrnn.RNN, xrnn.LSTM, xrnn.GRU, xrnn.Linear])
def test_dtype_accepts_numpy_and_backend_dtypes(xp, layer):
    for dtype in dtype_forms(xp, "float64"):
        model = layer(3, 4, dtype=dtype, seed=0)
        assert model.dtype == "float64", dtype
        assert json.loads(json.dumps(model.config()))["dtype"] == "float64"
        for name, p in model.named_parameters():
            assert p.data.dtype == xp.float64, (dtype, name)
        assert layer.from_config(model.config()).dtype == "float64"


def test_dtype_of_torch_namespace(torch):
    with xrnn.use_backend("torch"):
        assert xrnn.RNN(3, 4, dtype=torch.float64).weight_ih_l0.data.dtype == torch.float64
        assert xrnn.asarray([1.0], dtype=np.float64).dtype == torch.float64


def test_asarray_takes_numpy_dtypes(xp):
    for dtype in dtype_forms(xp, "float32"):
        assert xrnn.asarray([1.0, 2.0], dtype=dtype).dtype == xp.float32, dtype


@pytest.mark.parametrize("dtype", [np.int32, np.dtype("complex64"), "double", object])
def test_dtype_rejects_other_types_naming_the_forms(xp, dtype):
    with pytest.raises(ValueError, match=r"float16, float32, float64 \(a name, a NumPy dtype or "
                       rf"a dtype of the '{xrnn.get_backend()}' backend\), got"):
        xrnn.RNN(3, 4, dtype=dtype)


def test_numpy_float16_where_the_backend_lacks_it():
    pytest.importorskip("array_api_strict", reason="the backend without float16 (xrnn[test])")
    with xrnn.use_backend("array_api_strict"):
        with pytest.raises(TypeError, match="'float16' is not available on the "
                           "'array_api_strict' backend"):
            xrnn.RNN(3, 4, dtype=np.float16)


# -- a recurrent layer's (output, h_n) where an array is expected ----------------------------

def test_tuple_from_a_recurrent_layer_says_take_output(xp):
    hint = r"got a tuple; recurrent layers return \(output, h_n\): pass output = rnn\(x\)\[0\]"
    rnn = xrnn.RNN(3, 4, seed=0)
    x = ones((5, 2, 3))
    calls = {
        "Linear": lambda: xrnn.Linear(4, 1, seed=0)(rnn(x)),
        "Tanh": lambda: xrnn.Tanh()(rnn(x)),
        "RNN": lambda: xrnn.RNN(4, 4, seed=0)(rnn(x)),
        "LSTM output into Linear": lambda: xrnn.Linear(4, 1)(xrnn.LSTM(3, 4, seed=0)(x)),
        "functional.rnn": lambda: xrnn.functional.rnn(rnn(x), None, rnn.state_dict()),
        "mse_loss": lambda: xrnn.MSELoss()(rnn(x), ones((5, 2, 4))),
        "to_numpy": lambda: xrnn.to_numpy(rnn(x)),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match=hint):
            call()
    xrnn.Linear(4, 1, seed=0)(rnn(x)[0])  # the fix named works


def test_list_says_asarray(xp):
    with pytest.raises(TypeError, match=r"got list; xrnn.asarray\(data\) makes an array"):
        xrnn.RNN(3, 4, seed=0)([[[1.0, 2.0, 3.0]]])


# -- CuPy installed, no usable GPU -----------------------------------------------------------

class CUDARuntimeError(RuntimeError):
    """Stands in for cupy_backends.cuda.api.runtime.CUDARuntimeError."""


def fake_cupy(monkeypatch, device_count) -> None:
    """Make ``import cupy`` give a module whose device count is ``device_count()``."""
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=device_count))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(backend, "_namespaces",
                        {k: v for k, v in backend._namespaces.items() if k != "cupy"})


def no_driver() -> int:
    raise CUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient "
                           "for CUDA runtime version")


@pytest.mark.parametrize("device_count, reason", [
    (no_driver, "CUDARuntimeError: cudaErrorInsufficientDriver: CUDA driver version"),
    (lambda: 0, "no CUDA device is visible"),
], ids=["driver-error", "no-device"])
@pytest.mark.parametrize("how", ["set_backend", "environment"])
def test_cupy_without_gpu_says_numpy_runs_on_the_cpu(monkeypatch, device_count, reason, how):
    fake_cupy(monkeypatch, device_count)
    with pytest.raises(backend.BackendUnavailableError) as info:
        if how == "set_backend":
            xrnn.set_backend("cupy")
        else:
            monkeypatch.setattr(backend, "_selected", None)
            monkeypatch.setenv("XRNN_BACKEND", "cupy")
            xrnn.get_backend()
    lines = str(info.value).splitlines()
    assert len(lines) == 3, lines
    assert lines[0] == "backend 'cupy' is unavailable: no usable CUDA GPU"
    assert reason in lines[1]
    assert lines[2] == "set XRNN_BACKEND=numpy (or xrnn.set_backend('numpy')) to run on the CPU"
    listed = backend.available_backends()["cupy"]  # one line for `xrnn info`
    assert listed.startswith("no usable CUDA GPU: ") and reason in listed and "\n" not in listed
