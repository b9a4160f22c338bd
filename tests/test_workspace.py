"""The CPU kernels' reusable scratch buffers (``xrnn._kernels.workspace``): a layer's
buffers never leak into what the caller holds, threads never share them, and the size
cap and ``release`` do what they say. Reference: the same model's results computed
alone, sequentially."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import xrnn
from tests.conftest import numpy_leg_only
from xrnn import backend
from xrnn import _kernels
from xrnn._kernels import numpy_layer, workspace

pytestmark = numpy_leg_only

#: (hidden, batch): a layer small enough for the compiled whole loop, and one above its
#: limit (fused compiled steps with BLAS products), when Numba is installed.
SIZES = [(16, 2), (128, 8)]


def _model(kind, hidden, seed):
    return getattr(xrnn, kind)(6, hidden, 2, bidirectional=True, seed=seed)


def _run(model, x):
    with xrnn.no_grad():
        out, finals = model(xrnn.asarray(x))
    finals = finals if isinstance(finals, tuple) else (finals,)
    return [np.asarray(a) for a in (out, *finals)]


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("hidden,batch", SIZES)
def test_results_survive_the_next_call(rng, kind, hidden, batch):
    """Without a tape the states by step live in the workspace; the output and final
    states handed back are the caller's own and the next call does not change them."""
    with backend.use_backend("numpy"):
        model = _model(kind, hidden, 0)
        x1, x2 = (rng.standard_normal((7, batch, 6)).astype("float32") for _ in range(2))
        first = _run(model, x1)
        kept = [a.copy() for a in first]
        second = _run(model, x2)
        for a, b in zip(first, kept):
            np.testing.assert_array_equal(a, b)
        assert not any(np.array_equal(a, b) for a, b in zip(first, second))
        np.testing.assert_array_equal(_run(model, x1)[0], kept[0])


