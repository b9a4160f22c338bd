"""float16 models: forward and backward run in half precision and stay within measured
tolerances of a float64 reference that uses the same (float16-rounded) weights and data.

Tolerances, from the worst of 200 seeds on NumPy and torch (T=5, B=3, two bidirectional
layers): ``max|half - ref| / max(1, max|ref|)`` reached 1.3e-3 for outputs and final
states (about one float16 ulp of 1.0, 9.8e-4) and 5.1e-3 for gradients (parameter
gradients sum T*B products; NumPy's float16 matmul loses more there than torch's).
The checks allow about twice to three times that.
"""

from __future__ import annotations

import numpy as np
import pytest

import xrnn

FORWARD_TOL = 4e-3
GRAD_TOL = 1e-2
T, B, I, H = 5, 3, 4, 8
KINDS = [("RNN", dict(nonlinearity="tanh")), ("RNN", dict(nonlinearity="relu")),
         ("LSTM", {}), ("LSTM", dict(proj_size=3)), ("GRU", {})]


@pytest.fixture
def half(xp):
    """The backend's float16, or a skip where the backend has none."""
    if not hasattr(xp, "float16"):
        pytest.skip(f"{xrnn.get_backend()} has no float16: the Array API standard defines "
                    "none (the rejection is tested below)")
    return xp.float16


def assert_near(actual, reference, tol):
    """|actual - reference| <= tol * max(1, max|reference|), actual in float16."""
    a, r = xrnn.to_numpy(actual), np.asarray(xrnn.to_numpy(reference))
    assert a.dtype == np.float16 and a.shape == r.shape
    np.testing.assert_allclose(a.astype(np.float64), r, rtol=0,
                               atol=tol * max(1.0, float(np.max(np.abs(r)))))


def run(model, x, grad_output, dtype):
    """Forward and backward: [output, *final states, grad_input, *parameter grads]."""
    output, finals = model(xrnn.asarray(x, dtype=dtype))
    finals = finals if isinstance(finals, tuple) else (finals,)
    grad_x = model.backward(xrnn.asarray(grad_output, dtype=dtype))
    return [output, *finals], [grad_x, *(p.grad for p in model.parameters())]


@pytest.mark.parametrize("kind, options", KINDS, ids=[k + "-".join(["", *map(str, o.values())])
                                                      for k, o in KINDS])
def test_float16_forward_and_backward_match_float64(xp, half, rng, kind, options):
    # ReLU gradients jump where a pre-activation rounds across zero (about 4% of random
    # draws at this size): the seeds are fixed, so the check is reproducible.
    model = getattr(xrnn, kind)(I, H, num_layers=2, bidirectional=True, dtype="float16",
                                seed=0, **options)
    reference = getattr(xrnn, kind)(I, H, num_layers=2, bidirectional=True, dtype="float64",
                                    **options)
    reference.load_state_dict(model.state_dict())  # exact: float16 widens losslessly
    x = rng.standard_normal((T, B, I)).astype(np.float16)
    grad_output = rng.standard_normal((T, B, 2 * (options.get("proj_size") or H)))
    values, grads = run(model, x, grad_output.astype(np.float16), "float16")
    ref_values, ref_grads = run(reference, x, grad_output.astype(np.float16), "float64")
    for got, want in zip(values, ref_values):
        assert_near(got, want, FORWARD_TOL)
    for got, want in zip(grads, ref_grads):
        assert_near(got, want, GRAD_TOL)


def test_float16_linear_and_step(xp, half, rng):
    linear = xrnn.Linear(4, 3, dtype="float16", seed=0)
    reference = xrnn.Linear(4, 3, dtype="float64")
    reference.load_state_dict(linear.state_dict())
    x = rng.standard_normal((T, B, 4)).astype(np.float16)
    assert_near(linear(xrnn.asarray(x)), reference(xrnn.asarray(x, dtype="float64")),
                FORWARD_TOL)
    g = rng.standard_normal((T, B, 3)).astype(np.float16)
    assert_near(linear.backward(xrnn.asarray(g)),
                reference.backward(xrnn.asarray(g, dtype="float64")), GRAD_TOL)
    assert_near(linear.weight.grad, reference.weight.grad, GRAD_TOL)
    gru = xrnn.GRU(4, 8, dtype="float16", seed=0)
    y_t, h = gru.step(xrnn.asarray(x[0]))
    whole, _ = gru(xrnn.asarray(x[:1]))
    assert xrnn.to_numpy(h).dtype == np.float16
    np.testing.assert_array_equal(xrnn.to_numpy(y_t), xrnn.to_numpy(whole)[0])


def test_float16_rejected_where_the_standard_has_none():
    pytest.importorskip("array_api_strict", reason="array_api_strict (no float16) not installed")
    with xrnn.use_backend("array_api_strict"):
        for make in (lambda: xrnn.LSTM(3, 4, dtype="float16"),
                     lambda: xrnn.Linear(3, 4, dtype="float16")):
            with pytest.raises(TypeError, match=r"'float16' is not available on the "
                               r"'array_api_strict' backend.*defines no float16.*float32"):
                make()
        with pytest.raises(TypeError, match="'float16' is not available"):
            xrnn.asarray([1.0], dtype="float16")


def test_float16_input_into_float32_model(xp, half):
    with pytest.raises(TypeError, match=r"input dtype \S*float16 does not match the "
                       r"parameters' dtype \S*float32"):
        xrnn.RNN(3, 4)(xrnn.asarray(np.ones((2, 1, 3)), dtype="float16"))
