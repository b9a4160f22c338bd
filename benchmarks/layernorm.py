"""The LayerNorm LSTM's forward: xrnn against its own plain LSTM and against what a
PyTorch user writes today, float32, on the CPU.

PyTorch has no LayerNorm LSTM layer; its users write a cell and loop over time in
Python (as PyTorch's own ``benchmarks/fastrnns/custom_lstms.py``), in eager mode or
under ``torch.jit.script``. The reference here is that cell, written from the equations
xrnn implements (README, "Regularisers, LayerNorm cells and resets")::

    z  = LN(x W_ih^T; ih) + LN(h W_hh^T; hh) + b_ih + b_hh      gates i, f, g, o
    c' = sigmoid(f) c + sigmoid(i) tanh(g)
    h' = sigmoid(o) tanh(LN(c'; c))

with the same weights as xrnn's ``LSTM(layer_norm=True)`` (its LayerNorm weights drawn
away from their init 1, 0), stacked and bidirectional as xrnn's layers are. Contenders,
alternating in one process, forward only (``xrnn.no_grad`` / ``torch.no_grad``):

- ``xrnn``: ``xrnn.LSTM(layer_norm=True)``, eval mode;
- ``xrnn plain``: ``xrnn.LSTM`` without LayerNorm, same shape (its NumPy kernels);
- ``torch eager``: the cell above, a Python loop over time;
- ``torch script``: the same functions under ``torch.jit.script``;
- ``torch.nn.LSTM``: PyTorch's plain LSTM, for scale.

The issue's targets: xrnn / xrnn plain <= 1.5, xrnn / torch eager and xrnn / torch
script <= 0.5. Results go to ``benchmarks/results/layernorm-<date>.md`` and ``.json``.

    python -m benchmarks.layernorm                       # (100, 32, 64, 128, 2, 2)
    python -m benchmarks.layernorm --shapes 50,1,8,16,2,2 --quick
"""

from __future__ import annotations

import argparse
import datetime
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import xrnn
from benchmarks.common import Shape, alternate, machine_info, wall_seconds, write_results
from benchmarks.run import FIELDS, output_stem, pick_shape

#: The issue's shape: (T, B, I, H, L, D).
SHAPE: Shape = (100, 32, 64, 128, 2, 2)
#: Contender -> the upper bound the issue sets on xrnn's time over its time.
TARGETS = {"xrnn_plain": 1.5, "torch_eager": 0.5, "torch_script": 0.5}
LABELS = {"xrnn": "xrnn", "xrnn_plain": "xrnn plain", "torch_eager": "torch eager",
          "torch_script": "torch script", "torch_nn": "torch.nn.LSTM"}
#: Per layer and direction, the parameters the torch reference takes, in this order.
PARAMETERS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "ln_weight_ih", "ln_bias_ih",
              "ln_weight_hh", "ln_bias_hh", "ln_weight_c", "ln_bias_c")