#: (path, (hidden, batch), bidirectional): the paths as chosen for both sizes, the split
#: (one direction, above the whole loop's limit), the NumPy kernel.
STACK_CASES = ([("default", size, d) for size in SIZES for d in (False, True)]
               + [("split", SIZES[1], False)]
               + [("numpy", size, d) for size in SIZES for d in (False, True)])


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("path, size, bidirectional", STACK_CASES)
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_what_passes_between_layers_never_reaches_the_caller(monkeypatch, rng, kind, path,
                                                              size, bidirectional, training,
                                                              padded):
    """In a stack of three layers the outputs of the lower two, and the gradients of the
    upper two's inputs, live in reusable buffers (layers 0 and 2 share one name): the
    output, final states and input gradient handed back are the caller's own, the next
    call on other input leaves them as they were and gets what it gets alone. Every CPU
    path: the compiled ones as chosen (whole loop, fused steps, a direction per core),
    one-direction layers split between two cores, the NumPy kernel. The input projection
    a step at a time, so that a layer writing its output where its input is would
    overwrite steps it has yet to read. With and without lengths (``padded``)."""
    monkeypatch.setattr(numpy_layer, "_CHUNK_ELEMENTS", 1)
    hidden, batch = size
    if path == "split":
        numba_split = pytest.importorskip(
            "xrnn._kernels.numba_split", reason="numba not installed (pip install xrnn[fast])")
        monkeypatch.setattr(numba_split, "MIN_WORK", 1)
        from xrnn._kernels import numba_layer
        split_before = numba_layer.split_layers_run

    lengths = np.arange(batch) % 7 + 1 if padded else None

    def step(model, x):
        model.zero_grad()
        out, finals = model(xrnn.asarray(x), lengths=lengths)
        finals = finals if isinstance(finals, tuple) else (finals,)
        grad_x = model.backward(xrnn.asarray(np.cos(np.arange(out.size)).reshape(out.shape)
                                             .astype("float32")))
        return [out, *finals, grad_x] + [p.grad for p in model.parameters()]

    def run(model, x):
        if training:
            return step(model, x)
        with xrnn.no_grad():
            out, finals = model(xrnn.asarray(x), lengths=lengths)
        return [out, *(finals if isinstance(finals, tuple) else (finals,))]

    with backend.use_backend("numpy"), _kernels.kernels_enabled(
            "numpy" if path == "numpy" else True):
        def build():
            return getattr(xrnn, kind)(6, hidden, 3, bidirectional=bidirectional, seed=0)

        x1, x2 = (rng.standard_normal((7, batch, 6)).astype("float32") for _ in range(2))
        alone = [np.array(a) for a in run(build(), x2)]
        model = build()
        first = run(model, x1)
        kept = [np.array(a) for a in first]
        second = run(model, x2)
        for a, b in zip(first, kept):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(second, alone):
            np.testing.assert_array_equal(a, b)
    if path == "split":
        assert numba_layer.split_layers_run - split_before == 9  # three calls of 3 layers


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_threads_running_at_once_get_their_own_buffers(rng, kind):
    """Two threads run different models, of the same buffer names and dtype, at the same
    time, over and over: each gets exactly what it gets alone."""
    with backend.use_backend("numpy"):
        jobs = []
        for seed, (hidden, batch) in enumerate(SIZES):
            model = _model(kind, hidden, seed)
            x = rng.standard_normal((20, batch, 6)).astype("float32")
            # alone in a thread of its own too: from the main thread, bidirectional layers
            # run with BLAS on one thread (numba_threaded), which may round differently
            alone = []
            thread = threading.Thread(target=lambda: alone.append(_run(model, x)))
            thread.start()
            thread.join()
            jobs.append((model, x, alone[0]))
        failures = []
        barrier = threading.Barrier(len(jobs))

        def work(model, x, alone):
            barrier.wait()
            for _ in range(15):
                got = _run(model, x)
                if not all(np.array_equal(a, b) for a, b in zip(got, alone)):
                    failures.append(model)

        threads = [threading.Thread(target=work, args=job) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []


def test_scratch_reuses_grows_caps_and_releases(monkeypatch):
    workspace.release()
    a = workspace.scratch("t", (3, 4), np.float32)
    b = workspace.scratch("t", (2, 5), np.float32)
    assert a.shape == (3, 4) and b.shape == (2, 5) and a.flags.c_contiguous
    assert np.shares_memory(a, b)  # one buffer, reused
    assert not np.shares_memory(a, workspace.scratch("t", (3, 4), np.float64))
    assert not np.shares_memory(a, workspace.scratch("u", (3, 4), np.float32))
    grown = workspace.scratch("t", (10, 10), np.float32)
    assert not np.shares_memory(a, grown)  # too small: replaced by a larger one
    assert np.shares_memory(grown, workspace.scratch("t", (3, 4), np.float32))
    held = workspace.held_bytes()
    assert held == 100 * 4 + 12 * 8 + 12 * 4
    monkeypatch.setattr(workspace, "MAX_BYTES", 100)
    big = workspace.scratch("t", (30,), np.float32)  # 120 bytes: a fresh array, not kept
    assert not np.shares_memory(big, grown) and workspace.held_bytes() == held
    workspace.release()
    assert workspace.held_bytes() == 0


def test_buffers_belong_to_the_thread_that_made_them():
    workspace.release()
    seen = []
    thread = threading.Thread(target=lambda: (workspace.scratch("t", (8,), np.float32),
                                              seen.append(workspace.held_bytes())))
    thread.start()
    thread.join()
    assert seen == [32] and workspace.held_bytes() == 0


# tapes: the arrays a backward reads, handed on to the next forward --------------------------

def _train_step(model, x):
    """One forward and backward; the input's gradient and the parameters' (copies)."""
    model.zero_grad()
    out, _ = model(xrnn.asarray(x))
    grad_x = model.backward(xrnn.asarray(np.ones(out.shape, dtype="float32")))
    return [np.array(grad_x)] + [np.array(p.grad) for p in model.parameters()]


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_training_steps_reuse_the_tape_and_get_exact_gradients(rng, kind):
    """A backward gives its tape's arrays to the next forward (the workspace then holds
    them); the next step's gradients are exactly those of that step run alone."""
    hidden, batch = SIZES[1]
    with backend.use_backend("numpy"):
        x1, x2 = (rng.standard_normal((7, batch, 6)).astype("float32") for _ in range(2))
        workspace.release()
        alone = _train_step(_model(kind, hidden, 0), x2)
        workspace.release()
        model = _model(kind, hidden, 0)
        _train_step(model, x1)
        assert workspace.held_bytes() > 0  # the first step's tape, kept
        for got, want in zip(_train_step(model, x2), alone):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_unconsumed_calls_keep_their_tapes_while_others_are_reused(rng, kind):
    """Calls 1 and 2, backward of 2 (its tape handed on), call 3 (takes it), backward of
    3, then of 1: each backward gives what it gives alone (Module's last-call-first)."""
    hidden, batch = SIZES[1]
    with backend.use_backend("numpy"):
        xs = [rng.standard_normal((7, batch, 6)).astype("float32") for _ in range(3)]
        alone = [_train_step(_model(kind, hidden, 0), x)[0] for x in xs]
        model = _model(kind, hidden, 0)
        grad = np.ones((7, batch, 2 * hidden), dtype="float32")

        def forward(x):
            model(xrnn.asarray(x))

        def backward():
            return np.array(model.backward(xrnn.asarray(grad)))

        forward(xs[0])
        forward(xs[1])
        got = {1: backward()}
        forward(xs[2])
        got[2] = backward()
        got[0] = backward()
        for k in range(3):
            np.testing.assert_array_equal(got[k], alone[k])


def test_functional_vjp_runs_until_released(rng):
    hidden, batch = SIZES[1]
    with backend.use_backend("numpy"):
        model = _model("LSTM", hidden, 0)
        x = rng.standard_normal((7, batch, 6)).astype("float32")
        weights = [p.data for p in model.parameters()]
        (out, _), vjp = xrnn.functional.lstm_vjp(x, None, weights, num_layers=2,
                                                 bidirectional=True)
        grad = np.ones(out.shape, dtype="float32")
        first, second = vjp(grad)[0], vjp(grad)[0]
        np.testing.assert_array_equal(first, second)
        vjp.release()
        with pytest.raises(RuntimeError, match="run the forward again"):
            vjp(grad)


def test_tape_arrays_are_kept_up_to_the_cap(monkeypatch):
    workspace.release()
    big = (workspace.MIN_TAPE_BYTES // 4,)  # float32: exactly the smallest kept size
    a = workspace.tape(big, np.float32)
    small = workspace.tape((3,), np.float32)
    workspace.give_back([a, small])
    assert workspace.held_bytes() == a.nbytes  # the small one is not kept
    assert workspace.tape(big, np.float32) is a and workspace.held_bytes() == 0
    assert workspace.tape(big, np.float32) is not a  # handed out once
    monkeypatch.setattr(workspace, "MAX_TAPE_BYTES", a.nbytes)
    workspace.give_back([a, np.empty(big, np.float32)])
    assert workspace.held_bytes() == a.nbytes  # the second is over the cap: freed
    assert workspace.tape(big, np.float64) is not a  # another dtype
    workspace.release()
    assert workspace.held_bytes() == 0


def test_the_caps_are_shares_of_the_memory_with_floors(monkeypatch):
    """Tapes up to an eighth of the memory (at least 1 GiB), a scratch buffer up to a
    64th (at least 64 MiB); 0 where the OS does not say how much there is."""
    memory = workspace._physical_memory()
    assert memory >= 0
    assert workspace.MAX_TAPE_BYTES == max(1 << 30, memory // 8)
    assert workspace.MAX_BYTES == max(64 << 20, memory // 64)
    monkeypatch.setattr(workspace.os, "sysconf", lambda name: 1 << 20)  # 1 TiB of memory
    assert workspace._physical_memory() == 1 << 40
    monkeypatch.setattr(workspace.os, "sysconf", lambda name: (_ for _ in ()).throw(
        ValueError(name)))  # an OS that does not say
    assert workspace._physical_memory() == 0


def test_tape_arrays_of_new_shapes_take_the_place_of_the_oldest(monkeypatch):
    """At the cap, arrays of the shapes given back longest ago make room for new ones
    (a smaller model trained after a larger one reuses its own tape); arrays of a shape
    given back in the same call are not freed for each other, and what does not fit is
    freed."""
    workspace.release()
    size = workspace.MIN_TAPE_BYTES // 4
    one, two, three = [(shape, np.float32) for shape in ((size,), (size // 2, 2), (2, size // 2))]
    monkeypatch.setattr(workspace, "MAX_TAPE_BYTES", 3 * size * 4)  # three arrays
    a = workspace.tape(*one)
    workspace.give_back([a])
    b = [workspace.tape(*two) for _ in range(2)]
    workspace.give_back(b)
    assert workspace.held_bytes() == 3 * a.nbytes  # full
    c = workspace.tape(*three)
    workspace.give_back([c])  # the oldest shape's array makes room
    assert workspace.tape(*one) is not a
    assert workspace.tape(*three) is c
    workspace.give_back([c])
    d = [np.empty(*three) for _ in range(2)]
    workspace.give_back(d)  # shape two's arrays go, not c
    kept = [workspace.tape(*three) for _ in range(3)]
    assert {id(x) for x in kept} == {id(x) for x in [c, *d]}
    assert workspace.tape(*two) is not b[0] and workspace.held_bytes() == 0
    workspace.give_back([np.empty(*one) for _ in range(4)])
    assert workspace.held_bytes() == 3 * a.nbytes  # the fourth is freed
    workspace.release()


# alignment: compiled loops read large arrays by 32-byte vectors ---------------------------

def _misaligned(a, offset=16):
    """A copy of ``a`` whose data start ``offset`` bytes past a cache line."""
    raw = np.empty(a.nbytes + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64 + offset
    copy = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    copy[...] = a
    return copy


@pytest.mark.parametrize("dtype", ["float32", "float64", "bool", "int64"])
def test_large_arrays_start_on_a_cache_line(dtype):
    workspace.release()
    shape = (3, workspace.MIN_ALIGNED_BYTES // 3 + 5)
    made = [workspace.empty(shape, dtype), workspace.scratch("t", shape, dtype),
            workspace.tape(shape, dtype)]
    for a in made:
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
        assert a.ctypes.data % workspace.ALIGNMENT == 0 and workspace.aligned(a)
    assert not workspace.aligned(_misaligned(made[0]))
    assert not workspace.aligned(made[0][:, :-1])  # not contiguous
    workspace.release()


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("steps", [numpy_layer.ALIGN_STEPS - 1, numpy_layer.ALIGN_STEPS])
def test_a_misaligned_w_hh_gives_the_same_results(monkeypatch, rng, kind, steps):
    """From ALIGN_STEPS steps on, a one-direction layer reads an aligned copy of a
    ``W_hh`` that is not (a tape array in training, so that the next layer's copy does
    not take its place before its backward); results, bit for bit, are those of the
    aligned parameters, in a two-layer stack, forward and training."""
    seen = []
    init = numpy_layer._Layer.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        seen.append(workspace.aligned(self.w_hh_stack[0]))

    with backend.use_backend("numpy"):
        x = rng.standard_normal((steps, 2, 6)).astype("float32")
        models = [getattr(xrnn, kind)(6, 128, 2, seed=0) for _ in range(2)]
        for name, p in models[1].named_parameters():
            if name.startswith("weight_hh"):
                p.data = _misaligned(np.asarray(p.data))
                assert not workspace.aligned(p.data)
        monkeypatch.setattr(numpy_layer._Layer, "__init__", spy)
        want, got = (_run(m, x) + _train_step(m, x) for m in models)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    aligned = steps >= numpy_layer.ALIGN_STEPS
    assert seen[4:] == [aligned] * 4  # the misaligned model's layers, eval and training
