"""LSTM and GRU: forward and gradient parity with torch, finite differences, state dicts."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

import xrnn
from xrnn.testing import assert_close, gradcheck

from .conftest import assert_every_gradient, backward_random_projection, torch_rnn_like

torch = pytest.importorskip("torch", reason="torch is the parity reference (xrnn[parity])")

T, B, I, H = 4, 3, 3, 5
FORWARD_TOL = {"float32": dict(rtol=0.0, atol=1e-5), "float64": dict(rtol=0.0, atol=1e-12)}
GRAD = dict(rtol=1e-9, atol=1e-12)

# (kind, proj_size): projections exist only for the LSTM
KINDS = [("LSTM", 0), ("LSTM", 2), ("GRU", 0)]
GRID = list(itertools.product(KINDS, [1, 2, 3], [False, True], [True, False], [False, True],
                              [False, True]))


def ids(grid):
    return [f"{k}{'-p' + str(p) if p else ''}-L{l}-{'bi' if d else 'uni'}-"
            f"{'bias' if b else 'nobias'}-{'bf' if f else 'tf'}-{'state' if s else 'nostate'}"
            for (k, p), l, d, b, f, s in grid]


def make(kind, proj_size, num_layers, bidirectional, bias, batch_first, dtype, **kw):
    options = dict(num_layers=num_layers, bias=bias, batch_first=batch_first,
                   bidirectional=bidirectional, dtype=dtype, seed=13, **kw)
    if kind == "LSTM":
        options["proj_size"] = proj_size
    return getattr(xrnn, kind)(I, H, **options)


def initial_states(model, rng, batch=B):
    d = 2 if model.bidirectional else 1
    lead = (model.num_layers * d,) + ((batch,) if batch else ())
    h0 = rng.standard_normal(lead + (model.proj_size or H,))
    if isinstance(model, xrnn.LSTM):
        return h0, rng.standard_normal(lead + (H,))
    return (h0,)


def call_torch(reference, x, states):
    """torch's (output, tuple of final states) from NumPy input and states."""
    args = [torch.as_tensor(s) for s in states]
    hx = None if not args else (tuple(args) if len(args) == 2 else args[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "LSTM with projections is not supported with oneDNN"
        output, finals = reference(x, hx)
    return output, finals if isinstance(finals, tuple) else (finals,)


def call_xrnn(model, x, states):
    """xrnn's (output, tuple of final states)."""
    states = [xrnn.asarray(s) for s in states]
    if isinstance(model, xrnn.LSTM):
        output, (h_n, c_n) = model(xrnn.asarray(x), tuple(states) if states else None)
        return output, (h_n, c_n)
    output, h_n = model(xrnn.asarray(x), states[0] if states else None)
    return output, (h_n,)


def backward_xrnn(model, grad_out, grad_finals):
    """xrnn's (grad_input, tuple of initial-state gradients) for NumPy gradients of the
    output and of each final state."""
    grads = [xrnn.asarray(g) for g in grad_finals]
    if isinstance(model, xrnn.LSTM):
        return model.backward(xrnn.asarray(grad_out), tuple(grads), return_state_grad=True)
    grad_x, grad_h0 = model.backward(xrnn.asarray(grad_out), grads[0], return_state_grad=True)
    return grad_x, (grad_h0,)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind_proj, num_layers, bidirectional, bias, batch_first, with_state",
                         GRID, ids=ids(GRID))
def test_forward_matches_torch(xp, rng, dtype, kind_proj, num_layers, bidirectional, bias,
                               batch_first, with_state):
    model = make(*kind_proj, num_layers, bidirectional, bias, batch_first, dtype,
                 dropout=0.25 if num_layers > 1 else 0.0).eval()
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    states = [s.astype(dtype) for s in initial_states(model, rng)] if with_state else []
    output, finals = call_xrnn(model, x, states)
    with torch.no_grad():
        expected, expected_finals = call_torch(torch_rnn_like(model, dtype),
                                               torch.from_numpy(x), states)
    assert output.dtype == getattr(xp, dtype)
    assert_close(output, expected, backend=xrnn.get_backend(), **FORWARD_TOL[dtype])
    for got, want in zip(finals, expected_finals, strict=True):
        assert_close(got, want, **FORWARD_TOL[dtype])


@pytest.mark.parametrize("kind_proj, num_layers, bidirectional, bias, batch_first, with_state",
                         GRID, ids=ids(GRID))
def test_gradients_match_torch_autograd(xp, rng, kind_proj, num_layers, bidirectional, bias,
                                        batch_first, with_state):
    model = make(*kind_proj, num_layers, bidirectional, bias, batch_first, "float64")
    reference = torch_rnn_like(model, "float64")
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    states = initial_states(model, rng)
    tx = torch.tensor(x, requires_grad=True)
    t_states = [torch.tensor(s, requires_grad=True) for s in states]
    output, finals = call_torch(reference, tx, t_states if with_state else [])
    grad_out, grad_finals = backward_random_projection(rng, output, finals)

    call_xrnn(model, x, states if with_state else [])
    grad_x, grad_states = backward_xrnn(model, grad_out, grad_finals)
    assert_close(grad_x, tx.grad, backend=xrnn.get_backend(), **GRAD)
    if with_state:
        for got, want in zip(grad_states, t_states, strict=True):
            assert_close(got, want.grad, **GRAD)
    assert_every_gradient(model, {n: p.grad for n, p in reference.named_parameters()})


@pytest.mark.parametrize("kind_proj", KINDS, ids=["lstm", "lstm-proj", "gru"])
def test_unbatched_matches_torch(xp, rng, kind_proj):
    """Unbatched input (T, H_in) and states (L*D, H): the forward, and the gradients of
    the input, the initial states and every parameter against torch autograd."""
    model = make(*kind_proj, 2, True, True, False, "float64")
    reference = torch_rnn_like(model, "float64")
    x, states = rng.standard_normal((T, I)), initial_states(model, rng, batch=None)
    tx = torch.tensor(x, requires_grad=True)
    t_states = [torch.tensor(s, requires_grad=True) for s in states]
    expected, expected_finals = call_torch(reference, tx, t_states)
    output, finals = call_xrnn(model, x, states)
    assert_close(output, expected.detach(), **FORWARD_TOL["float64"])
    for got, want in zip(finals, expected_finals, strict=True):
        assert_close(got, want.detach(), **FORWARD_TOL["float64"])

    grad_out, grad_finals = backward_random_projection(rng, expected, expected_finals)
    grad_x, grad_states = backward_xrnn(model, grad_out, grad_finals)
    assert_close(grad_x, tx.grad, **GRAD)
    for got, want in zip(grad_states, t_states, strict=True):
        assert_close(got, want.grad, **GRAD)
    assert_every_gradient(model, {n: p.grad for n, p in reference.named_parameters()})


@pytest.mark.parametrize("kind_proj", KINDS, ids=["lstm", "lstm-proj", "gru"])
def test_finite_differences_with_training_dropout(xp, rng, kind_proj):
    kind, proj = kind_proj
    model = make(kind, proj, 2, True, True, False, "float64")
    functional = {"LSTM": xrnn.functional.lstm_vjp, "GRU": xrnn.functional.gru_vjp}[kind]
    options = dict(num_layers=2, bidirectional=True, dropout=0.4, training=True, generator=3)
    if kind == "LSTM":
        options["proj_size"] = proj
    states = [xrnn.asarray(s) for s in initial_states(model, rng)]
    (out, finals), _ = functional(xrnn.asarray(rng.standard_normal((T, B, I))),
                                  tuple(states) if kind == "LSTM" else states[0],
                                  [p.data for p in model.parameters()], **options)
    finals = finals if kind == "LSTM" else (finals,)
    weights_out = xrnn.asarray(rng.standard_normal(tuple(out.shape)))
    weights_finals = [xrnn.asarray(rng.standard_normal(tuple(f.shape))) for f in finals]

    def fn(x, *rest):
        given, weights = rest[:len(states)], list(rest[len(states):])
        (out, finals), vjp = functional(x, tuple(given) if kind == "LSTM" else given[0],
                                        weights, **options)
        finals = finals if kind == "LSTM" else (finals,)
        xp_ = xrnn.get_namespace(out)
        loss = xp_.sum(out * weights_out) + sum(xp_.sum(f * w) for f, w in
                                                 zip(finals, weights_finals))
        grad_x, grad_states, grad_w = vjp(weights_out, *weights_finals)
        return loss, [grad_x, *grad_states, *grad_w]

    inputs = [xrnn.asarray(rng.standard_normal((T, B, I))), *states,
              *[p.data for p in model.parameters()]]
    # The loss sums many terms of order 1: its rounding (~1e-15 to 1e-14) over 2*eps
    # limits central differences to an absolute resolution of ~1e-9 to 1e-8.
    assert gradcheck(fn, inputs, max_checks=8, atol=1e-8)


@pytest.mark.parametrize("kind_proj", KINDS, ids=["lstm", "lstm-proj", "gru"])
def test_state_dict_round_trip_with_torch(xp, kind_proj):
    kind, proj = kind_proj
    options = dict(num_layers=2, bidirectional=True)
    if kind == "LSTM":
        options["proj_size"] = proj
    theirs = getattr(torch.nn, kind)(I, H, **options)
    ours = getattr(xrnn, kind)(I, H, **options)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == \
        [(n, tuple(t.shape)) for n, t in theirs.state_dict().items()]
    ours.load_state_dict(theirs.state_dict())
    back = getattr(torch.nn, kind)(I, H, **options)
    back.load_state_dict(xrnn.io.torch_state_dict(ours))  # strict
    for name, tensor in theirs.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor)


