"""Bidirectional layers with a direction per thread (``xrnn._kernels.numba_threaded``)
and NumPy's BLAS called from compiled code (``xrnn._kernels.blas``), against the generic
driver at 1e-12 in float64 and against NumPy's ``matmul``; where the path is chosen.
Skipped as a whole when numba is not installed (CI installs it)."""

from __future__ import annotations

import itertools
import os
import threading
import time

import numpy as np
import pytest

pytest.importorskip("numba", reason="numba not installed (pip install xrnn[fast])")

import xrnn  # noqa: E402
from xrnn import _kernels  # noqa: E402
from xrnn._kernels import blas, numba_layer, numba_threaded, numpy_layer  # noqa: E402
from xrnn.testing import assert_close  # noqa: E402

from .conftest import (compare_kernel_with_generic, move_layernorm_weights,  # noqa: E402
                       numpy_leg_only)

pytestmark = [numpy_leg_only, pytest.mark.skipif(
    not blas.AVAILABLE, reason="NumPy's BLAS is not scipy-openblas64 (the threaded path is off)")]

CASES = [("RNN", {"nonlinearity": n}) for n in ("tanh", "relu", "identity")] + [
    ("LSTM", {}), ("GRU", {})]
T, I, H = 5, 4, 6


@pytest.fixture
def threaded(monkeypatch):
    """Every bidirectional layer above a zero whole-loop limit on two threads, whatever
    this machine's cores."""
    monkeypatch.setattr(numba_layer, "MAX_STEP_WORK", dict.fromkeys(("rnn", "lstm", "gru"), 0))
    monkeypatch.setattr(numba_threaded, "usable_cores", lambda: 2)


def _compare(rng, kind, options, num_layers, batch, *, bias=True, lengths=None,
             dtype=np.float64, tolerance=1e-12, **keywords):
    compare_kernel_with_generic(
        lambda: getattr(xrnn, kind)(I, H, num_layers, bias=bias, bidirectional=True,
                                    dtype=np.dtype(dtype).name, seed=3, **options),
        rng.standard_normal((T, batch, I)).astype(dtype), kernels=True,
        counter=(numba_layer, "threaded_layers_run"), num_layers=num_layers,
        lengths=lengths, tolerance=tolerance, **keywords)


#: batch 1 and 5: the one-row kernel on its panels and BLAS's matrix-vector products
#: (the forward's and the backward's), and the products of five rows
GRID = list(itertools.product(range(len(CASES)), [1, 2], [1, 5], [False, True], [False, True]))
LENGTHS = [2, T, 1, 4, 3]


@pytest.mark.parametrize("case, num_layers, batch, bias, with_lengths", GRID,
                         ids=[f"{CASES[c][0]}{CASES[c][1] or ''}-{L}-B{b}-{bias}-{n}"
                              for c, L, b, bias, n in GRID])
def test_threaded_layers_match_generic_path(rng, threaded, case, num_layers, batch, bias,
                                            with_lengths):
    """Outputs, final states and every gradient; batch 1 takes the one-row products,
    and lengths leave padded steps' states and gradients alone."""
    kind, options = CASES[case]
    lengths = (LENGTHS[:batch] if batch > 1 else [3]) if with_lengths else None
    _compare(rng, kind, options, num_layers, batch, bias=bias, lengths=lengths)


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_threaded_zero_state_missing_final_gradients_and_chunks(rng, threaded, monkeypatch,
                                                                kind):
    """No initial state, no gradient for h_n, and the input projection by chunks of two
    steps (a partial last chunk), as the other kernels."""
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[kind]
    monkeypatch.setattr(numpy_layer, "_CHUNK_ELEMENTS", 2 * 2 * 5 * gates * H)
    _compare(rng, kind, {}, 2, 5, lengths=[T, 4, 2, 1, 3], given_state=False,
             final_grads=(False, True))


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_threaded_float32_with_dropout_between_layers(rng, threaded, kind):
    """float32 (compiled separately; sgemm and sgemv), training-mode dropout between
    layers with the same masks on both paths."""
    _compare(rng, kind, {"dropout": 0.5}, 3, 5, dtype=np.float32, tolerance=1e-5,
             given_state=False, final_grads=(False, False))
    _compare(rng, kind, {}, 1, 1, dtype=np.float32, tolerance=1e-5)


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_threaded_forward_without_tape(rng, threaded, kind):
    """Under ``no_grad`` (one step's buffers, reused) the output and final states are the
    generic path's, twice in a row."""
    x = rng.standard_normal((T, 3, I))
    with xrnn.backend.use_backend("numpy"), xrnn.no_grad():
        model = getattr(xrnn, kind)(I, H, 2, bidirectional=True, dtype="float64", seed=1)
        results = []
        for enabled in (True, True, False):
            with _kernels.kernels_enabled(enabled):
                output, finals = model(x, lengths=[T, 2, 4])
            results.append([output, *(finals if isinstance(finals, tuple) else (finals,))])
    for fast in results[:2]:
        for got, want in zip(fast, results[2]):
            assert_close(got, want, rtol=1e-12, atol=1e-12)


