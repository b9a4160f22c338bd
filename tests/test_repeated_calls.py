"""A module called more than once per step: every call keeps its own tape entry and
``backward`` consumes them last call first; misuse raises. Reference: torch autograd
on the same weights, float64, every parameter within 1e-12."""

from __future__ import annotations

import pytest

import xrnn
from tests.conftest import torch_rnn_like
from xrnn.testing import assert_close

T, B, I, H = 4, 3, 5, 6
TIGHT = dict(rtol=1e-12, atol=1e-12)


def _array(rng, *shape):
    return xrnn.asarray(rng.standard_normal(shape))


def _grads(module):
    return {name: p.grad for name, p in module.named_parameters()}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_shared_linear_twice_matches_torch(xp, rng, torch, training):
    lin = xrnn.Linear(I, 2, dtype="float64", seed=0).train(training)
    reference = torch.nn.Linear(I, 2, dtype=torch.float64)
    reference.load_state_dict(xrnn.io.torch_state_dict(lin))
    x1, x2 = rng.standard_normal((T, B, I)), rng.standard_normal((B, I))
    g1, g2 = rng.standard_normal((T, B, 2)), rng.standard_normal((B, 2))
    lin(xrnn.asarray(x1))
    lin(xrnn.asarray(x2))
    dx2 = lin.backward(xrnn.asarray(g2))  # the last call first
    dx1 = lin.backward(xrnn.asarray(g1))
    t1, t2 = (torch.tensor(x, requires_grad=True) for x in (x1, x2))
    ((reference(t1) * torch.from_numpy(g1)).sum()
     + (reference(t2) * torch.from_numpy(g2)).sum()).backward()
    assert_close(dx1, t1.grad.numpy(), **TIGHT)
    assert_close(dx2, t2.grad.numpy(), **TIGHT)
    for name, grad in _grads(lin).items():
        assert_close(grad, dict(reference.named_parameters())[name].grad.numpy(), **TIGHT)
    assert lin.unconsumed_calls() == {}


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_shared_recurrent_encoder_on_two_sequences_matches_torch(xp, rng, torch, kind,
                                                                 training):
    """A siamese encoder: the same layer on two sequences (different lengths), outputs
    and final states both in the loss."""
    model = getattr(xrnn, kind)(I, H, 2, bidirectional=True, dtype="float64", seed=1)
    model.train(training)
    reference = torch_rnn_like(model, "float64")
    x1, x2 = rng.standard_normal((T, B, I)), rng.standard_normal((T + 2, B, I))
    out1, fin1 = model(xrnn.asarray(x1))
    out2, fin2 = model(xrnn.asarray(x2))
    g1, g2 = rng.standard_normal(tuple(out1.shape)), rng.standard_normal(tuple(out2.shape))
    state = lambda f: f if isinstance(f, tuple) else (f,)  # noqa: E731
    gf1 = [rng.standard_normal(tuple(f.shape)) for f in state(fin1)]
    gf2 = [rng.standard_normal(tuple(f.shape)) for f in state(fin2)]
    pack = lambda g: tuple(map(xrnn.asarray, g)) if kind == "LSTM" else xrnn.asarray(g[0])  # noqa: E731
    dx2 = model.backward(xrnn.asarray(g2), pack(gf2))
    dx1 = model.backward(xrnn.asarray(g1), pack(gf1))

    t1, t2 = (torch.tensor(x, requires_grad=True) for x in (x1, x2))
    loss = 0
    for tx, g, gf in ((t1, g1, gf1), (t2, g2, gf2)):
        out, fin = reference(tx)
        loss = loss + (out * torch.from_numpy(g)).sum()
        for f, gg in zip(state(fin), gf):
            loss = loss + (f * torch.from_numpy(gg)).sum()
    loss.backward()
    assert_close(dx1, t1.grad.numpy(), **TIGHT)
    assert_close(dx2, t2.grad.numpy(), **TIGHT)
    torch_grads = {n: p.grad.numpy() for n, p in reference.named_parameters()}
    assert set(torch_grads) == set(_grads(model))
    for name, grad in _grads(model).items():
        assert_close(grad, torch_grads[name], **TIGHT)


