"""Sequence-level layers (issue 12): Embedding, Dropout, LastStep, MeanOverTime,
MaxOverTime, and Sequential passing ``lengths`` on. References: torch.nn.Embedding,
packed sequences (h_n, pad_packed_sequence) plus indexing and masked reductions, torch
autograd; float64, every gradient within 1e-12."""

from __future__ import annotations

import io

import numpy as np
import pytest

import xrnn
from xrnn._kernels import kernels_enabled
from xrnn.functional import embedding as functional_embedding
from xrnn.testing import assert_close

from .conftest import run_packed, torch_rnn_like

T, B, V, E, H, C = 6, 4, 11, 3, 5, 3
LENGTHS = [3, 6, 1, 4]  # unsorted, one full-length, one of length 1
TIGHT = dict(rtol=1e-12, atol=1e-12)
F64 = "float64"
POOLS = ["LastStep", "MeanOverTime", "MaxOverTime"]


def _valid(batch_first: bool) -> np.ndarray:
    """(T, B, 1) or (B, T, 1) booleans: the steps within each sequence's length."""
    valid = np.arange(T)[:, None] < np.array(LENGTHS)[None, :]
    return (valid.T if batch_first else valid)[..., None]


def _tokens(rng, batch_first: bool) -> np.ndarray:
    """(B, T) or (T, B) indices in [1, V), padded with 0 past each length."""
    tokens = rng.integers(1, V, size=(B, T))
    tokens[~_valid(True)[..., 0]] = 0
    return tokens if batch_first else tokens.T.copy()


def _torch_pool(torch, pool: str, out, finals, batch_first: bool):
    """The torch reference of ``pool`` over a padded (packed-run) output."""
    axis = 1 if batch_first else 0
    mask = torch.from_numpy(_valid(batch_first))
    if pool == "LastStep":
        h_n = finals[0] if isinstance(finals, tuple) else finals
        return torch.cat([h_n[-2], h_n[-1]], dim=-1)
    if pool == "MeanOverTime":
        lengths = torch.tensor(LENGTHS, dtype=out.dtype)[:, None]
        return torch.where(mask, out, 0.0).sum(axis) / lengths
    return torch.where(mask, out, -torch.inf).max(axis).values


# -- Embedding -------------------------------------------------------------------------

@pytest.mark.parametrize("padding_idx", [None, 2, -1])
@pytest.mark.parametrize("batch_first", [False, True], ids=["T,B", "B,T"])
def test_embedding_matches_torch(xp, rng, torch, padding_idx, batch_first):
    model = xrnn.Embedding(V, E, padding_idx=padding_idx, dtype=F64, seed=0)
    reference = torch.nn.Embedding(V, E, padding_idx=padding_idx, dtype=torch.float64)
    reference.load_state_dict(xrnn.io.torch_state_dict(model))
    indices = rng.integers(0, V, size=(B, T) if batch_first else (T, B))  # 24 > V: repeats
    indices.flat[:5] = 7  # an index repeated within the batch
    indices.flat[5] = 2 if padding_idx is None else padding_idx % V
    indices = indices.astype(np.int32 if batch_first else np.int64)
    grad = rng.standard_normal(indices.shape + (E,))

    out = model(xrnn.asarray(indices))
    assert model.backward(xrnn.asarray(grad)) is None  # indices have no gradient
    expected = reference(torch.from_numpy(indices.astype(np.int64)))
    (expected * torch.from_numpy(grad)).sum().backward()
    assert_close(out, expected.detach(), rtol=0, atol=0)  # a lookup copies rows
    assert_close(model.weight.grad, reference.weight.grad, **TIGHT)
    if padding_idx is not None:
        assert np.all(xrnn.to_numpy(model.weight.grad)[padding_idx] == 0)


