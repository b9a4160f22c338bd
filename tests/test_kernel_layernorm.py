"""The NumPy kernel of the LayerNorm LSTM and GRU (``layer_norm=True``,
``xrnn._kernels.layernorm_layer``) against the generic driver.

Every comparison runs the same seeded model twice, on the kernel
(``kernels_enabled("numpy")``) and on the generic path (``kernels_enabled(False)``): the
same seed gives the same weights and masks, so outputs, final states and the gradients
of the input, of the initial states and of every parameter (the LayerNorms' included)
must agree to rounding (float64 1e-12, float32 1e-5), and the kernel must have run every
layer. The LayerNorm weights are drawn away from their init (1, 0), so that a wrong one
shows. The generic path is itself checked against torch in ``test_cells_extra.py``. The
kernel is NumPy's, so this module runs in the numpy leg of the backend matrix only.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import xrnn
from xrnn import _kernels
from xrnn._kernels import layernorm_layer, numpy_layer
from xrnn.functional.cells import LN_GRU_CELL, LN_LSTM_CELL

from .conftest import (assert_pairwise, compare_forward_without_tape,
                       compare_kernel_with_generic, numpy_leg_only, reset_steps)

pytestmark = numpy_leg_only

CASES = [("LSTM", {}), ("LSTM", {"proj_size": 3}), ("GRU", {})]
#: (module options, training mode, with a reset)
OPTIONS = {"eval": ({}, False, False),
           "dropout": ({"dropout": 0.4, "weight_dropout": 0.3}, True, False),
           "reset": ({}, True, True),
           "recurrent_dropout": ({"recurrent_dropout": 0.4}, True, False),
           "zoneout-eval": ({"zoneout": 0.3}, False, False),
           "all": ({"zoneout": 0.2, "recurrent_dropout": 0.3, "dropout": 0.3,
                    "weight_dropout": 0.2}, True, True)}
#: Pairwise, not the full product: every case x option, with two layers, both
#: directions, lengths and bias assigned so that every pair of values of any two factors
#: occurs (test_grid_is_pairwise).
GRID = [(c, o, 1 + ((c + o) % 3 < 2), (2 * c + 3 * o) % 5 < 3, (3 * c + o) % 5 < 3,
         (c + 3 * o) % 2 < 1) for c, o in itertools.product(range(len(CASES)), range(len(OPTIONS)))]
T, B, I, H = 6, 3, 4, 5


def _model(kind, num_layers, dtype, options, *, bidirectional=True, bias=True):
    """The seeded LayerNorm model, its LayerNorm weights and biases moved off 1 and 0."""
    model = getattr(xrnn, kind)(I, H, num_layers, bias=bias, bidirectional=bidirectional,
                                dtype=dtype, seed=3, layer_norm=True, **options)
    draw = np.random.default_rng(11)
    for name, p in model.named_parameters():
        if name.startswith("ln_"):
            p.data = p.data + xrnn.asarray(0.3 * draw.standard_normal(p.shape), dtype=dtype)
    return model


def compare(rng, kind, options, *, num_layers=2, bidirectional=True, bias=True, lengths=None,
            reset=None, training=True, dtype="float64", tolerance=1e-12):
    """The kernel and the generic path agree on everything (see the module docstring)."""
    if num_layers == 1:  # inter-layer dropout needs two layers
        options = {k: v for k, v in options.items() if k != "dropout"}
    results = compare_kernel_with_generic(
        lambda: _model(kind, num_layers, dtype, options, bidirectional=bidirectional, bias=bias),
        rng.standard_normal((T, B, I)).astype(dtype), kernels="numpy",
        counter=(layernorm_layer, "layers_run"), num_layers=num_layers, training=training,
        tolerance=tolerance, lengths=lengths, reset=reset)
    assert any(name.startswith("grad of ln_") for name in results)


def test_grid_is_pairwise():
    assert_pairwise(GRID)


@pytest.mark.parametrize("case, option, num_layers, bidirectional, with_lengths, bias", GRID,
                         ids=[f"{CASES[c][0]}{CASES[c][1].get('proj_size', '')}-"
                              f"{list(OPTIONS)[o]}-{L}-{'bi' if d else 'uni'}"
                              f"{'-lengths' if n else ''}{'' if b else '-nobias'}"
                              for c, o, L, d, n, b in GRID])
def test_layernorm_kernel_matches_generic_path(rng, case, option, num_layers, bidirectional,
                                               with_lengths, bias):
    kind, cell_options = CASES[case]
    options, training, with_reset = OPTIONS[list(OPTIONS)[option]]
    compare(rng, kind, cell_options | options, num_layers=num_layers,
            bidirectional=bidirectional, bias=bias, training=training,
            lengths=[2, T, 4] if with_lengths else None,
            reset=reset_steps(rng, T, B) if with_reset else None)


@pytest.mark.parametrize("module", [numpy_layer, layernorm_layer],
                         ids=["numpy_layer", "layernorm_layer"])
@pytest.mark.parametrize("chunk", [1, 4])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_layernorm_kernel_in_chunks(rng, monkeypatch, kind, chunk, module):
    """Every option while the input projection and its LayerNorm run a chunk of steps at
    a time (1 step, and 4 steps: T = 6 leaves a partial chunk), whichever module's chunk
    size is the smaller."""
    gates = {"GRU": 3, "LSTM": 4}[kind]
    monkeypatch.setattr(module, "_CHUNK_ELEMENTS", chunk * 2 * B * gates * H)
    options, training, _ = OPTIONS["all"]
    compare(rng, kind, options, training=training, lengths=[T, 3, 1], reset=reset_steps(rng, T, B))


@pytest.mark.parametrize("kind, options", [("LSTM", {}), ("LSTM", {"proj_size": 2}),
                                           ("GRU", {})])
def test_layernorm_kernel_float32(rng, kind, options):
    compare(rng, kind, options | OPTIONS["all"][0], dtype="float32", tolerance=1e-5,
            lengths=[T, 3, 1], reset=reset_steps(rng, T, B))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_layernorm_kernel_without_tape(rng, monkeypatch, kind, training):
    """``keep=False`` (no gradient wanted: one step's buffers and one chunk's input
    LayerNorm, reused; chunks of 4 steps): the generic path's output and final states."""
    monkeypatch.setattr(numpy_layer, "_CHUNK_ELEMENTS", 4 * 2 * B * 4 * H)
    compare_forward_without_tape(
        lambda: _model(kind, 2, "float64", {"zoneout": 0.3, "recurrent_dropout": 0.3,
                                            "dropout": 0.3}).train(training),
        rng.standard_normal((T, B, I)), counter=(layernorm_layer, "layers_run"),
        num_layers=2, lengths=[T, 2, 5], reset=reset_steps(rng, T, B))


