"""Modules the PyTorch way: attribute assignment registers children and parameters,
nested names match torch's, train/eval/to/zero_grad recurse, and a user's hand-written
backward agrees with torch autograd (float64, 1e-12) and with finite differences."""

from __future__ import annotations

import numpy as np
import pytest

import xrnn
from xrnn.testing import assert_close

T, B, F, H, C = 5, 3, 4, 6, 2
TIGHT = dict(rtol=1e-12, atol=1e-12)


class Classifier(xrnn.Module):
    """A bidirectional GRU encoder and a linear head on its final states:
    x (T, B, F) -> logits (B, C)."""

    def __init__(self, features: int, hidden: int, classes: int, dtype: str = "float32",
                 seed: int = 0) -> None:
        super().__init__()
        self.features, self.hidden, self.classes = features, hidden, classes
        self.dtype, self.seed = dtype, seed
        self.encoder = xrnn.GRU(features, hidden, bidirectional=True, dtype=dtype, seed=seed)
        self.head = xrnn.Linear(2 * hidden, classes, dtype=dtype, seed=seed + 1)

    def forward(self, x):
        _, h_n = self.encoder(x)  # (2, B, H): the forward and the reverse direction
        xp = xrnn.get_namespace(h_n)
        return self.head(xp.concat([h_n[0, ...], h_n[1, ...]], axis=-1))

    def backward(self, grad_logits):
        grad = self.head.backward(grad_logits)  # (B, 2H)
        xp = xrnn.get_namespace(grad)
        grad_h_n = xp.stack([grad[:, :self.hidden], grad[:, self.hidden:]])
        return self.encoder.backward(None, grad_h_n)

    def config(self):
        return dict(features=self.features, hidden=self.hidden, classes=self.classes,
                    dtype=self.dtype, seed=self.seed)


def _torch_classifier(torch, model: Classifier):
    class Reference(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.GRU(F, H, bidirectional=True, dtype=torch.float64)
            self.head = torch.nn.Linear(2 * H, C, dtype=torch.float64)

        def forward(self, x):
            _, h_n = self.encoder(x)
            return self.head(torch.cat([h_n[0], h_n[1]], dim=-1))

    reference = Reference()
    reference.load_state_dict(xrnn.io.torch_state_dict(model))  # strict: same names
    return reference


def test_attributes_register_children_and_parameters_with_torch_names(xp):
    model = Classifier(F, H, C)
    names = [name for name, _ in model.named_parameters()]
    assert names[:2] == ["encoder.weight_ih_l0", "encoder.weight_hh_l0"]
    assert names[-2:] == ["head.weight", "head.bias"]
    assert len(names) == 8 + 2
    assert [name for name, _ in model.named_modules()] == ["", "encoder", "head"]
    assert list(model.children()) == [model.encoder, model.head]
    assert model.num_parameters() == sum(int(np.prod(p.shape)) for p in model.parameters())
    model.scale = xrnn.Parameter(xrnn.asarray(np.ones(3)))
    assert "scale" in model.state_dict()
    model.scale = None  # unregistered again
    assert "scale" not in model.state_dict() and model.scale is None
    del model.head
    assert [name for name, _ in model.named_modules()] == ["", "encoder"]


def test_assigning_before_super_init_names_the_fix():
    class Broken(xrnn.Module):
        def __init__(self):
            self.lin = xrnn.Linear(2, 2)

    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\)"):
        Broken()


def test_assigning_a_plain_array_to_a_parameter_name_raises(xp):
    lin = xrnn.Linear(2, 3)
    with pytest.raises(TypeError, match="expected a Parameter or None"):
        lin.weight = xrnn.asarray(np.zeros((3, 2)), dtype="float32")


def test_train_eval_to_and_zero_grad_recurse(xp, rng):
    model = Classifier(F, H, C, dtype="float64")
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    logits = model(xrnn.asarray(rng.standard_normal((T, B, F))))
    model.backward(xrnn.get_namespace(logits).ones_like(logits))
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    model.to("numpy")
    assert {xrnn.backend.backend_of(p.data) for p in model.parameters()} == {"numpy"}


def test_hand_written_backward_matches_torch_autograd(xp, rng, torch):
    model = Classifier(F, H, C, dtype="float64", seed=3)
    reference = _torch_classifier(torch, model)
    x, g = rng.standard_normal((T, B, F)), rng.standard_normal((B, C))
    logits = model(xrnn.asarray(x))
    grad_x = model.backward(xrnn.asarray(g))
    tx = torch.tensor(x, requires_grad=True)
    expected = reference(tx)
    (expected * torch.from_numpy(g)).sum().backward()
    assert_close(logits, expected.detach().numpy(), **TIGHT)
    assert_close(grad_x, tx.grad.numpy(), **TIGHT)
    torch_grads = dict(reference.named_parameters())
    for name, parameter in model.named_parameters():
        assert_close(parameter.grad, torch_grads[name].grad.numpy(), **TIGHT)


def test_state_dict_round_trips_through_torch(xp, torch):
    model = Classifier(F, H, C, dtype="float64", seed=4)
    reference = _torch_classifier(torch, model)
    other = Classifier(F, H, C, dtype="float64", seed=5)
    other.load_state_dict(reference.state_dict())
    for (name, a), b in zip(model.named_parameters(), other.parameters()):
        np.testing.assert_array_equal(xrnn.to_numpy(a.data), xrnn.to_numpy(b.data))


def test_gradcheck_module_checks_a_hand_written_backward(xp, rng):
    model = Classifier(F, H, C, dtype="float64", seed=6)
    x = xrnn.asarray(rng.standard_normal((T, B, F)))
    assert xrnn.testing.gradcheck_module(model, x, max_checks=8)

    class WrongBackward(Classifier):
        def backward(self, grad_logits):
            grad_x = super().backward(grad_logits)
            self.head.bias.grad = 2 * self.head.bias.grad  # a deliberate bug
            return grad_x

    wrong = WrongBackward(F, H, C, dtype="float64", seed=6)
    with pytest.raises(AssertionError, match="head.bias"):
        xrnn.testing.gradcheck_module(wrong, x, max_checks=8)
