"""Streaming inference: step() over a sequence equals forward() over it."""

from __future__ import annotations

import numpy as np
import pytest

import xrnn
from xrnn.testing import assert_close

T, B, I, H = 6, 3, 4, 5
LAYERS = {
    "rnn": lambda **kw: xrnn.RNN(I, H, 2, nonlinearity="relu", **kw),
    "lstm": lambda **kw: xrnn.LSTM(I, H, 2, proj_size=3, **kw),
    "gru": lambda **kw: xrnn.GRU(I, H, 3, **kw),
}


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_step_by_step_equals_whole_sequence(xp, rng, kind, batch_first):
    model = LAYERS[kind](batch_first=batch_first, dtype="float64", seed=1)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    output, final = model(xrnn.asarray(x))
    state = None
    for t in range(T):
        y_t, state = model.step(xrnn.asarray(x[:, t] if batch_first else x[t]), state)
        expected = xrnn.to_numpy(output)[:, t] if batch_first else xrnn.to_numpy(output)[t]
        assert_close(y_t, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(state if kind == "lstm" else (state,),
                         final if kind == "lstm" else (final,), strict=True):
        assert_close(got, xrnn.to_numpy(want), rtol=1e-12, atol=1e-12)


def test_step_takes_an_unbatched_timestep_and_a_given_state(xp, rng):
    model = xrnn.GRU(I, H, 2, dtype="float64", seed=2)
    x, h0 = rng.standard_normal((T, I)), rng.standard_normal((2, H))
    output, h_n = model(xrnn.asarray(x), xrnn.asarray(h0))
    h = xrnn.asarray(h0)
    for t in range(T):
        y_t, h = model.step(xrnn.asarray(x[t]), h)
        assert y_t.shape == (H,)
    assert_close(y_t, xrnn.to_numpy(output)[-1], rtol=1e-12, atol=1e-12)
    assert_close(h, h_n, rtol=1e-12, atol=1e-12)


def test_step_rejects_bidirectional_layers_and_sequences(xp, rng):
    with pytest.raises(ValueError, match="needs a unidirectional layer"):
        xrnn.RNN(I, H, bidirectional=True).step(xrnn.asarray(np.zeros((B, I)), dtype="float32"))
    with pytest.raises(ValueError, match=r"one timestep of shape \(B, H_in\)"):
        xrnn.RNN(I, H).step(xrnn.asarray(np.zeros((T, B, I)), dtype="float32"))
    with pytest.raises(TypeError, match=r"expected hx = \(h, c\)"):
        xrnn.LSTM(I, H).step(xrnn.asarray(np.zeros((B, I)), dtype="float32"), [1, 2, 3])