def ln(v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.layer_norm(v, [v.size(-1)], weight, bias, 1e-5)


def ln_lstm_cell(x_t: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
                 w: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One step, (B, I) and (B, H) -> (h', c'); ``w`` in :data:`PARAMETERS`' order."""
    z = ln(x_t @ w[0].t(), w[4], w[5]) + ln(h @ w[1].t(), w[6], w[7]) + w[2] + w[3]
    i, f, g, o = z.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(ln(c, w[8], w[9])), c


def ln_lstm_layer(x: torch.Tensor, w: list[torch.Tensor], reverse: bool) -> torch.Tensor:
    """One layer and direction over (T, B, I) -> (T, B, H), from zero states."""
    if reverse:
        x = x.flip(0)
    h = torch.zeros(x.size(1), w[1].size(1), dtype=x.dtype)
    c = torch.zeros_like(h)
    outputs: list[torch.Tensor] = []
    for t in range(x.size(0)):
        h, c = ln_lstm_cell(x[t], h, c, w)
        outputs.append(h)
    y = torch.stack(outputs)
    return y.flip(0) if reverse else y


def ln_lstm(x: torch.Tensor, layers: list[list[list[torch.Tensor]]]) -> torch.Tensor:
    """The stacked network: ``layers[k][d]`` holds layer k's direction d's parameters."""
    for directions in layers:
        x = torch.cat([ln_lstm_layer(x, w, d == 1) for d, w in enumerate(directions)], -1)
    return x


def scripted_ln_lstm() -> Callable[..., torch.Tensor]:
    """:func:`ln_lstm` under ``torch.jit.script`` (deprecated in torch 2.13 in favour of
    torch.compile, but what existing LayerNorm-LSTM code uses; its warning is silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(ln_lstm)


def torch_weights(model: xrnn.LSTM) -> list[list[list[torch.Tensor]]]:
    """``model``'s parameters as :func:`ln_lstm` takes them (float32 CPU tensors)."""
    params = {name: torch.from_numpy(np.array(xrnn.to_numpy(p.data), dtype=np.float32))
              for name, p in model.named_parameters()}
    return [[[params[f"{name}_l{k}{suffix}"] for name in PARAMETERS]
             for suffix in ("", "_reverse")[:2 if model.bidirectional else 1]]
            for k in range(model.num_layers)]


def ln_model(shape: Shape, seed: int = 0) -> xrnn.LSTM:
    """``xrnn.LSTM(layer_norm=True)`` of the shape, eval mode, with LayerNorm weights
    1 + 0.3 N(0, 1) and biases 0.3 N(0, 1) (so that a wrong one shows)."""
    _t, _b, i, h, layers, d = shape
    model = xrnn.LSTM(i, h, num_layers=layers, bidirectional=d == 2, layer_norm=True,
                      seed=seed).eval()
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if name.startswith("ln_"):
            noise = 0.3 * rng.standard_normal(p.shape).astype(np.float32)
            p.data = p.data + xrnn.asarray(noise, dtype="float32")
    return model


def contenders(shape: Shape) -> dict[str, tuple[Callable[[], None], Any]]:
    """Name -> (one forward, its timer), all on the same float32 input."""
    t, b, i, h, layers, d = shape
    model = ln_model(shape)
    plain = xrnn.LSTM(i, h, num_layers=layers, bidirectional=d == 2, seed=0).eval()
    reference = torch.nn.LSTM(i, h, num_layers=layers, bidirectional=d == 2).eval()
    reference.load_state_dict(xrnn.io.torch_state_dict(plain))
    weights = torch_weights(model)
    scripted = scripted_ln_lstm()
    host = np.random.default_rng(0).standard_normal((t, b, i)).astype(np.float32)
    x, x_torch = xrnn.asarray(host), torch.from_numpy(host)

    def xrnn_run(m: xrnn.LSTM) -> Callable[[], None]:
        def run() -> None:
            with xrnn.no_grad():
                m(x)
        return run

    def torch_run(fn: Callable[..., Any], *args: Any) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                fn(x_torch, *args)
        return run

    runs = {"xrnn": xrnn_run(model), "xrnn_plain": xrnn_run(plain),
            "torch_eager": torch_run(ln_lstm, weights),
            "torch_script": torch_run(scripted, weights), "torch_nn": torch_run(reference)}
    return {name: (run, wall_seconds) for name, run in runs.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.layernorm",
                                     description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--shapes", nargs="+", metavar="T,B,I,H,L,D",
                        help=f"shapes, or 0 for the issue's {','.join(map(str, SHAPE))} (default)")
    parser.add_argument("--quick", action="store_true", help="3 rounds x 3 runs")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 7)")
    parser.add_argument("--per-round", type=int, help="runs per round (default 3)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs each (default 2)")
    parser.add_argument("--output", type=Path, help="write OUTPUT.md and OUTPUT.json "
                        "(default: benchmarks/results/layernorm-<date>)")
    args = parser.parse_args(argv)
    try:
        args.shapes = [pick_shape([SHAPE], text) for text in args.shapes or [0]]
    except ValueError as exc:
        parser.error(f"--shapes: {exc}")
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.per_round = args.per_round or 3
    return args


def markdown(result: dict[str, Any]) -> str:
    machine = "\n".join(f"| {key} | {value} |" for key, value in result["machine"].items())
    names = result["contenders"]
    columns = ([", ".join(FIELDS)] + [f"{LABELS[n]} ms" for n in names]
               + [f"xrnn/{LABELS[n]} (target)" for n in names if n != "xrnn"])
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for row in result["rows"]:
        lines.append("| " + " | ".join(
            [", ".join(str(v) for v in row["shape"].values())]
            + [f"{row['ms'][n]:.1f}" for n in names]
            + [f"{row['ratio'][n]:.2f}" + (f" (<= {TARGETS[n]})" if n in TARGETS else "")
               for n in names if n != "xrnn"]) + " |")
    return (f"# LayerNorm LSTM forward, xrnn vs PyTorch, cpu, {result['date']}\n\n"
            f"`{result['command']}`\n\n| machine | |\n|---|---|\n{machine}\n"
            f"| load average before / after | {result['load_before']} / "
            f"{result.get('load_after', '')} |\n| timing | {result['timing']} |\n\n"
            + "\n".join(lines) + "\n")


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure, print and write the table; returns what the JSON file holds."""
    args = parse_args(argv)
    with xrnn.use_backend("numpy"):
        result: dict[str, Any] = {
            "date": datetime.date.today().isoformat(),
            "command": "python -m benchmarks.layernorm "
                       + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": machine_info("numpy"), "load_before": load_average(),
            "timing": f"{args.rounds} rounds x {args.per_round} runs (median of each round's "
                      f"median) after {args.warmup} warm-up runs each, contenders alternating, "
                      "wall clock, forward under no_grad",
            "contenders": list(LABELS), "targets": TARGETS, "rows": [],
        }
        stem = args.output.with_suffix("") if args.output and args.output.suffix in (
            ".md", ".json") else args.output or output_stem(argparse.Namespace(output=None),
                                                            "layernorm", result["date"])
        stem.parent.mkdir(parents=True, exist_ok=True)
        for shape in args.shapes:
            seconds = alternate(contenders(shape), args.rounds, args.per_round, args.warmup)
            row = {"shape": dict(zip(FIELDS, shape)),
                   "ms": {n: s * 1e3 for n, s in seconds.items()},
                   "ratio": {n: seconds["xrnn"] / s for n, s in seconds.items() if n != "xrnn"}}
            result["rows"].append(row)
            print(", ".join(f"{LABELS[n]} {v:.1f} ms" for n, v in row["ms"].items()), flush=True)
        result["load_after"] = load_average()
        write_results(stem, markdown(result), result)
    print(markdown(result), end="")
    print(f"wrote {stem}.md and {stem}.json")
    return result


if __name__ == "__main__":
    main()
