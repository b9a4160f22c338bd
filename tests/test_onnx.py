"""ONNX export, checked by running the exported graph in onnxruntime against xrnn's forward.

onnxruntime's CPU RNN, LSTM and GRU kernels are float32 only, so float64 exports are
checked with onnx's own reference evaluator (which ignores ``sequence_lens`` and has
no Relu activation, so: without lengths, tanh and identity).
"""

from __future__ import annotations

import numpy as np
import pytest

import xrnn

onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx package (xrnn[onnx])")
ort = pytest.importorskip("onnxruntime", reason="the check runs onnxruntime (xrnn[onnx])")
xonnx = pytest.importorskip("xrnn.onnx")

KINDS = {"rnn_tanh": (xrnn.RNN, {}), "rnn_relu": (xrnn.RNN, {"nonlinearity": "relu"}),
         "rnn_identity": (xrnn.RNN, {"nonlinearity": "identity"}), "lstm": (xrnn.LSTM, {}),
         "gru": (xrnn.GRU, {})}
F32 = dict(rtol=1e-5, atol=1e-5)


def run_onnx(proto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def padded_batch(rng, batch: int, steps: int, features: int, batch_first: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Random input with garbage past each (unsorted) length; one sequence is full."""
    lengths = rng.integers(1, steps + 1, size=batch)
    lengths[rng.integers(batch)] = steps
    x = rng.standard_normal((batch, steps, features) if batch_first else
                            (steps, batch, features)).astype("float32")
    return x, lengths.astype(np.int64)


def flatten(result) -> list:
    """``(output, h_n)`` or ``(output, (h_n, c_n))`` -> a flat list."""
    output, finals = result
    return [output, *(finals if isinstance(finals, tuple) else (finals,))]


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_recurrent_matches_onnxruntime(xp, kind, with_lengths):
    rng = np.random.default_rng([len(kind), with_lengths])
    cls, options = KINDS[kind]
    for trial in range(2):  # two random configurations each
        config = dict(num_layers=int(rng.integers(1, 4)), bidirectional=bool(rng.integers(2)),
                      bias=bool(rng.integers(2)), batch_first=bool(rng.integers(2)))
        model = cls(int(rng.integers(1, 5)), int(rng.integers(1, 7)), **options, **config,
                    seed=trial).eval()
        x, lengths = padded_batch(rng, int(rng.integers(1, 5)), int(rng.integers(1, 7)),
                                  model.input_size, model.batch_first)
        states = [rng.standard_normal((model.num_layers * model.num_directions, x.shape[
            0 if model.batch_first else 1], model.hidden_size)).astype("float32")
            for _ in range(2 if cls is xrnn.LSTM else 1)]
        proto = xonnx.to_onnx(model, lengths=with_lengths, initial_states=True)
        feeds = {"input": x, "h0": states[0]} | ({"c0": states[1]} if len(states) == 2 else {})
        if with_lengths:
            feeds["lengths"] = lengths
        got = run_onnx(proto, feeds)
        hx = xrnn.asarray(states[0]) if len(states) == 1 else tuple(map(xrnn.asarray, states))
        expected = flatten(model(xrnn.asarray(x), hx, lengths=lengths if with_lengths else None))
        assert [o.name for o in proto.graph.output] == ["output", "h_n", "c_n"][:len(expected)]
        for name, value, reference in zip(["output", "h_n", "c_n"], got, expected):
            np.testing.assert_allclose(value, xrnn.to_numpy(reference), **F32,
                                       err_msg=f"{name} of {model!r}, {config}")
        if with_lengths:  # past each length, ONNX's Y is zero, as xrnn's output
            out = got[0] if model.batch_first else got[0].swapaxes(0, 1)
            assert all(np.all(out[b, n:] == 0) for b, n in enumerate(lengths))


def test_default_states_and_dynamic_axes(xp):
    """Without h0 the graph starts from zeros; one export serves any T and B."""
    model = xrnn.LSTM(3, 4, num_layers=2, bidirectional=True, seed=0)
    proto = xonnx.to_onnx(model)
    assert [i.name for i in proto.graph.input] == ["input"]
    rng = np.random.default_rng(0)
    for steps, batch in [(1, 1), (7, 3)]:
        x = rng.standard_normal((steps, batch, 3)).astype("float32")
        for value, reference in zip(run_onnx(proto, {"input": x}),
                                    flatten(model(xrnn.asarray(x)))):
            np.testing.assert_allclose(value, xrnn.to_numpy(reference), **F32)


SEQUENTIALS = {
    "classifier": lambda: xrnn.Sequential(
        xrnn.Embedding(11, 4, padding_idx=0, seed=0), xrnn.Dropout(0.3, seed=0),
        xrnn.LSTM(4, 5, num_layers=2, bidirectional=True, batch_first=True, dropout=0.2, seed=1),
        xrnn.LastStep(), xrnn.Linear(10, 3, seed=2)),
    "tagger": lambda: xrnn.Sequential(
        xrnn.GRU(3, 6, bidirectional=True, seed=0), xrnn.Tanh(), xrnn.Linear(12, 5, seed=1),
        xrnn.ReLU(), xrnn.Identity(), xrnn.RNN(5, 4, nonlinearity="relu", seed=2),
        xrnn.Sigmoid(), xrnn.Linear(4, 2, bias=False, seed=3)),
    "mean": lambda: xrnn.Sequential(xrnn.RNN(3, 4, batch_first=True, seed=0),
                                    xrnn.MeanOverTime(), xrnn.Linear(4, 2, seed=1)),
    "max": lambda: xrnn.Sequential(xrnn.Linear(3, 4, seed=0), xrnn.GRU(4, 4, seed=1),
                                   xrnn.MaxOverTime()),
    "last_unidirectional": lambda: xrnn.Sequential(xrnn.LSTM(3, 4, num_layers=2, seed=0),
                                                   xrnn.LastStep()),
}


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("name", list(SEQUENTIALS))
def test_sequential_matches_onnxruntime(xp, name, with_lengths):
    model = SEQUENTIALS[name]().eval()
    rng = np.random.default_rng(len(name))
    batch_first = getattr(model[0], "batch_first", False) or name == "classifier"
    x, lengths = padded_batch(rng, 4, 6, 3, batch_first)
    if name == "classifier":  # ids (B, T), zero-padded
        x = np.where(np.arange(6)[None, :] < lengths[:, None], rng.integers(1, 11, (4, 6)), 0)
    feeds = {"input": x} | ({"lengths": lengths} if with_lengths else {})
    (got,) = run_onnx(xonnx.to_onnx(model, lengths=with_lengths), feeds)
    expected = model(xrnn.asarray(x), lengths=lengths if with_lengths else None)
    np.testing.assert_allclose(got, xrnn.to_numpy(expected), **F32)


@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_identity", "lstm", "gru"])
def test_float64_by_reference_evaluator(xp, kind):
    from onnx.reference import ReferenceEvaluator

    cls, options = KINDS[kind]
    model = cls(3, 4, num_layers=2, bidirectional=True, batch_first=True, dtype="float64",
                seed=0, **options)
    x = np.random.default_rng(0).standard_normal((2, 5, 3))
    proto = xonnx.to_onnx(model)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    got = ReferenceEvaluator(proto).run(None, {"input": x})
    for value, reference in zip(got, flatten(model(xrnn.asarray(x, dtype="float64")))):
        np.testing.assert_allclose(value, xrnn.to_numpy(reference), rtol=1e-12, atol=1e-12)


def test_export_writes_a_checked_file(tmp_path):
    model = xrnn.GRU(2, 3, seed=0)
    path = tmp_path / "gru.onnx"
    proto = xonnx.export(model, path, opset=14)
    onnx.checker.check_model(str(path), full_check=True)
    loaded = onnx.load(str(path))
    assert loaded.opset_import[0].version == 14 == proto.opset_import[0].version
    gru = next(node for node in loaded.graph.node if node.op_type == "GRU")
    assert onnx.helper.get_attribute_value(gru.attribute[-1]) == 1  # linear_before_reset
    assert [a.name for a in gru.attribute][-1] == "linear_before_reset"


@pytest.mark.parametrize("model, options, error, match", [
    (lambda: xrnn.LSTM(3, 4, proj_size=2), {}, ValueError, "proj_size=2"),
    (lambda: xrnn.GRU(3, 4, zoneout=0.25), {}, ValueError, "zoneout=0.25"),
    (lambda: xrnn.Sequential(xrnn.RNN(3, 4), xrnn.Linear(4, 1)), {"initial_states": True},
     ValueError, "initial_states=True needs a bare RNN"),
    (lambda: xrnn.RNN(3, 4), {"opset": 12}, ValueError, "opset must be an integer in"),
    (lambda: xrnn.RNN(3, 4, dtype="float16"), {}, TypeError, "float16"),
    (lambda: xrnn.Sequential(xrnn.Tanh(), xrnn.RNN(3, 4)), {}, TypeError, "starts with Tanh"),
])
def test_refusals_name_the_problem(model, options, error, match):
    with pytest.raises(error, match=match):
        xonnx.to_onnx(model(), **options)


def test_unsupported_layer_is_named():
    class Doubler(xrnn.Module):
        def forward(self, x):
            return 2 * x

    with pytest.raises(TypeError, match="cannot export Doubler"):
        xonnx.to_onnx(xrnn.Sequential(xrnn.RNN(3, 4), Doubler()))


def test_trained_demo_model_predicts_the_same():
    """The demo's model, trained briefly, gives the same predictions in onnxruntime."""
    from xrnn import demo

    rng = np.random.default_rng(0)
    model = demo.build_model("gru", vocab=6, hidden=12, bidirectional=True, seed=0)
    optimizer, loss_fn = xrnn.optim.Adam(model.parameters(), lr=0.02), xrnn.CrossEntropyLoss()
    losses = []
    for _ in range(40):
        x, y = demo.repeat_task(32, 8, 6, rng)
        loss = loss_fn(model(xrnn.asarray(x)), xrnn.asarray(y))
        optimizer.zero_grad()
        model.backward(loss_fn.backward())
        optimizer.step()
        losses.append(float(xrnn.to_numpy(loss)))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])  # it did train
    model.eval()
    x, _ = demo.repeat_task(200, 8, 6, rng)
    (logits,) = run_onnx(xonnx.to_onnx(model), {"input": x})
    expected = xrnn.to_numpy(model(xrnn.asarray(x)))
    np.testing.assert_allclose(logits, expected, **F32)
    close_calls = np.abs(expected[..., 0] - expected[..., 1]) < 1e-4
    agree = logits.argmax(-1) == expected.argmax(-1)
    assert np.all(agree | close_calls) and agree.mean() > 0.999


@pytest.mark.parametrize("opset", [13, 18, 21])
def test_opsets(opset):
    """The oldest opset written, and those where ReduceMax's axes became an input."""
    rng = np.random.default_rng(opset)
    for name in ["max", "mean", "classifier"]:
        model = SEQUENTIALS[name]().eval()
        x, lengths = padded_batch(rng, 3, 5, 3, name == "mean")
        if name == "classifier":
            x = rng.integers(1, 11, (3, 5))
        proto = xonnx.to_onnx(model, opset=opset, lengths=True)
        assert proto.opset_import[0].version == opset
        (got,) = run_onnx(proto, {"input": x, "lengths": lengths})
        np.testing.assert_allclose(got, xrnn.to_numpy(model(xrnn.asarray(x), lengths=lengths)),
                                   **F32)