LN_GRID = list(itertools.product(["LSTM", "GRU"], [1, 2], [1, 5], [False, True], [False, True]))


@pytest.mark.parametrize("kind, num_layers, batch, bias, with_lengths", LN_GRID,
                         ids=[f"{k}-{L}-B{b}-{bias}-{n}" for k, L, b, bias, n in LN_GRID])
def test_threaded_layernorm_forward_matches_generic_path(rng, threaded, monkeypatch, kind,
                                                         num_layers, batch, bias, with_lengths):
    """LayerNorm cells: the forward a direction per thread (the backward the fused
    steps', on its tape), with LayerNorm weights off 1 and 0, the input projection by
    chunks of two steps, with and without a tape, at 1e-12."""
    from xrnn._kernels import layernorm_layer, numba_layernorm

    gates = 4 if kind == "LSTM" else 3
    monkeypatch.setattr(layernorm_layer, "_CHUNK_ELEMENTS", 2 * 2 * batch * gates * H)

    def build():
        return move_layernorm_weights(getattr(xrnn, kind)(
            I, H, num_layers, bias=bias, bidirectional=True, layer_norm=True, dtype="float64",
            seed=4))

    lengths = (LENGTHS[:batch] if batch > 1 else [3]) if with_lengths else None
    compare_kernel_with_generic(
        build, rng.standard_normal((T, batch, I)), kernels=True,
        counter=(numba_layernorm, "threaded_layers_run"), num_layers=num_layers,
        lengths=lengths)
    with xrnn.backend.use_backend("numpy"), xrnn.no_grad():  # without a tape, in chunks
        model, x = build(), rng.standard_normal((T, batch, I))
        results = []
        for enabled in (True, False):
            with _kernels.kernels_enabled(enabled):
                output, finals = model(x, lengths=lengths)
            results.append([output, *finals] if kind == "LSTM" else [output, finals])
    for got, want in zip(*results):
        assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_threaded_layernorm_forward_with_dot_products(rng, threaded, kind):
    """LayerNorm cells of ``DOTS_INNER`` units at three rows: each direction's forward
    products are dot products (:func:`blas._rows_dots`); outputs, final states and every
    gradient, padded steps too, at 1e-12."""
    from xrnn._kernels import numba_layernorm

    compare_kernel_with_generic(
        lambda: move_layernorm_weights(getattr(xrnn, kind)(
            I, blas.DOTS_INNER, bidirectional=True, layer_norm=True, dtype="float64",
            seed=4)),
        rng.standard_normal((T, 3, I)), kernels=True,
        counter=(numba_layernorm, "threaded_layers_run"), num_layers=1, lengths=[2, T, 4])


def _layer_counts(model, x) -> tuple[int, int, int]:
    """(whole loop, fused steps, threaded) layers run by one forward."""
    names = ("layers_run", "fused_layers_run", "threaded_layers_run")
    before = [getattr(numba_layer, name) for name in names]
    with xrnn.backend.use_backend("numpy"), xrnn.no_grad():
        model(x)
    return tuple(getattr(numba_layer, name) - b for name, b in zip(names, before))


