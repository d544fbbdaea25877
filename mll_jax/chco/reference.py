"""NumPy references for CHCO, independent of JAX: shared by the tests and the benchmark.

* :func:`make_instance`: the random instance families ('normal', 'peaked', 'scaled').
* :func:`objective_np`: the objective written from its definition; :func:`cvxpy_chco`: the same convex program
  solved by cvxpy (Clarabel, exponential cones; SCS at high accuracy as a fallback), an exact reference.
* :func:`np_pgd`: a per-model NumPy loop of the SAME algorithm as the default ``pgd`` (same steps, stop rules
  and warm restarts, NumPy's sort-based weighted projection): the benchmark's baseline, and in float64 it takes
  the iterations of :func:`mll_jax.chco.solve` / :func:`mll_jax.chco.solve_batch` (+-1) to the same objective.
* :func:`np_fista`: per-model preconditioned or textbook FISTA with backtracking (older baselines).

cvxpy is imported only by :func:`cvxpy_chco` (it is a test extra, not a dependency).
"""
from __future__ import annotations

import numpy as np

from .pgd import PGD_FLAT_STOP

__all__ = [
    "make_instance", "softmax_heads", "objective_np", "feasible_point", "cvxpy_chco", "np_objective_parts",
    "np_project_sort", "np_project_weighted", "np_project_weighted_sort", "np_log_acc", "np_pgd", "np_fista",
]


