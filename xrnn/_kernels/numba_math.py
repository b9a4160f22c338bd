"""Vectorisable ``exp`` and ``tanh`` for the compiled kernel (float32), libm for float64.

Numba compiles ``math.exp`` and ``math.tanh`` to scalar libm calls (no SVML here), which
keep LLVM from vectorising the gate loops: about 2.9 ns per sigmoid against 0.7 ns for
the branch-free float32 versions below (NOTES.md, issue 13). They are Cephes' ``expf``
and ``tanhf`` (range reduction to ``|r| <= ln 2 / 2``, degree-6 and degree-5
polynomials; 1-2 ulp in the normal range), written with selects instead of branches and
rounding by the ``1.5 * 2**23`` trick instead of ``floor`` (a libm call), ``2**n`` made
from the rounded sum's bits, so each loop over units compiles to AVX2 code. The clamps
are a max and a min that let NaN through (0.65 ns a value against 0.76 with a select
for NaN after them: NOTES.md, issue 13, twelfth pass). NaN stays NaN; +-inf give the
limits; inputs beyond the float32 range of ``exp`` are clamped, so ``exp`` stays finite
there (1e-38 to 2e38) where libm gives 0 or inf: a gate's sigmoid is then within 1e-38
of its limit.
float64 keeps libm (within an ulp of NumPy's), as the 1e-12 parity tests need.
"""

from __future__ import annotations

import math
import warnings

import numba
import numpy as np
from numba import types
from numba.core.errors import NumbaIRAssumptionWarning
from numba.extending import intrinsic, overload

_FAST = {"contract", "arcp", "nsz"}  # as the kernel's: no flag that assumes away NaN/inf

# Where these always-inlined functions land inside a loop, Numba's internal "pedantic"
# check says some of their variables are "not in scope" and asks for a bug report, once
# per compiled function, on a fresh cache. The compiled code is right (the kernels'
# parity tests); only that message, for these two functions, is silenced.
warnings.filterwarnings("ignore", category=NumbaIRAssumptionWarning,
                        message=r"variable '_(exp|tanh)_overload__locals__")


def exp(x):
    """``e ** x`` (compiled code only)."""
    raise NotImplementedError("numba_math.exp runs inside compiled code only")


def tanh(x):
    """``tanh(x)`` (compiled code only)."""
    raise NotImplementedError("numba_math.tanh runs inside compiled code only")


#: The bits of the float32 1.5 * 2**23, less the exponent bias 127: ``bits(t) - this``
#: is ``n + 127`` where ``t = 1.5 * 2**23 + n``.
_MAGIC_BITS_LESS_BIAS = np.int32(np.float32(12582912.0).view(np.int32) - 127)


@numba.njit(inline="always", fastmath=_FAST)
def _exp32(x):
    # clamped so that 2**n stays a normal float32; NaN passes both comparisons as NaN
    y = np.float32(-87.3) if x < np.float32(-87.3) else x
    y = np.float32(88.3) if y > np.float32(88.3) else y
    magic = np.float32(12582912.0)  # 1.5 * 2**23: adding it rounds to an integer
    t = y * np.float32(1.44269504088896341) + magic
    n = t - magic
    r = y - n * np.float32(0.693359375)  # ln 2 in two parts, exact first product
    r = r + n * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1)
    # 2**n from t's bits (no float-to-int conversion, which is undefined for NaN)
    two_n = np.int32((np.float32(t).view(np.int32) - _MAGIC_BITS_LESS_BIAS)
                     << np.int32(23)).view(np.float32)
    return p * two_n  # (NaN in p stays NaN)


@numba.njit(inline="always", fastmath=_FAST)
def _tanh32(x):
    a = abs(x)
    z = x * x  # |x| < 0.625: odd polynomial (1 - 2 / (e^2x + 1) would cancel)
    p = np.float32(-5.70498872745e-3)
    p = p * z + np.float32(2.06390887954e-2)
    p = p * z + np.float32(-5.37397155531e-2)
    p = p * z + np.float32(1.33314422036e-1)
    p = p * z + np.float32(-3.33332819422e-1)
    small = x + x * z * p
    big = np.float32(1) - np.float32(2) / (_exp32(a + a) + np.float32(1))
    big = math.copysign(big, x)
    return small if a < np.float32(0.625) else big  # (NaN: big, from exp(NaN))


@overload(exp, inline="always", fastmath=_FAST)
def _exp_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: _exp32(x)
    return lambda x: math.exp(x)


@overload(tanh, inline="always", fastmath=_FAST)
def _tanh_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: _tanh32(x)
    return lambda x: math.tanh(x)


@intrinsic
def fma(typingctx, a, b, c):
    """``a * b + c`` rounded once (LLVM's ``fma``, which vectorises), in compiled code.
    Under the kernels' ``contract`` flag LLVM may fuse either product of
    ``a * b + c * d``, and two loops with the same sum gave float64 results an ulp apart;
    written with this, the sum rounds the same wherever it is compiled."""
    if isinstance(a, types.Float) and a == b == c:
        def codegen(context, builder, signature, args):
            return builder.fma(*args)
        return a(a, b, c), codegen
    return None