def test_which_layers_run_threaded(monkeypatch):
    """Bidirectional above the whole-loop limit: threaded, on two cores; on one core, or
    with per-step options or a projection: fused steps; at the limit the whole loop (one
    direction: test_numba_split)."""
    monkeypatch.setattr(numba_threaded, "usable_cores", lambda: 2)
    limit = numba_layer.MAX_STEP_WORK["lstm"]
    hidden = 16
    batch = limit // (4 * hidden * hidden)
    x = np.ones((3, batch + 1, 2), dtype=np.float32)
    with xrnn.backend.use_backend("numpy"):
        model = xrnn.LSTM(2, hidden, 2, bidirectional=True, seed=0)
        assert _layer_counts(model, x) == (0, 0, 2)
        assert _layer_counts(model, x[:, :batch]) == (2, 0, 0)
        assert _layer_counts(xrnn.LSTM(2, hidden, bidirectional=True, proj_size=3, seed=0),
                             x) == (0, 1, 0)
        zoned = xrnn.LSTM(2, hidden, bidirectional=True, zoneout=0.1, seed=0).eval()
        assert _layer_counts(zoned, x) == (0, 1, 0)
        monkeypatch.setattr(numba_threaded, "usable_cores", lambda: 1)
        assert _layer_counts(model, x) == (0, 2, 0)


def test_usable_cores_counts_this_process_cores():
    assert 1 <= numba_threaded.usable_cores() <= (__import__("os").cpu_count() or 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows, inner, columns", [(1, 5, 7), (3, 5, 7), (4, 1, 1), (1, 1, 3),
                                                  (6, 5, 7)])
@pytest.mark.parametrize("transpose_b", [False, True])
def test_blas_matmul_is_numpys(rng, dtype, rows, inner, columns, transpose_b):
    """``blas.matmul`` (gemm, a gemv per row below four rows) gives ``a @ b`` / ``a @ b.T``,
    and writes nothing outside ``out``."""
    a = rng.standard_normal((rows, inner)).astype(dtype)
    b = rng.standard_normal((columns, inner) if transpose_b else (inner, columns)).astype(dtype)
    padded = np.full((rows + 2, columns), 7.0, dtype=dtype)
    out = padded[1:-1]
    blas.matmul(a, b, transpose_b, out)
    want = a @ (b.T if transpose_b else b)
    tolerance = 1e-5 if dtype == np.float32 else 1e-13
    assert_close(out, want, rtol=tolerance, atol=tolerance)
    assert (padded[0] == 7).all() and (padded[-1] == 7).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [2, 3, 5, blas.DOTS_ROWS, blas.DOTS_ROWS + 1])
@pytest.mark.parametrize("columns", [1, 4, 7, 9])
def test_blas_matmul_dot_products(rng, dtype, rows, columns):
    """From 2 to ``DOTS_ROWS`` rows of at least ``DOTS_INNER``, ``blas.matmul`` with
    ``transpose_b`` is :func:`blas._rows_dots` (its results, bit for bit), which gives
    ``a @ b.T`` for odd rows and columns not a multiple of four; above, BLAS's."""
    inner = blas.DOTS_INNER + 3
    a = rng.standard_normal((rows, inner)).astype(dtype)
    b = rng.standard_normal((columns, inner)).astype(dtype)
    padded = np.full((rows + 2, columns), 7.0, dtype=dtype)
    out, dots = padded[1:-1], np.empty((rows, columns), dtype=dtype)
    blas.matmul(a, b, True, out)
    blas._rows_dots(a, b, dots)
    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    assert_close(out, a @ b.T, rtol=tolerance, atol=tolerance)
    assert_close(dots, a @ b.T, rtol=tolerance, atol=tolerance)
    assert (padded[0] == 7).all() and (padded[-1] == 7).all()
    if rows <= blas.DOTS_ROWS:
        np.testing.assert_array_equal(out, dots)
    short = np.empty((rows, columns), dtype=dtype)  # fewer columns of a: BLAS's
    blas.matmul(a[:, :blas.DOTS_INNER - 1].copy(), b[:, :blas.DOTS_INNER - 1].copy(), True,
                short)
    assert_close(short, a[:, :blas.DOTS_INNER - 1] @ b[:, :blas.DOTS_INNER - 1].T,
                 rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [2, 3, blas.AXPY_ROWS, blas.AXPY_ROWS + 1])
