"""The benchmark suite's code runs: one tiny shape, one round, every cell and mode; and
the options the README names (--quick, --cell, --mode, --shapes by index or written out).

No timing is asserted (that is ``python -m benchmarks``'s job on a quiet machine); only
that rows come out with positive times and that valid JSON and Markdown are written.
It runs in the numpy leg of the backend matrix only, as the benchmark picks its own
backend.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_benchmark_cli_quick_cell_mode_and_shape_by_index(tmp_path):
    """``python -m benchmarks --quick --cell lstm --mode train --shapes 0``: one row, the
    grid's first shape, timed 3 rounds x 3 runs (what --quick promises)."""
    pytest.importorskip("torch", reason="the benchmark compares against torch (xrnn[parity])")
    from benchmarks.common import CPU_GRID

    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "benchmarks", "--quick", "--cell", "lstm", "--mode", "train",
               "--shapes", "0", "--backend", "numpy", "--warmup", "1", "--peak-sizes", "64",
               "--output", str(tmp_path / "quick")]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "quick.json").read_text())
    assert [(r["cell"], r["mode"]) for r in result["rows"]] == [("lstm", "train")]
    row = result["rows"][0]
    assert tuple(row["shape"].values()) == CPU_GRID[0] and list(row["shape"]) == list("TBIHLD")
    assert (row["rounds"], row["per_round"]) == (3, 3)
    assert result["peak_sizes"] == [64] and result["timing"].startswith("train 3x3 ")
    assert result["command"] == "python -m benchmarks " + " ".join(command[3:])
    assert "| lstm | train | 50, 1, 8, 16, 2, 2 |" in done.stdout


def test_benchmark_repeated_cells_modes_and_mixed_shapes(tmp_path):
    """--cell and --mode repeat; --shapes mixes grid indices and written-out shapes; rows
    come cell by cell, mode by mode, shape by shape."""
    pytest.importorskip("torch", reason="the benchmark compares against torch (xrnn[parity])")
    from benchmarks.common import CPU_GRID
    from benchmarks.run import main

    result = main(["--backend", "numpy", "--cell", "gru", "--cell", "rnn", "--mode", "forward",
                   "--shapes", "3,2,4,5,1,1", "0", "--quick", "--rounds", "1", "--per-round", "1",
                   "--warmup", "1", "--peak-sizes", "64", "--output", str(tmp_path / "mixed")])
    assert [(r["cell"], r["mode"], tuple(r["shape"].values())) for r in result["rows"]] == [
        (cell, "forward", shape) for cell in ("gru", "rnn") for shape in ((3, 2, 4, 5, 1, 1),
                                                                          CPU_GRID[0])]
    assert all(set(r["ms"]) == {"xrnn", "torch"} for r in result["rows"])


@pytest.mark.parametrize("argv, message", [
    (["--shapes", "7"], "--shapes: row 7 is not in the grid (0 to 6)"),
    (["--shapes", "1,2,3"], "'1,2,3' is not T,B,I,H,L,D"),
    (["--shapes", "5,1,4,8,1,3"], "D in 1, 2"),
    (["--cell", "transformer"], "argument --cell: invalid choice: 'transformer'"),
    (["--mode", "backward"], "argument --mode: invalid choice: 'backward'"),
])
def test_benchmark_rejects_bad_options(capsys, argv, message):
    pytest.importorskip("torch", reason="the benchmark compares against torch (xrnn[parity])")
    from benchmarks.run import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--backend", "numpy", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_benchmark_quick_repeats():
    """--quick: 3 rounds x 3 runs for both modes; --rounds / --per-round still win."""
    pytest.importorskip("torch", reason="the benchmark compares against torch (xrnn[parity])")
    from benchmarks.run import parse_args, repeats

    plain, quick = parse_args(["--backend", "numpy"]), parse_args(["--backend", "numpy", "--quick"])
    assert [repeats(plain, m) for m in ("forward", "train")] == [(7, 5), (5, 3)]
    assert [repeats(quick, m) for m in ("forward", "train")] == [(3, 3), (3, 3)]
    overridden = parse_args(["--backend", "numpy", "--quick", "--rounds", "2"])
    assert repeats(overridden, "train") == (2, 3)
