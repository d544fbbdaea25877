"""``method="head"``: the head-by-head scheme of the MLL paper.

Sweeps over heads: for head ``h`` a (diagonally scaled, backtracked) gradient step on row ``x_h``, projected
onto the capped simplex, with ``Q`` and ``R`` updated by a rank-one correction (and recomputed once per sweep).
One sweep costs about one full gradient; sweeps repeat until the duality-gap test holds.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mll_jax.projection import projection_capped_simplex

from .loss import duality_gap, loss_qr, q_and_r, w_qr
from .steps import vary_like

__all__ = ["head_by_head"]


def head_by_head(P, X0, head_mask, tol, atol, max_sweeps, precondition):
    """Head-by-head sweeps from ``X0`` for the softmax matrix ``P``; returns ``(X, sweeps, gap)``."""
    dtype = P.dtype
    H, C = X0.shape
    off = ~jnp.eye(C, dtype=bool)

    def col_losses(Q, R):
        return loss_qr(Q, R)

    def head_step(h, carry):
        X, Q, R = carry
        p = P[h]  # (C,) head h's probabilities on every class' data
        x = X[h]
        W, W2 = w_qr(Q, R, True)
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
            bt_cond, bt_body, vary_like((jnp.asarray(1.0, dtype), xn, Qn, Rn, fn, jnp.int32(0)), P))
        ok = fn <= base
        if head_mask is not None:
            ok = ok & head_mask[h]
        xn = jnp.where(ok, xn, x)
        Q = jnp.where(ok, Qn, Q)
        R = jnp.where(ok, Rn, R)
        return X.at[h].set(xn), Q, R

    def sweep_state(X):
        Q, R = q_and_r(P, X)
        ln = loss_qr(Q, R)
        W, _ = w_qr(Q, R, False)
        gap = duality_gap(P @ W, X, head_mask)
        return Q, R, ln, gap

    Q0, R0, l0, gap0 = sweep_state(X0)
    del off

    def cond(s):
        return (s["k"] < max_sweeps) & ~s["done"]

    def body(s):
        X, _, _ = jax.lax.fori_loop(0, H, head_step, vary_like((s["X"], s["Q"], s["R"]), P))
        # Recompute Q, R exactly once per sweep so rank-one round-off cannot accumulate.
        Q, R, ln, gap = sweep_state(X)
        f = jnp.sum(ln)
        return dict(X=X, Q=Q, R=R, loss=ln, gap=gap, k=s["k"] + 1, done=gap <= tol * jnp.abs(f) + atol)

    f0 = jnp.sum(l0)
    state = dict(X=X0, Q=Q0, R=R0, loss=l0, gap=gap0, k=jnp.zeros((), jnp.int32), done=gap0 <= tol * jnp.abs(f0) + atol)
    s = jax.lax.while_loop(cond, body, vary_like(state, P))
    return s["X"], s["k"], s["gap"]
