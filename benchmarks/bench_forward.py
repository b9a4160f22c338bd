"""Forward-pass timing of xrnn.RNN against torch.nn.RNN, side by side.

Both contenders run alternately in one process (the machines are shared and
noisy) and the medians are compared. Run: ``python benchmarks/bench_forward.py``
(``--quick`` for fewer repeats; ``XRNN_BACKEND`` picks xrnn's backend). With
``XRNN_BACKEND=cupy`` the reference is torch on CUDA (cuDNN), both synchronised.
Never run as a timed test in CI.
"""

from __future__ import annotations

import argparse

import torch

from common import GRID, alternate, header, matched_pair, report


def bench_row(shape: tuple[int, ...], rounds: int, per_round: int) -> tuple[float, float]:
    model, reference, x, x_torch, sync = matched_pair(shape)
    model.eval(), reference.eval()

    def run_xrnn():
        model(x)
        sync()

    def run_torch():
        with torch.inference_mode():
            reference(x_torch)
        sync()

    return alternate(run_xrnn, run_torch, rounds, per_round)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    rounds, per_round = (3, 3) if args.quick else (7, 5)
    report(header(rounds, per_round),
           [(shape, *bench_row(shape, rounds, per_round)) for shape in GRID])


if __name__ == "__main__":
    main()
