"""``method="pgd"`` (the default): projected gradient in a diagonal metric, one trial step per iteration.

The metric is an upper bound of the Hessian's diagonal that costs no matrix product
(:func:`mll_jax.chco.steps.metric_diag`), and the projection is taken in the same metric. A rejected trial
keeps ``X`` and halves the step for the next iteration, so an iteration is straight-line code. ``Q = P^T X``
and ``R = P^T (1 - X)`` are carried and updated by each accepted step's ``P^T dX``; they are recomputed from
``X`` at every round start.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mll_jax.projection import projection_capped_simplex, projection_capped_simplex_pairwise

from .loss import loss_qr, w_qr
from .steps import MAX_BACKTRACK, delta_loss, metric, metric_diag, vary_like

__all__ = ["PGD_FLAT_STOP", "PGD_REFRESH_EVERY", "project_cm", "pgd"]

# pgd's stagnation stop: this many consecutive accepted full steps with a round-off-level decrease. A shorter
# streak stops slowly converging models early (40 real C = 50 models: 29 certified with 10, 38 with 30, all 40
# without the rule).
PGD_FLAT_STOP = 100
PGD_REFRESH_EVERY = 50  # pgd without warm restarts: Q and R recomputed from X every this many iterations
_UNROLL_MAX_C = 64  # pgd's gap: reductions over the classes unrolled up to this C (see gap_of)
_PAIRWISE_MAX_C = 16  # up to this C the projection is the unrolled pairwise one, above it Newton


def project_cm(Yt, Wt, lam0=None):
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


def pgd(P, X0, head_mask, tol, atol, max_iter, precondition, restart_every=None, uniform_start=False):
    """Projected gradient in the diagonal-Hessian metric, one trial step per iteration (no inner loops).

    Each iteration: ``Xn = proj(X - a * scale * G)``, accepted when the decrease
    ``L(Q + P^T dX) - L(Q)`` (log1p-accurate) satisfies the sufficient-decrease test
    ``dl <= <G, dX> + |dX|^2_metric / (2 a)``; then ``a <- min(2 a, 1)`` (Euclidean: ``a <- 1.25 a``)
    unless the previous trial was rejected.
    A rejected trial leaves ``X`` unchanged and halves ``a`` for the next iteration, so an iteration
    is straight-line code and a backtracking step costs one iteration. Stops on the duality-gap
    certificate, after 30 consecutive rejections, or after ``PGD_FLAT_STOP`` (100) consecutive
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
    metric is a bound of the Hessian's diagonal that costs no product (:func:`metric_diag`). With
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
        W, W2 = w_qr(Q, R, precondition)
        Gt = W.T @ Pt
        Dt = metric_diag(W2, P2t, rs2) if precondition else None
        return Q, R, loss_qr(Q, R), Gt, Dt

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
        # steepest-descent ray, a = -<g, d> / d^T H d with d = -scale * g (see fista).
        scale0 = metric(Dt, precondition, dtype)
        dir0 = -(Gt if scale0 is None else scale0 * Gt)
        if hm is not None:
            dir0 = jnp.where(hm, dir0, 0)
        _, W2_0 = w_qr(Q, R, True)
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
        scale = metric(s["D"], precondition, dtype)
        step = jnp.broadcast_to(a, Xt.shape) if scale is None else a * scale
        Xn, lam = project_cm(Xt - step * Gt, step, s["lam"])
        if hm is not None:
            Xn = jnp.where(hm, Xn, 0)
        Dx = Xn - Xt
        # One (C, H) x (H, C) product per iteration: the trial's dQ = P^T dX. Q and R are carried and
        # updated by dQ on acceptance (R = P^T (1 - X) falls by what Q gains), so neither is recomputed
        # by a product in the loop; they are recomputed from X at every round start (see refresh), which
        # bounds their drift (~eps per accepted step). The losses reported at the end come from Q and R of
        # the final X (gap_accurate's double words in float32, products in float64), not from these.
        dQc = ori((Dx @ P).T)  # dQ = P^T dX in the carried orientation
        Qcn, Rcn = s["Qc"] + dQc, s["Rc"] - dQc
        dl = jnp.sum(delta_loss(ori(s["Qc"]), ori(s["Rc"]), ori(dQc)))
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
        done = (gap <= tol * jnp.abs(fn) + atol) | (rej >= MAX_BACKTRACK) | (flat >= PGD_FLAT_STOP)
        return dict(X=Xn, Qc=Qc, Rc=Rc, loss=ln, G=Gn, D=Dn if precondition else s["D"], a=a, k=s["k"] + 1,
                    kr=s["kr"] + 1, gap=gap, done=done, flat=flat, rej=rej, lam=lam)

    def refresh(s):
        # At a round start after the first: Q and R recomputed from X (the loop only updates them by each
        # step's dQ), with the carried loss; G, the metric and the gap follow at the next iteration.
        def recompute(t):
            Q, R = qr(t["X"])
            return dict(t, Qc=ori(Q), Rc=ori(R), loss=loss_qr(Q, R))

        return dict(jax.lax.cond(s["k"] > 0, recompute, lambda t: t, s), kr=vary_like(zero_i, P))

    def restart(s):
        # The stop counters (flat, rej) carry across restarts: reset every round_iter (12) iterations,
        # neither the 30-rejection nor the stagnation stop could fire, and a model that cannot move would
        # run to max_iter. A restart breaks their streaks anyway when it changes the step (flat counts only
        # full steps; rej resets on any accepted step).
        return dict(s, a=ray(s["X"], ori(s["Qc"]), ori(s["Rc"]), s["G"], s["D"] if precondition else None))

    # Rounds inside the compiled loop. With warm restarts, every ``restart_every`` iterations the step length
    # is re-initialised by the ray rule (the stop counters carry over, see restart), so a model never leaves
    # the compiled loop. Without (solve), the step rule starts once and the rounds of PGD_REFRESH_EVERY
    # iterations only refresh Q and R (unrefreshed, their drift reaches ~20 eps over ~1000 iterations and the
    # loop's float32 gap falls ~1% below the accurate one, so slow models stop early uncertified).
    warm = restart_every is not None and restart_every < max_iter
    period = restart_every if warm else PGD_REFRESH_EVERY

    def round_body(s):
        s = restart(refresh(s)) if warm else refresh(s)
        return jax.lax.while_loop(lambda t: cond(t) & (t["kr"] < period), body, s)

    s = jax.lax.while_loop(cond, round_body, vary_like(state if warm else restart(state), P))
    # The class-major G at the final X (for gap_accurate's candidates).
    return s["X"].T, s["k"], s["gap"], s["G"]
