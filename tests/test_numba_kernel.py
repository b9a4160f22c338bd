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
from xrnn._kernels import blas, numba_layer, numba_split, numba_threaded, numpy_layer  # noqa: E402
from xrnn.testing import assert_close  # noqa: E402

from .conftest import (compare_kernel_with_generic, move_layernorm_weights,  # noqa: E402
                       numpy_leg_only, run_with_xrnn_kernels)

CASES = [("RNN", {"nonlinearity": n}) for n in ("tanh", "relu", "identity")] + [
    ("LSTM", {}), ("GRU", {})]
GRID = list(itertools.product(range(len(CASES)), [1, 2], [False, True], [False, True],
                              [False, True]))
T, B, I, H = 5, 3, 4, 6


def _set_limits(monkeypatch, limit: int) -> None:
    """Every layer up to ``limit`` runs its whole loop compiled, every larger one fused."""
    monkeypatch.setattr(numba_layer, "MAX_STEP_WORK", dict.fromkeys(("rnn", "lstm", "gru"), limit))


def _compare(rng, kind, options, num_layers, bidirectional, bias, lengths, *,
             given_state=True, final_grads=(True, True), counter="layers_run", **call):
    """The compiled kernel (``counter``: ``"layers_run"``, whole loops, or
    ``"fused_layers_run"``, fused steps, or a ``(module, attribute)`` pair) against the
    generic path, at 1e-12 in float64."""
    def build():
        return move_layernorm_weights(getattr(xrnn, kind)(
            I, H, num_layers, bias=bias, bidirectional=bidirectional, dtype="float64", seed=3,
            **options))

    compare_kernel_with_generic(
        build, rng.standard_normal((T, B, I)), kernels=True,
        counter=(numba_layer, counter) if isinstance(counter, str) else counter,
        num_layers=num_layers, given_state=given_state, final_grads=final_grads,
        lengths=lengths, **call)


@pytest.mark.parametrize("case, num_layers, bidirectional, bias, with_lengths", GRID,
                         ids=[f"{CASES[c][0]}{CASES[c][1] or ''}-{L}-{d}-{b}-{n}"
                              for c, L, d, b, n in GRID])
def test_numba_kernel_matches_generic_path(rng, case, num_layers, bidirectional, bias,
                                           with_lengths):
    kind, options = CASES[case]
    _compare(rng, kind, options, num_layers, bidirectional, bias,
             [2, T, 1] if with_lengths else None)


DOT_GRID = list(itertools.product(range(len(CASES)), [False, True], [False, True]))


@pytest.mark.parametrize("case, bidirectional, with_lengths", DOT_GRID,
                         ids=[f"{CASES[c][0]}{CASES[c][1] or ''}-{d}-{n}"
                              for c, d, n in DOT_GRID])
def test_whole_loop_dot_products_match_generic_path(rng, monkeypatch, case, bidirectional,
                                                    with_lengths):
    """The whole loop's product as dot products with ``W_hh``'s own rows (forced here for
    every size, batch and cell; by default from 128 units, at most 2 rows)."""
    monkeypatch.setattr(numba_layer, "DOT_HIDDEN", 1)
    monkeypatch.setattr(numba_layer, "DOT_BATCH", B)
    monkeypatch.setattr(numba_layer, "DOT_KINDS", numba_layer.KINDS)
    kind, options = CASES[case]
    _compare(rng, kind, options, 2, bidirectional, True, [2, T, 1] if with_lengths else None)


@pytest.mark.parametrize("case, bidirectional, with_lengths", DOT_GRID,
                         ids=[f"{CASES[c][0]}{CASES[c][1] or ''}-{d}-{n}"
                              for c, d, n in DOT_GRID])
def test_whole_loop_batch_dot_products_match_generic_path(rng, monkeypatch, case,
                                                          bidirectional, with_lengths):
    """The whole loop's product for all rows of a step at once, four rows at a time,
    forward and backward (forced here for every size; by default from 4 rows and 64
    units): seven rows (four, then three left over) of seven units (an odd number of gate
    rows for the RNN)."""
    monkeypatch.setattr(numba_layer, "BATCH_DOT_HIDDEN", 1)
    monkeypatch.setattr(numba_layer, "BATCH_DOT_BATCH", 1)
    kind, options = CASES[case]
    compare_kernel_with_generic(
        lambda: getattr(xrnn, kind)(I, 7, 2, bidirectional=bidirectional, dtype="float64",
                                    seed=3, **options),
        rng.standard_normal((T, 7, I)), kernels=True, counter=(numba_layer, "layers_run"),
        num_layers=2, lengths=[2, T, 1, 4, 3, T, 2] if with_lengths else None)


