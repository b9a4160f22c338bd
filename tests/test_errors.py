"""Every bad input raises, and the message names the expected and the given value."""

from __future__ import annotations

import re

import numpy as np
import pytest

import xrnn
from xrnn.backend import BACKENDS


def other_backend() -> str:
    """An available backend other than the selected one."""
    return "array_api_strict" if xrnn.get_backend() == "numpy" else "numpy"


def data(shape, dtype="float32", seed=0):
    """Random normal data of ``shape`` on the selected backend."""
    return xrnn.asarray(np.random.default_rng(seed).normal(size=shape), dtype=dtype)


@pytest.fixture
def model(xp):
    """RNN(3, 4, num_layers=2): x (T, B, 3), h0 (2, B, 4)."""
    return xrnn.RNN(3, 4, num_layers=2, seed=0)


# -- RNN input ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5,), (5, 2, 3, 1)])
def test_input_of_wrong_rank(model, shape):
    with pytest.raises(ValueError, match=rf"rank 3.*rank {len(shape)}.*{re.escape(str(shape))}"):
        model(data(shape))


def test_input_wrong_feature_size(model):
    with pytest.raises(ValueError, match=r"3 features \(input_size\).*\(5, 2, 7\)"):
        model(data((5, 2, 7)))


def test_input_wrong_feature_size_unbatched(model):
    with pytest.raises(ValueError, match=r"3 features.*\(5, 2\)"):
        model(data((5, 2)))


@pytest.mark.parametrize("h0_shape, expected", [
    ((1, 2, 4), (2, 2, 4)),  # wrong number of layers
    ((2, 3, 4), (2, 2, 4)),  # wrong batch
    ((2, 2, 5), (2, 2, 4)),  # wrong hidden size
    ((2, 4), (2, 2, 4)),  # unbatched state for batched input
    ((2, 2), (2, 2, 4)),
], ids=["layers", "batch", "hidden", "rank2-for-batched", "rank2-wrong"])
def test_h0_wrong_shape_batched(model, h0_shape, expected):
    with pytest.raises(ValueError, match=re.escape(f"expected h0 of shape {expected}") + ".*"
                       + re.escape(str(h0_shape))):
        model(data((5, 2, 3)), data(h0_shape))


@pytest.mark.parametrize("h0_shape", [(2, 1, 4), (1, 4), (2, 5)])
def test_h0_wrong_shape_unbatched(model, h0_shape):
    with pytest.raises(ValueError, match=re.escape("expected h0 of shape (2, 4)") + ".*"
                       + re.escape(str(h0_shape))):
        model(data((5, 3)), data(h0_shape))


def test_h0_wrong_shape_bidirectional(xp):
    model = xrnn.RNN(3, 4, num_layers=2, bidirectional=True, seed=0)
    with pytest.raises(ValueError, match=re.escape("expected h0 of shape (4, 2, 4)")):
        model(data((5, 2, 3)), data((2, 2, 4)))


def test_h0_wrong_shape_batch_first_is_never_batch_first(xp):
    model = xrnn.RNN(3, 4, batch_first=True, seed=0)
    # x is (B=2, T=5, 3); h0 must be (1, 2, 4), not batch-first (2, 1, 4)
    with pytest.raises(ValueError, match=re.escape("expected h0 of shape (1, 2, 4)")):
        model(data((2, 5, 3)), data((2, 1, 4)))


def test_h0_of_another_dtype(model):
    with pytest.raises(TypeError, match=r"h0.*float64.*float32"):
        model(data((5, 2, 3)), data((2, 2, 4), dtype="float64"))


def test_float64_input_into_float32_model(model):
    with pytest.raises(TypeError, match=r"float64.*float32"):
        model(data((5, 2, 3), dtype="float64"))


def test_float32_input_into_float64_model(xp):
    model = xrnn.RNN(3, 4, dtype="float64", seed=0)
    with pytest.raises(TypeError, match=r"float32.*float64"):
        model(data((5, 2, 3), dtype="float32"))


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool"])
def test_non_floating_input(model, dtype):
    x = xrnn.asarray(np.ones((5, 2, 3)), dtype=dtype)
    with pytest.raises(TypeError, match=rf"real floating.*{dtype}"):
        model(x)


def test_non_array_input(model):
    with pytest.raises(TypeError, match="list"):
        model([[[0.0, 0.0, 0.0]]])


