"""Optimizers and gradient clipping: step-for-step parity with ``torch.optim``.

Every test takes the ``xp`` fixture and so runs once per available backend; PyTorch
(CPU, float64) is the reference wherever values are compared.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import xrnn
from xrnn.nn import Parameter
from xrnn.optim import SGD, Adam, clip_grad_norm_
from xrnn.testing import assert_close

SHAPES = [(3, 4), (5,), (2, 3, 2), ()]
STEPS = 20
TOL = {"float64": dict(rtol=1e-12, atol=1e-14), "float32": dict(rtol=1e-6, atol=1e-7)}

OPTIMIZER_CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3)),
    ("SGD", dict(lr=0.1, weight_decay=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.02, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, betas=(0.5, 0.9), eps=1e-3)),
]


def host(array) -> np.ndarray:
    return np.array(xrnn.to_numpy(array), copy=True)


def initial_arrays(dtype: str = "float64") -> list[np.ndarray]:
    rng = np.random.default_rng(2024)
    return [rng.normal(size=shape).astype(dtype) for shape in SHAPES]


def gradient_sequence(dtype: str = "float64", steps: int = STEPS) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(99)
    return [[rng.normal(scale=2.0, size=shape).astype(dtype) for shape in SHAPES]
            for _ in range(steps)]


def make_pair(torch, name: str, config: dict, dtype: str = "float64"):
    """xrnn Parameters + optimizer and torch Parameters + optimizer, same start."""
    arrays = initial_arrays(dtype)
    params = [Parameter(xrnn.asarray(a)) for a in arrays]
    tensors = [torch.nn.Parameter(torch.tensor(a)) for a in arrays]
    ours = {"SGD": SGD, "Adam": Adam}[name](params, **config)
    theirs = getattr(torch.optim, name)(tensors, **config)
    return params, ours, tensors, theirs


def set_grads(params, tensors, torch, grads) -> None:
    for p, t, g in zip(params, tensors, grads):
        if g is None:
            p.grad, t.grad = None, None
        else:
            p.grad, t.grad = xrnn.asarray(g), torch.tensor(g)


@pytest.mark.parametrize("name,config", OPTIMIZER_CONFIGS,
                         ids=[f"{n}-" + (",".join(f"{k}={v}" for k, v in c.items()) or "default")
                              for n, c in OPTIMIZER_CONFIGS])
def test_optimizer_matches_torch_step_for_step(xp, torch, name, config):
    params, ours, tensors, theirs = make_pair(torch, name, config)
    start = [host(p.data) for p in params]
    for step, grads in enumerate(gradient_sequence(), start=1):
        set_grads(params, tensors, torch, grads)
        ours.step()
        theirs.step()
        if step in (1, 2, STEPS):
            for p, t in zip(params, tensors):
                assert_close(p.data, t.detach().numpy(), backend=xrnn.get_backend(),
                             **TOL["float64"])
    for p, s, shape in zip(params, start, SHAPES):
        assert p.shape == shape and p.data.dtype == xp.float64
        assert np.max(np.abs(host(p.data) - s)) > 1e-3  # the parameters did move


@pytest.mark.parametrize("name,config", [("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
                                         ("Adam", dict(lr=0.01, weight_decay=0.1))])
def test_optimizer_matches_torch_in_float32(xp, torch, name, config):
    params, ours, tensors, theirs = make_pair(torch, name, config, dtype="float32")
    for grads in gradient_sequence("float32"):
        set_grads(params, tensors, torch, grads)
        ours.step()
        theirs.step()
    for p, t in zip(params, tensors):
        assert p.data.dtype == xp.float32
        assert_close(p.data, t.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,config", [("SGD", dict(lr=0.1, momentum=0.9)),
                                         ("Adam", dict(lr=0.01))])
def test_parameter_without_grad_is_left_untouched(xp, torch, name, config):
    params, ours, tensors, theirs = make_pair(torch, name, config)
    frozen_data = params[1].data
    frozen_before = host(frozen_data)
    for step, grads in enumerate(gradient_sequence(steps=8)):
        grads = list(grads)
        grads[1] = None  # never gets a gradient
        if step in (3, 4):
            grads[0] = None  # skips two steps: no momentum / moment / step-count update
        set_grads(params, tensors, torch, grads)
        ours.step()
        theirs.step()
    assert params[1].data is frozen_data
    assert_close(params[1].data, frozen_before, rtol=0, atol=0)
    assert 1 not in ours.state or not ours.state[1]
    if name == "Adam":
        assert ours.state[0]["step"] == 6
    for p, t in zip(params, tensors):
        assert_close(p.data, t.detach().numpy(), **TOL["float64"])


@pytest.mark.parametrize("name,config", [("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.1)),
                                         ("Adam", dict(lr=0.1))])
def test_step_rebinds_data_and_never_mutates_arrays(xp, name, config, rng):
    params = [Parameter(xrnn.asarray(rng.normal(size=(3, 2)))) for _ in range(2)]
    optimizer = SGD(params, **config) if name == "SGD" else Adam(params, **config)
    old = [p.data for p in params]
    old_host = [host(a) for a in old]
    grads = [xrnn.asarray(rng.normal(size=(3, 2))) for _ in params]
    grads_host = [host(g) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g
    optimizer.step()
    optimizer.step()
    for p, a, a_host, g, g_host in zip(params, old, old_host, grads, grads_host):
        assert p.data is not a
        assert xrnn.backend.backend_of(p.data) == xrnn.get_backend()
        assert_close(a, a_host, rtol=0, atol=0)  # the previous arrays are unchanged
        assert_close(g, g_host, rtol=0, atol=0)  # and so are the gradients
        assert p.grad is g


def test_zero_grad_sets_every_grad_to_none(xp, rng):
    params = [Parameter(xrnn.asarray(rng.normal(size=s))) for s in SHAPES]
    for p in params[:3]:
        p.grad = xp.ones_like(p.data)
    for optimizer in (SGD(params, lr=0.1), Adam(params)):
        optimizer.zero_grad()
        assert all(p.grad is None for p in params)
        before = [p.data for p in params]
        optimizer.step()  # nothing to do without gradients
        assert all(p.data is b for p, b in zip(params, before))
        for p in params:
            p.grad = xp.ones_like(p.data)


def test_optimizers_take_model_parameters(xp):
    model = xrnn.Linear(3, 2)
    optimizer = SGD(model.parameters(), lr=0.5)
    weight = model.weight
    before = host(weight.data)
    weight.grad = xp.ones_like(weight.data)
    optimizer.step()
    assert_close(weight.data, before - 0.5)


INVALID_HYPERPARAMETERS = [
    (SGD, dict(lr=-0.1), "lr >= 0, got -0.1"),
    (SGD, dict(lr=0.1, momentum=-0.5), "momentum >= 0, got -0.5"),
    (SGD, dict(lr=0.1, weight_decay=-1e-4), "weight_decay >= 0, got -0.0001"),
    (SGD, dict(lr=0.1, nesterov=True), "Nesterov.*momentum=0.0"),
    (SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "Nesterov.*dampening=0.1"),
    (Adam, dict(lr=-1e-3), "lr >= 0, got -0.001"),
    (Adam, dict(eps=-1e-8), "eps >= 0, got -1e-08"),
    (Adam, dict(betas=(1.0, 0.999)), "index 0.*\\[0, 1\\), got 1.0"),
    (Adam, dict(betas=(-0.1, 0.999)), "index 0.*got -0.1"),
    (Adam, dict(betas=(0.9, 1.0)), "index 1.*got 1.0"),
    (Adam, dict(weight_decay=-0.1), "weight_decay >= 0, got -0.1"),
    (Adam, dict(lr=float("nan")), "lr >= 0, got nan"),
]


@pytest.mark.parametrize("cls,kwargs,message", INVALID_HYPERPARAMETERS,
                         ids=[f"{c.__name__}-{m[:20]}" for c, _, m in INVALID_HYPERPARAMETERS])
def test_invalid_hyperparameters_raise(xp, cls, kwargs, message):
    params = [Parameter(xp.zeros(3))]
    with pytest.raises(ValueError, match=message):
        cls(params, **kwargs)


def test_invalid_parameter_lists_and_grads_raise(xp):
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match="item 1 is a"):
        Adam([Parameter(xp.zeros(2)), xp.zeros(2)])
    with pytest.raises(TypeError, match="iterable of xrnn.nn.Parameter"):
        SGD(3, lr=0.1)
    with pytest.raises(TypeError, match="lr must be a real number"):
        SGD([Parameter(xp.zeros(2))], lr="0.1")
    p = Parameter(xp.zeros(2, dtype=xp.float64))
    with pytest.raises(ValueError, match="more than once"):
        SGD([p, p], lr=0.1)
    optimizer = SGD([p], lr=0.1)
    p.grad = xp.zeros(3, dtype=xp.float64)
    with pytest.raises(ValueError, match=r"grad of shape \(2,\), got \(3,\)"):
        optimizer.step()
    p.grad = xp.zeros(2, dtype=xp.float32)
    with pytest.raises(TypeError, match="grad dtype .*float32"):
        optimizer.step()


# -- clip_grad_norm_ ----------------------------------------------------------------------

@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e3], ids=["clips", "no-clip"])
def test_clip_grad_norm_matches_torch(xp, torch, max_norm, norm_type):
    arrays = initial_arrays()
    grads = gradient_sequence(steps=1)[0]
    params = [Parameter(xrnn.asarray(a)) for a in arrays]
    tensors = [torch.nn.Parameter(torch.tensor(a)) for a in arrays]
    grads[2] = None  # skipped by both
    set_grads(params, tensors, torch, grads)

    total = clip_grad_norm_(params, max_norm, norm_type=norm_type)
    expected = torch.nn.utils.clip_grad_norm_(tensors, max_norm, norm_type=norm_type)
    assert tuple(total.shape) == ()
    assert_close(total, expected.numpy(), backend=xrnn.get_backend(), **TOL["float64"])
    flat = np.concatenate([g.ravel() for g in grads if g is not None])
    assert_close(total, np.linalg.norm(flat, ord=norm_type), **TOL["float64"])
    for p, t, g in zip(params, tensors, grads):
        if g is None:
            assert p.grad is None
            continue
        assert_close(p.grad, t.grad.numpy(), **TOL["float64"])
        if max_norm > float(total):
            assert_close(p.grad, g, rtol=0, atol=0)  # untouched when no clipping is needed
    clipped = np.concatenate([host(p.grad).ravel() for p in params if p.grad is not None])
    expected_norm = min(max_norm, float(total))
    assert np.linalg.norm(clipped, ord=norm_type) == pytest.approx(expected_norm, rel=1e-5)


def test_clip_grad_norm_float32_single_parameter_and_no_grads(xp, torch, rng):
    data = rng.normal(size=(4, 3)).astype("float32")
    grad = (10.0 * rng.normal(size=(4, 3))).astype("float32")
    p = Parameter(xrnn.asarray(data))
    p.grad = xrnn.asarray(grad)
    t = torch.nn.Parameter(torch.tensor(data))
    t.grad = torch.tensor(grad)
    total = clip_grad_norm_(p, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(t, 1.0)
    assert total.dtype == p.grad.dtype == xp.float32
    assert_close(total, expected.numpy(), **TOL["float32"])
    assert_close(p.grad, t.grad.numpy(), **TOL["float32"])

    p.grad = None
    zero = clip_grad_norm_([p], 1.0)
    assert xrnn.backend.backend_of(zero) == xrnn.get_backend() and tuple(zero.shape) == ()
    assert float(zero) == 0.0 and p.grad is None


def test_clip_grad_norm_rejects_bad_arguments(xp):
    p = Parameter(xp.zeros(2, dtype=xp.float64))
    p.grad = xp.ones(2, dtype=xp.float64)
    with pytest.raises(ValueError, match="max_norm must be >= 0, got -1.0"):
        clip_grad_norm_([p], -1.0)
    with pytest.raises(ValueError, match="norm_type must be a positive number or inf, got 0.0"):
        clip_grad_norm_([p], 1.0, norm_type=0)
    q = Parameter(xp.zeros(2, dtype=xp.float32))
    q.grad = xp.ones(2, dtype=xp.float32)
    with pytest.raises(TypeError, match="one backend and dtype"):
        clip_grad_norm_([p, q], 1.0)
    p.grad = xp.asarray([math.inf, 1.0], dtype=xp.float64)
    with pytest.raises(RuntimeError, match="total norm"):
        clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    assert_close(p.grad, np.array([math.inf, 1.0]))  # unchanged on error


@pytest.mark.parametrize("make", [lambda ps: xrnn.optim.Adam(ps, lr=0.01),
                                  lambda ps: xrnn.optim.SGD(ps, lr=0.1, momentum=0.9)],
                         ids=["Adam", "SGD"])
def test_optimizer_state_survives_save_and_load(xp, rng, tmp_path, make):
    """Resuming: the state written by xrnn.save and restored into a fresh optimizer
    gives the next step of the uninterrupted run, bit for bit."""
    def run(model, optimizer, steps):
        for _ in range(steps):
            for p in model.parameters():
                p.grad = xrnn.asarray(np.cos(xrnn.to_numpy(p.data)), dtype="float64")
            optimizer.step()

    model = xrnn.Linear(3, 2, dtype="float64", seed=0)
    optimizer = make(list(model.parameters()))
    run(model, optimizer, 3)
    xrnn.save(model, tmp_path / "model.npz")
    xrnn.save(optimizer.state_dict(), tmp_path / "optimizer.npz")
    resumed = xrnn.load(tmp_path / "model.npz")
    resumed_optimizer = make(list(resumed.parameters()))
    resumed_optimizer.load_state_dict(xrnn.load(tmp_path / "optimizer.npz"))
    run(model, optimizer, 2)
    run(resumed, resumed_optimizer, 2)
    for a, b in zip(model.parameters(), resumed.parameters()):
        np.testing.assert_array_equal(xrnn.to_numpy(a.data), xrnn.to_numpy(b.data))


def test_optimizer_load_state_dict_checks_before_writing(xp):
    model = xrnn.Linear(3, 2, dtype="float64", seed=0)
    optimizer = xrnn.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match=r"expected '<index>.<key>' with index < 2"):
        optimizer.load_state_dict({"7.exp_avg": np.zeros((2, 3))})
    with pytest.raises(ValueError, match=r"has shape \(3, 2\); expected the parameter's \(2, 3\)"):
        optimizer.load_state_dict({"0.step": np.asarray(1), "0.exp_avg": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="0-d integer step count"):
        optimizer.load_state_dict({"0.step": np.zeros(2)})
    assert optimizer.state == {}
