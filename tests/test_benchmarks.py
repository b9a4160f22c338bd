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
        assert len(row["ratio_by_round"]["torch"]) == 1  # one round: its ratio is the row's
        assert row["ratio_by_round"]["torch"][0] == pytest.approx(row["ratio"]["torch"])
    assert json.loads((tmp_path / "smoke.json").read_text()) == result
    text = (tmp_path / "smoke.md").read_text()
    assert "| float32 matmul peak |" in text and "| cell | mode |" in text
    rows = ("| rnn |", "| lstm |", "| gru |")
    assert sum(line.startswith(rows) for line in text.splitlines()) == 6


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


def test_alternate_rounds_pairs_each_round_and_the_row_keeps_the_medians(monkeypatch):
    """Each contender's median per round, contenders in turn within a round; the row's
    ``ratio_by_round`` divides xrnn's round by torch's same round, and the table prints
    their range next to the ratio of the medians."""
    pytest.importorskip("torch", reason="the benchmark compares against torch (xrnn[parity])")
    from benchmarks import common, run

    monkeypatch.setattr(common, "SETTLE_SECONDS", 0.0)
    order = []
    # per contender: 3 rounds x 3 runs; each round's middle value is its median
    times = {"xrnn": iter([5, 1, 3, 9, 2, 4, 6, 6, 6]), "torch": iter([4, 4, 4, 8, 9, 7, 3, 1, 2])}

    def timer_of(name):
        def timer(fn):
            fn()
            order.append(name)
            return next(times[name])
        return timer

    ran = {"xrnn": 0, "torch": 0}
    runs = {name: ((lambda name=name: ran.__setitem__(name, ran[name] + 1)), timer_of(name))
            for name in ("xrnn", "torch")}
    by_round = common.alternate_rounds(runs, rounds=3, per_round=3, warmup=1)
    assert by_round == {"xrnn": [3, 4, 6], "torch": [4, 8, 2]}
    assert ran == {"xrnn": 10, "torch": 10}  # one warm-up and nine timed runs each
    assert order == (["xrnn"] * 3 + ["torch"] * 3) * 3
    times.update(xrnn=iter([5, 1, 3, 9, 2, 4, 6, 6, 6]), torch=iter([4, 4, 4, 8, 9, 7, 3, 1, 2]))
    assert common.alternate(runs, rounds=3, per_round=3, warmup=0) == {"xrnn": 4, "torch": 4}

    monkeypatch.setattr(run, "alternate_rounds", lambda *args: {"xrnn": [3, 4, 6],
                                                                "torch": [4, 8, 2]})
    monkeypatch.setattr(run, "contenders", lambda *args: None)
    args = run.parse_args(["--backend", "numpy", "--cell", "rnn", "--mode", "forward",
                           "--shapes", "3,2,4,5,1,1"])
    (row,) = run.measure(args, peak=1.0)
    assert row["ms"] == {"xrnn": 4000, "torch": 4000} and row["ratio"] == {"torch": 1.0}
    assert row["ratio_by_round"] == {"torch": [0.75, 0.5, 3.0]}
    assert "| 1.00 | 0.50-3.00 |" in run.table_row(row)
    assert "| xrnn/torch | xrnn/torch by round |" in run.table_header(["xrnn", "torch"])


def _floors():
    pytest.importorskip("torch", reason="the benchmark compares against torch (xrnn[parity])")
    pytest.importorskip("numba", reason="the floors' ceilings run compiled loops (xrnn[fast])")
    from benchmarks import floors
    return floors


