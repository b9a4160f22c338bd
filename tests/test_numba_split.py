"""One-direction layers with their hidden units split between two threads
(``xrnn._kernels.numba_split``), forward and backward, against the generic driver at
1e-12 in float64; where the path is chosen, and what happens off the main thread or
when a half fails. Skipped as a whole when numba is not installed (CI installs it)."""

from __future__ import annotations

import faulthandler
import itertools
import threading

import numpy as np
import pytest

pytest.importorskip("numba", reason="numba not installed (pip install xrnn[fast])")

import xrnn  # noqa: E402
from xrnn import _kernels  # noqa: E402
from xrnn._kernels import (blas, numba_layer, numba_split, numba_threaded, numpy_layer,  # noqa: E402
                           packed)
from xrnn.testing import assert_close  # noqa: E402

from .conftest import (compare_forward_without_tape, compare_kernel_with_generic,  # noqa: E402
                       numpy_leg_only)

pytestmark = [numpy_leg_only, pytest.mark.skipif(
    not blas.AVAILABLE, reason="NumPy's BLAS is not scipy-openblas64 (the split path is off)")]

CASES = [("RNN", {"nonlinearity": n}) for n in ("tanh", "relu", "identity")] + [
    ("LSTM", {}), ("GRU", {})]
T, I = 6, 4


@pytest.fixture
def split(monkeypatch):
    """Every layer above a zero whole-loop limit and a zero least work for the split, on
    two cores whatever this machine's."""
    monkeypatch.setattr(numba_layer, "MAX_STEP_WORK", dict.fromkeys(("rnn", "lstm", "gru"), 0))
    monkeypatch.setattr(numba_split, "MIN_WORK", 0)
    monkeypatch.setattr(numba_threaded, "usable_cores", lambda: 2)


def _compare(rng, kind, options, num_layers, batch, hidden, *, dtype=np.float64,
             tolerance=1e-12, given_state=True, **call):
    x = rng.standard_normal((T, batch, I)).astype(dtype)
    state = ()
    if given_state:
        h0 = rng.standard_normal((num_layers, batch, hidden)).astype(dtype)
        state = ((h0, np.cos(h0)) if kind == "LSTM" else h0,)
    for _ in range(2):  # twice: the second reuses the workspace's buffers
        compare_forward_without_tape(
            lambda: getattr(xrnn, kind)(I, hidden, num_layers, dtype=np.dtype(dtype).name,
                                        seed=3, **options).eval(),
            x, counter=(numba_layer, "split_layers_run"), num_layers=num_layers, kernels=True,
            tolerance=tolerance, state=state, **call)


#: hidden 7: halves of 3 and 4 units; batch 1 and 5: BLAS's gemv and gemm
GRID = list(itertools.product(range(len(CASES)), [1, 2], [1, 5], [6, 7], [False, True],
                              [False, True]))
LENGTHS = [2, T, 1, 4, 3]


@pytest.mark.parametrize("case, num_layers, batch, hidden, bias, with_lengths", GRID,
                         ids=[f"{CASES[c][0]}{CASES[c][1] or ''}-{L}-B{b}-H{h}-{bias}-{n}"
                              for c, L, b, h, bias, n in GRID])
def test_split_layers_match_generic_path(rng, split, case, num_layers, batch, hidden, bias,
                                         with_lengths):
    """Output and final states; lengths leave padded steps' states alone."""
    kind, options = CASES[case]
    lengths = (LENGTHS[:batch] if batch > 1 else [3]) if with_lengths else None
    _compare(rng, kind, {**options, "bias": bias}, num_layers, batch, hidden, lengths=lengths)


@pytest.mark.parametrize("case, num_layers, batch, hidden, bias, with_lengths", GRID,
                         ids=[f"{CASES[c][0]}{CASES[c][1] or ''}-{L}-B{b}-H{h}-{bias}-{n}"
                              for c, L, b, h, bias, n in GRID])
