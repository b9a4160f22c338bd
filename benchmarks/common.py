"""The benchmark's parts: shape grids, FLOP counts, matched xrnn/torch contenders,
timers (wall clock on the CPU, CUDA events on the GPU), alternating medians, the
machine's float32 matrix-product peak and a description of the machine."""

from __future__ import annotations

import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import xrnn

Shape = tuple[int, int, int, int, int, int]  # (T, B, I, H, L, D)
Timer = Callable[[Callable[[], object]], float]  # seconds one call of fn takes

#: (T, B, I, H, L, D): sequence length, batch, input size, hidden size, layers, directions.
CPU_GRID: list[Shape] = [
    (50, 1, 8, 16, 2, 2),
    (100, 32, 64, 128, 2, 2),
    (200, 64, 256, 512, 2, 2),
    (100, 256, 512, 1024, 1, 1),
    (1000, 16, 256, 256, 1, 1),    # long sequence
    (100, 1, 64, 128, 1, 1),       # batch of one
    (100, 1, 256, 512, 2, 2),
]
GPU_GRID: list[Shape] = [
    (50, 1, 8, 16, 2, 2),
    (100, 64, 512, 512, 2, 2),
    (1000, 16, 256, 256, 1, 1),
    (100, 256, 512, 1024, 1, 1),
]
CELLS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
#: The contenders :func:`contenders` returns on each device, in their order.
CONTENDERS = {"cpu": ["xrnn", "torch"], "gpu": ["xrnn", "cudnn", "torch_loop"]}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
MODES = ("forward", "train")


def model_flops(cell: str, shape: Shape, mode: str) -> float:
    """Useful matrix-product FLOPs of one run (2 per multiply-add), float32.

    Per layer and direction, with G gates (RNN 1, GRU 3, LSTM 4) and input width
    I_l (I for layer 0, D*H above it)::

        forward = 2*T*B*G*H*I_l      (input projection, all steps)
                + 2*T*B*G*H*H        (recurrent product h_{t-1} W_hh^T, every step)

    summed over the L*D layer-directions. An LSTM with proj_size P would add
    2*T*B*H*P and use P instead of H as the recurrent and upper-layer input width; the
    grids have none. ``mode="train"`` (forward + backward) counts 3x forward: the
    backward does each product twice more, once for the weight gradient and once for
    the gradient of its input (x, or h_{t-1}). Gates, nonlinearities and biases are
    elementwise work and not counted.
    """
    t, b, i, h, layers, d = shape
    forward = sum(2 * t * b * GATES[cell] * h * ((i if k == 0 else d * h) + h) * d
                  for k in range(layers))
    return float(forward * (3 if mode == "train" else 1))


def matched_pair(shape: Shape, cell: str):
    """An xrnn layer and the torch.nn layer of the same kind (``cell``: rnn, lstm or gru)
    with the same weights, on xrnn's selected backend (torch on CUDA when it is cupy),
    and the same float32 input for each."""
    t, b, i, h, layers, d = shape
    device = "cuda" if xrnn.get_backend() == "cupy" else "cpu"
    model = getattr(xrnn, CELLS[cell])(i, h, num_layers=layers, bidirectional=d == 2, seed=0)
    reference = getattr(torch.nn, CELLS[cell])(i, h, num_layers=layers, bidirectional=d == 2)
    reference.load_state_dict(xrnn.io.torch_state_dict(model))
    reference.to(device)
    host = np.random.default_rng(0).standard_normal((t, b, i)).astype(np.float32)
    return model, reference, xrnn.asarray(host), torch.from_numpy(host).to(device)


def contenders(shape: Shape, cell: str, mode: str) -> dict[str, tuple[Callable[[], None], Timer]]:
    """Name -> (one run, its timer). ``mode`` is "forward" (eval mode, xrnn under
    ``no_grad`` and torch under ``inference_mode``: neither keeps anything for a
    backward) or "train" (forward + backward of the sum of outputs; both sides compute
    every gradient: input, parameters). On the GPU torch runs twice, named for what runs:
    ``cudnn`` (torch with cuDNN) and ``torch_loop`` (torch's per-timestep path, cuDNN
    disabled), so that each row's ``ratio`` has the keys ``cudnn`` and ``torch_loop``."""
    model, reference, x, x_torch = matched_pair(shape, cell)
    if mode == "forward":
        model.eval(), reference.eval()

        def run_xrnn() -> None:
            with xrnn.no_grad():
                model(x)

        def run_torch() -> None:
            with torch.inference_mode():
                reference(x_torch)
    else:
        x_torch.requires_grad_(True)
        with xrnn.no_grad():  # a forward only for the output's shape: nothing to record
            grad_output = xrnn.get_namespace(x).ones_like(model(x)[0])  # d(sum of outputs)

        def run_xrnn() -> None:
            model.zero_grad()
            model(x)
            model.backward(grad_output)

        def run_torch() -> None:
            reference.zero_grad()
            x_torch.grad = None
            reference(x_torch)[0].sum().backward()

    if xrnn.get_backend() != "cupy":
        return {"xrnn": (run_xrnn, wall_seconds), "torch": (run_torch, wall_seconds)}

    def run_torch_loop() -> None:
        with torch.backends.cudnn.flags(enabled=False):
            run_torch()

    return {"xrnn": (run_xrnn, cupy_event_seconds), "cudnn": (run_torch, torch_event_seconds),
            "torch_loop": (run_torch_loop, torch_event_seconds)}