@pytest.mark.parametrize("case, bidirectional, with_lengths", DOT_GRID,
                         ids=[f"{CASES[c][0]}{CASES[c][1] or ''}-{d}-{n}"
                              for c, d, n in DOT_GRID])
@pytest.mark.parametrize("batch", [1, 7])
def test_whole_loop_products_on_panels_match_generic_path(rng, monkeypatch, case,
                                                          bidirectional, with_lengths, batch):
    """The whole loop's forward product for all rows of a step at once on ``W_hh``'s
    packed panels (forced here for every size; by default from 4 rows and 32 units):
    seven rows or one (the one-row panels) of seven units, a panel's columns left
    over; output, final states and every gradient."""
    monkeypatch.setattr(numba_layer, "PANELS_HIDDEN", 1)
    monkeypatch.setattr(numba_layer, "PANELS_BATCH", 1)
    kind, options = CASES[case]
    lengths = [2, T, 1, 4, 3, T, 2][:batch] if with_lengths else None
    compare_kernel_with_generic(
        lambda: getattr(xrnn, kind)(I, 7, 2, bidirectional=bidirectional, dtype="float64",
                                    seed=3, **options),
        rng.standard_normal((T, batch, I)), kernels=True, counter=(numba_layer, "layers_run"),
        num_layers=2, lengths=lengths)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lstm_cell_without_a_tape_is_bitwise_the_taped_one(rng, dtype):
    """The cell a forward under ``no_grad`` runs (no stores of the gates) gives the same
    bits of c and h as the taped one, so that ``no_grad`` changes no output (compiled
    with the kernels' flags, which allow contracting products and sums)."""
    import numba

    @numba.njit(**numba_layer._FLAGS)
    def both(z, c_old, c_taped, h_taped, gates, t_row, c_new, h_new):
        untaped = z.copy()
        numba_layer._lstm_cell(z, c_old, c_taped, gates, t_row, h_taped)
        numba_layer._lstm_cell_untaped(untaped, c_old, c_new, h_new)

    hidden = 37  # (a vector loop's remainder too)
    z = (3 * rng.standard_normal(4 * hidden)).astype(dtype)
    c_old = rng.standard_normal(hidden).astype(dtype)
    out = [np.empty(size, dtype) for size in (hidden, hidden, 4 * hidden, hidden, hidden,
                                              hidden)]
    both(z, c_old, *out)
    c_taped, h_taped, _, _, c_new, h_new = out
    np.testing.assert_array_equal(c_new, c_taped)
    np.testing.assert_array_equal(h_new, h_taped)


@pytest.mark.parametrize("batch, panels", [(1, True), (numba_layer.BATCH_DOT_BATCH, True),
                                           (numba_layer.BATCH_DOT_BATCH, False)])
def test_whole_loop_dot_products_float32(rng, monkeypatch, batch, panels):
    """At the default sizes: an LSTM of 128 units, batch 1 (a row at a time) and 4 (four
    rows at once, on packed panels, or without them as dot products) (float32, 1e-5)."""
    if not panels:
        monkeypatch.setattr(numba_layer, "PANELS_BATCH", batch + 1)
    x = rng.standard_normal((T, batch, I)).astype(np.float32)
    with xrnn.backend.use_backend("numpy"), xrnn.no_grad():
        model = xrnn.LSTM(I, 128, seed=0)
        before = numba_layer.layers_run
        fast, (h_fast, c_fast) = model(x)
        assert numba_layer.layers_run == before + 1
        with _kernels.kernels_enabled(False):
            generic, (h_generic, c_generic) = model(x)
    for got, want in ((fast, generic), (h_fast, h_generic), (c_fast, c_generic)):
        assert_close(got, want, rtol=1e-5, atol=1e-5)


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
    compare_kernel_with_generic(
        lambda: getattr(xrnn, kind)(I, H, 3, dropout=0.5, bidirectional=True, seed=5),
        rng.standard_normal((T, B, I)).astype(np.float32), kernels=True,
        counter=(numba_layer, "layers_run"), num_layers=3, given_state=False,
        final_grads=(False, False), tolerance=1e-5)