def test_split_training_matches_generic_path(rng, split, case, num_layers, batch, hidden,
                                             bias, with_lengths):
    """With a tape: output, final states and every gradient (input, initial states,
    weights and biases, back in PyTorch's row order); padded steps pass the gradient
    through."""
    kind, options = CASES[case]
    lengths = (LENGTHS[:batch] if batch > 1 else [3]) if with_lengths else None
    compare_kernel_with_generic(
        lambda: getattr(xrnn, kind)(I, hidden, num_layers, bias=bias, dtype="float64",
                                    seed=3, **options),
        rng.standard_normal((T, batch, I)), kernels=True,
        counter=(numba_layer, "split_layers_run"), num_layers=num_layers, lengths=lengths)


@pytest.mark.parametrize("case", range(len(CASES)), ids=[c[0] + str(c[1] or "") for c in CASES])
def test_split_training_with_dot_products_matches_generic_path(rng, split, case):
    """Three rows of ``DOTS_INNER`` units: each half's forward products are dot products
    (:func:`blas._rows_dots`); output, final states and every gradient, padded steps
    too."""
    kind, options = CASES[case]
    compare_kernel_with_generic(
        lambda: getattr(xrnn, kind)(I, blas.DOTS_INNER, dtype="float64", seed=3, **options),
        rng.standard_normal((T, 3, I)), kernels=True,
        counter=(numba_layer, "split_layers_run"), num_layers=1, lengths=[2, T, 4])