@pytest.mark.parametrize("inner", [1, 4, 9, 258])
def test_blas_matmul_row_sums(rng, dtype, rows, inner):
    """From 2 to ``AXPY_ROWS`` rows, ``blas.matmul`` without ``transpose_b`` is
    :func:`blas._rows_axpy` (its results, bit for bit), which gives ``a @ b`` for an odd
    row and inner sizes not a multiple of four; above, BLAS's."""
    a = rng.standard_normal((rows, inner)).astype(dtype)
    b = rng.standard_normal((inner, 11)).astype(dtype)
    padded = np.full((rows + 2, 11), 7.0, dtype=dtype)
    out, sums = padded[1:-1], np.empty((rows, 11), dtype=dtype)
    blas.matmul(a, b, False, out)
    blas._rows_axpy(a, b, sums)
    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    assert_close(out, a @ b, rtol=tolerance, atol=tolerance)
    assert_close(sums, a @ b, rtol=tolerance, atol=tolerance)
    assert (padded[0] == 7).all() and (padded[-1] == 7).all()
    if rows <= blas.AXPY_ROWS:
        np.testing.assert_array_equal(out, sums)


@pytest.mark.parametrize("case", range(len(CASES)), ids=[c[0] + str(c[1] or "") for c in CASES])
def test_threaded_layers_with_dot_products_match_generic_path(rng, threaded, case):
    """Three rows of ``DOTS_INNER`` units: each direction's products are dot products
    (:func:`blas._rows_dots`); outputs, final states and every gradient, padded steps
    too."""
    kind, options = CASES[case]
    compare_kernel_with_generic(
        lambda: getattr(xrnn, kind)(I, blas.DOTS_INNER, bidirectional=True, dtype="float64",
                                    seed=3, **options),
        rng.standard_normal((T, 3, I)), kernels=True,
        counter=(numba_layer, "threaded_layers_run"), num_layers=1, lengths=[2, T, 4])


def test_two_threads_of_ours_end_openblas_workers_only_when_no_other_thread_runs(monkeypatch):
    """``cores_for_two_threads`` ends OpenBLAS's workers (which spin for ~0.1 s after a
    threaded product) when BLAS went to one thread and no Python thread but the main
    one and the direction pool's is alive, and again after restoring BLAS's thread
    count (which starts one); never while another thread could be calling BLAS."""
    stopped = []
    monkeypatch.setattr(blas, "stop_workers", lambda: stopped.append(True))
    pool = threading.Thread(name=f"{numba_threaded._POOL_NAME}_0")  # (never started)
    other = threading.Thread(name="a user's")
    for alive in ([threading.main_thread(), pool], [threading.main_thread(), pool, other]):
        # (the threads alive, as earlier tests of the session may have left some)
        monkeypatch.setattr(threading, "enumerate", lambda alive=alive: alive)
        with numba_threaded.cores_for_two_threads() as single:
            pass
        assert stopped == ([True, True] if single else [])


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_one_blas_thread_writes_openblas_count_and_starts_no_worker(monkeypatch):
    """On the main thread ``one_blas_thread`` writes NumPy's OpenBLAS thread count itself
    (its workers ended, setting the count through OpenBLAS's API started one at each end
    of the block, 0.23 ms a layer call): one thread inside, the count before restored
    after, no thread started either way; a threaded product afterwards starts OpenBLAS's
    workers again and is right."""
    if blas._thread_count is None:
        pytest.skip("NumPy's OpenBLAS does not export blas_cpu_number")
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("the count is written from the main thread only")
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("counting the process's threads needs Linux's /proc")
    monkeypatch.setattr(threading, "enumerate", lambda: [threading.main_thread()])
    count = blas._thread_count.value
    numpys = [library for library in numba_layer._blas_libraries()
              if "scipy_openblas64" in os.path.basename(library.filepath)]
    blas.stop_workers()
    before = _os_threads()
    for block in (numba_layer.one_blas_thread, numba_threaded.cores_for_two_threads):
        with block() as single:
            assert single and blas._thread_count.value == 1
            assert all(library.get_num_threads() == 1 for library in numpys)  # threadpoolctl
            assert _os_threads() == before
        assert blas._thread_count.value == count and _os_threads() == before
    a = np.random.default_rng(0).standard_normal((512, 512))
    product = a @ a
    assert _os_threads() == before + (count - 1)  # (OpenBLAS's workers, back)
    with numba_layer.one_blas_thread():
        assert_close(a @ a, product, rtol=1e-12, atol=1e-12)