@pytest.mark.parametrize("make", [
    lambda: xrnn.ReLU(), lambda: xrnn.Tanh(), lambda: xrnn.Sigmoid(), lambda: xrnn.Identity(),
    lambda: xrnn.Sequential(xrnn.Linear(I, H, dtype="float64", seed=2), xrnn.Tanh(),
                            xrnn.Linear(H, I, dtype="float64", seed=3)),
], ids=["ReLU", "Tanh", "Sigmoid", "Identity", "Sequential"])
def test_every_module_pairs_each_backward_with_its_own_call(xp, rng, torch, make):
    """Two calls, two backwards in reverse: each gets its own call's input gradient
    (checked against the same module applied once per call)."""
    x1, x2 = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, I))
    g1, g2 = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, I))
    shared = make()
    shared(xrnn.asarray(x1))
    shared(xrnn.asarray(x2))
    d2 = shared.backward(xrnn.asarray(g2))
    d1 = shared.backward(xrnn.asarray(g1))
    for x, g, d in ((x1, g1, d1), (x2, g2, d2)):
        once = make()
        once(xrnn.asarray(x))
        assert_close(d, once.backward(xrnn.asarray(g)), **TIGHT)
    once_1, once_2 = make(), make()
    for module, x, g in ((once_1, x1, g1), (once_2, x2, g2)):
        module(xrnn.asarray(x))
        module.backward(xrnn.asarray(g))
    for (name, p), p1, p2 in zip(shared.named_parameters(), once_1.parameters(),
                                 once_2.parameters()):
        assert_close(p.grad, xrnn.to_numpy(p1.grad) + xrnn.to_numpy(p2.grad), **TIGHT)


def test_backward_without_an_unconsumed_call_raises(xp, rng):
    lin = xrnn.Linear(I, 2, dtype="float64", seed=0)
    x, g = _array(rng, B, I), _array(rng, B, 2)
    lin(x)
    lin.backward(g)
    with pytest.raises(RuntimeError, match="more times than forward"):
        lin.backward(g)
    rnn = xrnn.GRU(I, H, dtype="float64", seed=0)
    with xrnn.no_grad():
        rnn(_array(rng, T, B, I))
    with pytest.raises(RuntimeError, match=r"no_grad\(\) record nothing"):
        rnn.backward(_array(rng, T, B, H))


@pytest.mark.parametrize("kind", ["Linear", "Tanh", "RNN"])
def test_gradient_of_the_wrong_call_shape_raises_and_keeps_the_tape(xp, rng, kind):
    """The second call's output has another shape: a gradient shaped for the first call
    raises, names the expected shape, and leaves both records for a correct backward."""
    module = {"Linear": lambda: xrnn.Linear(I, H, dtype="float64", seed=0),
              "Tanh": xrnn.Tanh,
              "RNN": lambda: xrnn.RNN(I, H, dtype="float64", seed=0)}[kind]()
    first = module(_array(rng, T, B, I))
    second = module(_array(rng, T + 1, B, I))
    first, second = (y[0] if kind == "RNN" else y for y in (first, second))
    with pytest.raises(ValueError, match=rf"expected grad_output of shape \({T + 1}, {B}, {H if kind != 'Tanh' else I}\)"):
        module.backward(xrnn.get_namespace(first).ones_like(first))
    assert sum(module.unconsumed_calls().values()) == 2
    module.backward(xrnn.get_namespace(second).ones_like(second))
    module.backward(xrnn.get_namespace(first).ones_like(first))
    assert module.unconsumed_calls() == {}


def test_zero_grad_refuses_an_unconsumed_step_until_released(xp, rng):
    model = xrnn.Sequential(xrnn.LSTM(I, H, seed=0), xrnn.Linear(H, 2, seed=1))
    x = xrnn.asarray(rng.standard_normal((T, B, I)), dtype="float32")
    model(x)  # e.g. an evaluation forward outside no_grad
    with pytest.raises(RuntimeError, match=r"\(0: 1, 1: 1\).*release\(\).*no_grad"):
        model.zero_grad()
    assert model.release() is model
    model.zero_grad()  # now a new step may begin
    with xrnn.no_grad():
        model(x)
    model.zero_grad()  # forwards under no_grad record nothing


