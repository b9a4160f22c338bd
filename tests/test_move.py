"""model.to(backend) and optimizer.to(backend): exact moves between backends."""

from __future__ import annotations

import numpy as np
import pytest

import xrnn
from xrnn.testing import assert_close

TARGETS = ["numpy", "array_api_strict", "torch"]


@pytest.mark.parametrize("target", TARGETS)
def test_model_to_moves_parameters_and_grads_exactly(xp, rng, target):
    model = xrnn.Sequential(xrnn.LSTM(3, 5, 2, proj_size=2, seed=0), xrnn.Linear(2, 1, seed=1))
    x = rng.standard_normal((4, 2, 3)).astype("float32")
    y = model(xrnn.asarray(x))
    model.backward(xrnn.get_namespace(y).ones_like(y))
    before = {n: (xrnn.to_numpy(p.data).copy(), xrnn.to_numpy(p.grad).copy())
              for n, p in model.named_parameters()}
    assert model.to(target) is model
    for name, parameter in model.named_parameters():
        assert xrnn.backend.backend_of(parameter.data) == target
        assert xrnn.backend.backend_of(parameter.grad) == target
        np.testing.assert_array_equal(xrnn.to_numpy(parameter.data), before[name][0])
        np.testing.assert_array_equal(xrnn.to_numpy(parameter.grad), before[name][1])
    with xrnn.use_backend(target):
        assert_close(model(xrnn.asarray(x)), xrnn.to_numpy(y), rtol=1e-6, atol=1e-6)


OPTIMIZERS = {"sgd-momentum": lambda ps: xrnn.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
              "adam": lambda ps: xrnn.optim.Adam(ps, lr=0.01)}


def trained_twin(make_optimizer, x, steps: int = 2):
    """A GRU and its optimizer after ``steps`` steps on ``x``: the same every call."""
    model = xrnn.GRU(2, 3, dtype="float64", seed=0)
    optimizer = make_optimizer(model.parameters())
    for _ in range(steps):
        out, _ = model(xrnn.asarray(x))
        optimizer.zero_grad()
        model.backward(xrnn.get_namespace(out).ones_like(out))
        optimizer.step()
    return model, optimizer


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("target", TARGETS)
def test_optimizer_to_keeps_the_state_and_the_next_step(xp, rng, target, name):
    """After model.to / optimizer.to, the state (momentum buffer, or Adam's moments and
    step count) equals an unmoved twin's bit for bit, and one more step with the same
    gradients gives the twin's parameters bit for bit (the updates are elementwise, so
    every backend rounds them alike): training goes on where it left off."""
    x = rng.standard_normal((5, 2, 2))
    moved, moved_optimizer = trained_twin(OPTIMIZERS[name], x)
    twin, twin_optimizer = trained_twin(OPTIMIZERS[name], x)
    assert moved.to(target) is moved and moved_optimizer.to(target) is moved_optimizer

    assert sorted(moved_optimizer.state) == sorted(twin_optimizer.state) == list(range(4))
    for index, state in twin_optimizer.state.items():
        assert sorted(moved_optimizer.state[index]) == sorted(state)
        for key, value in state.items():
            got = moved_optimizer.state[index][key]
            if isinstance(value, (int, float)):
                assert got == value, f"state[{index}][{key!r}]"
            else:
                assert xrnn.backend.backend_of(got) == target
                np.testing.assert_array_equal(xrnn.to_numpy(got), xrnn.to_numpy(value),
                                              err_msg=f"state[{index}][{key!r}]")

    grads = [rng.standard_normal(tuple(p.shape)) for p in twin.parameters()]
    for parameter, grad in zip(twin.parameters(), grads, strict=True):
        parameter.grad = xrnn.asarray(grad)
    twin_optimizer.step()
    with xrnn.use_backend(target):
        for parameter, grad in zip(moved.parameters(), grads, strict=True):
            parameter.grad = xrnn.asarray(grad)
        moved_optimizer.step()  # would raise on mixed backends
    for (name_, got), (_, want) in zip(moved.named_parameters(), twin.named_parameters(),
                                       strict=True):
        assert xrnn.backend.backend_of(got.data) == target
        np.testing.assert_array_equal(xrnn.to_numpy(got.data), xrnn.to_numpy(want.data),
                                      err_msg=name_)


def test_to_rejects_unknown_backends(xp):
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        xrnn.RNN(2, 3).to("tpu")