@pytest.mark.parametrize("shape", [(0, 2, 3), (0, 3), (5, 0, 3)])
def test_empty_time_or_batch_axis(model, shape):
    with pytest.raises(ValueError, match=r"empty.*" + re.escape(str(shape))):
        model(data(shape))


# -- backend mismatch --------------------------------------------------------------------

def test_input_from_another_backend(model):
    mine, other = xrnn.get_backend(), other_backend()
    with xrnn.use_backend(other):
        x = data((5, 2, 3))
    with pytest.raises(TypeError) as info:
        model(x)
    assert f"input is a {other} array" in str(info.value)
    assert f"parameters are {mine} arrays" in str(info.value)


def test_h0_from_another_backend(model):
    mine, other = xrnn.get_backend(), other_backend()
    x = data((5, 2, 3))
    with xrnn.use_backend(other):
        h0 = data((2, 2, 4))
    with pytest.raises(TypeError) as info:
        model(x, h0)
    assert f"h0 is a {other} array" in str(info.value)
    assert f"input is a {mine} array" in str(info.value)


def test_linear_input_from_another_backend(xp):
    layer = xrnn.Linear(3, 2, seed=0)
    mine, other = xrnn.get_backend(), other_backend()
    with xrnn.use_backend(other):
        x = data((4, 3))
    with pytest.raises(TypeError, match=rf"{other}.*{mine}"):
        layer(x)


# -- constructor -------------------------------------------------------------------------

@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5, "0.5", True])
def test_bad_dropout(xp, dropout):
    with pytest.raises(ValueError, match=r"dropout.*\[0, 1\).*" + re.escape(repr(dropout))):
        xrnn.RNN(3, 4, num_layers=2, dropout=dropout)


@pytest.mark.parametrize("nonlinearity", ["sigmoid", "Tanh", None])
def test_bad_nonlinearity(xp, nonlinearity):
    with pytest.raises(ValueError, match=re.escape(repr(nonlinearity)) + ".*tanh, relu, identity"):
        xrnn.RNN(3, 4, nonlinearity=nonlinearity)


@pytest.mark.parametrize("argument", ["input_size", "hidden_size", "num_layers"])
@pytest.mark.parametrize("value", [0, -1, 2.5, True, "3"])
def test_bad_sizes(xp, argument, value):
    sizes = dict(input_size=3, hidden_size=4, num_layers=1)
    sizes[argument] = value
    with pytest.raises(ValueError, match=rf"{argument} must be a positive integer, got "
                       + re.escape(repr(value))):
        xrnn.RNN(**sizes)


@pytest.mark.parametrize("dtype", ["int32", "bfloat16", "double", np.int32])
def test_bad_dtype(xp, dtype):
    with pytest.raises(ValueError, match=r"float16, float32, float64.*" + re.escape(repr(dtype))):
        xrnn.RNN(3, 4, dtype=dtype)


@pytest.mark.parametrize("argument", ["in_features", "out_features"])
def test_bad_linear_sizes(xp, argument):
    sizes = dict(in_features=3, out_features=2)
    sizes[argument] = 0
    with pytest.raises(ValueError, match=rf"{argument} must be a positive integer, got 0"):
        xrnn.Linear(**sizes)


# -- functional rnn ----------------------------------------------------------------------

def test_functional_wrong_number_of_weights(xp):
    weights = list(xrnn.RNN(3, 4, seed=0).state_dict().values())
    with pytest.raises(ValueError, match=r"expected 4 weight arrays.*got 3"):
        xrnn.functional.rnn(data((5, 2, 3)), None, weights[:3])
    with pytest.raises(ValueError, match=r"expected 8 weight arrays.*num_layers=2.*got 4"):
        xrnn.functional.rnn(data((5, 2, 3)), None, weights, num_layers=2)
    with pytest.raises(ValueError, match=r"expected 2 weight arrays.*bias=False.*got 4"):
        xrnn.functional.rnn(data((5, 2, 3)), None, weights, bias=False)


