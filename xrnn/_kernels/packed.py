"""Matrix products with one operand packed once, for the recurrent product of every step.

A layer multiplies the same ``W_hh`` by a new ``h`` at every step. OpenBLAS packs
``W_hh`` into its kernel's panels again on every call, and its kernels are made for
many rows: at 16-32 rows (a batch) it reached 57-68 GFLOP/s on one core of the
benchmark machine, where the core's peak is about 86. Here ``W_hh`` is packed once per
layer call (:func:`pack`) into panels of :data:`PANEL`
columns, each panel stored k-major, and each step's product (:func:`matmul`) runs a
register-blocked kernel over them: six rows of ``a`` against one panel, twelve vector
accumulators held in registers over the whole inner dimension (the classic 6 x 16
float32 kernel, written in LLVM IR so that nothing spills: :func:`_kernel`). Measured
on one core, float32: (32, 128) x (128, 512) 84 against OpenBLAS's 68 GFLOP/s,
(16, 256) x (256, 512) 87 against 58, (256, 1024) x (1024, 2048) 81-84 against 82
(benchmarks/NOTES.md, issue 13, tenth pass).

Panels past the last column are zero; the product writes only ``out``'s columns. Any
row count, inner size and column count; float32 and float64 (panels of 8), C-contiguous.
"""

from __future__ import annotations

from pathlib import Path

import llvmlite.ir as ir
import numba
import numpy as np
from numba import types
from numba.extending import intrinsic, overload

from . import blas
from .workspace import scratch

#: Columns per panel, by item size: two vectors of AVX2 (8 float32 or 4 float64).
PANEL = {4: 16, 8: 8}
#: Most rows of ``a`` per kernel call (twelve accumulators and the panel's two vectors
#: take 14 of AVX2's 16 vector registers).
_ROWS = 6
#: Inner-dimension block: the kernels sum at most this many products into their
#: registers before adding them to ``out`` (the panel block stays in the L1/L2 cache).
K_BLOCK = 512


