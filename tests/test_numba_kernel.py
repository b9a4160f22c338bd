"""The compiled kernel (``xrnn._kernels.numba_layer``, the ``fast`` extra) against the
generic driver, option by option, as ``test_kernels.py`` checks the NumPy kernel; and
where the choice between the compiled kernel, the NumPy kernel and the generic path falls.
Skipped as a whole when numba is not installed (CI installs it)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

pytest.importorskip("numba", reason="numba not installed (pip install xrnn[fast])")

import xrnn  # noqa: E402
from xrnn import _kernels  # noqa: E402
from xrnn._kernels import numba_layer, numpy_layer  # noqa: E402
from xrnn.testing import assert_close  # noqa: E402

from .conftest import run_with_xrnn_kernels  # noqa: E402

CASES = [("RNN", {"nonlinearity": n}) for n in ("tanh", "relu", "identity")] + [
    ("LSTM", {}), ("GRU", {})]
GRID = list(itertools.product(range(len(CASES)), [1, 2], [False, True], [False, True],
                              [False, True]))
T, B, I, H = 5, 3, 4, 6


def _run(model, x, state, lengths, grad_out, grad_finals, kernels):
    """Output, final states, grad of x, of the initial states and of every parameter, with
    ``kernels_enabled(kernels)``; and how many layers the compiled kernel ran."""
    before = numba_layer.layers_run
    with _kernels.kernels_enabled(kernels):
        model.zero_grad()
        output, finals = model(x, state, lengths=lengths)
        grad_x, grad_state = model.backward(grad_out, grad_finals, return_state_grad=True)
    flat = lambda s: list(s) if isinstance(s, tuple) else [s]  # noqa: E731
    return ([output, *flat(finals), grad_x, *flat(grad_state)]
            + [p.grad for _, p in model.named_parameters()]), numba_layer.layers_run - before


def _compare(rng, kind, options, num_layers, bidirectional, bias, lengths, *,
             given_state=True, final_grads=(True, True)):
    with xrnn.backend.use_backend("numpy"):
        model = getattr(xrnn, kind)(I, H, num_layers, bias=bias, bidirectional=bidirectional,
                                    dtype="float64", seed=3, **options)
        x = rng.standard_normal((T, B, I))
        with xrnn.no_grad():  # only for the shapes
            output, finals = model(x)
        finals = finals if isinstance(finals, tuple) else (finals,)
        state = tuple(rng.standard_normal(f.shape) for f in finals) if given_state else None
        grad_finals = tuple(rng.standard_normal(f.shape) if wanted else None
                            for f, wanted in zip(finals, final_grads))
        if kind != "LSTM":
            state = None if state is None else state[0]
            grad_finals = grad_finals[0]
        grad_out = rng.standard_normal(output.shape)
        fast, compiled = _run(model, x, state, lengths, grad_out, grad_finals, True)
        generic, none = _run(model, x, state, lengths, grad_out, grad_finals, False)
    assert (compiled, none) == (num_layers, 0), "the compiled kernel ran every layer"
    assert len(fast) == len(generic)
    for got, want in zip(fast, generic):
        assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case, num_layers, bidirectional, bias, with_lengths", GRID,
                         ids=[f"{CASES[c][0]}{CASES[c][1] or ''}-{L}-{d}-{b}-{n}"
                              for c, L, d, b, n in GRID])
def test_numba_kernel_matches_generic_path(rng, case, num_layers, bidirectional, bias,
                                           with_lengths):
    kind, options = CASES[case]
    _compare(rng, kind, options, num_layers, bidirectional, bias,
             [2, T, 1] if with_lengths else None)


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_numba_kernel_zero_initial_state_and_missing_final_gradients(rng, kind):
    """No initial state, and no gradient for h_n (LSTM: for h_n only, c_n has one)."""
    _compare(rng, kind, {}, 2, True, True, [T, 4, 2], given_state=False,
             final_grads=(False, True))


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_numba_kernel_input_projection_in_chunks(rng, monkeypatch, kind):
    """The forward projects the inputs by chunks of steps (here 2 steps, T = 5: a partial
    last chunk) and runs each chunk compiled; the result is one chunk's."""
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[kind]
    monkeypatch.setattr(numpy_layer, "_CHUNK_ELEMENTS", 2 * 2 * B * gates * H)
    _compare(rng, kind, {}, 2, True, True, [2, T, 1])


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_numba_kernel_float32_and_dropout(rng, kind):
    """float32 (compiled separately), and training-mode dropout with the same seed on both
    paths."""
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    grad_out = rng.standard_normal((T, B, 2 * H)).astype(np.float32)
    results = []
    with xrnn.backend.use_backend("numpy"):
        for kernels in (True, False):  # the same seed gives the same weights and masks
            model = getattr(xrnn, kind)(I, H, 3, dropout=0.5, bidirectional=True, seed=5)
            results.append(_run(model.train(), x, None, None, grad_out, None, kernels))
    (fast, compiled), (generic, _) = results
    assert compiled == 3
    for got, want in zip(fast, generic):
        assert got.dtype == np.float32
        assert_close(got, want, rtol=1e-5, atol=1e-5)