def test_embedding_init_is_standard_normal_with_a_zero_padding_row(xp):
    weight = xrnn.to_numpy(xrnn.Embedding(400, 50, padding_idx=-3, dtype=F64, seed=5).weight.data)
    assert np.all(weight[397] == 0)
    rest = np.delete(weight, 397, axis=0)
    assert np.all(rest != 0)
    assert abs(rest.mean()) < 0.03 and abs(rest.std() - 1.0) < 0.03  # N(0, 1), as torch
    with xrnn.use_backend("numpy"):
        on_numpy = xrnn.Embedding(400, 50, padding_idx=-3, dtype=F64, seed=5).weight.data
    np.testing.assert_array_equal(weight, on_numpy)  # one seed, the same table everywhere


@pytest.mark.parametrize("native", [True, False], ids=["native", "generic"])
def test_scatter_add_accumulates_repeats_and_keeps_non_finite_in_their_rows(
        xp, rng, monkeypatch, native):
    monkeypatch.setattr(functional_embedding, "MAX_ONE_HOT", 3 * V)  # chunks of 3 of 25
    indices = rng.integers(0, V, size=25)
    indices[:4] = 5
    values = rng.standard_normal((25, E))
    values[0, 0], values[1, 0], values[2, 1] = np.inf, -np.inf, np.nan  # all in row 5
    values[3, 2] = np.inf
    other = next(k for k in range(4, 25) if indices[k] != 5)
    values[other, 2] = -np.inf
    expected = np.zeros((V, E))
    with np.errstate(invalid="ignore"):  # inf + -inf is NaN, by design here
        np.add.at(expected, indices, values)
    with kernels_enabled(native), np.errstate(invalid="ignore"):
        got = functional_embedding.scatter_add_rows(xrnn.asarray(indices), xrnn.asarray(values), V)
    assert_close(got, expected, **TIGHT)  # NaN and inf where they are expected, nowhere else


@pytest.mark.parametrize("value", [V, -1, 1000])
def test_embedding_rejects_out_of_range_indices(xp, value):
    model = xrnn.Embedding(V, E, dtype=F64)
    indices = np.zeros((T, B), dtype=np.int64)
    indices[2, 1] = value
    with pytest.raises(ValueError, match=rf"\[0, {V}\) \(num_embeddings={V}\), got {value} "
                                         r"at index \(2, 1\)"):
        model(xrnn.asarray(indices))
    assert model.unconsumed_calls() == {}


def test_embedding_rejects_bad_arguments(xp):
    model = xrnn.Embedding(V, E, dtype=F64)
    with pytest.raises(TypeError, match="integer array, got dtype"):
        model(xrnn.asarray(np.zeros((T, B))))
    for padding_idx in (V, -V - 1, True, 1.0):
        with pytest.raises(ValueError, match=rf"padding_idx must be None or an integer in "
                                             rf"\[-{V}, {V}\)"):
            xrnn.Embedding(V, E, padding_idx=padding_idx)
    with pytest.raises(ValueError, match="embedding_dim must be a positive integer"):
        xrnn.Embedding(V, 0)


def test_embedding_rejects_indices_of_another_backend():
    with xrnn.use_backend("array_api_strict"):
        model = xrnn.Embedding(V, E)
    with pytest.raises(TypeError, match="indices are a numpy array but the embedding table is "
                                        "a array_api_strict array"):
        model(np.zeros((T, B), dtype=np.int64))


