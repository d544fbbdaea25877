"""Classification Head Combination Optimization (CHCO), batched in JAX.

Problem, for one model with ``H`` heads and ``C`` target classes:

* ``S`` (H, C): label sub-matrix, ``S[h, c]`` = mean logit of head ``h`` on the node data of class ``c``.
* ``P = softmax(S, axis=0)`` (column-wise over heads).
* ``X`` (H, C) with every row in the capped simplex ``{x >= 0, sum_c x_c <= 1}``.
* ``Q = P^T X``: ``Q[c', c]`` is how strongly the combination for class ``c`` fires on class ``c'`` data.
* ``L_c = -[log Q[c, c] + 1/(C-1) sum_{c' != c} log(1 - Q[c', c])]``; minimise ``f(X) = sum_c L_c``.

The problem is convex; the optimal ``X`` is generally not unique, so compare objective values. A result is
``converged`` when the Frank-Wolfe duality gap (an upper bound of ``f(X) - f*``) is at most
``tol * |f| + atol``; in float32 the reported gap is evaluated in double-word arithmetic
(:mod:`mll_jax.chco.gap`).

Modules (docs/CHCO_NOTES.md describes the design):

* :mod:`~mll_jax.chco.problem`: method names, :class:`CHCOResult`, input checks.
* :mod:`~mll_jax.chco.loss`: the objective, its gradient and the duality gap (pure, differentiable).
* :mod:`~mll_jax.chco.steps`: the diagonal metric and the accurate decrease shared by the solvers.
* :mod:`~mll_jax.chco.doubleword`, :mod:`~mll_jax.chco.gap`: the accurate float32 duality gap.
* :mod:`~mll_jax.chco.pgd` (default), :mod:`~mll_jax.chco.fista`, :mod:`~mll_jax.chco.head`: the solvers.
* :mod:`~mll_jax.chco.single`: :func:`solve` for one model (jit, vmap, shard_map, grad).
* :mod:`~mll_jax.chco.chunks`, :mod:`~mll_jax.chco.batch`: :func:`solve_batch` for many models.
* :mod:`~mll_jax.chco.reference`: NumPy references (the same algorithm per model, a cvxpy solve, instances).
"""
from __future__ import annotations

from mll_jax.errors import CHCOInputError

from .batch import BatchResult, solve_batch
from .loss import duality_gap, gradient, head_softmax, losses, objective
from .problem import DEFAULT_METHOD, METHODS, CHCOResult
from .single import solve

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