def test_tape_stays_bounded_in_an_inference_loop_without_no_grad(xp, rng):
    model = xrnn.Sequential(xrnn.GRU(I, H, seed=0), xrnn.ReLU(), xrnn.Linear(H, 2, seed=1))
    x = xrnn.asarray(rng.standard_normal((T, B, I)), dtype="float32")
    for _ in range(50):
        y = model(x)
    limit = xrnn.Module.tape_limit
    assert model.unconsumed_calls() == {"0": limit, "1": limit, "2": limit}
    g = xrnn.get_namespace(y).ones_like(y)
    for _ in range(limit):  # the last `limit` calls can still be backpropagated
        model.backward(g)
    with pytest.raises(RuntimeError, match=f"dropped.*tape_limit={limit}"):
        model.backward(g)


def test_tape_limit_is_per_module_and_settable(xp, rng):
    lin = xrnn.Linear(I, 2, dtype="float64", seed=0)
    lin.tape_limit = 100
    x = _array(rng, B, I)
    for _ in range(100):
        lin(x)
    assert lin.unconsumed_calls() == {"": 100}
    assert xrnn.Linear(I, 2).tape_limit == xrnn.Module.tape_limit


def test_moving_a_model_discards_its_records(xp, rng):
    lin = xrnn.Linear(I, 2, dtype="float64", seed=0)
    lin(_array(rng, B, I))
    lin.to("numpy")
    assert lin.unconsumed_calls() == {}


def test_shared_embedding_for_input_and_tied_output_weights_matches_torch(xp, rng, torch):
    """One Parameter in two modules: the embedding's table is also the output layer's
    weight, so its gradient is the sum of both uses; the shared embedding is also called
    twice (two token streams summed)."""
    V, E = 7, 5

    class TiedLM(xrnn.Module):
        def __init__(self):
            super().__init__()
            self.embed = xrnn.Embedding(V, E, dtype="float64", seed=0)
            self.gru = xrnn.GRU(E, E, dtype="float64", seed=1)
            self.head = xrnn.Linear(E, V, bias=False, dtype="float64", seed=2)
            self.head.weight = self.embed.weight  # tied

        def forward(self, a, b):
            output, _ = self.gru(self.embed(a) + self.embed(b))
            return self.head(output)

        def backward(self, grad_logits):
            grad = self.gru.backward(self.head.backward(grad_logits))
            self.embed.backward(grad)  # the second call (b) first
            self.embed.backward(grad)

    model = TiedLM()
    assert [n for n, _ in model.named_parameters()] == [
        "embed.weight", "gru.weight_ih_l0", "gru.weight_hh_l0", "gru.bias_ih_l0",
        "gru.bias_hh_l0"]  # the tied weight once, as torch lists it
    a, b = rng.integers(0, V, size=(T, B)), rng.integers(0, V, size=(T, B))
    g = rng.standard_normal((T, B, V))
    model(xrnn.asarray(a), xrnn.asarray(b))
    model.backward(xrnn.asarray(g))

    embed = torch.nn.Embedding(V, E, dtype=torch.float64)
    gru = torch.nn.GRU(E, E, dtype=torch.float64)
    head = torch.nn.Linear(E, V, bias=False, dtype=torch.float64)
    head.weight = embed.weight
    embed.load_state_dict(xrnn.io.torch_state_dict(model.embed))
    gru.load_state_dict(xrnn.io.torch_state_dict(model.gru))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    (head(gru(embed(ta) + embed(tb))[0]) * torch.from_numpy(g)).sum().backward()
    assert_close(model.embed.weight.grad, embed.weight.grad.numpy(), **TIGHT)
    for name, parameter in model.gru.named_parameters():
        assert_close(parameter.grad, dict(gru.named_parameters())[name].grad.numpy(), **TIGHT)
    assert model.unconsumed_calls() == {}
