"""CHCO at hub scale: float32 accuracy of the reported losses against a float64 evaluation, gradients
against finite differences, multi-device solve_batch, and input validation (issues 9 and 11)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mll_jax import chco
from mll_jax.chco import single
from mll_jax.chco.chunks import MAX_WORKERS, as_mesh, default_workers, group_buckets, solve_chunk
from mll_jax.chco.doubleword import dw_sum, mm_dw, two_prod, two_sum
from mll_jax.chco.gap import gap_accurate
from mll_jax.chco.loss import loss_qr, q_and_r
from mll_jax.chco.pgd import PGD_REFRESH_EVERY
from mll_jax.chco.reference import make_instance  # the shared random instance families
from mll_jax.utils import usable_cores

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def x64():
    """Enable float64 for one test and restore the previous setting afterwards."""
    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", prev)


def family(rng, kind, H, C):
    """Instance families (float32 label matrices): test_chco's normal / peaked / scaled, plus the hard ones."""
    if kind in ("normal", "peaked", "scaled"):
        return make_instance(rng, H, C, kind).astype(np.float32)
    S = rng.normal(size=(H, C))
    if kind.startswith("perfect"):  # one dominant head per class: an expert that separates the classes
        margin = float(kind.split("-")[1])
        heads = rng.choice(H, C, replace=False)
        S[heads, np.arange(C)] += margin
    elif kind == "heavy":  # heavy-tailed logits (Student t, 1.5 degrees of freedom)
        S = rng.standard_t(1.5, size=(H, C)) * 2
    elif kind == "duplicated":  # every head appears four times
        base = rng.normal(size=(H // 4, C)) * 3
        S = np.concatenate([base] * 4)[rng.permutation(H)]
    elif kind == "twins":  # two target classes that are nearly the same node
        S *= 3
        S[:, 1] = S[:, 0] + 1e-3 * rng.normal(size=H)
    elif kind != "normal":
        raise ValueError(f"unknown instance family {kind!r}")
    return S.astype(np.float32)


def eval_float64(S, X):
    """Independent float64 numpy evaluation of the per-class losses, objective and duality gap at X.
    Logs of values near 1 go through log1p of the complement, each complement a nonnegative sum."""
    S = np.asarray(S, np.float64)
    X = np.asarray(X, np.float64)
    Z = np.exp(S - S.max(0))
    P = Z / Z.sum(0)
    C = P.shape[1]
    Q, R = P.T @ X, P.T @ (1 - X)
    off = ~np.eye(C, dtype=bool)
    with np.errstate(divide="ignore"):
        logq = np.where(np.diag(Q) > 0.5, np.log1p(-np.diag(R)), np.log(np.diag(Q)))
        logr = np.where(R > 0.5, np.log1p(-Q), np.log(R))
    L = -logq - np.where(off, logr, 0).sum(0) / (C - 1)
    W = np.where(off, 1 / ((C - 1) * np.where(off, R, 1)), -1 / np.diag(Q)[None, :])
    G = P @ W
    m = np.minimum(G.min(1, keepdims=True), 0)
    gap = (X * (G - m)).sum() + (m[:, 0] * (X.sum(1) - 1)).sum()
    return L, L.sum(), gap


def _close(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return np.all(np.abs(got - ref) <= np.maximum(1e-5 * np.abs(ref), 1e-6))


FAMILIES = ["perfect-20", "perfect-24", "heavy", "duplicated", "twins", "normal", "peaked", "scaled"]


@pytest.mark.parametrize("H,C", [(1000, 10), (40, 30)])
def test_float32_losses_match_float64_evaluation_of_returned_X(H, C):
    # Issue 9: reported losses, objective and gap within 1e-5 relative or 1e-6 absolute of a float64
    # evaluation of the returned X, on every family (near-perfect experts, heavy tails, duplicated heads,
    # near-identical classes, ...). Checked at an X 60 iterations in and at the converged X: at (near)
    # optimality the gradient's entries tie on the support of fractional rows, which is where a float32
    # gap went wrong (1.2e-6 absolute on 'duplicated', H = 40, C = 30, before the double-word gap).
    rng = np.random.default_rng(H + C)
    Ss = [family(rng, kind, H, C) for kind in FAMILIES]
    for max_iter in (60, None):
        batch = chco.solve_batch(Ss, progress=False, max_iter=max_iter)
        assert batch.loss.dtype == np.float32 and batch.gap.dtype == np.float32
        for kind, S, X, loss, f, gap in zip(FAMILIES, Ss, batch.X, batch.loss, batch.objective, batch.gap):
            L64, f64, gap64 = eval_float64(S, X)
            assert _close(loss, L64), (max_iter, kind, loss, L64)
            assert _close(f, f64), (max_iter, kind, f, f64)
            assert _close(gap, gap64), (max_iter, kind, gap, gap64)
        # The certificate is the accurate gap's: converged exactly when it meets the tolerance.
        thr = 1e-5 * np.abs(batch.objective) + 1e-7
        np.testing.assert_array_equal(batch.converged, batch.gap <= thr)
    # The single-model entry point reports the same accurate values.
    for kind, S in zip(FAMILIES, Ss):
        r = chco.solve(jnp.asarray(S), max_iter=60)
        L64, f64, gap64 = eval_float64(S, r.X)
        assert _close(r.loss, L64) and _close(r.objective, f64) and _close(r.gap, gap64), kind


def test_error_free_transformations_survive_jit():
    # The accurate gap rests on error-free transformations; a compiler that reassociated or contracted
    # them would silently return float32-accurate values. Checked exactly against float64 numpy.
    rng = np.random.default_rng(21)
    # Exponents within 2^-10..2^10, so the exact sums and products fit in a float64.
    a = (rng.normal(size=4096) * 2.0 ** rng.integers(-10, 10, size=4096)).astype(np.float32)
    b = (rng.normal(size=4096) * 2.0 ** rng.integers(-10, 10, size=4096)).astype(np.float32)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    s, e = jax.jit(two_sum)(a, b)
    np.testing.assert_array_equal(np.asarray(s, np.float64) + np.asarray(e, np.float64), a64 + b64)
    assert np.abs(np.asarray(e)).max() > 0
    p, e = jax.jit(two_prod)(a, b)
    np.testing.assert_array_equal(np.asarray(p, np.float64) + np.asarray(e, np.float64), a64 * b64)
    # Split matmul: P^T Y in double words, P a softmax matrix over heads (peaked columns), Y in [0, 1].
    for H, C, K in [(1000, 10, 11), (40, 30, 31), (7, 3, 4)]:
        S = rng.standard_t(1.5, size=(H, C)) * 2
        P = np.asarray(chco.head_softmax(jnp.asarray(S, jnp.float32)))
        Y = rng.uniform(size=(H, K)).astype(np.float32) * (rng.uniform(size=(H, K)) < 0.5)
        hi, lo = jax.jit(lambda p, y: mm_dw(p, y, na=2, nb=1))(P.T, Y)  # as for Q = P^T X
        ref = P.astype(np.float64).T @ Y.astype(np.float64)
        got = np.asarray(hi, np.float64) + np.asarray(lo, np.float64)
        f32 = np.abs((P.T @ Y).astype(np.float64) - ref).max()
        assert np.abs(got - ref).max() <= 2e-9 * np.abs(ref).max(), (H, C)  # measured <= 3e-10
        assert f32 > 30 * np.abs(got - ref).max()  # the float32 product is far less accurate
    # Double-word sum of terms that cancel: exact to double-word precision.
    x = rng.normal(size=(64, 50)).astype(np.float32)
    hi, lo = jax.jit(dw_sum)((jnp.concatenate([x, -x]), jnp.zeros((128, 50), jnp.float32)))
    assert float(hi) == 0 and float(lo) == 0


def test_accurate_gap_is_the_frank_wolfe_gap(x64):
    # In float64 the double-word gap must agree with the plain definition <G, X - V> (duality_gap),
    # ignore padded heads, and work under vmap.
    rng = np.random.default_rng(22)
    S = jnp.asarray(family(rng, "peaked", 30, 6).astype(np.float64))
    X = jnp.asarray(rng.dirichlet(np.ones(7), size=30)[:, :6])
    P = chco.head_softmax(S)
    ref = float(chco.duality_gap(chco.gradient(S, X), X))
    assert float(gap_accurate(P, X)) == pytest.approx(ref, rel=1e-12)
    Sp = jnp.concatenate([S, jnp.full((5, 6), 40.0)])
    Xp = jnp.concatenate([X, jnp.full((5, 6), 0.1)])
    mask = jnp.arange(35) < 30
    Pp = chco.head_softmax(Sp, mask)
    assert float(gap_accurate(Pp, jnp.where(mask[:, None], Xp, 0), mask)) == pytest.approx(ref, rel=1e-12)
    g = jax.jit(jax.vmap(gap_accurate))(jnp.stack([P, P]), jnp.stack([X, X * 0.5]))
    assert float(g[0]) == pytest.approx(ref, rel=1e-12)
    assert float(g[1]) == pytest.approx(float(chco.duality_gap(chco.gradient(S, X * 0.5), X * 0.5)), rel=1e-12)


def test_near_perfect_expert_objective_is_not_inflated():
    # The case: H = 1000, C = 10, one dominant head per class, optimum ~ 3e-5. Computing
    # -log Q[c, c] from a float32 Q near 1 reported 3.4e-5 for a float64 value of 3.29e-5 (3% off).
    rng = np.random.default_rng(1000 + 10)
    S = family(rng, "perfect-20", 1000, 10)
    r = chco.solve(jnp.asarray(S))
    _, f64, _ = eval_float64(S, r.X)
    assert 1e-6 < f64 < 1e-4
    assert abs(float(r.objective) - f64) <= 1e-5 * f64 + 1e-9
    assert bool(r.converged)


# ------------------------------------------------------------------------------------------------
# Gradients
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["pgd", "head"])
def test_grad_of_optimal_value_matches_finite_differences(x64, method):
    rng = np.random.default_rng(11)
    S = jnp.asarray(family(rng, "peaked", 12, 3).astype(np.float64))
    value = lambda s: chco.solve(s, method=method, tol=1e-13, max_iter=20000).objective  # noqa: E731
    g = np.asarray(jax.grad(value)(S))
    assert np.isfinite(g).all() and np.abs(g).max() > 1e-3
    h = 1e-5
    for i, j in [(0, 0), (3, 1), (7, 2), (11, 0), (5, 1)]:
        E = np.zeros(S.shape)
        E[i, j] = h
        fd = (float(value(S + E)) - float(value(S - E))) / (2 * h)
        assert g[i, j] == pytest.approx(fd, rel=1e-5, abs=1e-8), (i, j)
    # Under jit as well.
    np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(value))(S)), g, rtol=1e-12)


