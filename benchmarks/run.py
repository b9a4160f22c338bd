"""xrnn against PyTorch: RNN, LSTM and GRU, forward and forward + backward, float32.

Both libraries run in one process, alternating, after warm-up; each row reports the
medians, the ratio xrnn/torch, the range of that ratio over the rounds (each round's
xrnn median over the same round's torch median: how far the machine's drift moved it)
and the fraction of the machine's float32 matrix-product peak (measured at start-up)
that each side achieves. With ``--backend cupy`` xrnn runs on CuPy and torch on CUDA,
once with cuDNN and once with cuDNN disabled (its per-timestep path), timed with CUDA
events. Results go to ``benchmarks/results/`` as Markdown and JSON. Never run as a timed
test in CI.

    python -m benchmarks                                  # the whole CPU grid
    python -m benchmarks --quick --cell lstm --shapes 0 50,1,8,16,2,2
    python -m benchmarks --backend cupy                   # the GPU grid
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import warnings
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

if __package__ in (None, ""):  # run as ``python benchmarks/run.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import xrnn  # noqa: E402
from benchmarks.common import (CELLS, CONTENDERS, CPU_GRID, GPU_GRID, MODES, Shape,  # noqa: E402
                               alternate_rounds, contenders, machine_info, matmul_peak, model_flops,
                               write_results)

RESULTS = Path(__file__).resolve().parent / "results"
#: Contenders' names in tables; on the GPU torch runs as ``cudnn`` and ``torch_loop``.
LABELS = {"xrnn": "xrnn", "torch": "torch", "cudnn": "cuDNN", "torch_loop": "torch loop"}
FIELDS = ("T", "B", "I", "H", "L", "D")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["numpy", "cupy"],
                        help="xrnn's backend (default: XRNN_BACKEND, else numpy)")
    parser.add_argument("--cell", choices=list(CELLS), action="append",
                        help="layer type, repeatable (default: all three)")
    parser.add_argument("--mode", choices=MODES, action="append",
                        help="forward, or train (forward + backward); repeatable (default: both)")
    parser.add_argument("--shapes", nargs="+", metavar="ROW",
                        help="grid rows by index, or shapes as T,B,I,H,L,D (default: the grid)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats: 3 rounds x 3 runs, a shorter peak measurement")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 7; 5 for train)")
    parser.add_argument("--per-round", type=int, help="runs per round (default 5; 3 for train)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs each (default 2)")
    parser.add_argument("--peak-sizes", type=int, nargs="+",
                        help="square matmul sizes for the peak (default 1024 2048 4096)")
    parser.add_argument("--output", type=Path,
                        help="write OUTPUT.md and OUTPUT.json (default: "
                             "benchmarks/results/<cpu|gpu>-<date>)")
    args = parser.parse_args(argv)
    args.backend = args.backend or xrnn.get_backend()
    if args.backend not in ("numpy", "cupy"):
        parser.error(f"xrnn backend {args.backend!r}: the benchmark runs on numpy or cupy")
    args.cell, args.mode = args.cell or list(CELLS), args.mode or list(MODES)
    grid = GPU_GRID if args.backend == "cupy" else CPU_GRID
    try:
        args.shapes = [pick_shape(grid, text) for text in args.shapes or range(len(grid))]
    except ValueError as exc:
        parser.error(f"--shapes: {exc}")
    return args


def pick_shape(grid: list[Shape], text: str | int) -> Shape:
    """A grid row by index (``"2"``) or a shape written out (``"50,1,8,16,2,2"``)."""
    if "," not in str(text):
        if not 0 <= int(text) < len(grid):
            raise ValueError(f"row {text} is not in the grid (0 to {len(grid) - 1})")
        return grid[int(text)]
    shape = tuple(int(v) for v in str(text).split(","))
    if len(shape) != 6 or min(shape) < 1 or shape[-1] > 2:
        raise ValueError(f"{text!r} is not T,B,I,H,L,D with positive sizes and D in 1, 2")
    return shape  # type: ignore[return-value]


def repeats(args: argparse.Namespace, mode: str) -> tuple[int, int]:
    rounds, per_round = (3, 3) if args.quick else {"forward": (7, 5), "train": (5, 3)}[mode]
    return args.rounds or rounds, args.per_round or per_round


def measure(args: argparse.Namespace, peak: float) -> Iterator[dict[str, Any]]:
    """Yield one result row per (cell, mode, shape), as measured."""
    for cell in args.cell:
        for mode in args.mode:
            rounds, per_round = repeats(args, mode)
            for shape in args.shapes:
                by_round = alternate_rounds(contenders(shape, cell, mode), rounds, per_round,
                                            args.warmup)
                seconds = {name: statistics.median(values) for name, values in by_round.items()}
                gflop = model_flops(cell, shape, mode) / 1e9
                yield {
                    "cell": cell, "mode": mode, "shape": dict(zip(FIELDS, shape)),
                    "gflop": gflop, "rounds": rounds, "per_round": per_round,
                    "ms": {name: s * 1e3 for name, s in seconds.items()},
                    "ratio": {name: seconds["xrnn"] / s for name, s in seconds.items()
                              if name != "xrnn"},
                    "ratio_by_round": {name: [x / t for x, t in zip(by_round["xrnn"], values)]
                                       for name, values in by_round.items() if name != "xrnn"},
                    "peak_fraction": {name: gflop / s / peak for name, s in seconds.items()},
                }


def ms_text(value: float) -> str:
    """Milliseconds as the tables print them: 3 decimals below 10, else 1."""
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def table_header(names: list[str]) -> str:
    others = [n for n in names if n != "xrnn"]
    columns = (["cell", "mode", ", ".join(FIELDS), "GFLOP"]
               + [f"{LABELS[n]} ms" for n in names] + [f"xrnn/{LABELS[n]}" for n in others]
               + [f"xrnn/{LABELS[n]} by round" for n in others]
               + [f"{LABELS[n]} % peak" for n in names])
    return "| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|"


def table_row(row: dict[str, Any]) -> str:
    names = list(row["ms"])
    cells = ([row["cell"], row["mode"], ", ".join(str(v) for v in row["shape"].values()),
              f"{row['gflop']:.3g}"] + [ms_text(row["ms"][n]) for n in names]
             + [f"{row['ratio'][n]:.2f}" for n in names if n != "xrnn"]
             + [f"{min(row['ratio_by_round'][n]):.2f}-{max(row['ratio_by_round'][n]):.2f}"
                for n in names if n != "xrnn"]
             + [f"{100 * row['peak_fraction'][n]:.3g}%" for n in names])
    return "| " + " | ".join(cells) + " |"


def markdown(result: dict[str, Any], title: str = "xrnn vs PyTorch") -> str:
    machine = "\n".join(f"| {key} | {value} |" for key, value in result["machine"].items())
    rows = "".join(table_row(row) + "\n" for row in result["rows"])
    return (f"# {title}, {result['device']}, {result['date']}\n\n"
            f"`{result['command']}`\n\n| machine | |\n|---|---|\n{machine}\n"
            f"| float32 matmul peak | {result['peak_gflops']:.1f} GFLOP/s "
            f"(best of {' '.join(map(str, result['peak_sizes']))}, {result['backend']}) |\n"
            f"| timing | {result['timing']} |\n\n"
            f"{table_header(result['contenders'])}\n{rows}")


def output_stem(args: argparse.Namespace, device: str, date: str, kind: str = "") -> Path:
    """``--output`` without its suffix, else ``results/<device>[-<kind>]-<date>``, with
    ``-2``, ``-3``, ... where that is taken."""
    if args.output:
        out = args.output
        return out.with_suffix("") if out.suffix in (".md", ".json", ".png") else out
    name = f"{device}-{kind}-{date}" if kind else f"{device}-{date}"
    stem, n = RESULTS / name, 2
    while Path(f"{stem}.md").exists() or Path(f"{stem}.json").exists():
        stem, n = RESULTS / f"{name}-{n}", n + 1
    return stem


def torch_for(backend: str) -> str:
    """Set torch up to face xrnn's ``backend`` and return the device, "cpu" or "gpu". On
    the GPU torch must have a CUDA device, and cuDNN's float32 RNNs, which use TF32
    unless told not to, are told not to: float32 math on both sides."""
    if backend != "cupy":
        return "cpu"
    if not torch.cuda.is_available():
        raise SystemExit(f"torch {torch.__version__} has no CUDA device: "
                         "the GPU benchmarks compare against torch on CUDA")
    with warnings.catch_warnings():  # the legacy flag's deprecation notice
        warnings.simplefilter("ignore")
        # The legacy flag sets conv and RNN alike, which cudnn.flags() needs.
        torch.backends.cudnn.allow_tf32 = False
    return "gpu"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table as it is measured, write the Markdown and JSON
    files; returns the result that the JSON file holds."""
    args = parse_args(argv)
    with xrnn.use_backend(args.backend):  # BackendUnavailableError here, before any work
        device = torch_for(args.backend)
        sizes = tuple(args.peak_sizes or ((1024, 2048) if args.quick else (1024, 2048, 4096)))
        print(f"measuring the float32 matmul peak ({args.backend}, sizes {sizes})...", flush=True)
        result: dict[str, Any] = {
            "device": device, "date": datetime.date.today().isoformat(),
            "command": "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv),
            "backend": args.backend, "machine": machine_info(args.backend),
            "peak_gflops": matmul_peak(args.backend, sizes, 0.25 if args.quick else 1.0),
            "peak_sizes": list(sizes),
            "timing": (", ".join(f"{m} {'x'.join(map(str, repeats(args, m)))}" for m in args.mode)
                       + f" (rounds x runs per round; median of each round's median) after "
                       f"{args.warmup} warm-up runs each, contenders alternating; "
                       + ("CUDA events; torch with cuDNN (cuDNN), and with it disabled "
                          "(torch loop)" if device == "gpu" else "wall clock")),
            "contenders": CONTENDERS[device],
            "rows": [],
        }
        print(markdown(result), end="", flush=True)
        stem = output_stem(args, device, result["date"])
        stem.parent.mkdir(parents=True, exist_ok=True)
        for row in measure(args, result["peak_gflops"]):
            result["rows"].append(row)
            print(table_row(row), flush=True)
            write_results(stem, markdown(result), result)  # after each row: a long run
            # keeps its part
    print(f"wrote {stem}.md and {stem}.json")
    return result


def cli(entry: Callable[[], object] = main) -> None:
    """``entry()`` (this module's ``main``, or a companion's) with xrnn's error for a
    backend that cannot run here as a one-line message."""
    try:
        entry()
    except xrnn.backend.BackendUnavailableError as exc:
        sys.exit(f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    cli()
