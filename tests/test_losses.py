"""Losses: values and gradients against ``torch.nn.functional``, error cases.

Every test takes the ``xp`` fixture and so runs once per available backend; PyTorch
(CPU) is the reference wherever values are compared.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import xrnn
from xrnn.backend import backend_of
from xrnn.losses import CrossEntropyLoss, MSELoss, cross_entropy, mse_loss
from xrnn.testing import assert_close

REDUCTIONS = ["mean", "sum", "none"]
TOL = {"float64": dict(rtol=1e-12, atol=1e-14), "float32": dict(rtol=1e-6, atol=1e-7)}
# logits shape (..., C); the target has the shape without the class axis
CE_SHAPES = [(5, 4), (3, 2, 6), (4,), (2, 1, 3, 2)]


def torch_cross_entropy(torch, logits: np.ndarray, target: np.ndarray, reduction: str):
    """torch's loss and gradient, with logits (..., C) flattened to torch's (N, C)."""
    classes = logits.shape[-1]
    t_logits = torch.tensor(logits.reshape(-1, classes), requires_grad=True)
    t_target = torch.tensor(target.reshape(-1), dtype=torch.int64)
    loss = torch.nn.functional.cross_entropy(t_logits, t_target, reduction=reduction)
    (loss.sum() if reduction == "none" else loss).backward()
    loss_np = loss.detach().numpy()
    if reduction == "none":
        loss_np = loss_np.reshape(target.shape)
    return loss_np, t_logits.grad.numpy().reshape(logits.shape)


def torch_mse(torch, prediction: np.ndarray, target: np.ndarray, reduction: str):
    t_input = torch.tensor(prediction, requires_grad=True)
    loss = torch.nn.functional.mse_loss(t_input, torch.tensor(target), reduction=reduction)
    (loss.sum() if reduction == "none" else loss).backward()
    return loss.detach().numpy(), t_input.grad.numpy()


def other_backend_array(data: np.ndarray):
    """``data`` on a backend other than the selected one."""
    other = "numpy" if xrnn.get_backend() != "numpy" else "array_api_strict"
    with xrnn.use_backend(other):
        return xrnn.asarray(data)


# -- cross-entropy ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", CE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cross_entropy_matches_torch(xp, torch, rng, shape, dtype):
    logits_np = rng.normal(scale=3.0, size=shape).astype(dtype)
    target_np = rng.integers(0, shape[-1], size=shape[:-1])
    backend = xrnn.get_backend()
    for reduction in REDUCTIONS:
        loss, grad = cross_entropy(xrnn.asarray(logits_np), xrnn.asarray(target_np), reduction)
        ref_loss, ref_grad = torch_cross_entropy(torch, logits_np, target_np, reduction)
        assert tuple(loss.shape) == (shape[:-1] if reduction == "none" else ()), reduction
        assert tuple(grad.shape) == shape
        assert loss.dtype == grad.dtype == getattr(xp, dtype)
        assert_close(loss, ref_loss, backend=backend, **TOL[dtype])
        assert_close(grad, ref_grad, backend=backend, **TOL[dtype])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_sequence_layout_matches_torch_class_axis_1(xp, torch, rng, reduction):
    # (T, B, C) here is torch's (N, C, d1) after moving the classes to axis 1
    logits_np = rng.normal(size=(4, 3, 5))
    target_np = rng.integers(0, 5, size=(4, 3))
    loss, grad = cross_entropy(xrnn.asarray(logits_np), xrnn.asarray(target_np), reduction)
    t_logits = torch.tensor(logits_np, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(t_logits.permute(0, 2, 1), torch.tensor(target_np),
                                            reduction=reduction)
    (ref.sum() if reduction == "none" else ref).backward()
    assert_close(loss, ref.detach().numpy(), **TOL["float64"])
    assert_close(grad, t_logits.grad.numpy(), **TOL["float64"])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_large_logits_stay_finite(xp, torch, reduction):
    logits_np = np.array([[1000.0, -1000.0, 0.0], [-1000.0, -1000.0, 1000.0],
                          [1000.0, 1000.0, -1000.0], [-1000.0, 999.0, 1000.0]])
    target_np = np.array([1, 2, 0, 1])
    loss, grad = cross_entropy(xrnn.asarray(logits_np), xrnn.asarray(target_np), reduction)
    host_loss, host_grad = xrnn.to_numpy(loss), xrnn.to_numpy(grad)
    assert np.all(np.isfinite(host_loss)) and np.all(np.isfinite(host_grad))
    ref_loss, ref_grad = torch_cross_entropy(torch, logits_np, target_np, reduction)
    assert_close(loss, ref_loss, **TOL["float64"])
    assert_close(grad, ref_grad, **TOL["float64"])
    if reduction == "none":  # -log softmax at the target: 2000, 0, log 2, 1 + log(1 + e^-1)
        assert_close(loss, np.array([2000.0, 0.0, np.log(2.0), np.log1p(np.exp(-1.0)) + 1.0]))


def test_cross_entropy_accepts_int32_targets(xp, rng):
    logits = xrnn.asarray(rng.normal(size=(6, 3)))
    target_np = rng.integers(0, 3, size=6)
    loss64, grad64 = cross_entropy(logits, xrnn.asarray(target_np))
    loss32, grad32 = cross_entropy(logits, xrnn.asarray(target_np, dtype="int32"))
    assert_close(loss32, xrnn.to_numpy(loss64), rtol=0, atol=0)
    assert_close(grad32, xrnn.to_numpy(grad64), rtol=0, atol=0)


def test_cross_entropy_mean_gradient_rows_sum_to_zero(xp, rng):
    logits = xrnn.asarray(rng.normal(size=(7, 5)))
    _, grad = cross_entropy(logits, xrnn.asarray(rng.integers(0, 5, size=7)), "sum")
    assert_close(xp.sum(grad, axis=-1), np.zeros(7), atol=1e-15)


# -- MSE ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", [(6,), (4, 3), (3, 2, 5), ()],
                         ids=lambda s: "x".join(map(str, s)) or "0d")
def test_mse_loss_matches_torch(xp, torch, rng, shape, dtype):
    prediction_np = rng.normal(size=shape).astype(dtype)
    target_np = rng.normal(size=shape).astype(dtype)
    backend = xrnn.get_backend()
    for reduction in REDUCTIONS:
        loss, grad = mse_loss(xrnn.asarray(prediction_np), xrnn.asarray(target_np), reduction)
        ref_loss, ref_grad = torch_mse(torch, prediction_np, target_np, reduction)
        assert tuple(loss.shape) == (shape if reduction == "none" else ()), reduction
        assert tuple(grad.shape) == shape
        assert loss.dtype == grad.dtype == getattr(xp, dtype)
        assert_close(loss, ref_loss, backend=backend, **TOL[dtype])
        assert_close(grad, ref_grad, backend=backend, **TOL[dtype])


# -- loss objects -------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loss_objects_return_loss_and_remember_gradient(xp, rng, reduction):
    logits = xrnn.asarray(rng.normal(size=(3, 2, 4)))
    target = xrnn.asarray(rng.integers(0, 4, size=(3, 2)))
    loss_fn = CrossEntropyLoss(reduction)
    loss = loss_fn(logits, target)
    ref_loss, ref_grad = cross_entropy(logits, target, reduction)
    assert_close(loss, xrnn.to_numpy(ref_loss), rtol=0, atol=0)
    assert_close(loss_fn.backward(), xrnn.to_numpy(ref_grad), rtol=0, atol=0)

    prediction, goal = xrnn.asarray(rng.normal(size=(5, 2))), xrnn.asarray(rng.normal(size=(5, 2)))
    mse = MSELoss(reduction)
    ref_loss, ref_grad = mse_loss(prediction, goal, reduction)
    assert_close(mse(prediction, goal), xrnn.to_numpy(ref_loss), rtol=0, atol=0)
    assert_close(mse.backward(), xrnn.to_numpy(ref_grad), rtol=0, atol=0)
    # a second forward replaces the remembered gradient
    mse(goal, prediction)
    assert_close(mse.backward(), -xrnn.to_numpy(ref_grad), rtol=0, atol=0)


@pytest.mark.parametrize("cls", [MSELoss, CrossEntropyLoss])
def test_loss_backward_before_forward_raises(xp, cls):
    with pytest.raises(RuntimeError, match="before a forward"):
        cls().backward()


@pytest.mark.parametrize("cls", [MSELoss, CrossEntropyLoss])
def test_loss_objects_reject_bad_reduction(xp, cls):
    with pytest.raises(ValueError, match="'mean', 'sum', 'none'.*'avg'"):
        cls("avg")


# -- errors -------------------------------------------------------------------------------

def test_bad_reduction_raises(xp, rng):
    x = xrnn.asarray(rng.normal(size=(2, 3)))
    with pytest.raises(ValueError, match="reduction must be one of.*'elementwise'"):
        mse_loss(x, x, "elementwise")
    with pytest.raises(ValueError, match="reduction must be one of.*None"):
        cross_entropy(x, xrnn.asarray(np.array([0, 1])), None)


def test_cross_entropy_rejects_float_targets(xp, rng):
    logits = xrnn.asarray(rng.normal(size=(2, 3)))
    with pytest.raises(TypeError, match="integer class indices.*float64"):
        cross_entropy(logits, xrnn.asarray(np.array([0.0, 1.0])))
    with pytest.raises(TypeError, match="integer class indices"):
        cross_entropy(logits, xrnn.asarray(np.array([True, False])))


@pytest.mark.parametrize("bad", [3, -1, 100])
def test_cross_entropy_rejects_out_of_range_targets(xp, rng, bad):
    logits = xrnn.asarray(rng.normal(size=(3, 3)))
    with pytest.raises(ValueError, match=r"\[0, 3\).*" + str(bad)):
        cross_entropy(logits, xrnn.asarray(np.array([0, bad, 1])))


@pytest.mark.parametrize("target_shape", [(4,), (2, 3), (3, 1), ()])
def test_cross_entropy_rejects_shape_mismatch(xp, rng, target_shape):
    logits = xrnn.asarray(rng.normal(size=(3, 5)))
    target = xrnn.asarray(np.zeros(target_shape, dtype=np.int64))
    expected = re.escape("expected target of shape (3,)") + ".*" + re.escape(f"got {target_shape}")
    with pytest.raises(ValueError, match=expected):
        cross_entropy(logits, target)


def test_cross_entropy_rejects_integer_or_empty_class_logits(xp):
    with pytest.raises(TypeError, match="logits must be a real floating array"):
        cross_entropy(xrnn.asarray(np.zeros((2, 3), dtype=np.int64)),
                      xrnn.asarray(np.array([0, 1])))
    with pytest.raises(ValueError, match="C >= 1"):
        cross_entropy(xrnn.asarray(np.zeros((2, 0))), xrnn.asarray(np.array([0, 1])))


def test_mse_rejects_shape_mismatch_without_broadcasting(xp, rng):
    prediction = xrnn.asarray(rng.normal(size=(4, 3)))
    for shape in [(4, 1), (3,), (1, 4, 3)]:
        with pytest.raises(ValueError, match=r"input's shape \(4, 3\)"):
            mse_loss(prediction, xrnn.asarray(rng.normal(size=shape)))


def test_mse_rejects_dtype_mismatch_and_integers(xp, rng):
    data = rng.normal(size=(2, 2))
    with pytest.raises(TypeError, match="target dtype .*float32.* does not match .*float64"):
        mse_loss(xrnn.asarray(data), xrnn.asarray(data, dtype="float32"))
    with pytest.raises(TypeError, match="target must be a real floating array"):
        mse_loss(xrnn.asarray(data), xrnn.asarray(np.zeros((2, 2), dtype=np.int64)))


def test_losses_reject_mixed_backends(xp, rng):
    data = rng.normal(size=(3, 2))
    here = xrnn.asarray(data)
    there = other_backend_array(data)
    assert backend_of(here) != backend_of(there)
    with pytest.raises(TypeError, match=f"{xrnn.get_backend()} array but target is a"):
        mse_loss(here, there)
    with pytest.raises(TypeError, match=f"logits is a {xrnn.get_backend()} array"):
        cross_entropy(here, other_backend_array(np.array([0, 1, 1])))
    with pytest.raises(TypeError, match="expected an array"):
        mse_loss(here, data.tolist())
