"""xrnn.dask: sharded inference and data-parallel training (issue 15).

The driver's model lives on the leg's backend (the ``xp`` fixture); the workers compute
on their own backend (Dask threads: the driver's selection; LocalCluster processes:
their ``XRNN_BACKEND``, which ``ci/run_tests.py`` sets to the leg's for each leg) and
exchange NumPy arrays with the driver. References are the same model run whole in
this process: ``model(x)`` for ``predict``, one forward + backward + optimizer step on
the whole batch for ``DataParallel``, compared in float64 to 1e-12.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xrnn
from xrnn.testing import assert_close

from .conftest import assert_every_gradient

da = pytest.importorskip("dask.array", reason="xrnn.dask needs the dask extra (dask[array])")
distributed = pytest.importorskip("distributed", reason="xrnn.dask needs the dask extra "
                                                        "(distributed)")
import dask  # noqa: E402

import xrnn.dask as xdask  # noqa: E402

EXACT = dict(rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module")
def _cluster_client():
    """Two worker processes of one thread each, for the whole module."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture
def client(_cluster_client):
    """The module's client, once both its workers are connected (a worker that a test
    ended, as the killed-worker test does, may still be coming back). (A CI run that
    once saw one worker of two was DataParallel's count racing with distributed's cache,
    not a missing worker: see test_shard_count_is_the_workers_even_with_a_stale_...)"""
    _cluster_client.wait_for_workers(2, timeout=60)
    return _cluster_client


def tagger(seed: int = 0, dropout: float = 0.0) -> xrnn.Sequential:
    """(T, B, 3) -> (T, B, 2), float64, with inter-layer dropout when asked."""
    return xrnn.Sequential(xrnn.LSTM(3, 5, num_layers=2, dropout=dropout, dtype="float64",
                                     seed=seed),
                           xrnn.Dropout(dropout), xrnn.Linear(5, 2, dtype="float64",
                                                              seed=seed + 1))


def classifier(seed: int = 0) -> xrnn.Sequential:
    """(B, T, 3) -> (B, 4) logits, batch first."""
    return xrnn.Sequential(xrnn.GRU(3, 6, batch_first=True, bidirectional=True,
                                    dtype="float64", seed=seed),
                           xrnn.LastStep(), xrnn.Linear(12, 4, dtype="float64", seed=seed + 1))


def data(rng, steps=6, batch=10, classes=None, batch_first=False):
    shape = (batch, steps, 3) if batch_first else (steps, batch, 3)
    x = rng.standard_normal(shape)
    y = (rng.integers(0, classes, batch) if classes else
         rng.standard_normal((steps, batch, 2)))
    return x, y, rng.integers(1, steps + 1, batch)


def single_process_step(model, loss_fn, optimizer, x, y, lengths):
    """The reference: one step on the whole batch in this process."""
    optimizer.zero_grad()
    loss = loss_fn(model(xrnn.asarray(x), lengths=lengths), xrnn.asarray(y))
    model.backward(loss_fn.backward())
    grads = {name: p.grad for name, p in model.named_parameters()}
    optimizer.step()
    return float(xrnn.to_numpy(loss)), grads


# -- the optional extra ----------------------------------------------------------------

