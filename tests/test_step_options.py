"""``step()`` with issue 14's options: ``reset=`` (B,) booleans restart rows from zeros,
and zoneout / recurrent / weight dropout act as in ``forward``.

The reference is xrnn's own whole-sequence forward (itself checked against torch in
test_cells_extra.py): stepping with ``reset[t]`` must give ``forward(x, reset=reset)``
with ``h0=None``.
"""

from __future__ import annotations

import numpy as np
import pytest

import xrnn
from xrnn.testing import assert_close

T, B, I, H = 6, 3, 4, 5
OPTIONS = dict(zoneout=0.3, recurrent_dropout=0.3, weight_dropout=0.2)
LAYERS = {
    "rnn": lambda **kw: xrnn.RNN(I, H, 2, nonlinearity="relu", **kw),
    "lstm": lambda **kw: xrnn.LSTM(I, H, 2, proj_size=3, **kw),
    "gru": lambda **kw: xrnn.GRU(I, H, 2, **kw),
}


def _finals(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_step_with_reset_equals_forward_with_reset(xp, rng, kind):
    """Eval mode (zoneout as its expectation): step by step with ``reset[t]`` equals the
    whole-sequence forward with ``reset``, step 0 and the last step included."""
    model = LAYERS[kind](dtype="float64", seed=1, **OPTIONS).eval()
    x = rng.standard_normal((T, B, I))
    reset = rng.random((T, B)) < 0.3
    reset[0, 0] = reset[T - 1, 1] = reset[2, 2] = True
    output, final = model(xrnn.asarray(x), reset=xrnn.asarray(reset))
    state = None
    for t in range(T):
        y_t, state = model.step(xrnn.asarray(x[t]), state, reset=xrnn.asarray(reset[t]))
        assert_close(y_t, xrnn.to_numpy(output)[t], rtol=1e-12, atol=1e-12)
    for got, want in zip(_finals(state), _finals(final), strict=True):
        assert_close(got, xrnn.to_numpy(want), rtol=1e-12, atol=1e-12)


def test_step_reset_restarts_only_those_rows(xp, rng):
    """A reset row gives what a zero state gives; the other rows what their state gives;
    an unbatched step takes one bool."""
    model = xrnn.LSTM(I, H, 2, dtype="float64", seed=2).eval()
    x_t = xrnn.asarray(rng.standard_normal((B, I)))
    hx = tuple(xrnn.asarray(rng.standard_normal((2, B, H))) for _ in range(2))
    y, _ = model.step(x_t, hx, reset=xrnn.asarray(np.array([True, False, True])))
    y_zero, _ = model.step(x_t, None)
    y_kept, _ = model.step(x_t, hx)
    y, y_zero, y_kept = (xrnn.to_numpy(a) for a in (y, y_zero, y_kept))
    assert_close(y[[0, 2]], y_zero[[0, 2]], rtol=1e-12, atol=1e-12)
    assert_close(y[1], y_kept[1], rtol=1e-12, atol=1e-12)
    assert not np.allclose(y[0], y_kept[0])
    h = xrnn.asarray(rng.standard_normal((1, H)))
    gru = xrnn.GRU(I, H, dtype="float64", seed=3)
    x_1 = xrnn.asarray(rng.standard_normal(I))
    assert_close(gru.step(x_1, h, reset=True)[1], gru.step(x_1)[1], rtol=1e-12, atol=1e-12)
    assert_close(gru.step(x_1, h, reset=False)[1], gru.step(x_1, h)[1], rtol=1e-12, atol=1e-12)


def test_step_reset_errors(xp):
    model = xrnn.GRU(I, H)
    x_t = xrnn.asarray(np.zeros((B, I)), dtype="float32")
    with pytest.raises(ValueError, match=r"expected reset of shape \(3,\).*got \(2,\)"):
        model.step(x_t, reset=np.array([True, False]))
    with pytest.raises(TypeError, match="reset must be booleans, got dtype int64"):
        model.step(x_t, reset=np.array([1, 0, 1]))


@pytest.mark.parametrize("kind", list(LAYERS))
def test_training_step_draws_the_masks_of_a_one_step_forward(xp, rng, kind):
    """Training mode: a step is a one-step forward, masks included (same seed, same
    draws), so the options reach the step."""
    x = rng.standard_normal((1, B, I))
    stepped = LAYERS[kind](dtype="float64", seed=4, **OPTIONS).train()
    whole = LAYERS[kind](dtype="float64", seed=4, **OPTIONS).train()
    plain = LAYERS[kind](dtype="float64", seed=4).train()
    y_t, state = stepped.step(xrnn.asarray(x[0]))
    output, final = whole(xrnn.asarray(x))
    assert_close(y_t, xrnn.to_numpy(output)[0], rtol=1e-12, atol=1e-12)
    for got, want in zip(_finals(state), _finals(final), strict=True):
        assert_close(got, xrnn.to_numpy(want), rtol=1e-12, atol=1e-12)
    assert not np.allclose(xrnn.to_numpy(y_t), xrnn.to_numpy(plain.step(xrnn.asarray(x[0]))[0]))
