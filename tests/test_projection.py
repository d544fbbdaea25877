"""Capped-simplex projection: exactness against independent references and its defining properties."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mll_jax.projection import (
    projection_capped_simplex,
    projection_capped_simplex_bisect,
    projection_capped_simplex_pairwise,
    projection_capped_simplex_sort,
)

jax.config.update("jax_enable_x64", True)


def _rows(rng, n, m=300):
    # Mix of rows inside the set (clip only), on the sum == 1 face, and with negatives.
    scale = rng.choice([0.01, 0.1, 1.0, 5.0], size=(m, 1))
    return rng.normal(size=(m, n)) * scale + rng.choice([0.0, 0.3], size=(m, 1))


@pytest.mark.parametrize("n", [1, 2, 3, 10, 50, 1000])
def test_matches_sort_based_and_bisection(n):
    rng = np.random.default_rng(n)
    y = jnp.asarray(_rows(rng, n))
    x = projection_capped_simplex(y)
    np.testing.assert_allclose(np.asarray(x), np.asarray(projection_capped_simplex_sort(y)), atol=1e-12)
    np.testing.assert_allclose(np.asarray(x), np.asarray(projection_capped_simplex_bisect(y, iters=200)), atol=1e-12)


def test_matches_cvxpy_weighted():
    cp = pytest.importorskip("cvxpy")
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.normal(size=7)
        w = rng.uniform(0.1, 3, size=7)
        v = cp.Variable(7)
        cp.Problem(cp.Minimize(cp.sum(cp.multiply(1 / w, cp.square(v - y)))), [v >= 0, cp.sum(v) <= 1]).solve(
            solver="CLARABEL"
        )
        x = np.asarray(projection_capped_simplex(jnp.asarray(y), weights=jnp.asarray(w)))
        np.testing.assert_allclose(x, v.value, atol=1e-6)


def test_properties_feasible_idempotent_and_optimal():
    rng = np.random.default_rng(1)
    y = jnp.asarray(_rows(rng, 12))
    x = projection_capped_simplex(y)
    assert float(x.min()) >= 0 and float(x.sum(-1).max()) <= 1 + 1e-12
    np.testing.assert_allclose(np.asarray(projection_capped_simplex(x)), np.asarray(x), atol=1e-14)
    # Variational inequality: <y - x, z - x> <= 0 for every feasible z (random feasible points).
    for _ in range(20):
        z = rng.dirichlet(np.ones(12), size=y.shape[0]) * rng.uniform(0, 1, size=(y.shape[0], 1))
        assert float(jnp.max(jnp.sum((y - x) * (z - x), -1))) <= 1e-12
    # Points already inside are fixed; the clip-only branch applies when sum(max(y, 0)) <= 1.
    inside = jnp.asarray([[0.2, 0.3, 0.1], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(np.asarray(projection_capped_simplex(inside)), np.asarray(inside))
    np.testing.assert_allclose(np.asarray(projection_capped_simplex(jnp.asarray([[-1.0, 0.5, 0.2]]))), [[0, 0.5, 0.2]])
    # Hand-computed face case: (1, 1, 0) -> (0.5, 0.5, 0).
    np.testing.assert_allclose(np.asarray(projection_capped_simplex(jnp.asarray([1.0, 1.0, 0.0]))), [0.5, 0.5, 0])


def test_weighted_matches_bisection_and_mask():
    rng = np.random.default_rng(2)
    y = jnp.asarray(_rows(rng, 9))
    w = jnp.asarray(rng.uniform(0.05, 20, size=y.shape))
    np.testing.assert_allclose(
        np.asarray(projection_capped_simplex(y, weights=w)),
        np.asarray(projection_capped_simplex_bisect(y, weights=w, iters=200)),
        atol=1e-11,
    )
    mask = jnp.asarray(rng.uniform(size=y.shape) > 0.3)
    x = projection_capped_simplex(y, mask=mask)
    assert np.all(np.asarray(x)[~np.asarray(mask)] == 0)
    ref = projection_capped_simplex_sort(jnp.where(mask, y, -jnp.inf))
    np.testing.assert_allclose(np.asarray(x), np.asarray(ref), atol=1e-12)


def test_fixed_iteration_variant_and_vmap():
    rng = np.random.default_rng(3)
    y = jnp.asarray(_rows(rng, 6))
    exact = projection_capped_simplex(y)
    np.testing.assert_allclose(np.asarray(projection_capped_simplex(y, max_iter=7)), np.asarray(exact), atol=1e-12)
    np.testing.assert_allclose(np.asarray(jax.vmap(projection_capped_simplex)(y)), np.asarray(exact), atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 16])
def test_pairwise_and_class_major_match_references(n):
    # The loop-free pairwise projection (pgd's, for C <= 16) and the Newton one along axis 0 (pgd's
    # class-major layout) against the sort-based (Euclidean) and bisection (weighted) references.
    rng = np.random.default_rng(100 + n)
    y = jnp.asarray(_rows(rng, n))
    w = jnp.asarray(rng.uniform(0.05, 20, size=y.shape))
    np.testing.assert_allclose(np.asarray(projection_capped_simplex_pairwise(y)),
                               np.asarray(projection_capped_simplex_sort(y)), atol=1e-12)
    ref = np.asarray(projection_capped_simplex_bisect(y, weights=w, iters=200))
    np.testing.assert_allclose(np.asarray(projection_capped_simplex_pairwise(y, w)), ref, atol=1e-11)
    np.testing.assert_allclose(np.asarray(projection_capped_simplex_pairwise(y.T, w.T, axis=0)).T, ref, atol=1e-11)
    np.testing.assert_allclose(np.asarray(projection_capped_simplex(y.T, w.T, axis=0)).T, ref, atol=1e-11)
    # Hand-computed: (1, 1, 0) -> (0.5, 0.5, 0); weights (1, 3, 1) put 1/4 and 3/4 of the excess 1.
    if n == 3:
        np.testing.assert_allclose(np.asarray(projection_capped_simplex_pairwise(jnp.asarray([1.0, 1.0, 0.0]))),
                                   [0.5, 0.5, 0])
        np.testing.assert_allclose(np.asarray(projection_capped_simplex_pairwise(
            jnp.asarray([1.0, 1.0, 0.0]), jnp.asarray([1.0, 3.0, 1.0]))), [0.75, 0.25, 0])


@pytest.mark.parametrize("n", [2, 9, 50])
def test_warm_started_newton_is_exact_from_any_multiplier(n):
    # pgd warm-starts the Newton projection (C > 16) from the previous iteration's multipliers. The
    # result must be the exact projection whatever lam0 is: below the root, at it, above it (the first
    # step goes down), beyond every breakpoint (no active coordinate: restart at 0), negative, non-finite,
    # and for rows inside the set (lam* = 0); the returned multiplier reproduces x.
    rng = np.random.default_rng(200 + n)
    y = _rows(rng, n)
    w = rng.uniform(0.05, 20, size=y.shape)
    ref = np.asarray(projection_capped_simplex_bisect(jnp.asarray(y), weights=jnp.asarray(w), iters=200))
    x0, lam = projection_capped_simplex(jnp.asarray(y.T), jnp.asarray(w.T), axis=0, return_multiplier=True)
    np.testing.assert_allclose(np.asarray(x0).T, ref, atol=1e-11)
    lam = np.asarray(lam)
    assert lam.shape == (1, y.shape[0]) and lam.min() >= 0
    np.testing.assert_allclose(np.clip(y.T - lam * w.T, 0, 1).T, ref, atol=1e-11)
    beyond = (np.max(y / w, axis=1) + 1)[None, :]
    for lam0 in (np.zeros_like(lam), lam, 0.5 * lam, 2 * lam + 0.1, beyond, -np.ones_like(lam),
                 np.full_like(lam, np.nan), rng.uniform(0, 3, size=lam.shape)):
        x, lam1 = projection_capped_simplex(jnp.asarray(y.T), jnp.asarray(w.T), axis=0, lam0=jnp.asarray(lam0),
                                            return_multiplier=True)
        np.testing.assert_allclose(np.asarray(x).T, ref, atol=1e-11)
        np.testing.assert_allclose(np.asarray(lam1), lam, atol=1e-9)
