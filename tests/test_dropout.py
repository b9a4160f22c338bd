"""Inter-layer dropout: rate, 1/(1-p) scaling, training only, never after the last layer."""

from __future__ import annotations

import numpy as np
import pytest

import xrnn
from xrnn.testing import assert_close

F = 64  # features = hidden size
T, B = 40, 50  # 128,000 outputs per layer: the drop rate is known to about +-0.0014


def pass_through_rnn(num_layers: int, p: float, seed: int = 0) -> xrnn.RNN:
    """Every layer copies its input (W_ih = I, W_hh = 0, no bias, identity): the output is
    the input with each inter-layer dropout mask applied, and nothing else."""
    model = xrnn.RNN(F, F, num_layers, nonlinearity="identity", bias=False, dropout=p,
                     dtype="float64", seed=seed)
    model.load_state_dict({name: np.eye(F) if "weight_ih" in name else np.zeros((F, F))
                           for name, _ in model.named_parameters()})
    return model


def positive_input(rng):
    return rng.uniform(0.5, 1.5, size=(T, B, F))


@pytest.mark.parametrize("num_layers", [2, 3])
@pytest.mark.parametrize("p", [0.2, 0.5])
def test_training_drop_rate_and_scaling(xp, rng, num_layers, p):
    x = positive_input(rng)
    output = xrnn.to_numpy(pass_through_rnn(num_layers, p)(xrnn.asarray(x))[0])
    masks = num_layers - 1  # one mask between each pair of layers, none after the last
    kept = output != 0
    expected_keep = (1 - p) ** masks
    sigma = np.sqrt(expected_keep * (1 - expected_keep) / kept.size)
    assert abs(kept.mean() - expected_keep) < 5 * sigma
    np.testing.assert_allclose(output[kept], x[kept] / (1 - p) ** masks, rtol=1e-12)


def test_no_dropout_after_last_layer(xp, rng):
    """With one layer there is no inter-layer position: training output is the input."""
    with pytest.warns(UserWarning, match="num_layers=1"):
        model = pass_through_rnn(1, 0.5)
    x = positive_input(rng)
    assert_close(model(xrnn.asarray(x))[0], x, rtol=0, atol=0)


def test_eval_mode_disables_dropout(xp, rng):
    model = pass_through_rnn(3, 0.5).eval()
    x = positive_input(rng)
    assert_close(model(xrnn.asarray(x))[0], x, rtol=0, atol=0)
    model.train()
    assert (xrnn.to_numpy(model(xrnn.asarray(x))[0]) == 0).any()


def test_masks_are_reproducible_from_the_seed_and_fresh_per_call(xp, rng):
    x = xrnn.asarray(positive_input(rng))
    first = xrnn.to_numpy(pass_through_rnn(2, 0.5, seed=42)(x)[0])
    second_model = pass_through_rnn(2, 0.5, seed=42)
    again = xrnn.to_numpy(second_model(x)[0])
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(again, xrnn.to_numpy(second_model(x)[0]))


def test_first_layer_state_is_not_dropped(xp, rng):
    """Dropout acts on the output passed up, not on the layer's own recurrence or h_n."""
    x = positive_input(rng)
    _, h_n = pass_through_rnn(2, 0.5)(xrnn.asarray(x))
    assert_close(h_n[0, ...], x[-1], rtol=0, atol=0)


@pytest.mark.parametrize("p", [0.1, 0.7])
def test_functional_dropout(xp, rng, p):
    x = rng.uniform(1.0, 2.0, size=(200, 500))
    y = xrnn.to_numpy(xrnn.functional.dropout(xrnn.asarray(x), p, generator=0))
    kept = y != 0
    sigma = np.sqrt(p * (1 - p) / y.size)
    assert abs(1 - kept.mean() - p) < 5 * sigma
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-12)
    same = xrnn.functional.dropout(xrnn.asarray(x), p, training=False)
    assert_close(same, x, rtol=0, atol=0)
