"""Issue 14: reset=, recurrent_dropout, zoneout and weight_dropout against torch references.

Two references: real ``torch.nn`` modules run segment by segment (what ``reset`` must
equal), and a float64 torch loop written from the issue's equations with the masks
xrnn draws (drawn here again from the same seed in the documented order), both
differentiated by torch autograd; plus float64 finite differences.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import xrnn
from xrnn import _kernels
from xrnn._kernels import numpy_layer
from xrnn.testing import assert_close, gradcheck

from .conftest import GRAD, assert_every_gradient, backward_random_projection, torch_rnn_like

torch = pytest.importorskip("torch", reason="torch is the parity reference (xrnn[parity])")

T, B, I, H = 5, 3, 3, 4
FUNCTIONAL = {"RNN": xrnn.functional.rnn_vjp, "LSTM": xrnn.functional.lstm_vjp,
              "GRU": xrnn.functional.gru_vjp}


def make(kind, num_layers=2, bidirectional=True, proj_size=0, **options):
    if kind == "LSTM":
        options["proj_size"] = proj_size
    return getattr(xrnn, kind)(I, H, num_layers, bidirectional=bidirectional, dtype="float64",
                               seed=5, **options)


def state_sizes(model):
    sizes = [model.proj_size or H]
    return sizes + [H] if isinstance(model, xrnn.LSTM) else sizes


def initial_states(model, rng):
    d = model.num_layers * model.num_directions
    return [rng.standard_normal((d, B, size)) for size in state_sizes(model)]


def call(model, x, states, **options):
    """xrnn's (output, tuple of finals) from NumPy arrays."""
    states = [xrnn.asarray(s) for s in states]
    hx = tuple(states) if isinstance(model, xrnn.LSTM) else states[0]
    output, finals = model(xrnn.asarray(x), hx, **options)
    return output, finals if isinstance(finals, tuple) else (finals,)


def backward(model, grad_out, grad_finals):
    grads = [xrnn.asarray(g) for g in grad_finals]
    if isinstance(model, xrnn.LSTM):
        grad_x, grad_states = model.backward(xrnn.asarray(grad_out), tuple(grads),
                                             return_state_grad=True)
        return grad_x, grad_states
    grad_x, grad_h0 = model.backward(xrnn.asarray(grad_out), grads[0], return_state_grad=True)
    return grad_x, (grad_h0,)


def assert_matches_torch(model, got, expected, grads, tx, t_states, parameter_grads):
    """xrnn's ``got = (output, finals)`` equals torch's ``expected``; then xrnn's backward
    of ``grads = (grad_out, grad_finals)`` gives torch's input, initial-state and every
    parameter gradient (``tx``, ``t_states``: torch's leaves, already backpropagated)."""
    (output, finals), (expected_output, expected_finals) = got, expected
    assert_close(output, expected_output.detach(), **GRAD)
    for value, want in zip(finals, expected_finals, strict=True):
        assert_close(value, want.detach(), **GRAD)
    grad_x, grad_states = backward(model, *grads)
    assert_close(grad_x, tx.grad, **GRAD)
    for value, want in zip(grad_states, t_states, strict=True):
        assert_close(value, want.grad, **GRAD)
    assert_every_gradient(model, parameter_grads)


# ----------------------------------------------------------------------------- reset

RESET = np.zeros((T, B), dtype=bool)
RESET[2, 0] = RESET[4, 0] = True  # three segments, one of length 1
RESET[1, 2] = True
RESET[0, 1] = True  # a reset at step 0 changes nothing


def segments(column):
    starts = [0] + [t for t in range(1, len(column)) if column[t]] + [len(column)]
    return list(zip(starts[:-1], starts[1:]))