def make_instance(rng, H, C, kind):
    """Random label sub-matrices. 'peaked': each class has a few heads with large logits, the way an
    ImageNet model's label looks on a node whose class it knows; 'scaled': large-variance logits."""
    S = rng.normal(size=(H, C))
    if kind == "peaked":
        for c in range(C):
            idx = rng.choice(H, size=max(1, H // 50), replace=False)
            S[idx, c] += rng.uniform(5, 15, size=idx.size)
    elif kind == "scaled":
        S *= 5.0
    return S


def softmax_heads(S):
    """``softmax(S, axis=0)`` in float64."""
    S = np.asarray(S, np.float64)
    Z = np.exp(S - S.max(0, keepdims=True))
    return Z / Z.sum(0, keepdims=True)


def objective_np(S, X):
    """Plain numpy statement of sum_c L_c (the definition, written independently of mll_jax)."""
    P = softmax_heads(S)
    X = np.asarray(X, np.float64)
    C = P.shape[1]
    Q = P.T @ X
    total = 0.0
    for c in range(C):
        total += -np.log(Q[c, c])
        total += -sum(np.log(1.0 - Q[k, c]) for k in range(C) if k != c) / (C - 1)
    return float(total)


def feasible_point(X):
    """X made feasible after round-off: clipped to [0, 1], rows whose sum exceeds 1 rescaled."""
    X = np.clip(np.asarray(X, np.float64), 0, 1)
    s = X.sum(1, keepdims=True)
    return np.where(s > 1, X / s, X)


def cvxpy_chco(S):
    """Solve CHCO with cvxpy. Returns (objective_at_feasible_X, X, solver_name): the objective is re-evaluated in
    float64 at the solver's X made feasible (:func:`feasible_point`), so the value is attained by a feasible point."""
    import cvxpy as cp

    P = softmax_heads(S)
    H, C = P.shape
    X = cp.Variable((H, C), nonneg=True)
    Q = P.T @ X
    # Vectorised statement (one diag and one elementwise log over the off-diagonal entries): the
    # term-by-term version is equivalent, but cvxpy's compilation of C^2 scalar sub-expressions takes
    # minutes at C = 50.
    rows, cols = np.nonzero(~np.eye(C, dtype=bool))  # Q[c', c] with c' != c
    prob = cp.Problem(
        cp.Minimize(-cp.sum(cp.log(cp.diag(Q))) - cp.sum(cp.log(1 - Q[rows, cols])) / (C - 1)),
        [cp.sum(X, axis=1) <= 1],
    )
    best = None
    # Clarabel's default absolute gap tolerance (1e-8) is loose for tiny optima (f* ~ 1e-4 on peaked instances):
    # ask for an absolute gap of 1e-12 (relative 1e-10), so the reference is exact to well below the tests' 1e-5.
    attempts = [("CLARABEL", dict(tol_gap_abs=1e-12, tol_gap_rel=1e-10)),
                ("SCS", dict(eps=1e-9, max_iters=200_000))]
    for name, kw in attempts:
        try:
            prob.solve(solver=name, **kw)
        except Exception:  # solver failure: try the next one
            continue
        if X.value is None:
            continue
        Xf = feasible_point(X.value)
        val = objective_np(S, Xf)
        if np.isfinite(val) and (best is None or val < best[0]):
            best = (val, Xf, name)
        if prob.status == "optimal" and name == "CLARABEL":
            break
    if best is None:
        raise RuntimeError("cvxpy reference failed on every solver")
    return best


def np_objective_parts(P, X):
    """``(Q, R, f, G, D)`` at ``X``: ``Q = P^T X``, ``R = P^T (1 - X)``, the objective, its gradient ``P W`` and the
    exact Hessian diagonal ``(P * P) W2`` (used by :func:`np_fista`)."""
    C = P.shape[1]
    Q = P.T @ X
    R = P.T @ (1 - X)
    tiny = np.finfo(P.dtype).tiny
    off = ~np.eye(C, dtype=bool)
    loss = -np.log(np.maximum(np.diag(Q), tiny)) - (np.log(np.maximum(R, tiny)) * off).sum(0) / (C - 1)
    with np.errstate(divide="ignore", over="ignore"):  # np.where evaluates both branches; R's diagonal is unused
        W = np.where(off, 1 / ((C - 1) * np.maximum(R, tiny)), -1 / np.maximum(np.diag(Q), tiny)[None, :])
        W2 = np.where(off, 1 / ((C - 1) * np.maximum(R, tiny) ** 2), 1 / np.maximum(np.diag(Q), tiny)[None, :] ** 2)
    return Q, R, loss.sum(), P @ W, (P * P) @ W2


def np_project_sort(Y):
    """Row-wise Euclidean projection onto the capped simplex (sort-based)."""
    clipped = np.maximum(Y, 0)
    inside = clipped.sum(1) <= 1
    U = -np.sort(-Y, axis=1)
    css = np.cumsum(U, axis=1) - 1
    k = np.arange(1, Y.shape[1] + 1)
    rho = (U - css / k > 0).sum(1)
    tau = css[np.arange(Y.shape[0]), rho - 1] / rho
    return np.where(inside[:, None], clipped, np.maximum(Y - tau[:, None], 0))


def np_project_weighted(Y, w):
    """Row-wise projection in the metric sum (x - y)^2 / w (Newton on the multiplier)."""
    lam = np.zeros(Y.shape[0], Y.dtype)
    for _ in range(Y.shape[1] + 1):
        act = Y - lam[:, None] * w > 0
        num = np.where(act, Y, 0).sum(1) - 1
        den = np.where(act, w, 0).sum(1)
        new = np.maximum(lam, np.maximum(np.where(den > 0, num / np.where(den > 0, den, 1), 0), 0))
        if np.array_equal(new, lam):
            break
        lam = new
    return np.clip(Y - lam[:, None] * w, 0, 1)


def np_project_weighted_sort(Y, w):
    """Row-wise projection onto the capped simplex in the metric sum (x - y)^2 / w, sort-based:
    breakpoints t = y / w sorted descending, lam_k = (cumsum y - 1) / cumsum w, the active set is
    the longest prefix with t_k > lam_k; lam clamped at 0 (inside case)."""
    t = Y / w
    order = np.argsort(-t, axis=1)
    ys, ws, ts = (np.take_along_axis(a, order, axis=1) for a in (Y, w, t))
    lam_k = (np.cumsum(ys, axis=1) - 1) / np.cumsum(ws, axis=1)
    k = (ts > lam_k).sum(1)
    lam = np.maximum(lam_k[np.arange(Y.shape[0]), k - 1], 0)
    return np.clip(Y - lam[:, None] * w, 0, 1)


def np_log_acc(A, B):
    """log A for A = 1 - B, as mll_jax.chco.loss.log_acc (log1p(-B) where A > 1/2)."""
    tiny = np.finfo(A.dtype).tiny
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(A > 0.5, np.log1p(-np.minimum(B, 0.5)), np.log(np.maximum(A, tiny)))


def np_pgd(S, tol, max_iter, round_iter=12, dtype="float32", atol=None):
    """Per-model NumPy loop of the SAME algorithm as mll_jax's default ``pgd``: a bound of the Hessian's
    diagonal as the metric (mll_jax.chco.steps.metric_diag), one trial step per iteration (accepted on sufficient
    decrease computed with log1p from dQ = P^T dX; then Q += dQ, R -= dQ, both recomputed from X at
    every restart after the first; otherwise X is kept and a halves), a <- min(2a, 1) on acceptance after an acceptance, the duality-gap
    stop (gap <= tol |f| + atol, atol 1e-7 in float32 and 0 in float64), 30 consecutive rejections
    or PGD_FLAT_STOP (100) round-off-level full steps (a = 1) stop, and the step length re-initialised by the quadratic-model ray
    every ``round_iter`` iterations (solve_batch's warm restart, done inside its compiled loop; the stop
    counters carry across restarts). The projection is
    the natural NumPy one (sort-based, weighted). Returns (objective, iterations, converged)."""
    dt = np.dtype(dtype)
    S = np.asarray(S, dt)
    Z = np.exp(S - S.max(0))
    P = Z / Z.sum(0)
    P2 = P * P
    H, C = P.shape
    eps, tiny = np.finfo(dt).eps, np.finfo(dt).tiny
    atol = (0.0 if dt == np.float64 else 1e-7) if atol is None else atol
    off = ~np.eye(C, dtype=bool)
    eye = ~off

    rs2 = P2.sum(1, keepdims=True)  # (H, 1)

    def weights(Q, R):
        qd = np.maximum(np.diag(Q), tiny)[None, :]
        Rc = np.maximum(R, tiny)
        W = np.where(eye, -1 / qd, 1 / ((C - 1) * Rc))
        W2 = np.where(eye, 1 / (qd * qd), 1 / ((C - 1) * Rc * Rc))
        return W, W2

    def loss_of(Q, R):
        return (-np_log_acc(np.diag(Q), np.diag(R)) - np.where(off, np_log_acc(R, Q), 0).sum(0) / (C - 1)).sum()

    def evaluate(Q, R):
        # G = P W and the metric: the bound of the Hessian's diagonal of mll_jax.chco.steps.metric_diag,
        # P^2 diag(W2) + max_{c' != c} W2[c', c] (row sum of P^2 - P^2), floored at its first term.
        W, W2 = weights(Q, R)
        first = P2 * np.diag(W2)[None, :]
        D = np.maximum(first + np.where(off, W2, 0).max(0)[None, :] * (rs2 - P2), first)
        return loss_of(Q, R), P @ W, D

    def gap_of(G, X):
        m = np.minimum(G.min(1), 0)
        return ((X * (G - m[:, None])).sum(1) + m * (X.sum(1) - 1)).sum()

    def metric(D):
        return 1 / np.maximum(D, max(D.max(), 1) * dt.type(1e-12))

    def nlog1p(v):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(v > -1, -np.log1p(np.maximum(v, -1 + np.finfo(dt).epsneg)), np.inf)

    X = np.full((H, C), 1.0 / C, dt)
    Q, R = P.T @ X, P.T @ (1 - X)
    f, G, D = evaluate(Q, R)
    gap = gap_of(G, X)
    flat = rej = 0
    k = 0
    while k < max_iter and not gap <= tol * abs(f) + atol:
        if k % round_iter == 0:  # (re)start: the quadratic model's minimiser along the scaled ray
            if k > 0:  # Q and R, updated by dQ in between, recomputed from X
                Q, R = P.T @ X, P.T @ (1 - X)
                f = loss_of(Q, R)
            W2 = weights(Q, R)[1]
            d = -metric(D) * G
            curv = (W2 * np.square(P.T @ d)).sum()
            ray = -(G * d).sum() / max(curv, tiny)
            a = float(np.clip(ray, eps, 1.0)) if np.isfinite(ray) else 1.0
        scale = metric(D)
        step = a * scale
        Xn = np_project_weighted_sort(X - step * G, step)
        Dx = Xn - X
        dQ = P.T @ Dx
        dl = (nlog1p(np.diag(dQ) / np.maximum(np.diag(Q), tiny))
              + np.where(off, nlog1p(-dQ / np.maximum(R, tiny)), 0).sum(0) / (C - 1)).sum()
        ok = dl <= (G * Dx).sum() + 0.5 / a * (Dx * Dx / scale).sum()
        flat = flat + 1 if ok and -dl <= 4 * eps * abs(f) and a >= 1 else 0
        grow = ok and rej == 0
        rej = 0 if ok else rej + 1
        k += 1
        if ok:
            X = Xn
            Q, R = Q + dQ, R - dQ
            f, G, D = evaluate(Q, R)
            gap = gap_of(G, X)
            a = min(2 * a, 1.0) if grow else a
        else:
            a = a / 2
        if rej >= 30 or flat >= PGD_FLAT_STOP:
            break
    return f, k, bool(gap <= tol * abs(f) + atol)


def np_fista(S, tol, max_iter, precondition):
    """Per-model FISTA in NumPy: backtracking, function-value restart, duality-gap stop."""
    S = np.asarray(S, np.float64)
    Z = np.exp(S - S.max(0))
    P = Z / Z.sum(0)
    H, C = P.shape
    X = np.full((H, C), 1.0 / C)
    _, _, f, G, D = np_objective_parts(P, X)
    Y, fY, GY, DY = X, f, G, D
    a, t = (1.0 if precondition else 1.0 / max(np.abs(G).max(), 1.0)), 1.0
    for k in range(1, max_iter + 1):
        scale = 1 / np.maximum(DY, max(DY.max(), 1) * 1e-12) if precondition else 1.0
        a *= 2
        for _ in range(60):
            a /= 2
            if a == 0.0:  # the step underflowed (a stuck model, seen on a real C = 50 instance): give up
                return f, k
            step = a * scale
            Xn = np_project_weighted(Y - step * GY, step * np.ones_like(Y)) if precondition else np_project_sort(Y - step * GY)
            _, _, fn, Gn, Dn = np_objective_parts(P, Xn)
            Dx = Xn - Y
            quad = (Dx * Dx / scale).sum() if precondition else (Dx * Dx).sum()
            if fn <= fY + (GY * Dx).sum() + 0.5 / a * quad:
                break
        m = np.minimum(Gn.min(1, keepdims=True), 0)
        gap = (Xn * (Gn - m)).sum() + (m[:, 0] * (Xn.sum(1) - 1)).sum()
        if gap <= tol * abs(fn):
            return fn, k
        t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
        if fn > f:
            Y, t_next = Xn, 1.0
        else:
            Y = Xn + (t - 1) / t_next * (Xn - X)
        X, f, t = Xn, fn, t_next
        _, _, fY, GY, DY = np_objective_parts(P, Y)
        if not np.isfinite(fY):
            Y, fY, GY, DY, t = Xn, fn, Gn, Dn, 1.0
        a = min(a * 2, 1.0) if precondition else a * 1.25
    return f, max_iter
