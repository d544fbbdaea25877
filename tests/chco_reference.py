"""Independent CHCO reference: the same convex program stated in cvxpy and solved by an
interior-point conic solver (Clarabel, exponential cones), with SCS at high accuracy as a fallback.

Returns the objective re-evaluated in float64 numpy at the solver's X after repairing round-off
(clip to [0, 1], rescale rows whose sum exceeds 1), so the value is attained by a feasible point.
"""
from __future__ import annotations

import numpy as np


def softmax_heads(S):
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


def _feasible(X):
    X = np.clip(np.asarray(X, np.float64), 0, 1)
    s = X.sum(1, keepdims=True)
    return np.where(s > 1, X / s, X)


def cvxpy_chco(S):
    """Solve CHCO with cvxpy. Returns (objective_at_feasible_X, X, solver_name)."""
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
    attempts = [("CLARABEL", {}), ("SCS", dict(eps=1e-9, max_iters=200_000))]
    for name, kw in attempts:
        try:
            prob.solve(solver=name, **kw)
        except Exception:  # solver failure: try the next one
            continue
        if X.value is None:
            continue
        Xf = _feasible(X.value)
        val = objective_np(S, Xf)
        if np.isfinite(val) and (best is None or val < best[0]):
            best = (val, Xf, name)
        if prob.status == "optimal" and name == "CLARABEL":
            break
    if best is None:
        raise RuntimeError("cvxpy reference failed on every solver")
    return best


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