def torch_by_segments(reference, x, states, reset, lengths):
    """torch's output and finals when each segment of each sequence runs on its own from
    the initial states: the finals are the forward direction's from the last segment and
    the reverse direction's from the first; outputs past a sequence's length are zero."""
    directions = 2 if reference.bidirectional else 1
    columns, finals = [], [[] for _ in states]
    for b in range(B):
        outs, runs = [], []
        for start, stop in segments(reset[:lengths[b], b]):
            hx = tuple(s[:, b:b + 1] for s in states)
            o, f = reference(x[start:stop, b:b + 1], hx if len(hx) == 2 else hx[0])
            outs.append(o[:, 0])
            runs.append(f if isinstance(f, tuple) else (f,))
        column = torch.cat(outs)
        columns.append(torch.cat([column, torch.zeros((T - lengths[b], column.shape[1]),
                                                      dtype=column.dtype)]))
        for k, final in enumerate(finals):
            final.append(torch.stack([runs[-1 if row % directions == 0 else 0][k][row, 0]
                                      for row in range(runs[0][k].shape[0])]))
    return torch.stack(columns, dim=1), tuple(torch.stack(f, dim=1) for f in finals)


GRID = list(itertools.product(["RNN", "LSTM", "GRU"], [False, True]))


@pytest.mark.parametrize("kind, with_lengths", GRID, ids=[f"{k}-{w}" for k, w in GRID])
def test_reset_equals_separate_segments(xp, rng, kind, with_lengths):
    """Forward and every gradient equal torch run on each segment separately (two layers,
    bidirectional; with lengths, a reset past a sequence's end changes nothing)."""
    model = make(kind, proj_size=2)
    reference = torch_rnn_like(model, "float64")
    lengths = [5, 3, 4] if with_lengths else [T] * B
    x, states = rng.standard_normal((T, B, I)), initial_states(model, rng)
    tx = torch.tensor(x, requires_grad=True)
    t_states = [torch.tensor(s, requires_grad=True) for s in states]
    expected, expected_finals = torch_by_segments(reference, tx, t_states, RESET, lengths)
    grad_out, grad_finals = backward_random_projection(rng, expected, expected_finals)

    output, finals = call(model, x, states, reset=RESET,
                          lengths=lengths if with_lengths else None)
    assert_matches_torch(model, (output, finals), (expected, expected_finals),
                         (grad_out, grad_finals), tx, t_states,
                         {n: p.grad for n, p in reference.named_parameters()})


def test_reset_batch_first_unbatched_and_errors(xp, rng):
    model = make("GRU", batch_first=True)
    x = rng.standard_normal((T, B, I))
    time_major, _ = call(make("GRU"), x, [np.zeros((4, B, H))], reset=RESET)
    batch_major, _ = call(model, np.swapaxes(x, 0, 1), [np.zeros((4, B, H))], reset=RESET.T)
    assert_close(batch_major, np.swapaxes(xrnn.to_numpy(time_major), 0, 1), **GRAD)
    single, _ = make("GRU")(xrnn.asarray(x[:, 0]), reset=RESET[:, 0])
    assert_close(single, xrnn.to_numpy(time_major)[:, 0], **GRAD)
    with pytest.raises(ValueError, match=r"expected reset of shape \(3, 5\), i.e. \(B, T\)"):
        model(xrnn.asarray(np.swapaxes(x, 0, 1)), reset=RESET)
    with pytest.raises(TypeError, match="reset must be booleans, got dtype int64"):
        model(xrnn.asarray(np.swapaxes(x, 0, 1)), reset=RESET.T.astype(np.int64))


# ---------------------------------------------------------- masks: the equations in torch

def draw_masks(model, seed, training, p):
    """The masks xrnn draws from ``seed``, in its documented order: per layer, the W_hh
    masks of each direction, then per direction the recurrent-dropout mask and the zoneout
    masks of each state component, then the inter-layer dropout mask."""
    g = np.random.default_rng(seed)
    gates, out = model.cell.gates, model.proj_size or H
    d = model.num_directions
    masks = []
    for layer in range(model.num_layers):
        w = [(g.random((gates * H, out)) >= p["weight_dropout"]) / (1 - p["weight_dropout"])
             if training and p["weight_dropout"] else None for _ in range(d)]
        per_direction = []
        for _ in range(d):
            h = ((g.random((B, out)) >= p["recurrent_dropout"]) / (1 - p["recurrent_dropout"])
                 if training and p["recurrent_dropout"] else None)
            z = None
            if p["zoneout"]:
                z = [(g.random((T, B, size)) < p["zoneout"]).astype(float) if training
                     else p["zoneout"] for size in state_sizes(model)]
            per_direction.append((h, z))
        drop = ((g.random((T, B, d * out)) >= p["dropout"]) / (1 - p["dropout"])
                if training and p["dropout"] and layer < model.num_layers - 1 else None)
        masks.append((w, per_direction, drop))
    return masks