@pytest.mark.filterwarnings("ignore::numba.core.errors.NumbaIRAssumptionWarning")
def test_numba_kernel_float32_loops_compute_in_float32(monkeypatch):
    """The float32 specialisation of every compiled loop and fused step types no value as
    float64 (a Python float literal next to a float32 promotes the gate arithmetic to
    float64). Recompiled here from the Python source, since functions loaded from Numba's
    cache carry no type annotations."""
    import io

    import numba

    x = np.ones((2, 1, 2), dtype=np.float32)
    monkeypatch.setattr(numba_threaded, "usable_cores", lambda: 2)
    with xrnn.backend.use_backend("numpy"):
        # every loop, then every fused step, every split loop, every threaded loop gets
        # float32
        for limit, bidirectional, split in ((1 << 20, False, False), (0, False, False),
                                            (0, False, True), (0, True, False)):
            _set_limits(monkeypatch, limit)
            monkeypatch.setattr(numba_split, "MIN_WORK", 0 if split else 1 << 62)
            for kind, norm in itertools.product(("RNN", "LSTM", "GRU"), (False, True)):
                if norm and kind == "RNN":
                    continue
                model = getattr(xrnn, kind)(2, 3, seed=0, bidirectional=bidirectional,
                                            **({"layer_norm": True} if norm else {}))
                output, _ = model(x)
                model.backward(np.ones(output.shape, dtype=np.float32))
    from xrnn._kernels import numba_layernorm

    loops = ["_elman_forward", "_elman_backward", "_lstm_forward", "_lstm_backward",
             "_gru_backward", "_lstm_step", "_gru_step", "_tanh_back",
             "_lstm_row_back", "_gru_row_back", "numba_threaded._direction_backward",
             "numba_split._half_forward", "numba_split._half_backward"]
    # (_gru_forward, _elman_step, _lstm_back, _gru_back, numba_threaded._direction_forward:
    # calls only)
    loops += [f"numba_layernorm.{name}" for name in (  # (_ln_gru_back only calls others)
        "_ln_lstm_step", "_ln_lstm_back", "_ln_gru_step", "_normalise_row_backward")]
    f4 = numba.float32
    products = {"_accumulate": (f4[::1], f4[::1], f4[:, ::1]),  # _product only calls it
                "_dots": (f4[::1], f4[::1], f4[::1], f4[:, ::1]),  # (and this)
                "_batch_dots": (f4[:, ::1], f4[::1], f4[:, ::1], f4[:, ::1]),
                "_batch_accumulate": (f4[:, ::1],) * 3,
                "_back_to_h": (*(f4[:, ::1],) * 3, numba.boolean[::1], numba.boolean,
                               numba.boolean, f4[:, ::1]),
                # called from compiled code only: no signature of their own when their
                # callers come from Numba's cache
                "_lstm_cell": (f4[::1],) * 6, "_lstm_cell_untaped": (f4[::1],) * 4,
                "_gru_cell": (f4[::1],) * 6,
                "_elman_row": (*(f4[::1],) * 4, numba.int64),
                "_elman_row_back": (*(f4[::1],) * 3, numba.int64),
                "blas._rows_dots": (f4[:, ::1],) * 3, "blas._rows_axpy": (f4[:, ::1],) * 3}
    # The split's loops are called from its halves' whole tasks only: compiling fresh
    # copies of the tasks gives the loops their float32 signatures also where the tasks
    # came from Numba's cache.
    for task in (numba_split._half_task_forward, numba_split._half_task_backward):
        for sig in [sig for sig in task.signatures if "float32" in str(sig)]:
            numba.njit(task.py_func).compile(sig)
    typed = {}
    for name in loops + list(products):
        module = {"numba_layernorm": numba_layernorm, "numba_threaded": numba_threaded,
                  "numba_split": numba_split, "blas": blas}.get(
            name.split(".")[0], numba_layer)
        function = getattr(module, name.split(".")[-1])
        fresh = numba.njit(function.py_func)
        sigs = ([sig for sig in function.signatures if "float32" in str(sig)]
                if name in loops else [products[name]])
        assert sigs, f"{name} has no float32 signature"
        for sig in sigs:
            fresh.compile(sig)
            text = io.StringIO()
            fresh.inspect_types(signature=tuple(sig), file=text)
            typed[name] = text.getvalue()
    for name, text in typed.items():
        assert ":: float32" in text, f"{name}: no float32 value typed (annotations missing?)"
        wide = [line.strip() for line in text.splitlines()  # a literal given to
                if ":: float64" in line and "= const(float" not in line]  # np.float32 is not
        assert not wide, f"{name} computes in float64 for float32 input: {wide[:3]}"