def test_floor_bounds_from_given_ceilings():
    """compute = the row's matrix-product FLOPs at the given GFLOP/s; stream = W_hh read
    once a step per layer and direction (twice in training), a layer's D * W_hh split
    over the two cores: the stream function is asked for half of it."""
    floors = _floors()
    from benchmarks.common import model_flops

    asked = []

    def stream(nbytes):
        asked.append(nbytes)
        return 2.0  # GB/s

    def gates(cell, mode, batch, hidden):
        asked.append((cell, mode, batch, hidden))
        return 7.0 if mode == "train" else 3.0  # ns a unit

    def gemm(m, k, n):
        return 0.25  # GFLOP/s a core: half of the 0.5 that both cores make together

    shape = (10, 3, 5, 4, 2, 2)
    for mode, passes, unit_ns in (("forward", 1, 3.0), ("train", 2, 7.0)):
        asked.clear()
        bound = floors.floor("lstm", mode, shape, 0.5, stream, gates, gemm)
        w_hh = 4 * 4 * 4 * 4  # G*H x H float32
        assert asked == [w_hh, ("lstm", mode, 3, 4)]  # (2 directions x w_hh) / 2 cores
        assert bound["stream_ms"] == pytest.approx(passes * 10 * 2 * 2 * w_hh / 2.0 / 1e6)
        assert bound["compute_ms"] == pytest.approx(model_flops("lstm", shape, mode) / 0.5 / 1e6)
        assert bound["bound"] == "compute" and bound["floor_ms"] == bound["compute_ms"]
        # T*B*H*L*D units at unit_ns each, shared by the two cores
        assert bound["gates_ms"] == pytest.approx(10 * 3 * 4 * 2 * 2 * unit_ns / 2 / 1e6)
        assert bound["with_gates_ms"] == pytest.approx(bound["floor_ms"] + bound["gates_ms"])
        # one core's half of the products at half the two cores' rate: the compute bound
        assert bound["gemm_ms"] == pytest.approx(bound["compute_ms"])
        assert bound["gemm_gates_ms"] == pytest.approx(bound["gemm_ms"] + bound["gates_ms"])
    slow_cache = floors.floor("rnn", "forward", (10, 1, 5, 4, 1, 1), 1e3, lambda n: 1e-3,
                              lambda *row: 0.0, lambda *product: 1.0)
    assert slow_cache["bound"] == "stream" and slow_cache["floor_ms"] == slow_cache["stream_ms"]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("mode", ["forward", "train"])
@pytest.mark.parametrize("shape", [(10, 4, 6, 8, 2, 1), (10, 4, 6, 8, 2, 2), (8, 1, 3, 2, 1, 1)])
def test_floor_products_are_each_cores_half_of_the_row(cell, mode, shape):
    """Two cores' shares of the products add up to the row's FLOPs: with two
    directions a direction a core, with one half of each product (sizes even here)."""
    floors = _floors()
    from benchmarks.common import model_flops
    share = floors.products(cell, mode, shape)
    assert 2 * sum(2 * m * k * n * count for m, k, n, count in share) == model_flops(
        cell, shape, mode)


def test_floor_products_of_a_one_direction_lstm():
    """The canonical products, one core's half: projection, step, and in training the
    step back and the three gradients batched over time."""
    floors = _floors()
    t, b, i, h = 5, 2, 3, 4
    assert floors.products("lstm", "forward", (t, b, i, h, 1, 1)) == [(10, 3, 8, 1), (2, 4, 8, 5)]
    assert floors.products("lstm", "train", (t, b, i, h, 1, 1)) == [
        (10, 3, 8, 1), (2, 4, 8, 5), (2, 16, 2, 5), (8, 10, 3, 1), (8, 10, 4, 1), (5, 16, 3, 1)]
    # two layers, two directions: layer 1 reads both directions' h (2 * 4 wide)
    assert floors.products("gru", "forward", (t, b, i, h, 2, 2)) == [
        (10, 3, 12, 1), (2, 4, 12, 5), (10, 8, 12, 1), (2, 4, 12, 5)]


def test_floor_gemm_rate_measures_a_product_on_both_cores():
    """A real (small) measurement: positive, the same answer from the cache."""
    floors = _floors()
    rate = floors.gemm_rate(8, 16, 32)
    assert rate > 0 and floors.gemm_rate(8, 16, 32) == rate