def _make_kernel(rows: int, bits: int):
    """``out[rows, PANEL] (+)= a[rows, kc] @ panel[kc, PANEL]``: ``a`` with row stride
    ``lda``, ``panel`` contiguous (kc, PANEL), ``out`` with row stride ``ldo``; adds to
    ``out`` when ``add`` is not 0, else overwrites it. In LLVM IR: ``rows`` x 2 vector
    accumulators (phi nodes: registers), per k two vector loads of the panel, a
    broadcast of each row's value and ``rows`` x 2 fused multiply-adds."""
    lanes = 256 // bits
    real = ir.FloatType() if bits == 32 else ir.DoubleType()

    @intrinsic
    def kernel(typingctx, a, lda, panel, kc, out, ldo, add):
        signature = types.void(types.voidptr, types.int64, types.voidptr, types.int64,
                               types.voidptr, types.int64, types.int64)

        def codegen(context, builder, sig, args):
            a_ptr, lda_v, panel_ptr, kc_v, out_ptr, ldo_v, add_v = args
            i64, i32 = ir.IntType(64), ir.IntType(32)
            vector = ir.VectorType(real, lanes)
            module = builder.module
            name = f"llvm.fma.v{lanes}f{bits}"
            fma = module.globals.get(name) or ir.Function(
                module, ir.FunctionType(vector, [vector] * 3), name=name)
            a_r = builder.bitcast(a_ptr, real.as_pointer())
            p_r = builder.bitcast(panel_ptr, real.as_pointer())
            o_r = builder.bitcast(out_ptr, real.as_pointer())
            zero = ir.Constant(vector, [0.0] * lanes)
            splat = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)

            def const(v):
                return ir.Constant(i64, v)

            entry = builder.block
            loop = builder.append_basic_block("packed.loop")
            done = builder.append_basic_block("packed.done")
            builder.cbranch(builder.icmp_signed(">", kc_v, const(0)), loop, done)

            builder.position_at_end(loop)
            k = builder.phi(i64)
            k.add_incoming(const(0), entry)
            acc = [[builder.phi(vector) for _ in range(2)] for _ in range(rows)]
            for row in acc:
                for phi in row:
                    phi.add_incoming(zero, entry)
            base = builder.mul(k, const(2 * lanes))
            b = [builder.load(builder.bitcast(
                builder.gep(p_r, [builder.add(base, const(v * lanes))]), vector.as_pointer()),
                align=bits // 8) for v in range(2)]
            new = []
            for r in range(rows):
                value = builder.load(builder.gep(a_r, [builder.add(
                    builder.mul(lda_v, const(r)), k)]))
                broadcast = builder.shuffle_vector(
                    builder.insert_element(ir.Constant(vector, ir.Undefined), value,
                                           ir.Constant(i32, 0)),
                    ir.Constant(vector, ir.Undefined), splat)
                new.append([builder.call(fma, [broadcast, b[v], acc[r][v]]) for v in range(2)])
            k_next = builder.add(k, const(1))
            k.add_incoming(k_next, loop)
            for r in range(rows):
                for v in range(2):
                    acc[r][v].add_incoming(new[r][v], loop)
            builder.cbranch(builder.icmp_signed("<", k_next, kc_v), loop, done)

            builder.position_at_end(done)
            totals = [[builder.phi(vector) for _ in range(2)] for _ in range(rows)]
            for r in range(rows):
                for v in range(2):
                    totals[r][v].add_incoming(zero, entry)
                    totals[r][v].add_incoming(new[r][v], loop)
            adding = builder.icmp_signed("!=", add_v, const(0))
            for r in range(rows):
                for v in range(2):
                    total = totals[r][v]
                    where = builder.bitcast(builder.gep(o_r, [builder.add(
                        builder.mul(ldo_v, const(r)), const(v * lanes))]), vector.as_pointer())
                    old = builder.load(where, align=bits // 8)
                    builder.store(builder.select(adding, builder.fadd(old, total), total),
                                  where, align=bits // 8)
            return context.get_dummy_value()

        return signature, codegen

    return kernel


#: bits -> the kernels for 1 to 6 rows
_KERNELS = {bits: tuple(_make_kernel(rows, bits) for rows in range(1, 7)) for bits in (32, 64)}


def panels_shape(columns: int, inner: int, dtype) -> tuple[int, int, int]:
    """The shape of the packed panels of a (``inner``, ``columns``) right operand."""
    width = PANEL[np.dtype(dtype).itemsize]
    return (-(-columns // width), inner, width)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def pack(w, out):
    """Panels of ``w`` for ``a @ w`` (``w`` (K, N), any layout: ``W.T`` for ``a @ W.T``):
    ``out[p, k, j] = w[k, P p + j]``, zero past column N; ``out`` of
    :func:`panels_shape` ``(N, K)``."""
    inner, columns = w.shape
    width = out.shape[2]
    zero = out.dtype.type(0)
    for p in range(out.shape[0]):
        first = p * width
        count = min(width, columns - first)
        for k in range(inner):
            row, target = w[k], out[p, k]
            for j in range(count):
                target[j] = row[first + j]
            for j in range(count, width):
                target[j] = zero


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _group(rows, first):
    """The size of the row group that starts at row ``first`` of ``rows``: sixes, and for
    what is left 5, 4 or 3, or 4 + 4 and 4 + 3 in place of a six (a kernel of 1 or 2 rows
    has too few accumulators to keep both FMA units busy)."""
    left = rows - first
    return 4 if left in (7, 8) else min(left, _ROWS)  # 7 = 4 + 3, 8 = 4 + 4


def _kernel(a, r, take, k0, kc, panel, out, column, ldo, add):
    """Rows ``r:r + take`` (1 to 6) of ``a`` against one panel block (compiled code only:
    the kernels of ``a``'s dtype, chosen when it is compiled)."""
    raise NotImplementedError("packed._kernel runs inside compiled code only")


@overload(_kernel, jit_options={"error_model": "numpy"})
def _kernel_overload(a, r, take, k0, kc, panel, out, column, ldo, add):
    k1, k2, k3, k4, k5, k6 = _KERNELS[a.dtype.bitwidth]

    def implementation(a, r, take, k0, kc, panel, out, column, ldo, add):
        lda = a.shape[1]
        a_at = a[r, k0:].ctypes
        o_at = out[r, column:].ctypes
        if take == 6:
            k6(a_at, lda, panel, kc, o_at, ldo, add)
        elif take == 5:
            k5(a_at, lda, panel, kc, o_at, ldo, add)
        elif take == 4:
            k4(a_at, lda, panel, kc, o_at, ldo, add)
        elif take == 3:
            k3(a_at, lda, panel, kc, o_at, ldo, add)
        elif take == 2:
            k2(a_at, lda, panel, kc, o_at, ldo, add)
        else:
            k1(a_at, lda, panel, kc, o_at, ldo, add)
    return implementation


@numba.njit(cache=True, nogil=True, error_model="numpy")
def matmul(a, panels, out):
    """``out = a @ B`` (``a`` (M, K), ``out`` (M, N)) with ``B`` (K, N) packed as
    ``panels`` (:func:`pack`), all C-contiguous and of one dtype."""
    matmul_part(a, panels, out, 0, a.shape[1], False)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def matmul_part(a, panels, out, k_first, k_last, add):
    """``out (+)= a[:, k_first:k_last] @ B[k_first:k_last]``: part of :func:`matmul`'s
    inner dimension, added to ``out`` with ``add``, else written over it. A partial
    last panel goes through a small buffer."""
    rows, inner = a.shape
    columns = out.shape[1]
    count, width = panels.shape[0], panels.shape[2]
    if panels.shape[1] != inner or out.shape[0] != rows or not (
            (count - 1) * width < columns <= count * width):
        raise ValueError("packed.matmul: the shapes of a, panels and out do not match")
    if not 0 <= k_first <= k_last <= inner:
        raise ValueError("packed.matmul_part: the inner range is outside a's columns")
    if k_first == k_last:  # nothing to add (the split's empty part, an empty ``a``)
        if not add:
            out[...] = 0
        return
    full = columns // width
    tile = np.zeros((rows, width), dtype=out.dtype)  # (the partial last panel's columns)
    if add:
        tile[:, :columns - full * width] = out[:, full * width:]
    for k0 in range(k_first, k_last, K_BLOCK):
        kc = min(K_BLOCK, k_last - k0)
        adding = 1 if add or k0 > k_first else 0
        for p in range(count):
            panel = panels[p, k0:].ctypes
            target, column, ldo = (out, p * width, columns) if p < full else (tile, 0, width)
            first = 0
            while first < rows:
                take = _group(rows, first)
                _kernel(a, first, take, k0, kc, panel, target, column, ldo, adding)
                first += take
    if full < count:
        out[:, full * width:] = tile[:, :columns - full * width]


#: From :data:`MIN_ROWS` to :data:`MAX_ROWS` rows of ``a``, a step's product runs on
#: packed panels: at 4 to 64 rows 1.1-2.5x OpenBLAS's speed on one core; at 1 row 0.7x
#: (a matrix-vector product reads every weight once either way, and OpenBLAS's is
#: faster), at 2 rows 0.8-1.4x (NOTES.md, issue 13, tenth pass).
MIN_ROWS, MAX_ROWS = 4, 64
#: Up to :data:`L2_ROWS` rows, it also runs on panels where the rows' block of
#: :data:`K_BLOCK` columns fits in half of a core's L2 cache (:data:`L2_BYTES`), which
#: every panel's pass reads again. At 256 rows, (256, 1024) x (1024, 2048), both cores
#: busy, float32: 98-105 GFLOP/s a core against OpenBLAS's 89-91 with a 1 MiB L2
#: (Zen 4); on the tenth pass's host (its L2 not recorded) the same product had been
#: 1-11% slower in the (100,256,512,1024,1,1) LSTM (NOTES.md, issue 13, tenth and
#: sixteenth passes).
L2_ROWS = 256


def _l2_bytes() -> int:
    """A core's L2 cache in bytes, from Linux's sysfs; 0 where it cannot be read."""
    units = {"K": 1 << 10, "M": 1 << 20}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((index / name).read_text().strip()
                                 for name in ("level", "type", "size"))
            if level == "2" and kind in ("Unified", "Data"):
                return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
        except (OSError, ValueError, KeyError):
            return 0
    return 0


#: A core's L2 cache in bytes (0: unknown, and no products on panels past MAX_ROWS rows).
L2_BYTES = _l2_bytes()


def on_panels(rows: int, inner: int, itemsize: int) -> bool:
    """Whether a product with ``rows`` rows and inner size ``inner`` runs on panels."""
    if not MIN_ROWS <= rows <= max(MAX_ROWS, L2_ROWS):
        return False
    return rows <= MAX_ROWS or 2 * rows * min(inner, K_BLOCK) * itemsize <= L2_BYTES


_NONE = {np.dtype(np.float32): np.empty((0, 1, 1), np.float32),
         np.dtype(np.float64): np.empty((0, 1, 1), np.float64)}


def panels_for(w, transpose_b: bool, rows: int, name: str):
    """The panels of a layer's right operand for :func:`product` with ``rows`` rows:
    ``w.T`` (``w`` (N, K)) with ``transpose_b``, else ``w`` (K, N), packed into this
    thread's scratch ``name``; or an empty array (the products then go to BLAS) outside
    :func:`on_panels`' rows or for a dtype without kernels."""
    dtype = np.dtype(w.dtype)
    columns, inner = w.shape if transpose_b else w.shape[::-1]
    if dtype not in _NONE or not on_panels(rows, inner, dtype.itemsize):
        return _NONE.get(dtype, _NONE[np.dtype(np.float64)])
    out = scratch(name, panels_shape(columns, inner, dtype), dtype)
    pack(w.T if transpose_b else w, out)
    return out


@numba.njit(cache=True, nogil=True, error_model="numpy")
def product(a, w, transpose_b, panels, out):
    """``out = a @ (w.T if transpose_b else w)``: on ``panels`` (from
    :func:`panels_for`) when there are any, else :func:`.blas.matmul`."""
    if panels.shape[0] > 0:
        matmul(a, panels, out)
    else:
        blas.matmul(a, w, transpose_b, out)
