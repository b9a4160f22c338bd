"""Forward parity of xrnn.RNN with torch.nn.RNN and with a loop written from the equations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import xrnn
from xrnn.testing import assert_close

from .conftest import torch_rnn_like

torch = pytest.importorskip("torch", reason="torch is the parity reference (xrnn[parity])")

TOLERANCE = {"float32": dict(rtol=0.0, atol=1e-5), "float64": dict(rtol=0.0, atol=1e-12)}
T, B, I, H = 5, 3, 4, 6

GRID = list(itertools.product([1, 2, 3], [False, True], ["tanh", "relu"], [True, False],
                              [False, True], [False, True], ["float32", "float64"]))


@pytest.mark.parametrize(
    "num_layers, bidirectional, nonlinearity, bias, batch_first, with_h0, dtype", GRID,
    ids=[f"L{c[0]}-{'bi' if c[1] else 'uni'}-{c[2]}-{'bias' if c[3] else 'nobias'}-"
         f"{'bf' if c[4] else 'tf'}-{'h0' if c[5] else 'noh0'}-{c[6]}" for c in GRID])
def test_matches_torch(xp, rng, num_layers, bidirectional, nonlinearity, bias, batch_first,
                       with_h0, dtype):
    # dropout > 0 in eval mode must be inert, as in torch
    model = xrnn.RNN(I, H, num_layers, nonlinearity, bias, batch_first,
                     dropout=0.3 if num_layers > 1 else 0.0, bidirectional=bidirectional,
                     dtype=dtype, seed=7).eval()
    reference = torch_rnn_like(model, dtype)
    d = 2 if bidirectional else 1
    x_host = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    h0_host = rng.standard_normal((num_layers * d, B, H)).astype(dtype) if with_h0 else None
    output, h_n = model(xrnn.asarray(x_host), None if h0_host is None else xrnn.asarray(h0_host))
    with torch.no_grad():
        ref_out, ref_h = reference(torch.from_numpy(x_host),
                                   None if h0_host is None else torch.from_numpy(h0_host))
    assert output.shape == tuple(ref_out.shape)
    assert h_n.shape == (num_layers * d, B, H)  # never batch-first
    assert output.dtype == getattr(xp, dtype)
    assert_close(output, ref_out, backend=xrnn.get_backend(), **TOLERANCE[dtype])
    assert_close(h_n, ref_h, backend=xrnn.get_backend(), **TOLERANCE[dtype])


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_unbatched_input_matches_torch(xp, rng, batch_first, bidirectional):
    model = xrnn.RNN(I, H, 2, bidirectional=bidirectional, batch_first=batch_first,
                     dtype="float64", seed=3)
    reference = torch_rnn_like(model, "float64")
    x = rng.standard_normal((T, I))
    h0 = rng.standard_normal((2 * (2 if bidirectional else 1), H))
    output, h_n = model(xrnn.asarray(x), xrnn.asarray(h0))
    with torch.no_grad():
        ref_out, ref_h = reference(torch.from_numpy(x), torch.from_numpy(h0))
    assert_close(output, ref_out, **TOLERANCE["float64"])
    assert_close(h_n, ref_h, **TOLERANCE["float64"])


def naive_rnn(x, h0, params, num_layers, bidirectional, activation):
    """Elman RNN written from the equations, one timestep, layer and direction at a time."""
    steps, batch, _ = x.shape
    d = 2 if bidirectional else 1
    hidden = h0.shape[-1]
    layer_input = x
    h_n = np.zeros_like(h0)
    for layer in range(num_layers):
        layer_output = np.zeros((steps, batch, d * hidden))
        for direction in range(d):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            w_ih, w_hh = params["weight_ih" + suffix], params["weight_hh" + suffix]
            b_ih = params.get("bias_ih" + suffix, np.zeros(hidden))
            b_hh = params.get("bias_hh" + suffix, np.zeros(hidden))
            h = h0[layer * d + direction]
            order = range(steps - 1, -1, -1) if direction else range(steps)
            for t in order:
                h = activation(layer_input[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh)
                layer_output[t, :, direction * hidden:(direction + 1) * hidden] = h
            h_n[layer * d + direction] = h
        layer_input = layer_output
    return layer_input, h_n


ACTIVATIONS = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0.0), "identity": lambda z: z}


@pytest.mark.parametrize("nonlinearity", list(ACTIVATIONS))
@pytest.mark.parametrize("num_layers, bidirectional, bias",
                         [(1, False, True), (2, True, True), (3, True, False), (2, False, False)])
def test_matches_naive_loop(xp, rng, nonlinearity, num_layers, bidirectional, bias):
    model = xrnn.RNN(I, H, num_layers, nonlinearity, bias, bidirectional=bidirectional,
                     dtype="float64", seed=11)
    params = {name: xrnn.to_numpy(p.data) for name, p in model.named_parameters()}
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((num_layers * (2 if bidirectional else 1), B, H))
    expected_out, expected_h = naive_rnn(x, h0, params, num_layers, bidirectional,
                                         ACTIVATIONS[nonlinearity])
    output, h_n = model(xrnn.asarray(x), xrnn.asarray(h0))
    assert_close(output, expected_out, rtol=1e-12, atol=1e-12)
    assert_close(h_n, expected_h, rtol=1e-12, atol=1e-12)


def test_identity_recurrence_by_hand(xp):
    """h_t = x_t + 0.5 h_{t-1} with one unit: an impulse decays by halves."""
    model = xrnn.RNN(1, 1, nonlinearity="identity", bias=False, dtype="float64")
    model.load_state_dict({"weight_ih_l0": np.array([[1.0]]), "weight_hh_l0": np.array([[0.5]])})
    x = xrnn.asarray(np.array([1.0, 0.0, 0.0, 0.0]).reshape(4, 1, 1))
    output, h_n = model(x)
    assert_close(output, np.array([1.0, 0.5, 0.25, 0.125]).reshape(4, 1, 1), rtol=0, atol=0)
    assert_close(h_n, np.array([[[0.125]]]), rtol=0, atol=0)


def test_bidirectional_final_states_are_not_output_last(xp, rng):
    """h_n of the reverse direction is output[0, :, H:], the forward one output[-1, :, :H]."""
    model = xrnn.RNN(I, H, 2, bidirectional=True, dtype="float64", seed=5)
    output, h_n = model(xrnn.asarray(rng.standard_normal((T, B, I))))
    out, h = xrnn.to_numpy(output), xrnn.to_numpy(h_n)
    np.testing.assert_array_equal(h[2], out[-1, :, :H])
    np.testing.assert_array_equal(h[3], out[0, :, H:])
    assert not np.allclose(h[3], out[-1, :, H:])


@pytest.mark.parametrize("as_mapping", [False, True])
def test_functional_rnn_takes_flat_list_or_state_dict(xp, rng, as_mapping):
    model = xrnn.RNN(I, H, 2, bidirectional=True, dtype="float64", seed=2)
    state = model.state_dict()
    weights = state if as_mapping else list(state.values())
    x = xrnn.asarray(rng.standard_normal((T, B, I)))
    output, h_n = xrnn.functional.rnn(x, None, weights, num_layers=2, bidirectional=True)
    expected_out, expected_h = model(x)
    assert_close(output, expected_out, rtol=0, atol=0)
    assert_close(h_n, expected_h, rtol=0, atol=0)
