"""Euclidean (and diagonally weighted) projections onto the capped simplex.

The capped simplex is ``{x in R^n : x >= 0, sum(x) <= 1}``. The projection of ``y`` in the metric
``sum_i (x_i - y_i)^2 / w_i`` (``w = 1`` is the Euclidean case) is

    x_i = max(0, y_i - lam * w_i),   lam = 0 if sum_i max(0, y_i) <= 1,
                                      else the root of phi(lam) = sum_i max(0, y_i - lam w_i) - 1.

``phi`` is convex, piecewise linear and decreasing, so Newton's method started at ``lam = 0`` increases
monotonically, never overshoots, and stops exactly after at most ``n`` active-set changes (this is
Michelot's variable-fixing algorithm, generalised to weights). No sort is needed; every step is a
masked row sum, which vectorises well on CPU and GPU. ``projection_capped_simplex_sort`` is the
classic sort-based algorithm, kept as an independent reference for tests and benchmarks.

All functions act on the last axis and broadcast over leading axes; they are pure and jit/vmap-able.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_UNROLL_MAX_N = 64  # simplex length up to which leading-axis sums are unrolled into one fusion

__all__ = [
    "projection_capped_simplex",
    "projection_capped_simplex_sort",
    "projection_capped_simplex_bisect",
    "projection_capped_simplex_pairwise",
]


def projection_capped_simplex(y, weights=None, mask=None, max_iter: int | None = None, axis: int = -1,
                              lam0=None, return_multiplier: bool = False):
    """Project rows of ``y`` onto the capped simplex (exact, sort-free).

    Args:
      y: array (..., n).
      weights: optional positive array broadcastable to ``y``; the projection is taken in the metric
        ``sum_i (x_i - y_i)^2 / w_i`` (a diagonal preconditioner ``w = 1 / d`` gives the scaled
        projection used by projected Newton-type methods). ``None`` means the Euclidean projection.
      mask: optional boolean array broadcastable to ``y``; masked-out coordinates are fixed at 0.
      max_iter: cap on the Newton steps. Exactness needs at most ``n + 1`` steps; the default loops until
        the multiplier stops changing (a ``while_loop``, typically 2-5 steps).
      axis: the simplex axis (default the last; ``axis=0`` on a class-major array keeps every
        reduction a contiguous vector operation, which is faster on CPU).
      lam0: optional warm start for the multiplier (shape of ``y`` reduced over ``axis`` with
        ``keepdims``), e.g. the multiplier of a nearby projection. The first Newton step from any
        ``lam0`` lands at or below the root (the tangent of the convex ``phi`` lies below it), and from
        there the iteration is the same monotone one as from 0, so the result is exact either way; a
        good warm start only saves steps (measured in CHCO's pgd at C = 50: 9 -> 3 steps).
      return_multiplier: also return the multiplier ``lam`` (for the next warm start).
    Returns:
      x with the same shape and dtype as ``y`` (and ``lam`` when ``return_multiplier``).
    """
    y = jnp.asarray(y)
    w = jnp.ones_like(y) if weights is None else jnp.broadcast_to(jnp.asarray(weights, y.dtype), y.shape)
    if mask is not None:
        y = jnp.where(mask, y, -jnp.inf)
    axis = axis % y.ndim
    zero = jnp.zeros_like(jnp.sum(y, axis=axis, keepdims=True))
    n = y.shape[axis]
    # Leading simplex axis (a class-major layout) of moderate length: the masked sums are unrolled over
    # the (..., N) slabs, so a Newton step is one elementwise fusion producing both sums (measured on CPU,
    # (50, 1000): 0.062 vs 0.107 ms per projection from a cold start, 0.076 vs 0.165 warm).
    slabs = axis == 0 and 1 < n <= _UNROLL_MAX_N

    def sums(lam):
        if slabs:
            ys, ws = [y[i] for i in range(n)], [w[i] for i in range(n)]
            num = functools.reduce(jnp.add, [jnp.where(a - lam[0] * b > 0, a, 0) for a, b in zip(ys, ws)])[None]
            den = functools.reduce(jnp.add, [jnp.where(a - lam[0] * b > 0, b, 0) for a, b in zip(ys, ws)])[None]
            return num, den
        active = y - lam * w > 0
        return (jnp.sum(jnp.where(active, y, 0), axis=axis, keepdims=True),
                jnp.sum(jnp.where(active, w, 0), axis=axis, keepdims=True))

    def newton(lam, guard=True):
        num, den = sums(lam)
        num = num - 1
        # den = 0 (no active coordinate: lam beyond every breakpoint, only from a warm start) restarts at 0.
        new = jnp.maximum(jnp.where(den > 0, num / jnp.where(den > 0, den, 1), 0), 0)
        # Monotone by convexity from below; the max() guards float round-off. A warm start's first step
        # may go down (unguarded), and lands at or below the root.
        return jnp.maximum(lam, new) if guard else new

    start = zero if lam0 is None else jnp.broadcast_to(jnp.asarray(lam0, y.dtype), zero.shape)
    start = jnp.where(jnp.isfinite(start), start, 0)
    if max_iter is not None:
        lam = newton(start, guard=False)
        for _ in range(max_iter):
            lam = newton(lam)
    else:
        # The first step (from a warm start: unguarded, it may go down) and every later one run in the
        # loop, one fusion per step: started outside, XLA fused the first step's sums into each of its
        # consumers and computed them three times (optimised HLO, C = 50, H = 1000). From the second
        # step on the steps are monotone: lam only grows, and it changes only when the active set
        # shrinks (an unchanged active set reproduces the same lam bit for bit), so the loop ends after
        # at most n changes, at the root of the piece of phi it sits on (NaN compares False: it stops).
        def body(state):
            lam, _, i = state
            new = newton(lam, guard=False)
            return jnp.where(i > 0, jnp.maximum(lam, new), new), lam, i + 1

        lam, _, _ = jax.lax.while_loop(lambda st: (st[2] < 2) | jnp.any(st[0] > st[1]), body,
                                       (start, start, jnp.zeros((), jnp.int32)))
    # The clip at 1 only removes round-off (an exact solution never exceeds 1).
    x = jnp.clip(y - lam * w, 0, 1)
    x = jnp.where(jnp.isfinite(x), x, 0)
    return (x, lam) if return_multiplier else x


def projection_capped_simplex_sort(y, mask=None):
    """Euclidean projection onto the capped simplex using the sort-based simplex projection.

    Reference implementation (Held et al. 1974 / Duchi et al. 2008 for the ``sum == 1`` face).
    """
    y = jnp.asarray(y)
    if mask is not None:
        y = jnp.where(mask, y, -jnp.inf)
    clipped = jnp.maximum(y, 0)
    inside = jnp.sum(clipped, axis=-1, keepdims=True) <= 1
    n = y.shape[-1]
    u = -jnp.sort(-jnp.where(jnp.isfinite(y), y, -1e30), axis=-1)
    css = jnp.cumsum(u, axis=-1) - 1
    k = jnp.arange(1, n + 1, dtype=y.dtype)
    cond = u - css / k > 0
    rho = jnp.sum(cond, axis=-1, keepdims=True)
    tau = jnp.take_along_axis(css, rho - 1, axis=-1) / rho.astype(y.dtype)
    on_face = jnp.maximum(y - tau, 0)
    x = jnp.where(inside, clipped, on_face)
    return jnp.where(jnp.isfinite(x), x, 0)


def projection_capped_simplex_bisect(y, weights=None, iters: int = 60):
    """Bisection on the multiplier (fixed iteration count); reference for the weighted case."""
    y = jnp.asarray(y)
    w = jnp.ones_like(y) if weights is None else jnp.broadcast_to(jnp.asarray(weights, y.dtype), y.shape)

    def phi(lam):
        return jnp.sum(jnp.maximum(y - lam[..., None] * w, 0), axis=-1) - 1

    lo = jnp.zeros(y.shape[:-1], y.dtype)
    hi = jnp.max(jnp.maximum(y, 0) / w, axis=-1) + 1

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        pos = phi(mid) > 0
        return jnp.where(pos, mid, lo), jnp.where(pos, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, body, (lo, hi))
    lam = jnp.where(phi(jnp.zeros_like(lo)) <= 0, 0, 0.5 * (lo + hi))
    return jnp.maximum(y - lam[..., None] * w, 0)



def projection_capped_simplex_pairwise(y, weights=None, axis: int = -1):
    """Exact (weighted) capped-simplex projection along ``axis`` with no sort and no loop.

    With breakpoints ``t_i = y_i / w_i``, ``phi(lam) = sum_i w_i max(0, t_i - lam) - 1`` is evaluated at
    every breakpoint (O(n^2) work per row); the root lies between the largest breakpoint ``lo`` with
    ``phi(lo) >= 0`` and the next one, where the active set is ``{i : t_i > lo}``, so
    ``lam = (sum_active y_i - 1) / sum_active w_i`` is exact (clamped at 0: the inside case). In floating
    point a breakpoint within round-off of the root may land on either side; its coordinate is then
    within round-off of 0 either way.

    The n^2 terms are unrolled over the simplex axis, so the whole projection is one elementwise
    fusion over slabs ``y[i]``: with ``axis=0`` on a class-major (n, N) array every operation is a
    contiguous vector op, which on CPU measured 7x faster than the Newton ``while_loop`` of
    :func:`projection_capped_simplex` at n = 10 (0.033 vs 0.225 ms per (1000, 10) row block). Meant
    for short rows (the unrolled graph has n^2 terms; compile time grows accordingly). Entries must
    be finite and weights positive.
    """
    y = jnp.asarray(y)
    w = jnp.ones_like(y) if weights is None else jnp.broadcast_to(jnp.asarray(weights, y.dtype), y.shape)
    y = jnp.moveaxis(y, axis, 0)
    w = jnp.moveaxis(w, axis, 0)
    n = y.shape[0]
    ys = [y[i] for i in range(n)]
    ws = [w[i] for i in range(n)]
    ts = [a / b for a, b in zip(ys, ws)]
    lo = jnp.full_like(ys[0], -jnp.inf)
    for j in range(n):
        phi = sum(ws[i] * jnp.maximum(ts[i] - ts[j], 0) for i in range(n) if i != j) - 1
        lo = jnp.where(phi >= 0, jnp.maximum(lo, ts[j]), lo)
    num = sum(jnp.where(ts[i] > lo, ys[i], 0) for i in range(n)) - 1
    den = sum(jnp.where(ts[i] > lo, ws[i], 0) for i in range(n))
    # den > 0: the largest breakpoint is always active (phi there is -1 < 0, so lo is below it).
    lam = jnp.maximum(num / den, 0)
    x = jnp.stack([jnp.clip(ys[i] - lam * ws[i], 0, 1) for i in range(n)], 0)
    return jnp.moveaxis(x, 0, axis)