def test_floors_targets_and_verdicts():
    """0.7 x torch's time at B <= 32, 1.0 x above; a miss is 'reachable' only when the
    target is not below the floor."""
    floors = _floors()

    def row(b, xrnn_ms, torch_ms):
        return {"cell": "rnn", "mode": "forward", "ms": {"xrnn": xrnn_ms, "torch": torch_ms},
                "shape": dict(T=100, B=b, I=64, H=64, L=1, D=1)}

    grid = {"device": "cpu", "rows": [row(32, 6.0, 10.0), row(32, 8.0, 10.0), row(64, 9.0, 10.0),
                                      row(64, 11.0, 10.0), row(1, 2.0, 1.0)]}
    # 2 * 100 * B * 64 * 128 FLOPs at 1 GFLOP/s: B = 32 -> 52.4 ms, B = 64 -> 104.9 ms
    fast_gemm = lambda *product: 1e5  # noqa: E731
    rows = floors.evaluate(grid, 1.0, lambda nbytes: 1e3, lambda *row: 0.0, fast_gemm)
    assert [r["target"] for r in rows] == [0.7, 0.7, 1.0, 1.0, 0.7]
    assert [r["target_ms"] for r in rows] == pytest.approx([7.0, 7.0, 10.0, 10.0, 0.7])
    assert [r["met"] for r in rows] == [True, False, True, False, False]
    assert [r["reachable"] for r in rows] == [False, False, False, False, False]
    fast = floors.evaluate(grid, 1e5, lambda nbytes: 1e3, lambda *row: 0.0, fast_gemm)
    assert [r["reachable"] for r in fast] == [True] * 5
    assert [r["reachable_with_gates"] for r in fast] == [True] * 5
    # gates of 100 * B * 64 units at 1000 ns over two cores: B = 1 -> 3.2 ms > 0.7 ms,
    # B = 32 -> 102 ms, B = 64 -> 205 ms: above every target, no floor below one
    slow_gates = floors.evaluate(grid, 1e5, lambda nbytes: 1e3, lambda *row: 1000.0, fast_gemm)
    assert [r["reachable"] for r in slow_gates] == [True] * 5
    assert [r["reachable_with_gates"] for r in slow_gates] == [False] * 5
    # products at 1 GFLOP/s a core: half of 2 * 100 * B * 64 * 128 FLOPs, B = 1 -> 0.82
    # ms > 0.7 ms, B = 32 -> 26 ms: only reachable with faster products than these
    slow_gemm = floors.evaluate(grid, 1e5, lambda nbytes: 1e3, lambda *row: 0.0,
                                lambda *product: 1.0)
    assert [r["reachable_with_gates"] for r in slow_gemm] == [True] * 5
    assert [r["reachable_with_gemms"] for r in slow_gemm] == [False] * 5
    assert [r["reachable_with_gemms"] for r in fast] == [True] * 5
    assert [floors.verdict(r) for r in slow_gemm] == [
        "met", "missed, reachable only with faster products than this machine's", "met",
        "missed, reachable only with faster products than this machine's",
        "missed, reachable only with faster products than this machine's"]
    ceiling = {"best": 1e5, "packed": 1e5, "blas": 1.0}
    text = floors.markdown({"grid": "g.json", "command": "c", "streams": {4096: 100.0},
                            "ceiling": ceiling, "rows": fast})
    assert "missed, reachable |" in text and "| met |" in text
    # the target's FLOP rate over the ceiling (compute floor / target): 52.4 / 7 ms at B = 32
    text = floors.markdown({"grid": "g.json", "command": "c", "streams": {4096: 100.0},
                            "ceiling": ceiling, "rows": rows})
    assert "| 7.000 (0.7x) | 749% |" in text and "missed, below the floor" in text
    text = floors.markdown({"grid": "g.json", "command": "c", "streams": {4096: 100.0},
                            "ceiling": ceiling, "rows": slow_gates})
    assert "missed, reachable only with faster gates" in text