def test_import_xrnn_never_imports_dask():
    code = "import sys, xrnn; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
           "('dask', 'distributed')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_without_dask_says_what_to_install():
    code = ("import sys; sys.modules['dask'] = None; sys.modules['dask.array'] = None\n"
            "try:\n    import xrnn.dask\nexcept ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "pip install 'xrnn[dask]'" in out


# -- sharded inference ---------------------------------------------------------------

def test_predict_equals_model_and_keeps_batch_chunks(xp, rng):
    model = tagger()
    x, _, lengths = data(rng, batch=9)
    dx = da.from_array(x, chunks=(2, 4, 3))            # time split too: rechunked whole
    result = xdask.predict(model, dx, lengths=da.from_array(lengths, chunks=3))
    assert isinstance(result, da.Array) and result.chunks == ((6,), (4, 4, 1), (2,))
    with xrnn.no_grad():
        expected = model(xrnn.asarray(x), lengths=lengths)
    assert_close(result.compute(), xrnn.to_numpy(expected), **EXACT)
    assert model.unconsumed_calls() == {}


def test_predict_tuple_output_batch_first(xp, rng):
    lstm = xrnn.LSTM(3, 4, num_layers=2, batch_first=True, dtype="float64", seed=0)
    x, lengths = rng.standard_normal((7, 5, 3)), rng.integers(1, 6, 7)
    output, (h_n, c_n) = xdask.predict(lstm, da.from_array(x, chunks=(3, 5, 3)),
                                       lengths=lengths)
    assert output.chunks[0] == (3, 3, 1) and h_n.chunks[1] == (3, 3, 1) == c_n.chunks[1]
    with xrnn.no_grad():
        expected_out, (expected_h, expected_c) = lstm(xrnn.asarray(x), lengths=lengths)
    computed = dask.compute(output, h_n, c_n)
    for got, want in zip(computed, (expected_out, expected_h, expected_c)):
        assert_close(got, xrnn.to_numpy(want), **EXACT)


def test_predict_weights_enter_graph_once(rng):
    model = tagger()
    result = xdask.predict(model, da.from_array(rng.standard_normal((4, 12, 3)),
                                                chunks=(4, 2, 3)))
    keys = [key for key in dict(result.__dask_graph__())
            if "xrnn-weights" in str(key)]
    assert result.numblocks[1] == 6 and len(keys) == 1


def test_predict_on_local_cluster(xp, rng, client):
    model = classifier()
    x, _, lengths = data(rng, batch=8, batch_first=True)
    result = xdask.predict(model, da.from_array(x, chunks=(3, 6, 3)), lengths=lengths)
    with xrnn.no_grad():
        expected = model(xrnn.asarray(x), lengths=lengths)
    assert_close(client.compute(result).result(), xrnn.to_numpy(expected), **EXACT)
    with distributed.Client(client.scheduler.address) as by_address:  # any scheduler address
        assert_close(by_address.compute(result).result(), xrnn.to_numpy(expected), **EXACT)


# -- data-parallel training --------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_step_equals_single_process_on_cluster(xp, rng, client, reduction):
    x, y, lengths = data(rng, batch=9)                  # 9 over 2 workers: shards 5 and 4
    reference, model = tagger(), tagger()
    ref_opt = xrnn.optim.Adam(reference.parameters(), lr=0.01)
    expected_loss, expected_grads = single_process_step(
        reference, xrnn.MSELoss(reduction), ref_opt, x, y, lengths)
    parallel = xdask.DataParallel(model, xrnn.MSELoss(reduction),
                                  xrnn.optim.Adam(model.parameters(), lr=0.01), client=client)
    assert parallel.shard_count() == 2
    loss = parallel.step(da.from_array(x, chunks=(6, 3, 3)), y, lengths=lengths)
    assert abs(loss - expected_loss) <= 1e-12 * max(1.0, abs(expected_loss))
    assert_every_gradient(model, expected_grads, EXACT)
    for (name, got), want in zip(model.state_dict().items(), reference.state_dict().values()):
        assert xrnn.backend.backend_of(got) == xrnn.get_backend(), name
        assert_close(got, want, **EXACT)


def test_shard_count_is_the_workers_even_with_a_stale_scheduler_info(client, monkeypatch):
    """One shard per worker, asked of the scheduler: the client's cached
    ``scheduler_info()`` is refreshed every 2 s with no workers listed, and a read that
    raced with that refresh once gave one shard on a two-worker cluster (CI)."""
    model = tagger()
    parallel = xdask.DataParallel(model, xrnn.MSELoss(), xrnn.optim.SGD(model.parameters(),
                                                                         lr=0.1), client=client)
    monkeypatch.setattr(client, "scheduler_info", lambda *args, **kwargs: {"workers": {}})
    assert parallel.shard_count() == 2


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_uneven_shards_local_scheduler(xp, rng, reduction):
    x, y, lengths = data(rng, batch=7, classes=4, batch_first=True)
    reference, model = classifier(), classifier()
    expected_loss, expected_grads = single_process_step(
        reference, xrnn.CrossEntropyLoss(reduction),
        xrnn.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9), x, y, lengths)
    parallel = xdask.DataParallel(model, xrnn.CrossEntropyLoss(reduction),
                                  xrnn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                                  shards=3)            # shards of 3, 2 and 2 sequences
    loss = parallel.step(xrnn.asarray(x), xrnn.asarray(y), lengths=lengths)
    assert abs(loss - expected_loss) <= 1e-12 * max(1.0, abs(expected_loss))
    assert_every_gradient(model, expected_grads, EXACT)
    for got, want in zip(model.state_dict().values(), reference.state_dict().values()):
        assert_close(got, want, **EXACT)


