"""The benchmark suite's code runs: one tiny shape, one round, every cell and mode.

No timing is asserted (that is ``python -m benchmarks``'s job on a quiet machine); only
that rows come out with positive times and that valid JSON and Markdown are written.
It runs in the numpy leg of the backend matrix only, as the benchmark picks its own
backend.
"""

from __future__ import annotations

import json
import os

import pytest

_selected = [n.strip() for n in os.environ.get("XRNN_TEST_BACKENDS", "").split(",") if n.strip()]
pytestmark = pytest.mark.skipif(bool(_selected) and "numpy" not in _selected,
                                reason="the benchmark smoke test runs with the numpy backend only")


def test_benchmark_suite_smoke(tmp_path):
    pytest.importorskip("torch", reason="the benchmark compares against torch (xrnn[parity])")
    from benchmarks.run import main

    result = main(["--backend", "numpy", "--shapes", "3,2,4,5,2,2", "--rounds", "1",
                   "--per-round", "1", "--warmup", "1", "--peak-sizes", "64",
                   "--output", str(tmp_path / "smoke")])

    assert result["peak_gflops"] > 0
    assert [(r["cell"], r["mode"]) for r in result["rows"]] == [
        (c, m) for c in ("rnn", "lstm", "gru") for m in ("forward", "train")]
    for row in result["rows"]:
        assert row["shape"] == dict(T=3, B=2, I=4, H=5, L=2, D=2) and row["gflop"] > 0
        assert set(row["ms"]) == {"xrnn", "torch"} and min(row["ms"].values()) > 0
        assert row["ratio"]["torch"] > 0 and min(row["peak_fraction"].values()) > 0
    assert json.loads((tmp_path / "smoke.json").read_text()) == result
    text = (tmp_path / "smoke.md").read_text()
    assert "| float32 matmul peak |" in text and "| cell | mode |" in text
    assert sum(line.startswith(("| rnn |", "| lstm |", "| gru |")) for line in text.splitlines()) == 6
