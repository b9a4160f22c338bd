"""Keras 3 conversion: outputs of converted layers and models equal Keras's, both ways.

Keras runs on its torch backend here (torch is xrnn[parity]'s), so no TensorFlow is
needed; KERAS_BACKEND is set before keras is imported, unless the environment sets it.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import xrnn

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras", minversion="3",
                            reason="conversion needs Keras 3 (xrnn[keras]) and its backend")
pytest.importorskip("xrnn.keras")
# Keras's torch backend converts variables with np.array(self), which NumPy 2 warns about.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

F32 = dict(rtol=1e-5, atol=1e-5)
layers = keras.layers


def keras_numpy(value) -> np.ndarray:
    return keras.ops.convert_to_numpy(value)


def randomized(model, rng, x):
    """Build ``model`` on ``x`` and give every weight (biases included) random values."""
    model(x)
    model.set_weights([0.5 * rng.standard_normal(w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    return model


def xrnn_output(module, x) -> np.ndarray:
    result = module(xrnn.asarray(x))
    return xrnn.to_numpy(result[0] if isinstance(result, tuple) else result)


KERAS_LAYERS = {
    "simple_rnn_tanh": lambda: layers.SimpleRNN(5, return_sequences=True),
    "simple_rnn_relu_last": lambda: layers.SimpleRNN(5, activation="relu"),
    "simple_rnn_linear": lambda: layers.SimpleRNN(5, activation="linear", return_sequences=True),
    "lstm": lambda: layers.LSTM(5, return_sequences=True),
    "lstm_last_no_bias": lambda: layers.LSTM(5, use_bias=False),
    "gru": lambda: layers.GRU(5, return_sequences=True),
    "gru_last": lambda: layers.GRU(5),
    "bidirectional_lstm": lambda: layers.Bidirectional(layers.LSTM(5, return_sequences=True)),
    "bidirectional_gru_last": lambda: layers.Bidirectional(layers.GRU(5)),
    "bidirectional_simple_rnn_no_bias": lambda: layers.Bidirectional(
        layers.SimpleRNN(5, use_bias=False, return_sequences=True)),
}


@pytest.mark.parametrize("name", list(KERAS_LAYERS))
def test_layer_from_keras_and_back(xp, name):
    rng = np.random.default_rng(len(name))
    x = rng.standard_normal((3, 6, 4)).astype("float32")  # (B, T, F): Keras is batch-first
    layer = randomized(KERAS_LAYERS[name](), rng, x)
    expected = keras_numpy(layer(x))
    module = xrnn.io.from_keras(layer)
    np.testing.assert_allclose(xrnn_output(module, x), expected, **F32)
    back = xrnn.io.to_keras(module)
    np.testing.assert_allclose(keras_numpy(back(x)), expected, **F32)
    for ours, theirs in zip(back.get_weights(), layer.get_weights()):  # biases sum back exactly
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_keras_states_are_h_n(xp, kind):
    """With return_state, Keras's states are xrnn's h_n[k] (and c_n[k]), per direction."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 3)).astype("float32")
    layer = randomized(layers.Bidirectional(getattr(layers, kind)(
        4, return_sequences=True, return_state=True)), rng, x)
    output, *states = map(keras_numpy, layer(x))
    ours, finals = xrnn.io.from_keras(layer)(xrnn.asarray(x))
    finals = finals if isinstance(finals, tuple) else (finals,)
    np.testing.assert_allclose(xrnn.to_numpy(ours), output, **F32)
    per_direction = [xrnn.to_numpy(final)[d] for d in range(2) for final in finals]
    for theirs, mine in zip(states, per_direction, strict=True):
        np.testing.assert_allclose(mine, theirs, **F32)


def test_sequential_from_keras(xp):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 7, 3)).astype("float32")
    model = randomized(keras.Sequential([
        keras.Input((None, 3)),
        layers.Bidirectional(layers.GRU(6, return_sequences=True)),
        layers.LSTM(5, return_sequences=True),
        layers.SimpleRNN(4),
        layers.Dense(8, activation="relu"), layers.Dropout(0.5),
        layers.Dense(3, activation="sigmoid"), layers.Activation("tanh"),
        layers.Dense(2)]), rng, x)
    module = xrnn.io.from_keras(model)
    assert [type(m).__name__ for m in module] == [
        "GRU", "LSTM", "RNN", "LastStep", "Linear", "ReLU", "Dropout", "Linear", "Sigmoid",
        "Tanh", "Linear"]
    module.eval()
    np.testing.assert_allclose(xrnn_output(module, x), keras_numpy(model(x)), **F32)


