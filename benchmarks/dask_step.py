"""A data-parallel LSTM training step on Dask against the single-process step.

Times one training step (forward, MSE loss, backward, Adam) of ``Sequential(LSTM,
Linear)``, float32, NumPy backend: in this process on the whole batch and on one
worker's shard (the compute per shard), then through :class:`xrnn.dask.DataParallel`
on Dask's local threaded scheduler (one shard: Dask's own overhead, no network) and on
LocalClusters of 1 and 2 worker processes (one thread each; every process, this
one included, gets one BLAS thread unless ``OPENBLAS_NUM_THREADS`` says otherwise).
Each row reports the median step, the overhead over the compute per shard, and the
bytes moved per step: what xrnn sends (weights to every worker, each shard's data,
gradients back; pickled sizes) and what the loopback interface carried (every Dask
message, heartbeats included). Results go to ``benchmarks/results/dask-<date>.md``
and ``.json`` with the machine's description and its load (``uptime``) before and
after. Never run in CI.

    python -m benchmarks.dask_step                       # T,B,I,H,L = 50,64,32,128,1
    python -m benchmarks.dask_step --quick --shape 20,16,8,16,1
"""

from __future__ import annotations

import argparse
import datetime
import os
import pickle
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as ``python benchmarks/dask_step.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# One BLAS thread per process, set before NumPy loads and inherited by the workers: a
# worker is one core, the single-process baseline too, and a second BLAS thread stalls
# on a shared machine (benchmarks/NOTES.md). Set the variables yourself to override.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402
import psutil  # noqa: E402  (a dependency of distributed)
from distributed import Client, LocalCluster  # noqa: E402

import xrnn  # noqa: E402
import xrnn.dask as xdask  # noqa: E402
from benchmarks.common import machine_info, write_results  # noqa: E402
from benchmarks.run import RESULTS  # noqa: E402

