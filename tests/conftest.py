"""The ``xp`` fixture: every test that takes it runs once per installed backend.

``XRNN_TEST_BACKENDS=numpy,torch`` narrows the list; an unavailable backend is
reported as SKIPPED with the reason (no package, no CUDA device).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import xrnn
from xrnn import backend
from xrnn.testing import assert_close

#: float64 gradients against torch autograd
GRAD = dict(rtol=1e-9, atol=1e-12)


def _selected_backends() -> list[str]:
    raw = os.environ.get("XRNN_TEST_BACKENDS", "")
    if not raw.strip():
        return list(backend.BACKENDS)
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in backend.BACKENDS]
    if unknown:
        raise pytest.UsageError(f"XRNN_TEST_BACKENDS names unknown backends {unknown}; "
                                f"expected names from {backend.BACKENDS}")
    return names


def _backend_params() -> list:
    params = []
    available = backend.available_backends()
    for name in _selected_backends():
        reason = available[name]
        marks = [pytest.mark.skip(reason=f"{name} unavailable: {reason}")] if reason else []
        params.append(pytest.param(name, id=name, marks=marks))
    return params


@pytest.fixture(params=_backend_params())
def xp(request):
    """The namespace of one backend, selected for the duration of the test."""
    with backend.use_backend(request.param) as namespace:
        yield namespace


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def torch():
    """torch as the reference, single-threaded here: its tiny ops otherwise stall for
    milliseconds on a busy machine, waiting on the second thread."""
    torch = pytest.importorskip("torch", reason="torch is the parity reference (xrnn[parity])")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


def torch_rnn_like(model, dtype: str):
    """The torch module (``nn.RNN``, ``nn.LSTM`` or ``nn.GRU``) with ``model``'s
    configuration and weights, in ``dtype``, in eval mode."""
    torch = pytest.importorskip("torch", reason="torch is the parity reference (xrnn[parity])")
    options = dict(num_layers=model.num_layers, bias=model.bias, batch_first=model.batch_first,
                   dropout=model.dropout, bidirectional=model.bidirectional,
                   dtype=getattr(torch, dtype))
    kind = type(model).__name__
    if kind == "RNN":
        options["nonlinearity"] = model.nonlinearity
    if kind == "LSTM":
        options["proj_size"] = model.proj_size
    reference = getattr(torch.nn, kind)(model.input_size, model.hidden_size, **options)
    reference.load_state_dict(xrnn.io.torch_state_dict(model))
    return reference.eval()


def backward_random_projection(rng, output, finals):
    """Backpropagate ``sum(output * G) + sum_k sum(finals[k] * G_k)`` through torch with
    random G, G_k, and return them as NumPy arrays: the gradients xrnn's backward takes."""
    torch = pytest.importorskip("torch", reason="torch autograd is the gradient reference")
    grad_out = rng.standard_normal(tuple(output.shape))
    grad_finals = [rng.standard_normal(tuple(f.shape)) for f in finals]
    loss = (output * torch.from_numpy(grad_out)).sum()
    for final, grad in zip(finals, grad_finals):
        loss = loss + (final * torch.from_numpy(grad)).sum()
    loss.backward()
    return grad_out, grad_finals


def assert_every_gradient(model, expected, tolerance=GRAD):
    """Every parameter of ``model`` has a ``.grad`` equal to ``expected[name]`` (name ->
    array or tensor), and ``expected`` names exactly these parameters, in order."""
    parameters = dict(model.named_parameters())
    assert list(parameters) == list(expected)
    for name, parameter in parameters.items():
        try:
            assert_close(parameter.grad, expected[name], **tolerance)
        except AssertionError as error:
            raise AssertionError(f"gradient of {name}: {error}") from None


def run_packed(reference, x, lengths, batch_first: bool):
    """torch's run of ``reference`` on the padded tensor ``x`` packed with ``lengths``
    (unsorted, ``enforce_sorted=False``): ``(padded output, finals)``, the output padded
    back to ``x``'s time length."""
    torch = pytest.importorskip("torch", reason="torch is the parity reference (xrnn[parity])")
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths),
                                                     batch_first=batch_first,
                                                     enforce_sorted=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, finals = reference(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first,
                                                    total_length=x.shape[1 if batch_first else 0])
    return out, finals


def run_with_xrnn_kernels(value: str | None, code: str) -> str:
    """``code`` run by a fresh interpreter (``XRNN_KERNELS`` is read at import) with
    ``XRNN_KERNELS=value`` (unset for ``None``); its stripped standard output."""
    env = {k: v for k, v in os.environ.items() if k != "XRNN_KERNELS"}
    if value is not None:
        env["XRNN_KERNELS"] = value
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


#: For modules that test the NumPy kernels (backend-independent): run them in the numpy
#: leg only (the whole suite runs once per backend).
numpy_leg_only = pytest.mark.skipif("numpy" not in _selected_backends(),
                                    reason="the NumPy kernels' tests run in the numpy leg only")


