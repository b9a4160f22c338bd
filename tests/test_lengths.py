"""Variable-length batches against torch's packed sequences, forward and gradients."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import xrnn
from xrnn.testing import assert_close

from .conftest import backward_random_projection, run_packed, torch_rnn_like

torch = pytest.importorskip("torch", reason="torch's packed sequences are the reference")

T, B, I, H = 6, 4, 3, 5
LENGTHS = [3, 6, 1, 4]  # unsorted, one full-length, one of length 1
TOL = dict(rtol=1e-9, atol=1e-12)
GRID = list(itertools.product(["RNN", "LSTM", "GRU"], [1, 2], [False, True], [False, True]))


def packed_torch(reference, x, lengths, batch_first):
    tx = torch.tensor(x, requires_grad=True)
    out, finals = run_packed(reference, tx, lengths, batch_first)
    return tx, out, finals if isinstance(finals, tuple) else (finals,)


@pytest.mark.parametrize("kind, num_layers, bidirectional, batch_first", GRID,
                         ids=["-".join(map(str, c)) for c in GRID])
def test_lengths_match_packed_sequences(xp, rng, kind, num_layers, bidirectional, batch_first):
    model = getattr(xrnn, kind)(I, H, num_layers, batch_first=batch_first,
                                bidirectional=bidirectional, dtype="float64", seed=4)
    reference = torch_rnn_like(model, "float64")
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    tx, expected_out, expected_finals = packed_torch(reference, x, LENGTHS, batch_first)
    grad_out, grad_finals = backward_random_projection(rng, expected_out, expected_finals)

    output, finals = model(xrnn.asarray(x), None, lengths=LENGTHS)
    finals = finals if isinstance(finals, tuple) else (finals,)
    assert_close(output, expected_out.detach(), **TOL)
    for got, want in zip(finals, expected_finals, strict=True):
        assert_close(got, want.detach(), **TOL)
    grads = [xrnn.asarray(g) for g in grad_finals]
    grad_x = model.backward(xrnn.asarray(grad_out), tuple(grads) if kind == "LSTM" else grads[0])
    assert_close(grad_x, tx.grad, **TOL)
    expected_w = dict(reference.named_parameters())
    for name, parameter in model.named_parameters():
        assert_close(parameter.grad, expected_w[name].grad, **TOL)


def test_padding_gets_zero_outputs_and_zero_gradients(xp, rng):
    model = xrnn.GRU(I, H, 2, bidirectional=True, dtype="float64", seed=1)
    x = rng.standard_normal((T, B, I))
    x[5:, 0] = np.nan  # garbage in the padding must not leak anywhere
    output, _ = model(xrnn.asarray(x), lengths=np.array([5, 6, 6, 6]))
    assert np.all(xrnn.to_numpy(output)[5:, 0] == 0)
    grad_x = xrnn.to_numpy(model.backward(xrnn.asarray(np.ones((T, B, 2 * H)))))
    assert np.all(grad_x[5:, 0] == 0) and np.all(np.isfinite(grad_x))
    assert all(np.all(np.isfinite(xrnn.to_numpy(p.grad))) for p in model.parameters())
    lengths_as_array = xrnn.asarray(np.array([5, 6, 6, 6]))
    again, _ = model(xrnn.asarray(x), lengths=lengths_as_array)
    np.testing.assert_array_equal(xrnn.to_numpy(again), xrnn.to_numpy(output))


@pytest.mark.parametrize("lengths, error, match", [
    ([0, 6, 6, 6], ValueError, r"every length must be in \[1, T=6\], got \[0\]"),
    ([7, 6, 6, 6], ValueError, r"got \[7\]"),
    ([6, 6, 6], ValueError, "one length per sequence, 4 in all"),
    ([6.0, 6.0, 6.0, 6.0], TypeError, "lengths must be integers"),
])
def test_bad_lengths(xp, rng, lengths, error, match):
    model = xrnn.LSTM(I, H)
    with pytest.raises(error, match=match):
        model(xrnn.asarray(rng.standard_normal((T, B, I)), dtype="float32"), lengths=lengths)
    with pytest.raises(ValueError, match="lengths needs batched input"):
        model(xrnn.asarray(rng.standard_normal((T, I)), dtype="float32"), lengths=[6])
