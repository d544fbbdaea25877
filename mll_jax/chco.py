"""Classification Head Combination Optimization (CHCO), batched in JAX.

Problem, for one model with ``H`` heads and ``C`` target classes:

* ``S`` (H, C): label sub-matrix, ``S[h, c]`` = mean logit of head ``h`` on the node data of class ``c``.
* ``P = softmax(S, axis=0)`` (column-wise over heads): ``P[h, c] = exp(S[h, c]) / sum_h' exp(S[h', c])``.
* ``X`` (H, C) with every row in the capped simplex ``{x >= 0, sum_c x_c <= 1}``.
* ``Q = P^T X``, i.e. ``Q[c', c] = sum_h P[h, c'] X[h, c]``: how strongly the combination for class ``c``
  fires on class ``c'`` data.
* ``L_c = -[log Q[c, c] + 1/(C-1) sum_{c' != c} log(1 - Q[c', c])]``; minimise ``f(X) = sum_c L_c``.

The problem is convex; the optimal ``X`` is generally not unique, so compare objective values.

Numerics:

* ``1 - Q`` is computed as ``P^T (1 - X)`` (the columns of ``P`` sum to one), a sum of nonnegative
  terms like ``Q`` itself, so both keep their relative precision (inside pgd's loop both are updated
  by each step's ``P^T dX`` and recomputed from ``X`` periodically; the reported values are always
  recomputed at the returned X). Reported losses take ``log Q`` as
  ``log1p(-(1 - Q))`` where ``Q > 1/2`` (and ``log(1 - Q)`` as ``log1p(-Q)`` where ``1 - Q > 1/2``),
  so losses near zero (near-perfect experts) are accurate in float32 (tested: within 1e-5 relative or
  1e-6 absolute of a float64 evaluation of the returned X); every log argument is clamped at
  ``finfo(dtype).tiny``.
* The stopping test is a certificate: the Frank-Wolfe duality gap
  ``gap(X) = <G, X> - sum_h min(0, min_c G[h, c]) >= f(X) - f*`` (``G`` the gradient). A result is
  ``converged`` when ``gap <= tol * |f| + atol``, so with ``atol = 0`` (the float64 default) the
  objective is within a relative ``tol`` of the optimum; float32 defaults to ``atol = 1e-7``.
  To make small gaps reachable in float32, trial steps are accepted by the decrease ``L(Q + dQ) - L(Q)`` computed from ``dQ = P^T dX`` with ``log1p`` (not as a difference of
  two rounded objectives), and the gap is summed as nonnegative terms.
* In float32 the reported ``gap`` and ``converged`` are re-evaluated once at the returned X in
  double-word float32 arithmetic (:func:`_gap_accurate`: exact split matmuls, error-free
  transformations, no float64): within 1e-5 relative or 1e-6 absolute of a float64 evaluation of the
  returned X in float32 (the plain float32 gap was off by up to 1.2e-6 absolute).

Algorithms (``method=``):

* ``"pgd"`` (default): projected gradient in a diagonal metric -- an upper bound of the Hessian's
  diagonal ``sum_c' P[h, c']^2 d^2L_c/dQ[c', c]^2`` that needs no matrix product (:func:`_metric_diag`)
  -- with the projection taken in the same metric.
  One trial step per iteration, no inner loops: a rejected step keeps ``X`` and halves the step
  length for the next iteration (see :func:`_pgd`). The iterations run on class-major (C, H) arrays
  with an exact loop-free projection for C <= 16
  (:func:`mll_jax.projection.projection_capped_simplex_pairwise`), so an iteration is a handful of
  fused kernels; measured on this 2-core CPU at H = 1000, C = 10: about 0.11 ms per model and
  iteration inside a chunk, against about 0.6 ms for the earlier backtracking-loop version.
  Without the preconditioner (``precondition=False``) the steps are Euclidean, which needs one to
  two orders of magnitude more iterations on peaked logits.
* ``"fista"``: projected gradient with a backtracking loop and Nesterov momentum with function-value
  restart (O'Donoghue & Candes), also restarting when the extrapolated point leaves the loss's domain
  or its line search fails; same metric (``precondition=False``: textbook FISTA). With the diagonal
  metric momentum buys little, and in float32 FISTA occasionally creeps along the round-off floor for
  hundreds of iterations (measured: 128 models, H = 1000, C = 10: fista 152 s, one model to the 500
  cap, where the backtracking pgd of that time took 8.6 s), so ``"pgd"`` is the default.
* ``"head"``: the paper's head-by-head scheme: sweep over heads; for head ``h`` take a (diagonally
  scaled, backtracked) gradient step on row ``x_h`` and project it onto the capped simplex, updating
  ``Q`` by a rank-one correction. One sweep costs about one full gradient; sweeps repeat until the
  same duality-gap test holds.

:func:`solve` is a pure function of arrays, usable under ``jax.jit``, ``jax.vmap``, ``shard_map`` and
``jax.grad`` (the derivative of the reported values at the returned ``X*`` held fixed: exact for the
optimal objective by the envelope theorem; see :func:`solve`).
:func:`solve_batch` validates a list of models with different head counts, pads and masks them into
fixed-shape, cache-sized chunks (bounded memory, one compilation per shape), spreads each chunk over
the local devices (or a given mesh) and returns numpy results.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .projection import projection_capped_simplex, projection_capped_simplex_pairwise
from .utils import next_pow2, usable_cores
from mll_jax.errors import CHCOInputError  # noqa: F401  (re-exported)

__all__ = [
    "CHCOResult",
    "BatchResult",
    "CHCOInputError",
    "head_softmax",
    "losses",
    "objective",
    "gradient",
    "duality_gap",
    "solve",
    "solve_batch",
    "METHODS",
    "DEFAULT_METHOD",
]

METHODS = ("fista", "pgd", "head")
DEFAULT_METHOD = "pgd"
_MAX_BACKTRACK = 30
# pgd's stagnation stop: this many consecutive accepted full steps with a round-off-level decrease. It was
# 10 until the float32 certificate became accurate (_gap_accurate); then the real C = 50 instances showed
# that 10 stopped slowly converging models early (40 models: 72.5% certified with 10, 95% with 30, 100%
# with the rule off; synthetic instances and the test families unchanged, none ran to max_iter).
_PGD_FLAT_STOP = 100
_IN_FLIGHT = 4  # calls dispatched ahead of the one being collected in solve_batch
_SUBCHUNKS = 16  # sub-chunks (of cs models) per compiled call in solve_batch


class CHCOResult(NamedTuple):
    """Result of :func:`solve` (a pytree; leading batch axes under ``vmap``)."""

    X: jax.Array  # (H, C) combination matrix; padded heads have zero rows
    loss: jax.Array  # (C,) per-class loss L_c at X
    objective: jax.Array  # () sum_c L_c
    iterations: jax.Array  # () iterations (fista) or sweeps over heads (head)
    converged: jax.Array  # () bool: duality gap <= tol * |objective| + atol
    gap: jax.Array  # () Frank-Wolfe duality gap at X (upper bound on objective - optimum)


# ----------------------------------------------------------------------------------------------
# Objective pieces (pure, differentiable)
# ----------------------------------------------------------------------------------------------


def head_softmax(S, head_mask=None):
    """``P = softmax(S, axis=0)``; masked (padded) heads get probability exactly 0."""
    S = jnp.asarray(S)
    if head_mask is not None:
        S = jnp.where(jnp.asarray(head_mask)[:, None], S, -jnp.inf)
    return jax.nn.softmax(S, axis=0)


def _vary_like(tree, ref):
    """Return ``tree`` unchanged in value but computed from ``ref``.

    Under ``shard_map`` (with its default ``check_vma``), loop carries must keep their
    varying-manual-axes type; a constant initial value (a zero counter, ``True``, a default ``X0``) is
    not varying while the value the loop body returns is. Selecting between two copies of the
    constant on a predicate read from ``ref`` gives the constant ``ref``'s type; elsewhere it is a no-op.
    """
    token = jnp.ravel(ref)[0]
    pred = token == token
    return jax.tree.map(lambda x: jnp.where(pred, jnp.asarray(x), jnp.asarray(x)), tree)


def _qr(P, X):
    """``Q = P^T X`` and ``R = 1 - Q`` computed as ``P^T (1 - X)`` (accurate near Q = 1)."""
    # Two products rather than one on [X, 1 - X]: the concatenation costs more than it saves on CPU.
    return P.T @ X, P.T @ (1 - X)


def _clamp(v):
    return jnp.maximum(v, jnp.finfo(v.dtype).tiny)


def _log_pair(Q, R):
    """``(log Q, log R)`` for ``R = 1 - Q``, where ``Q`` and ``R`` were computed independently as
    sums of nonnegative terms (``P^T X`` and ``P^T (1 - X)``), so each keeps its relative precision.

    ``log Q`` is taken as ``log1p(-R)`` where ``Q > 1/2`` (and ``log R`` as ``log1p(-Q)`` where
    ``R > 1/2``): a value near 1 is never passed to ``log``, where float32 rounding of ``Q`` near 1
    would cost all relative precision of ``-log Q ~ 1 - Q`` (measured on near-perfect experts, H = 1000,
    C = 10: objective 3.74e-5 reported with ``-log Q`` against 2.40e-5 in float64 at the same X).
    """
    return _log_acc(Q, R), _log_acc(R, Q)


def _log_acc(A, B):
    """``log A`` for ``A = 1 - B`` (elementwise), accurate near ``A = 0`` and near ``A = 1``."""
    half = jnp.asarray(0.5, A.dtype)
    return jnp.where(A > half, jnp.log1p(-jnp.minimum(B, half)), jnp.log(_clamp(A)))


def _loss_qr(Q, R):
    C = Q.shape[0]
    off = ~jnp.eye(C, dtype=bool)
    diag = -_log_acc(jnp.diagonal(Q), jnp.diagonal(R))
    offd = -jnp.sum(jnp.where(off, _log_acc(R, Q), 0), axis=0) / (C - 1)
    return diag + offd


def _w_qr(Q, R, second: bool):
    """dL/dQ (and the diagonal second derivative d2L/dQ2 when ``second``) as (C, C) matrices."""
    C = Q.shape[0]
    eye = jnp.eye(C, dtype=bool)
    qd = _clamp(jnp.diagonal(Q))[None, :]
    Rc = _clamp(R)
    W = jnp.where(eye, -1 / qd, 1 / ((C - 1) * Rc))
    if not second:
        return W, None
    W2 = jnp.where(eye, 1 / (qd * qd), 1 / ((C - 1) * Rc * Rc))
    return W, W2


def losses(S, X, head_mask=None):
    """Per-class CHCO loss ``L_c`` (shape (C,)) of the combination ``X`` for label matrix ``S``."""
    P = head_softmax(S, head_mask)
    return _loss_qr(*_qr(P, jnp.asarray(X, P.dtype)))


def objective(S, X, head_mask=None):
    """``sum_c L_c``; differentiable in ``X`` (and ``S``)."""
    return jnp.sum(losses(S, X, head_mask))


def gradient(S, X, head_mask=None):
    """Analytic gradient of :func:`objective` with respect to ``X``: ``P @ dL/dQ``."""
    P = head_softmax(S, head_mask)
    W, _ = _w_qr(*_qr(P, jnp.asarray(X, P.dtype)), second=False)
    return P @ W


def duality_gap(G, X, head_mask=None):
    """Frank-Wolfe gap ``<G, X - V>``, ``V`` the best vertex of the product of capped simplices.

    ``gap >= f(X) - f*`` for convex ``f``. Summed as nonnegative terms,
    ``sum_hc x_hc (G_hc - m_h) + m_h (sum_c x_hc - 1)`` with ``m_h = min(0, min_c G_hc)``,
    so that no cancellation between large numbers happens (this matters in float32). Its accuracy is
    that of ``G``: in float32 about 1e-6 absolute on the test families. The gap :func:`solve` reports
    is re-evaluated in double words instead (:func:`_gap_accurate`).
    """
    m = jnp.minimum(jnp.min(G, axis=1, keepdims=True), 0)
    terms = jnp.sum(X * (G - m), axis=1) + m[:, 0] * (jnp.sum(X, axis=1) - 1)
    if head_mask is not None:
        terms = jnp.where(head_mask, terms, 0)
    return jnp.sum(terms)


# ----------------------------------------------------------------------------------------------
# Accurate final evaluation of the duality gap (double-word arithmetic in the working precision)
# ----------------------------------------------------------------------------------------------
#
# A float32 gap carries an absolute error of about 1e-6 (measured up to 1.2e-6 on duplicated heads,
# H = 40, C = 30): by substituting exact pieces one at a time, the rounding of Q and R (through W),
# of W itself, of the product G = P W and of the final sum each contribute comparably, while the
# rounding of P (the float32 softmax) contributes 10-30x less. So the reported gap is evaluated for the
# float32 P exactly as given, with everything downstream in double-word ("double-float") arithmetic:
# a value is an unevaluated sum hi + lo of two working-precision numbers. Only error-free
# transformations are used (TwoSum, a bit-mask split, Dekker's product, exact integer
# matmuls), so no float64 is needed when x64 is off, and the code is jit/vmap-able. XLA does not
# reassociate floating-point sums, which these transformations rely on; tests check that they
# survive jit (``test_error_free_transformations_survive_jit``).


def _two_sum(a, b):
    """``a + b = s + e`` exactly (Knuth's TwoSum, no ordering assumption)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _fast_two_sum(a, b):
    """``a + b = s + e`` exactly when ``|a| >= |b|`` (or ``a == 0``)."""
    s = a + b
    return s, b - (s - a)


def _dw_add(x, y):
    """Double-word ``x + y`` (each a (hi, lo) pair)."""
    s, e = _two_sum(x[0], y[0])
    return _fast_two_sum(s, e + (x[1] + y[1]))


def _dw_neg(x):
    return -x[0], -x[1]


def _int_view(x):
    """The bits of float32 (float64) ``x`` as int32 (int64)."""
    return jax.lax.bitcast_convert_type(x, jnp.int32 if x.dtype == jnp.float32 else jnp.int64)


def _split(a):
    """``a = hi + lo`` with ``hi`` the leading half of the significand (12 of 24 bits in float32, 26 of 53
    in float64) by masking the trailing bits: exact, and unaffected by multiply-add contraction, which
    breaks Veltkamp's ``(2^s + 1) a`` split. In float32 both halves have 12 bits, so every partial product
    of Dekker's algorithm is exact; in float64 ``lo`` keeps 27 bits and only ``lo * lo`` rounds (at the
    2^-105 level relative to the product; production uses these helpers in float32 only)."""
    tail = 12 if a.dtype == jnp.float32 else 27
    bits = _int_view(a)
    hi = jax.lax.bitcast_convert_type(bits & ~jnp.asarray((1 << tail) - 1, bits.dtype), a.dtype)
    return hi, a - hi


def _exponent(x):
    """Integer ``e`` with ``|x| < 2^e`` (``2^(e-1) <= |x|`` for normal ``x``), at least -100 (zeros and
    tiny values get a scale of 2^-100, which keeps every power of two used with it normal)."""
    mant = jnp.finfo(x.dtype).nmant
    bias = jnp.finfo(x.dtype).maxexp - 1
    return jnp.maximum((_int_view(jnp.abs(x)) >> mant) - bias + 1, -100).astype(jnp.int32)


def _pow2(k, dtype):
    """``2^k`` for integer ``k`` in the normal range, built from its bits (cheaper to compile than ldexp)."""
    mant = jnp.finfo(dtype).nmant
    bias = jnp.finfo(dtype).maxexp - 1
    ity = jnp.int32 if jnp.dtype(dtype) == jnp.float32 else jnp.int64
    return jax.lax.bitcast_convert_type((k.astype(ity) + bias) << mant, dtype)


def _two_prod(a, b):
    """``a * b = p + e`` exactly (Dekker; barring underflow)."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _dw_div(x, y):
    """Double-word ``x / y`` (one correction step of the working-precision quotient)."""
    q = x[0] / y[0]
    p, pe = _two_prod(q, y[0])
    r = ((x[0] - p) - pe + x[1]) - q * y[1]
    return _fast_two_sum(q, r / y[0])


def _dw_mul(x, y):
    """Double-word ``x * y``."""
    p, e = _two_prod(x[0], y[0])
    return _fast_two_sum(p, e + (x[0] * y[1] + x[1] * y[0]))


def _dw_sum(x, axis=None):
    """Double-word sum of the double-word array ``x`` over ``axis`` (all entries if None): one variadic
    reduction whose combiner is the double-word addition (accurate in any order)."""
    hi, lo = x
    dims = tuple(range(hi.ndim)) if axis is None else (axis % hi.ndim,)
    z = jnp.zeros((), hi.dtype)
    return jax.lax.reduce((hi, lo), (z, z), _dw_add, dims)


def _slices(A, e, b, n):
    """``A = sum_i 2^(e - i b) A_i + Ar`` (i = 1..n) with integer-valued slices ``A_i`` (``|A_1| <= 2^b``,
    later ones ``<= 2^(b-1)``) for ``|A| < 2^e`` (``e`` broadcast against ``A``); exact (powers of two)."""
    An = A * _pow2(b - e, A.dtype)
    out = []
    for i in range(n):
        Ai = jnp.round(An)
        out.append(Ai)
        An = An - Ai
        if i + 1 < n:
            An = An * (2.0 ** b)
    return out, An * _pow2(e - n * b, A.dtype)


def _mm_dw(A, B, B_lo=None, *, na=1, nb=1):
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
    ea = _exponent(jnp.max(jnp.abs(A), axis=1))[:, None]  # (M, 1)
    eb = _exponent(jnp.max(jnp.abs(B), axis=0))[None, :]  # (1, N)
    As, Ar = _slices(A, ea, b, na)
    Bs, Br = _slices(B, eb, b, nb)
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
    scale = _pow2(ea - b, A.dtype) * _pow2(eb - b, A.dtype)
    rest = jnp.matmul(jnp.concatenate([A, Ar], 1), jnp.concatenate([Br, Bq], 0), precision=hp)
    zero = jnp.zeros_like(rest)
    out = (levels[0] * scale, zero)
    for k in range(1, na + nb - 1):
        out = _dw_add(out, (levels[k] * scale * (2.0 ** (-k * b)), zero))
    return _dw_add(out, (rest, zero))


_GAP_CAND_MAX_C = 16  # up to this C, _gap_accurate evaluates only 3 candidate entries of G per head


def _gap_accurate(P, X, head_mask=None, Gt=None, return_q=False):
    """The Frank-Wolfe duality gap at ``X`` for the softmax matrix ``P`` (exactly as given), evaluated in
    double-word arithmetic (see the section comment).

    ``Q = P^T X`` and the column sums ``s = P^T 1`` come from one split product (:func:`_mm_dw`),
    ``R = s - Q`` (so ``R`` is ``P^T (1 - X)`` for this very ``P``) and ``W = dL/dQ`` are double words,
    and ``gap = <G, X> - sum_h m_h = <W, Q> - sum_h m_h`` with ``m_h = min(0, min_c G[h, c])``: the
    first term is a sum of C^2 double-word products. For C <= 16, ``m_h`` is the smallest double word
    among the 3 classes with the smallest ``G[h, c]``: the candidates come from ``Gt`` ((C, H), the
    solver's working-precision gradient at ``X``, class-major) when given, else from ``P W`` in working
    precision, and only those 3 entries per head are evaluated in double words (C error-free products
    each). For larger C all of ``G`` comes from a second split product and ``m_h`` is the exact minimum
    of each row's double words.
    """
    H, C = X.shape
    dtype = P.dtype
    X = X.astype(dtype)
    # P's columns in two slices (peaked columns: many small entries), X in one.
    QS = _mm_dw(P.T, jnp.concatenate([X, jnp.ones((H, 1), dtype)], 1), na=2, nb=1)
    Q = QS[0][:, :C], QS[1][:, :C]
    R = _dw_add((QS[0][:, C:], QS[1][:, C:]), _dw_neg(Q))  # s - Q, s broadcast over columns
    eye = jnp.eye(C, dtype=bool)
    tiny = jnp.finfo(dtype).tiny
    Rc = _dw_mul(R, (jnp.asarray(C - 1, dtype), jnp.zeros((), dtype)))
    den = tuple(jnp.where(eye, jnp.diagonal(q)[None, :], r) for q, r in zip(Q, Rc))
    small = den[0] <= tiny  # as _clamp: a vanishing Q[c, c] or R gives a huge, not an infinite, W
    den = jnp.where(small, tiny, den[0]), jnp.where(small, 0, den[1])
    one = jnp.where(eye, -1, 1).astype(dtype)
    W = _dw_div((one, jnp.zeros_like(one)), den)
    # <G, X> = <W, Q>: C^2 double-word terms.
    WQ = _dw_sum(_dw_mul(W, Q))
    # m_h = min(0, min_c G[h, c]) needs G accurately where it matters: at (near) optimality the
    # entries of a fractional row tie on its support, and a working-precision G ranks them at random
    # (picking the wrong one of two classes cost up to 6e-7 on duplicated heads, H = 40, C = 30). The 3
    # classes of smallest G per head are candidates and their double-word values decide: for C <= 16
    # ranked by the working-precision G and only those G[h, c] = sum_c' P[h, c'] W[c', c] evaluated in
    # double words (exact products, double-word sums); above, from all of G in double words.
    if C <= _GAP_CAND_MAX_C:
        if Gt is None:
            Gt = (P @ W[0]).T
        Gs = Gt.astype(dtype)
        k = min(3, C)
        cand = []
        for _ in range(k):
            c = jnp.argmin(Gs, axis=0)  # (H,)
            cand.append(c)
            Gs = jnp.where(jnp.arange(C)[:, None] == c[None, :], jnp.inf, Gs)
        cand = jnp.stack(cand, 0)  # (k, H)
        Wc = W[0][:, cand], W[1][:, cand]  # (C, k, H): column cand[j, h] of W, for every c'
        Pc = P.T[:, None, :]  # (C, 1, H)
        hi, lo = _two_prod(Pc, Wc[0])
        # One variadic reduction over c' (a chain of C double-word additions would make XLA duplicate
        # each step's operands into the next: compile memory grew past 24 GB at C = 30).
        g = _dw_sum((hi, lo + Pc * Wc[1]), axis=0)  # (k, H)
        g = tuple(jnp.moveaxis(x, 0, 1) for x in g)  # (H, k)
        m = g[0][:, 0], g[1][:, 0]
        for c in range(1, k):
            gc = g[0][:, c], g[1][:, c]
            smaller = _dw_add(gc, _dw_neg(m))[0] < 0
            m = jnp.where(smaller, gc[0], m[0]), jnp.where(smaller, gc[1], m[1])
    else:
        # Larger C: all of G in double words from a second split product (the scalar variadic
        # reduction above costs more than two (H, C) x (C, C) products there: measured at C = 50). The
        # smallest double word of a row: the smallest high part mh, then the smallest (hi - mh) + lo
        # (hi - mh is exact wherever it is small, Sterbenz; elsewhere it is far above any tie), two plain
        # row reductions (three argmin passes over G to pick candidates cost ~0.26 ms per model at C = 50).
        G = _mm_dw(P, W[0], W[1], na=1, nb=1)
        mh = jnp.min(G[0], axis=1)
        m = _fast_two_sum(mh, jnp.min((G[0] - mh[:, None]) + G[1], axis=1))
        fin = jnp.isfinite(mh)  # a row of G at -inf (an infinite loss): -inf, not NaN
        m = jnp.where(fin, m[0], mh), jnp.where(fin, m[1], 0)
    neg = m[0] < 0
    m = jnp.where(neg, m[0], 0), jnp.where(neg, m[1], 0)
    if head_mask is not None:
        m = jnp.where(head_mask, m[0], 0), jnp.where(head_mask, m[1], 0)
    total = _dw_add(WQ, _dw_neg(_dw_sum(m)))
    gap = total[0] + total[1]
    return (gap, Q[0] + Q[1], R[0] + R[1]) if return_q else gap


# ----------------------------------------------------------------------------------------------
# Solvers for one model
# ----------------------------------------------------------------------------------------------


def _check_shapes(S, head_mask, X0):
    if S.ndim != 2:
        raise CHCOInputError(f"S must be a 2-D (heads, classes) array, got shape {S.shape}")
    H, C = S.shape
    if H < 1:
        raise CHCOInputError(f"S has no heads (shape {S.shape})")
    if C < 2:
        raise CHCOInputError(f"CHCO needs at least 2 target classes, S has shape {S.shape}")
    if head_mask is not None and tuple(head_mask.shape) != (H,):
        raise CHCOInputError(f"head_mask must have shape ({H},), got {tuple(head_mask.shape)}")
    if X0 is not None and tuple(X0.shape) != (H, C):
        raise CHCOInputError(f"X0 must have shape {(H, C)}, got {tuple(X0.shape)}")
    if not jnp.issubdtype(S.dtype, jnp.floating):
        raise CHCOInputError(f"S must be floating point, got dtype {S.dtype}")


def _initial_point(H, C, dtype, head_mask, X0):
    if X0 is None:
        X = jnp.full((H, C), 1.0 / C, dtype)
    else:
        # Class-major, loop-free for small C (see _project_cm): this runs on every warm start of
        # solve_batch's rounds, where the row-major Newton loop cost ~0.2 ms per model at C = 10.
        X0 = jnp.asarray(X0, dtype)
        X = _project_cm(X0.T, jnp.ones_like(X0.T)).T
    if head_mask is not None:
        X = jnp.where(head_mask[:, None], X, 0)
    return X


def _default_atol(C, dtype):
    """0 in float64; 1e-7 in float32.

    With the accurate evaluation (``_log_pair``) the float32 gap keeps resolving relative gaps of 1e-5
    on objectives of 0.01 and more (measured on the benchmark's instances, H = 1000: 60 models at
    C = 10 and 15 at C = 50 all certified with ``atol = 0``, at most 13 / 33 iterations). The earlier
    default ``2 * C * eps`` (2.4e-6 at C = 10) let a quarter of the C = 10 models stop up to 1e-4
    relative from the optimum. The small absolute floor only matters for near-perfect experts whose
    objective is itself below 0.01, where it bounds the error at 1e-7 absolute."""
    del C
    return 0.0 if jnp.dtype(dtype) == jnp.float64 else 1e-7


def _is_traced(*xs) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in xs if x is not None)


def _working_dtype(dtype):
    """Working precision for an input dtype: floats below float32 (float16, bfloat16) and non-floats
    are upcast to float32; float32 and float64 are kept. :func:`solve` and :func:`solve_batch` share it."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise CHCOInputError(f"S must be real-valued, got dtype {dtype}")
    if not jnp.issubdtype(dtype, jnp.floating) or dtype.itemsize < 4:
        return jnp.dtype(jnp.float32)
    return dtype


def _check_tolerances(tol, atol):
    """Refuse NaN or negative tolerances (only possible when they are concrete numbers)."""
    for name, v in (("tol", tol), ("atol", atol)):
        if v is None or _is_traced(v):
            continue
        a = np.asarray(v)
        if a.shape != () or not np.issubdtype(a.dtype, np.number) or not (float(a) >= 0):
            raise CHCOInputError(f"{name} must be a nonnegative number, got {v!r}")


def _check_finite(S, head_mask, what="S"):
    A = np.asarray(S)
    if not (np.issubdtype(A.dtype, np.number) or jnp.issubdtype(A.dtype, jnp.floating)):
        return  # the dtype check reports it
    bad = ~np.isfinite(A.astype(np.float64) if A.dtype.itemsize < 4 else A)
    if head_mask is not None:
        hm = np.asarray(head_mask, bool)
        if hm.shape != (A.shape[0],):
            return  # the shape check reports it
        bad &= hm[:, None]
    if bad.any():
        h, c = np.argwhere(bad)[0]
        raise CHCOInputError(
            f"{what} has {int(bad.sum())} non-finite value(s) (first: {A[h, c]} at head {h}, class {c})")


def solve(
    S,
    head_mask=None,
    *,
    method: str = DEFAULT_METHOD,
    tol: float = 1e-5,
    atol: float | None = None,
    max_iter: int | None = None,
    precondition: bool = True,
    X0=None,
) -> CHCOResult:
    """Solve CHCO for one model (jit-compiled; usable inside ``jax.jit``, ``vmap``, ``shard_map``, ``grad``).

    Args:
      S: (H, C) label sub-matrix (heads x target classes). float32 and float64 are the working
        precisions; float16, bfloat16 and integer inputs are upcast to float32 (as in :func:`solve_batch`).
      head_mask: optional (H,) bool; ``False`` marks padded heads, which are excluded exactly.
      method: ``"pgd"`` (preconditioned projected gradient, default), ``"fista"`` (the same steps with
        momentum and restart) or ``"head"`` (head-by-head sweeps).
      tol: relative duality-gap tolerance (see module docstring); may be a traced value.
      atol: absolute gap tolerance; ``None`` means 0 in float64 and 1e-7 in float32.
      max_iter: iteration cap (sweeps for ``"head"``); default 2000 (pgd: one trial step per iteration, cheap) / 500 (fista) / 200 (head).
      precondition: use the diagonal-Hessian metric (both methods). ``False`` gives plain Euclidean steps.
      X0: optional warm start (H, C); projected onto the feasible set first.

    Validation: shapes, ``method`` and concrete ``tol``/``atol`` (NaN or negative) are always checked.
    Values of ``S`` (NaN/inf in unmasked heads) are checked when ``S`` is a concrete array (a call
    outside any transformation) and raise :class:`CHCOInputError`. Under ``jit``/``vmap``/``grad`` the
    values are tracers and cannot be inspected: non-finite ``S`` then yields ``converged=False`` and a
    non-finite objective, never an exception (:func:`solve_batch` always validates and names the model).

    Differentiation: ``jax.grad`` (and ``jvp``/``vjp``) with respect to ``S`` differentiate the reported
    ``loss``/``objective`` as functions of ``S`` at the returned ``X*`` held fixed (the iterations are
    under ``stop_gradient``). For ``objective`` this is the exact derivative of the optimal value
    (envelope/Danskin theorem: the feasible set does not depend on ``S``). For the per-class ``loss``
    it is the partial derivative at fixed ``X*`` -- not the total derivative through ``X*(S)``, which is
    not even well defined in general, since ``X*`` need not be unique.
    """
    if method not in METHODS:
        raise CHCOInputError(f"unknown CHCO method {method!r}; choose one of {METHODS}")
    if max_iter is not None and int(max_iter) < 0:
        raise CHCOInputError(f"max_iter must be >= 0, got {max_iter}")
    _check_tolerances(tol, atol)
    if not _is_traced(S, head_mask):
        S = np.asarray(S) if not isinstance(S, jax.Array) else S
        if S.ndim == 2 and S.size:
            _check_finite(S, head_mask)
    return _solve_jit(S, head_mask, method=method, tol=tol, atol=atol, max_iter=max_iter,
                      precondition=precondition, X0=X0)


def _solve_impl(S, head_mask=None, *, method, tol, atol, max_iter, precondition, X0, restart_every=None,
                stop_scale=None):
    S = jnp.asarray(S)
    S = S.astype(_working_dtype(S.dtype))
    head_mask = None if head_mask is None else jnp.asarray(head_mask, bool)
    _check_shapes(S, head_mask, X0)
    if method not in METHODS:
        raise CHCOInputError(f"unknown CHCO method {method!r}; choose one of {METHODS}")
    H, C = S.shape
    atol = _default_atol(C, S.dtype) if atol is None else atol
    tol = jnp.asarray(tol, S.dtype)
    atol = jnp.asarray(atol, S.dtype)
    # stop_scale (solve_batch's retry of a model whose loop stopped on its working-precision gap while
    # the accurate gap missed the threshold): the loops stop at a tighter threshold; the reported
    # `converged` keeps the caller's tol and atol.
    tol_l, atol_l = (tol, atol) if stop_scale is None else (tol * stop_scale, atol * stop_scale)
    # The iterations see S through stop_gradient: X* is a fixed point for differentiation (see solve).
    P_fixed = head_softmax(jax.lax.stop_gradient(S), head_mask)
    X = _initial_point(H, C, S.dtype, head_mask, None if X0 is None else jax.lax.stop_gradient(X0))
    Gt = None
    if method == "pgd":
        X, k, gap, Gt = _pgd(P_fixed, X, head_mask, tol_l, atol_l, 2000 if max_iter is None else max_iter,
                             precondition, restart_every, uniform_start=X0 is None)
    elif method == "fista":
        X, k, gap = _fista(P_fixed, X, head_mask, tol_l, atol_l, 500 if max_iter is None else max_iter,
                           precondition, accelerate=True)
    else:
        X, k, gap = _head_by_head(P_fixed, X, head_mask, tol_l, atol_l, 200 if max_iter is None else max_iter,
                                  precondition)
    X = jax.lax.stop_gradient(X)
    # float32: the reported gap (and the certificate) is re-evaluated at the final X in double-word
    # arithmetic (_gap_accurate); the iterations' float32 gap only decides when they stop. float64
    # keeps the iterations' gap at the final X (already ~1e-13 accurate), which also spares the
    # double-word code's compile time (~1 s per shape) in float64 use.
    Q = None
    if S.dtype == jnp.float32:
        # pgd's gradient at X (class-major) picks the candidate classes of m_h, sparing a product.
        gap, Q, R = _gap_accurate(P_fixed, X, head_mask, Gt, return_q=True)
    # Losses at the final X with the accurate logarithms of _log_pair, differentiable in S. For pgd,
    # Q = P^T X and R = P^T (1 - X) of the final X come from the accurate gap's double-word product
    # (float32; R = s - Q in double words, s = P^T 1) or two products (float64), never from the loop's
    # incrementally updated ones. The derivative in S is that of the recomputation (_loss_at).
    if method != "pgd":
        loss = _loss_qr(*_qr(head_softmax(S, head_mask), X))
    else:
        if Q is None:
            Q, R = _qr(P_fixed, X)
        loss = _loss_at(S, jnp.ones((H,), bool) if head_mask is None else head_mask, X, Q, R)
    f = jnp.sum(loss)
    fd = jax.lax.stop_gradient(f)
    converged = (gap <= tol * jnp.abs(fd) + atol) & jnp.isfinite(fd) & jnp.isfinite(gap)
    return CHCOResult(X, loss, f, k, converged, gap)


_solve_jit = jax.jit(_solve_impl, static_argnames=("method", "max_iter", "precondition"))


@jax.custom_jvp
def _loss_at(S, head_mask, X, Q, R):
    """Per-class losses at ``X`` from its ``Q = P^T X`` and ``R = P^T (1 - X)`` (``P = head_softmax(S)``)
    as computed by the solver: the value of ``losses(S, X, head_mask)`` without recomputing the two
    (H, C) products; derivatives (in ``S``) are those of that recomputation."""
    del S, head_mask, X
    return _loss_qr(Q, R)


@_loss_at.defjvp
def _loss_at_jvp(primals, tangents):
    S, head_mask, X, _, _ = primals
    dS, _, dX, _, _ = tangents
    return jax.jvp(lambda s, x: _loss_qr(*_qr(head_softmax(s, head_mask), x)), (S, X), (dS, dX))


def _metric(D, precondition, dtype):
    """Per-coordinate step scale ``1 / d`` (diagonal metric), floored for padded/flat coordinates."""
    if not precondition:
        return None
    dmax = jnp.max(D)
    return 1 / jnp.maximum(D, jnp.maximum(dmax, 1) * jnp.asarray(1e-12, dtype))


def _metric_diag(W2, P2t, rs2):
    """The diagonal metric of pgd, class-major (C, H): an upper bound of the Hessian's diagonal.

    The diagonal itself is ``d[h, c] = sum_c' P[h, c']^2 W2[c', c]`` (one more (C, C) x (C, H) product
    per iteration). With ``w_c = max_{c' != c} W2[c', c]`` the bound
    ``P[h, c]^2 W2[c, c] + w_c (sum_c' P[h, c']^2 - P[h, c]^2) >= d[h, c]`` costs one elementwise pass
    from the heads' row sums ``rs2`` ((1, H)) of ``P^2`` and the ``P^2`` given class-major (``P2t``).
    (Measured, pgd, 60 models each: iterations mean synthetic C = 50 17.4 -> 17.3, C = 10 13.1 -> 12.9,
    real C = 50 59.6 -> 59.0, C = 10 25.0 -> 25.7, all certified with both; the column mean instead of
    the max, not a bound, took up to 41 instead of 25 iterations.) The bound is floored at its first
    term, which it never falls below in exact arithmetic, against cancellation when ``w_c`` is large.
    """
    C = W2.shape[0]
    dg = jnp.diagonal(W2)[:, None]
    wb = jnp.max(jnp.where(jnp.eye(C, dtype=bool), 0, W2), axis=0)[:, None]
    first = P2t * dg
    return jnp.maximum(first + wb * (rs2 - P2t), first)


def _delta_loss(Q, R, dQ):
    """``L(Q + dQ) - L(Q)`` per class, evaluated with log1p so small decreases are resolved in float32.

    A step that would make any ``Q[c, c]`` or ``1 - Q[c', c]`` non-positive has an infinite increase
    (the loss leaves its domain), so a line search rejects it.
    """
    C = Q.shape[0]
    off = ~jnp.eye(C, dtype=bool)

    def nlog1p(v):  # -log1p(v), +inf where 1 + v <= 0
        return jnp.where(v > -1, -jnp.log1p(jnp.maximum(v, -1 + jnp.finfo(v.dtype).epsneg)), jnp.inf)

    diag = nlog1p(jnp.diagonal(dQ) / _clamp(jnp.diagonal(Q)))
    offd = jnp.sum(jnp.where(off, nlog1p(-dQ / _clamp(R)), 0), axis=0) / (C - 1)
    return diag + offd


def _fista(P, X0, head_mask, tol, atol, max_iter, precondition, accelerate=True):
    dtype = P.dtype
    one = jnp.asarray(1.0, dtype)
    row_mask = None if head_mask is None else head_mask[:, None]

    def evaluate(X):
        Q, R = _qr(P, X)
        W, W2 = _w_qr(Q, R, precondition)
        D = (P * P) @ W2 if precondition else jnp.zeros((), dtype)
        return Q, R, _loss_qr(Q, R), P @ W, D

    Q0, R0, l0, g0, d0 = evaluate(X0)
    f0 = jnp.sum(l0)
    gap0 = duality_gap(g0, X0, head_mask)
    # a: step length (a multiple of the diagonal metric when preconditioned). The first trial is the
    # exact minimiser of the quadratic model along the first (scaled) steepest-descent ray,
    # a = -<g, d> / d^T H d with d = -scale * g: d^T H d = sum_{c', c} d2L/dQ2[c', c] (P^T d)[c', c]^2
    # costs one (C, H) x (H, C) product and saves the 4-8 halvings a blind start needs.
    scale0 = _metric(d0, precondition, dtype)
    dir0 = -(g0 if scale0 is None else scale0 * g0)
    if row_mask is not None:
        dir0 = jnp.where(row_mask, dir0, 0)
    _, W2_0 = _w_qr(Q0, R0, True)
    curv = jnp.sum(W2_0 * jnp.square(P.T @ dir0))
    ray = -jnp.sum(g0 * dir0) / jnp.maximum(curv, jnp.finfo(dtype).tiny)
    a0 = jnp.clip(ray, jnp.finfo(dtype).eps, one if precondition else jnp.inf)
    a0 = jnp.where(jnp.isfinite(a0), a0, one)
    state = dict(
        X=X0, f=f0, loss=l0, Y=X0, QY=Q0, RY=R0, lY=l0, gY=g0, dY=d0,
        a=a0, t=one, k=jnp.zeros((), jnp.int32), gap=gap0,
        done=gap0 <= tol * jnp.abs(f0) + atol, flat=jnp.zeros((), jnp.int32),
    )

    def cond(s):
        return (s["k"] < max_iter) & ~s["done"]

    def body(s):
        Y, gY = s["Y"], s["gY"]
        scale = _metric(s["dY"], precondition, dtype)

        def bt_body(b):
            a, _, _, _, it = b
            a = a / 2
            step = a if scale is None else a * scale
            Xn = projection_capped_simplex(Y - step * gY, weights=step, mask=row_mask)
            Dx = Xn - Y
            dQ = P.T @ Dx
            dl = _delta_loss(s["QY"], s["RY"], dQ)
            quad = jnp.sum(Dx * Dx) if scale is None else jnp.sum(Dx * Dx / scale)
            bad = ~(jnp.sum(dl) <= jnp.sum(gY * Dx) + 0.5 / a * quad)
            return a, Xn, dl, bad, it + 1

        a, Xn, dl, bad, _ = jax.lax.while_loop(
            lambda b: b[3] & (b[4] < _MAX_BACKTRACK), bt_body,
            _vary_like((s["a"] * 2, Y, jnp.zeros_like(s["lY"]), jnp.asarray(True), jnp.int32(0)), P),
        )
        # No sufficient decrease even with a step 2^-30 times the last one. From an extrapolated point
        # that means a bad extrapolation: keep X and restart the momentum. From X itself (t == 1) the
        # model sits at the working precision's floor: stop it (under vmap a stuck model would
        # otherwise make every iteration of its whole chunk pay the full backtracking loop).
        stalled = bad & (s["t"] <= 1)
        # Also stop after 10 consecutive iterations whose decrease is at round-off level: the iterate
        # cannot improve in this precision, though its certificate may not (yet) hold.
        tiny_step = -jnp.sum(dl) <= 4 * jnp.finfo(dtype).eps * jnp.abs(s["f"])
        flat = jnp.where(tiny_step & ~bad, s["flat"] + 1, 0)
        stalled = stalled | (flat >= 10)
        Xn = jnp.where(bad, s["X"], Xn)
        dl = jnp.where(bad, s["loss"] - s["lY"], dl)
        ln = s["lY"] + dl
        fn = jnp.sum(ln)
        t = s["t"]
        t_next = (1 + jnp.sqrt(1 + 4 * t * t)) / 2
        Yn = Xn + ((t - 1) / t_next) * (Xn - s["X"])
        if row_mask is not None:
            Yn = jnp.where(row_mask, Yn, 0)
        # Both points are evaluated: Xn's gradient gives the certificate, and Xn replaces Y on a restart.
        QX, RX, lX, gX, dX = evaluate(Xn)
        if accelerate:
            QY, RY, lY, gYn, dYn = evaluate(Yn)
            # Restart (O'Donoghue & Candes) when the objective went up, or when the extrapolated point
            # left the domain of the loss (some Q[c, c] <= 0 or 1 - Q <= 0): not a valid anchor.
            y_ok = (jnp.min(jnp.diagonal(QY)) > 0) & (jnp.min(RY) > 0) & jnp.all(jnp.isfinite(lY))
            restart = (fn > s["f"]) | ~y_ok | bad
        else:  # plain projected gradient: Y = X, one evaluation per iteration
            QY, RY, lY, gYn, dYn = QX, RX, lX, gX, dX
            restart = jnp.asarray(True)
        pick = lambda x, y: jnp.where(restart, x, y)  # noqa: E731
        gap = duality_gap(gX, Xn, head_mask)
        return dict(
            X=Xn, f=fn, loss=ln, Y=pick(Xn, Yn), QY=pick(QX, QY), RY=pick(RX, RY), lY=pick(lX, lY),
            gY=pick(gX, gYn), dY=pick(dX, dYn),
            a=jnp.where(bad, one, jnp.minimum(a * 2, one)) if precondition else jnp.where(bad, s["a"], a * 1.25),
            t=pick(one, t_next), k=s["k"] + 1,
            gap=gap, done=(gap <= tol * jnp.abs(fn) + atol) | stalled, flat=flat,
        )

    s = jax.lax.while_loop(cond, body, _vary_like(state, P))
    return s["X"], s["k"], s["gap"]


_PGD_REFRESH_EVERY = 50  # pgd without warm restarts: Q and R recomputed from X every this many iterations
_UNROLL_MAX_C = 64  # pgd's gap: reductions over the classes unrolled up to this C (see gap_of)
_PAIRWISE_MAX_C = 16  # up to this C the projection is the unrolled pairwise one, above it Newton


def _project_cm(Yt, Wt, lam0=None):
    """Weighted capped-simplex projection of every column of the class-major (C, H) ``Yt``.

    With ``lam0`` ((1, H) multipliers of a nearby projection, or zeros) returns ``(X, lam)``: above
    ``_PAIRWISE_MAX_C`` the Newton iteration is warm-started from ``lam0`` (exact from any start, see
    :func:`mll_jax.projection.projection_capped_simplex`); the pairwise projection ignores it.

    (Tried: a Newton loop over ``Xt``, ``Gt`` and the step that never forms ``Yt = Xt - step * Gt``;
    XLA hoisted the loop-invariant slabs out of the loop as C separate small kernels, and as many
    again for the result: worse.)"""
    if Yt.shape[0] <= _PAIRWISE_MAX_C:
        X = projection_capped_simplex_pairwise(Yt, Wt, axis=0)
        return X if lam0 is None else (X, lam0)
    if lam0 is None:
        return projection_capped_simplex(Yt, Wt, axis=0)
    return projection_capped_simplex(Yt, Wt, axis=0, lam0=lam0, return_multiplier=True)


def _csum(f, C):
    """``sum_i f(i)`` over the C class slabs, then over heads: for a (C, H) elementwise expression, the sum
    of all its entries. Up to ``_UNROLL_MAX_C`` the class axis is unrolled into one elementwise fusion
    (XLA:CPU's full reductions of (C, H) arrays went through a slow library kernel: 0.07 ms each at C = 50)."""
    if C <= _UNROLL_MAX_C:
        return jnp.sum(functools.reduce(jnp.add, [f(i) for i in range(C)]))
    return jnp.sum(jnp.stack([f(i) for i in range(C)]))


def _pgd(P, X0, head_mask, tol, atol, max_iter, precondition, restart_every=None, uniform_start=False):
    """Projected gradient in the diagonal-Hessian metric, one trial step per iteration (no inner loops).

    Each iteration: ``Xn = proj(X - a * scale * G)``, accepted when the decrease
    ``L(Q + P^T dX) - L(Q)`` (log1p-accurate) satisfies the sufficient-decrease test
    ``dl <= <G, dX> + |dX|^2_metric / (2 a)``; then ``a <- min(2 a, 1)`` (Euclidean: ``a <- 1.25 a``)
    unless the previous trial was rejected.
    A rejected trial leaves ``X`` unchanged and halves ``a`` for the next iteration, so an iteration
    is straight-line code and a backtracking step costs one iteration. Stops on the duality-gap
    certificate, after 30 consecutive rejections, or after ``_PGD_FLAT_STOP`` (100) consecutive
    accepted full steps (``a = 1``) whose decrease is at round-off level (a safety net for a model that
    cannot move in this precision). Both stop counters carry across the warm restarts of
    ``restart_every``.

    Layout: the iterations run on class-major (C, H) arrays (``Xt = X^T``), so that every row
    operation of the projection and the gap (reductions over the C classes of a head) is a
    contiguous vector operation over heads; for C <= 16 the projection is the loop-free pairwise one
    (measured on CPU, H = 1000, C = 10: 0.033 ms per model against 0.225 for the Newton loop), above
    it Newton's method warm-started from the previous iteration's multipliers (exact from any start;
    2.4 loop steps instead of 7.1 at C = 50). Two products per iteration: the trial's ``dQ = P^T dX``
    ((C, H) x (H, C); ``Q`` and ``R`` are updated by it, see body) and ``G = P W`` ((C, C) x (C, H)); the
    metric is a bound of the Hessian's diagonal that costs no product (:func:`_metric_diag`). With
    ``uniform_start`` (``X0 = 1/C`` on the unmasked heads) the starting ``Q`` and ``R`` come from ``P``'s
    column sums.
    """
    dtype = P.dtype
    one = jnp.asarray(1.0, dtype)
    eps = jnp.finfo(dtype).eps
    Pt = P.T  # (C, H)
    P2t = Pt * Pt if precondition else None
    hm = None if head_mask is None else head_mask[None, :]

    def qr(Xt):
        # (Xt @ P).T rather than Pt @ Xt.T: a plain (C, H) x (H, C) product on the stored layouts; the
        # latter made XLA:CPU transpose the (C, H) operand every time (measured 0.15 ms per iteration at
        # C = 50 for the fused product below).
        return (Xt @ P).T, ((1 - Xt) @ P).T

    # Row sums of P^2 (per head), for the diagonal metric below.
    rs2 = jnp.sum(P2t, axis=0)[None, :] if precondition else None

    def evaluate_qr(Q, R):
        W, W2 = _w_qr(Q, R, precondition)
        Gt = W.T @ Pt
        Dt = _metric_diag(W2, P2t, rs2) if precondition else None
        return Q, R, _loss_qr(Q, R), Gt, Dt

    def evaluate(Xt):
        return evaluate_qr(*qr(Xt))

    def gap_of(Gt, Xt):
        if Gt.shape[0] <= _UNROLL_MAX_C:
            # Reductions over the classes unrolled over the (H,) slabs: elementwise code that XLA
            # fuses, where its reduction along the leading axis of a (C, H) array is slow on CPU
            # (measured per model-iteration: C = 10, chunks of 4: 0.122 -> 0.101 ms; C = 50, chunks
            # of 1: 2.28 -> 2.01 ms on a loaded machine). Not for the Newton projection's sums at
            # C = 50 (measured slower: 1.96 -> 2.36 ms).
            n = Gt.shape[0]
            m = functools.reduce(jnp.minimum, [Gt[i] for i in range(n)] + [jnp.zeros_like(Gt[0])])
            terms = sum(Xt[i] * (Gt[i] - m) for i in range(n)) + m * (sum(Xt[i] for i in range(n)) - 1)
        else:
            m = jnp.minimum(jnp.min(Gt, axis=0), 0)
            terms = jnp.sum(Xt * (Gt - m), axis=0) + m * (jnp.sum(Xt, axis=0) - 1)
        if hm is not None:
            terms = jnp.where(head_mask, terms, 0)
        return jnp.sum(terms)

    def ray(Xt, Q, R, Gt, Dt):
        # Step length at a (re)start: the exact minimiser of the quadratic model along the (scaled)
        # steepest-descent ray, a = -<g, d> / d^T H d with d = -scale * g (see _fista).
        scale0 = _metric(Dt, precondition, dtype)
        dir0 = -(Gt if scale0 is None else scale0 * Gt)
        if hm is not None:
            dir0 = jnp.where(hm, dir0, 0)
        _, W2_0 = _w_qr(Q, R, True)
        curv = jnp.sum(W2_0 * jnp.square((dir0 @ P).T))
        r = -jnp.sum(Gt * dir0) / jnp.maximum(curv, jnp.finfo(dtype).tiny)
        a0 = jnp.clip(r, eps, one if precondition else jnp.inf)
        return jnp.where(jnp.isfinite(a0), a0, one)

    # The loop carries Q and R as Qc, Rc: transposed for C <= 16, as they are above. Transposed, the
    # loop's product is a plain (C, H) x (H, C) one, dX^T P, which XLA:CPU hands to XNNPACK; used as is,
    # XLA folds the transpose into the product (P^T dX, contracting P's leading axis) and runs it on
    # Eigen. Measured per op (profiler, per model-iteration): vmapped C = 10, 4 models per call, 50 us
    # (XNNPACK) against 140 us; C = 50, one model per call, 82-104 us (Eigen) against 130-148 us.
    ori = (lambda A: A.T) if X0.shape[1] <= _PAIRWISE_MAX_C else (lambda A: A)
    X0t = X0.T
    if uniform_start:
        # X0 = 1/C on every unmasked head (P is 0 on masked ones): Q0 = P^T X0 and R0 = P^T (1 - X0) are
        # P's column sums times 1/C and 1 - 1/C, no (C, H) x (H, C) products.
        C0 = X0t.shape[0]
        cs = jnp.sum(P, axis=0)[:, None]
        Q0, R0, l0, G0, D0 = evaluate_qr(jnp.broadcast_to(cs / C0, (C0, C0)),
                                         jnp.broadcast_to(cs * (1 - 1 / C0), (C0, C0)))
    else:
        Q0, R0, l0, G0, D0 = evaluate(X0t)
    f0 = jnp.sum(l0)
    gap0 = gap_of(G0, X0t)
    zero_i = jnp.zeros((), jnp.int32)
    state = dict(X=X0t, Qc=ori(Q0), Rc=ori(R0), loss=l0, G=G0, D=D0 if precondition else jnp.zeros((), dtype),
                 a=one, k=zero_i, kr=zero_i, gap=gap0, done=gap0 <= tol * jnp.abs(f0) + atol, flat=zero_i,
                 rej=zero_i, lam=jnp.zeros((1, X0t.shape[1]), dtype))

    def cond(s):
        return (s["k"] < max_iter) & ~s["done"]

    def body(s):
        Xt, Gt, a = s["X"], s["G"], s["a"]
        C = Xt.shape[0]
        scale = _metric(s["D"], precondition, dtype)
        step = jnp.broadcast_to(a, Xt.shape) if scale is None else a * scale
        Xn, lam = _project_cm(Xt - step * Gt, step, s["lam"])
        if hm is not None:
            Xn = jnp.where(hm, Xn, 0)
        Dx = Xn - Xt
        # One (C, H) x (H, C) product per iteration: the trial's dQ = P^T dX. Q and R are carried and
        # updated by dQ on acceptance (R = P^T (1 - X) falls by what Q gains), so neither is recomputed
        # by a product in the loop; they are recomputed from X at every round start (see refresh), which
        # bounds their drift (~eps per accepted step). The losses reported at the end come from Q and R of
        # the final X (_gap_accurate's double words in float32, products in float64), not from these.
        dQc = ori((Dx @ P).T)  # dQ = P^T dX in the carried orientation
        Qcn, Rcn = s["Qc"] + dQc, s["Rc"] - dQc
        dl = jnp.sum(_delta_loss(ori(s["Qc"]), ori(s["Rc"]), ori(dQc)))
        # Sufficient decrease: dl <= <G, dX> + |dX|^2_metric / (2 a), both sums in one pass.
        h = 0.5 / a
        if scale is None:
            model = _csum(lambda i: Dx[i] * (Gt[i] + h * Dx[i]), C)
        else:
            model = _csum(lambda i: Dx[i] * (Gt[i] + h * Dx[i] / scale[i]), C)
        ok = dl <= model
        f = jnp.sum(s["loss"])
        # A round-off-level decrease only counts as stagnation at the full step (a = 1): after a
        # warm restart the ray rule may start from a tiny a, whose first steps are tiny by design
        # (measured: one C = 10 model of 1000 stopped uncertified that way).
        tiny_step = (-dl <= 4 * eps * jnp.abs(f)) & ((a >= one) if precondition else True)
        flat = jnp.where(ok & tiny_step, s["flat"] + 1, 0)
        rej = jnp.where(ok, 0, s["rej"] + 1)
        Xn = jnp.where(ok, Xn, Xt)
        Qc, Rc = jnp.where(ok, Qcn, s["Qc"]), jnp.where(ok, Rcn, s["Rc"])
        _, _, ln, Gn, Dn = evaluate_qr(ori(Qc), ori(Rc))
        fn = jnp.sum(ln)
        gap = gap_of(Gn, Xn)
        # Grow the step only after two accepted steps in a row: growing right after a rejection
        # oscillates (accept, double, reject, halve, ...) and wastes every other iteration.
        grow = ok & (s["rej"] == 0)
        a_up = jnp.minimum(2 * a, one) if precondition else a * 1.25
        a = jnp.where(ok, jnp.where(grow, a_up, a), a / 2)
        done = (gap <= tol * jnp.abs(fn) + atol) | (rej >= _MAX_BACKTRACK) | (flat >= _PGD_FLAT_STOP)
        return dict(X=Xn, Qc=Qc, Rc=Rc, loss=ln, G=Gn, D=Dn if precondition else s["D"], a=a, k=s["k"] + 1,
                    kr=s["kr"] + 1, gap=gap, done=done, flat=flat, rej=rej, lam=lam)

    def refresh(s):
        # At a round start after the first: Q and R recomputed from X (the loop only updates them by each
        # step's dQ), with the carried loss; G, the metric and the gap follow at the next iteration.
        def recompute(t):
            Q, R = qr(t["X"])
            return dict(t, Qc=ori(Q), Rc=ori(R), loss=_loss_qr(Q, R))

        return dict(jax.lax.cond(s["k"] > 0, recompute, lambda t: t, s), kr=_vary_like(zero_i, P))

    def restart(s):
        # The stop counters (flat, rej) carry across restarts: resetting them every round_iter (12)
        # iterations meant neither the 30-rejection nor the stagnation stop could ever fire, so a model
        # that cannot move ran to max_iter (review finding). A restart breaks their streaks anyway when
        # it changes the step (flat counts only full steps; rej resets on any accepted step).
        return dict(s, a=ray(s["X"], ori(s["Qc"]), ori(s["Rc"]), s["G"], s["D"] if precondition else None))

    # Rounds inside the compiled loop. With warm restarts, every ``restart_every`` iterations the step length
    # is re-initialised by the ray rule (what solve_batch's rounds did by re-packing the unconverged models;
    # the stop counters carry over, see restart), so a model never leaves the compiled loop. Without (solve),
    # the step rule starts once and the rounds of _PGD_REFRESH_EVERY iterations only refresh Q and R (never
    # refreshed, their drift reached ~20 eps after 1351 iterations and the loop's float32 gap 1% below the
    # accurate one, so solve stopped early and reported converged=False on 2 of 8 slow models; review).
    warm = restart_every is not None and restart_every < max_iter
    period = restart_every if warm else _PGD_REFRESH_EVERY

    def round_body(s):
        s = restart(refresh(s)) if warm else refresh(s)
        return jax.lax.while_loop(lambda t: cond(t) & (t["kr"] < period), body, s)

    s = jax.lax.while_loop(cond, round_body, _vary_like(state if warm else restart(state), P))
    # The class-major G at the final X (for _gap_accurate's candidates).
    return s["X"].T, s["k"], s["gap"], s["G"]


def _head_by_head(P, X0, head_mask, tol, atol, max_sweeps, precondition):
    dtype = P.dtype
    H, C = X0.shape
    off = ~jnp.eye(C, dtype=bool)

    def col_losses(Q, R):
        return _loss_qr(Q, R)

    def head_step(h, carry):
        X, Q, R = carry
        p = P[h]  # (C,) head h's probabilities on every class' data
        x = X[h]
        W, W2 = _w_qr(Q, R, True)
        g = p @ W  # (C,) gradient of f w.r.t. row h
        d = (p * p) @ W2  # (C,) exact diagonal of the row-h Hessian (it is diagonal: columns separate)
        if precondition:
            scale = 1 / jnp.maximum(d, jnp.finfo(dtype).tiny)
        else:
            scale = jnp.full_like(d, 1 / jnp.maximum(jnp.max(d), jnp.finfo(dtype).tiny))
        base = jnp.sum(col_losses(Q, R))

        def trial(a):
            step = a * scale
            xn = projection_capped_simplex(x - step * g, weights=step)
            dx = xn - x
            Qn = Q + p[:, None] * dx[None, :]
            Rn = R - p[:, None] * dx[None, :]
            return xn, Qn, Rn, jnp.sum(col_losses(Qn, Rn))

        def bt_cond(b):
            a, _, _, _, fn, it = b
            return (fn > base) & (it < 30)

        def bt_body(b):
            a, *_rest, it = b
            a = a / 2
            xn, Qn, Rn, fn = trial(a)
            return a, xn, Qn, Rn, fn, it + 1

        xn, Qn, Rn, fn = trial(jnp.asarray(1.0, dtype))
        _, xn, Qn, Rn, fn, _ = jax.lax.while_loop(
            bt_cond, bt_body, _vary_like((jnp.asarray(1.0, dtype), xn, Qn, Rn, fn, jnp.int32(0)), P))
        ok = fn <= base
        if head_mask is not None:
            ok = ok & head_mask[h]
        xn = jnp.where(ok, xn, x)
        Q = jnp.where(ok, Qn, Q)
        R = jnp.where(ok, Rn, R)
        return X.at[h].set(xn), Q, R

    def sweep_state(X):
        Q, R = _qr(P, X)
        ln = _loss_qr(Q, R)
        W, _ = _w_qr(Q, R, False)
        gap = duality_gap(P @ W, X, head_mask)
        return Q, R, ln, gap

    Q0, R0, l0, gap0 = sweep_state(X0)
    del off

    def cond(s):
        return (s["k"] < max_sweeps) & ~s["done"]

    def body(s):
        X, _, _ = jax.lax.fori_loop(0, H, head_step, _vary_like((s["X"], s["Q"], s["R"]), P))
        # Recompute Q, R exactly once per sweep so rank-one round-off cannot accumulate.
        Q, R, ln, gap = sweep_state(X)
        f = jnp.sum(ln)
        return dict(X=X, Q=Q, R=R, loss=ln, gap=gap, k=s["k"] + 1, done=gap <= tol * jnp.abs(f) + atol)

    f0 = jnp.sum(l0)
    state = dict(X=X0, Q=Q0, R=R0, loss=l0, gap=gap0, k=jnp.zeros((), jnp.int32), done=gap0 <= tol * jnp.abs(f0) + atol)
    s = jax.lax.while_loop(cond, body, _vary_like(state, P))
    return s["X"], s["k"], s["gap"]


# ----------------------------------------------------------------------------------------------
# Batched entry point
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BatchResult:
    """Results of :func:`solve_batch`, in input order (numpy)."""

    X: list  # list of (H_m, C) arrays
    loss: np.ndarray  # (M, C)
    objective: np.ndarray  # (M,)
    iterations: np.ndarray  # (M,)
    converged: np.ndarray  # (M,) bool
    gap: np.ndarray  # (M,)
    model_ids: list

    def __len__(self):
        return len(self.X)


def _validate(S_list, model_ids):
    if S_list is None or len(S_list) == 0:
        raise CHCOInputError("solve_batch got no models (empty input)")
    if model_ids is None:
        model_ids = [f"model[{i}]" for i in range(len(S_list))]
    elif len(model_ids) != len(S_list):
        raise CHCOInputError(f"{len(model_ids)} model_ids for {len(S_list)} label matrices")
    out = []
    C = None
    for mid, S in zip(model_ids, S_list):
        try:
            A = np.asarray(S)
        except Exception as e:  # ragged nested lists etc.
            raise CHCOInputError(f"{mid}: label matrix is not an array ({e})") from e
        if A.ndim != 2:
            raise CHCOInputError(f"{mid}: label matrix must be 2-D (heads, classes), got shape {A.shape}")
        if A.shape[0] == 0:
            raise CHCOInputError(f"{mid}: label matrix has no heads (shape {A.shape})")
        if A.shape[1] < 2:
            raise CHCOInputError(f"{mid}: CHCO needs at least 2 target classes, got shape {A.shape}")
        real = (np.issubdtype(A.dtype, np.number) or jnp.issubdtype(A.dtype, jnp.floating)) and not (
            np.issubdtype(A.dtype, np.complexfloating))
        if not real:
            raise CHCOInputError(f"{mid}: label matrix must be real-valued, got dtype {A.dtype}")
        if A.dtype.itemsize < 4 or not jnp.issubdtype(A.dtype, jnp.floating):
            A = A.astype(_working_dtype(A.dtype))  # float16/bfloat16/integers: upcast as solve() does
        if C is None:
            C = A.shape[1]
        elif A.shape[1] != C:
            raise CHCOInputError(f"{mid}: has {A.shape[1]} classes but the first model has {C}; all models must share C")
        bad = ~np.isfinite(A)
        if bad.any():
            h, c = np.argwhere(bad)[0]
            raise CHCOInputError(
                f"{mid}: label matrix has {int(bad.sum())} non-finite value(s) (first: {A[h, c]} at head {h}, class {c})"
            )
        out.append(A)
    return out, list(model_ids), C


def _bucket(h: int) -> int:
    """Pad head counts to a few shapes: multiples of 8 up to 64, then powers of 2 with 1.5x steps."""
    if h <= 64:
        return max(8, -(-h // 8) * 8)
    k = 64
    while k < h:
        nxt = k * 3 // 2
        k = -(-nxt // 8) * 8 if nxt > k else k * 2
    return k


def _padded_heads(bucket: int, h_max: int) -> int:
    """Padded head count of a group: its largest head count rounded up to 8, at most the bucket."""
    return min(bucket, -(-h_max // 8) * 8)


def _chunk_fn(S, mask, X0, tol, atol, *, method, max_iter, precondition, sub=None, restart_every=None):
    """Solve the K models of one call: ``S`` (K, H, C), ``mask`` (K, H), ``X0`` (K, H, C) or ``None``
    (the uniform start), ``atol`` a pair of (K,) per-model arrays: the absolute tolerance (``inf`` marks
    a filler slot: it is certified at its first evaluation and never iterates) and the stop scale of
    the loops' threshold (1, or less on a retry; see :func:`_solve_impl`). With ``sub`` the models run in sub-chunks of ``sub`` models
    (``lax.map``: a scan over vmapped sub-chunks inside the one compiled call), so every sub-chunk's
    working set stays in cache and iterates only until its own slowest model is done."""
    def one(s, m, x, at):
        return _solve_impl(s, m, method=method, tol=tol, atol=at[0], max_iter=max_iter, precondition=precondition,
                           X0=x, restart_every=restart_every, stop_scale=at[1])

    if X0 is None:
        f = lambda a: one(a[0], a[1], None, a[2])  # noqa: E731
        xs = (S, mask, atol)
    else:
        f = lambda a: one(*a)  # noqa: E731
        xs = (S, mask, X0, atol)
    if sub == 1 or S.shape[0] == 1:
        # One model at a time (C = 50 at the default chunk bytes): no vmap, so the while loops keep real
        # per-model predicates instead of batched ones, which vmap turns into a select on every carry.
        return jax.lax.map(f, xs)
    if sub is None or sub >= S.shape[0]:
        return jax.vmap(f)(xs)
    return jax.lax.map(f, xs, batch_size=sub)


_solve_chunk = jax.jit(_chunk_fn, static_argnames=("method", "max_iter", "precondition", "sub", "restart_every"))


@functools.lru_cache(maxsize=32)
def _sharded_chunk_solver(mesh, method, max_iter, precondition, sub, restart_every, has_x0):
    """One jitted ``shard_map`` over the mesh's single axis: each device runs the vmapped solver on its
    slice of the call's models with its own ``while_loop`` (no cross-device synchronisation per iteration)."""
    from jax.sharding import PartitionSpec as Pspec

    try:
        from jax import shard_map
    except ImportError:  # older jax
        from jax.experimental.shard_map import shard_map
    ax = mesh.axis_names[0]
    fn = functools.partial(_chunk_fn, method=method, max_iter=max_iter, precondition=precondition, sub=sub,
                           restart_every=restart_every)
    if has_x0:
        sm = shard_map(fn, mesh=mesh, in_specs=(Pspec(ax), Pspec(ax), Pspec(ax), Pspec(), Pspec(ax)),
                       out_specs=Pspec(ax))
        return jax.jit(sm)
    sm = shard_map(lambda S, m, t, at: fn(S, m, None, t, at), mesh=mesh,
                   in_specs=(Pspec(ax), Pspec(ax), Pspec(), Pspec(ax)), out_specs=Pspec(ax))
    return jax.jit(lambda S, m, X0, t, at: sm(S, m, t, at))


def _as_mesh(devices):
    """``None`` -> all local devices; a ``Mesh`` with one axis; or a sequence of devices."""
    from jax.sharding import Mesh

    if devices is None:
        devices = jax.local_devices()
    if isinstance(devices, Mesh):
        if len(devices.axis_names) != 1:
            raise CHCOInputError(f"solve_batch needs a 1-D mesh, got axes {devices.axis_names}")
        return devices
    devices = list(devices)
    if not devices:
        raise CHCOInputError("solve_batch got an empty devices list")
    return Mesh(np.array(devices), ("models",))


def solve_batch(
    S_list: Sequence[Any],
    *,
    method: str = DEFAULT_METHOD,
    tol: float = 1e-5,
    atol: float | None = None,
    max_iter: int | None = None,
    round_iter: int | None = None,
    precondition: bool = True,
    dtype=None,
    chunk_size: int | None = None,
    max_chunk_bytes: int = 4 * 2**20,
    model_ids: Sequence[str] | None = None,
    progress: bool = True,
    devices=None,
    workers: int | None = None,
) -> BatchResult:
    """Solve CHCO for many models with different head counts.

    Models are validated (errors name the model), grouped by padded head count (see ``_bucket``), padded
    with masked heads (which provably do not change the result: their probability is exactly 0 and their
    rows are fixed at 0) and solved in fixed-size chunks: one jit-compiled call runs up to
    ``_SUBCHUNKS`` chunks one after the other (``lax.map`` over ``vmap``-ed chunks), ``workers`` host
    threads launch calls concurrently (on CPU one per core), and a few calls are kept in flight so that
    packing in Python overlaps the solves. Chunks are sized so that one (chunk, H_pad, C) working array stays under
    ``max_chunk_bytes / 24`` (about 24 such arrays are live at once), unless ``chunk_size`` is given.
    The default (4 MiB) keeps a chunk's working set in cache: every iteration is a few dozen passes
    over these arrays, and on CPU small cache-resident chunks beat large ones (measured, H = 1000,
    C = 10, 64 models, CPU time: 6.5 ms/model with 2 models per chunk, 10.1 with 4, 13.8 with 64).

    ``round_iter``: for ``"pgd"`` every ``round_iter`` iterations the step length is re-initialised by
    the ray rule (a warm restart; the stop counters carry over), inside the compiled loop, so every
    model is solved in one pass. For ``"fista"``/``"head"`` work proceeds in rounds of ``round_iter``
    iterations: after each round the models that have not converged are re-packed into fresh chunks
    and warm-started from their current ``X`` (momentum is reset). ``max_iter`` bounds the total, except
    that a model whose loop stopped on its working-precision gap while the accurate float32 gap missed
    the threshold (by at most 4x) is re-run once from its ``X`` with the loop's threshold scaled by 1/4,
    which may take up to ``max_iter`` more iterations (seen on 1 of 400 real C = 50 models).

    Args:
      S_list: sequence of (H_m, C) label sub-matrices (numpy or jax arrays, any H_m >= 1, common C >= 2).
      dtype: working precision (default float32; float64 needs ``jax.config.update("jax_enable_x64", True)``).
      progress: show a tqdm progress bar over models (a model counts when it converges or gives up).
      devices: where chunks run: ``None`` (all local devices), a sequence of devices or a 1-D
        ``jax.sharding.Mesh``. With more than one device every chunk is split evenly over them
        (``shard_map``; the chunk size is rounded up to a multiple of the device count) and each device
        iterates its own models independently; results equal those on one device.
      workers: host threads that launch compiled calls and wait for them (default: on CPU the usable
        cores divided by the device count, at most ``_MAX_WORKERS``; 1 on accelerators). XLA:CPU runs calls
        launched from different threads at the same time, where the calls one thread keeps in flight run
        one after the other; each call's small operations use both cores poorly, so concurrent calls
        fill them (measured on 2 cores, H = 1000, paired in one process: C = 10 x1.7, C = 50 x1.4 in wall
        time over one thread). A model's result does not depend on ``workers``.
      Other arguments: as in :func:`solve`. Inputs below float32 (float16, bfloat16) and integer inputs
      are upcast to float32, as in :func:`solve`; ``dtype`` (the working precision) must be float32 or
      float64.
    """
    if method not in METHODS:
        raise CHCOInputError(f"unknown CHCO method {method!r}; choose one of {METHODS}")
    _check_tolerances(tol, atol)
    for name, v, lo in (("max_iter", max_iter, 1), ("round_iter", round_iter, 1), ("chunk_size", chunk_size, 1),
                        ("max_chunk_bytes", max_chunk_bytes, 1), ("workers", workers, 1)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo):
            raise CHCOInputError(f"{name} must be an integer >= {lo}, got {v!r}")
    arrays, model_ids, C = _validate(S_list, model_ids)
    dtype = jnp.dtype(jnp.float32 if dtype is None else dtype)
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        raise CHCOInputError('float64 requested but JAX x64 is disabled: call jax.config.update("jax_enable_x64", True)')
    if dtype not in (jnp.float32, jnp.float64):
        raise CHCOInputError(f"dtype must be float32 or float64, got {dtype}")
    mesh = _as_mesh(devices)
    n_dev = mesh.devices.size
    if workers is None:
        workers = _default_workers(mesh)
    if max_iter is None:
        max_iter = {"head": 200, "pgd": 2000}.get(method, 500)
    if round_iter is None:
        # Rounds re-pack unconverged models so that stragglers do not keep a large vmapped chunk
        # iterating (with 256-model chunks, pgd used rounds of 12). fista keeps 25: every round resets
        # its momentum. pgd with cache-sized chunks (a few models each), measured in CPU time, H = 1000:
        # C = 50: rounds of 100 beat 12 (synthetic 54.4 -> 41.1 ms/model, 19.0 -> 14.4 iterations; real
        # experts 346 -> 161 ms/model, 35% -> 63% certified in float32); C = 10: 12 beats 100 (7.2 vs
        # 9.2 ms/model, 100% vs 99.3% certified: the warm restart un-sticks the few models that creep).
        # Re-measured with the loop-free pgd (2026-11-24, C = 10, 128-256 models): rounds of 12 still
        # beat 30 and 100 (12.7 vs 16.4 and 17.9 iterations mean).
        round_iter = _default_round_iter(method, C)
    round_iter = min(round_iter, max_iter)
    # pgd restarts inside its compiled loop every round_iter iterations (the ray step is re-initialised
    # as a re-packed round did; the stop counters carry over), so one pass solves every model; the
    # other methods still work in rounds of round_iter iterations with re-packing between rounds.
    in_loop = method == "pgd"
    per_pass = max_iter if in_loop else round_iter
    restart_every = round_iter if in_loop and round_iter < max_iter else None
    M = len(arrays)
    X_cur: list = [None] * M  # None: the uniform start 1/C (not shipped to the device)
    loss = np.zeros((M, C), dtype)
    obj = np.zeros(M, dtype)
    iters = np.zeros(M, np.int64)
    conv = np.zeros(M, bool)
    gap = np.full(M, np.inf, dtype)
    stop_of = np.ones(M, dtype)  # per-model scale of the loops' stop threshold (< 1 on a retry)
    tol_a = jnp.asarray(tol, dtype)
    atol_v = np.asarray(_default_atol(C, dtype) if atol is None else atol, dtype)
    H_of = np.array([A.shape[0] for A in arrays])

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=M, desc=f"CHCO[{method}]", unit="model", leave=False)
    pending = list(range(M))
    in_flight: list = []
    pool = None
    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(workers, thread_name_prefix="chco")
    depth = max(_IN_FLIGHT, 2 * workers)  # calls launched ahead of the one being collected

    def launch(call):
        # A worker thread launches the call and waits for its results (the launch itself has to happen
        # in the worker: calls launched from one thread run one after the other on XLA:CPU).
        if pool is None:
            return call()
        return pool.submit(lambda: jax.device_get(call()))

    def collect(part, res, still):
        res = jax.device_get(res.result() if pool is not None else res)
        n = len(part)
        part_a = np.asarray(part)
        for j, i in enumerate(part):
            X_cur[i] = np.asarray(res.X[j, : H_of[i]])
        k = np.asarray(res.iterations[:n], np.int64)
        loss[part_a] = res.loss[:n]
        obj[part_a] = res.objective[:n]
        iters[part_a] += k
        conv[part_a] = res.converged[:n]
        gap[part_a] = res.gap[:n]
        # A pass that ends early without convergence means the solver stopped the model (no
        # descent possible in this precision, or its loop's working-precision gap met the threshold
        # while the accurate gap did not): do not re-queue it -- except, once, a model whose accurate
        # gap is within 4x of the threshold: it is re-run from its X with the loop's threshold scaled
        # by 1/4 (measured: 1 of 400 real C = 50 models, loop stopped at 102 iterations with an accurate
        # gap 1.001x the threshold).
        fin = conv[part_a] | (iters[part_a] >= max_iter) | (k < per_pass) | ~np.isfinite(obj[part_a])
        thr = tol * np.abs(obj[part_a]) + atol_v
        retry = fin & ~conv[part_a] & (iters[part_a] < max_iter) & np.isfinite(obj[part_a]) & (
            gap[part_a] <= 4 * thr) & (stop_of[part_a] == 1)
        stop_of[part_a[retry]] = 0.25
        fin &= ~retry
        still.extend(part_a[~fin].tolist())
        if bar is not None and fin.any():
            bar.update(int(fin.sum()))

    try:
        while pending:
            groups: dict[int, list[int]] = {}
            for i in pending:
                groups.setdefault(_bucket(arrays[i].shape[0]), []).append(i)
            still: list = []
            for bucket in sorted(groups):
                idx = groups[bucket]
                # Pad to the group's largest head count (a multiple of 8), not to the bucket's upper
                # bound: models of equal H (the common case) then carry no padded heads (H = 1000 was
                # padded to 1120, 12% of every iteration's work).
                Hp = _padded_heads(bucket, int(H_of[idx].max()))
                cs = _chunk_size(len(idx), Hp, C, dtype.itemsize, chunk_size, max_chunk_bytes)
                cs = -(-cs // n_dev) * n_dev  # every device gets the same number of models
                # Models per compiled call: up to _SUBCHUNKS sub-chunks of cs models, run one after the
                # other inside the call (lax.map), so Python dispatches few calls; a few calls stay in
                # flight at once, launched by the worker threads (concurrent calls keep the cores busy).
                # At least one call per worker where there are enough models for it.
                K = cs * min(_SUBCHUNKS, next_pow2(-(-len(idx) // (cs * workers))))
                has_x0 = any(X_cur[i] is not None for i in idx)
                for start in range(0, len(idx), K):
                    part = idx[start : start + K]
                    n = len(part)
                    S = np.empty((K, Hp, C), dtype)
                    mask = np.zeros((K, Hp), bool)
                    if all(H_of[i] == Hp for i in part):  # the common case: one copy, no padding
                        S[:n] = np.stack([arrays[i] for i in part])
                        mask[:n] = True
                    else:
                        S[:n] = 0
                        for j, i in enumerate(part):
                            S[j, : H_of[i]] = arrays[i]
                            mask[j, : H_of[i]] = True
                    # Filler slots repeat the first model (always well-posed) with atol = inf: certified
                    # at their first evaluation, they never iterate; results are discarded.
                    S[n:], mask[n:] = S[0], mask[0]
                    at = np.full(K, np.inf, dtype)
                    at[:n] = atol_v
                    st = np.ones(K, dtype)
                    st[:n] = stop_of[part]
                    at = (at, st)
                    X0 = None
                    if has_x0:
                        X0 = np.zeros((K, Hp, C), dtype)
                        for j, i in enumerate(part):
                            X0[j, : H_of[i]] = 1.0 / C if X_cur[i] is None else X_cur[i]
                        X0[n:] = X0[0]
                    sub = cs if cs < K else None
                    if n_dev == 1:
                        dev = mesh.devices.flat[0]
                        put = lambda x: None if x is None else jax.device_put(x, dev)  # noqa: E731
                        call = functools.partial(
                            _solve_chunk, put(S), put(mask), put(X0), tol_a, put(at), method=method,
                            max_iter=per_pass, precondition=precondition, sub=sub, restart_every=restart_every)
                    else:
                        from jax.sharding import NamedSharding, PartitionSpec as Pspec

                        sh = NamedSharding(mesh, Pspec(mesh.axis_names[0]))
                        put = lambda x: None if x is None else jax.device_put(x, sh)  # noqa: E731
                        sub_d = None if sub is None else max(1, sub // n_dev)
                        run = _sharded_chunk_solver(mesh, method, per_pass, precondition, sub_d, restart_every,
                                                    X0 is not None)
                        call = functools.partial(run, put(S), put(mask), put(X0), tol_a, put(at))
                    # Dispatch is asynchronous: keep a few calls in flight so that packing the next
                    # call in Python overlaps the solve of the previous ones (bounded memory).
                    in_flight.append((part, launch(call)))
                    if len(in_flight) > depth:
                        collect(*in_flight.pop(0), still)
            while in_flight:
                collect(*in_flight.pop(0), still)
            pending = still
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
    X_cur = [np.full(arrays[i].shape, 1.0 / C, dtype) if x is None else x for i, x in enumerate(X_cur)]
    return BatchResult(X_cur, loss, obj, iters, conv, gap, model_ids)


_MAX_WORKERS = 8  # default cap on solve_batch's host threads (only 2 cores were measured)


def _default_workers(mesh) -> int:
    """solve_batch's default host threads: on CPU one per usable core and device (XLA:CPU overlaps calls
    launched from different threads), on accelerators 1."""
    if mesh.devices.flat[0].platform != "cpu":
        return 1
    return max(1, min(_MAX_WORKERS, usable_cores() // mesh.devices.size))


def _default_round_iter(method, C):
    """Iterations per round of :func:`solve_batch` (see the comment there)."""
    return {"head": 8, "pgd": 12 if C < 30 else 100}.get(method, 25)


def _chunk_size(n, Hp, C, itemsize, chunk_size, max_chunk_bytes):
    if chunk_size is not None:
        return int(chunk_size)
    per_model = Hp * C * itemsize * 24
    cs = max(1, min(n, max_chunk_bytes // per_model))
    # Powers of two, so that repeated calls and later rounds share compilations.
    return 1 << (cs.bit_length() - 1) if cs < n else next_pow2(n)
