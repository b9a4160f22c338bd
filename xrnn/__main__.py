"""Command line: ``xrnn info | shapes | demo`` (or ``python -m xrnn ...``); ``--version``."""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Sequence

import numpy as np

from . import __version__, _kernels, backend
from .functional.cells import LN_GRU_CELL, LN_LSTM_CELL
from .functional.weights import parameter_shapes


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


_DISTRIBUTIONS = {"numpy": "numpy", "torch": "torch", "array_api_strict": "array-api-strict"}


def _backend_version(name: str) -> str:
    if name == "cupy":
        import cupy

        return cupy.__version__
    return _version(_DISTRIBUTIONS[name])


def _device_description(name: str) -> str:
    if name == "cupy":
        import cupy

        device = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(device.id)
        return f"cuda:{device.id} ({props['name'].decode()})"
    import array_api_compat

    return str(array_api_compat.device(backend.get_namespace().zeros(1)))


def info() -> int:
    """Print the selected backend, its version and device, and every backend's availability."""
    print(f"xrnn {__version__}  (python {sys.version.split()[0]}, "
          f"array-api-compat {_version('array-api-compat')})")
    try:
        name = backend.get_backend()
    except (ValueError, backend.BackendUnavailableError) as exc:
        print(f"selected backend: error: {exc}", file=sys.stderr)
        status = 1
    else:
        print(f"selected backend: {name} {_backend_version(name)} on {_device_description(name)}")
        status = 0
    print(f"(choose with {backend.ENV_VAR}=<name> or xrnn.backend.set_backend(name))")
    print(f"NumPy CPU path: {_kernels.cpu_path()}  (XRNN_KERNELS=numpy or 0 to narrow)")
    print("backends:")
    for candidate, reason in backend.available_backends().items():
        print(f"  {candidate:<17} {'available' if reason is None else 'unavailable: ' + reason}")
    return status


_GATES = {"rnn": 1, "lstm": 4, "gru": 3}
#: The LayerNorms (``ln_*`` parameters) of ``--layer-norm``, by mode.
_NORMS = {"lstm": LN_LSTM_CELL.norms, "gru": LN_GRU_CELL.norms}
#: Options that add no parameter, shown in the header when set.
_OPTIONS = ("recurrent_dropout", "zoneout", "weight_dropout")


def shapes(args: argparse.Namespace) -> int:
    """Print every parameter's name and shape and the shapes of input, h0, output and h_n."""
    d = 2 if args.bidirectional else 1
    h, layers, lstm = args.hidden_size, args.num_layers, args.mode == "lstm"
    h_out = args.proj_size or h
    extras = [f"{name}={getattr(args, name)}" for name in ("proj_size", "layer_norm", *_OPTIONS)
              if getattr(args, name)]
    print(f"{args.mode.upper()}(input_size={args.input_size}, hidden_size={h}, "
          f"num_layers={layers}, bias={not args.no_bias}, batch_first={args.batch_first}, "
          f"bidirectional={args.bidirectional}" + "".join(f", {e}" for e in extras) + ")")
    print(f"L={layers} layer(s) x D={d} direction(s); legend: T time steps, B batch")
    params = parameter_shapes(args.input_size, h, _GATES[args.mode], layers, args.bidirectional,
                              not args.no_bias, args.proj_size,
                              _NORMS[args.mode] if args.layer_norm else ())
    width = max(len(n) for n in params)
    print("\nparameters (PyTorch names and layouts):")
    for name, shape in params.items():
        print(f"  {name:<{width}}  {shape}")
    print(f"  total: {sum(int(np.prod(s)) for s in params.values()):,} numbers")
    t = args.seq_len if args.seq_len is not None else "T"
    b = args.batch if args.batch is not None else "B"

    def fmt(*dims: object) -> str:
        return "(" + ", ".join(str(x) for x in dims) + ")"

    x_shape = fmt(b, t, args.input_size) if args.batch_first else fmt(t, b, args.input_size)
    out = fmt(b, t, d * h_out) if args.batch_first else fmt(t, b, d * h_out)
    state, cell = fmt(layers * d, b, h_out), fmt(layers * d, b, h)
    hs = "H_out" if args.proj_size else "H"
    print("\narrays:")
    print(f"  input   {'(B, T, H_in)' if args.batch_first else '(T, B, H_in)':<16}  {x_shape}")
    print(f"  reset   {'(B, T)' if args.batch_first else '(T, B)':<16}  "
          f"{fmt(b, t) if args.batch_first else fmt(t, b)}   (optional booleans: where true, "
          "that sequence restarts from h0)")
    print(f"  h0      {f'(L*D, B, {hs})':<16}  {state}   (never batch-first)")
    if lstm:
        print(f"  c0      {'(L*D, B, H)':<16}  {cell}   (the LSTM's cell state)")
    print(f"  output  {f'(B, T, D*{hs})' if args.batch_first else f'(T, B, D*{hs})':<16}  "
          f"{out}   (last layer only, directions concatenated)")
    print(f"  h_n     {f'(L*D, B, {hs})':<16}  {state}   (every layer, layer-major, "
          "direction-minor)")
    if lstm:
        print(f"  c_n     {'(L*D, B, H)':<16}  {cell}")
    last = f"output[:, -1, :{hs}]" if args.batch_first else f"output[-1, :, :{hs}]"
    print(f"\nh_n[{(layers - 1) * d}] is the last layer's forward state after the last step "
          f"= {last}")
    if d == 2:
        first = f"output[:, 0, {hs}:]" if args.batch_first else f"output[0, :, {hs}:]"
        print(f"h_n[{layers * d - 1}] is its reverse state after reading step 0 = {first} "
              "(not output[-1])")
    return 0