FIELDS = ("T", "B", "I", "H", "L")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dask_step",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="50,64,32,128,1", metavar="T,B,I,H,L",
                        help="sequence length, batch, input size, hidden size, layers "
                             "(default 50,64,32,128,1)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="LocalCluster sizes to time (default: 1 2)")
    parser.add_argument("--steps", type=int, help="timed steps each (default 15; 5 --quick)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps each (default 2)")
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    parser.add_argument("--output", type=Path,
                        help="write OUTPUT.md and OUTPUT.json (default: "
                             "benchmarks/results/dask-<date>)")
    args = parser.parse_args(argv)
    try:
        shape = tuple(int(v) for v in args.shape.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 5 or min(shape) < 1:
        parser.error(f"--shape {args.shape!r}: expected T,B,I,H,L, five positive integers")
    if min(args.workers) < 1 or max(args.workers) > shape[1]:
        parser.error(f"--workers: each between 1 and the batch {shape[1]}")
    args.shape, args.steps = shape, args.steps or (5 if args.quick else 15)
    return args


def make_model(shape: tuple[int, ...]) -> xrnn.Sequential:
    _, _, inputs, hidden, layers = shape
    return xrnn.Sequential(xrnn.LSTM(inputs, hidden, num_layers=layers, seed=0),
                           xrnn.Linear(hidden, 1, seed=1))


def make_batch(shape: tuple[int, ...], batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    steps, full, inputs = shape[:3]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((steps, batch or full, inputs)).astype("float32")
    return x, np.cumsum(x[..., :1], axis=0) / 3


def local_step(shape: tuple[int, ...], batch: int) -> Callable[[], float]:
    """One single-process training step on ``batch`` sequences."""
    model = make_model(shape)
    loss_fn, optimizer = xrnn.MSELoss(), xrnn.optim.Adam(model.parameters(), lr=1e-3)
    x, y = (xrnn.asarray(a) for a in make_batch(shape, batch))

    def step() -> float:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        optimizer.step()
        return float(xrnn.to_numpy(loss))
    return step


def loopback_bytes() -> int:
    counters = psutil.net_io_counters(pernic=True)
    lo = counters.get("lo")
    return lo.bytes_sent if lo is not None else 0


def timed(step: Callable[[], Any], steps: int, warmup: int) -> dict[str, float]:
    """Median and spread of ``steps`` timed calls after ``warmup``; loopback bytes per step."""
    for _ in range(warmup):
        step()
    before, times = loopback_bytes(), []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
            "max_ms": 1e3 * max(times), "loopback_bytes": (loopback_bytes() - before) / steps}


def sent_bytes(model: xrnn.Module, shape: tuple[int, ...], workers: int) -> dict[str, int]:
    """What one step hands to Dask, as pickled sizes: the weights once per worker, each
    shard's x and y, and each shard's result (loss, count, gradients) back."""
    x, y = make_batch(shape)
    payload = xdask._payload(model, None)
    weights = len(pickle.dumps(payload, protocol=5))
    bounds = np.cumsum([0] + [len(p) for p in np.array_split(np.arange(shape[1]), workers)])
    data = sum(len(pickle.dumps((x[:, a:b], y[:, a:b]), protocol=5))
               for a, b in zip(bounds, bounds[1:]))
    grads = {name: np.asarray(xrnn.to_numpy(p.data)) for name, p in model.named_parameters()}
    result = len(pickle.dumps((0.0, 1, grads), protocol=5))
    return {"weights_each": weights, "weights": weights * workers, "data": data,
            "gradients": result * workers, "total": weights * workers + data + result * workers}


def dask_step(shape: tuple[int, ...], client: Any, shards: int) -> tuple[Callable[[], float],
                                                                         xrnn.Module]:
    model = make_model(shape)
    parallel = xdask.DataParallel(model, xrnn.MSELoss(), xrnn.optim.Adam(model.parameters(),
                                                                         lr=1e-3),
                                  client=client, shards=shards, seed=0)
    x, y = make_batch(shape)
    return (lambda: parallel.step(x, y)), model


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    shape, batch = args.shape, args.shape[1]
    rows = []

    def add(name: str, shards: int, result: dict[str, float], sent: dict[str, int] | None,
            shard_ms: float | None) -> None:
        row = {"name": name, "shards": shards, **result, "sent_bytes": sent,
               "overhead_ms": None if shard_ms is None else result["ms"] - shard_ms}
        rows.append(row)
        print(table_row(row), flush=True)

    shard_ms = {}
    for n in sorted({1, *args.workers}):
        shard = -(-batch // n)
        result = timed(local_step(shape, shard), args.steps, args.warmup)
        shard_ms[n] = result["ms"]
        add(f"single process, B={shard}" + (" (whole batch)" if n == 1 else f" (1/{n})"),
            1, result, None, None)
    step, model = dask_step(shape, None, 1)
    add("dask threads, 1 shard", 1, timed(step, args.steps, args.warmup), None, shard_ms[1])
    for n in args.workers:
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            step, model = dask_step(shape, client, n)
            add(f"LocalCluster, {n} worker process{'es' if n > 1 else ''}", n,
                timed(step, args.steps, args.warmup), sent_bytes(model, shape, n), shard_ms[n])
    return rows


def _mb(value: float | None) -> str:
    return "" if value is None else f"{value / 1e6:.3f}"


def table_header() -> str:
    columns = ["contender", "shards", "median ms", "min-max ms", "overhead ms",
               "xrnn sends MB/step (weights + data + grads)", "loopback MB/step"]
    return "| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|"


def table_row(row: dict[str, Any]) -> str:
    sent = row["sent_bytes"]
    parts = ("" if sent is None else f"{_mb(sent['total'])} ({_mb(sent['weights'])} + "
             f"{_mb(sent['data'])} + {_mb(sent['gradients'])})")
    overhead = "" if row["overhead_ms"] is None else f"{row['overhead_ms']:.1f}"
    cells = [row["name"], str(row["shards"]), f"{row['ms']:.1f}",
             f"{row['min_ms']:.1f}-{row['max_ms']:.1f}", overhead, parts,
             _mb(row["loopback_bytes"]) if sent is not None else ""]
    return "| " + " | ".join(cells) + " |"


def markdown(result: dict[str, Any]) -> str:
    machine = "\n".join(f"| {key} | {value} |" for key, value in result["machine"].items())
    rows = "".join(table_row(row) + "\n" for row in result["rows"])
    shape = ", ".join(f"{k}={v}" for k, v in result["shape"].items())
    return (f"# xrnn.dask data-parallel LSTM step, {result['date']}\n\n"
            f"`{result['command']}`\n\n| machine | |\n|---|---|\n{machine}\n"
            f"| load before | {result['load_before']} |\n"
            f"| load after | {result['load_after'] or '(running)'} |\n"
            f"| model | Sequential(LSTM, Linear(H, 1)), float32, {shape}; "
            f"{result['parameters']:,} parameters |\n"
            f"| timing | {result['timing']} |\n\n"
            "Overhead: the median step minus the single-process step on one shard's batch. "
            "The single-process rows hold the compute per shard.\n\n"
            f"{table_header()}\n{rows}")


def output_stem(args: argparse.Namespace, date: str) -> Path:
    if args.output:
        out = args.output
        return out.with_suffix("") if out.suffix in (".md", ".json") else out
    stem, n = RESULTS / f"dask-{date}", 2
    while Path(f"{stem}.md").exists() or Path(f"{stem}.json").exists():
        stem, n = RESULTS / f"dask-{date}-{n}", n + 1
    return stem


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write the Markdown and JSON files."""
    args = parse_args(argv)
    with xrnn.use_backend("numpy"):
        result: dict[str, Any] = {
            "date": datetime.date.today().isoformat(),
            "command": "python -m benchmarks.dask_step " + " ".join(
                sys.argv[1:] if argv is None else argv),
            "machine": machine_info("numpy"), "load_before": uptime(), "load_after": None,
            "shape": dict(zip(FIELDS, args.shape)),
            "parameters": make_model(args.shape).num_parameters(),
            "timing": f"median of {args.steps} steps after {args.warmup} warm-up steps, "
                      "wall clock, contenders one after another",
            "rows": [],
        }
        print(markdown(result), end="", flush=True)
        result["rows"] = measure(args)
        result["load_after"] = uptime()
    stem = output_stem(args, result["date"])
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_results(stem, markdown(result), result)
    print(f"load after: {result['load_after']}\nwrote {stem}.md and {stem}.json")
    return result


if __name__ == "__main__":
    main()
