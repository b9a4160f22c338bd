"""``python -m benchmarks.layernorm`` runs, and its PyTorch reference computes what
xrnn's LayerNorm LSTM computes (so the timings compare equal work).

No timing is asserted. Like tests/test_benchmarks.py it runs in the numpy leg only, as
the benchmark picks its own backend.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import xrnn

_selected = [n.strip() for n in os.environ.get("XRNN_TEST_BACKENDS", "").split(",") if n.strip()]
pytestmark = pytest.mark.skipif(bool(_selected) and "numpy" not in _selected,
                                reason="the benchmark smoke test runs with the numpy backend only")


@pytest.mark.parametrize("shape", [(5, 3, 4, 6, 2, 2), (4, 2, 3, 5, 1, 1)])
def test_torch_reference_equals_xrnn_layer_norm_lstm(shape):
    """Eager and scripted reference against ``xrnn.LSTM(layer_norm=True)``, to 1e-5, with
    LayerNorm weights away from their init (a dropped LayerNorm or a swapped weight fails)."""
    torch = pytest.importorskip("torch", reason="the reference is written in torch (xrnn[parity])")
    from benchmarks.layernorm import ln_lstm, ln_model, scripted_ln_lstm, torch_weights

    t, b, i = shape[:3]
    x = np.random.default_rng(1).standard_normal((t, b, i)).astype(np.float32)
    with xrnn.use_backend("numpy"):
        model = ln_model(shape)
        assert not np.allclose(xrnn.to_numpy(model.ln_weight_c_l0.data), 1.0)
        with xrnn.no_grad():
            expected = xrnn.to_numpy(model(xrnn.asarray(x))[0])
        weights = torch_weights(model)
    with torch.no_grad():
        eager = ln_lstm(torch.from_numpy(x), weights).numpy()
        scripted = scripted_ln_lstm()(torch.from_numpy(x), weights).numpy()
    assert eager.shape == expected.shape == (t, b, shape[3] * shape[5])
    np.testing.assert_allclose(eager, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(scripted, expected, rtol=0, atol=1e-5)


def test_layernorm_benchmark_smoke(tmp_path):
    pytest.importorskip("torch", reason="the benchmark compares against torch (xrnn[parity])")
    from benchmarks.layernorm import LABELS, TARGETS, main

    result = main(["--shapes", "3,2,4,5,2,2", "--rounds", "1", "--per-round", "1",
                   "--warmup", "1", "--output", str(tmp_path / "ln")])
    (row,) = result["rows"]
    assert row["shape"] == dict(T=3, B=2, I=4, H=5, L=2, D=2)
    assert set(row["ms"]) == set(LABELS) and min(row["ms"].values()) > 0
    assert set(row["ratio"]) == set(LABELS) - {"xrnn"} and set(TARGETS) <= set(row["ratio"])
    assert json.loads((tmp_path / "ln.json").read_text()) == result
    text = (tmp_path / "ln.md").read_text()
    assert "| 3, 2, 4, 5, 2, 2 |" in text and "(<= 1.5)" in text and "load average" in text


def test_layernorm_benchmark_rejects_bad_shape(capsys):
    pytest.importorskip("torch", reason="the benchmark compares against torch (xrnn[parity])")
    from benchmarks.layernorm import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--shapes", "1,2,3"])
    assert "'1,2,3' is not T,B,I,H,L,D" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--shapes", "1"])
    assert "row 1 is not in the grid (0 to 0)" in capsys.readouterr().err
    assert parse_args([]).shapes == parse_args(["--shapes", "0"]).shapes == [(100, 32, 64, 128, 2, 2)]
