"""Modules: parameter layout and init, state dicts, Linear, activations, Sequential.

Every test takes the ``xp`` fixture and so runs once per available backend; PyTorch
(CPU) is the reference wherever values are compared.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest

import xrnn
from xrnn.backend import backend_of

from .conftest import torch_rnn_like

RNN_CONFIGS = [
    dict(num_layers=1, bidirectional=False, bias=True),
    dict(num_layers=2, bidirectional=False, bias=False),
    dict(num_layers=2, bidirectional=True, bias=True),
    dict(num_layers=3, bidirectional=True, bias=False),
    dict(num_layers=3, bidirectional=False, bias=True),
]


def host(array) -> np.ndarray:
    return np.asarray(xrnn.to_numpy(array))


def params_on_host(module) -> dict[str, np.ndarray]:
    return {name: host(p.data).copy() for name, p in module.named_parameters()}


def torch_out(tensor) -> np.ndarray:
    return tensor.detach().numpy()


# -- parameter names, order, shapes ------------------------------------------------------

@pytest.mark.parametrize("config", RNN_CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_rnn_parameter_names_order_and_shapes_match_torch(xp, torch, config):
    model = xrnn.RNN(3, 4, **config, seed=0)
    reference = torch.nn.RNN(3, 4, **config)
    expected = [(name, tuple(t.shape)) for name, t in reference.state_dict().items()]

    named = list(model.named_parameters())
    assert [(name, p.shape) for name, p in named] == expected
    assert all(isinstance(p, xrnn.Parameter) for _, p in named)
    # parameters() yields the very same objects, in the same order
    params = list(model.parameters())
    assert len(params) == len(named)
    assert all(a is b for a, (_, b) in zip(params, named))
    assert list(model.state_dict()) == [name for name, _ in expected]
    assert model.num_parameters() == sum(int(t.numel()) for t in reference.state_dict().values())


# -- initialisation ----------------------------------------------------------------------

def test_init_within_pytorch_bound(xp):
    hidden = 5
    model = xrnn.RNN(3, hidden, num_layers=2, bidirectional=True, seed=1)
    bound = 1.0 / math.sqrt(hidden)
    for name, p in model.named_parameters():
        values = host(p.data)
        assert np.all(np.abs(values) <= bound), name
        # really spread over the range, not all zero or constant
        assert values.max() - values.min() > 0.2 * bound, name


def test_same_seed_same_weights_on_every_backend(xp):
    model = xrnn.RNN(3, 4, num_layers=2, bidirectional=True, seed=42)
    with xrnn.use_backend("numpy"):
        on_numpy = xrnn.RNN(3, 4, num_layers=2, bidirectional=True, seed=42)
    assert all(backend_of(p.data) == xrnn.get_backend() for p in model.parameters())
    mine, theirs = params_on_host(model), params_on_host(on_numpy)
    assert list(mine) == list(theirs)
    for name in mine:
        np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)


def test_different_seeds_give_different_weights(xp):
    a = params_on_host(xrnn.RNN(3, 4, seed=0))
    b = params_on_host(xrnn.RNN(3, 4, seed=1))
    for name in a:
        assert not np.array_equal(a[name], b[name]), name


def test_float64_model_has_float64_parameters(xp):
    model = xrnn.RNN(3, 4, num_layers=2, dtype="float64", seed=0)
    for name, p in model.named_parameters():
        assert p.dtype == xp.float64, name
        assert host(p.data).dtype == np.float64, name
    x = xrnn.asarray(np.random.default_rng(0).normal(size=(4, 2, 3)), dtype="float64")
    output, h_n = model(x)
    assert output.dtype == xp.float64 and h_n.dtype == xp.float64


# -- state dicts -------------------------------------------------------------------------

def _torch_reference(torch, **config):
    torch.manual_seed(0)
    return torch.nn.RNN(3, 4, **config).eval()


def _parity_input(rng):
    x = rng.normal(size=(5, 2, 3)).astype(np.float32)
    h0 = rng.normal(size=(4, 2, 4)).astype(np.float32)  # L*D = 4 for the configs below
    return x, h0


@pytest.mark.parametrize("source", ["torch", "numpy"])
def test_load_state_dict_from_torch_or_numpy_matches_torch(xp, torch, rng, source):
    reference = _torch_reference(torch, num_layers=2, bidirectional=True)
    state = reference.state_dict()
    if source == "numpy":
        state = {name: t.numpy().copy() for name, t in state.items()}
    model = xrnn.RNN(3, 4, num_layers=2, bidirectional=True, seed=123)
    model.load_state_dict(state)

    for name, t in reference.state_dict().items():
        np.testing.assert_array_equal(host(getattr_param(model, name)), t.numpy(), err_msg=name)
        assert backend_of(getattr_param(model, name)) == xrnn.get_backend()
    x, h0 = _parity_input(rng)
    output, h_n = model(xrnn.asarray(x), xrnn.asarray(h0))
    ref_output, ref_h_n = reference(torch.from_numpy(x), torch.from_numpy(h0))
    np.testing.assert_allclose(host(output), torch_out(ref_output), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(host(h_n), torch_out(ref_h_n), rtol=1e-5, atol=1e-5)


def getattr_param(model, name):
    return dict(model.named_parameters())[name].data


def test_load_state_dict_casts_to_model_dtype(xp, torch):
    reference = _torch_reference(torch)  # float32
    model = xrnn.RNN(3, 4, dtype="float64", seed=0)
    model.load_state_dict(reference.state_dict())
    assert getattr_param(model, "weight_ih_l0").dtype == xp.float64
    np.testing.assert_array_equal(host(getattr_param(model, "weight_ih_l0")),
                                  reference.weight_ih_l0.detach().numpy().astype(np.float64))


def test_torch_state_dict_loads_strictly_into_torch(xp, torch, rng):
    model = xrnn.RNN(3, 4, num_layers=2, bidirectional=True, seed=5)
    reference = torch.nn.RNN(3, 4, num_layers=2, bidirectional=True)
    result = reference.load_state_dict(xrnn.io.torch_state_dict(model), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for name, t in reference.state_dict().items():
        np.testing.assert_array_equal(t.numpy(), host(getattr_param(model, name)), err_msg=name)

    x, h0 = _parity_input(rng)
    output, h_n = model(xrnn.asarray(x), xrnn.asarray(h0))
    ref_output, ref_h_n = reference.eval()(torch.from_numpy(x), torch.from_numpy(h0))
    np.testing.assert_allclose(host(output), torch_out(ref_output), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(host(h_n), torch_out(ref_h_n), rtol=1e-5, atol=1e-5)


def test_torch_rnn_like_helper_agrees_batch_first(xp, torch, rng):
    model = xrnn.RNN(3, 4, nonlinearity="relu", batch_first=True, seed=9)
    reference = torch_rnn_like(model, "float32")
    x = rng.normal(size=(2, 5, 3)).astype(np.float32)
    output, h_n = model(xrnn.asarray(x))
    ref_output, ref_h_n = reference(torch.from_numpy(x))
    np.testing.assert_allclose(host(output), torch_out(ref_output), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(host(h_n), torch_out(ref_h_n), rtol=1e-5, atol=1e-5)


def _valid_state(model, rng):
    """A complete, correctly shaped state dict of NumPy arrays with new values."""
    return {name: rng.normal(size=p.shape).astype(np.float32)
            for name, p in model.named_parameters()}


@pytest.mark.parametrize("fault", ["missing", "unexpected", "shape"])
def test_load_state_dict_errors_name_the_key_and_leave_module_unchanged(xp, rng, fault):
    model = xrnn.RNN(3, 4, seed=0)
    before = params_on_host(model)
    state = _valid_state(model, rng)  # keys in order: weight_ih_l0, weight_hh_l0, bias_ih_l0, ...
    if fault == "missing":
        del state["bias_hh_l0"]
        key = "bias_hh_l0"
    elif fault == "unexpected":
        state["weight_ih_l1"] = rng.normal(size=(4, 4)).astype(np.float32)
        key = "weight_ih_l1"
    else:
        # weight_ih_l0 comes first and is valid: it must not be written either
        state["bias_ih_l0"] = rng.normal(size=(5,)).astype(np.float32)
        key = "bias_ih_l0"
    with pytest.raises(ValueError, match=key):
        model.load_state_dict(state)
    after = params_on_host(model)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_load_state_dict_wrong_shape_message_names_both_shapes(xp, rng):
    model = xrnn.RNN(3, 4, seed=0)
    state = _valid_state(model, rng)
    state["weight_hh_l0"] = np.zeros((4, 5), dtype=np.float32)
    with pytest.raises(ValueError, match=r"weight_hh_l0.*\(4, 5\).*\(4, 4\)"):
        model.load_state_dict(state)


# -- Linear ------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(xp, torch, rng, bias):
    torch.manual_seed(0)
    reference = torch.nn.Linear(4, 3, bias=bias)
    layer = xrnn.Linear(4, 3, bias=bias, seed=1)
    assert [name for name, _ in layer.named_parameters()] == list(reference.state_dict())
    layer.load_state_dict(reference.state_dict())
    for shape in [(5, 2, 4), (6, 4)]:
        x = rng.normal(size=shape).astype(np.float32)
        y = layer(xrnn.asarray(x))
        assert backend_of(y) == xrnn.get_backend()
        np.testing.assert_allclose(host(y), torch_out(reference(torch.from_numpy(x))),
                                   rtol=1e-5, atol=1e-5)


def test_linear_torch_state_dict_round_trip(xp, torch, rng):
    layer = xrnn.Linear(4, 3, seed=2)
    reference = torch.nn.Linear(4, 3)
    reference.load_state_dict(xrnn.io.torch_state_dict(layer), strict=True)
    x = rng.normal(size=(3, 2, 4)).astype(np.float32)
    np.testing.assert_allclose(host(layer(xrnn.asarray(x))),
                               torch_out(reference(torch.from_numpy(x))), rtol=1e-5, atol=1e-5)


def test_linear_init_bound_and_no_bias(xp):
    layer = xrnn.Linear(9, 2, bias=False, seed=0)
    assert [name for name, _ in layer.named_parameters()] == ["weight"]
    assert layer.bias is None
    assert np.all(np.abs(host(layer.weight.data)) <= 1.0 / 3.0)
    x = xrnn.asarray(np.ones((1, 9)), dtype="float32")
    # no bias: a zero input maps to exactly zero
    np.testing.assert_array_equal(host(layer(x * 0.0)), np.zeros((1, 2), dtype=np.float32))


def test_linear_wrong_feature_count(xp):
    layer = xrnn.Linear(4, 3, seed=0)
    x = xrnn.asarray(np.ones((2, 3, 5)), dtype="float32")
    with pytest.raises(ValueError, match=r"4 features.*\(2, 3, 5\)"):
        layer(x)


# -- activations -------------------------------------------------------------------------

ACTIVATIONS = {
    "ReLU": (xrnn.ReLU, "relu"),
    "Tanh": (xrnn.Tanh, "tanh"),
    "Sigmoid": (xrnn.Sigmoid, "sigmoid"),
    "Identity": (xrnn.Identity, None),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activations_match_torch_including_large_inputs(xp, torch, rng, name):
    cls, torch_name = ACTIVATIONS[name]
    values = rng.normal(scale=3.0, size=(3, 2, 4))
    values[0, 0, :] = [-50.0, 50.0, -1e4, 1e4]
    values[0, 1, :] = [0.0, -0.0, 1e-8, -1e-8]
    x_np = values.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = cls()(xrnn.asarray(x_np))
        out = host(y)
    expected = x_np if torch_name is None else torch_out(getattr(torch, torch_name)(torch.from_numpy(x_np)))
    assert backend_of(y) == xrnn.get_backend()
    assert out.dtype == np.float32
    assert not np.any(np.isnan(out))
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_sigmoid_saturates_exactly(xp):
    y = host(xrnn.Sigmoid()(xrnn.asarray(np.array([-50.0, 0.0, 50.0]), dtype="float64")))
    np.testing.assert_allclose(y, [1.0 / (1.0 + math.exp(50.0)), 0.5, 1.0], rtol=1e-10, atol=1e-15)


# -- Sequential --------------------------------------------------------------------------

def _timesteps(rng, steps=4, batch=3, features=2):
    return [rng.normal(size=(batch, features)) for _ in range(steps)]


def test_sequential_runs_on_timesteps_and_equals_chaining(xp, rng):
    model = xrnn.Sequential(xrnn.RNN(2, 2, seed=0), xrnn.ReLU(), xrnn.RNN(2, 1, seed=1))
    x = xrnn.from_timesteps(_timesteps(rng))
    y = model(x)
    h, _ = model[0](x)
    h = model[1](h)
    expected, _ = model[2](h)
    assert tuple(y.shape) == (4, 3, 1)
    np.testing.assert_array_equal(host(y), host(expected))


def test_sequential_matches_torch_layers(xp, torch, rng):
    model = xrnn.Sequential(xrnn.RNN(2, 2, seed=0), xrnn.ReLU(), xrnn.RNN(2, 1, seed=1))
    reference = torch.nn.Sequential(torch.nn.RNN(2, 2), torch.nn.ReLU(), torch.nn.RNN(2, 1))
    names = [name for name, _ in model.named_parameters()]
    assert names[0] == "0.weight_ih_l0"
    assert names == list(reference.state_dict())
    reference.load_state_dict(xrnn.io.torch_state_dict(model), strict=True)

    steps = _timesteps(rng)
    x_np = np.stack(steps).astype(np.float32)
    h, _ = reference[0](torch.from_numpy(x_np))
    expected, _ = reference[2](reference[1](h))
    np.testing.assert_allclose(host(model(xrnn.from_timesteps(steps))), torch_out(expected),
                               rtol=1e-5, atol=1e-5)


def test_sequential_container_protocol(xp):
    layers = [xrnn.RNN(2, 3, seed=0), xrnn.Tanh(), xrnn.Linear(3, 1, seed=0)]
    model = xrnn.Sequential()
    assert len(model) == 0
    for layer in layers:
        assert model.add(layer) is model
    assert len(model) == 3
    assert model[0] is layers[0] and model[2] is layers[2] and model[-1] is layers[2]
    assert list(model) == layers
    assert [name for name, _ in model.named_parameters()] == [
        "0.weight_ih_l0", "0.weight_hh_l0", "0.bias_ih_l0", "0.bias_hh_l0",
        "2.weight", "2.bias"]
    assert model.num_parameters() == (3 * 2 + 3 * 3 + 3 + 3) + (3 + 1)


@pytest.mark.parametrize("bad", ["relu", lambda x: x, 3])
def test_sequential_rejects_non_modules(xp, bad):
    with pytest.raises(TypeError, match=type(bad).__name__):
        xrnn.Sequential(xrnn.RNN(2, 2, seed=0), bad)
    with pytest.raises(TypeError, match=type(bad).__name__):
        xrnn.Sequential().add(bad)


def test_sequential_train_eval_propagate(xp):
    inner = xrnn.Sequential(xrnn.Linear(2, 2, seed=0), xrnn.ReLU())
    model = xrnn.Sequential(xrnn.RNN(2, 2, num_layers=2, dropout=0.5, seed=0), inner)
    modules = [model, model[0], inner, inner[0], inner[1]]
    assert all(m.training for m in modules)
    assert model.eval() is model
    assert [m.training for m in modules] == [False] * 5
    assert model.train() is model
    assert [m.training for m in modules] == [True] * 5
    model.train(False)
    assert [m.training for m in modules] == [False] * 5


def test_sequential_eval_disables_dropout(xp, rng):
    model = xrnn.Sequential(xrnn.RNN(2, 4, num_layers=2, dropout=0.5, seed=0))
    x = xrnn.asarray(rng.normal(size=(5, 3, 2)), dtype="float32")
    model.eval()
    first, second = host(model(x)), host(model(x))
    np.testing.assert_array_equal(first, second)
    model.train()
    trained = host(model(x))
    assert not np.allclose(trained, first)


# -- summary -----------------------------------------------------------------------------

def test_sequential_summary(xp, capsys):
    model = xrnn.Sequential(xrnn.RNN(2, 4, seed=0), xrnn.ReLU(), xrnn.Linear(4, 1, seed=0))
    text = model.summary((5, 3, 2))
    printed = capsys.readouterr().out
    assert printed == text + "\n"

    lines = text.splitlines()
    rows = {line.split()[0]: line for line in lines if line[:1].isdigit()}
    assert set(rows) == {"0", "1", "2"}
    rnn_params = 4 * 2 + 4 * 4 + 4 + 4
    assert "(5, 3, 4)" in rows["0"] and f" {rnn_params} " in rows["0"] + " "
    assert "recurrent" in rows["0"]
    assert "(5, 3, 4)" in rows["1"] and " 0 " in rows["1"] + " "
    assert "recurrent" not in rows["1"]
    assert "(5, 3, 1)" in rows["2"] and " 5 " in rows["2"] + " "
    assert "recurrent" not in rows["2"]
    assert any("(5, 3, 2)" in line and "input" in line for line in lines)

    total_line = [line for line in lines if line.startswith("total params")]
    assert len(total_line) == 1
    total = int(total_line[0].split(":")[1].strip().replace(",", ""))
    assert total == model.num_parameters() == rnn_params + 5


def test_sequential_summary_thousands(xp, capsys):
    model = xrnn.Sequential(xrnn.RNN(8, 32, seed=0))
    text = model.summary((6, 1, 8))
    capsys.readouterr()
    assert "1,344" in text  # 32*8 + 32*32 + 32 + 32
    assert model.num_parameters() == 1344


@pytest.mark.parametrize("shape", [(5, 3, 3), (5, 3, 2, 1), (2,)])
def test_sequential_summary_mismatched_shape(xp, capsys, shape):
    model = xrnn.Sequential(xrnn.RNN(2, 4, seed=0), xrnn.ReLU(), xrnn.Linear(4, 1, seed=0))
    with pytest.raises(ValueError, match=r"H_in=2.*" + re.escape(str(shape))):
        model.summary(shape)


def test_sequential_summary_mismatch_between_layers(xp, capsys):
    model = xrnn.Sequential(xrnn.RNN(2, 4, seed=0), xrnn.Linear(3, 1, seed=0))
    with pytest.raises(ValueError, match=r"3 features.*\(5, 3, 4\)"):
        model.summary((5, 3, 2))


# -- from_timesteps ----------------------------------------------------------------------

def test_from_timesteps_single_sequence(xp, rng):
    steps = [rng.normal(size=(3,)) for _ in range(4)]
    x = xrnn.from_timesteps(steps)
    assert backend_of(x) == xrnn.get_backend()
    assert x.dtype == xp.float32
    np.testing.assert_array_equal(host(x), np.stack(steps).astype(np.float32)[:, None, :])


def test_from_timesteps_nested_lists(xp):
    x = xrnn.from_timesteps([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])
    np.testing.assert_array_equal(
        host(x), np.array([[[0.1, 0.2]], [[0.3, 0.4]], [[0.5, 0.6]]], dtype=np.float32))


def test_from_timesteps_batched(xp, rng):
    steps = [rng.normal(size=(2, 3)) for _ in range(5)]
    x = xrnn.from_timesteps(steps, dtype="float64")
    assert x.dtype == xp.float64
    np.testing.assert_array_equal(host(x), np.stack(steps))


def test_from_timesteps_accepts_other_backend_steps(xp, rng):
    with xrnn.use_backend("numpy"):
        steps = [xrnn.asarray(rng.normal(size=(2,)), dtype="float32") for _ in range(3)]
    x = xrnn.from_timesteps(steps)
    assert backend_of(x) == xrnn.get_backend()
    np.testing.assert_array_equal(host(x), np.stack(steps)[:, None, :])


@pytest.mark.parametrize("steps, match", [
    ([np.zeros(3), np.zeros(4)], "same shape"),
    ([np.zeros((2, 3)), np.zeros((3, 3))], "same shape"),
    ([], "at least one"),
])
def test_from_timesteps_errors(xp, steps, match):
    with pytest.raises(ValueError, match=match):
        xrnn.from_timesteps(steps)


# -- dropout warning ---------------------------------------------------------------------

def test_dropout_with_one_layer_warns_like_torch(xp, torch):
    with pytest.warns(UserWarning, match="num_layers=1"):
        xrnn.RNN(2, 3, dropout=0.5, seed=0)
    with pytest.warns(UserWarning):
        torch.nn.RNN(2, 3, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xrnn.RNN(2, 3, num_layers=2, dropout=0.5, seed=0)
        xrnn.RNN(2, 3, dropout=0.0, seed=0)


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_no_grad_forward_is_the_same_and_refuses_backward(xp, rng, kind):
    model = getattr(xrnn, kind)(3, 4, num_layers=2, bidirectional=True, dtype="float64", seed=1)
    x = xrnn.asarray(rng.standard_normal((5, 2, 3)))
    output, _ = model(x)
    assert xrnn.nn.is_grad_enabled()
    with xrnn.no_grad():
        assert not xrnn.nn.is_grad_enabled()
        inference, _ = model(x)
    assert xrnn.nn.is_grad_enabled()
    np.testing.assert_array_equal(xrnn.to_numpy(inference), xrnn.to_numpy(output))
    # the recorded call (the first) is backpropagated; the no_grad call left no record
    assert model.backward(xrnn.get_namespace(x).ones_like(output)).shape == x.shape
    with pytest.raises(RuntimeError, match=r"no_grad\(\)"):
        model.backward(xrnn.get_namespace(x).ones_like(output))