@pytest.mark.parametrize("case", range(len(CASES)), ids=[c[0] + str(c[1] or "") for c in CASES])
def test_split_training_on_panels_past_max_rows_matches_generic_path(rng, split, monkeypatch,
                                                                     case):
    """More batch rows than ``packed.MAX_ROWS``, on panels as where they fit in half the
    L2 (here made 1 GiB): output, final states and every gradient, padded steps too."""
    monkeypatch.setattr(packed, "L2_BYTES", 1 << 30)
    kind, options = CASES[case]
    batch = packed.MAX_ROWS + 6
    assert packed.on_panels(batch, 7, 8)
    compare_kernel_with_generic(
        lambda: getattr(xrnn, kind)(I, 7, dtype="float64", seed=3, **options),
        rng.standard_normal((T, batch, I)), kernels=True,
        counter=(numba_layer, "split_layers_run"), num_layers=1,
        lengths=[T, 2, 4, T, 1, 3] * (batch // 6) + [T] * (batch % 6))


#: (dtype, batch, hidden): each half's units fill whole panels (one-row panels at batch 1)
WHOLE_PANELS = [(dtype, batch, 2 * packed.panel_width(batch, np.dtype(dtype).itemsize))
                for dtype in ("float64", "float32") for batch in (1, 5)]


@pytest.mark.parametrize("case", range(len(CASES)), ids=[c[0] + str(c[1] or "") for c in CASES])
@pytest.mark.parametrize("dtype, batch, hidden", WHOLE_PANELS,
                         ids=[f"{d}-B{b}-H{h}" for d, b, h in WHOLE_PANELS])
def test_split_training_with_gate_blocks_packed_whole_matches_generic_path(
        rng, split, case, dtype, batch, hidden):
    """Halves whose units fill whole panels pack each gate block of ``W_hh`` straight from
    the parameter (the other tests' halves of 3 and 4 units gather their rows first):
    output, final states and every gradient, padded steps too."""
    assert hidden // 2 % packed.panel_width(batch, np.dtype(dtype).itemsize) == 0
    assert packed.on_panels(batch, hidden, np.dtype(dtype).itemsize, transpose_b=True)
    kind, options = CASES[case]
    compare_kernel_with_generic(
        lambda: getattr(xrnn, kind)(I, hidden, dtype=dtype, seed=3, **options),
        rng.standard_normal((T, batch, I)).astype(dtype), kernels=True,
        tolerance=1e-12 if dtype == "float64" else 1e-4,
        counter=(numba_layer, "split_layers_run"), num_layers=1,
        lengths=[2, T, 4, 1, 3][:batch] if batch > 1 else [4])


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_split_training_float32_dropout_chunks_missing_gradients(rng, split, monkeypatch,
                                                                 kind):
    """float32 with training-mode dropout between layers (the same masks on both paths),
    no initial state, no gradient for h_n, and the input projection by chunks of two
    steps; one step (T = 1: the input's gradient is one half's)."""
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[kind]
    monkeypatch.setattr(numpy_layer, "_CHUNK_ELEMENTS", 2 * 5 * gates * 8)

    def build():
        return getattr(xrnn, kind)(I, 8, 3, dropout=0.5, dtype="float32", seed=3)

    x = rng.standard_normal((T, 5, I)).astype(np.float32)
    for steps in (T, 1):
        compare_kernel_with_generic(build, x[:steps], kernels=True, tolerance=1e-5,
                                    counter=(numba_layer, "split_layers_run"), num_layers=3,
                                    given_state=False, final_grads=(False, True))


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_split_float32_zero_state_and_chunks(rng, split, monkeypatch, kind):
    """float32 (compiled separately: sgemm and sgemv), no initial state, and the input
    projection by chunks of two steps (a partial last chunk)."""
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[kind]
    monkeypatch.setattr(numpy_layer, "_CHUNK_ELEMENTS", 2 * 5 * gates * 8)
    _compare(rng, kind, {}, 2, 5, 8, dtype=np.float32, tolerance=1e-5, given_state=False,
             lengths=[T, 4, 2, 1, 5])


def _counts(model, x) -> tuple[int, int, int, int]:
    """(whole loop, fused steps, threaded, split) layers run by one forward under
    ``no_grad``, and by one forward with a tape."""
    names = ("layers_run", "fused_layers_run", "threaded_layers_run", "split_layers_run")
    before = [getattr(numba_layer, name) for name in names]
    with xrnn.backend.use_backend("numpy"), xrnn.no_grad():
        model(x)
    return tuple(getattr(numba_layer, name) - b for name, b in zip(names, before))


def test_which_layers_split(monkeypatch):
    """One direction above the whole-loop limit, with or without a tape, with at least
    MIN_WORK multiply-adds: split, on two cores; per-step options, a projection, one
    unit, less work, or on one core: fused steps; bidirectional: a direction per
    thread; at the limit the whole loop (BEFORE_WHOLE_LOOP aside: the test above)."""
    monkeypatch.setattr(numba_threaded, "usable_cores", lambda: 2)
    monkeypatch.setattr(numba_split, "BEFORE_WHOLE_LOOP", {})
    hidden = 16
    batch = numba_layer.MAX_STEP_WORK["lstm"] // (4 * hidden * hidden)
    x = np.ones((3, batch + 1, 2), dtype=np.float32)
    work = 3 * (batch + 1) * 4 * hidden * (2 + hidden)  # the first layer's
    monkeypatch.setattr(numba_split, "MIN_WORK", work + 1)
    with xrnn.backend.use_backend("numpy"):
        assert _counts(xrnn.LSTM(2, hidden, seed=0), x) == (0, 1, 0, 0)
    monkeypatch.setattr(numba_split, "MIN_WORK", work)
    with xrnn.backend.use_backend("numpy"):
        model = xrnn.LSTM(2, hidden, 2, seed=0)
        assert _counts(model, x) == (0, 0, 0, 2)
        assert _counts(model, x[:, :batch]) == (2, 0, 0, 0)
        before = numba_layer.split_layers_run
        model(x)  # a tape (training)
        assert numba_layer.split_layers_run == before + 2
        assert _counts(xrnn.LSTM(2, hidden, bidirectional=True, seed=0), x) == (0, 0, 1, 0)
        assert _counts(xrnn.LSTM(2, hidden, proj_size=3, seed=0), x) == (0, 1, 0, 0)
        assert _counts(xrnn.LSTM(2, hidden, zoneout=0.1, seed=0).eval(), x) == (0, 1, 0, 0)
        wide = np.ones((3, 1 << 17, 2), dtype=np.float32)
        assert _counts(xrnn.RNN(2, 1, seed=0), wide) == (0, 1, 0, 0)  # one unit
        monkeypatch.setattr(numba_threaded, "usable_cores", lambda: 1)
        assert _counts(model, x) == (0, 2, 0, 0)


def test_from_other_threads_layers_take_fused_steps(rng, split):
    """Off the main thread BLAS stays on its threads (NumPy's OpenBLAS ignores the setting
    there), so the layer is not split: it runs the fused steps, with the generic path's
    results, forward and backward."""
    model = xrnn.GRU(I, 8, seed=1, dtype="float64")
    x = rng.standard_normal((T, 3, I))
    counts = []

    def train():
        before = [numba_layer.split_layers_run, numba_layer.fused_layers_run]
        model.zero_grad()
        output, _ = model(x)
        grad_x = model.backward(np.cos(output))
        counts.append([numba_layer.split_layers_run - before[0],
                       numba_layer.fused_layers_run - before[1]])
        return [output, grad_x] + [p.grad for p in model.parameters()]

    with xrnn.backend.use_backend("numpy"):
        with _kernels.kernels_enabled(False):
            generic = train()
        main = train()
        other = []
        thread = threading.Thread(target=lambda: other.append(train()))
        thread.start()
        thread.join()
    assert counts[1:] == [[1, 0], [0, 1]]
    for results in (main, other[0]):
        for got, want in zip(results, generic, strict=True):
            assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_an_lstm_of_several_rows_splits_before_the_whole_loop(monkeypatch):
    """A one-direction LSTM that fits the whole loop splits instead from
    BEFORE_WHOLE_LOOP (4) batch rows on, where it splits at all (here the least work
    lowered to 1); the GRU, the RNN, fewer rows, or less work: the whole loop."""
    monkeypatch.setattr(numba_threaded, "usable_cores", lambda: 2)
    monkeypatch.setattr(numba_split, "MIN_WORK", 1)
    with xrnn.backend.use_backend("numpy"):
        model = xrnn.LSTM(2, 8, seed=0)
        assert _counts(model, np.ones((3, 4, 2), np.float32)) == (0, 0, 0, 1)
        assert _counts(model, np.ones((3, 3, 2), np.float32)) == (1, 0, 0, 0)
        for kind in ("GRU", "RNN"):
            model = getattr(xrnn, kind)(2, 8, seed=0)
            assert _counts(model, np.ones((3, 64, 2), np.float32)) == (1, 0, 0, 0)
        monkeypatch.setattr(numba_split, "MIN_WORK", 1 << 40)
        assert _counts(xrnn.LSTM(2, 8, seed=0), np.ones((3, 64, 2), np.float32)) == (1, 0, 0, 0)


def test_wait_returns_when_the_step_is_done_or_on_abort():
    counters = np.zeros(numba_split._ABORT + 1, dtype=np.int64)
    slot = numba_split._DONE[1]
    counters[slot] = 5
    assert numba_split._wait(counters, slot, 5)
    counters[numba_split._ABORT] = 1
    assert not numba_split._wait(counters, slot, 6)


@pytest.mark.parametrize("loop", ["_half_task_forward", "_half_task_backward"])
@pytest.mark.parametrize("failing_half", [0, 1])
def test_a_failing_half_stops_the_other_and_raises(rng, split, monkeypatch, loop,
                                                   failing_half):
    """When one half raises, forward or backward, the other stops waiting for it (the
    abort flag) and the caller gets the exception instead of a hang (a watchdog ends
    the process after 120 s if it does hang)."""
    real = getattr(numba_split, loop)

    def failing(code, half, *args):
        if half == failing_half:
            raise RuntimeError(f"half {half} failed")
        return real(code, half, *args)

    monkeypatch.setattr(numba_split, loop, failing)
    model = xrnn.LSTM(I, 8, seed=0, dtype="float64")
    x = rng.standard_normal((T, 3, I))
    faulthandler.dump_traceback_later(120, exit=True)
    try:
        with xrnn.backend.use_backend("numpy"), pytest.raises(
                RuntimeError, match=f"half {failing_half} failed"):
            output, _ = model(x)
            model.backward(np.ones_like(output))
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.mark.parametrize("module", ["numba_split", "numba_threaded", "numba_layer",
                                    "numba_layernorm"])
def test_each_compiled_module_imports_first(module):
    """In a fresh interpreter, any of the compiled kernel's modules imports before the
    others (they import each other; a name taken from a half-imported module failed)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", f"import xrnn._kernels.{module}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