# -- pooling over time -----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_last_step_is_the_top_layers_final_states(xp, rng, torch, kind, batch_first):
    rnn = getattr(xrnn, kind)(E, H, 2, batch_first=batch_first, bidirectional=True, dtype=F64,
                              seed=3)
    model = xrnn.Sequential(rnn, xrnn.LastStep())
    assert model[1].config() == {"batch_first": batch_first, "bidirectional": True}
    reference = torch_rnn_like(rnn, F64)
    x = rng.standard_normal((B, T, E) if batch_first else (T, B, E))
    tx = torch.tensor(x, requires_grad=True)
    _, finals = run_packed(reference, tx, LENGTHS, batch_first)
    expected = _torch_pool(torch, "LastStep", None, finals, batch_first)  # (B, 2H)
    grad = rng.standard_normal((B, 2 * H))
    (expected * torch.from_numpy(grad)).sum().backward()

    assert_close(model(xrnn.asarray(x), lengths=LENGTHS), expected.detach(), **TIGHT)
    assert_close(model.backward(xrnn.asarray(grad)), tx.grad, **TIGHT)
    torch_grads = dict(reference.named_parameters())
    for name, parameter in rnn.named_parameters():
        assert_close(parameter.grad, torch_grads[name].grad, **TIGHT)