@pytest.mark.parametrize("name, bad_shape", [
    ("weight_ih_l0", (5, 3)),
    ("weight_hh_l0", (5, 4)),
    ("weight_hh_l0", (4, 5)),
    ("bias_ih_l0", (5,)),
    ("bias_hh_l0", (4, 1)),
], ids=["weight_ih-rows", "weight_hh-rows", "weight_hh-cols", "bias_ih-size", "bias_hh-rank"])
def test_functional_weight_of_wrong_shape(xp, name, bad_shape):
    state = dict(xrnn.RNN(3, 4, seed=0).state_dict())
    state[name] = data(bad_shape)
    with pytest.raises(ValueError, match=rf"weight {name} has shape {re.escape(str(bad_shape))}"):
        xrnn.functional.rnn(data((5, 2, 3)), None, list(state.values()))
    with pytest.raises(ValueError, match=rf"weight {name} has shape {re.escape(str(bad_shape))}"):
        xrnn.functional.rnn(data((5, 2, 3)), None, state)


def test_functional_mapping_missing_and_unexpected_keys(xp):
    state = dict(xrnn.RNN(3, 4, seed=0).state_dict())
    missing = {k: v for k, v in state.items() if k != "bias_hh_l0"}
    with pytest.raises(ValueError, match=r"missing \['bias_hh_l0'\]"):
        xrnn.functional.rnn(data((5, 2, 3)), None, missing)
    extra = dict(state, weight_ih_l1=data((4, 4)))
    with pytest.raises(ValueError, match=r"unexpected \['weight_ih_l1'\]"):
        xrnn.functional.rnn(data((5, 2, 3)), None, extra)


def test_functional_weights_from_two_backends(xp):
    weights = list(xrnn.RNN(3, 4, seed=0).state_dict().values())
    mine, other = xrnn.get_backend(), other_backend()
    with xrnn.use_backend(other):
        weights[1] = xrnn.asarray(xrnn.to_numpy(weights[1]))
    with pytest.raises(TypeError, match=rf"{mine}.*{other}"):
        xrnn.functional.rnn(data((5, 2, 3)), None, weights)


def test_functional_weights_of_two_dtypes(xp):
    weights = list(xrnn.RNN(3, 4, seed=0).state_dict().values())
    weights[2] = xrnn.asarray(xrnn.to_numpy(weights[2]), dtype="float64")
    with pytest.raises(TypeError, match=r"float32.*float64"):
        xrnn.functional.rnn(data((5, 2, 3)), None, weights)


def test_functional_bad_num_layers_and_dropout(xp):
    weights = list(xrnn.RNN(3, 4, seed=0).state_dict().values())
    with pytest.raises(ValueError, match=r"num_layers must be a positive integer, got 0"):
        xrnn.functional.rnn(data((5, 2, 3)), None, weights, num_layers=0)
    with pytest.raises(ValueError, match=r"dropout.*got 1\.0"):
        xrnn.functional.rnn(data((5, 2, 3)), None, weights, dropout=1.0)
    with pytest.raises(ValueError, match=r"nonlinearity 'gelu'.*tanh, relu, identity"):
        xrnn.functional.rnn(data((5, 2, 3)), None, weights, nonlinearity="gelu")


# -- Linear ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 2), (3, 2, 5), (1,)])
def test_linear_wrong_feature_count(xp, shape):
    layer = xrnn.Linear(3, 2, seed=0)
    with pytest.raises(ValueError, match=r"3 features \(in_features\).*" + re.escape(str(shape))):
        layer(data(shape))


def test_linear_wrong_dtype(xp):
    layer = xrnn.Linear(3, 2, seed=0)
    with pytest.raises(TypeError, match=r"float64.*float32"):
        layer(data((4, 3), dtype="float64"))


# -- backend names -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["jax-ish", "", "NumPy2", None])
def test_unknown_backend_name(xp, name):
    before = xrnn.get_backend()
    with pytest.raises(ValueError, match=re.escape(", ".join(BACKENDS))) as info:
        xrnn.set_backend(name)
    assert repr(name) in str(info.value)
    for backend in ("numpy", "cupy", "torch", "array_api_strict"):
        assert backend in str(info.value)
    assert xrnn.get_backend() == before


def test_unknown_backend_in_use_backend(xp):
    before = xrnn.get_backend()
    with pytest.raises(ValueError, match="jax-ish"):
        with xrnn.use_backend("jax-ish"):
            pass  # pragma: no cover
    assert xrnn.get_backend() == before


def test_unknown_dtype_name_in_asarray(xp):
    with pytest.raises(ValueError, match=r"'float8'.*float32"):
        xrnn.asarray([1.0], dtype="float8")
