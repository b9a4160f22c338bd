"""BPTT gradients against torch.autograd, finite differences, and by construction."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import xrnn
from xrnn.testing import assert_close, gradcheck

from .conftest import assert_every_gradient, torch_rnn_like

torch = pytest.importorskip("torch", reason="torch autograd is the gradient reference")

T, B, I, H = 4, 3, 3, 5
GRAD = dict(rtol=1e-9, atol=1e-12)
GRID = list(itertools.product([1, 2, 3], [False, True], ["tanh", "relu"], [True, False],
                              [False, True], [False, True]))


def torch_gradients(reference, x, h0, grad_out, grad_h):
    tx = torch.tensor(x, requires_grad=True)
    th = torch.tensor(h0, requires_grad=True)
    out, h_n = reference(tx, th)
    loss = (out * torch.from_numpy(grad_out)).sum() + (h_n * torch.from_numpy(grad_h)).sum()
    loss.backward()
    return tx.grad.numpy(), th.grad.numpy(), {n: p.grad.numpy() for n, p in
                                              reference.named_parameters()}


@pytest.mark.parametrize("num_layers, bidirectional, nonlinearity, bias, batch_first, with_h0",
                         GRID, ids=["-".join(map(str, c)) for c in GRID])
def test_gradients_match_torch_autograd(xp, rng, num_layers, bidirectional, nonlinearity, bias,
                                        batch_first, with_h0):
    model = xrnn.RNN(I, H, num_layers, nonlinearity, bias, batch_first,
                     bidirectional=bidirectional, dtype="float64", seed=3)
    d = 2 if bidirectional else 1
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    h0 = rng.standard_normal((num_layers * d, B, H)) if with_h0 else np.zeros((num_layers * d, B, H))
    grad_out = rng.standard_normal((B, T, d * H) if batch_first else (T, B, d * H))
    grad_h = rng.standard_normal((num_layers * d, B, H))
    expected_x, expected_h0, expected_w = torch_gradients(torch_rnn_like(model, "float64"),
                                                          x, h0, grad_out, grad_h)
    model(xrnn.asarray(x), xrnn.asarray(h0) if with_h0 else None)
    grad_x, grad_h0 = model.backward(xrnn.asarray(grad_out), xrnn.asarray(grad_h),
                                     return_state_grad=True)
    assert_close(grad_x, expected_x, backend=xrnn.get_backend(), **GRAD)
    assert_close(grad_h0, expected_h0, **GRAD)
    assert_every_gradient(model, expected_w)


@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_gradients_match_torch(xp, rng, batch_first):
    model = xrnn.RNN(I, H, 2, bidirectional=True, batch_first=batch_first, dtype="float64", seed=4)
    x, h0 = rng.standard_normal((T, I)), rng.standard_normal((4, H))
    grad_out, grad_h = rng.standard_normal((T, 2 * H)), rng.standard_normal((4, H))
    expected_x, expected_h0, expected_w = torch_gradients(torch_rnn_like(model, "float64"),
                                                          x, h0, grad_out, grad_h)
    model(xrnn.asarray(x), xrnn.asarray(h0))
    grad_x, grad_h0 = model.backward(xrnn.asarray(grad_out), xrnn.asarray(grad_h),
                                     return_state_grad=True)
    assert_close(grad_x, expected_x, **GRAD)
    assert_close(grad_h0, expected_h0, **GRAD)
    assert_every_gradient(model, expected_w)


def rnn_loss(config, grad_out, grad_h):
    """A scalar loss of (x, h0, *weights) with its analytic gradients, for gradcheck."""
    def fn(x, h0, *weights):
        (out, h_n), vjp = xrnn.functional.rnn_vjp(x, h0, list(weights), **config)
        xp = xrnn.get_namespace(out)
        loss = xp.sum(out * grad_out) + xp.sum(h_n * grad_h)
        grad_x, (grad_h0,), grad_w = vjp(grad_out, grad_h)
        return loss, [grad_x, grad_h0, *grad_w]
    return fn


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu", "identity"])
@pytest.mark.parametrize("num_layers, bidirectional, bias, dropout", [
    (1, False, True, 0.0), (2, True, True, 0.4), (3, True, False, 0.5), (2, False, True, 0.3)])
def test_finite_differences(xp, rng, nonlinearity, num_layers, bidirectional, bias, dropout):
    """Covers what torch cannot: the identity cell, and training-mode dropout (fixed masks)."""
    model = xrnn.RNN(I, H, num_layers, nonlinearity, bias, bidirectional=bidirectional,
                     dtype="float64", seed=5)
    d = 2 if bidirectional else 1
    config = dict(num_layers=num_layers, nonlinearity=nonlinearity, bias=bias,
                  bidirectional=bidirectional, dropout=dropout, training=True, generator=9)
    grad_out = xrnn.asarray(rng.standard_normal((T, B, d * H)))
    grad_h = xrnn.asarray(rng.standard_normal((num_layers * d, B, H)))
    inputs = [xrnn.asarray(rng.standard_normal((T, B, I))),
              xrnn.asarray(rng.standard_normal((num_layers * d, B, H))),
              *[p.data for p in model.parameters()]]
    assert gradcheck(rnn_loss(config, grad_out, grad_h), inputs, max_checks=12)


def test_gradcheck_catches_a_wrong_gradient(xp, rng):
    x = xrnn.asarray(rng.standard_normal(5))

    def wrong(v):
        return xrnn.get_namespace(v).sum(v * v), [v]  # true gradient is 2 v
    with pytest.raises(AssertionError, match="analytic gradient"):
        gradcheck(wrong, [x])


def test_gradcheck_needs_one_gradient_per_input(xp, rng):
    """A gradient left out is an error naming the counts and the input without one;
    ``None`` skips an input on purpose, and only that input."""
    x, w = xrnn.asarray(rng.standard_normal(5)), xrnn.asarray(rng.standard_normal(5))

    def loss(grads):  # sum(x * w * w): d/dx = w * w, d/dw = 2 x w
        return lambda x, w: (xrnn.get_namespace(x).sum(x * w * w), grads(x, w))
    with pytest.raises(ValueError, match=r"returned 1 gradients for 2 inputs; input 1 has none"):
        gradcheck(loss(lambda x, w: [w * w]), [x, w])
    with pytest.raises(ValueError, match=r"returned 3 gradients for 2 inputs; gradient 2 has no"):
        gradcheck(loss(lambda x, w: [w * w, 2 * x * w, w]), [x, w])
    assert gradcheck(loss(lambda x, w: [w * w, 2 * x * w]), [x, w])
    assert gradcheck(loss(lambda x, w: [None, 2 * x * w]), [x, w])
    with pytest.raises(AssertionError, match="input 1 entry"):
        gradcheck(loss(lambda x, w: [None, x * w]), [x, w])


def test_backward_in_eval_mode_ignores_dropout_and_matches_torch(xp, rng):
    model = xrnn.RNN(I, H, 3, dropout=0.5, bidirectional=True, dtype="float64", seed=6).eval()
    x, h0 = rng.standard_normal((T, B, I)), np.zeros((6, B, H))
    grad_out, grad_h = rng.standard_normal((T, B, 2 * H)), rng.standard_normal((6, B, H))
    expected_x, _, expected_w = torch_gradients(torch_rnn_like(model, "float64"), x, h0,
                                                grad_out, grad_h)
    model(xrnn.asarray(x))
    assert_close(model.backward(xrnn.asarray(grad_out), xrnn.asarray(grad_h)), expected_x, **GRAD)
    assert_every_gradient(model, expected_w)


def train_step_gradients(seed_data):
    model = xrnn.Sequential(xrnn.RNN(I, H, 3, dropout=0.5, bidirectional=True, seed=1),
                            xrnn.Tanh(), xrnn.Linear(2 * H, 2, seed=2))
    x = xrnn.asarray(np.random.default_rng(seed_data).standard_normal((T, B, I)), dtype="float32")
    y = model(x)
    model.backward(xrnn.get_namespace(y).ones_like(y))
    return {name: xrnn.to_numpy(p.grad) for name, p in model.named_parameters()}


def test_training_gradients_are_bit_identical_for_a_fixed_seed(xp):
    first, second = train_step_gradients(0), train_step_gradients(0)
    assert list(first) == list(second) and len(first) == 8 * 3 + 2
    for name, gradient in first.items():
        np.testing.assert_array_equal(gradient, second[name], err_msg=name)


def test_gradients_accumulate_until_zero_grad(xp, rng):
    model = xrnn.RNN(I, H, dtype="float64", seed=0)
    x = xrnn.asarray(rng.standard_normal((T, B, I)))
    g = xrnn.asarray(rng.standard_normal((T, B, H)))
    model(x)
    model.backward(g)
    once = {name: xrnn.to_numpy(p.grad).copy() for name, p in model.named_parameters()}
    model(x)
    model.backward(g)
    assert_every_gradient(model, {name: 2 * grad for name, grad in once.items()},
                          dict(rtol=1e-14, atol=0.0))
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_backward_before_forward_is_an_error(xp):
    with pytest.raises(RuntimeError, match="backward called before forward"):
        xrnn.RNN(I, H).backward(None)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        xrnn.Linear(I, H).backward(None)


def test_grad_output_of_wrong_shape_is_rejected(xp, rng):
    model = xrnn.RNN(I, H, dtype="float64")
    model(xrnn.asarray(rng.standard_normal((T, B, I))))
    with pytest.raises(ValueError, match=r"expected grad_output of shape \(4, 3, 5\)"):
        model.backward(xrnn.asarray(rng.standard_normal((T, B, H + 1))))


def test_truncated_bptt_cuts_gradients_at_the_chunk_boundary(xp, rng):
    """Chunk 2 starts from chunk 1's h_n as a constant: its gradients equal torch's with
    the state detached, and its backward leaves chunk 1 out."""
    model = xrnn.RNN(I, H, 2, dtype="float64", seed=8)
    reference = torch_rnn_like(model, "float64")
    x1, x2 = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, I))
    g2 = rng.standard_normal((T, B, H))
    with xrnn.no_grad():  # chunk 1 is not backpropagated here
        _, h1 = model(xrnn.asarray(x1))
    model(xrnn.asarray(x2), h1)
    model.backward(xrnn.asarray(g2))
    with torch.no_grad():
        _, th1 = reference(torch.from_numpy(x1))
    out2, _ = reference(torch.from_numpy(x2), th1.detach())
    (out2 * torch.from_numpy(g2)).sum().backward()
    assert_every_gradient(model, {n: p.grad for n, p in reference.named_parameters()})


def test_sequential_backward_matches_torch(xp, rng):
    model = xrnn.Sequential(xrnn.RNN(I, H, 2, bidirectional=True, dtype="float64", seed=1),
                            xrnn.ReLU(), xrnn.Linear(2 * H, 3, dtype="float64", seed=2),
                            xrnn.Sigmoid(), xrnn.Linear(3, 2, dtype="float64", seed=3), xrnn.Tanh())
    rnn = torch_rnn_like(model[0], "float64")
    lin1, lin2 = (torch.nn.Linear(2 * H, 3, dtype=torch.float64),
                  torch.nn.Linear(3, 2, dtype=torch.float64))
    lin1.load_state_dict(xrnn.io.torch_state_dict(model[2]))
    lin2.load_state_dict(xrnn.io.torch_state_dict(model[4]))
    x, g = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, 2))
    tx = torch.tensor(x, requires_grad=True)
    out = torch.tanh(lin2(torch.sigmoid(lin1(torch.relu(rnn(tx)[0])))))
    (out * torch.from_numpy(g)).sum().backward()
    assert_close(model(xrnn.asarray(x)), out.detach(), **GRAD)
    assert_close(model.backward(xrnn.asarray(g)), tx.grad, **GRAD)
    assert_every_gradient(model, {f"{index}.{name}": p.grad for index, torch_module in
                                  ((0, rnn), (2, lin1), (4, lin2))
                                  for name, p in torch_module.named_parameters()})
