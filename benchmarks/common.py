"""Shared by the benchmark scripts: the shape grid, matched model pairs, alternating timing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch

import xrnn

#: (T, B, I, H, L, D): sequence length, batch, input size, hidden size, layers, directions.
GRID = [
    (50, 1, 8, 16, 2, 2),
    (100, 32, 64, 128, 2, 2),
    (200, 64, 256, 512, 2, 2),
    (100, 256, 512, 1024, 1, 1),
]


CELLS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def matched_pair(shape: tuple[int, ...], cell: str = "rnn"):
    """An xrnn layer and the torch.nn layer of the same kind (``cell``: rnn, lstm or gru)
    with the same weights, an input for each, and a sync function that waits for the
    GPU when xrnn runs on CuPy (torch then uses CUDA)."""
    t, b, i, h, layers, d = shape
    device = "cuda" if xrnn.get_backend() == "cupy" else "cpu"
    model = getattr(xrnn, CELLS[cell])(i, h, num_layers=layers, bidirectional=d == 2, seed=0)
    reference = getattr(torch.nn, CELLS[cell])(i, h, num_layers=layers, bidirectional=d == 2)
    reference.load_state_dict(xrnn.io.torch_state_dict(model))
    reference.to(device)
    host = np.random.default_rng(0).standard_normal((t, b, i)).astype(np.float32)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()
            xrnn.get_namespace().cuda.Stream.null.synchronize()

    return model, reference, xrnn.asarray(host), torch.from_numpy(host).to(device), sync


def _median_seconds(fn: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def alternate(ours: Callable[[], None], theirs: Callable[[], None], rounds: int,
              per_round: int) -> tuple[float, float]:
    """Median seconds of each contender, run in alternating rounds after one warm-up each,
    so that drifts in the machine's load hit both."""
    ours(), theirs()
    a, b = [], []
    for _ in range(rounds):
        a.append(_median_seconds(ours, per_round))
        b.append(_median_seconds(theirs, per_round))
    return statistics.median(a), statistics.median(b)


def report(title: str, rows: Iterable[tuple[tuple[int, ...], float, float]]) -> None:
    """Print a table row by row, as ``rows`` are measured."""
    print(title, flush=True)
    print(f"{'T, B, I, H, L, D':<28}{'xrnn ms':>10}{'torch ms':>10}{'ratio':>8}")
    for shape, ours, theirs in rows:
        print(f"{str(shape):<28}{ours * 1e3:>10.2f}{theirs * 1e3:>10.2f}{ours / theirs:>8.2f}",
              flush=True)


def header(cell: str, rounds: int, per_round: int) -> str:
    gpu = f", {torch.cuda.get_device_name()}" if xrnn.get_backend() == "cupy" else ""
    return (f"{CELLS[cell]}: xrnn backend {xrnn.get_backend()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads{gpu}), medians of {rounds}x{per_round} runs")


def arguments(description: str):
    """The benchmarks' shared command line: ``--cell`` (repeatable) and ``--quick``."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cell", choices=list(CELLS), action="append",
                        help="layer type(s) to time (default: all three)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    args.cell = args.cell or list(CELLS)
    return args