def torch_cell(kind, x_t, state, h_in, w):
    """One step of the cell in torch (the LayerNorm cell when ``w`` has its weights):
    the new state tuple."""
    def norm(v, n):
        if "ln_weight_" + n not in w:
            return v
        return torch.nn.functional.layer_norm(v, (v.shape[-1],), w["ln_weight_" + n],
                                              w["ln_bias_" + n], eps=1e-5)

    gx = norm(x_t @ w["weight_ih"].T, "ih") + w["bias_ih"]
    gh = norm(h_in @ w["weight_hh"].T, "hh") + w["bias_hh"]
    if kind == "RNN":
        return (torch.tanh(gx + gh),)
    if kind == "GRU":
        (xr, xz, xn), (hr, hz, hn) = gx.chunk(3, -1), gh.chunk(3, -1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return ((1 - z) * n + z * state[0],)
    i, f, g, o = (gx + gh).chunk(4, -1)
    c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(norm(c, "c"))
    return (h if "weight_hr" not in w else h @ w["weight_hr"].T, c)


def torch_loop(model, x, states, params, masks):
    """The issue's equations in torch, float64, with the given masks."""
    kind, d = type(model).__name__, model.num_directions
    finals: list[list] = [[] for _ in states]
    layer_input = x
    for layer in range(model.num_layers):
        w_masks, per_direction, drop = masks[layer]
        outputs = []
        for direction in range(d):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            w = {n[:n.index("_l")]: p for n, p in params.items() if n.endswith(suffix)
                 and (direction or not n.endswith("_reverse"))}
            if w_masks[direction] is not None:
                w["weight_hh"] = w["weight_hh"] * torch.from_numpy(w_masks[direction])
            h_mask, zones = per_direction[direction]
            state = tuple(s[layer * d + direction] for s in states)
            out = [None] * T
            for t in (range(T - 1, -1, -1) if direction else range(T)):
                h_in = state[0] if h_mask is None else state[0] * torch.from_numpy(h_mask)
                new = torch_cell(kind, layer_input[t], state, h_in, w)
                if zones is not None:
                    keep = [z if isinstance(z, float) else torch.from_numpy(z[t]) for z in zones]
                    new = tuple(k * s + (1 - k) * n for k, s, n in zip(keep, state, new))
                state, out[t] = new, new[0]
            outputs.append(torch.stack(out))
            for k, s in enumerate(state):
                finals[k].append(s)
        layer_input = torch.cat(outputs, -1)
        if drop is not None:
            layer_input = layer_input * torch.from_numpy(drop)
    return layer_input, tuple(torch.stack(f) for f in finals)


OPTIONS = {"recurrent_dropout": 0.3, "zoneout": 0.25, "weight_dropout": 0.4, "dropout": 0.2}
CASES = [(kind, option, training) for kind in ("RNN", "LSTM", "GRU")
         for option in ("recurrent_dropout", "zoneout", "weight_dropout", "all", "layer_norm",
                        "layer_norm+all")
         for training in (True, False)
         if (training or option in ("zoneout", "all", "layer_norm"))
         and (kind != "RNN" or not option.startswith("layer_norm"))
         and not (option == "layer_norm" and training)]


@pytest.mark.parametrize("kind, option, training", CASES,
                         ids=[f"{k}-{o}-{'train' if t else 'eval'}" for k, o, t in CASES])
def test_masks_match_torch_equations(xp, rng, kind, option, training):
    """Forward and every gradient against the torch loop with the same masks (two layers,
    bidirectional, projection for the LSTM); 'all' also adds inter-layer dropout. The
    LayerNorm weights are perturbed from their init (1, 0) so that they matter."""
    p = {name: (value if option in (name, "all", "layer_norm+all") else 0.0)
         for name, value in OPTIONS.items()}
    model = make(kind, proj_size=2, **p, **({"layer_norm": True} if "layer_norm" in option
                                             else {}))
    for name, parameter in model.named_parameters():
        if name.startswith("ln_"):
            parameter.data = parameter.data + xrnn.asarray(
                0.3 * rng.standard_normal(tuple(parameter.shape)))
    model.train(training)
    model._dropout_rng = np.random.default_rng(11)
    x, states = rng.standard_normal((T, B, I)), initial_states(model, rng)
    tx = torch.tensor(x, requires_grad=True)
    t_states = [torch.tensor(s, requires_grad=True) for s in states]
    params = {n: torch.tensor(xrnn.to_numpy(q.data), requires_grad=True)
              for n, q in model.named_parameters()}
    expected, expected_finals = torch_loop(model, tx, t_states, params,
                                           draw_masks(model, 11, training, p))
    grad_out, grad_finals = backward_random_projection(rng, expected, expected_finals)

    assert_matches_torch(model, call(model, x, states), (expected, expected_finals),
                         (grad_out, grad_finals), tx, t_states,
                         {n: q.grad for n, q in params.items()})


@pytest.mark.parametrize("kind, training, layer_norm",
                         [("LSTM", True, True), ("GRU", True, True), ("LSTM", False, False)],
                         ids=["lstm-ln-train", "gru-ln-train", "lstm-eval"])
def test_finite_differences(xp, rng, kind, training, layer_norm):
    """Every option at once, with resets and lengths; in training the masks are fixed by
    the seed, drawn again identically at every call. One layer with LayerNorm (its
    inter-layer path is covered against torch above), to keep the test short."""
    layers = 1 if layer_norm else 2
    options = dict(num_layers=layers, bidirectional=True, training=training, generator=3,
                   reset=RESET, lengths=[5, 3, 4], **OPTIONS)
    model = make(kind, num_layers=layers, layer_norm=layer_norm)
    if layer_norm:
        options["layer_norm"] = True
    functional = FUNCTIONAL[kind]
    weights = [p.data for p in model.parameters()]
    states = [xrnn.asarray(s) for s in initial_states(model, rng)]
    pack = (lambda s: tuple(s)) if kind == "LSTM" else (lambda s: s[0])
    (out, finals), _ = functional(xrnn.asarray(rng.standard_normal((T, B, I))), pack(states),
                                  weights, **options)
    finals = finals if kind == "LSTM" else (finals,)
    g_out = xrnn.asarray(rng.standard_normal(tuple(out.shape)))
    g_finals = [xrnn.asarray(rng.standard_normal(tuple(f.shape))) for f in finals]

    def fn(x, *rest):
        given, w = rest[:len(states)], list(rest[len(states):])
        (out, finals), vjp = functional(x, pack(given), w, **options)
        finals = finals if kind == "LSTM" else (finals,)
        ns = xrnn.get_namespace(out)
        loss = ns.sum(out * g_out) + sum(ns.sum(f * g) for f, g in zip(finals, g_finals))
        grad_x, grad_states, grad_w = vjp(g_out, *g_finals)
        return loss, [grad_x, *grad_states, *grad_w]

    inputs = [xrnn.asarray(rng.standard_normal((T, B, I))), *states, *weights]
    assert gradcheck(fn, inputs, max_checks=3, atol=1e-8)


# ---------------------------------------------------------------- paths, seeds, modules

def test_kernels_run_the_options_and_agree_with_the_generic_path(rng):
    """NumPy: with a per-step option (and a reset) the NumPy kernel runs every layer, and
    weight dropout runs on the kernels; both agree with the generic path
    (tests/test_kernel_hooks.py checks every option, tests/test_numba_kernel.py the
    compiled kernel's fused steps)."""
    x = rng.standard_normal((T, B, I))
    with xrnn.use_backend("numpy"):
        for options in (dict(zoneout=0.3), dict(recurrent_dropout=0.3),
                        dict(weight_dropout=0.3), dict(zoneout=0.2, weight_dropout=0.3)):
            results = []
            for enabled in ("numpy", False):
                model = make("LSTM", **options).train()
                before = numpy_layer.layers_run
                with _kernels.kernels_enabled(enabled):
                    output, _ = call(model, x, initial_states(model, np.random.default_rng(0)),
                                     reset=RESET)
                    model.backward(xrnn.asarray(np.ones(tuple(output.shape))))
                assert numpy_layer.layers_run - before == (2 if enabled else 0)
                results.append((xrnn.to_numpy(output), [xrnn.to_numpy(p.grad)
                                                        for p in model.parameters()]))
            (out_fast, grads_fast), (out_generic, grads_generic) = results
            assert_close(out_fast, out_generic, rtol=1e-12, atol=1e-12)
            for fast, generic in zip(grads_fast, grads_generic, strict=True):
                assert_close(fast, generic, rtol=1e-10, atol=1e-12)


def test_same_seed_same_masks_on_every_backend(xp, rng):
    """The masks come from the module's seeded host generator: one seed, one result,
    whatever the backend (compared with NumPy's)."""
    x = rng.standard_normal((T, B, I))
    outputs = []
    for name in (xrnn.get_backend(), "numpy"):
        with xrnn.use_backend(name):
            model = make("GRU", **OPTIONS).train()
            outputs.append(xrnn.to_numpy(call(model, x, [np.zeros((4, B, H))])[0]))
    assert_close(outputs[0], outputs[1], **GRAD)
    model = make("GRU", **OPTIONS).train()
    again = xrnn.to_numpy(call(model, x, [np.zeros((4, B, H))])[0])
    assert not np.allclose(again, xrnn.to_numpy(call(model, x, [np.zeros((4, B, H))])[0]))


def test_options_in_config_repr_save_and_errors(xp, rng, tmp_path):
    model = make("LSTM", proj_size=2, layer_norm=True, **OPTIONS)
    assert [n for n, _ in model.named_parameters()][5:11] == [
        "ln_weight_ih_l0", "ln_bias_ih_l0", "ln_weight_hh_l0", "ln_bias_hh_l0", "ln_weight_c_l0",
        "ln_bias_c_l0"]
    assert model.ln_weight_c_l1_reverse.shape == (H,) and model.ln_bias_hh_l0.shape == (4 * H,)
    assert np.all(xrnn.to_numpy(model.ln_weight_ih_l0.data) == 1)
    assert np.all(xrnn.to_numpy(model.ln_bias_c_l0.data) == 0)
    for name, value in dict(OPTIONS, layer_norm=True).items():
        assert model.config()[name] == value and f"{name}={value}" in repr(model)
    xrnn.save(model, tmp_path / "m.npz")
    loaded = xrnn.load(tmp_path / "m.npz")
    assert loaded.config() == model.config()
    x = xrnn.asarray(rng.standard_normal((T, B, I)))
    assert_close(loaded.eval()(x)[0], xrnn.to_numpy(model.eval()(x)[0]), **GRAD)
    one_way = make("LSTM", bidirectional=False, proj_size=2, layer_norm=True, **OPTIONS).eval()
    state, steps = None, []
    for t in range(T):  # eval-mode zoneout in step(): the same as the whole-sequence forward
        y_t, state = one_way.step(x[t, ...], state)
        steps.append(xrnn.to_numpy(y_t))
    assert_close(np.stack(steps), xrnn.to_numpy(one_way(x)[0]), **GRAD)
    with pytest.raises(ValueError, match="LSTM with layer_norm=True has LayerNorm parameters"):
        xrnn.io.torch_state_dict(model)
    assert len(xrnn.io.torch_state_dict(make("GRU", **OPTIONS))) == 16  # the rest: PyTorch's
    for name in ("recurrent_dropout", "zoneout", "weight_dropout"):
        with pytest.raises(ValueError, match=f"{name} must be a number in"):
            make("GRU", **{name: 1.0})