def test_layernorm_cells_take_their_kernel():
    """NumPy float32/float64 LayerNorm cells get this kernel's ``run_layer`` with
    ``kernels_enabled("numpy")``, and by default the compiled one's (``numba_layernorm``)
    when numba is installed (never the plain kernels); float16, another backend or
    kernels off get the generic path."""
    numpy_xp = xrnn.get_namespace(np.zeros(1))
    compiled = _kernels._compiled("numba_layernorm")
    for cell, dtype, enabled in itertools.product(
            (LN_LSTM_CELL, LN_GRU_CELL), (np.float32, np.float64), (True, "numpy")):
        kernel = layernorm_layer if enabled == "numpy" or compiled is None else compiled
        with _kernels.kernels_enabled(enabled):
            assert _kernels.layer_runner(numpy_xp, cell, np.dtype(dtype)) is kernel.run_layer
    assert _kernels.layer_runner(numpy_xp, LN_LSTM_CELL, np.dtype(np.float16)) is None
    with _kernels.kernels_enabled(False):
        assert _kernels.layer_runner(numpy_xp, LN_GRU_CELL, np.dtype(np.float32)) is None
    strict = pytest.importorskip("array_api_strict", reason="array_api_strict not installed")
    assert _kernels.layer_runner(strict, LN_LSTM_CELL, strict.float32) is None


def test_layernorm_model_runs_this_kernel_by_default():
    """With every kernel on, a small LayerNorm model (which the plain compiled kernel's
    size limits would take) runs on the LayerNorm kernels: the compiled one's fused steps
    when numba is installed, else this one."""
    x = np.ones((3, 1, 2), dtype=np.float32)
    kernel = _kernels._compiled("numba_layernorm") or layernorm_layer
    with xrnn.backend.use_backend("numpy"), _kernels.kernels_enabled(True):
        for kind in ("LSTM", "GRU"):
            before = kernel.layers_run
            getattr(xrnn, kind)(2, 3, num_layers=2, layer_norm=True, seed=0)(x)
            assert kernel.layers_run == before + 2, kind