@pytest.mark.parametrize("pool", ["MeanOverTime", "MaxOverTime"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_mean_and_max_ignore_padding_as_masked_torch_reductions(xp, rng, torch, pool,
                                                                batch_first):
    x = rng.standard_normal((B, T, 2 * H) if batch_first else (T, B, 2 * H))
    x = np.where(_valid(batch_first), x, np.nan)  # whatever padding holds is never read
    tx = torch.tensor(x, requires_grad=True)
    expected = _torch_pool(torch, pool, tx, None, batch_first)
    grad = rng.standard_normal((B, 2 * H))
    (expected * torch.from_numpy(grad)).sum().backward()

    model = getattr(xrnn, pool)(batch_first=batch_first)
    assert_close(model(xrnn.asarray(x), lengths=xrnn.asarray(np.array(LENGTHS))),
                 expected.detach(), **TIGHT)
    grad_x = model.backward(xrnn.asarray(grad))
    assert_close(grad_x, tx.grad, **TIGHT)
    assert np.all(xrnn.to_numpy(grad_x)[~np.broadcast_to(_valid(batch_first), x.shape)] == 0)


@pytest.mark.parametrize("pool", POOLS)
def test_pooling_without_lengths_batched_and_unbatched(xp, rng, pool):
    """Without lengths: the last step, the mean, the max over all T steps; unbatched
    (T, F) -> (F,). The gradient summed over time is the output's gradient."""
    reduce = {"LastStep": lambda a: a[-1], "MeanOverTime": lambda a: a.mean(axis=0),
              "MaxOverTime": lambda a: a.max(axis=0)}[pool]
    options = {"bidirectional": False} if pool == "LastStep" else {}
    model = getattr(xrnn, pool)(batch_first=False, **options)
    for x in (rng.standard_normal((T, B, H)), rng.standard_normal((T, H))):
        assert_close(model(xrnn.asarray(x)), reduce(x), **TIGHT)
        grad = rng.standard_normal(x.shape[1:])
        grad_x = xrnn.to_numpy(model.backward(xrnn.asarray(grad)))
        assert grad_x.shape == x.shape
        assert_close(grad_x.sum(axis=0), grad, **TIGHT)
        nonzero = (grad_x != 0).sum(axis=0)
        assert np.all(nonzero == (T if pool == "MeanOverTime" else 1))


def test_last_step_of_a_bidirectional_output_reads_the_reverse_half_at_step_0(xp, rng):
    x = rng.standard_normal((B, T, 2 * H))
    out = xrnn.to_numpy(xrnn.LastStep(batch_first=True, bidirectional=True)(
        xrnn.asarray(x), lengths=LENGTHS))
    for b, n in enumerate(LENGTHS):
        np.testing.assert_array_equal(out[b], np.concatenate([x[b, n - 1, :H], x[b, 0, H:]]))
    with pytest.raises(ValueError, match="even number of features"):
        xrnn.LastStep(batch_first=True, bidirectional=True)(xrnn.asarray(x[..., 1:]))


@pytest.mark.parametrize("pool", POOLS)
def test_unset_layout_raises_instead_of_guessing(xp, rng, pool):
    cls = getattr(xrnn, pool)
    x = xrnn.asarray(rng.standard_normal((T, B, 2 * H)))
    unset = "batch_first and bidirectional" if pool == "LastStep" else "batch_first"
    with pytest.raises(ValueError, match=rf"{pool} has {unset} unset \(None\).*Sequential"):
        cls()(x)
    with pytest.raises(ValueError, match="unset"):
        cls().output_shape((T, B, 2 * H))
    orphan = xrnn.Sequential(xrnn.Linear(2 * H, 2 * H, dtype=F64), cls())  # no recurrent layer
    with pytest.raises(ValueError, match="unset"):
        orphan(x)
    if pool == "LastStep":
        with pytest.raises(ValueError, match="LastStep has bidirectional unset"):
            cls(batch_first=False)(x)
    with pytest.raises(ValueError, match="batch_first must be True, False or None"):
        cls(batch_first=1)


def test_sequential_fills_only_unset_options_from_the_nearest_recurrent_layer(xp):
    nested = xrnn.Sequential(xrnn.RNN(E, H, batch_first=True, dtype=F64),
                             xrnn.Sequential(xrnn.Tanh(), xrnn.MeanOverTime()),
                             xrnn.GRU(H, H, bidirectional=True, dtype=F64),
                             xrnn.LastStep(bidirectional=False))
    assert nested[1][1].batch_first is True
    assert nested[3].config() == {"batch_first": False, "bidirectional": False}  # explicit kept


def test_summary_and_output_shape_drop_the_time_axis(xp):
    model = xrnn.Sequential(xrnn.Embedding(V, E), xrnn.LSTM(E, H, batch_first=True,
                                                             bidirectional=True),
                            xrnn.LastStep(), xrnn.Dropout(0.1), xrnn.Linear(2 * H, C))
    assert model.output_shape((B, T)) == (B, C)
    text = model.summary((B, T), file=io.StringIO())
    assert f"({B}, {T}, {E})" in text and f"({B}, {2 * H})" in text
    assert "over time: drops the time axis" in text


# -- Dropout ---------------------------------------------------------------------------

def test_dropout_statistics_mask_gradient_and_eval_identity(xp, rng):
    p = 0.25
    drop = xrnn.Dropout(p, seed=0)
    x = rng.uniform(0.5, 1.5, size=(400, 50))
    y = xrnn.to_numpy(drop(xrnn.asarray(x)))
    kept = y != 0
    assert abs(kept.mean() - (1 - p)) < 0.01  # 20000 draws: 3.3 standard deviations
    assert_close(y[kept], x[kept] / (1 - p), **TIGHT)
    grad = rng.standard_normal(x.shape)
    grad_x = xrnn.to_numpy(drop.backward(xrnn.asarray(grad)))
    assert np.all(grad_x[~kept] == 0)
    assert_close(grad_x[kept], grad[kept] / (1 - p), **TIGHT)
    with xrnn.use_backend("numpy"):  # one seed, the same masks on every backend
        np.testing.assert_array_equal(xrnn.Dropout(p, seed=0)(x) != 0, kept)

    drop.eval()
    assert_close(drop(xrnn.asarray(x)), x, rtol=0, atol=0)
    assert_close(drop.backward(xrnn.asarray(grad)), grad, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"probability must be a number in \[0, 1\)"):
        xrnn.Dropout(1.0)
    with pytest.raises(TypeError, match="real floating"):
        xrnn.Dropout(p)(xrnn.asarray(np.ones((2, 2), dtype=np.int64)))


def test_dropout_repeated_calls_each_keep_their_own_mask(xp, rng):
    drop = xrnn.Dropout(0.5, seed=1)
    xs = [rng.uniform(1, 2, size=(T, B, H)) for _ in range(2)]
    ys = [xrnn.to_numpy(drop(xrnn.asarray(x))) for x in xs]
    assert not np.array_equal(ys[0] != 0, ys[1] != 0)
    grads = [rng.standard_normal((T, B, H)) for _ in range(2)]
    second = drop.backward(xrnn.asarray(grads[1]))
    first = drop.backward(xrnn.asarray(grads[0]))
    for x, y, g, got in zip(xs, ys, grads, (first, second)):
        assert_close(got, g * (y / x), **TIGHT)  # y / x is that call's mask
    assert drop.unconsumed_calls() == {}


# -- repeated calls --------------------------------------------------------------------

REPEATABLE = {
    "Embedding": lambda: xrnn.Embedding(V, E, padding_idx=1, dtype=F64, seed=0),
    "LastStep": lambda: xrnn.LastStep(batch_first=False, bidirectional=True),
    "MeanOverTime": lambda: xrnn.MeanOverTime(batch_first=False),
    "MaxOverTime": lambda: xrnn.MaxOverTime(batch_first=False),
}


@pytest.mark.parametrize("name", list(REPEATABLE))
def test_repeated_calls_pair_each_backward_with_its_own_call(xp, rng, name):
    """Two calls (different shapes, with and without lengths), then two backwards, the
    last call first: each equals a fresh module used once; parameter gradients add up."""
    make = REPEATABLE[name]
    if name == "Embedding":
        calls = [(rng.integers(0, V, size=(T, B)), None),
                 (rng.integers(0, V, size=(B, T + 1)), None)]
    else:
        calls = [(rng.standard_normal((T, B, 2 * H)), LENGTHS),
                 (rng.standard_normal((T + 1, B, 2 * H)), None)]

    def run(module, x, lengths):
        return module(xrnn.asarray(x)) if lengths is None else module(xrnn.asarray(x),
                                                                      lengths=lengths)

    shared = make()
    outputs = [run(shared, x, lengths) for x, lengths in calls]
    grads = [rng.standard_normal(tuple(y.shape)) for y in outputs]
    got = [None, shared.backward(xrnn.asarray(grads[1]))]
    got[0] = shared.backward(xrnn.asarray(grads[0]))
    assert shared.unconsumed_calls() == {}
    expected_params = {n: 0.0 for n, _ in shared.named_parameters()}
    for (x, lengths), grad, result in zip(calls, grads, got):
        once = make()
        run(once, x, lengths)
        expected = once.backward(xrnn.asarray(grad))
        if name == "Embedding":
            assert result is None and expected is None
        else:
            assert_close(result, expected, **TIGHT)
        for n, parameter in once.named_parameters():
            expected_params[n] = expected_params[n] + xrnn.to_numpy(parameter.grad)
    for n, parameter in shared.named_parameters():
        assert_close(parameter.grad, expected_params[n], **TIGHT)


# -- whole models ----------------------------------------------------------------------

def _classifier(pool: str, batch_first: bool) -> xrnn.Sequential:
    return xrnn.Sequential(
        xrnn.Embedding(V, E, padding_idx=0, dtype=F64, seed=0),
        xrnn.LSTM(E, H, 2, batch_first=batch_first, bidirectional=True, dtype=F64, seed=1),
        getattr(xrnn, pool)(),
        xrnn.Linear(2 * H, C, dtype=F64, seed=2))


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_classifier_cross_entropy_gradients_match_torch(xp, rng, torch, pool, batch_first):
    """Sequential(Embedding, bidirectional LSTM, pooling, Linear) with lengths: the loss
    and the gradient of every parameter, against torch on packed sequences."""
    model = _classifier(pool, batch_first)
    tokens, target = _tokens(rng, batch_first), rng.integers(0, C, size=B)
    references = {"0": torch.nn.Embedding(V, E, padding_idx=0, dtype=torch.float64),
                  "1": torch_rnn_like(model[1], F64),
                  "3": torch.nn.Linear(2 * H, C, dtype=torch.float64)}
    for index in ("0", "3"):
        references[index].load_state_dict(xrnn.io.torch_state_dict(model[int(index)]))
    out, finals = run_packed(references["1"], references["0"](torch.from_numpy(tokens)), LENGTHS,
                          batch_first)
    logits = references["3"](_torch_pool(torch, pool, out, finals, batch_first))
    expected = torch.nn.functional.cross_entropy(logits, torch.from_numpy(target))
    expected.backward()

    loss_fn = xrnn.CrossEntropyLoss()
    loss = loss_fn(model(xrnn.asarray(tokens), lengths=LENGTHS), xrnn.asarray(target))
    assert model.backward(loss_fn.backward()) is None  # the first layer takes indices
    assert_close(loss, expected.detach(), **TIGHT)
    for name, parameter in model.named_parameters():
        index, own = name.split(".", 1)
        assert_close(parameter.grad, dict(references[index].named_parameters())[own].grad,
                     **TIGHT)


def test_tagger_with_a_masked_loss_matches_torch(xp, rng, torch):
    """A tagger, Sequential(Embedding, bidirectional GRU, Linear), one label per valid
    step: cross-entropy over the valid steps only."""
    model = xrnn.Sequential(xrnn.Embedding(V, E, padding_idx=0, dtype=F64, seed=0),
                            xrnn.GRU(E, H, bidirectional=True, dtype=F64, seed=1),
                            xrnn.Linear(2 * H, C, dtype=F64, seed=2))
    tokens, tags = _tokens(rng, False), rng.integers(0, C, size=(T, B))
    valid = _valid(False)[..., 0]
    references = [torch.nn.Embedding(V, E, padding_idx=0, dtype=torch.float64),
                  torch_rnn_like(model[1], F64), torch.nn.Linear(2 * H, C, dtype=torch.float64)]
    for index in (0, 2):
        references[index].load_state_dict(xrnn.io.torch_state_dict(model[index]))
    out, _ = run_packed(references[1], references[0](torch.from_numpy(tokens)), LENGTHS, False)
    per_step = torch.nn.functional.cross_entropy(references[2](out).reshape(-1, C),
                                                 torch.from_numpy(tags).reshape(-1),
                                                 reduction="none").reshape(T, B)
    (per_step[torch.from_numpy(valid)].sum() / valid.sum()).backward()

    loss_fn = xrnn.CrossEntropyLoss(reduction="none")
    loss_fn(model(xrnn.asarray(tokens), lengths=LENGTHS), xrnn.asarray(tags))
    weights = xrnn.asarray((valid / valid.sum())[..., None])  # mean over the valid steps
    model.backward(loss_fn.backward() * weights)
    for name, parameter in model.named_parameters():
        index, own = name.split(".", 1)
        assert_close(parameter.grad, dict(references[int(index)].named_parameters())[own].grad,
                     **TIGHT)


@pytest.mark.parametrize("pool", POOLS)
def test_save_load_round_trip_gives_identical_outputs(xp, rng, tmp_path, pool):
    model = xrnn.Sequential(xrnn.Embedding(V, E, padding_idx=0, dtype=F64, seed=0),
                            xrnn.Dropout(0.2, seed=1),
                            xrnn.GRU(E, H, bidirectional=True, batch_first=True, dtype=F64,
                                     seed=2),
                            getattr(xrnn, pool)(),
                            xrnn.Linear(2 * H, C, dtype=F64, seed=3)).eval()
    path = tmp_path / "classifier.npz"
    xrnn.save(model, path)
    restored = xrnn.load(path).eval()
    assert restored.config() == model.config()
    assert restored[0].padding_idx == 0 and restored[1].p == 0.2
    tokens = xrnn.asarray(_tokens(rng, True))
    with xrnn.no_grad():
        np.testing.assert_array_equal(xrnn.to_numpy(restored(tokens, lengths=LENGTHS)),
                                      xrnn.to_numpy(model(tokens, lengths=LENGTHS)))
