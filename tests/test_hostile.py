"""Hostile values: NaN and infinity propagate untouched by default, ``check_finite=True``
rejects them naming the array, the count and the first index, and overflow gives inf."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import xrnn

T, B, I, H = 5, 2, 3, 4
KINDS = ["RNN", "LSTM", "GRU"]


def make(kind, **options):
    return getattr(xrnn, kind)(I, H, num_layers=2, dtype="float64", seed=0, **options)


def arrays(kind, rng, batch_first=False):
    """Host input and initial states, by the names check_finite reports."""
    named = {"input": rng.standard_normal((B, T, I) if batch_first else (T, B, I)),
             "h0": rng.standard_normal((2, B, H))}
    if kind == "LSTM":
        named["c0"] = rng.standard_normal((2, B, H))
    return named


def call(model, named, **options):
    """``model(x, state, **options)`` with host arrays moved to the selected backend."""
    x, *states = (xrnn.asarray(a) for a in named.values())
    state = tuple(states) if len(states) == 2 else states[0]
    return model(x, state, **options)


def call_functional(kind, model, named, vjp):
    x, *states = (xrnn.asarray(a) for a in named.values())
    function = getattr(xrnn.functional, kind.lower() + ("_vjp" if vjp else ""))
    return function(x, tuple(states) if len(states) == 2 else states[0], model.state_dict(),
                    num_layers=2, check_finite=True)


def message(name, count, size, value, index):
    return re.escape(f"{name} must be finite (check_finite=True), got {count} non-finite "
                     f"of {size} entries; the first is {value} at index {index}")


@pytest.mark.parametrize("kind, name", [(k, n) for k in KINDS for n in ("input", "h0", "c0")
                                        if n != "c0" or k == "LSTM"])
def test_check_finite_names_array_count_and_first_index(xp, rng, kind, name):
    model = make(kind)
    named = arrays(kind, rng)
    bad = named[name]
    bad[1, 1, 2], bad[1, 0, 1], bad[-1, -1, 0] = np.nan, -np.inf, np.inf  # C order: (1, 0, 1) first
    expected = message(name, 3, bad.size, "-inf", (1, 0, 1))
    with pytest.raises(ValueError, match=expected):
        call(model, named, check_finite=True)
    for vjp in (False, True):
        with pytest.raises(ValueError, match=expected):
            call_functional(kind, model, named, vjp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy: "invalid value" (inf - inf)
        output, _ = call(model, named)  # default: no check, and nothing is replaced
    assert not np.all(np.isfinite(xrnn.to_numpy(output)))


@pytest.mark.parametrize("kind", KINDS)
def test_nan_propagates_forward_in_time_only(xp, rng, kind):
    model = make(kind)
    named = arrays(kind, rng)
    named["input"][2, 0, 1] = np.nan
    output, finals = call(model, named)
    out = xrnn.to_numpy(output)
    assert np.all(np.isfinite(out[:2])) and np.all(np.isfinite(out[:, 1]))
    assert np.all(np.isnan(out[2:, 0]))
    h_n = xrnn.to_numpy(finals[0] if kind == "LSTM" else finals)
    assert np.all(np.isnan(h_n[:, 0])) and np.all(np.isfinite(h_n[:, 1]))


def test_check_finite_indexes_the_callers_layout(xp, rng):
    model = make("GRU", batch_first=True)
    named = arrays("GRU", rng, batch_first=True)
    named["input"][1, 3, 2] = np.inf
    with pytest.raises(ValueError, match=message("input", 1, B * T * I, "inf", (1, 3, 2))):
        call(model, named, check_finite=True)
    unbatched = make("RNN")
    x = rng.standard_normal((T, I))
    x[4, 1] = np.nan
    with pytest.raises(ValueError, match=message("input", 1, T * I, "nan", (4, 1))):
        unbatched(xrnn.asarray(x), check_finite=True)


def test_check_finite_ignores_padding_past_lengths(xp, rng):
    model = make("LSTM", bidirectional=True)
    x = rng.standard_normal((T, B, I))
    x[3:, 1] = np.nan  # sequence 1 has length 3: never read
    output, _ = model(xrnn.asarray(x), lengths=[T, 3], check_finite=True)
    assert np.all(np.isfinite(xrnn.to_numpy(output)))
    x[2, 1, 0] = np.nan
    with pytest.raises(ValueError, match=message("input", 1, T * B * I, "nan", (2, 1, 0))):
        model(xrnn.asarray(x), lengths=[T, 3], check_finite=True)


@pytest.mark.parametrize("kind", KINDS)
def test_step_check_finite(xp, rng, kind):
    model = make(kind)
    named = arrays(kind, rng)
    x_t = named["input"][0]
    x_t[1, 2] = np.nan
    states = [xrnn.asarray(s) for k, s in named.items() if k != "input"]
    state = tuple(states) if kind == "LSTM" else states[0]
    with pytest.raises(ValueError, match=message("input", 1, B * I, "nan", (1, 2))):
        model.step(xrnn.asarray(x_t), state, check_finite=True)
    y_t, _ = model.step(xrnn.asarray(x_t), state)  # default: propagates
    assert np.all(np.isnan(xrnn.to_numpy(y_t)[1])) and np.all(np.isfinite(xrnn.to_numpy(y_t)[0]))
    x_t[1, 2] = 0.0
    named["h0"][1, 0, 3] = np.inf
    state = (xrnn.asarray(named["h0"]), states[1]) if kind == "LSTM" else xrnn.asarray(named["h0"])
    with pytest.raises(ValueError, match=message("h0", 1, 2 * B * H, "inf", (1, 0, 3))):
        model.step(xrnn.asarray(x_t), state, check_finite=True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_relu_overflow_gives_inf_without_raising(xp, dtype):
    model = xrnn.RNN(1, 2, nonlinearity="relu", bias=False, dtype=dtype)
    model.load_state_dict({"weight_ih_l0": np.full((2, 1), 1e8),
                           "weight_hh_l0": np.full((2, 2), 1e8)})
    x = xrnn.asarray(np.full((60, 1, 1), 1e8), dtype=dtype)  # h_t grows 2e8-fold a step
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy's "overflow encountered"
        output, h_n = model(x, check_finite=True)  # the input is finite: nothing to reject
    out = xrnn.to_numpy(output)[:, 0, 0]
    first_inf = int(np.argmax(np.isinf(out)))
    assert np.all(np.isposinf(out[first_inf:])) and np.all(np.isposinf(xrnn.to_numpy(h_n)))
    assert np.all(np.isfinite(out[:first_inf])) and 0 < first_inf < 60
    assert float(out[first_inf - 1]) * 2e8 > float(np.finfo(dtype).max) / 2  # not earlier
