"""Forward-pass timing of xrnn.RNN against torch.nn.RNN, side by side.

Both contenders run alternately in one process (the machines are shared and
noisy) and the medians are compared. Run: ``python benchmarks/bench_forward.py``
(``--quick`` for fewer repeats; ``XRNN_BACKEND`` picks xrnn's backend). With
``XRNN_BACKEND=cupy`` the reference is torch on CUDA (cuDNN), both synchronised.
Never run as a timed test in CI.
"""

from __future__ import annotations

import argparse
import statistics
import time

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


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_row(shape: tuple[int, ...], rounds: int, per_round: int) -> tuple[float, float]:
    t, b, i, h, layers, d = shape
    model = xrnn.RNN(i, h, num_layers=layers, bidirectional=d == 2, seed=0).eval()
    device = "cuda" if xrnn.get_backend() == "cupy" else "cpu"
    reference = torch.nn.RNN(i, h, num_layers=layers, bidirectional=d == 2).eval()
    reference.load_state_dict(xrnn.io.torch_state_dict(model))
    reference.to(device)
    host = np.random.default_rng(0).standard_normal((t, b, i)).astype(np.float32)
    x, x_torch = xrnn.asarray(host), torch.from_numpy(host).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run_xrnn():
        output = model(x)[0]
        if device == "cuda":
            xrnn.get_namespace(output).cuda.Stream.null.synchronize()  # CuPy namespace

    def run_torch():
        with torch.inference_mode():
            reference(x_torch)
        sync()

    run_xrnn(), run_torch()  # warm-up
    ours, theirs = [], []
    for _ in range(rounds):  # alternate the contenders so drifts in load hit both
        ours.append(_median_seconds(run_xrnn, per_round))
        theirs.append(_median_seconds(run_torch, per_round))
    return statistics.median(ours), statistics.median(theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    rounds, per_round = (3, 3) if args.quick else (7, 5)
    gpu = f", {torch.cuda.get_device_name()}" if xrnn.get_backend() == "cupy" else ""
    print(f"xrnn backend {xrnn.get_backend()}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads{gpu}), medians of {rounds}x{per_round} runs")
    print(f"{'T, B, I, H, L, D':<28}{'xrnn ms':>10}{'torch ms':>10}{'ratio':>8}")
    for shape in GRID:
        ours, theirs = bench_row(shape, rounds, per_round)
        print(f"{str(shape):<28}{ours * 1e3:>10.2f}{theirs * 1e3:>10.2f}{ours / theirs:>8.2f}",
              flush=True)


if __name__ == "__main__":
    main()