def test_numba_kernel_float32_loops_compute_in_float32():
    """The float32 specialisation of every compiled loop types no value as float64 (a
    Python float literal next to a float32 promotes the gate arithmetic to float64).
    Recompiled here from the Python source, since loops loaded from Numba's cache carry
    no type annotations."""
    import io

    import numba

    x = np.ones((2, 1, 2), dtype=np.float32)
    with xrnn.backend.use_backend("numpy"):
        for kind in ("RNN", "LSTM", "GRU"):  # every loop gets a float32 signature
            model = getattr(xrnn, kind)(2, 3, seed=0)
            output, _ = model(x)
            model.backward(np.ones(output.shape, dtype=np.float32))
    loops = [f"_{k}_{d}" for k in ("elman", "lstm", "gru") for d in ("forward", "backward")]
    f4 = numba.float32
    products = {"_accumulate": (f4[::1], f4[::1], f4[:, ::1])}  # _product only calls it
    typed = {}
    for name in loops + list(products):
        fresh = numba.njit(getattr(numba_layer, name).py_func)
        sigs = ([sig for sig in getattr(numba_layer, name).signatures if "float32" in str(sig)]
                if name in loops else [products[name]])
        assert sigs, f"{name} has no float32 signature"
        for sig in sigs:
            fresh.compile(sig)
            text = io.StringIO()
            fresh.inspect_types(signature=tuple(sig), file=text)
            typed[name] = text.getvalue()
    for name, text in typed.items():
        assert ":: float32" in text, f"{name}: no float32 value typed (annotations missing?)"
        wide = [line.strip() for line in text.splitlines() if ":: float64" in line]
        assert not wide, f"{name} computes in float64 for float32 input: {wide[:3]}"


def _layers_run(model, x) -> tuple[int, int]:
    """(compiled, NumPy kernel) layers run by one forward of ``model`` on ``x``."""
    before = numba_layer.layers_run, numpy_layer.layers_run
    with xrnn.backend.use_backend("numpy"), xrnn.no_grad():
        model(x)
    return numba_layer.layers_run - before[0], numpy_layer.layers_run - before[1]


@pytest.mark.parametrize("kind, gates", [("RNN", 1), ("LSTM", 4), ("GRU", 3)])
def test_kernel_choice_by_size(kind, gates):
    """A layer with B*G*H*H at the kind's limit runs compiled, one batch row more runs on
    the NumPy kernel; an LSTM with a projection always does; the "numpy" switch and the
    off switch keep the compiled kernel out."""
    limit = numba_layer.MAX_STEP_WORK[kind.lower()]
    hidden = 8
    batch = limit // (gates * hidden * hidden)
    with xrnn.backend.use_backend("numpy"):  # whatever the leg's backend
        model = getattr(xrnn, kind)(2, hidden, seed=0)
    at_limit = np.ones((2, batch, 2), dtype=np.float32)
    assert _layers_run(model, at_limit) == (1, 0)
    assert _layers_run(model, np.ones((2, batch + 1, 2), dtype=np.float32)) == (0, 1)
    with _kernels.kernels_enabled("numpy"):
        assert _layers_run(model, at_limit) == (0, 1)
    with _kernels.kernels_enabled(False):
        assert _layers_run(model, at_limit) == (0, 0)
    if kind == "LSTM":
        with xrnn.backend.use_backend("numpy"):
            projected = xrnn.LSTM(2, hidden, proj_size=3, seed=0)
        assert _layers_run(projected, np.ones((2, 1, 2), dtype=np.float32)) == (0, 1)


def test_kernels_enabled_rejects_other_values():
    with pytest.raises(ValueError, match="True, False or 'numpy', got 'numba'"):
        with _kernels.kernels_enabled("numba"):
            pass


# A fresh interpreter, since the variable is read at import: a two-layer NumPy float32
# forward, then how many layers each kernel ran, and the path ``xrnn info`` names.
_FORWARD = """
import numpy as np, xrnn
from xrnn._kernels import cpu_path, numba_layer, numpy_layer
with xrnn.use_backend("numpy"):
    xrnn.LSTM(3, 4, num_layers=2, seed=0)(xrnn.asarray(np.ones((2, 1, 3)), dtype="float32"))
print(numba_layer.layers_run, numpy_layer.layers_run, cpu_path().split()[0])
"""


@pytest.mark.parametrize("value, expected", [(None, "2 0 numba"), ("numpy", "0 2 NumPy"),
                                             ("0", "0 0 generic")])
def test_xrnn_kernels_environment_variable(value, expected):
    """README: ``XRNN_KERNELS=numpy`` keeps the NumPy kernel only, ``0`` neither."""
    printed = run_with_xrnn_kernels(value, _FORWARD)
    assert printed == expected, f"XRNN_KERNELS={value!r}: {printed}"