def test_one_blas_thread_without_openblas_count_sets_every_library(monkeypatch):
    """Where OpenBLAS's count is not known (another NumPy build), ``blas.one_thread``
    changes nothing and yields False, and ``one_blas_thread`` sets every BLAS library
    through threadpoolctl, yields whether they all took it and restores their counts
    after. (Whether they take it depends on the process: in the CI suite, after the Dask
    tests, OpenBLAS left its count at 2 when asked for 1 on the main thread.)"""
    monkeypatch.setattr(blas, "_thread_count", None)
    with blas.one_thread() as single:
        assert not single
    libraries = numba_layer._blas_libraries()
    counts = [library.get_num_threads() for library in libraries]
    with numba_layer.one_blas_thread() as single:
        assert single == all(library.get_num_threads() == 1 for library in libraries)
    assert [library.get_num_threads() for library in libraries] == counts


def test_no_openblas_worker_spins_after_a_layer_on_two_threads(rng, threaded, monkeypatch):
    """After a layer on two threads, no OpenBLAS worker is left spinning (restoring
    BLAS's thread count used to start one, which took a core for about 0.1 s): the
    process uses next to no CPU time while the caller sleeps. (Threads that earlier
    tests left alive, idle, are hidden: with another Python thread alive the workers are
    rightly left alone.)"""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("BLAS's thread count is set from the main thread only")
    monkeypatch.setattr(threading, "enumerate", lambda: [threading.main_thread()])
    layer = xrnn.LSTM(I, H, bidirectional=True, seed=3)
    x = rng.standard_normal((T, 4, I)).astype(np.float32)
    before = numba_layer.threaded_layers_run
    with xrnn.no_grad():
        layer(x)
    cpu = time.process_time()
    time.sleep(0.2)
    assert numba_layer.threaded_layers_run == before + 1
    assert time.process_time() - cpu < 0.03


def test_products_after_openblas_workers_ended_are_right(rng):
    """After :func:`blas.stop_workers`, NumPy's threaded products start the workers again
    and agree with a product made before; ``blas.matmul`` too."""
    a = rng.standard_normal((300, 400))
    b = rng.standard_normal((400, 500))
    before = a @ b
    with numba_layer.one_blas_thread():
        blas.stop_workers()
        single = np.empty((300, 500))
        blas.matmul(a, b, False, single)
    np.testing.assert_array_equal(a @ b, before)
    blas.stop_workers()  # (also safe with BLAS on its threads, none of them busy)
    np.testing.assert_array_equal(a @ b, before)
    assert_close(single, before, rtol=1e-12, atol=1e-12)


def test_blas_matmul_refuses_mismatched_shapes():
    a, b = np.ones((2, 3)), np.ones((4, 3))
    with pytest.raises(ValueError, match="shapes of a, b and out do not match"):
        blas.matmul(a, b, False, np.empty((2, 4)))  # b is (N, K): needs transpose_b
    with pytest.raises(ValueError, match="shapes of a, b and out do not match"):
        blas.matmul(a, b, True, np.empty((2, 5)))


