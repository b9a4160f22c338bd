"""Forward-pass timing of xrnn's RNN, LSTM and GRU against torch.nn's, side by side.

Both contenders run alternately in one process (the machines are shared and
noisy) and the medians are compared. Run: ``python benchmarks/bench_forward.py``
(``--cell lstm`` for one layer type, ``--quick`` for fewer repeats; ``XRNN_BACKEND``
picks xrnn's backend). With
``XRNN_BACKEND=cupy`` the reference is torch on CUDA (cuDNN), both synchronised.
Never run as a timed test in CI.
"""

from __future__ import annotations

import torch

from common import GRID, alternate, arguments, header, matched_pair, report


def bench_row(shape: tuple[int, ...], cell: str, rounds: int, per_round: int
              ) -> tuple[float, float]:
    model, reference, x, x_torch, sync = matched_pair(shape, cell)
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
    args = arguments(__doc__.splitlines()[0])
    rounds, per_round = (3, 3) if args.quick else (7, 5)
    for cell in args.cell:
        report(header(cell, rounds, per_round) + "; forward",
               ((shape, *bench_row(shape, cell, rounds, per_round)) for shape in GRID))

if __name__ == "__main__":
    main()
