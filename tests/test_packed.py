"""Products on packed panels (``xrnn._kernels.packed``), the per-step recurrent product of
the threaded and split layers: against float64 NumPy for row counts that take every
kernel (1 to 6 rows, and the 4 + 4 / 4 + 3 groupings; one row on its own wider panels
and on the others), inner sizes across the K block and column counts with a partial last
panel; the packing itself, by columns and by transposed blocks; when panels are made.
The layers that use them are compared with the generic driver in
test_numba_threaded.py and test_numba_split.py. Skipped when numba is not installed."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba", reason="numba not installed (pip install xrnn[fast])")

from xrnn._kernels import blas, packed, workspace  # noqa: E402

from .conftest import numpy_leg_only  # noqa: E402

pytestmark = numpy_leg_only

ROWS = [1, 2, 3, 4, 5, 6, 7, 8, 13, 14, 32]
INNER = [0, 1, 3, 17, packed.K_BLOCK + 5]
COLUMNS = [1, 7, 16, 17, 40, 70]


def _panels(w, transpose_b, rows=2):
    """``w``'s panels for ``a @ w.T`` (transpose_b, ``w`` (N, K)) or ``a @ w``, for
    ``rows`` rows of ``a``."""
    columns, inner = w.shape if transpose_b else w.shape[::-1]
    out = np.full(packed.panels_shape(columns, inner, w.dtype, rows), np.nan, w.dtype)
    packed.pack(w.T if transpose_b else w, out)
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows", ROWS)
def test_products_match_numpy(rng, dtype, rows):
    tolerance = 2e-6 if dtype == "float32" else 1e-13
    for inner in INNER:
        for columns in COLUMNS:
            a = rng.standard_normal((rows, inner)).astype(dtype)
            w = rng.standard_normal((columns, inner)).astype(dtype)
            want = a.astype(np.float64) @ w.T.astype(np.float64)
            scale = max(1.0, np.sqrt(inner))
            every = [_panels(w, True, rows), _panels(np.ascontiguousarray(w.T), False, rows)]
            if rows == 1:  # one row on the narrower panels of more rows too
                every.append(_panels(w, True))
            for panels in every:
                out = np.full((rows, columns), np.nan, dtype)
                packed.matmul(a, panels, out)
                np.testing.assert_allclose(out, want, rtol=tolerance,
                                           atol=tolerance * scale,
                                           err_msg=f"({rows}, {inner}) x ({inner}, {columns})")


def test_panels_hold_the_operand_by_columns_then_zeros(rng):
    w = rng.standard_normal((20, 3)).astype("float32")  # a @ w.T: 20 columns, 2 panels
    panels = _panels(w, True)
    assert panels.shape == (2, 3, packed.PANEL[4])
    np.testing.assert_array_equal(panels[0], w[:16].T)
    np.testing.assert_array_equal(panels[1, :, :4], w[16:].T)
    assert not panels[1, :, 4:].any()
    np.testing.assert_array_equal(_panels(np.ascontiguousarray(w.T), False), panels)
    assert packed.panels_shape(20, 3, "float64") == (3, 3, packed.PANEL[8])
    assert packed.panels_shape(40, 3, "float32", rows=1) == (2, 3, packed.ROW_PANEL[4])
    assert packed.panels_shape(40, 3, "float64", rows=1) == (3, 3, packed.ROW_PANEL[8])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows", [1, 2])
def test_transposed_packing_matches_packing_by_columns(rng, dtype, rows):
    """``pack_transposed(w)`` (blocks transposed in registers) writes what ``pack(w.T)``
    does, for sizes with whole blocks, partial blocks and a partial last panel."""
    for columns in (1, 5, 8, 16, 33, 70):
        for inner in (1, 3, 4, 8, 13, 40):
            w = rng.standard_normal((columns, inner)).astype(dtype)
            want = _panels(w, True, rows)
            got = np.full_like(want, np.nan)
            packed.pack_transposed(w, got)
            np.testing.assert_array_equal(got, want, err_msg=f"({columns}, {inner})")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_part_of_the_inner_dimension_added_or_written(rng, dtype):
    """``matmul_part``: ranges inside one inner block and across two, written over
    ``out`` or added to it (a partial last panel too), and an empty range; the parts
    add up to the whole product."""
    inner = packed.K_BLOCK + 40
    a = rng.standard_normal((9, inner)).astype(dtype)
    w = rng.standard_normal((21, inner)).astype(dtype)  # 21 columns: a partial panel
    panels = _panels(w, True)
    tolerance = 1e-4 if dtype == "float32" else 1e-12
    for first, last in [(0, 7), (5, packed.K_BLOCK + 9), (packed.K_BLOCK, inner), (3, 3)]:
        start = rng.standard_normal((9, 21)).astype(dtype)
        part = a[:, first:last].astype(np.float64) @ w[:, first:last].T
        for add in (False, True):
            out = start.copy()
            packed.matmul_part(a, panels, out, first, last, add)
            np.testing.assert_allclose(out, part + start * add, rtol=tolerance, atol=tolerance)
    out = np.empty((9, 21), dtype)
    packed.matmul_part(a, panels, out, 100, inner, False)
    packed.matmul_part(a, panels, out, 0, 100, True)
    np.testing.assert_allclose(out, a.astype(np.float64) @ w.T, rtol=tolerance, atol=tolerance)
    with pytest.raises(ValueError, match="inner range"):
        packed.matmul_part(a, panels, out, 5, inner + 1, False)


def test_mismatched_shapes_raise(rng):
    a = rng.standard_normal((4, 5)).astype("float32")
    panels = _panels(rng.standard_normal((16, 5)).astype("float32"), True)
    with pytest.raises(ValueError, match="packed.matmul"):
        packed.matmul(a, panels, np.empty((4, 17), "float32"))  # 17 columns: 2 panels
    with pytest.raises(ValueError, match="packed.matmul"):
        packed.matmul(a[:, :4], panels, np.empty((4, 16), "float32"))


@pytest.mark.skipif(not blas.AVAILABLE, reason="NumPy's BLAS is not scipy-openblas64")
@pytest.mark.parametrize("transpose_b", [True, False])
def test_panels_are_made_between_the_row_limits(rng, monkeypatch, transpose_b):
    """Panels (this thread's scratch) from MIN_ROWS to MAX_ROWS rows, float32 and
    float64, and at one row for ``a @ w.T``; else none (the L2's size unknown), and
    ``product`` gives BLAS's result either way."""
    monkeypatch.setattr(packed, "L2_BYTES", 0)
    workspace.release()
    w = rng.standard_normal((24, 10))
    for dtype in ("float32", "float64"):
        wd = w.astype(dtype)
        for rows in (1, packed.MIN_ROWS - 1, packed.MIN_ROWS, packed.MAX_ROWS,
                     packed.MAX_ROWS + 1):
            panels = packed.panels_for(wd, transpose_b, rows, "t")
            made = packed.MIN_ROWS <= rows <= packed.MAX_ROWS or (rows == 1 and transpose_b)
            columns = 24 if transpose_b else 10
            assert panels.shape == (packed.panels_shape(columns, 34 - columns, dtype, rows)
                                    if made else (0, 1, 1))
            assert panels.dtype == dtype
            a = rng.standard_normal((rows, 10 if transpose_b else 24)).astype(dtype)
            out = np.empty((rows, 24 if transpose_b else 10), dtype)
            packed.product(a, wd, transpose_b, panels, out)
            want = a @ (wd.T if transpose_b else wd)
            tolerance = 1e-5 if dtype == "float32" else 1e-12
            np.testing.assert_allclose(out, want, rtol=tolerance, atol=tolerance)
    assert packed.panels_for(w.astype("float16"), True, 8, "t").shape[0] == 0
    workspace.release()


@pytest.mark.parametrize("l2_bytes", [0, 1 << 19, 1 << 20])
def test_panels_past_max_rows_where_the_rows_fit_half_the_l2(rng, monkeypatch, l2_bytes):
    """From MAX_ROWS + 1 to L2_ROWS rows, panels only where the rows' block of K_BLOCK
    columns fits in half the L2 (none where its size is unknown); the product is right
    either way."""
    monkeypatch.setattr(packed, "L2_BYTES", l2_bytes)
    workspace.release()
    inner = packed.K_BLOCK + 3  # two inner blocks, the rows' block K_BLOCK wide
    w = rng.standard_normal((40, inner))
    for dtype in ("float32", "float64"):
        itemsize = np.dtype(dtype).itemsize
        for rows in (packed.MAX_ROWS + 1, 128, packed.L2_ROWS, packed.L2_ROWS + 1):
            panels = packed.panels_for(w.astype(dtype), True, rows, "t")
            fits = 2 * rows * packed.K_BLOCK * itemsize <= l2_bytes
            assert (panels.shape[0] > 0) == (fits and rows <= packed.L2_ROWS), (dtype, rows)
            a = rng.standard_normal((rows, inner)).astype(dtype)
            out = np.empty((rows, 40), dtype)
            packed.product(a, w.astype(dtype), True, panels, out)
            tolerance = 1e-4 if dtype == "float32" else 1e-12
            np.testing.assert_allclose(out, a @ w.astype(dtype).T, rtol=tolerance,
                                       atol=tolerance)
    workspace.release()


@pytest.mark.parametrize("entries, expected", [
    ({"index0": ("1", "Data", "32K"), "index1": ("1", "Instruction", "32K"),
      "index2": ("2", "Unified", "1024K"), "index3": ("3", "Unified", "32768K")}, 1 << 20),
    ({"index0": ("1", "Data", "48K"), "index2": ("2", "Unified", "2M")}, 2 << 20),
    ({"index0": ("1", "Data", "32K"), "index3": ("3", "Unified", "8192K")}, 0),  # no L2
    ({"index2": ("2", "Unified", "lots")}, 0),  # unreadable size
    ({}, 0),  # no cache folder (not Linux)
])
def test_l2_size_is_read_from_sysfs(monkeypatch, tmp_path, entries, expected):
    """The L2 of a sysfs cache folder (``index*/level``, ``type``, ``size``), or 0."""
    for name, values in entries.items():
        (tmp_path / name).mkdir()
        for field, value in zip(("level", "type", "size"), values):
            (tmp_path / name / field).write_text(value + "\n")
    monkeypatch.setattr(packed, "Path", lambda _: tmp_path)
    assert packed._l2_bytes() == expected


@pytest.mark.parametrize("rows", [1, 3, 6])
def test_rows_at_any_distance_and_non_contiguous_rows_refused(rng, rows):
    """``a`` and ``out`` as views whose rows lie apart (an output's half, as a layer's
    states could be): the products read and write only those rows, on panels and in
    ``blas.matmul``; rows that are not contiguous raise instead of giving a wrong answer."""
    w = rng.standard_normal((20, 9)).astype("float32")  # a @ w.T: 20 columns, inner 9
    wide_a = rng.standard_normal((rows, 2 * 9)).astype("float32")
    a = wide_a[:, 9:]
    want = a.astype(np.float64) @ w.T
    products = [lambda a, out: packed.matmul(a, _panels(w, True, rows), out)]
    if blas.AVAILABLE:
        products.append(lambda a, out: blas.matmul(a, w, True, out))
    for product in products:
        wide_out = np.full((rows, 2 * 20), np.nan, "float32")
        product(a, wide_out[:, :20])
        np.testing.assert_allclose(wide_out[:, :20], want, rtol=1e-5, atol=1e-5)
        assert np.isnan(wide_out[:, 20:]).all()
        with pytest.raises(ValueError, match="contiguous"):
            product(wide_a[:, ::2], np.empty((rows, 20), "float32"))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rows_on_one_row_panels_and_other_widths(rng, dtype):
    """Panels made for one row serve more rows (a row at a time); panels of a width no
    kernel has are refused."""
    a = rng.standard_normal((3, 11)).astype(dtype)
    w = rng.standard_normal((40, 11)).astype(dtype)
    out = np.full((3, 40), np.nan, dtype)
    packed.matmul(a, _panels(w, True, rows=1), out)
    tolerance = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(out, a.astype(np.float64) @ w.T, rtol=tolerance, atol=tolerance)
    with pytest.raises(ValueError, match="shapes"):
        packed.matmul(a, np.zeros((5, 11, 8 if dtype == "float32" else 4), dtype), out)