def _kernel_results(model, x, state, grad_out, grad_finals, *, kernels, counter, **call):
    """{name: array} of the output, final states, grad of x, of the initial states and of
    every parameter, under ``kernels_enabled(kernels)``; and how much ``counter`` (a
    ``(module, attribute)`` pair counting a kernel's layers) grew."""
    from xrnn import _kernels

    module, attribute = counter
    before = getattr(module, attribute)
    with _kernels.kernels_enabled(kernels):
        model.zero_grad()
        output, finals = model(x, state, **call)
        grad_x, grad_state = model.backward(grad_out, grad_finals, return_state_grad=True)
    flat = lambda s: list(s) if isinstance(s, tuple) else [s]  # noqa: E731
    results = {"output": output, "grad of x": grad_x}
    results |= {f"final state {k}": a for k, a in enumerate(flat(finals))}
    results |= {f"grad of initial state {k}": a for k, a in enumerate(flat(grad_state))}
    results |= {f"grad of {n}": p.grad for n, p in model.named_parameters()}
    return results, getattr(module, attribute) - before


def compare_kernel_with_generic(build, x, *, kernels, counter, num_layers, training=True,
                                given_state=True, final_grads=(True, True), tolerance=1e-12,
                                **call) -> dict:
    """A kernel (``kernels_enabled(kernels)``) against the generic path, NumPy backend:
    ``build()`` makes the model (the same seed each time: the same weights, and in
    training the same masks), which runs on ``x`` (and ``call``: ``lengths``, ``reset``)
    from random initial states (``given_state``) to random output and final-state
    gradients (``final_grads``, per state). Everything :func:`_kernel_results` lists must
    agree within ``tolerance`` in ``x``'s dtype: relative, and absolute in units of the
    array's largest value (at least 1), since two orders of summation round by amounts
    that scale with the terms summed, not with each result. ``counter`` must count every
    layer on the kernel, none on the generic path. Returns the kernel's results."""
    dtype = x.dtype
    draw = np.random.default_rng(7)
    with backend.use_backend("numpy"):
        with xrnn.no_grad():  # the shapes, from a model of its own (eval: draws no mask)
            output, finals = build().eval()(x, **call)
        finals = finals if isinstance(finals, tuple) else (finals,)
        state = tuple(draw.standard_normal(f.shape).astype(dtype) for f in finals)
        grad_finals = tuple(draw.standard_normal(f.shape).astype(dtype) if wanted else None
                            for f, wanted in zip(finals, final_grads))
        if len(finals) == 1:
            state, grad_finals = state[0], grad_finals[0]
        grad_out = draw.standard_normal(output.shape).astype(dtype)
        runs = [_kernel_results(build().train(training), x, state if given_state else None,
                                grad_out, grad_finals, kernels=mode, counter=counter, **call)
                for mode in (kernels, False)]
    (fast, ran), (generic, none) = runs
    assert (ran, none) == (num_layers, 0), f"{counter[0].__name__}.{counter[1]}: {ran}, {none}"
    assert list(fast) == list(generic)
    for name, got in fast.items():
        assert got.dtype == dtype, name
        try:
            scale = max(1.0, float(np.max(np.abs(generic[name]), initial=0.0)))
            assert_close(got, generic[name], rtol=tolerance, atol=tolerance * scale)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None
    return fast


def move_layernorm_weights(model):
    """``model`` with its LayerNorm weights and biases, if any, moved off their init (1
    and 0), so that a kernel that ignored them would fail."""
    for name, p in model.named_parameters():
        if name.startswith("ln_"):
            p.data = p.data + 0.3 * np.cos(np.arange(p.data.size)).reshape(p.data.shape)
    return model


def compare_forward_without_tape(build, x, *, counter, num_layers, kernels="numpy",
                                 tolerance=1e-12, state=(), **call) -> None:
    """Under ``no_grad`` (``keep=False``: one step's buffers, reused) the kernels
    (``kernels_enabled(kernels)``: the NumPy kernels by default, counted by ``counter``, a
    ``(module, attribute)`` pair) give the generic path's output and final states, in
    ``x``'s dtype, within ``tolerance``; ``build()`` as in
    :func:`compare_kernel_with_generic`, already in the wanted mode; ``state`` the
    positional initial state, if any."""
    from xrnn import _kernels

    module, attribute = counter
    results = []
    with backend.use_backend("numpy"), xrnn.no_grad():
        for enabled in (kernels, False):
            model = build()
            before = getattr(module, attribute)
            with _kernels.kernels_enabled(enabled):
                output, finals = model(x, *state, **call)
            finals = finals if isinstance(finals, tuple) else (finals,)
            results.append(([output, *finals], getattr(module, attribute) - before))
    (fast, ran), (generic, none) = results
    assert (ran, none) == (num_layers, 0)
    for got, want in zip(fast, generic):
        assert got.dtype == x.dtype
        assert_close(got, want, rtol=tolerance, atol=tolerance)


def reset_steps(rng, steps: int, batch: int) -> np.ndarray:
    """(steps, batch) booleans: random resets, and one at the first and at the last step."""
    reset = rng.random((steps, batch)) < 0.3
    reset[0, 0] = reset[steps - 1, 1] = True
    return reset


def assert_pairwise(grid) -> None:
    """Every pair of values of any two factors (columns) of ``grid`` occurs in a row."""
    factors = list(zip(*grid))
    for a, b in itertools.combinations(range(len(factors)), 2):
        pairs = set(zip(factors[a], factors[b]))
        assert len(set(factors[a])) > 1, a
        assert pairs == set(itertools.product(set(factors[a]), set(factors[b]))), (a, b)