def _layers_run(model, x) -> tuple[int, int, int]:
    """(whole loop compiled, fused steps, NumPy kernel) layers run by one forward."""
    counters = (numba_layer, "layers_run"), (numba_layer, "fused_layers_run"), (
        numpy_layer, "layers_run")
    before = [getattr(module, name) for module, name in counters]
    with xrnn.backend.use_backend("numpy"), xrnn.no_grad():
        model(x)
    return tuple(getattr(module, name) - b for (module, name), b in zip(counters, before))


@pytest.mark.parametrize("kind, gates", [("RNN", 1), ("LSTM", 4), ("GRU", 3)])
def test_kernel_choice_by_size(monkeypatch, kind, gates):
    """A layer with B*G*H*H at the kind's limit runs its whole loop compiled, one batch row
    more runs with fused compiled steps on one core (on two, its units split:
    test_numba_split), as does an LSTM with a projection; the "numpy" switch keeps the
    NumPy kernel only, the off switch the generic path."""
    monkeypatch.setattr(numba_threaded, "usable_cores", lambda: 1)
    limit = numba_layer.MAX_STEP_WORK[kind.lower()]
    hidden = 8
    batch = limit // (gates * hidden * hidden)
    with xrnn.backend.use_backend("numpy"):  # whatever the leg's backend
        model = getattr(xrnn, kind)(2, hidden, seed=0)
    at_limit = np.ones((2, batch, 2), dtype=np.float32)
    assert _layers_run(model, at_limit) == (1, 0, 0)
    assert _layers_run(model, np.ones((2, batch + 1, 2), dtype=np.float32)) == (0, 1, 0)
    with _kernels.kernels_enabled("numpy"):
        assert _layers_run(model, at_limit) == (0, 0, 1)
    with _kernels.kernels_enabled(False):
        assert _layers_run(model, at_limit) == (0, 0, 0)
    if kind == "LSTM":
        with xrnn.backend.use_backend("numpy"):
            projected = xrnn.LSTM(2, hidden, proj_size=3, seed=0)
        assert _layers_run(projected, np.ones((2, 1, 2), dtype=np.float32)) == (0, 1, 0)


FUSED_CASES = CASES + [("LSTM", {"proj_size": 3})]
FUSED_GRID = [(c, L, d, b, n) for c, L, d, b, n in itertools.product(
    range(len(FUSED_CASES)), [1, 2], [False, True], [False, True], [False, True])
    if (L + d + b + n) % 2 == 0]  # half the grid: every option on and off for every cell


@pytest.mark.parametrize("case, num_layers, bidirectional, bias, with_lengths", FUSED_GRID,
                         ids=[f"{FUSED_CASES[c][0]}{FUSED_CASES[c][1] or ''}-{L}-{d}-{b}-{n}"
                              for c, L, d, b, n in FUSED_GRID])
def test_fused_steps_match_generic_path(rng, monkeypatch, case, num_layers, bidirectional,
                                        bias, with_lengths):
    """Layers above the limits: the NumPy kernel's loop with compiled steps (forced here
    by a zero limit, and for bidirectional layers one core), at 1e-12 against the
    generic path."""
    _set_limits(monkeypatch, 0)
    monkeypatch.setattr(numba_threaded, "usable_cores", lambda: 1)
    kind, options = FUSED_CASES[case]
    _compare(rng, kind, options, num_layers, bidirectional, bias,
             [2, T, 1] if with_lengths else None, counter="fused_layers_run")


