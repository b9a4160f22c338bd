"""The fast paths in ``xrnn._kernels`` against the generic driver they replace.

The generic path is itself checked against torch elsewhere; here every kernel must
give the generic path's outputs, final states and all gradients to rounding, with
every option the driver has (layers, directions, bias, projection, lengths, given
initial states and final-state gradients, dropout).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import xrnn
from xrnn import _kernels
from xrnn._kernels import numpy_layer
from xrnn.functional.cells import ELMAN_CELLS, GRU_CELL, LSTM_CELL
from xrnn.testing import assert_close

from .conftest import run_with_xrnn_kernels

CASES = [("RNN", {"nonlinearity": n}) for n in ("tanh", "relu")] + [
    ("LSTM", {}), ("LSTM", {"proj_size": 3}), ("GRU", {})]
GRID = list(itertools.product(range(len(CASES)), [1, 2], [False, True], [False, True],
                              [False, True]))
T, B, I, H = 5, 3, 4, 6


def _run(model, x, state, lengths, grad_out, grad_finals, fast: bool):
    """Output, final states, grad of x, of the initial states and of every parameter."""
    with _kernels.kernels_enabled("numpy" if fast else False):  # the NumPy kernel itself
        model.zero_grad()
        output, finals = model(x, state, lengths=lengths)
        grad_x, grad_state = model.backward(grad_out, grad_finals, return_state_grad=True)
    flat = lambda s: list(s) if isinstance(s, tuple) else [s]  # noqa: E731
    return ([output, *flat(finals), grad_x, *flat(grad_state)]
            + [p.grad for _, p in model.named_parameters()])


@pytest.mark.parametrize("case, num_layers, bidirectional, bias, with_lengths", GRID,
                         ids=[f"{CASES[c][0]}{CASES[c][1] or ''}-{L}-{d}-{b}-{n}"
                              for c, L, d, b, n in GRID])
def test_numpy_kernel_matches_generic_path(rng, case, num_layers, bidirectional, bias,
                                           with_lengths):
    kind, options = CASES[case]
    with xrnn.backend.use_backend("numpy"):
        model = getattr(xrnn, kind)(I, H, num_layers, bias=bias, bidirectional=bidirectional,
                                    dtype="float64", seed=3, **options)
        x = rng.standard_normal((T, B, I))
        with xrnn.no_grad():  # only for the shapes
            output, finals = model(x)
        finals = finals if isinstance(finals, tuple) else (finals,)
        state = tuple(rng.standard_normal(f.shape) for f in finals)
        grad_finals = tuple(rng.standard_normal(f.shape) for f in finals)
        if kind != "LSTM":
            state, grad_finals = state[0], grad_finals[0]
        grad_out = rng.standard_normal(output.shape)
        lengths = [2, T, 1] if with_lengths else None
        fast = _run(model, x, state, lengths, grad_out, grad_finals, fast=True)
        generic = _run(model, x, state, lengths, grad_out, grad_finals, fast=False)
    assert len(fast) == len(generic)
    for got, want in zip(fast, generic):
        assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 2])
@pytest.mark.parametrize("case", range(len(CASES)), ids=[c[0] + str(c[1] or "") for c in CASES])
def test_numpy_kernel_input_projection_in_chunks(rng, monkeypatch, case, chunk):
    """The kernel projects the inputs a chunk of steps at a time; chunks of 1 and of 2
    steps (T = 5: a partial last chunk) give what one chunk gives."""
    from xrnn._kernels import numpy_layer

    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[CASES[case][0]]
    monkeypatch.setattr(numpy_layer, "_CHUNK_ELEMENTS", chunk * 2 * B * gates * H)
    test_numpy_kernel_matches_generic_path(rng, case, 2, True, True, True)


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_numpy_kernel_float32_and_dropout(rng, kind):
    """float32, and training-mode dropout with the same seed on both paths."""
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    grad_out = rng.standard_normal((T, B, 2 * H)).astype(np.float32)
    results = []
    with xrnn.backend.use_backend("numpy"):
        for fast in (True, False):  # the same seed gives the same weights and masks
            model = getattr(xrnn, kind)(I, H, 3, dropout=0.5, bidirectional=True, seed=5)
            results.append(_run(model.train(), x, None, None, grad_out, None, fast))
    for got, want in zip(*results):
        assert got.dtype == np.float32
        assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_kernel_choice():
    """NumPy float32/float64 takes the kernel; other backends, float16 and a disabled
    switch take the generic path."""
    numpy_xp = xrnn.get_namespace(np.zeros(1))
    cells = [*ELMAN_CELLS.values(), LSTM_CELL, GRU_CELL]
    for cell, dtype in itertools.product(cells, (np.float32, np.float64)):
        assert _kernels.layer_runner(numpy_xp, cell, np.dtype(dtype)) is not None
    assert _kernels.layer_runner(numpy_xp, LSTM_CELL, np.dtype(np.float16)) is None
    with _kernels.kernels_enabled(False):
        assert _kernels.layer_runner(numpy_xp, LSTM_CELL, np.dtype(np.float32)) is None
    strict = pytest.importorskip("array_api_strict", reason="array_api_strict not installed")
    assert _kernels.layer_runner(strict, LSTM_CELL, strict.float32) is None


def test_kernel_runs_are_counted():
    """``numpy_layer.layers_run`` counts the layers the kernel ran: one per layer of a
    NumPy float32 forward, none on the generic path (the observable used below)."""
    x = np.ones((2, 1, 3), dtype=np.float32)
    with xrnn.backend.use_backend("numpy"):
        model = xrnn.LSTM(3, 4, num_layers=2, seed=0)
        before = numpy_layer.layers_run
        with _kernels.kernels_enabled("numpy"):
            model(x)
        assert numpy_layer.layers_run == before + 2
        with _kernels.kernels_enabled(False):
            model(x)
        assert numpy_layer.layers_run == before + 2


# A fresh interpreter, since the variable is read at import: a two-layer NumPy float32
# forward, then how many layers a kernel ran (the NumPy one or the compiled one).
_FORWARD = """
import sys
import numpy as np, xrnn
from xrnn._kernels import numpy_layer
with xrnn.use_backend("numpy"):
    xrnn.LSTM(3, 4, num_layers=2, seed=0)(xrnn.asarray(np.ones((2, 1, 3)), dtype="float32"))
