"""The Frank-Wolfe duality gap evaluated accurately in float32 (double-word arithmetic, no float64).

A float32 gap carries an absolute error of about 1e-6 (up to 1.2e-6 on duplicated heads, H = 40, C = 30): the
rounding of Q and R (through W), of W itself, of the product G = P W and of the final sum each contribute
comparably, while the rounding of P (the float32 softmax) contributes 10-30x less. So the reported gap is
evaluated for the float32 P exactly as given, with everything downstream in double words
(:mod:`mll_jax.chco.doubleword`): within 1e-5 relative or 1e-6 absolute of a float64 evaluation of the same X.
"""
from __future__ import annotations

import jax.numpy as jnp

from .doubleword import dw_add, dw_div, dw_mul, dw_neg, dw_sum, fast_two_sum, mm_dw, two_prod

__all__ = ["gap_accurate"]

_GAP_CAND_MAX_C = 16  # up to this C, gap_accurate evaluates only 3 candidate entries of G per head


def gap_accurate(P, X, head_mask=None, Gt=None, return_q=False):
    """The Frank-Wolfe duality gap at ``X`` for the softmax matrix ``P`` (exactly as given), evaluated in
    double-word arithmetic (see the module docstring).

    ``Q = P^T X`` and the column sums ``s = P^T 1`` come from one split product (:func:`mm_dw`),
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
    QS = mm_dw(P.T, jnp.concatenate([X, jnp.ones((H, 1), dtype)], 1), na=2, nb=1)
    Q = QS[0][:, :C], QS[1][:, :C]
    R = dw_add((QS[0][:, C:], QS[1][:, C:]), dw_neg(Q))  # s - Q, s broadcast over columns
    eye = jnp.eye(C, dtype=bool)
    tiny = jnp.finfo(dtype).tiny
    Rc = dw_mul(R, (jnp.asarray(C - 1, dtype), jnp.zeros((), dtype)))
    den = tuple(jnp.where(eye, jnp.diagonal(q)[None, :], r) for q, r in zip(Q, Rc))
    small = den[0] <= tiny  # as clamp_tiny: a vanishing Q[c, c] or R gives a huge, not an infinite, W
    den = jnp.where(small, tiny, den[0]), jnp.where(small, 0, den[1])
    one = jnp.where(eye, -1, 1).astype(dtype)
    W = dw_div((one, jnp.zeros_like(one)), den)
    # <G, X> = <W, Q>: C^2 double-word terms.
    WQ = dw_sum(dw_mul(W, Q))
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
        hi, lo = two_prod(Pc, Wc[0])
        # One variadic reduction over c' (a chain of C double-word additions would make XLA duplicate
        # each step's operands into the next: compile memory grew past 24 GB at C = 30).
        g = dw_sum((hi, lo + Pc * Wc[1]), axis=0)  # (k, H)
        g = tuple(jnp.moveaxis(x, 0, 1) for x in g)  # (H, k)
        m = g[0][:, 0], g[1][:, 0]
        for c in range(1, k):
            gc = g[0][:, c], g[1][:, c]
            smaller = dw_add(gc, dw_neg(m))[0] < 0
            m = jnp.where(smaller, gc[0], m[0]), jnp.where(smaller, gc[1], m[1])
    else:
        # Larger C: all of G in double words from a second split product (the scalar variadic
        # reduction above costs more than two (H, C) x (C, C) products there: measured at C = 50). The
        # smallest double word of a row: the smallest high part mh, then the smallest (hi - mh) + lo
        # (hi - mh is exact wherever it is small, Sterbenz; elsewhere it is far above any tie), two plain
        # row reductions (three argmin passes over G to pick candidates cost ~0.26 ms per model at C = 50).
        G = mm_dw(P, W[0], W[1], na=1, nb=1)
        mh = jnp.min(G[0], axis=1)
        m = fast_two_sum(mh, jnp.min((G[0] - mh[:, None]) + G[1], axis=1))
        fin = jnp.isfinite(mh)  # a row of G at -inf (an infinite loss): -inf, not NaN
        m = jnp.where(fin, m[0], mh), jnp.where(fin, m[1], 0)
    neg = m[0] < 0
    m = jnp.where(neg, m[0], 0), jnp.where(neg, m[1], 0)
    if head_mask is not None:
        m = jnp.where(head_mask, m[0], 0), jnp.where(head_mask, m[1], 0)
    total = dw_add(WQ, dw_neg(dw_sum(m)))
    gap = total[0] + total[1]
    return (gap, Q[0] + Q[1], R[0] + R[1]) if return_q else gap