def test_a_failing_direction_raises_after_both_finished():
    """An exception in either direction reaches the caller, and only once the other
    direction's work (which writes into the layer's buffers) has finished."""
    finished = []

    def task(direction):
        if direction == 0:
            raise ValueError("direction 0 failed")
        time.sleep(0.05)
        finished.append(direction)

    with pytest.raises(ValueError, match="direction 0 failed"):
        numba_threaded._on_two_threads(task)
    assert finished == [1]

    def other(direction):
        if direction == 1:
            raise KeyError("direction 1 failed")
        return direction

    with pytest.raises(KeyError, match="direction 1 failed"):
        numba_threaded._on_two_threads(other)
    assert numba_threaded._on_two_threads(lambda d: d * 10) == [0, 10]


_apart_needs = pytest.mark.skipif(
    numba_threaded._this_core is None or len(os.sched_getaffinity(0)) < 2,
    reason="holding threads on cores needs Linux's per-thread affinity and two usable cores")


@_apart_needs
def test_directions_apart_run_on_two_cores_then_get_their_cores_back():
    """Held apart, the caller's task runs on the core it started on and the pool
    thread's on another, whatever the scheduler would do; afterwards both threads may
    use every core the caller could before, also when a task raised."""
    cores = os.sched_getaffinity(0)
    seen = {}

    def task(direction):
        seen[direction] = (numba_threaded._this_core(), os.sched_getaffinity(0),
                           threading.get_native_id())
        time.sleep(0.02)

    for _ in range(5):
        numba_threaded._on_two_threads(task, apart=True)
        (core0, allowed0, _), (core1, allowed1, pool) = seen[0], seen[1]
        assert allowed0 == {core0} and core1 != core0 and allowed1 == cores - {core0}
        assert os.sched_getaffinity(0) == cores and os.sched_getaffinity(pool) == cores

    def failing(direction):
        if direction == 0:
            raise ValueError("direction 0 failed")
        seen[1] = os.sched_getaffinity(0)

    with pytest.raises(ValueError, match="direction 0 failed"):
        numba_threaded._on_two_threads(failing, apart=True)
    assert os.sched_getaffinity(0) == cores and os.sched_getaffinity(pool) == cores
    # not apart (the split layer's halves, which wait for each other): nothing held
    numba_threaded._on_two_threads(task)
    assert seen[0][1] == cores and seen[1][1] == cores


@_apart_needs
def test_a_caller_held_to_one_core_holds_nothing():
    """A caller that may use one core only leaves both threads' cores as they are."""
    cores = os.sched_getaffinity(0)
    one = {min(cores)}
    seen = {}
    os.sched_setaffinity(0, one)
    try:
        numba_threaded._on_two_threads(
            lambda d: seen.setdefault(d, os.sched_getaffinity(0)), apart=True)
        assert seen[0] == one and os.sched_getaffinity(0) == one
    finally:
        os.sched_setaffinity(0, cores)


def test_directions_apart_where_affinity_is_missing(monkeypatch):
    """Without per-thread affinity (not Linux) the tasks run as before."""
    monkeypatch.setattr(numba_threaded, "_this_core", None)
    assert numba_threaded._on_two_threads(lambda d: d + 1, apart=True) == [1, 2]


def _forked_forward(queue):
    """In a forked child: one threaded bidirectional forward (the parent's pool thread
    does not exist here)."""
    with xrnn.backend.use_backend("numpy"), xrnn.no_grad():
        model = xrnn.LSTM(I, H, bidirectional=True, dtype="float64", seed=0)
        output, _ = model(np.ones((T, 5, I)))
    queue.put(np.asarray(output).sum())


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork on this platform")
def test_a_forked_child_gets_a_pool_of_its_own(threaded):
    """After the parent has used the pool, a child forked from it (multiprocessing's
    fork start method, Dask's process pools) runs a threaded layer to the end, with the
    parent's result, instead of waiting for a thread that was not forked."""
    import multiprocessing

    with xrnn.backend.use_backend("numpy"), xrnn.no_grad():
        model = xrnn.LSTM(I, H, bidirectional=True, dtype="float64", seed=0)
        before = numba_layer.threaded_layers_run
        want = np.asarray(model(np.ones((T, 5, I)))[0]).sum()
        assert numba_layer.threaded_layers_run == before + 1  # the pool is in use
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_forked_forward, args=(queue,))
    child.start()
    child.join(timeout=120)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child's threaded forward did not finish")
    assert child.exitcode == 0
    assert queue.get(timeout=5) == pytest.approx(want, rel=1e-12)