def test_embedding_model_both_ways(xp):
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 9, size=(3, 5))
    model = randomized(keras.Sequential([keras.Input((None,), dtype="int64"),
                                         layers.Embedding(9, 4), layers.LSTM(3)]), rng, ids)
    module = xrnn.io.from_keras(model)
    np.testing.assert_allclose(xrnn_output(module, ids), keras_numpy(model(ids)), **F32)
    np.testing.assert_allclose(keras_numpy(xrnn.io.to_keras(module)(ids)),
                               keras_numpy(model(ids)), **F32)


XRNN_MODELS = {
    "rnn_relu_stacked": lambda: xrnn.RNN(3, 4, num_layers=2, nonlinearity="relu",
                                         bidirectional=True, bias=False, seed=0),
    "rnn_identity": lambda: xrnn.RNN(3, 4, nonlinearity="identity", batch_first=True, seed=0),
    "lstm_stacked": lambda: xrnn.LSTM(3, 4, num_layers=3, bidirectional=True, seed=0),
    "gru_float64": lambda: xrnn.GRU(3, 4, num_layers=2, dtype="float64", seed=0),
    "classifier": lambda: xrnn.Sequential(
        xrnn.GRU(3, 6, bidirectional=True, batch_first=True, seed=0), xrnn.LastStep(),
        xrnn.Linear(12, 5, seed=1), xrnn.Tanh(), xrnn.Dropout(0.2), xrnn.Identity(),
        xrnn.Linear(5, 2, bias=False, seed=2), xrnn.Sigmoid()),
}


@pytest.mark.parametrize("name", list(XRNN_MODELS))
def test_to_keras(xp, name):
    model = XRNN_MODELS[name]().eval()
    first = model[0] if isinstance(model, xrnn.Sequential) else model
    dtype = first.dtype
    x = np.random.default_rng(3).standard_normal((2, 6, 3)).astype(dtype)  # (B, T, F)
    ours = xrnn_output(model, x if first.batch_first else x.swapaxes(0, 1))
    theirs = keras_numpy(xrnn.io.to_keras(model)(x))
    assert theirs.dtype == np.dtype(dtype)
    tolerance = F32 if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(theirs, ours if first.batch_first else ours.swapaxes(0, 1),
                               **tolerance)


@pytest.mark.parametrize("make, match", [
    (lambda: layers.LSTM(3, go_backwards=True), "go_backwards=True"),
    (lambda: layers.GRU(3, stateful=True), "stateful=True"),
    (lambda: layers.GRU(3, reset_after=False), r"GRU\(reset_after=False\)"),
    (lambda: layers.SimpleRNN(3, activation="sigmoid"), "activation must be one of"),
    (lambda: layers.LSTM(3, recurrent_activation="hard_sigmoid"),
     "recurrent_activation must be 'sigmoid', got 'hard_sigmoid'"),
    (lambda: layers.Bidirectional(layers.LSTM(3), merge_mode="sum"),
     "merge_mode must be 'concat', got 'sum'"),
    (lambda: keras.Sequential([keras.Input((None,), dtype="int64"),
                               layers.Embedding(5, 3, mask_zero=True)]), "mask_zero=True"),
    (lambda: layers.Dense(3, activation="softmax"), "activation must be one of"),
])
def test_from_keras_refusals(make, match):
    layer = make()
    if not isinstance(layer, keras.Sequential):
        layer.build((2, None, 2))
    with pytest.raises(ValueError, match=match):
        xrnn.io.from_keras(layer)


def test_other_refusals():
    with pytest.raises(ValueError, match="not built"):
        xrnn.io.from_keras(layers.LSTM(3))
    with pytest.raises(TypeError, match="cannot convert Keras layer Conv1D"):
        xrnn.io.from_keras(keras.Sequential([keras.Input((None, 2)), layers.Conv1D(2, 1)]))
    with pytest.raises(ValueError, match="zoneout=0.25"):
        xrnn.io.to_keras(xrnn.LSTM(3, 4, zoneout=0.25))
    with pytest.raises(ValueError, match="proj_size=2"):
        xrnn.io.to_keras(xrnn.LSTM(3, 4, proj_size=2))
    with pytest.raises(ValueError, match="LastStep converts only right after"):
        xrnn.io.to_keras(xrnn.Sequential(xrnn.RNN(3, 4), xrnn.Tanh(), xrnn.LastStep()))
    with pytest.raises(TypeError, match="cannot convert MeanOverTime"):
        xrnn.io.to_keras(xrnn.Sequential(xrnn.RNN(3, 4), xrnn.MeanOverTime()))
