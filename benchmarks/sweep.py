"""Time against hidden size: xrnn and PyTorch at several batch sizes, and a plot of it.

Each point is one shape (T, B, I = H, H, L, D), timed as ``python -m benchmarks`` times a
grid row (contenders alternating, medians of rounds). On the CPU the contenders are xrnn
and torch; with ``--backend cupy``, xrnn, torch with cuDNN (``cudnn``) and torch with
cuDNN disabled (``torch_loop``), timed with CUDA events. Writes OUTPUT.md, OUTPUT.json
and, with matplotlib, OUTPUT.png: milliseconds against H on log axes, one colour per
batch size, xrnn solid and each torch dashed or dotted. Never run as a timed test in CI.

    python -m benchmarks.sweep                        # LSTM forward, B = 1, 16, 64, CPU
    python -m benchmarks.sweep --backend cupy --mode train --hidden 64 128 256 512 1024
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as ``python benchmarks/sweep.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import xrnn  # noqa: E402
from benchmarks.common import (CELLS, CONTENDERS, MODES, machine_info, matmul_peak,  # noqa: E402
                               write_results)
from benchmarks.run import (LABELS, cli, markdown, measure, output_stem, repeats,  # noqa: E402
                            torch_for)

#: Line styles of the contenders in the plot, in their order (xrnn first).
STYLES = ("-", "--", ":")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweep",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["numpy", "cupy"],
                        help="xrnn's backend (default: XRNN_BACKEND, else numpy)")
    parser.add_argument("--cell", choices=list(CELLS), default="lstm", help="default lstm")
    parser.add_argument("--mode", choices=MODES, default="forward",
                        help="forward, or train (forward + backward); default forward")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64],
                        help="batch sizes, one line each (default 1 16 64)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 128, 256, 512, 1024],
                        help="hidden sizes H, the input size I = H (default 64 ... 1024)")
    parser.add_argument("--steps", type=int, default=100, help="sequence length T (default 100)")
    parser.add_argument("--layers", type=int, default=1, help="L (default 1)")
    parser.add_argument("--directions", type=int, choices=[1, 2], default=1, help="D (default 1)")
    parser.add_argument("--quick", action="store_true", help="3 rounds x 3 runs")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 7; 5 for train)")
    parser.add_argument("--per-round", type=int, help="runs per round (default 5; 3 for train)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs each (default 2)")
    parser.add_argument("--peak-sizes", type=int, nargs="+",
                        help="square matmul sizes for the peak (default 1024 2048)")
    parser.add_argument("--output", type=Path, help="write OUTPUT.md, OUTPUT.json, OUTPUT.png "
                        "(default: benchmarks/results/<cpu|gpu>-sweep-<cell>-<mode>-<date>)")
    parser.add_argument("--no-plot", action="store_true", help="no PNG (matplotlib not needed)")
    args = parser.parse_args(argv)
    args.backend = args.backend or xrnn.get_backend()
    if args.backend not in ("numpy", "cupy"):
        parser.error(f"xrnn backend {args.backend!r}: the sweep runs on numpy or cupy")
    for name in ("batch", "hidden", "steps", "layers"):
        values = getattr(args, name)
        if min(values if isinstance(values, list) else [values]) < 1:
            parser.error(f"--{name} must be positive, got {values}")
    for name in ("rounds", "per_round"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("the plot needs matplotlib, which is not installed: "
                         "pip install matplotlib, or pass --no-plot")
    # run.measure's view of the sweep: one cell, one mode, the shapes in plot order
    args.shapes = [(args.steps, b, h, h, args.layers, args.directions)
                   for b in args.batch for h in args.hidden]
    return args


def plot(result: dict[str, Any], path: Path) -> None:
    """Milliseconds against the hidden size, log-log: one colour per batch size, one line
    style per contender."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    batches = sorted({row["shape"]["B"] for row in result["rows"]})
    for colour, batch in enumerate(batches):
        rows = sorted((r for r in result["rows"] if r["shape"]["B"] == batch),
                      key=lambda r: r["shape"]["H"])
        hidden = [r["shape"]["H"] for r in rows]
        for name, style in zip(result["contenders"], STYLES):
            ax.plot(hidden, [r["ms"][name] for r in rows], style, color=f"C{colour}",
                    marker="o" if name == "xrnn" else None, label=f"{LABELS[name]}, B = {batch}")
    hidden = sorted({row["shape"]["H"] for row in result["rows"]})
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(hidden, [str(h) for h in hidden])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_xlabel("hidden size H (input size I = H)")
    ax.set_ylabel("ms a call")
    shape, machine = result["rows"][0]["shape"], result["machine"]
    ax.set_title(f"{CELLS[result['cell']]} {result['mode']}, T = {shape['T']}, L = {shape['L']}, "
                 f"D = {shape['D']}, float32, {machine.get('gpu', machine['cpu'])}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=len(batches))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure the sweep, print its table row by row, write the Markdown, JSON and PNG;
    returns the result that the JSON file holds."""
    args = parse_args(argv)
    with xrnn.use_backend(args.backend):  # BackendUnavailableError here, before any work
        device = torch_for(args.backend)
        sizes = tuple(args.peak_sizes or (1024, 2048))
        rounds, per_round = repeats(args, args.mode)
        result: dict[str, Any] = {
            "device": device, "date": datetime.date.today().isoformat(),
            "command": "python -m benchmarks.sweep "
                       + " ".join(sys.argv[1:] if argv is None else argv),
            "backend": args.backend, "cell": args.cell, "mode": args.mode,
            "machine": machine_info(args.backend),
            "peak_gflops": matmul_peak(args.backend, sizes, 0.25),
            "peak_sizes": list(sizes),
            "timing": f"{rounds}x{per_round} (rounds x runs per round; median of each round's "
                      f"median) after {args.warmup} warm-up runs each, contenders alternating; "
                      + ("CUDA events" if device == "gpu" else "wall clock"),
            "contenders": CONTENDERS[device],
            "rows": [],
        }
        stem = output_stem(args, device, result["date"], f"sweep-{args.cell}-{args.mode}")
        stem.parent.mkdir(parents=True, exist_ok=True)
        title = f"{CELLS[args.cell]} {args.mode} against hidden size"
        plan = argparse.Namespace(**{**vars(args), "cell": [args.cell], "mode": [args.mode]})
        for row in measure(plan, result["peak_gflops"]):
            result["rows"].append(row)
            write_results(stem, markdown(result, title), result)  # a long sweep keeps its part
            print(f"B = {row['shape']['B']}, H = {row['shape']['H']}: "
                  + ", ".join(f"{LABELS[n]} {ms:.3f} ms" for n, ms in row["ms"].items()),
                  flush=True)
        text = markdown(result, title)
        if not args.no_plot:
            plot(result, Path(f"{stem}.png"))
            text += f"\n![{title}]({stem.name}.png)\n"
        write_results(stem, text, result)
    print(f"wrote {stem}.md, {stem}.json" + ("" if args.no_plot else f" and {stem}.png"))
    return result


if __name__ == "__main__":
    cli(main)
