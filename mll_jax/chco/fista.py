"""``method="fista"``: projected gradient with a backtracking line search and Nesterov momentum.

The momentum restarts on a function-value increase (O'Donoghue & Candes), when the extrapolated point leaves
the loss's domain, or when its line search fails. The steps use pgd's diagonal metric (the exact Hessian
diagonal here); ``precondition=False`` gives textbook FISTA. With the diagonal metric momentum buys little,
and in float32 FISTA can creep along the round-off floor for hundreds of iterations, so pgd is the default.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mll_jax.projection import projection_capped_simplex

from .loss import duality_gap, loss_qr, q_and_r, w_qr
from .steps import MAX_BACKTRACK, delta_loss, metric, vary_like

__all__ = ["fista"]


def fista(P, X0, head_mask, tol, atol, max_iter, precondition, accelerate=True):
    """FISTA from ``X0`` for the softmax matrix ``P``; returns ``(X, iterations, gap)`` (``accelerate=False``: plain
    projected gradient with backtracking)."""
    dtype = P.dtype
    one = jnp.asarray(1.0, dtype)
    row_mask = None if head_mask is None else head_mask[:, None]

    def evaluate(X):
        Q, R = q_and_r(P, X)
        W, W2 = w_qr(Q, R, precondition)
        D = (P * P) @ W2 if precondition else jnp.zeros((), dtype)
        return Q, R, loss_qr(Q, R), P @ W, D

    Q0, R0, l0, g0, d0 = evaluate(X0)
    f0 = jnp.sum(l0)
    gap0 = duality_gap(g0, X0, head_mask)
    # a: step length (a multiple of the diagonal metric when preconditioned). The first trial is the
    # exact minimiser of the quadratic model along the first (scaled) steepest-descent ray,
    # a = -<g, d> / d^T H d with d = -scale * g: d^T H d = sum_{c', c} d2L/dQ2[c', c] (P^T d)[c', c]^2
    # costs one (C, H) x (H, C) product and saves the 4-8 halvings a blind start needs.
    scale0 = metric(d0, precondition, dtype)
    dir0 = -(g0 if scale0 is None else scale0 * g0)
    if row_mask is not None:
        dir0 = jnp.where(row_mask, dir0, 0)
    _, W2_0 = w_qr(Q0, R0, True)
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
        scale = metric(s["dY"], precondition, dtype)

        def bt_body(b):
            a, _, _, _, it = b
            a = a / 2
            step = a if scale is None else a * scale
            Xn = projection_capped_simplex(Y - step * gY, weights=step, mask=row_mask)
            Dx = Xn - Y
            dQ = P.T @ Dx
            dl = delta_loss(s["QY"], s["RY"], dQ)
            quad = jnp.sum(Dx * Dx) if scale is None else jnp.sum(Dx * Dx / scale)
            bad = ~(jnp.sum(dl) <= jnp.sum(gY * Dx) + 0.5 / a * quad)
            return a, Xn, dl, bad, it + 1

        a, Xn, dl, bad, _ = jax.lax.while_loop(
            lambda b: b[3] & (b[4] < MAX_BACKTRACK), bt_body,
            vary_like((s["a"] * 2, Y, jnp.zeros_like(s["lY"]), jnp.asarray(True), jnp.int32(0)), P),
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

    s = jax.lax.while_loop(cond, body, vary_like(state, P))
    return s["X"], s["k"], s["gap"]