def test_threads_at_once_share_the_direction_pool():
    """Several threads handing their second halves to the one pool thread at once each get
    their own results back."""
    def caller(k, got):
        def task(direction):
            time.sleep(0.01)
            return (k, direction)
        for _ in range(5):
            got.append(numba_threaded._on_two_threads(task))

    results = [[] for _ in range(4)]
    threads = [threading.Thread(target=caller, args=(k, results[k])) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [[[(k, 0), (k, 1)]] * 5 for k in range(4)]


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_from_other_threads_directions_run_one_after_the_other(rng, threaded, monkeypatch,
                                                               kind):
    """Off the main thread NumPy's OpenBLAS ignores the one-thread setting: the layer runs
    its directions one after the other on the calling thread (no pool thread), with the
    generic path's results; from the main thread, on two threads."""
    calls = []
    real = numba_threaded._on_two_threads
    monkeypatch.setattr(numba_threaded, "_on_two_threads",
                        lambda task, parallel=True, apart=False:
                        calls.append(parallel) or real(task, parallel, apart))
    x = rng.standard_normal((T, 3, I))
    with xrnn.backend.use_backend("numpy"):
        model = getattr(xrnn, kind)(I, H, 1, bidirectional=True, dtype="float64", seed=2)

        def train():
            model.zero_grad()
            output, _ = model(x)
            return [output, model.backward(np.ones_like(output))] + [
                p.grad.copy() for p in model.parameters()]

        with _kernels.kernels_enabled(False):
            generic = train()
        main = train()
        assert calls == [True, True]
        other = []
        thread = threading.Thread(target=lambda: other.append(train()))
        thread.start()
        thread.join()
    # NumPy's scipy-openblas64 ignores the thread setting off the main thread (what the
    # module docstring says); a BLAS that took it would run both calls in parallel
    assert calls[2:] == [False, False], calls
    for results in (main, other[0]):
        for got, want in zip(results, generic):
            assert_close(got, want, rtol=1e-12, atol=1e-12)


@_apart_needs
def test_held_until_started_lets_both_go_when_the_pool_task_starts():
    """With ``until_started`` the pool thread's task starts on a core other than the
    caller's (it was held there: a preemption in the microseconds between its release
    and the task's first line could move it, hence 4 of 5) and with every core allowed
    again, the caller's too; also when the caller's task raises."""
    cores = os.sched_getaffinity(0)
    apart = 0
    for _ in range(5):
        started, seen = threading.Event(), {}

        def task(half):
            if half == 1:
                seen[1] = (numba_threaded._this_core(), os.sched_getaffinity(0))
                started.set()
                return
            seen[0] = numba_threaded._this_core()
            assert started.wait(10)
            seen["caller after"] = os.sched_getaffinity(0)

        numba_threaded._on_two_threads(task, apart=True, until_started=True)
        apart += seen[1][0] != seen[0]
        assert seen[1][1] == cores
        assert seen["caller after"] == cores and os.sched_getaffinity(0) == cores
    assert apart >= 4

    def failing(half):
        if half == 0:
            raise ValueError("half 0 failed")

    with pytest.raises(ValueError, match="half 0 failed"):
        numba_threaded._on_two_threads(failing, apart=True, until_started=True)
    assert os.sched_getaffinity(0) == cores
    assert os.sched_getaffinity(numba_threaded._pool_thread) == cores
