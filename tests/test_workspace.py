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
from xrnn._kernels import workspace

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


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_threads_running_at_once_get_their_own_buffers(rng, kind):
    """Two threads run different models, of the same buffer names and dtype, at the same
    time, over and over: each gets exactly what it gets alone."""
    with backend.use_backend("numpy"):
        jobs = []
        for seed, (hidden, batch) in enumerate(SIZES):
            model = _model(kind, hidden, seed)
            x = rng.standard_normal((20, batch, 6)).astype("float32")
            jobs.append((model, x, _run(model, x)))
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