class Scaled(xrnn.Module):
    """A custom module: an RNN whose output is scaled by a constant, (T, B, F) -> (T, B, H)."""

    def __init__(self, features: int, hidden: int, scale: float = 2.0) -> None:
        super().__init__()
        self.features, self.hidden, self.scale = features, hidden, scale
        self.rnn = xrnn.RNN(features, hidden, dtype="float64", seed=3)

    def forward(self, x, lengths=None):
        return self.rnn(x, lengths=lengths)[0] * self.scale

    def backward(self, grad):
        return self.rnn.backward(grad * self.scale)

    def config(self):
        return dict(features=self.features, hidden=self.hidden, scale=self.scale)


def test_custom_module_rebuilt_from_custom_modules(xp, rng):
    x, _, lengths = data(rng, batch=6)
    y = rng.standard_normal((6, 6, 4))
    reference, model = Scaled(3, 4, 0.5), Scaled(3, 4, 0.5)
    _, expected = single_process_step(reference, xrnn.MSELoss(), xrnn.optim.SGD(
        reference.parameters(), lr=0.1), x, y, lengths)
    parallel = xdask.DataParallel(model, xrnn.MSELoss(), xrnn.optim.SGD(model.parameters(),
                                                                         lr=0.1),
                                  shards=2, custom_modules={"Scaled": Scaled})
    parallel.step(x, y, lengths=lengths)
    assert_every_gradient(model, expected, EXACT)
    unknown = xdask.DataParallel(model, xrnn.MSELoss(), parallel.optimizer, shards=2)
    with pytest.raises(ValueError, match="unknown module class 'Scaled'.*custom_modules"):
        unknown.step(x, y)


def run_dropout_steps(x, y, seed, shards, steps=2):
    model = tagger(dropout=0.3)
    parallel = xdask.DataParallel(model, xrnn.MSELoss(), xrnn.optim.SGD(model.parameters(),
                                                                         lr=0.1),
                                  shards=shards, seed=seed)
    losses = [parallel.step(x, y) for _ in range(steps)]
    return losses, {k: xrnn.to_numpy(v) for k, v in model.state_dict().items()}


def test_dropout_reproducible_for_a_seed_and_shard_count(rng):
    x, y, _ = data(rng)
    first, again, other = (run_dropout_steps(x, y, 7, 2), run_dropout_steps(x, y, 7, 2),
                           run_dropout_steps(x, y, 8, 2))
    assert first[0] == again[0] and first[0][0] != first[0][1]   # fresh masks each step
    assert all(np.array_equal(first[1][k], again[1][k]) for k in first[1])
    assert first[0] != other[0]


class KillWorkerOnce:
    """An MSE loss that kills the worker process it first runs on (once per marker)."""

    reduction = "mean"

    def __init__(self, marker: str) -> None:
        self.marker, self.inner = marker, xrnn.MSELoss()

    def __call__(self, prediction, target):
        try:
            with open(self.marker, "x"):
                pass
        except FileExistsError:
            return self.inner(prediction, target)
        os._exit(1)  # the worker dies mid-step, as a crashed or preempted machine would

    def backward(self):
        return self.inner.backward()


