"""NumPy's own BLAS, callable from compiled code that holds no GIL.

The PyPI wheels of NumPy 2 ship OpenBLAS as ``scipy-openblas64``, whose CBLAS symbols
carry the prefix ``scipy_`` and the suffix ``64_`` (64-bit integers). They are looked up
once through NumPy's own extension module, so the library is the one NumPy already
loaded, and registered with LLVM under names of ours; compiled functions call them by
name, so Numba's on-disk cache stays valid from process to process. (Numba's own
``np.dot`` calls SciPy's OpenBLAS instead, whose small products ran 1.5-3x slower here:
benchmarks/NOTES.md, issue 13, fifth pass.) With another NumPy build (MKL, Accelerate)
the symbols are missing, :data:`AVAILABLE` is False and nothing here may be called.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

import numba
import numpy as np
from llvmlite import binding
from numba import types

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
#: our name -> the symbol in NumPy's scipy-openblas64
_SYMBOLS = {"xrnn_sgemm": "scipy_cblas_sgemm64_", "xrnn_dgemm": "scipy_cblas_dgemm64_",
            "xrnn_sgemv": "scipy_cblas_sgemv64_", "xrnn_dgemv": "scipy_cblas_dgemv64_"}


def _register() -> tuple[bool, object, ctypes.c_int | None]:
    """Register NumPy's CBLAS functions with LLVM; False when a symbol is missing. And
    OpenBLAS's ``blas_thread_shutdown_`` and its thread count ``blas_cpu_number``, or
    None each."""
    try:
        from numpy._core import _multiarray_umath as extension
    except ImportError:  # NumPy 1.x
        from numpy.core import _multiarray_umath as extension
    try:
        library = ctypes.CDLL(extension.__file__)  # its dependencies are searched too
        addresses = {name: ctypes.cast(getattr(library, symbol), ctypes.c_void_p).value
                     for name, symbol in _SYMBOLS.items()}
    except (OSError, AttributeError):
        return False, None, None
    for name, address in addresses.items():
        binding.add_symbol(name, address)
    try:
        count = ctypes.c_int.in_dll(library, "blas_cpu_number")
    except ValueError:
        count = None
    return True, getattr(library, "blas_thread_shutdown_", None), count


#: Whether NumPy's BLAS was found (and :func:`matmul` may run).
AVAILABLE, _shutdown, _thread_count = _register()


def stop_workers() -> None:
    """End OpenBLAS's worker threads now (it starts them again on its next call on more
    than one thread). After a product on its threads they spin for about 0.1 s before
    they sleep (OpenBLAS's ``THREAD_TIMEOUT``), taking a core from any other thread that
    needs one. Safe whenever no other thread can be calling BLAS (OpenBLAS calls it
    itself before a fork); setting BLAS's thread count through its API starts them
    again, so a caller that wants them gone sets one thread first."""
    if _shutdown is not None:
        _shutdown()


@contextlib.contextmanager
def one_thread() -> Iterator[bool]:
    """NumPy's OpenBLAS on one thread for the block, then back to its count before;
    yields False (and changes nothing) where its thread count is not known.

    This writes the count that each OpenBLAS call reads (``blas_cpu_number``) rather
    than calling ``openblas_set_num_threads``: after :func:`stop_workers` that call
    starts the workers again, at either end of the block, and a layer on two threads
    then ended them once more (:func:`.numba_threaded.cores_for_two_threads`). Setting
    and restoring the count that way took 0.23 ms a layer call, against about 1 us
    here; OpenBLAS starts its workers itself, when a product next runs on more than one
    thread, as it does after a fork (NOTES.md, issue 13, seventeenth pass)."""
    if _thread_count is None:
        yield False
        return
    count = _thread_count.value
    _thread_count.value = 1
    try:
        yield True
    finally:
        _thread_count.value = count


_i32, _i64, _ptr = types.int32, types.int64, types.voidptr


def _gemm(name, real):
    return types.ExternalFunction(name, types.void(
        _i32, _i32, _i32, _i64, _i64, _i64, real, _ptr, _i64, _ptr, _i64, real, _ptr, _i64))


def _gemv(name, real):
    return types.ExternalFunction(name, types.void(
        _i32, _i32, _i64, _i64, real, _ptr, _i64, _ptr, _i64, real, _ptr, _i64))


_sgemm, _dgemm = _gemm("xrnn_sgemm", types.float32), _gemm("xrnn_dgemm", types.float64)
_sgemv, _dgemv = _gemv("xrnn_sgemv", types.float32), _gemv("xrnn_dgemv", types.float64)


#: Below this many rows, :func:`matmul` is a matrix-vector product per row: OpenBLAS's
#: sgemm with 2 or 3 rows took 2.4-5x as long as that (NOTES.md, issue 13, fifth pass).
GEMV_ROWS = 4
#: From 2 to :data:`DOTS_ROWS` rows and from :data:`DOTS_INNER` columns of ``a`` on,
#: :func:`matmul` with ``transpose_b`` takes dot products of ``b``'s rows itself
#: (:func:`_rows_dots`) instead of calling BLAS, which packs ``b`` on every call and
#: whose kernels are made for many rows. Single thread, float32, (M, K) x (K, N):
#: (4, 512) x (512, 2048) 148 us against 315 us, (16, 256) x (256, 512) 60 against
#: 72; (32, 256) x (256, 512) 132 against 120, (16, 64) x (64, 256) 11 against 9
#: (NOTES.md, issue 13, eighth pass).
DOTS_ROWS, DOTS_INNER = 16, 256
#: From 2 to this many rows, :func:`matmul` without ``transpose_b`` adds up ``b``'s rows
#: itself (:func:`_rows_axpy`): single thread, float32, (2, 2048) x (2048, 512) 87 us
#: against 125 (a gemv per row), (4, 2048) x (2048, 512) 164 against 221 (sgemm); at 8
#: rows 446 against 333 (NOTES.md, issue 13, eighth pass).
AXPY_ROWS = 4


@numba.njit(cache=True, nogil=True, error_model="numpy", boundscheck=False,
            fastmath={"contract", "arcp", "nsz", "reassoc"})
def _rows_dots(a, b, out):
    """``out = a @ b.T`` (a (M, K), b (N, K)) as dot products: four rows of ``b`` against
    two of ``a`` in one pass over K, eight sums that LLVM vectorises ("reassoc": each
    summed in any order). Each row of ``b`` is read once per two rows of ``a``."""
    rows, inner = a.shape
    width = b.shape[0]
    zero = out.dtype.type(0)
    pairs, quads = rows - rows % 2, width - width % 4
    for j in range(0, quads, 4):
        b0, b1, b2, b3 = b[j], b[j + 1], b[j + 2], b[j + 3]
        for r in range(0, pairs, 2):
            x, y = a[r], a[r + 1]
            x0 = x1 = x2 = x3 = y0 = y1 = y2 = y3 = zero
            for k in range(inner):
                xk, yk = x[k], y[k]
                x0 += b0[k] * xk
                x1 += b1[k] * xk
                x2 += b2[k] * xk
                x3 += b3[k] * xk
                y0 += b0[k] * yk
                y1 += b1[k] * yk
                y2 += b2[k] * yk
                y3 += b3[k] * yk
            out[r, j], out[r, j + 1], out[r, j + 2], out[r, j + 3] = x0, x1, x2, x3
            out[r + 1, j], out[r + 1, j + 1], out[r + 1, j + 2], out[r + 1, j + 3] = (
                y0, y1, y2, y3)
        if pairs < rows:
            x = a[pairs]
            x0 = x1 = x2 = x3 = zero
            for k in range(inner):
                xk = x[k]
                x0 += b0[k] * xk
                x1 += b1[k] * xk
                x2 += b2[k] * xk
                x3 += b3[k] * xk
            out[pairs, j], out[pairs, j + 1], out[pairs, j + 2], out[pairs, j + 3] = (
                x0, x1, x2, x3)
    for j in range(quads, width):
        row = b[j]
        for r in range(rows):
            x, total = a[r], zero
            for k in range(inner):
                total += row[k] * x[k]
            out[r, j] = total


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract", "arcp", "nsz"})
def _accumulate(out, coef, rows):
    """``out += coef @ rows`` (out (W,), coef (K,), rows (K, W)), four rows per pass over
    ``out``."""
    size, width = rows.shape
    rest = size - size % 4
    for k in range(0, rest, 4):
        c0, c1, c2, c3 = coef[k], coef[k + 1], coef[k + 2], coef[k + 3]
        r0, r1, r2, r3 = rows[k], rows[k + 1], rows[k + 2], rows[k + 3]
        for j in range(width):
            out[j] += c0 * r0[j] + c1 * r1[j] + c2 * r2[j] + c3 * r3[j]
    for k in range(rest, size):
        ck, rk = coef[k], rows[k]
        for j in range(width):
            out[j] += ck * rk[j]


@numba.njit(cache=True, nogil=True, error_model="numpy", boundscheck=False,
            fastmath={"contract", "arcp", "nsz"})
def _rows_axpy(a, b, out):
    """``out = a @ b`` (a (M, K), b (K, N)) as sums of ``b``'s rows: four rows, scaled
    by two rows of ``a``, added into two rows of ``out`` in one pass over N (vectorised
    along N; an odd last row by :func:`_accumulate`). Each row of ``b`` is read once per
    two rows of ``a``."""
    rows, inner = a.shape
    width = b.shape[1]
    zero = out.dtype.type(0)
    quads = inner - inner % 4
    for r in range(0, rows - rows % 2, 2):
        x, y, ox, oy = a[r], a[r + 1], out[r], out[r + 1]
        for j in range(width):
            ox[j] = zero
            oy[j] = zero
        for k in range(0, quads, 4):
            b0, b1, b2, b3 = b[k], b[k + 1], b[k + 2], b[k + 3]
            x0, x1, x2, x3 = x[k], x[k + 1], x[k + 2], x[k + 3]
            y0, y1, y2, y3 = y[k], y[k + 1], y[k + 2], y[k + 3]
            for j in range(width):
                ox[j] += x0 * b0[j] + x1 * b1[j] + x2 * b2[j] + x3 * b3[j]
                oy[j] += y0 * b0[j] + y1 * b1[j] + y2 * b2[j] + y3 * b3[j]
        for k in range(quads, inner):
            bk, xk, yk = b[k], x[k], y[k]
            for j in range(width):
                ox[j] += xk * bk[j]
                oy[j] += yk * bk[j]
    if rows % 2:  # the last row alone
        out[rows - 1] = zero
        _accumulate(out[rows - 1], a[rows - 1], b)


@numba.njit(cache=True, nogil=True)
def matmul(a, b, transpose_b, out):
    """``out = a @ (b.T if transpose_b else b)``: ``a`` (M, K), ``b`` (K, N), or (N, K)
    with ``transpose_b``, ``out`` (M, N), float32 or float64, one dtype; ``b``
    C-contiguous, ``a``'s and ``out``'s rows contiguous at any distance from each other.
    With ``transpose_b``, dot products (:func:`_rows_dots`) for 2 to
    :data:`DOTS_ROWS` rows of at least :data:`DOTS_INNER`; without, sums of ``b``'s rows
    (:func:`_rows_axpy`) for 2 to :data:`AXPY_ROWS` rows; else BLAS: a matrix-vector
    product per row when M < :data:`GEMV_ROWS`, else gemm."""
    rows, inner = a.shape
    columns = out.shape[1]
    single = out.itemsize == 4
    ldb = b.shape[1]
    if (b.shape[1] if transpose_b else b.shape[0]) != inner or out.shape[0] != rows or (
            b.shape[0] if transpose_b else b.shape[1]) != columns:
        raise ValueError("blas.matmul: the shapes of a, b and out do not match")
    if (inner > 1 and a.strides[1] != a.itemsize) or (
            columns > 1 and out.strides[1] != out.itemsize):
        raise ValueError("blas.matmul: the rows of a and out must be contiguous")
    lda = a.strides[0] // a.itemsize if rows > 1 else inner
    ldo = out.strides[0] // out.itemsize if rows > 1 else columns
    if transpose_b and 2 <= rows <= DOTS_ROWS and inner >= DOTS_INNER:
        _rows_dots(a, b, out)
        return
    if not transpose_b and 2 <= rows <= AXPY_ROWS:
        _rows_axpy(a, b, out)
        return
    if rows < GEMV_ROWS:  # out[r]^T = b a[r]^T, or b^T a[r]^T
        trans = _NO_TRANS if transpose_b else _TRANS
        for r in range(rows):
            vector, result = a[r:r + 1], out[r:r + 1]
            if single:
                _sgemv(_ROW_MAJOR, trans, b.shape[0], ldb, np.float32(1), b.ctypes, ldb,
                       vector.ctypes, 1, np.float32(0), result.ctypes, 1)
            else:
                _dgemv(_ROW_MAJOR, trans, b.shape[0], ldb, np.float64(1), b.ctypes, ldb,
                       vector.ctypes, 1, np.float64(0), result.ctypes, 1)
        return
    trans = _TRANS if transpose_b else _NO_TRANS
    if single:
        _sgemm(_ROW_MAJOR, _NO_TRANS, trans, rows, columns, inner, np.float32(1), a.ctypes,
               lda, b.ctypes, ldb, np.float32(0), out.ctypes, ldo)
    else:
        _dgemm(_ROW_MAJOR, _NO_TRANS, trans, rows, columns, inner, np.float64(1), a.ctypes,
               lda, b.ctypes, ldb, np.float64(0), out.ctypes, ldo)


@numba.njit(cache=True, nogil=True)
def matmul_t(a, b, out):
    """``out = a.T @ b`` by gemm: ``a`` (K, M), ``b`` (K, N), ``out`` (M, N), float32 or
    float64, one dtype; each one's rows contiguous at any distance from each other (the
    weight gradients of a half's gate columns, ``dz[:, rows].T @ x``)."""
    inner, rows = a.shape
    columns = out.shape[1]
    if b.shape[0] != inner or out.shape[0] != rows or b.shape[1] != columns:
        raise ValueError("blas.matmul_t: the shapes of a, b and out do not match")
    if (rows > 1 and a.strides[1] != a.itemsize) or (
            columns > 1 and (b.strides[1] != b.itemsize or out.strides[1] != out.itemsize)):
        raise ValueError("blas.matmul_t: the rows of a, b and out must be contiguous")
    lda = a.strides[0] // a.itemsize if inner > 1 else rows
    ldb = b.strides[0] // b.itemsize if inner > 1 else columns
    ldo = out.strides[0] // out.itemsize if rows > 1 else columns
    if out.itemsize == 4:
        _sgemm(_ROW_MAJOR, _TRANS, _NO_TRANS, rows, columns, inner, np.float32(1), a.ctypes,
               lda, b.ctypes, ldb, np.float32(0), out.ctypes, ldo)
    else:
        _dgemm(_ROW_MAJOR, _TRANS, _NO_TRANS, rows, columns, inner, np.float64(1), a.ctypes,
               lda, b.ctypes, ldb, np.float64(0), out.ctypes, ldo)