@pytest.mark.parametrize("kind, options", [
    ("RNN", {}), ("LSTM", {}), ("GRU", {}), ("LSTM", {"zoneout": 0.2}),
    ("GRU", {"recurrent_dropout": 0.3}), ("LSTM", {"proj_size": blas.DOTS_INNER})])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_fused_steps_with_dot_products_match_generic_path(rng, monkeypatch, kind, options,
                                                          bidirectional):
    """Three rows of ``DOTS_INNER`` values of h (``FUSED_ONE_THREAD_BATCH`` or fewer): the
    fused steps' products are ``blas.matmul``'s, forward (dot products) and backward (sums
    of rows), with per-step options and a projection too; at 1e-12 against the generic
    path, padded steps included."""
    assert 3 <= numba_layer.FUSED_ONE_THREAD_BATCH
    _set_limits(monkeypatch, 0)
    monkeypatch.setattr(numba_threaded, "usable_cores", lambda: 1)
    hidden = blas.DOTS_INNER + (2 if "proj_size" in options else 0)
    calls = []  # (the fused steps call blas.matmul only for these products)
    matmul = blas.matmul
    monkeypatch.setattr(blas, "matmul",
                        lambda *a: calls.append((a[0].shape, a[2])) or matmul(*a))
    compare_kernel_with_generic(
        lambda: getattr(xrnn, kind)(I, hidden, bidirectional=bidirectional, dtype="float64",
                                    seed=3, **options),
        rng.standard_normal((T, 3, I)), kernels=True,
        counter=(numba_layer, "fused_layers_run"), num_layers=1, lengths=[2, T, 4])
    # every step's product, each direction's: in the forward and the training run, and
    # in the backward
    gates = {"RNN": 1, "LSTM": 4, "GRU": 3}[kind]
    directions = 2 if bidirectional else 1
    size = hidden if "proj_size" not in options else blas.DOTS_INNER
    assert calls.count(((3, size), True)) == 2 * T * directions
    assert calls.count(((3, gates * hidden), False)) == T * directions


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


HOOKS = [({"zoneout": 0.3}, {}), ({"recurrent_dropout": 0.4}, {}),
         ({}, {"reset": "reset"}), ({"zoneout": 0.2, "recurrent_dropout": 0.3}, {"reset": "reset"})]


@pytest.mark.parametrize("kind, options", [("RNN", {}), ("LSTM", {}), ("LSTM", {"proj_size": 3}),
                                           ("GRU", {})])
@pytest.mark.parametrize("hooks", range(len(HOOKS)))
def test_fused_steps_with_per_step_options(rng, kind, options, hooks):
    """Reset, recurrent dropout and zoneout (training: masks from the same seed) run on the
    fused steps, whatever the size, at 1e-12 against the generic path."""
    extra, call = HOOKS[hooks]
    if call:
        call = {"reset": rng.random((T, B)) < 0.3}
    _compare(rng, kind, {**options, **extra}, 2, True, True, [T, 2, 4],
             counter="fused_layers_run", **call)


@pytest.mark.parametrize("kind, options", [("LSTM", {}), ("LSTM", {"proj_size": 3}),
                                           ("GRU", {}), ("GRU", {"bias": False})])
@pytest.mark.parametrize("num_layers, bidirectional, with_lengths, hooked",
                         [(1, False, False, False), (2, True, True, False),
                          (2, False, True, True), (1, True, False, True)])
def test_fused_layernorm_steps_match_generic_path(rng, kind, options, num_layers,
                                                  bidirectional, with_lengths, hooked):
    """LayerNorm cells (``numba_layernorm``), with non-trivial LayerNorm weights, lengths
    and per-step options, at 1e-12 against the generic path."""
    from xrnn._kernels import numba_layernorm

    extra, call = ({"zoneout": 0.2, "recurrent_dropout": 0.3},
                   {"reset": rng.random((T, B)) < 0.3}) if hooked else ({}, {})
    options = dict(options)
    bias = options.pop("bias", True)
    _compare(rng, kind, {"layer_norm": True, **options, **extra}, num_layers, bidirectional,
             bias, [T, 2, 4] if with_lengths else None,
             counter=(numba_layernorm, "layers_run"), **call)


