"""One training step (forward + backward of a sum-of-outputs loss) of xrnn's RNN, LSTM and
GRU against torch.nn's + autograd, side by side, on the shape grid of ``bench_forward.py``.

Both sides compute every gradient: input, initial state and all parameters.
Run: ``python benchmarks/bench_train.py`` (``--cell gru`` for one layer type, ``--quick``
for fewer repeats).
Never run as a timed test in CI.
"""

from __future__ import annotations

import xrnn
from common import GRID, alternate, arguments, header, matched_pair, report


def bench_row(shape: tuple[int, ...], cell: str, rounds: int, per_round: int
              ) -> tuple[float, float]:
    model, reference, x, x_torch, sync = matched_pair(shape, cell)
    x_torch.requires_grad_(True)
    grad_output = xrnn.get_namespace(x).ones_like(model(x)[0])  # d(sum of outputs)

    def run_xrnn():
        model.zero_grad()
        model(x)
        model.backward(grad_output)
        sync()

    def run_torch():
        reference.zero_grad()
        x_torch.grad = None
        output, _ = reference(x_torch)
        output.sum().backward()
        sync()

    return alternate(run_xrnn, run_torch, rounds, per_round)


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    rounds, per_round = (3, 3) if args.quick else (5, 3)
    for cell in args.cell:
        report(header(cell, rounds, per_round) + "; forward + backward",
               ((shape, *bench_row(shape, cell, rounds, per_round)) for shape in GRID))

if __name__ == "__main__":
    main()