def test_grad_of_per_class_losses_is_partial_derivative_at_fixed_solution(x64):
    rng = np.random.default_rng(12)
    S = jnp.asarray(family(rng, "normal", 10, 4).astype(np.float64))
    r = chco.solve(S, tol=1e-12)
    X = r.X
    J = np.asarray(jax.jacrev(lambda s: chco.solve(s, tol=1e-12).loss)(S))  # (C, H, C)
    for c in range(4):
        g = J[c]
        h = 1e-6
        for i, j in [(0, 0), (4, c), (9, 3)]:
            E = np.zeros(S.shape)
            E[i, j] = h
            fd = (float(chco.losses(S + E, X)[c]) - float(chco.losses(S - E, X)[c])) / (2 * h)
            assert g[i, j] == pytest.approx(fd, rel=1e-6, abs=1e-9), (c, i, j)
    # vmap of grad (a batch of models) works too.
    gs = jax.vmap(jax.grad(lambda s: chco.solve(s, tol=1e-12).objective))(jnp.stack([S, S * 0.5]))
    assert gs.shape == (2, 10, 4) and np.isfinite(np.asarray(gs)).all()


# ------------------------------------------------------------------------------------------------
# Several devices
# ------------------------------------------------------------------------------------------------

_MULTI = textwrap.dedent(
    """
    import json, sys
    import numpy as np, jax
    sys.path.insert(0, ROOT)
    from mll_jax import chco
    assert len(jax.devices()) == 4, jax.devices()
    rng = np.random.default_rng(0)
    # Head counts 17..24 share one padded shape; several chunks and re-packed rounds still happen.
    Ss = [rng.normal(size=(int(h), 5)).astype(np.float32) * (1 + i % 3) for i, h in
          enumerate(rng.integers(17, 25, size=11))]
    one = chco.solve_batch(Ss, devices=jax.devices()[:1], progress=False, chunk_size=8, round_iter=6)
    four = chco.solve_batch(Ss, progress=False, chunk_size=8, round_iter=6)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("m",))
    two = chco.solve_batch(Ss, devices=mesh, progress=False, chunk_size=3, round_iter=6)
    out = {}
    for name, r in (("one", one), ("four", four), ("two", two)):
        out[name] = dict(obj=r.objective.tolist(), it=r.iterations.tolist(), conv=r.converged.tolist(),
                         X=[float(np.abs(x).sum()) for x in r.X])
    print("RESULT" + json.dumps(out))
    """
).replace("ROOT", repr(ROOT))