def test_float32_exp_and_tanh_within_two_ulp_and_special_values():
    """The compiled kernel's float32 ``exp``/``tanh`` (polynomials, ``numba_math``) against
    float64 NumPy: at most 2 ulp over the range where exp is a normal float32; NaN stays
    NaN, +-inf give the limits, denormals pass through tanh (the sign of zero may not:
    the kernel's ``nsz`` flag); float64 is libm's
    (within an ulp of NumPy's)."""
    import numba

    from xrnn._kernels import numba_math

    @numba.njit(error_model="numpy")
    def apply(x, out_exp, out_tanh):
        for j in range(x.size):
            out_exp[j] = numba_math.exp(x[j])
            out_tanh[j] = numba_math.tanh(x[j])

    x = np.concatenate([np.linspace(-87, 88, 200_001), np.geomspace(1e-30, 20, 5000),
                        -np.geomspace(1e-30, 20, 5000)]).astype(np.float32)
    got_exp, got_tanh = np.empty_like(x), np.empty_like(x)
    apply(x, got_exp, got_tanh)
    for got, want in ((got_exp, np.exp(x.astype(np.float64))),
                      (got_tanh, np.tanh(x.astype(np.float64)))):
        ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
        assert np.max(np.abs(got - want) / ulp) <= 2.0
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, 1e4, -1e4],
                       dtype=np.float32)
    got_exp, got_tanh = np.empty_like(special), np.empty_like(special)
    apply(special, got_exp, got_tanh)
    assert np.isnan(got_exp[0]) and np.isnan(got_tanh[0])
    assert np.array_equal(got_tanh[1:], np.array([1, -1, 0, 0, 1e-45, 1, -1], np.float32))
    assert got_exp[1] > 1e38 and 0 < got_exp[2] < 1e-37 and got_exp[3] == 1  # clamped
    x64 = np.linspace(-30, 30, 1001)
    got64, tanh64 = np.empty_like(x64), np.empty_like(x64)
    apply(x64, got64, tanh64)
    assert_close(got64, np.exp(x64), rtol=5e-16, atol=0)
    assert_close(tanh64, np.tanh(x64), rtol=5e-16, atol=0)


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("limit", [1 << 20, 0], ids=["whole-loop", "fused"])
def test_float32_saturation_and_nan_as_generic_path(rng, monkeypatch, kind, limit):
    """Huge inputs saturate the gates as on the generic path (within 1e-6), and a NaN in one
    sequence's input gives NaN in that sequence's outputs and nowhere else."""
    _set_limits(monkeypatch, limit)
    x = (rng.standard_normal((T, B, I)) * 1e30).astype(np.float32)
    x[1, 0, 2] = np.nan
    with xrnn.backend.use_backend("numpy"), xrnn.no_grad():
        model = getattr(xrnn, kind)(I, H, 2, bidirectional=True, seed=2)
        outputs = []
        for enabled in (True, False):
            with _kernels.kernels_enabled(enabled):
                outputs.append(model(x)[0])
    fast, generic = outputs
    assert np.array_equal(np.isnan(fast), np.isnan(generic))
    assert np.isnan(fast[:, 0]).any() and not np.isnan(fast[:, 1:]).any()
    assert_close(np.nan_to_num(fast), np.nan_to_num(generic), rtol=0, atol=1e-6)


_FIRST_COMPILE = """
import numpy as np, xrnn
with xrnn.use_backend("numpy"):
    xrnn.LSTM(3, 4, seed=0)(xrnn.asarray(np.zeros((2, 1, 3)), dtype="float32"))
"""


@numpy_leg_only
def test_a_first_compile_asks_for_no_numba_bug_report(tmp_path):
    """On an empty Numba cache, compiling the LSTM's whole loop printed six of Numba's
    pedantic ``NumbaIRAssumptionWarning``s (variables of the always-inlined exp and tanh
    "not in scope", "please report"); numba_math silences that message, and only it."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("XRNN_KERNELS", "PYTHONWARNINGS")}
    env["NUMBA_CACHE_DIR"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", _FIRST_COMPILE], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Warning" not in done.stderr, done.stderr[-2000:]