def test_floors_cli_on_a_grid(tmp_path):
    """``python -m benchmarks.floors GRID``: measures both ceilings, writes MD and JSON;
    refuses a file that is not a CPU grid with torch's times."""
    floors = _floors()
    grid = {"device": "cpu", "rows": [{"cell": "lstm", "mode": mode, "ms": {
        "xrnn": 1.0, "torch": 2.0}, "shape": dict(T=5, B=2, I=3, H=4, L=1, D=2)}
        for mode in ("train", "forward")]}  # (the LSTM's gates with and without a tape)
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(grid))
    result = floors.main([str(path), "--output", str(tmp_path / "floors")])
    ceiling = result["ceiling"]
    assert ceiling["grid"] == 0.0  # a grid without its own peak
    assert min(ceiling["fma"], ceiling["packed"], ceiling["blas"]) > 0
    assert ceiling["best"] == max(ceiling["fma"], ceiling["packed"], ceiling["blas"])
    assert len(result["rows"]) == 2
    for row in result["rows"]:
        assert row["floor_ms"] > 0 and row["gate_ns"] > 0 and row["gates_ms"] > 0
        assert row["gemm_gates_ms"] > row["gemm_ms"] > 0
    assert min(result["streams"].values()) > 0
    assert json.loads((tmp_path / "floors.json").read_text())["rows"] == json.loads(
        json.dumps(result["rows"]))
    assert "| lstm | train | 5, 2, 3, 4, 1, 2 |" in (tmp_path / "floors.md").read_text()
    # the grid's own peak, when higher than the rates measured here, is the ceiling
    path.write_text(json.dumps({**grid, "peak_gflops": 1e9}))
    fast = floors.main([str(path)])
    assert fast["ceiling"]["best"] == fast["ceiling"]["grid"] == 1e9
    assert fast["rows"][0]["compute_ms"] < result["rows"][0]["compute_ms"]
    path.write_text(json.dumps({"device": "cupy", "rows": []}))
    with pytest.raises(SystemExit):
        floors.main([str(path)])


def test_profile_tally_charges_samples_to_xrnn_lines():
    """py-spy's raw stacks: a sample goes to its innermost xrnn frame (else its innermost
    frame); the main thread counts only inside ``_sampled_call`` (the time base), other
    threads only in xrnn; pool threads' numbered names merge."""
    pytest.importorskip("torch", reason="the benchmark compares against torch (xrnn[parity])")
    from benchmarks.profile import XRNN, charge, tally

    threaded = XRNN / "_kernels" / "numba_threaded.py"  # (py-spy: relative or absolute)
    loop = f"_loop ({threaded}:219)"
    matmul = f"_loop ({os.path.relpath(threaded)}:217)"
    call = "_sampled_call (benchmarks/profile.py:90)"
    raw = "\n".join([
        f"thread (1): MainThread;main (x.py:1);{call};run (benchmarks/common.py:95);{loop} 30",
        f"thread (1): MainThread;main (x.py:1);{call};{matmul};helper (numpy/x.py:3) 10",
        f"thread (1): MainThread;main (x.py:1);{call};wait (threading.py:320) 5",
        "thread (1): MainThread;main (x.py:1);sleep (benchmarks/profile.py:80) 50",
        f"thread (2): xrnn-direction_0;_worker (concurrent/futures/thread.py:81);{loop} 25",
        f"thread (3): xrnn-direction_1;_worker (concurrent/futures/thread.py:81);{matmul} 4",
        "thread (2): xrnn-direction_0;_worker (concurrent/futures/thread.py:81) 40",
    ])
    threads, in_loop = tally(raw)
    assert in_loop == 45
    assert dict(threads["MainThread"]) == {loop: 30, matmul: 10, "wait (threading.py:320)": 5}
    assert dict(threads["xrnn-direction"]) == {loop: 25, matmul: 4}
    assert charge(["a (x.py:1)", "b (y.py:2)"]) == "b (y.py:2)" and charge([]) == "?"