compiled = sys.modules.get("xrnn._kernels.numba_layer")
print(numpy_layer.layers_run + (compiled.layers_run if compiled else 0))
"""


@pytest.mark.parametrize("value, expected",
                         [("0", 0), ("off", 0), (None, 2), ("1", 2), ("numpy", 2)])
def test_xrnn_kernels_environment_variable(value, expected):
    """README: ``XRNN_KERNELS=0`` in the environment runs the generic path instead."""
    printed = run_with_xrnn_kernels(value, _FORWARD)
    assert int(printed) == expected, f"XRNN_KERNELS={value!r}: {printed}"


_WITHOUT_NUMBA = """
import builtins, sys
sys.modules["numba"] = None  # as if numba were not installed
import numpy as np, xrnn
model = xrnn.RNN(3, 4, seed=0)
x = xrnn.asarray(np.ones((2, 1, 3)), dtype="float32")
model(x)
attempts = []
real_import = builtins.__import__
def counting(name, globals=None, locals=None, fromlist=(), level=0):
    if "numba" in name or "numba_layer" in (fromlist or ()):
        attempts.append(name)
    return real_import(name, globals, locals, fromlist, level)
builtins.__import__ = counting
for _ in range(5):
    model(x)
print(len(attempts))
"""


def test_missing_numba_is_looked_up_once():
    """Without numba the NumPy kernel runs, and the compiled kernel's import is not
    retried on every forward (a failed import is not cached: it cost 5 ms a call)."""
    assert int(run_with_xrnn_kernels(None, _WITHOUT_NUMBA)) == 0