DESCRIPTION = ("Recurrent neural networks on NumPy, CuPy, torch or array_api_strict: "
               "info shows the backends, shapes the arrays of a layer, demo trains a small model.")


def main(argv: Sequence[str] | None = None, prog: str = "xrnn") -> int:
    """The ``xrnn`` console script; ``prog`` names the command in usage lines and errors."""
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"xrnn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="selected backend, version, device; available backends")
    p = commands.add_parser("shapes", help="parameter and array shapes of a recurrent layer")
    p.add_argument("--mode", choices=list(_GATES), default="rnn")
    p.add_argument("--proj-size", type=int, default=0, help="LSTM only: project h to this size")
    p.add_argument("--input-size", type=int, required=True)
    p.add_argument("--hidden-size", type=int, required=True)
    p.add_argument("--num-layers", type=int, default=1)
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--batch-first", action="store_true")
    p.add_argument("--no-bias", action="store_true")
    p.add_argument("--seq-len", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--layer-norm", action="store_true",
                   help="LSTM and GRU: the LayerNorm cell (adds the ln_* parameters)")
    for name in _OPTIONS:
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=0.0, metavar="P",
                       help="a probability in [0, 1); adds no parameter")
    p = commands.add_parser("demo", help="train a bidirectional RNN on a task that needs "
                            "future context, on the selected backend")
    p.add_argument("--cell", choices=["rnn", "lstm", "gru"], default="rnn")
    p.add_argument("--compare-unidirectional", action="store_true",
                   help="also train a one-direction model on the same task")
    p.add_argument("--plot", metavar="FILE.png", help="write the loss curves (needs matplotlib)")
    p.add_argument("--steps", type=int, default=3000, help="training steps per model "
                   "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the data "
                   "(default: %(default)s)")
    args = parser.parse_args(argv)
    if args.command == "info":
        return info()
    if args.command == "demo":
        if args.steps < 1:
            parser.error(f"--steps must be a positive integer, got {args.steps}")
        from .demo import plot_problem, run

        if args.plot and (problem := plot_problem(args.plot)):
            parser.exit(1, f"{prog} demo: error: {problem}\n")  # before training
        return run(args.cell, args.compare_unidirectional, args.plot, args.seed, args.steps)
    for name in ("input_size", "hidden_size", "num_layers", "seq_len", "batch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.proj_size and (args.mode != "lstm" or not 0 < args.proj_size < args.hidden_size):
        parser.error(f"--proj-size must be in [0, hidden_size) and needs --mode lstm, "
                     f"got {args.proj_size} with --mode {args.mode}")
    if args.layer_norm and args.mode not in _NORMS:
        parser.error(f"--layer-norm needs --mode lstm or gru, got --mode {args.mode}")
    for name in _OPTIONS:
        if not 0.0 <= getattr(args, name) < 1.0:
            parser.error(f"--{name.replace('_', '-')} must be a probability in [0, 1), "
                         f"got {getattr(args, name)}")
    return shapes(args)


if __name__ == "__main__":
    sys.exit(main(prog="python -m xrnn"))
