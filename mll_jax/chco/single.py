"""One model: :func:`solve`, a pure function of arrays (jit, vmap, shard_map, grad), and its traced core
:func:`solve_impl`, which :mod:`mll_jax.chco.chunks` vmaps over the models of a chunk."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mll_jax.errors import CHCOInputError

from .fista import fista
from .gap import gap_accurate
from .head import head_by_head
from .loss import head_softmax, loss_qr, q_and_r
from .pgd import pgd, project_cm
from .problem import (DEFAULT_METHOD, METHODS, CHCOResult, check_finite, check_shapes, check_tolerances,
                      default_atol, is_traced, working_dtype)

__all__ = ["initial_point", "solve", "solve_impl"]


def initial_point(H, C, dtype, head_mask, X0):
    """The starting ``X``: ``1/C`` everywhere, or ``X0`` projected onto the feasible set; masked rows 0."""
    if X0 is None:
        X = jnp.full((H, C), 1.0 / C, dtype)
    else:
        # Class-major, loop-free for small C (see project_cm): this runs on every warm start of
        # solve_batch's rounds, where the row-major Newton loop cost ~0.2 ms per model at C = 10.
        X0 = jnp.asarray(X0, dtype)
        X = project_cm(X0.T, jnp.ones_like(X0.T)).T
    if head_mask is not None:
        X = jnp.where(head_mask[:, None], X, 0)
    return X


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
      tol: relative duality-gap tolerance (see :mod:`mll_jax.chco`); may be a traced value.
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
    check_tolerances(tol, atol)
    if not is_traced(S, head_mask):
        S = np.asarray(S) if not isinstance(S, jax.Array) else S
        if S.ndim == 2 and S.size:
            check_finite(S, head_mask)
    return _solve_jit(S, head_mask, method=method, tol=tol, atol=atol, max_iter=max_iter,
                      precondition=precondition, X0=X0)


def solve_impl(S, head_mask=None, *, method, tol, atol, max_iter, precondition, X0, restart_every=None,
                stop_scale=None):
    """The traced body of :func:`solve` (no value checks): the solver of ``method`` from the uniform start or
    ``X0``, then the accurate gap (float32) and the losses at the final X. ``restart_every``: pgd's warm restarts
    (solve_batch's rounds); ``stop_scale``: the loops stop at ``stop_scale`` times the threshold (solve_batch's
    retry), while the reported ``converged`` keeps ``tol`` and ``atol``."""
    S = jnp.asarray(S)
    S = S.astype(working_dtype(S.dtype))
    head_mask = None if head_mask is None else jnp.asarray(head_mask, bool)
    check_shapes(S, head_mask, X0)
    if method not in METHODS:
        raise CHCOInputError(f"unknown CHCO method {method!r}; choose one of {METHODS}")
    H, C = S.shape
    atol = default_atol(C, S.dtype) if atol is None else atol
    tol = jnp.asarray(tol, S.dtype)
    atol = jnp.asarray(atol, S.dtype)
    # stop_scale (solve_batch's retry of a model whose loop stopped on its working-precision gap while
    # the accurate gap missed the threshold): the loops stop at a tighter threshold; the reported
    # `converged` keeps the caller's tol and atol.
    tol_l, atol_l = (tol, atol) if stop_scale is None else (tol * stop_scale, atol * stop_scale)
    # The iterations see S through stop_gradient: X* is a fixed point for differentiation (see solve).
    P_fixed = head_softmax(jax.lax.stop_gradient(S), head_mask)
    X = initial_point(H, C, S.dtype, head_mask, None if X0 is None else jax.lax.stop_gradient(X0))
    Gt = None
    if method == "pgd":
        X, k, gap, Gt = pgd(P_fixed, X, head_mask, tol_l, atol_l, 2000 if max_iter is None else max_iter,
                             precondition, restart_every, uniform_start=X0 is None)
    elif method == "fista":
        X, k, gap = fista(P_fixed, X, head_mask, tol_l, atol_l, 500 if max_iter is None else max_iter,
                           precondition, accelerate=True)
    else:
        X, k, gap = head_by_head(P_fixed, X, head_mask, tol_l, atol_l, 200 if max_iter is None else max_iter,
                                  precondition)
    X = jax.lax.stop_gradient(X)
    # float32: the reported gap (and the certificate) is re-evaluated at the final X in double-word
    # arithmetic (gap_accurate); the iterations' float32 gap only decides when they stop. float64
    # keeps the iterations' gap at the final X (already ~1e-13 accurate), which also spares the
    # double-word code's compile time (~1 s per shape) in float64 use.
    Q = None
    if S.dtype == jnp.float32:
        # pgd's gradient at X (class-major) picks the candidate classes of m_h, sparing a product.
        gap, Q, R = gap_accurate(P_fixed, X, head_mask, Gt, return_q=True)
    # Losses at the final X with the accurate logarithms of log_pair, differentiable in S. For pgd,
    # Q = P^T X and R = P^T (1 - X) of the final X come from the accurate gap's double-word product
    # (float32; R = s - Q in double words, s = P^T 1) or two products (float64), never from the loop's
    # incrementally updated ones. The derivative in S is that of the recomputation (_loss_at).
    if method != "pgd":
        loss = loss_qr(*q_and_r(head_softmax(S, head_mask), X))
    else:
        if Q is None:
            Q, R = q_and_r(P_fixed, X)
        loss = _loss_at(S, jnp.ones((H,), bool) if head_mask is None else head_mask, X, Q, R)
    f = jnp.sum(loss)
    fd = jax.lax.stop_gradient(f)
    converged = (gap <= tol * jnp.abs(fd) + atol) & jnp.isfinite(fd) & jnp.isfinite(gap)
    return CHCOResult(X, loss, f, k, converged, gap)


_solve_jit = jax.jit(solve_impl, static_argnames=("method", "max_iter", "precondition"))


@jax.custom_jvp
def _loss_at(S, head_mask, X, Q, R):
    """Per-class losses at ``X`` from its ``Q = P^T X`` and ``R = P^T (1 - X)`` (``P = head_softmax(S)``)
    as computed by the solver: the value of ``losses(S, X, head_mask)`` without recomputing the two
    (H, C) products; derivatives (in ``S``) are those of that recomputation."""
    del S, head_mask, X
    return loss_qr(Q, R)


@_loss_at.defjvp
def _loss_at_jvp(primals, tangents):
    S, head_mask, X, _, _ = primals
    dS, _, dX, _, _ = tangents
    return jax.jvp(lambda s, x: loss_qr(*q_and_r(head_softmax(s, head_mask), x)), (S, X), (dS, dX))