def wall_seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cupy_event_seconds(fn: Callable[[], object]) -> float:
    """GPU time of ``fn`` between two CuPy events on its current stream, after waiting
    for the whole device (torch's work included)."""
    import cupy

    cupy.cuda.Device().synchronize()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    fn()
    end.record()
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end) / 1e3


def torch_event_seconds(fn: Callable[[], object]) -> float:
    """GPU time of ``fn`` between two torch CUDA events on its current stream, after
    waiting for the whole device (CuPy's work included)."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


#: Seconds to wait before each contender's block of runs. After a parallel call, OpenBLAS's
#: worker threads spin for up to ~0.1 s (and OpenMP's for a while too) before they sleep;
#: on a 2-core machine a contender started at once shares a core with the other's spinning
#: threads. Both libraries used alone never see that, so neither should here.
SETTLE_SECONDS = 0.25


def alternate_rounds(runs: dict[str, tuple[Callable[[], None], Timer]], rounds: int,
                     per_round: int, warmup: int = 2) -> dict[str, list[float]]:
    """Each contender's median seconds in each round: ``warmup`` untimed runs each, then
    ``rounds`` rounds in which every contender in turn takes the median of ``per_round``
    runs, so that drifts in the machine's load hit all of them. Each block of runs starts
    after :data:`SETTLE_SECONDS`."""
    for _ in range(warmup):
        for fn, _timer in runs.values():
            fn()
    medians: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (fn, timer) in runs.items():
            time.sleep(SETTLE_SECONDS)
            medians[name].append(statistics.median(timer(fn) for _ in range(per_round)))
    return medians


def alternate(runs: dict[str, tuple[Callable[[], None], Timer]], rounds: int, per_round: int,
              warmup: int = 2) -> dict[str, float]:
    """Median seconds of each contender: the median over :func:`alternate_rounds`'s
    rounds."""
    return {name: statistics.median(values)
            for name, values in alternate_rounds(runs, rounds, per_round, warmup).items()}


def matmul_peak(backend: str, sizes: tuple[int, ...], min_seconds: float) -> float:
    """The best float32 matrix-product rate, in GFLOP/s, of the backend's own namespace
    (``numpy`` or ``cupy``) over square products of the given sizes: each size is run at
    least 3 times and until ``min_seconds`` have been spent on it, after one warm-up."""
    xp = importlib.import_module(backend)
    timer = cupy_event_seconds if backend == "cupy" else wall_seconds
    rng = np.random.default_rng(0)
    best = 0.0
    for n in sizes:
        a, b = (xp.asarray(rng.standard_normal((n, n), dtype=np.float32)) for _ in range(2))
        xp.matmul(a, b)
        spent, count = 0.0, 0
        while count < 3 or spent < min_seconds:
            seconds = timer(lambda: xp.matmul(a, b))
            spent, count = spent + seconds, count + 1
            best = max(best, 2 * n**3 / seconds)
    return best / 1e9


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _blas() -> str:
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        text = f"{blas['name']} {blas.get('version', '')}".strip()
        config = blas.get("openblas configuration")
        return f"{text} ({config})" if config else text
    except Exception:  # older numpy, or a build without the information
        return "unknown"


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=root,
                               timeout=10).returncode != 0
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{commit}{' (with uncommitted changes)' if dirty else ''}" if commit else "unknown"


def machine_info(backend: str) -> dict[str, str]:
    """What the results depend on: processor, cores, library versions, BLAS, threads,
    and the GPU when xrnn runs on CuPy."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads_env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                              "MKL_NUM_THREADS") if k in os.environ}
    info = {
        "cpu": _cpu_model(),
        "cores": f"{os.cpu_count()} ({usable} usable by this process)",
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "xrnn commit": _git_commit(),
        "numpy": np.__version__,
        "numpy BLAS": _blas(),
        "thread variables": ", ".join(f"{k}={v}" for k, v in threads_env.items()) or "none set",
        "torch": f"{torch.__version__}, {torch.get_num_threads()} threads",
    }
    if backend == "cupy":
        import cupy

        info["gpu"] = torch.cuda.get_device_name()
        info["cupy"] = (f"{cupy.__version__}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}"
                        f", CUPY_TF32={os.environ.get('CUPY_TF32', 'unset')}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tf32 = "on" if torch.backends.cudnn.allow_tf32 else "off"
        info["torch cuDNN"] = f"{torch.backends.cudnn.version()}, TF32 {tf32}"
    return info


def write_results(stem: Path | str, text: str, data: object) -> None:
    """Write ``stem``.md (``text``) and ``stem``.json (``data``, indented)."""
    Path(f"{stem}.md").write_text(text)
    Path(f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
