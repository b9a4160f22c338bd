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

One row (a batch of one: a matrix-vector product, which reads every weight once per
step) has a kernel of its own on wider panels (:data:`ROW_PANEL`): the panel is one
contiguous stream, and its sixteen accumulators hold no value of ``W`` in a register
twice. On one core, float32, ``h W^T`` for a (2048, 512) ``W`` in L3: 43 us (97 GB/s)
against OpenBLAS's gemv 67 us; (512, 128) in L2: 2.3 against 2.9 us (NOTES.md, issue 13,
eighteenth pass). ``W^T``'s panels are packed by blocks transposed in registers
(:func:`pack_transposed`).

Panels past the last column are zero; the product writes only ``out``'s columns. Any
row count, inner size and column count; float32 and float64 (panels of 8 columns, 16 for
one row); the panels C-contiguous, the rows of ``a`` and ``out`` each contiguous.
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

#: Bytes of a panel's row: two vectors of AVX2 (8 float32 or 4 float64 each).
_PANEL_BYTES = 64
#: Columns per panel, by item size.
PANEL = {4: _PANEL_BYTES // 4, 8: _PANEL_BYTES // 8}
#: Bytes of a panel's row for products of one row (a matrix-vector product): four
#: vectors of AVX2, so that the kernel has enough independent sums (:data:`ROW_SPLIT`).
_ROW_BYTES = 128
#: Columns per panel for products of one row, by item size.
ROW_PANEL = {4: _ROW_BYTES // 4, 8: _ROW_BYTES // 8}
#: Most rows of ``a`` per kernel call (twelve accumulators and the panel's two vectors
#: take 14 of AVX2's 16 vector registers).
_ROWS = 6
#: Inner-dimension block: the kernels sum at most this many products into their
#: registers before adding them to ``out`` (the panel block stays in the L1/L2 cache).
K_BLOCK = 512


def _make_kernel(rows: int, bits: int, vectors: int = 2, split: int = 1):
    """``out[rows, width] (+)= a[rows, kc] @ panel[kc, width]``: ``a`` with row stride
    ``lda``, ``panel`` contiguous (kc, width), ``out`` with row stride ``ldo``; adds to
    ``out`` when ``add`` is not 0, else overwrites it; ``width`` is ``vectors`` AVX2
    vectors (16 float32 for 2). In LLVM IR: ``rows`` x ``vectors`` vector
    accumulators (phi nodes: registers), per k ``vectors`` vector loads of the panel, a
    broadcast of each row's value and ``rows`` x ``vectors`` fused multiply-adds. With ``split``
    > 1, ``split`` sets of accumulators take turns over k (so that a row or two still
    has enough independent sums to keep the FMA units busy) and are added at the end;
    the last ``kc % split`` values of k go through a loop of one set."""
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

            def phis(incoming):
                """A phi per accumulator, from ``incoming``: (values (rows x vectors), block)."""
                nodes = [[builder.phi(vector) for _ in range(vectors)] for _ in range(rows)]
                for values, block in incoming:
                    for r in range(rows):
                        for v in range(vectors):
                            nodes[r][v].add_incoming(values[r][v], block)
                return nodes

            def multiply_add(k, acc):
                """``acc[r] += a[r, k] * panel[k]``: the new accumulators."""
                base = builder.mul(k, const(vectors * lanes))
                b = [builder.load(builder.bitcast(
                    builder.gep(p_r, [builder.add(base, const(v * lanes))]),
                    vector.as_pointer()), align=bits // 8) for v in range(vectors)]
                new = []
                for r in range(rows):
                    value = builder.load(builder.gep(a_r, [builder.add(
                        builder.mul(lda_v, const(r)), k)]))
                    broadcast = builder.shuffle_vector(
                        builder.insert_element(ir.Constant(vector, ir.Undefined), value,
                                               ir.Constant(i32, 0)),
                        ir.Constant(vector, ir.Undefined), splat)
                    new.append([builder.call(fma, [broadcast, b[v], acc[r][v]])
                                for v in range(vectors)])
                return new

            zeros = [[zero] * vectors for _ in range(rows)]
            entry = builder.block
            loop = builder.append_basic_block("packed.loop")
            joined = builder.append_basic_block("packed.joined")
            rest = builder.append_basic_block("packed.rest") if split > 1 else None
            done = builder.append_basic_block("packed.done")
            full = builder.sub(kc_v, builder.srem(kc_v, const(split)))
            builder.cbranch(builder.icmp_signed(">", full, const(0)), loop, joined)

            builder.position_at_end(loop)  # k = 0, split, 2 split, ... < full
            k = builder.phi(i64)
            k.add_incoming(const(0), entry)
            acc = [phis([(zeros, entry)]) for _ in range(split)]
            new = [multiply_add(builder.add(k, const(s)), acc[s]) for s in range(split)]
            k_next = builder.add(k, const(split))
            k.add_incoming(k_next, loop)
            for s in range(split):
                for r in range(rows):
                    for v in range(vectors):
                        acc[s][r][v].add_incoming(new[s][r][v], loop)
            builder.cbranch(builder.icmp_signed("<", k_next, full), loop, joined)

            builder.position_at_end(joined)  # the sets added up
            parts = [phis([(zeros, entry), (new[s], loop)]) for s in range(split)]
            sums = parts[0]
            for part in parts[1:]:
                sums = [[builder.fadd(sums[r][v], part[r][v]) for v in range(vectors)]
                        for r in range(rows)]
            if rest is None:  # (one set: full is kc)
                builder.branch(done)
                builder.position_at_end(done)
                totals = sums
            else:
                builder.cbranch(builder.icmp_signed("<", full, kc_v), rest, done)
                builder.position_at_end(rest)  # k = full, ..., kc - 1
                k = builder.phi(i64)
                k.add_incoming(full, joined)
                acc = phis([(sums, joined)])
                last = multiply_add(k, acc)
                k_next = builder.add(k, const(1))
                k.add_incoming(k_next, rest)
                for r in range(rows):
                    for v in range(vectors):
                        acc[r][v].add_incoming(last[r][v], rest)
                builder.cbranch(builder.icmp_signed("<", k_next, kc_v), rest, done)
                builder.position_at_end(done)
                totals = phis([(sums, joined), (last, rest)])
            adding = builder.icmp_signed("!=", add_v, const(0))
            for r in range(rows):
                for v in range(vectors):
                    total = totals[r][v]
                    where = builder.bitcast(builder.gep(o_r, [builder.add(
                        builder.mul(ldo_v, const(r)), const(v * lanes))]), vector.as_pointer())
                    old = builder.load(where, align=bits // 8)
                    builder.store(builder.select(adding, builder.fadd(old, total), total),
                                  where, align=bits // 8)
            return context.get_dummy_value()

        return signature, codegen

    return kernel


#: Sets of accumulators that take turns over k in the one-row kernel (:func:`_make_kernel`):
#: with one set, each sum waits on its last multiply-add (4 cycles). (2048, 512) float32
#: in L3, one core: 43 us with four sets, 49 with one.
ROW_SPLIT = 4

#: bits -> the kernels for 1 to 6 rows on panels of :data:`PANEL` columns
_KERNELS = {bits: tuple(_make_kernel(rows, bits, split=ROW_SPLIT if rows == 1 else 1)
                        for rows in range(1, 7)) for bits in (32, 64)}
#: bits -> the kernel for one row on panels of :data:`ROW_PANEL` columns
_ROW_KERNELS = {bits: _make_kernel(1, bits, ROW_PANEL[bits // 8] * bits // 256, ROW_SPLIT)
                for bits in (32, 64)}


def panel_width(rows: int, itemsize: int) -> int:
    """Columns per panel for products with ``rows`` rows of ``a``."""
    return (ROW_PANEL if rows == 1 else PANEL)[itemsize]


def panels_shape(columns: int, inner: int, dtype, rows: int = 2) -> tuple[int, int, int]:
    """The shape of the packed panels of a (``inner``, ``columns``) right operand, for
    products with ``rows`` rows of ``a``."""
    width = panel_width(rows, np.dtype(dtype).itemsize)
    return (-(-columns // width), inner, width)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def pack(w, out):
    """Panels of ``w`` for ``a @ w`` (``w`` (K, N), any layout: ``W.T`` for ``a @ W.T``):
    ``out[p, k, j] = w[k, P p + j]``, zero past column N; ``out`` of
    :func:`panels_shape` ``(N, K)``."""
    inner, columns = w.shape
    width = out.shape[2]
    zero = out.dtype.type(0)
    full = columns // width
    for k in range(inner):  # (row by row of w: panel by panel took 2-6x as long)
        row = w[k]
        for p in range(full):  # (a whole panel's row: a copy of a known length)
            target, first = out[p, k], p * width
            for j in range(width):
                target[j] = row[first + j]
        for p in range(full, out.shape[0]):
            target, first = out[p, k], p * width
            for j in range(columns - first):
                target[j] = row[first + j]
            for j in range(columns - first, width):
                target[j] = zero


def _make_transpose(bits: int):
    """``dst[k, j] = src[j, k]`` for a block of ``lanes`` x ``lanes`` (a vector's values):
    ``src`` with row stride ``lds``, ``dst`` with ``ldd``. In LLVM IR: ``lanes`` vector
    loads, log2(lanes) rounds of interleaving pairs of rows (row i with row i + lanes/2,
    their low halves' values alternating, then their high halves'), ``lanes`` stores."""
    lanes = 256 // bits
    real = ir.FloatType() if bits == 32 else ir.DoubleType()
    half = lanes // 2
    low = [v for j in range(half) for v in (j, lanes + j)]
    high = [v for j in range(half, lanes) for v in (j, lanes + j)]

    @intrinsic
    def transpose(typingctx, src, lds, dst, ldd):
        signature = types.void(types.voidptr, types.int64, types.voidptr, types.int64)

        def codegen(context, builder, sig, args):
            src_ptr, lds_v, dst_ptr, ldd_v = args
            i64, i32 = ir.IntType(64), ir.IntType(32)
            vector = ir.VectorType(real, lanes)
            s_r = builder.bitcast(src_ptr, real.as_pointer())
            d_r = builder.bitcast(dst_ptr, real.as_pointer())

            def at(base, stride, r):
                return builder.bitcast(builder.gep(base, [builder.mul(stride, ir.Constant(
                    i64, r))]), vector.as_pointer())

            rows = [builder.load(at(s_r, lds_v, r), align=bits // 8) for r in range(lanes)]
            masks = [ir.Constant(ir.VectorType(i32, lanes), m) for m in (low, high)]
            for _ in range(lanes.bit_length() - 1):
                rows = [builder.shuffle_vector(rows[i], rows[i + half], mask)
                        for i in range(half) for mask in masks]
            for r in range(lanes):
                builder.store(rows[r], at(d_r, ldd_v, r), align=bits // 8)
            return context.get_dummy_value()

        return signature, codegen

    return transpose


_TRANSPOSES = {bits: _make_transpose(bits) for bits in (32, 64)}


def _transpose(w, row, k, out, p, j):
    """``out[p, k:k + L, j:j + L] = w[row:row + L, k:k + L].T``, L a vector's values
    (compiled code only)."""
    raise NotImplementedError("packed._transpose runs inside compiled code only")


@overload(_transpose, jit_options={"error_model": "numpy"})
def _transpose_overload(w, row, k, out, p, j):
    block = _TRANSPOSES[w.dtype.bitwidth]

    def implementation(w, row, k, out, p, j):
        block(w[row, k:].ctypes, w.shape[1], out[p, k, j:].ctypes, out.shape[2])
    return implementation


@numba.njit(cache=True, nogil=True, error_model="numpy")
def pack_transposed(w, out):
    """:func:`pack` of ``w.T`` (``w`` (N, K) C-contiguous, for ``a @ w.T``), by blocks of
    a vector's rows and columns transposed in registers: ``out[p, k, j] = w[P p + j,
    k]``. (2048, 512) float32 on one core: 0.17 ms against 1.7 ms for :func:`pack` (32
    columns a panel), 0.23 against 0.82 (16)."""
    columns, inner = w.shape
    width = out.shape[2]
    lanes = 32 // w.itemsize
    blocks = inner - inner % lanes
    zero = out.dtype.type(0)
    for p in range(out.shape[0]):
        first = p * width
        count = min(width, columns - first)
        whole = count - count % lanes
        for j in range(0, whole, lanes):
            for k in range(0, blocks, lanes):
                _transpose(w, first + j, k, out, p, j)
        for k in range(blocks, inner):
            target = out[p, k]
            for j in range(whole):
                target[j] = w[first + j, k]
        for k in range(inner):
            target = out[p, k]
            for j in range(whole, count):
                target[j] = w[first + j, k]
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
        lda = a.strides[0] // a.itemsize
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


def _row_kernel(a, r, k0, kc, panel, out, column, add):
    """Row ``r`` of ``a`` against one panel block of :data:`ROW_PANEL` columns (compiled
    code only)."""
    raise NotImplementedError("packed._row_kernel runs inside compiled code only")


@overload(_row_kernel, jit_options={"error_model": "numpy"})
def _row_kernel_overload(a, r, k0, kc, panel, out, column, add):
    kernel = _ROW_KERNELS[a.dtype.bitwidth]

    def implementation(a, r, k0, kc, panel, out, column, add):
        kernel(a[r, k0:].ctypes, 0, panel, kc, out[r, column:].ctypes, 0, add)
    return implementation


@numba.njit(cache=True, nogil=True, error_model="numpy")
def matmul(a, panels, out):
    """``out = a @ B`` (``a`` (M, K), ``out`` (M, N)) with ``B`` (K, N) packed as
    ``panels`` (:func:`pack`), of one dtype; ``a``'s and ``out``'s rows contiguous, at any
    distance from each other."""
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
            (count - 1) * width < columns <= count * width) or (
            width * out.itemsize not in (_PANEL_BYTES, _ROW_BYTES)):
        raise ValueError("packed.matmul: the shapes of a, panels and out do not match")
    if not 0 <= k_first <= k_last <= inner:
        raise ValueError("packed.matmul_part: the inner range is outside a's columns")
    if (rows > 0 and inner > 1 and a.strides[1] != a.itemsize) or (
            columns > 1 and out.strides[1] != out.itemsize):
        raise ValueError("packed.matmul: the rows of a and out must be contiguous")
    if k_first == k_last:  # nothing to add (the split's empty part, an empty ``a``)
        if not add:
            out[...] = 0
        return
    full = columns // width
    tile = np.empty((rows, width), dtype=out.dtype)  # (the partial last panel's columns)
    if add:
        tile[:, :columns - full * width] = out[:, full * width:]
    row_panels = width * out.itemsize == _ROW_BYTES  # (else PANEL's width)
    for k0 in range(k_first, k_last, K_BLOCK):
        kc = min(K_BLOCK, k_last - k0)
        adding = 1 if add or k0 > k_first else 0
        for p in range(count):
            panel = panels[p, k0:].ctypes
            target, column, ldo = ((out, p * width, out.strides[0] // out.itemsize)
                                   if p < full else (tile, 0, width))
            if row_panels:  # (made for one row; more, should they come, one at a time)
                for r in range(rows):
                    _row_kernel(a, r, k0, kc, panel, target, column, adding)
                continue
            first = 0
            while first < rows:
                take = _group(rows, first)
                _kernel(a, first, take, k0, kc, panel, target, column, ldo, adding)
                first += take
    if full < count:
        out[:, full * width:] = tile[:, :columns - full * width]


#: From :data:`MIN_ROWS` to :data:`MAX_ROWS` rows of ``a``, a step's product runs on
#: packed panels: at 4 to 64 rows 1.1-2.5x OpenBLAS's speed on one core, at 2 rows
#: 0.8-1.4x (NOTES.md, issue 13, tenth pass). At one row, ``h W^T`` runs on
#: :data:`ROW_PANEL` panels (module docstring); ``dz W_hh`` (the backward's) on
#: OpenBLAS's gemv: on panels it was 10-15% faster alone and no faster in the layers,
#: for a second packing (eighteenth pass).
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


def on_panels(rows: int, inner: int, itemsize: int, transpose_b: bool = False) -> bool:
    """Whether a product with ``rows`` rows and inner size ``inner`` runs on panels: from
    :data:`MIN_ROWS` rows on, and at one row ``h W^T`` (``transpose_b``:
    :data:`ROW_PANEL`)."""
    if rows == 1:
        return transpose_b
    if not MIN_ROWS <= rows <= max(MAX_ROWS, L2_ROWS):
        return False
    return rows <= MAX_ROWS or 2 * rows * min(inner, K_BLOCK) * itemsize <= L2_BYTES


_NONE = {np.dtype(np.float32): np.empty((0, 1, 1), np.float32),
         np.dtype(np.float64): np.empty((0, 1, 1), np.float64)}


def panels_buffer(w, transpose_b: bool, rows: int, name: str):
    """This thread's scratch ``name``, shaped for the panels of :func:`panels_for` but
    not yet packed (compiled code packs them: :func:`pack_transposed` or :func:`pack`);
    or the same empty array."""
    dtype = np.dtype(w.dtype)
    columns, inner = w.shape if transpose_b else w.shape[::-1]
    if dtype not in _NONE or not on_panels(rows, inner, dtype.itemsize, transpose_b):
        return _NONE.get(dtype, _NONE[np.dtype(np.float64)])
    return scratch(name, panels_shape(columns, inner, dtype, rows), dtype)


def panels_for(w, transpose_b: bool, rows: int, name: str):
    """The panels of a layer's right operand for :func:`product` with ``rows`` rows:
    ``w.T`` (``w`` (N, K)) with ``transpose_b``, else ``w`` (K, N), packed into this
    thread's scratch ``name``; or an empty array (the products then go to BLAS) outside
    :func:`on_panels`' rows or for a dtype without kernels."""
    out = panels_buffer(w, transpose_b, rows, name)
    if out.shape[0] == 0:
        return out
    if transpose_b and w.flags.c_contiguous:
        pack_transposed(w, out)
    else:
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
