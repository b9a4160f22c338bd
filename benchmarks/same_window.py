"""A row's verdict from one window of time: xrnn, torch and the row's floor, alternating.

``python -m benchmarks.floors`` compares a grid's times with floors measured minutes
later; on a host whose speed moves by up to 45% (benchmarks/NOTES.md) a row's verdict
can then come from the drift between the two windows. Here every round measures,
one after the other: xrnn's median of ``--per-round`` runs, torch's (each after
:data:`benchmarks.common.SETTLE_SECONDS`, as in the grid), and the row's products at
the best rates measured now for their shapes plus xrnn's gates
(:func:`benchmarks.floors.gemm_ms` and :func:`~benchmarks.floors.gate_ns`, measured
afresh each round, both cores at once). Per round the target is 0.7 or 1.0 x torch
(issue 13), and the round is:

- ``met``: xrnn within the target;
- ``out of reach``: the products and gates alone take longer than the target, so only
  products faster than every kernel measured at the row's shapes (NumPy's BLAS on one
  thread, xrnn's packed kernels) or gates faster than xrnn's could meet it;
- ``missed``: neither; the target lies between the floor and xrnn's time.

The floor is a best of tries and the contenders' times medians, so ``out of reach``
errs towards ``missed``.

    python -m benchmarks.same_window "lstm train 1000,16,256,256,1,1" --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as ``python benchmarks/same_window.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import floors  # noqa: E402
from benchmarks.common import (CELLS, CPU_GRID, MODES, alternate_rounds,  # noqa: E402
                               contenders, write_results)
from benchmarks.run import FIELDS, ms_text, pick_shape  # noqa: E402


def parse_row(text: str) -> tuple[str, str, tuple[int, ...]]:
    """``"lstm train 1000,16,256,256,1,1"`` (or a CPU grid row's index for the shape)
    -> ``(cell, mode, shape)``."""
    parts = text.split()
    if len(parts) != 3 or parts[0] not in CELLS or parts[1] not in MODES:
        raise ValueError(f"{text!r} is not 'CELL MODE T,B,I,H,L,D' with CELL one of "
                         f"{', '.join(CELLS)} and MODE one of {', '.join(MODES)}")
    return parts[0], parts[1], pick_shape(CPU_GRID, parts[2])


def round_verdict(xrnn_ms: float, target_ms: float, floor_ms: float) -> str:
    """One round's verdict (module docstring)."""
    if xrnn_ms <= target_ms:
        return "met"
    return "out of reach" if floor_ms > target_ms else "missed"


def measure_row(cell: str, mode: str, shape: tuple[int, ...], rounds: int,
                per_round: int) -> dict[str, Any]:
    """The row's rounds: xrnn's and torch's medians, the floor and each round's
    verdict."""
    runs = contenders(shape, cell, mode)
    target = floors.SMALL_TARGET if shape[1] <= floors.SMALL_BATCH else floors.TARGET
    by_round = []
    for index in range(rounds):
        times = alternate_rounds(runs, 1, per_round, warmup=2 if index == 0 else 0)
        rates: dict[tuple[int, int, int], float] = {}

        def rate(m, k, n):  # measured once a round per shape, not cached across rounds
            if (m, k, n) not in rates:
                rates[m, k, n] = floors.gemm_rate.__wrapped__(m, k, n)
            return rates[m, k, n]

        gemm_ms = floors.gemm_ms(cell, mode, shape, rate)
        t, b, _, h, layers, d = shape
        gates_ms = (t * b * h * layers * d * floors.gate_ns.__wrapped__(cell, mode, b, h)
                    / 2 / 1e6)
        xrnn_ms, torch_ms = times["xrnn"][0] * 1e3, times["torch"][0] * 1e3
        floor_ms = gemm_ms + gates_ms
        by_round.append({"xrnn_ms": xrnn_ms, "torch_ms": torch_ms, "gemm_ms": gemm_ms,
                         "gates_ms": gates_ms, "floor_ms": floor_ms,
                         "target_ms": target * torch_ms,
                         "verdict": round_verdict(xrnn_ms, target * torch_ms, floor_ms)})
        print(f"  round {index + 1}: xrnn {ms_text(xrnn_ms)} ms, torch {ms_text(torch_ms)}, "
              f"products + gates {ms_text(floor_ms)}: {by_round[-1]['verdict']}", flush=True)

    def median(key):
        return statistics.median(r[key] for r in by_round)

    return {"cell": cell, "mode": mode, "shape": dict(zip(FIELDS, shape)), "target": target,
            "rounds": by_round, "xrnn_ms": median("xrnn_ms"), "torch_ms": median("torch_ms"),
            "floor_ms": median("floor_ms"),
            "ratio": [r["xrnn_ms"] / r["torch_ms"] for r in by_round],
            "floor_over_target": [r["floor_ms"] / r["target_ms"] for r in by_round],
            "xrnn_over_floor": [r["xrnn_ms"] / r["floor_ms"] for r in by_round],
            "verdicts": {v: sum(r["verdict"] == v for r in by_round)
                         for v in ("met", "missed", "out of reach")}}


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Same-window verdicts, {result['per_round']} runs a contender a round\n",
             f"`{result['command']}`\n",
             "Medians over the rounds, and in parentheses the range of the rounds' values. "
             "\"Products + gates\" is the row's products at the best rates measured in the "
             "round for their shapes, plus xrnn's gates (`benchmarks/same_window.py`).\n",
             "| cell | mode | T, B, I, H, L, D | xrnn ms | torch ms | products + gates ms | "
             "target | xrnn / torch | products + gates / target | xrnn / (products + gates) "
             "| rounds met / missed / out of reach |",
             "|---" * 11 + "|"]
    for r in result["rows"]:
        v = r["verdicts"]
        lines.append(
            f"| {r['cell']} | {r['mode']} | {', '.join(str(x) for x in r['shape'].values())} | "
            f"{ms_text(r['xrnn_ms'])} | {ms_text(r['torch_ms'])} | {ms_text(r['floor_ms'])} | "
            f"{r['target']}x | {_spread(r['ratio'])} | {_spread(r['floor_over_target'])} | "
            f"{_spread(r['xrnn_over_floor'])} | {v['met']} / {v['missed']} / "
            f"{v['out of reach']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.same_window",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="+", metavar="ROW",
                        help="'CELL MODE T,B,I,H,L,D', e.g. 'lstm train 1000,16,256,256,1,1'")
    parser.add_argument("--rounds", type=int, default=7, help="rounds (default 7)")
    parser.add_argument("--per-round", type=int, default=3,
                        help="runs a contender a round (default 3)")
    parser.add_argument("--output", help="write OUTPUT.md and OUTPUT.json")
    args = parser.parse_args(argv)
    try:
        rows = [parse_row(text) for text in args.rows]
    except ValueError as exc:
        parser.error(str(exc))
    if args.rounds < 1 or args.per_round < 1:
        parser.error(f"--rounds {args.rounds} and --per-round {args.per_round}: "
                     "each must be at least 1")
    measured = []
    for cell, mode, shape in rows:
        print(f"{cell} {mode} {shape}", flush=True)
        measured.append(measure_row(cell, mode, shape, args.rounds, args.per_round))
    result = {"command": "python -m benchmarks.same_window "
              + " ".join(repr(a) if " " in a else a
                         for a in (argv if argv is not None else sys.argv[1:])),
              "per_round": args.per_round, "rows": measured}
    text = markdown(result)
    print(text)
    if args.output:
        write_results(args.output, text, result)
    return result


if __name__ == "__main__":
    main()