def test_profile_cli_samples_a_row(tmp_path):
    """``python -m benchmarks.profile``: one small row sampled for a second; every
    thread's shares add up to at most the main thread's time base."""
    pytest.importorskip("torch", reason="the benchmark compares against torch (xrnn[parity])")
    import shutil

    if shutil.which("py-spy") is None:
        pytest.skip("py-spy is not installed (pip install py-spy)")
    from benchmarks.profile import main

    results = main(["--cell", "lstm", "--mode", "train", "--shapes", "5,2,3,4,1,2",
                    "--seconds", "1", "--output", str(tmp_path / "profile")])
    (row,) = results
    assert row["calls"] > 0 and row["ms_per_call"] > 0 and row["quiet_ms"] > 0
    main_thread = row["threads"]["MainThread"]
    assert sum(f["share"] for f in main_thread) == pytest.approx(1.0)
    assert any("xrnn/" in f["frame"] for f in main_thread)
    assert "## lstm train (5, 2, 3, 4, 1, 2)" in (tmp_path / "profile.md").read_text()


def test_same_window_rows_and_round_verdicts():
    """Rows are 'CELL MODE SHAPE' (a shape or a CPU grid index); a round is met within
    the target, out of reach when the products and gates alone exceed it, else missed."""
    pytest.importorskip("torch", reason="the benchmark compares against torch (xrnn[parity])")
    pytest.importorskip("numba", reason="the floors' measurements run compiled loops (xrnn[fast])")
    from benchmarks import same_window
    from benchmarks.common import CPU_GRID

    assert same_window.parse_row("lstm train 10,2,3,4,1,2") == ("lstm", "train",
                                                                 (10, 2, 3, 4, 1, 2))
    assert same_window.parse_row("gru forward 4") == ("gru", "forward", CPU_GRID[4])
    for bad in ("lstm train", "lstn train 1", "lstm backward 1", "lstm train 1,2,3"):
        with pytest.raises(ValueError, match="T,B,I,H,L,D"):
            same_window.parse_row(bad)
    assert same_window.round_verdict(7.0, 7.0, 9.0) == "met"
    assert same_window.round_verdict(8.0, 7.0, 7.5) == "out of reach"
    assert same_window.round_verdict(8.0, 7.0, 6.0) == "missed"


def test_same_window_smoke(tmp_path):
    """One tiny row, two rounds of one run: positive times, a verdict a round, the
    Markdown and JSON written."""
    pytest.importorskip("torch", reason="the benchmark compares against torch (xrnn[parity])")
    pytest.importorskip("numba", reason="the floors' measurements run compiled loops (xrnn[fast])")
    from benchmarks import same_window

    stem = tmp_path / "sw"
    result = same_window.main(["rnn train 3,2,4,5,1,2", "--rounds", "2", "--per-round", "1",
                               "--output", str(stem)])
    (row,) = result["rows"]
    assert len(row["rounds"]) == 2 and sum(row["verdicts"].values()) == 2
    assert min(row["xrnn_ms"], row["torch_ms"], row["floor_ms"]) > 0
    assert row["target"] == 0.7
    assert json.loads(stem.with_suffix(".json").read_text())["rows"][0]["shape"]["D"] == 2
    assert "| rnn | train | 3, 2, 4, 5, 1, 2 |" in stem.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        same_window.main(["rnn train 3,2,4,5,1,2", "--rounds", "0"])


def _sweep_argv(stem, *extra):
    return ["--backend", "numpy", "--cell", "gru", "--mode", "train", "--batch", "1", "3",
            "--hidden", "4", "6", "--steps", "3", "--rounds", "2", "--per-round", "1",
            "--warmup", "1", "--peak-sizes", "64", "--output", str(stem), *extra]


