"""The least time any implementation could take for each row of a CPU grid, on this machine.

Issue 13 asks xrnn/torch <= 0.7 where B <= 32 and <= 1.0 elsewhere. Where a row misses,
this says whether the target lies below what the hardware allows. Two ceilings are
measured here, both cores running at once (one thread each, the GIL released):

- **compute**: the most float32 multiply-adds a second measured, GFLOP/s: the packed
  6 x 16 kernel (:mod:`xrnn._kernels.packed`) on operands in L1 (the multiply-add
  units' own rate) and in L2, NumPy's BLAS on one square product per core, and the
  grid's own matmul peak; the highest of these (:func:`compute_ceiling`);
- **streaming**: the fastest read of an array of a given size, held in whichever cache
  it fits, GB/s: a vectorised sum over it, repeated.

A row's floor is the larger of two lower bounds, each ignoring all other work (gates,
nonlinearities, copies, thread hand-offs), so the true least time is higher:

- ``compute`` = the row's matrix-product FLOPs (:func:`benchmarks.common.model_flops`)
  at the compute ceiling;
- ``stream`` = at every step each direction of each layer multiplies by its whole
  ``W_hh`` (G*H x H float32), which must be read from cache once a step at least (twice
  in training: the backward multiplies by it again); a layer's ``D * W_hh`` split
  evenly between the two cores, read at the streaming ceiling for that size.

A target below its row's floor cannot be met on this machine by any implementation that
makes the products with their multiply-adds (as BLAS and PyTorch do). The column "target's
FLOP rate / ceiling" is the row's product FLOPs over the target's time, as a share of the
compute ceiling: above 100%, the target asks both cores for more multiply-adds a second
than they were measured to deliver.

A third number is not a bound on every implementation but on xrnn's: ``gates`` = the
row's elementwise work (gates, c, h, and in training their gradients: T*B*H*L*D units
a pass) at the speed of xrnn's own compiled gate steps (:mod:`xrnn._kernels.numba_layer`,
the fastest gate code tried so far), measured here for the row's B and H on both cores
at once, its units split between them. A target between the floor and the floor plus
the gates can only be met with gates faster than xrnn's.

A fourth is a measurement, not a bound: ``gemms`` = the row's products
(:func:`products`: the canonical ones, as PyTorch and xrnn make them, each core its
share) each at the best rate measured for its own shape, both cores at once
(:func:`gemm_rate`: NumPy's BLAS on one thread, or xrnn's packed kernel). The compute
ceiling is the best rate of any shape, with the operands in cache; a row's shapes may run
slower (few rows, a short inner dimension, weights streamed from L3). A target below
``gemms`` plus the gates needs products faster than those measured here at its shapes.
Measured minutes after the grid, on a VM whose speed moves by up to 45%, it can come out
above xrnn's own time for the row (one row did in the thirteenth pass's grid), and a
row's figure moved by up to 1.6x from run to run (benchmarks/NOTES.md, fourteenth pass):
on such a host its verdict is not a property of the row.

    python -m benchmarks.floors benchmarks/results/cpu-eleventh-pass-grid.json
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as ``python benchmarks/floors.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numba  # noqa: E402
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from benchmarks.common import GATES, model_flops, write_results  # noqa: E402
from benchmarks.run import FIELDS, ms_text  # noqa: E402
from xrnn._kernels import blas, numba_layer, packed  # noqa: E402

ITEMSIZE = 4  # float32
#: Targets of issue 13: xrnn/torch at most this, by batch size.
SMALL_BATCH, SMALL_TARGET, TARGET = 32, 0.7, 1.0


@numba.njit(nogil=True, fastmath=True)
def _read(w, repeats):
    """Sum every element of ``w``, ``repeats`` times (reassociated: vector
    accumulators, so the loop runs at the rate the cache delivers)."""
    total = np.float32(0)
    for _ in range(repeats):
        s = np.float32(0)
        for j in range(w.size):
            s += w[j]
        total += s
    return total


def on_both_cores(work, tries: int = 5) -> float:
    """Seconds for ``work(0)`` and ``work(1)`` run at once on two threads (best of
    ``tries``)."""
    best = float("inf")
    for _ in range(tries):
        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        best = min(best, time.perf_counter() - start)
    return best


@numba.njit(nogil=True)
def _multiply_adds(a, panels, out, repeats):
    """The packed kernel's 6 x 16 block, ``out += a @ panel`` on one panel, ``repeats``
    times: every operand in L1, so nothing but the multiply-adds limits it."""
    panel = panels[0].ctypes
    for _ in range(repeats):
        packed._kernel(a, 0, 6, 0, a.shape[1], panel, out, 0, out.shape[1], 1)


def compute_ceiling(grid_peak: float | None = None) -> dict[str, float]:
    """GFLOP/s of both cores at once, one thread each: ``fma``, the packed kernel's
    6 x 16 block on operands in L1 ((6 x 256) @ (256 x 16), 22 KiB: the multiply-add
    units' own rate); ``packed``, the packed kernel on (48 x 512) @ (512 x 256) in L2;
    ``blas``, NumPy's BLAS on (1024 x 1024) @ (1024 x 1024). ``best`` is the highest of
    these and of ``grid_peak``, the grid's own matmul peak (measured when the grid
    started), so that a host faster then than now cannot make a floor too high."""
    rng = np.random.default_rng(0)
    small = []
    for _ in range(2):
        p = np.empty(packed.panels_shape(16, 256, np.float32), np.float32)
        packed.pack(rng.standard_normal((256, 16), dtype=np.float32) * 1e-3, p)
        small.append((rng.standard_normal((6, 256), dtype=np.float32) * 1e-3, p,
                      np.zeros((6, 16), np.float32)))
    spins = 40_000
    _multiply_adds(*small[0], 1)
    a = [rng.standard_normal((48, 512), dtype=np.float32) for _ in range(2)]
    panels = []
    for _ in range(2):
        w = rng.standard_normal((512, 256), dtype=np.float32)
        p = np.empty(packed.panels_shape(256, 512, np.float32), np.float32)
        packed.pack(w, p)
        panels.append(p)
    out = [np.empty((48, 256), np.float32) for _ in range(2)]
    calls = 400
    packed.matmul(a[0], panels[0], out[0])

    def kernel(i):
        for _ in range(calls):
            packed.matmul(a[i], panels[i], out[i])

    n = 1024
    sq = [rng.standard_normal((n, n), dtype=np.float32) for _ in range(2)]
    sq_out = [np.empty((n, n), np.float32) for _ in range(2)]

    def blas(i):
        for _ in range(8):
            np.matmul(sq[i], sq[i], out=sq_out[i])

    with threadpool_limits(1):
        blas(0)
        kernel_rate = 2 * calls * 2 * 48 * 512 * 256 / on_both_cores(kernel) / 1e9
        blas_rate = 2 * 8 * 2 * n**3 / on_both_cores(blas) / 1e9
    fma_rate = 2 * spins * 2 * 6 * 256 * 16 / on_both_cores(
        lambda i: _multiply_adds(*small[i], spins)) / 1e9
    rates = {"fma": fma_rate, "packed": kernel_rate, "blas": blas_rate,
             "grid": grid_peak or 0.0}
    return {**rates, "best": max(rates.values())}


_streams: dict[int, float] = {}


def stream_ceiling(nbytes: int) -> float:
    """GB/s of both cores at once, each reading its own array of ``nbytes`` again and
    again (best of 9 tries of about 40 ms)."""
    nbytes = max(nbytes, 4096)
    if nbytes not in _streams:
        arrays = [np.ones(nbytes // ITEMSIZE, np.float32) for _ in range(2)]
        repeats = max(1, int(4e9 // nbytes))
        _read(arrays[0], 1)
        seconds = on_both_cores(lambda i: _read(arrays[i], repeats), tries=9)
        _streams[nbytes] = 2 * repeats * nbytes / seconds / 1e9
    return _streams[nbytes]


@numba.njit(nogil=True)
def _gate_steps(code, train, repeats, z, zero, c, c_new, a, tanh_c, h, dh, dc, dz, dgh, direct):
    """xrnn's gate step for one step of a batch (and in training its backward),
    ``repeats`` times: ``z`` (B, G*H) the product (``zero`` the input projection and
    biases, all zero, so that ``z`` stays as it is but for the LSTM's o block without a
    tape, which becomes o, in (0, 1)), the rest (B, H) or (B, G*H). The LSTM's forward
    stores its gates and tanh(c) only in training, as the layers do."""
    bias = zero[0]
    for _ in range(repeats):
        if code == numba_layer._LSTM:
            numba_layer._lstm_step(z, zero, bias, c, c_new, a, tanh_c, h, train)
            if train:
                numba_layer._lstm_back(dh, dc, a, tanh_c, c, dz)
        elif code == numba_layer._GRU:
            numba_layer._gru_step(z, zero, bias, bias, c, a, h)
            if train:
                numba_layer._gru_back(dh, a, z, c, dz, dgh, direct)
        else:
            numba_layer._elman_step(z, zero, bias, h, code)
            if train:
                numba_layer._tanh_back(h, dh, dz)


@functools.cache
def gate_ns(cell: str, mode: str, batch: int, hidden: int) -> float:
    """Nanoseconds per unit (one of B*H) of xrnn's gate step for a step (and its
    backward in training), both cores at once, each on its own arrays (best of 5
    tries of about 20 ms)."""
    code = numba_layer._CODES["rnn_tanh" if cell == "rnn" else cell]
    width = GATES[cell] * hidden
    rng = np.random.default_rng(0)

    def state():
        return rng.standard_normal((batch, hidden)).astype(np.float32)

    def gates():
        return np.empty((batch, width), np.float32)

    def arrays():  # _gate_steps's z, zero, c, c_new, a, tanh_c, h, dh, dc, dz, dgh, direct
        return (rng.standard_normal((batch, width)).astype(np.float32),
                np.zeros((batch, width), np.float32), state(), state(), gates(), state(),
                state(), state(), state(), gates(), gates(), state())

    sets = [arrays() for _ in range(2)]
    train = mode == "train"
    repeats = max(1, int(2e6 // (batch * hidden)))
    _gate_steps(code, train, 1, *sets[0])
    seconds = on_both_cores(lambda i: _gate_steps(code, train, repeats, *sets[i]))
    return seconds / (repeats * batch * hidden) * 1e9


def products(cell: str, mode: str, shape: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """One core's share of the row's matrix products, as ``(M, K, N, count)``: ``count``
    products (M, K) @ (K, N). Per layer and direction, with I_l the layer's input width:
    the input projection (T*B, I_l) @ (I_l, G*H) of all steps at once and the recurrent
    (B, H) @ (H, G*H) of each step; in training also each step's (B, G*H) @ (G*H, H)
    back to h, then W_ih's gradient (G*H, T*B) @ (T*B, I_l), W_hh's (G*H, T*B) @ (T*B, H)
    and the input's (T*B, G*H) @ (G*H, I_l). With two directions each core takes one;
    with one, half of every product: half the gate rows, half of h in the step back,
    half of the steps in the input's gradient."""
    t, b, i, h, layers, d = shape
    gh, rows = GATES[cell] * h, t * b

    def half(n):
        return n if d == 2 else -(-n // 2)

    share = []
    for layer in range(layers):
        width = i if layer == 0 else d * h
        share += [(rows, width, half(gh), 1), (b, h, half(gh), t)]
        if mode == "train":
            share += [(b, gh, half(h), t), (half(gh), rows, width, 1), (half(gh), rows, h, 1),
                      (half(rows), gh, width, 1)]
    return share


#: Largest M, and K where M is at least :data:`CAP_FROM`, of the products
#: :func:`gemm_rate` times: a larger product runs at the same rate, and would take long.
MAX_SIDE, CAP_FROM = 1024, 64


@numba.njit(nogil=True)
def _products(a, b, panels, out, repeats):
    """``out = a @ b``, ``repeats`` times: by :func:`xrnn._kernels.blas.matmul` (NumPy's
    BLAS, or xrnn's own loops for 2-4 rows) where ``panels`` is empty, else on them
    (:func:`xrnn._kernels.packed.matmul`)."""
    for _ in range(repeats):
        if panels.shape[0] == 0:
            blas.matmul(a, b, False, out)
        else:
            packed.matmul(a, panels, out)


@functools.cache
def gemm_rate(m: int, k: int, n: int) -> float:
    """GFLOP/s of one core for (M, K) @ (K, N) float32, both cores at once, each on its
    own operands (best of 3 tries of about 30 ms): the better of NumPy's BLAS on one
    thread (with xrnn's own loops for 2-4 rows) and xrnn's packed kernels (``B`` packed
    beforehand, as xrnn packs ``W_hh`` once a call; one row on its own panels). M and K
    above :data:`MAX_SIDE` are timed at that size (K only where M is at least
    :data:`CAP_FROM`: below it the product streams ``B``, whose size matters)."""
    m = min(m, MAX_SIDE)
    k = min(k, MAX_SIDE) if m >= CAP_FROM else k
    rng = np.random.default_rng(0)
    operands = [(rng.standard_normal((m, k), dtype=np.float32),
                 rng.standard_normal((k, n), dtype=np.float32),
                 np.empty(packed.panels_shape(n, k, np.float32, m), np.float32),
                 np.empty((m, n), np.float32)) for _ in range(2)]
    for _, b, panels, _ in operands:
        packed.pack(b, panels)
    flops = 2 * m * k * n
    repeats = max(1, min(int(2e9 // flops), 100_000))
    empty = np.empty((0, 1, 1), np.float32)
    best = float("inf")
    with threadpool_limits(1):
        for use_panels in ((False, True) if blas.AVAILABLE else (True,)):
            def run(i, count=repeats):
                a, b, panels, out = operands[i]
                _products(a, b, panels if use_panels else empty, out, count)
            run(0, 1)
            best = min(best, on_both_cores(run, tries=3))
    return repeats * flops / best / 1e9


def gemm_ms(cell: str, mode: str, shape: tuple[int, ...],
            rate: Callable[[int, int, int], float] = gemm_rate) -> float:
    """Milliseconds of one core's share of the row's products (:func:`products`), each at
    ``rate(M, K, N)`` GFLOP/s."""
    return sum(count * 2 * m * k * n / rate(m, k, n)
               for m, k, n, count in products(cell, mode, shape)) / 1e6


def floor(cell: str, mode: str, shape: tuple[int, ...], gflops: float,
          stream: Callable[[int], float] = stream_ceiling,
          gates: Callable[[str, str, int, int], float] = gate_ns,
          gemm: Callable[[int, int, int], float] = gemm_rate) -> dict[str, Any]:
    """The row's two lower bounds and the larger, in milliseconds, at ``gflops`` and the
    GB/s ``stream(bytes per core)``; its units' time in xrnn's gates at
    ``gates(cell, mode, B, H)`` ns a unit on each core, the two cores sharing them; and
    its products at ``gemm(M, K, N)`` GFLOP/s a core (:func:`gemm_ms`)."""
    t, b, _, h, layers, d = shape
    w_hh = GATES[cell] * h * h * ITEMSIZE
    passes = 2 if mode == "train" else 1
    rate = stream(d * w_hh // 2)
    stream_ms = passes * t * layers * d * w_hh / rate / 1e6
    compute_ms = model_flops(cell, shape, mode) / gflops / 1e6
    unit_ns = gates(cell, mode, b, h)
    gates_ms = t * b * h * layers * d * unit_ns / 2 / 1e6
    floor_ms = max(compute_ms, stream_ms)
    products_ms = gemm_ms(cell, mode, shape, gemm)
    return {"compute_ms": compute_ms, "stream_ms": stream_ms, "stream_gbs": rate,
            "floor_ms": floor_ms, "bound": "compute" if compute_ms >= stream_ms else "stream",
            "gate_ns": unit_ns, "gates_ms": gates_ms, "with_gates_ms": floor_ms + gates_ms,
            "gemm_ms": products_ms, "gemm_gates_ms": products_ms + gates_ms}


def evaluate(grid: dict[str, Any], gflops: float,
             stream: Callable[[int], float] = stream_ceiling,
             gates: Callable[[str, str, int, int], float] = gate_ns,
             gemm: Callable[[int, int, int], float] = gemm_rate) -> list[dict[str, Any]]:
    """Each row of ``grid`` (a ``python -m benchmarks`` result) with its floor
    (:func:`floor`), its target and whether xrnn met it: ``reachable`` when the target is
    not below the floor, ``reachable_with_gates`` when not below the floor plus xrnn's
    gates, ``reachable_with_gemms`` when not below the products at this machine's
    matrix-product rates plus xrnn's gates."""
    rows = []
    for row in grid["rows"]:
        shape = tuple(row["shape"][f] for f in FIELDS)
        bounds = floor(row["cell"], row["mode"], shape, gflops, stream, gates, gemm)
        target = SMALL_TARGET if shape[1] <= SMALL_BATCH else TARGET
        xrnn_ms, torch_ms = row["ms"]["xrnn"], row["ms"]["torch"]
        target_ms = target * torch_ms
        rows.append({"cell": row["cell"], "mode": row["mode"], "shape": row["shape"],
                     **bounds, "xrnn_ms": xrnn_ms, "torch_ms": torch_ms, "target": target,
                     "target_ms": target_ms, "met": xrnn_ms <= target_ms,
                     "reachable": bounds["floor_ms"] <= target_ms,
                     "reachable_with_gates": bounds["with_gates_ms"] <= target_ms,
                     "reachable_with_gemms": bounds["gemm_gates_ms"] <= target_ms})
    return rows


def verdict(row: dict[str, Any]) -> str:
    """A row's verdict, from the strictest bound it fails to the loosest."""
    if row["met"]:
        return "met"
    if not row["reachable"]:
        return "missed, below the floor"
    if not row["reachable_with_gates"]:
        return "missed, reachable only with faster gates"
    if not row["reachable_with_gemms"]:
        return "missed, reachable only with faster products than this machine's"
    return "missed, reachable"


def markdown(result: dict[str, Any]) -> str:
    c = result["ceiling"]
    lines = [f"# Floors of the grid `{result['grid']}`\n",
             f"`{result['command']}`\n",
             f"Compute ceiling, both cores: {c['best']:.1f} GFLOP/s, the highest of the "
             f"multiply-adds in L1 {c.get('fma', 0.0):.1f}, the packed kernel "
             f"{c['packed']:.1f}, BLAS {c['blas']:.1f} and the grid's own peak "
             f"{c.get('grid', 0.0):.1f}. Streaming ceilings, both cores, "
             "GB/s by bytes per core: " + ", ".join(
                 f"{k / 1024:.0f} KiB {v:.0f}" for k, v in sorted(result["streams"].items()))
             + ".\n",
             "| cell | mode | T, B, I, H, L, D | compute floor ms | stream floor ms | "
             "floor ms | xrnn's gates ns/unit | floor + gates ms | products at this "
             "machine's GEMMs ms | those + gates ms | xrnn ms | torch ms | target ms | "
             "target's FLOP rate / ceiling | xrnn / floor | target |",
             "|---" * 16 + "|"]
    for r in result["rows"]:
        lines.append(
            f"| {r['cell']} | {r['mode']} | {', '.join(str(v) for v in r['shape'].values())} | "
            f"{ms_text(r['compute_ms'])} | {ms_text(r['stream_ms'])} | {ms_text(r['floor_ms'])} | "
            f"{r['gate_ns']:.2f} | {ms_text(r['with_gates_ms'])} | {ms_text(r['gemm_ms'])} | "
            f"{ms_text(r['gemm_gates_ms'])} | {ms_text(r['xrnn_ms'])} | {ms_text(r['torch_ms'])} | "
            f"{ms_text(r['target_ms'])} ({r['target']}x) | "
            f"{r['compute_ms'] / r['target_ms']:.0%} | {r['xrnn_ms'] / r['floor_ms']:.2f} | "
            f"{verdict(r)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floors",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("grid", type=Path, help="a CPU grid's JSON (python -m benchmarks)")
    parser.add_argument("--output", help="write OUTPUT.md and OUTPUT.json")
    args = parser.parse_args(argv)
    grid = json.loads(args.grid.read_text())
    if grid.get("device") != "cpu" or not all("torch" in row["ms"] for row in grid["rows"]):
        parser.error(f"{args.grid}: not a CPU grid of python -m benchmarks with torch's times")
    ceiling = compute_ceiling(grid.get("peak_gflops"))
    rows = evaluate(grid, ceiling["best"])
    result = {"grid": str(args.grid), "command": "python -m benchmarks.floors "
              + " ".join(argv if argv is not None else sys.argv[1:]),
              "ceiling": ceiling, "streams": dict(_streams), "rows": rows}
    text = markdown(result)
    print(text)
    if args.output:
        write_results(args.output, text, result)
    return result


if __name__ == "__main__":
    main()