def test_lstm_shapes_with_projection(xp, rng):
    model = xrnn.LSTM(I, H, 2, bidirectional=True, batch_first=True, proj_size=2)
    output, (h_n, c_n) = model(xrnn.asarray(rng.standard_normal((B, T, I)), dtype="float32"))
    assert output.shape == (B, T, 2 * 2) and h_n.shape == (4, B, 2) and c_n.shape == (4, B, H)
    assert model.output_shape((B, T, I)) == (B, T, 4)
    assert model.weight_hr_l1_reverse.shape == (2, H)


def test_lstm_and_gru_errors(xp, rng):
    x = xrnn.asarray(rng.standard_normal((T, B, I)), dtype="float32")
    for bad in (-1, H, 2.0, True):
        with pytest.raises(ValueError, match="proj_size must be an integer in"):
            xrnn.LSTM(I, H, proj_size=bad)
    model = xrnn.LSTM(I, H, proj_size=2)
    with pytest.raises(TypeError, match=r"expected hx = \(h0, c0\)"):
        model(x, xrnn.asarray(np.zeros((1, B, 2)), dtype="float32"))
    with pytest.raises(ValueError, match=r"expected c0 of shape \(1, 3, 5\)"):
        model(x, (xrnn.asarray(np.zeros((1, B, 2)), dtype="float32"),
                  xrnn.asarray(np.zeros((1, B, 2)), dtype="float32")))
    with pytest.raises(ValueError, match=r"expected h0 of shape \(1, 3, 2\)"):
        model(x, (xrnn.asarray(np.zeros((1, B, H)), dtype="float32"),
                  xrnn.asarray(np.zeros((1, B, H)), dtype="float32")))
    with pytest.raises(ValueError, match="weight weight_hh_l0 has shape"):
        state = dict(xrnn.GRU(I, H).state_dict())
        state["weight_hh_l0"] = xrnn.asarray(np.zeros((3 * H, H + 1)), dtype="float32")
        xrnn.functional.gru(x, None, state)
    with pytest.raises(TypeError, match="unexpected keyword argument 'nonlinearity'"):
        xrnn.GRU(I, H, nonlinearity="relu")
