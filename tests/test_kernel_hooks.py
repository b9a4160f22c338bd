"""The NumPy kernel's per-step options (``reset=``, recurrent dropout, zoneout) against
the generic driver, as ``test_kernels.py`` checks the kernel without them.

Every comparison runs the same seeded model twice, on the NumPy kernel
(``kernels_enabled("numpy")``) and on the generic path (``kernels_enabled(False)``):
the same seed gives the same masks, so outputs, final states and the gradients of the
input, of the initial states and of every parameter must agree to rounding (float64
1e-12, float32 1e-5), and the kernel must have run every layer. The generic path is
itself checked against torch in ``test_cells_extra.py``. The kernel is NumPy's, so this
module runs in the numpy leg of the backend matrix only.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import xrnn
from xrnn import _kernels
from xrnn._kernels import numpy_layer

from .conftest import (assert_pairwise, compare_forward_without_tape,
                       compare_kernel_with_generic, numpy_leg_only, reset_steps)

pytestmark = numpy_leg_only

CASES = [("RNN", {"nonlinearity": "tanh"}), ("RNN", {"nonlinearity": "relu"}), ("LSTM", {}),
         ("LSTM", {"proj_size": 3}), ("GRU", {})]
#: (module options, training mode, with a reset)
OPTIONS = {"reset": ({}, True, True),
           "recurrent_dropout": ({"recurrent_dropout": 0.4}, True, False),
           "zoneout-train": ({"zoneout": 0.3}, True, False),
           "zoneout-eval": ({"zoneout": 0.3}, False, False),
           "all": ({"zoneout": 0.2, "recurrent_dropout": 0.3, "dropout": 0.3,
                    "weight_dropout": 0.2}, True, True)}
#: Pairwise, not the full product: every case x option, with layers, directions, lengths
#: and bias assigned so that every pair of values of any two factors occurs
#: (test_grid_is_pairwise).
GRID = [(c, o, 1 + (c + o) % 2, (2 * c + o) % 4 >= 2, (c + 2 * o) % 3 != 0,
         (3 * c + o) % 5 != 2) for c, o in itertools.product(range(len(CASES)), range(len(OPTIONS)))]
T, B, I, H = 6, 3, 4, 5


def compare(rng, kind, options, *, num_layers=2, bidirectional=True, bias=True, lengths=None,
            reset=None, training=True, dtype="float64", tolerance=1e-12):
    """The NumPy kernel and the generic path agree on everything (see the module docstring)."""
    if num_layers == 1:  # inter-layer dropout needs two layers
        options = {k: v for k, v in options.items() if k != "dropout"}

    def build():
        return getattr(xrnn, kind)(I, H, num_layers, bias=bias, bidirectional=bidirectional,
                                   dtype=dtype, seed=3, **options)

    compare_kernel_with_generic(build, rng.standard_normal((T, B, I)).astype(dtype),
                                kernels="numpy", counter=(numpy_layer, "layers_run"),
                                num_layers=num_layers, training=training, tolerance=tolerance,
                                lengths=lengths, reset=reset)


def test_grid_is_pairwise():
    assert_pairwise(GRID)


@pytest.mark.parametrize("case, option, num_layers, bidirectional, with_lengths, bias", GRID,
                         ids=[f"{CASES[c][0]}{CASES[c][1].get('proj_size', '')}"
                              f"{CASES[c][1].get('nonlinearity', '')}-{list(OPTIONS)[o]}-{L}-"
                              f"{'bi' if d else 'uni'}{'-lengths' if n else ''}"
                              f"{'' if b else '-nobias'}" for c, o, L, d, n, b in GRID])
def test_kernel_hooks_match_generic_path(rng, case, option, num_layers, bidirectional,
                                         with_lengths, bias):
    kind, cell_options = CASES[case]
    options, training, with_reset = OPTIONS[list(OPTIONS)[option]]
    compare(rng, kind, cell_options | options, num_layers=num_layers,
            bidirectional=bidirectional, bias=bias, training=training,
            lengths=[2, T, 4] if with_lengths else None,
            reset=reset_steps(rng, T, B) if with_reset else None)


@pytest.mark.parametrize("chunk", [1, 4])
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_kernel_hooks_in_chunks(rng, monkeypatch, kind, chunk):
    """Every option at once while the input projection runs a chunk of steps at a time
    (1 step, and 4 steps: T = 6 leaves a partial chunk)."""
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[kind]
    monkeypatch.setattr(numpy_layer, "_CHUNK_ELEMENTS", chunk * 2 * B * gates * H)
    options, training, _ = OPTIONS["all"]
    compare(rng, kind, options, training=training, lengths=[T, 3, 1], reset=reset_steps(rng, T, B))


@pytest.mark.parametrize("kind, options", [("RNN", {}), ("LSTM", {"proj_size": 2}), ("GRU", {})])
def test_kernel_hooks_float32(rng, kind, options):
    options = options | OPTIONS["all"][0]
    compare(rng, kind, options, dtype="float32", tolerance=1e-5, reset=reset_steps(rng, T, B))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_kernel_hooks_without_tape(rng, kind, training):
    """``keep=False`` (no gradient wanted: one step's buffers, reused): the same output
    and final states as the generic path."""
    compare_forward_without_tape(
        lambda: getattr(xrnn, kind)(I, H, 2, bidirectional=True, dtype="float64", seed=4,
                                    zoneout=0.3, recurrent_dropout=0.3).train(training),
        rng.standard_normal((T, B, I)), counter=(numpy_layer, "layers_run"), num_layers=2,
        lengths=[T, 2, 5], reset=reset_steps(rng, T, B))


def test_hooks_run_on_every_kernel_setting():
    """Every kernel takes the per-step hooks: "numpy" runs hooked layers on the NumPy
    kernel, the default on the compiled kernel's fused steps when numba is installed
    (tests/test_numba_kernel.py checks their results), off on the generic path."""
    x = np.ones((3, 2, 2), dtype=np.float32)
    with xrnn.backend.use_backend("numpy"):
        model = xrnn.LSTM(2, 3, num_layers=2, zoneout=0.2, seed=0).train()
        for enabled in ("numpy", True, False):
            before = numpy_layer.layers_run
            with _kernels.kernels_enabled(enabled):
                model(x, reset=np.zeros((3, 2), dtype=bool))
            compiled = enabled is True and _kernels._compiled() is not None
            expected = 2 if enabled == "numpy" or (enabled and not compiled) else 0
            assert numpy_layer.layers_run - before == expected, enabled