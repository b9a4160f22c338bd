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


@pytest.mark.parametrize("target", TARGETS)
def test_optimizer_state_moves_and_training_continues(xp, rng, target):
    model = xrnn.GRU(2, 3, dtype="float64", seed=0)
    optimizer = xrnn.optim.Adam(model.parameters(), lr=0.01)
    x = xrnn.asarray(rng.standard_normal((5, 2, 2)))
    for _ in range(2):
        out, _ = model(x)
        optimizer.zero_grad()
        model.backward(xrnn.get_namespace(out).ones_like(out))
        optimizer.step()
    reference = {n: xrnn.to_numpy(p.data).copy() for n, p in model.named_parameters()}
    model.to(target)
    optimizer.to(target)
    for state in optimizer.state.values():
        for value in state.values():
            if not isinstance(value, (int, float)):
                assert xrnn.backend.backend_of(value) == target
    with xrnn.use_backend(target):
        out, _ = model(xrnn.asarray(xrnn.to_numpy(x)))
        optimizer.zero_grad()
        model.backward(xrnn.get_namespace(out).ones_like(out))
        optimizer.step()  # would raise on mixed backends
    changed = [not np.array_equal(xrnn.to_numpy(p.data), reference[n])
               for n, p in model.named_parameters()]
    assert all(changed)


def test_to_rejects_unknown_backends(xp):
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        xrnn.RNN(2, 3).to("tpu")
