"""Double-word ("double-float") arithmetic in the working precision, for the accurate duality gap.

A value is an unevaluated sum ``hi + lo`` of two working-precision numbers. Only error-free transformations
are used (TwoSum, a bit-mask split, Dekker's product, exact integer matmuls), so no float64 is needed when x64
is off, and everything is jit/vmap-able. XLA does not reassociate floating-point sums, which these
transformations rely on; ``tests/test_chco_scale.py::test_error_free_transformations_survive_jit`` checks that
they survive compilation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "two_sum", "fast_two_sum", "dw_add", "dw_neg", "int_view", "split_hi_lo", "exponent_bound", "pow2", "two_prod",
    "dw_div", "dw_mul", "dw_sum", "int_slices", "mm_dw",
]


def two_sum(a, b):
    """``a + b = s + e`` exactly (Knuth's TwoSum, no ordering assumption)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def fast_two_sum(a, b):
    """``a + b = s + e`` exactly when ``|a| >= |b|`` (or ``a == 0``)."""
    s = a + b
    return s, b - (s - a)


def dw_add(x, y):
    """Double-word ``x + y`` (each a (hi, lo) pair)."""
    s, e = two_sum(x[0], y[0])
    return fast_two_sum(s, e + (x[1] + y[1]))


def dw_neg(x):
    return -x[0], -x[1]


def int_view(x):
    """The bits of float32 (float64) ``x`` as int32 (int64)."""
    return jax.lax.bitcast_convert_type(x, jnp.int32 if x.dtype == jnp.float32 else jnp.int64)


def split_hi_lo(a):
    """``a = hi + lo`` with ``hi`` the leading half of the significand (12 of 24 bits in float32, 26 of 53
    in float64) by masking the trailing bits: exact, and unaffected by multiply-add contraction, which
    breaks Veltkamp's ``(2^s + 1) a`` split. In float32 both halves have 12 bits, so every partial product
    of Dekker's algorithm is exact; in float64 ``lo`` keeps 27 bits and only ``lo * lo`` rounds (at the
    2^-105 level relative to the product; production uses these helpers in float32 only)."""
    tail = 12 if a.dtype == jnp.float32 else 27
    bits = int_view(a)
    hi = jax.lax.bitcast_convert_type(bits & ~jnp.asarray((1 << tail) - 1, bits.dtype), a.dtype)
    return hi, a - hi


def exponent_bound(x):
    """Integer ``e`` with ``|x| < 2^e`` (``2^(e-1) <= |x|`` for normal ``x``), at least -100 (zeros and
    tiny values get a scale of 2^-100, which keeps every power of two used with it normal)."""
    mant = jnp.finfo(x.dtype).nmant
    bias = jnp.finfo(x.dtype).maxexp - 1
    return jnp.maximum((int_view(jnp.abs(x)) >> mant) - bias + 1, -100).astype(jnp.int32)


def pow2(k, dtype):
    """``2^k`` for integer ``k`` in the normal range, built from its bits (cheaper to compile than ldexp)."""
    mant = jnp.finfo(dtype).nmant
    bias = jnp.finfo(dtype).maxexp - 1
    ity = jnp.int32 if jnp.dtype(dtype) == jnp.float32 else jnp.int64
    return jax.lax.bitcast_convert_type((k.astype(ity) + bias) << mant, dtype)


def two_prod(a, b):
    """``a * b = p + e`` exactly (Dekker; barring underflow)."""
    p = a * b
    ah, al = split_hi_lo(a)
    bh, bl = split_hi_lo(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def dw_div(x, y):
    """Double-word ``x / y`` (one correction step of the working-precision quotient)."""
    q = x[0] / y[0]
    p, pe = two_prod(q, y[0])
    r = ((x[0] - p) - pe + x[1]) - q * y[1]
    return fast_two_sum(q, r / y[0])


def dw_mul(x, y):
    """Double-word ``x * y``."""
    p, e = two_prod(x[0], y[0])
    return fast_two_sum(p, e + (x[0] * y[1] + x[1] * y[0]))


def dw_sum(x, axis=None):
    """Double-word sum of the double-word array ``x`` over ``axis`` (all entries if None): one variadic
    reduction whose combiner is the double-word addition (accurate in any order)."""
    hi, lo = x
    dims = tuple(range(hi.ndim)) if axis is None else (axis % hi.ndim,)
    z = jnp.zeros((), hi.dtype)
    return jax.lax.reduce((hi, lo), (z, z), dw_add, dims)


def int_slices(A, e, b, n):
    """``A = sum_i 2^(e - i b) A_i + Ar`` (i = 1..n) with integer-valued slices ``A_i`` (``|A_1| <= 2^b``,
    later ones ``<= 2^(b-1)``) for ``|A| < 2^e`` (``e`` broadcast against ``A``); exact (powers of two)."""
    An = A * pow2(b - e, A.dtype)
    out = []
    for i in range(n):
        Ai = jnp.round(An)
        out.append(Ai)
        An = An - Ai
        if i + 1 < n:
            An = An * (2.0 ** b)
    return out, An * pow2(e - n * b, A.dtype)


def mm_dw(A, B, B_lo=None, *, na=1, nb=1):
    """``A @ (B + B_lo)`` for (M, K) ``A`` and (K, N) ``B`` as a double-word (hi, lo) pair.

    Split matmuls in the manner of Ozaki's scheme: every row of ``A`` (column of ``B``) is scaled by a
    power of two and cut into ``na`` (``nb``) integer slices of ``b`` bits plus a remainder. With
    ``2b + ceil(log2 K)`` at most the significand's bits (24 in float32), a product of two slices and
    every partial sum of ``K`` of them are integers below ``2^24``, so the slice products (one packed
    matmul) are exact in any summation order and on any backend. Only the remainder products (one more
    matmul) are rounded, and they are ``2^-b`` (one slice) or ``2^-2b`` (two) smaller than the result's
    scale. Cost: ``na * nb`` plus 2 (M x K x N) products.
    """
    K = A.shape[1]
    b = max(1, (jnp.finfo(A.dtype).nmant + 1 - max(K - 1, 0).bit_length()) // 2)
    hp = jax.lax.Precision.HIGHEST
    ea = exponent_bound(jnp.max(jnp.abs(A), axis=1))[:, None]  # (M, 1)
    eb = exponent_bound(jnp.max(jnp.abs(B), axis=0))[None, :]  # (1, N)
    As, Ar = int_slices(A, ea, b, na)
    Bs, Br = int_slices(B, eb, b, nb)
    Bq = B - Br  # B rounded to nb * b bits, exact
    if B_lo is not None:
        Br = Br + B_lo
    M, N = A.shape[0], B.shape[1]
    exact = jnp.matmul(jnp.concatenate(As, 0), jnp.concatenate(Bs, 1), precision=hp)  # (na M, nb N)
    # Blocks of equal weight 2^(ea + eb - (i + j) b) are added as integers (below 2^24: exact).
    levels: dict = {}
    for i in range(na):
        for j in range(nb):
            blk = exact[i * M:(i + 1) * M, j * N:(j + 1) * N]
            levels[i + j] = blk if i + j not in levels else levels[i + j] + blk
    scale = pow2(ea - b, A.dtype) * pow2(eb - b, A.dtype)
    rest = jnp.matmul(jnp.concatenate([A, Ar], 1), jnp.concatenate([Br, Bq], 0), precision=hp)
    zero = jnp.zeros_like(rest)
    out = (levels[0] * scale, zero)
    for k in range(1, na + nb - 1):
        out = dw_add(out, (levels[k] * scale * (2.0 ** (-k * b)), zero))
    return dw_add(out, (rest, zero))
