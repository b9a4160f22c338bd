"""Property-based tests: random configurations against a naive loop written from the
equations in torch float64 (torch autograd gives its gradients; torch.nn.RNN/LSTM/GRU
are not used). Derandomized, so every run draws the same examples."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xrnn

torch = pytest.importorskip("torch", reason="torch autograd is the reference's gradient")

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"]
# max|got - want| <= tol * max(1, max|want|), per dtype: (forward, gradients)
TOLERANCE = {"float32": (2e-5, 1e-4), "float64": (1e-11, 1e-10)}


@st.composite
def configurations(draw, cell):
    hidden = draw(st.integers(2 if cell == "lstm_proj" else 1, 4))
    batch, steps = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    return dict(
        cell=cell, hidden=hidden, input_size=draw(st.integers(1, 3)),
        proj=draw(st.integers(1, hidden - 1)) if cell == "lstm_proj" else 0,
        num_layers=draw(st.integers(1, 3)), bidirectional=draw(st.booleans()),
        batch=batch, steps=steps, batch_first=draw(st.booleans()), bias=draw(st.booleans()),
        dtype=draw(st.sampled_from(["float32", "float64"])), with_state=draw(st.booleans()),
        lengths=draw(st.none() | st.lists(st.integers(1, steps), min_size=batch,
                                          max_size=batch)),
        seed=draw(st.integers(0, 2**32 - 1)))


def build(c):
    kind, options = c["cell"].split("_")[0].upper(), {}
    if kind == "RNN":
        options["nonlinearity"] = c["cell"].split("_")[1]
    if c["proj"]:
        options["proj_size"] = c["proj"]
    return getattr(xrnn, kind)(c["input_size"], c["hidden"], c["num_layers"], bias=c["bias"],
                               batch_first=c["batch_first"], bidirectional=c["bidirectional"],
                               dtype=c["dtype"], seed=c["seed"] % 1000, **options)


def cell_step(c, w, x_t, h, cell_state):
    """One step of the cell from its equations; returns (h_t, c_t or None)."""
    def affine(a, weight, bias):
        return a @ weight.T + (w[bias] if bias in w else 0.0)

    gi, gh = affine(x_t, w["weight_ih"], "bias_ih"), affine(h, w["weight_hh"], "bias_hh")
    if c["cell"].startswith("rnn"):
        f = torch.tanh if c["cell"] == "rnn_tanh" else torch.relu
        return f(gi + gh), None
    if c["cell"] == "gru":
        (ri, zi, ni), (rh, zh, nh) = gi.chunk(3, -1), gh.chunk(3, -1)
        r, z = torch.sigmoid(ri + rh), torch.sigmoid(zi + zh)
        n = torch.tanh(ni + r * nh)
        return (1 - z) * n + z * h, None
    i, f, g, o = (gi + gh).chunk(4, -1)
    cell_state = torch.sigmoid(f) * cell_state + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(cell_state)
    return (h @ w["weight_hr"].T if "weight_hr" in w else h), cell_state


def reference(c, x, states, weights, lengths):
    """The stacked, optionally bidirectional recurrence, time-major, one step at a time."""
    steps, directions = x.shape[0], 2 if c["bidirectional"] else 1
    valid = None if lengths is None else [torch.tensor(
        [[t < n] for n in lengths]) for t in range(steps)]
    layer_input, finals = x, [[], []]
    for layer in range(c["num_layers"]):
        outputs = []
        for d in range(directions):
            k, suffix = layer * directions + d, f"_l{layer}" + ("_reverse" if d else "")
            w = {name[:-len(suffix)]: p for name, p in weights.items() if name.endswith(suffix)}
            h, cell_state = states[0][k], states[1][k] if len(states) > 1 else None
            out = [None] * steps
            for t in (reversed(range(steps)) if d else range(steps)):
                new_h, new_c = cell_step(c, w, layer_input[t], h, cell_state)
                if valid is None:
                    h, cell_state, out[t] = new_h, new_c, new_h
                else:  # past a sequence's length: state kept, output zero
                    h = torch.where(valid[t], new_h, h)
                    cell_state = None if new_c is None else torch.where(valid[t], new_c,
                                                                        cell_state)
                    out[t] = torch.where(valid[t], new_h, torch.zeros_like(new_h))
            outputs.append(torch.stack(out))
            finals[0].append(h)
            finals[1].append(cell_state)
        layer_input = torch.cat(outputs, -1)
    return layer_input, [torch.stack(f) for f in finals[:len(states)]]


def assert_near(got, want, tol):
    want = want.detach().numpy() if hasattr(want, "detach") else want
    got = xrnn.to_numpy(got)
    assert got.shape == want.shape
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=0,
                               atol=tol * max(1.0, float(np.max(np.abs(want), initial=0))))


@pytest.mark.parametrize("cell", CELLS)
@settings(max_examples=50, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # xp: one per backend
@given(data=st.data())
def test_forward_and_gradients_match_equations(xp, torch, cell, data):
    c = data.draw(configurations(cell), label="configuration")
    model = build(c)
    rng = np.random.default_rng(c["seed"])
    lead = (c["num_layers"] * (2 if c["bidirectional"] else 1), c["batch"])
    sizes = [c["proj"] or c["hidden"]] + ([c["hidden"]] if c["cell"].startswith("lstm") else [])
    dtype = np.dtype(c["dtype"])
    x = rng.standard_normal((c["steps"], c["batch"], c["input_size"])).astype(dtype)
    states = [rng.standard_normal(lead + (s,)).astype(dtype) if c["with_state"]
              else np.zeros(lead + (s,)) for s in sizes]
    out_width = (2 if c["bidirectional"] else 1) * sizes[0]
    grad_out = rng.standard_normal((c["steps"], c["batch"], out_width)).astype(dtype)
    grad_finals = [rng.standard_normal(lead + (s,)).astype(dtype) for s in sizes]

    # the reference, in float64 on exactly the values xrnn sees
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    t_states = [torch.tensor(s, dtype=torch.float64, requires_grad=True) for s in states]
    t_weights = {n: torch.tensor(xrnn.to_numpy(p).astype(np.float64), requires_grad=True)
                 for n, p in model.state_dict().items()}
    t_out, t_finals = reference(c, tx, t_states, t_weights, c["lengths"])
    loss = (t_out * torch.from_numpy(grad_out.astype(np.float64))).sum() + sum(
        (f * torch.from_numpy(g.astype(np.float64))).sum() for f, g in zip(t_finals, grad_finals))
    loss.backward()

    def caller(a):  # time-major -> the model's layout
        return np.swapaxes(a, 0, 1) if c["batch_first"] else a

    given_states = [xrnn.asarray(s, dtype=c["dtype"]) for s in states] if c["with_state"] else None
    if c["cell"].startswith("lstm"):
        output, finals = model(xrnn.asarray(caller(x)), given_states and tuple(given_states),
                               lengths=c["lengths"])
        grad_x, grad_states = model.backward(
            xrnn.asarray(caller(grad_out)), tuple(xrnn.asarray(g) for g in grad_finals),
            return_state_grad=True)
    else:
        output, h_n = model(xrnn.asarray(caller(x)), given_states and given_states[0],
                            lengths=c["lengths"])
        grad_x, grad_h0 = model.backward(xrnn.asarray(caller(grad_out)),
                                         xrnn.asarray(grad_finals[0]), return_state_grad=True)
        finals, grad_states = (h_n,), (grad_h0,)

    forward_tol, grad_tol = TOLERANCE[c["dtype"]]
    assert xrnn.to_numpy(output).dtype == dtype
    assert_near(output, caller(t_out.detach().numpy()), forward_tol)
    for got, want in zip(finals, t_finals, strict=True):
        assert_near(got, want, forward_tol)
    assert_near(grad_x, caller(tx.grad.numpy()), grad_tol)
    for got, want in zip(grad_states, t_states, strict=True):
        assert_near(got, want.grad, grad_tol)
    for name, parameter in model.named_parameters():
        assert_near(parameter.grad, t_weights[name].grad, grad_tol)