def test_killed_worker_costs_a_retry_not_a_wrong_step(rng, client, tmp_path):
    x, y, lengths = data(rng, batch=8)
    results = []
    for loss_fn in (xrnn.MSELoss(), KillWorkerOnce(str(tmp_path / "killed"))):
        model = tagger(dropout=0.2)
        parallel = xdask.DataParallel(model, loss_fn, xrnn.optim.SGD(model.parameters(),
                                                                      lr=0.1),
                                      client=client, shards=2, seed=5)
        losses = [parallel.step(x, y, lengths=lengths) for _ in range(2)]
        results.append((losses, {k: xrnn.to_numpy(v) for k, v in model.state_dict().items()}))
    assert (tmp_path / "killed").exists()               # a worker did die
    assert results[0][0] == results[1][0]
    assert all(np.array_equal(results[0][1][k], results[1][1][k]) for k in results[0][1])
    client.wait_for_workers(2, timeout=30)


# -- bad input, refused before anything runs -----------------------------------------------

def never_computed(shape):
    """A Dask array whose chunk raises if anything computes it."""
    def boom():
        raise AssertionError("the graph ran before the input was checked")
    return da.from_delayed(dask.delayed(boom)(), shape=shape, dtype="float64")


def test_bad_input_refused_before_running(xp, rng):
    model = tagger()
    x = never_computed((6, 10, 3))
    parallel = xdask.DataParallel(model, xrnn.MSELoss(),
                                  xrnn.optim.SGD(model.parameters(), lr=0.1), shards=2)
    with pytest.raises(ValueError, match=r"lengths must be aligned with the batch: "
                                         r"expected shape \(10,\), got \(9,\)"):
        parallel.step(x, never_computed((6, 10, 2)), lengths=np.ones(9, dtype=int))
    with pytest.raises(ValueError, match=r"prediction's shape \(6, 10, 2\).*got \(6, 10, 3\)"):
        parallel.step(x, never_computed((6, 10, 3)))
    with pytest.raises(ValueError, match="lengths must be aligned"):
        xdask.predict(model, x, lengths=da.ones(11, chunks=4))
    with pytest.raises(TypeError, match="takes a Dask array x, got"):
        xdask.predict(model, rng.standard_normal((6, 10, 3)))
    with pytest.raises(ValueError, match="reduction 'mean' or 'sum'"):
        xdask.DataParallel(model, xrnn.MSELoss("none"), parallel.optimizer)
    with pytest.raises(ValueError, match="expected x of shape"):
        xdask.predict(model, never_computed((6, 10, 3, 1)))
    assert model.unconsumed_calls() == {}


def test_chunks_on_another_backend_refused(rng):
    torch = pytest.importorskip("torch", reason="a second backend for the chunks")
    with xrnn.use_backend("numpy"):
        model = tagger()                                 # NumPy weights
    x = da.zeros((6, 10, 3), chunks=(6, 5, 3)).map_blocks(
        torch.from_numpy, meta=torch.empty((0, 0, 0), dtype=torch.float64))
    with pytest.raises(TypeError, match="x's chunks are torch arrays but the model is on "
                                        "numpy"):
        xdask.predict(model, x)
    parallel = xdask.DataParallel(model, xrnn.MSELoss(),
                                  xrnn.optim.SGD(model.parameters(), lr=0.1), shards=2)
    with pytest.raises(TypeError, match="y is torch arrays but the model is on numpy"):
        parallel.step(rng.standard_normal((6, 10, 3)), torch.zeros(6, 10, 2,
                                                                   dtype=torch.float64))


def test_readme_many_machines_section_mentions_scheduler_address():
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "## Many machines" in text and 'Client("tcp://' in text


def test_benchmark_options():
    """``python -m benchmarks.dask_step``'s parser (the run itself is never a test)."""
    pytest.importorskip("torch", reason="benchmarks.common imports torch")
    environ = dict(os.environ)
    try:
        from benchmarks.dask_step import parse_args
    finally:  # the module sets one BLAS thread per process for the benchmark's workers
        os.environ.clear()
        os.environ.update(environ)
    args = parse_args(["--quick", "--shape", "20,16,8,16,1", "--workers", "1", "3"])
    assert args.shape == (20, 16, 8, 16, 1) and args.workers == [1, 3] and args.steps == 5
    for bad in (["--shape", "20,16"], ["--workers", "17", "--shape", "20,16,8,16,1"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