def test_solve_batch_on_four_host_devices_equals_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", _MULTI], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.split("RESULT", 1)[1])
    one = out["one"]
    assert all(one["conv"])
    for name in ("four", "two"):
        r = out[name]
        assert r["conv"] == one["conv"] and r["it"] == one["it"], name
        np.testing.assert_allclose(r["obj"], one["obj"], rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(r["X"], one["X"], rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("method", ["pgd", "fista"])
def test_solve_batch_results_do_not_depend_on_worker_threads(method):
    # Worker threads only change which calls run at the same time: every model's result is bitwise the
    # one thread's, with chunks of 2, mixed head counts and (fista) re-packed rounds.
    rng = np.random.default_rng(5)
    Ss = [family(rng, ("normal", "peaked", "scaled", "heavy")[i % 4], int(h), 6) for i, h in
          enumerate(rng.integers(20, 70, size=7))]
    kw = dict(method=method, chunk_size=2, round_iter=7, progress=False)
    one = chco.solve_batch(Ss, workers=1, **kw)
    assert one.converged.all()
    for w in (2, 5):
        r = chco.solve_batch(Ss, workers=w, **kw)
        np.testing.assert_array_equal(r.iterations, one.iterations)
        np.testing.assert_array_equal(r.objective, one.objective)
        np.testing.assert_array_equal(r.gap, one.gap)
        for a, b in zip(r.X, one.X):
            np.testing.assert_array_equal(a, b)
    assert default_workers(as_mesh(None)) == min(MAX_WORKERS, usable_cores())
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(chco.CHCOInputError, match="workers must be an integer >= 1"):
            chco.solve_batch(Ss[:1], workers=bad, progress=False)


def test_solve_refreshes_pgd_carried_q_r_on_long_runs():
    # pgd carries Q = P^T X and R = P^T (1 - X) and updates them by each step's P^T dX. Without warm restarts
    # (solve) they were never recomputed, drifted ~20 eps over ~900 iterations, and the loop stopped on a
    # float32 gap ~1% low: this slow model (twins, H = 100, C = 17) came back converged=False (review). They
    # are now recomputed every PGD_REFRESH_EVERY iterations.
    rng = np.random.default_rng(123)
    Ss = [family(rng, "twins", 100, c) for c in [10] * 8 + [17] * 8]
    r = chco.solve(jnp.asarray(Ss[15]))
    assert int(r.iterations) > 10 * PGD_REFRESH_EVERY
    assert bool(r.converged), (float(r.gap), float(r.objective))
    _, f64, gap64 = eval_float64(Ss[15], r.X)
    assert gap64 <= 1e-5 * abs(f64) + 1e-7
    _close(r.objective, f64)


def test_solve_batch_retries_a_model_whose_accurate_gap_misses_the_threshold(monkeypatch):
    # When the loop stops on its float32 gap but the accurate (double-word) gap misses the threshold
    # (seen on 1 of 400 real C = 50 models), solve_batch re-runs the model once from its X with the
    # loop's threshold scaled by 1/4. Forced here: 0.7 thr is added to the accurate gap (thr = 1e-5 |f|),
    # so a model whose loop stopped with a gap above 0.3 thr fails the first check, and must pass after
    # the retry (its loop gap then <= thr / 4, so the patched gap <= 0.95 thr).
    # (Seed 80: the loop's final gaps are 0.003-0.24 thr on five models and 0.84 thr on one. The seed depends on
    # pgd's trajectories: when the algorithm changes, pick one again so that some but not all exceed 0.3 thr;
    # 77 served until the metric bound of 3664c70.)
    rng = np.random.default_rng(80)
    Ss = [family(rng, kind, 24, 5) for kind in ("normal", "peaked", "scaled", "heavy", "twins", "duplicated")]
    ref = chco.solve_batch(Ss, progress=False, atol=0.0)
    assert ref.converged.all()
    real = gap_accurate

    def patched(P, X, *a, return_q=False, **k):
        out = real(P, X, *a, return_q=return_q, **k)
        extra = 0.7e-5 * jnp.abs(jnp.sum(loss_qr(*q_and_r(P, X))))
        return (out[0] + extra,) + tuple(out[1:]) if return_q else out + extra

    monkeypatch.setattr(single, "gap_accurate", patched)
    solve_chunk.clear_cache()
    try:
        batch = chco.solve_batch(Ss, progress=False, atol=0.0)
        # The retry pass ran in the first pass's program (same shapes, its other slots fillers): one compile.
        n_programs = solve_chunk._cache_size()
        # The first pass of the patched run is the unpatched solve (same loop): which models fail there?
        fails_first = np.array([float(patched(chco.head_softmax(jnp.asarray(S)), jnp.asarray(X)))
                                > 1e-5 * abs(float(f)) for S, X, f in zip(Ss, ref.X, ref.objective)])
    finally:
        monkeypatch.undo()
        solve_chunk.clear_cache()
    assert batch.converged.all(), (batch.gap, batch.objective)
    assert np.all(batch.gap <= 1e-5 * np.abs(batch.objective))
    assert n_programs == 1
    # Exactly the models that fail the first check were re-run (more iterations); the others are unchanged.
    assert fails_first.any() and not fails_first.all()
    np.testing.assert_array_equal(batch.iterations > ref.iterations, fails_first)
    np.testing.assert_array_equal(batch.iterations[~fails_first], ref.iterations[~fails_first])


# ------------------------------------------------------------------------------------------------
# Validation (issue 11, item 8)
# ------------------------------------------------------------------------------------------------


def test_head_groups_of_few_models_join_the_nearest_larger_group():
    # Buckets: 5 -> 8, 19 -> 24, 40 -> 40, 1000 -> 1120. At most 1/8 of the larger group's own models may join it.
    assert group_buckets([40] * 16 + [5, 5]) == [40] * 18
    assert group_buckets([40] * 16 + [5, 5, 5]) == [40] * 16 + [8] * 3
    # A chain: 19 joins 1000 (1 <= 9/8); 10 would make 2 merged models, above 9/8, so it keeps its own bucket,
    # and 2 does not join it (1 > 1/8).
    assert group_buckets([2, 10, 19] + [1000] * 9) == [8, 16] + [1120] * 10
    assert group_buckets([7, 7]) == [8, 8]


def test_solve_batch_solves_a_mixed_hub_in_one_program_with_each_models_optimum():
    # 16 models of 40 heads and one of 5: the small one is padded into the large group's program (one compile),
    # and every model reaches its own certified optimum (checked against solving it alone).
    rng = np.random.default_rng(3)
    Ss = [family(rng, "normal", 40, 6) for _ in range(16)] + [family(rng, "peaked", 5, 6)]
    solve_chunk.clear_cache()
    try:
        batch = chco.solve_batch(Ss, progress=False)
        n_programs = solve_chunk._cache_size()
    finally:
        solve_chunk.clear_cache()
    assert n_programs == 1
    assert batch.converged.all()
    assert batch.X[-1].shape == (5, 6)
    for S, f, X in zip(Ss, batch.objective, batch.X):
        alone = chco.solve(S)
        assert bool(alone.converged)
        np.testing.assert_allclose(f, float(alone.objective), rtol=3e-5)
        assert X.min() >= 0 and X.sum(axis=1).max() <= 1 + 1e-5  # feasible: no padded head leaks in


def test_solve_raises_on_non_finite_concrete_input():
    S = np.zeros((4, 3), np.float32)
    S[2, 1] = np.nan
    with pytest.raises(chco.CHCOInputError, match=r"non-finite.*head 2, class 1"):
        chco.solve(S)
    with pytest.raises(chco.CHCOInputError, match="non-finite"):
        chco.solve(jnp.asarray(S) + jnp.inf)
    # Non-finite values in padded (masked) heads are ignored, as the padding contract says.
    mask = np.array([True, True, False, True])
    r = chco.solve(S, mask)
    assert bool(r.converged) and np.isfinite(float(r.objective))
    # Under jit the values cannot be inspected: documented, gives converged=False and a NaN objective.
    rj = jax.jit(lambda s: chco.solve(s))(S)
    assert not bool(rj.converged) and not np.isfinite(float(rj.objective))


@pytest.mark.parametrize("low", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_are_upcast_the_same_way(low):
    rng = np.random.default_rng(13)
    S32 = family(rng, "peaked", 40, 4)
    S_low = jnp.asarray(S32).astype(low)
    ref = chco.solve(jnp.asarray(S_low, jnp.float32))  # the upcast values
    r = chco.solve(S_low)
    assert r.X.dtype == jnp.float32 and r.loss.dtype == jnp.float32
    assert float(r.objective) == float(ref.objective) and bool(r.converged) == bool(ref.converged)
    b = chco.solve_batch([np.asarray(S_low)], progress=False)
    assert b.loss.dtype == np.float32 and b.converged.all()
    assert b.objective[0] == pytest.approx(float(ref.objective), rel=1e-5)
    # And the reported value is honest: the float64 evaluation of the returned X agrees.
    _, f64, _ = eval_float64(np.asarray(S_low, np.float32), r.X)
    assert abs(float(r.objective) - f64) <= 1e-5 * abs(f64) + 1e-6


def test_bad_tolerances_and_sizes_are_refused():
    S = [np.zeros((4, 3), np.float32)]
    for kw, what in [
        (dict(tol=float("nan")), "tol"), (dict(tol=-1.0), "tol"), (dict(atol=float("nan")), "atol"),
        (dict(chunk_size=0), "chunk_size"), (dict(chunk_size=-3), "chunk_size"),
        (dict(round_iter=0), "round_iter"), (dict(max_iter=0), "max_iter"), (dict(max_chunk_bytes=0), "max_chunk_bytes"),
    ]:
        with pytest.raises(chco.CHCOInputError, match=what):
            chco.solve_batch(S, progress=False, **kw)
    with pytest.raises(chco.CHCOInputError, match="tol"):
        chco.solve(S[0], tol=float("nan"))
    with pytest.raises(chco.CHCOInputError, match="max_iter"):
        chco.solve(S[0], max_iter=-1)
    with pytest.raises(chco.CHCOInputError, match="real-valued"):
        chco.solve_batch([np.zeros((3, 2), complex)], progress=False)
    with pytest.raises(chco.CHCOInputError, match="empty devices"):
        chco.solve_batch(S, devices=[], progress=False)