def test_sweep_times_each_batch_and_hidden_size_and_plots_them(tmp_path):
    """``python -m benchmarks.sweep``: one row per (B, H) with I = H, batch by batch; the
    JSON holds what ``main`` returns, the Markdown a row each and the plot, the PNG is
    one."""
    pytest.importorskip("torch", reason="the sweep compares against torch (xrnn[parity])")
    pytest.importorskip("matplotlib", reason="the sweep's plot needs matplotlib (xrnn[plot])")
    from benchmarks import sweep

    stem = tmp_path / "sweep"
    result = sweep.main(_sweep_argv(stem))
    assert [(r["shape"]["B"], r["shape"]["I"], r["shape"]["H"]) for r in result["rows"]] == [
        (1, 4, 4), (1, 6, 6), (3, 4, 4), (3, 6, 6)]
    assert result["contenders"] == ["xrnn", "torch"] and (result["cell"], result["mode"]) == (
        "gru", "train")
    for row in result["rows"]:
        assert (row["cell"], row["mode"]) == ("gru", "train")
        assert dict(row["shape"], B=0, I=0, H=0) == dict(T=3, B=0, I=0, H=0, L=1, D=1)
        assert min(row["ms"].values()) > 0 and len(row["ratio_by_round"]["torch"]) == 2
    assert json.loads(stem.with_suffix(".json").read_text()) == result
    text = stem.with_suffix(".md").read_text()
    assert text.startswith("# GRU train against hidden size, cpu, ")
    assert sum(line.startswith("| gru | train |") for line in text.splitlines()) == 4
    assert "![GRU train against hidden size](sweep.png)" in text
    assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_without_matplotlib(monkeypatch, tmp_path, capsys):
    """Without matplotlib the sweep refuses before measuring, naming what to install;
    with --no-plot it runs and writes no PNG."""
    pytest.importorskip("torch", reason="the sweep compares against torch (xrnn[parity])")
    from benchmarks import sweep

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
    monkeypatch.setattr(sweep, "measure", lambda *args: pytest.fail("measured before refusing"))
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(_sweep_argv(tmp_path / "refused"))
    assert exit_info.value.code == 2
    assert "the plot needs matplotlib, which is not installed" in capsys.readouterr().err
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    stem = tmp_path / "table"
    result = sweep.main(_sweep_argv(stem, "--no-plot", "--hidden", "5"))
    assert [r["shape"]["H"] for r in result["rows"]] == [5, 5]
    assert stem.with_suffix(".md").exists() and not stem.with_suffix(".png").exists()
    assert "![" not in stem.with_suffix(".md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--batch", "0"], "--batch must be positive"),
    (["--hidden", "8", "-1"], "--hidden must be positive"),
    (["--steps", "0"], "--steps must be positive"),
    (["--rounds", "0"], "--rounds must be positive"),
    (["--directions", "3"], "invalid choice: 3"),
])
def test_sweep_rejects_bad_options(capsys, argv, message):
    pytest.importorskip("torch", reason="the sweep compares against torch (xrnn[parity])")
    from benchmarks import sweep

    with pytest.raises(SystemExit) as exit_info:
        sweep.parse_args(["--backend", "numpy", "--no-plot", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_gpu_contenders_are_named_for_the_issue_ratio_keys(monkeypatch):
    """On the GPU torch runs as ``cudnn`` and as ``torch_loop`` (cuDNN disabled), so each
    row's ``ratio`` has those keys; the tables label them. (The runs themselves need a
    GPU: only the names are checked here.)"""
    pytest.importorskip("torch", reason="the benchmark compares against torch (xrnn[parity])")
    from benchmarks import common, run

    class Stand:
        def eval(self):
            return self

    monkeypatch.setattr(common, "matched_pair", lambda shape, cell: (Stand(), Stand(), None, None))
    monkeypatch.setattr(common.xrnn, "get_backend", lambda: "cupy")
    runs = common.contenders((3, 2, 4, 5, 1, 1), "lstm", "forward")
    assert list(runs) == ["xrnn", "cudnn", "torch_loop"] == common.CONTENDERS["gpu"]
    assert runs["cudnn"][1] is common.torch_event_seconds
    assert runs["xrnn"][1] is common.cupy_event_seconds
    assert "| xrnn/cuDNN | xrnn/torch loop |" in run.table_header(list(runs))
    monkeypatch.setattr(common.xrnn, "get_backend", lambda: "numpy")
    assert list(common.contenders((3, 2, 4, 5, 1, 1), "lstm", "forward")) == [
        "xrnn", "torch"] == common.CONTENDERS["cpu"]
