"""Baselines: Random, HEU, LogME, LEEP.

LogME / LEEP are checked against a literal NumPy transcription of the public reference algorithms
(thuml/LogME ``LogME.py`` fixed-point version and ``LEEP.py``) that lives in this test file only (section
"REFERENCE TRANSCRIPTIONS" below): it is a test oracle, not shipped code.  HEU and small LEEP cases are
also checked against hand-computed numbers, and the LogME log-determinant fix against a dense formula.
"""

import math

import numpy as np
import pytest

import mll_jax.baselines
from mll_jax import selection as B
from mll_jax.selection import ModelScores, select


# ==================================================================================================
# REFERENCE TRANSCRIPTIONS (test oracle only; follows the published algorithms step by step)
# ==================================================================================================


def _ref_truncated_svd(x):
    # N > D path of the reference: SVD of the Gram matrix, rank-truncated at s > 1e-10.
    u, s, vh = np.linalg.svd(x.T @ x)
    s = np.sqrt(s)
    u_times_sigma = x @ vh.T
    k = int(np.sum(s > 1e-10))
    s = s.reshape(-1, 1)[:k]
    vh = vh[:k]
    u = u_times_sigma[:, :k] / s.reshape(1, -1)
    return u, s, vh


def ref_logme(f, y, pad_sigma_to_d=False):
    """Returns (mean evidence, evidences, alphas, betas, ms).  pad_sigma_to_d: thuml/LogME PR #24 fix."""
    f = f.astype(np.float64)
    N, D = f.shape
    if N > D:
        u, s, vh = _ref_truncated_svd(f)
    else:
        u, s, vh = np.linalg.svd(f, full_matrices=False)
    s = s.reshape(-1, 1)
    sigma = s**2
    sigma_det = sigma
    if pad_sigma_to_d:
        sigma_det = np.zeros((D, 1))
        sigma_det[: sigma.shape[0]] = sigma
    evidences, alphas, betas, ms = [], [], [], []
    for i in range(int(y.max() + 1)):
        y_ = (y == i).astype(np.float64).reshape(-1, 1)
        x = u.T @ y_
        x2 = x**2
        res_x2 = (y_**2).sum() - x2.sum()
        alpha, beta = 1.0, 1.0
        for _ in range(11):
            t = alpha / beta
            gamma = (sigma / (sigma + t)).sum()
            m2 = (sigma * x2 / ((t + sigma) ** 2)).sum()
            res2 = (x2 / ((1 + sigma / t) ** 2)).sum() + res_x2
            alpha = gamma / (m2 + 1e-5)
            beta = (N - gamma) / (res2 + 1e-5)
            t_ = alpha / beta
            if abs(t_ - t) / t <= 1e-3:
                break
        evidence = (
            D / 2.0 * np.log(alpha)
            + N / 2.0 * np.log(beta)
            - 0.5 * np.sum(np.log(alpha + beta * sigma_det))
            - beta / 2.0 * res2
            - alpha / 2.0 * m2
            - N / 2.0 * np.log(2 * np.pi)
        ) / N
        m = (vh.T @ (1.0 / (t + sigma) * s * x)).reshape(-1)
        evidences.append(evidence)
        alphas.append(alpha)
        betas.append(beta)
        ms.append(m)
    return float(np.mean(evidences)), np.array(evidences), np.array(alphas), np.array(betas), np.stack(ms)


def ref_leep(pseudo_source_label, target_label):
    """Returns (score, per-sample empirical probabilities)."""
    N, C_s = pseudo_source_label.shape
    target_label = target_label.reshape(-1)
    C_t = int(np.max(target_label) + 1)
    normalized_prob = pseudo_source_label / float(N)
    joint = np.zeros((C_t, C_s), dtype=float)
    for i in range(C_t):
        joint[i] = np.sum(normalized_prob[target_label == i], axis=0)
    p_target_given_source = (joint / joint.sum(axis=0, keepdims=True)).T
    empirical_prediction = pseudo_source_label @ p_target_given_source
    empirical_prob = np.array([pred[label] for pred, label in zip(empirical_prediction, target_label)])
    return float(np.mean(np.log(empirical_prob))), empirical_prob


# ==================================================================================================
# LogME
# ==================================================================================================


def _class_features(rng, n, d, c, sep=1.5):
    y = np.arange(n) % c
    centers = rng.normal(size=(c, d)) * sep
    f = centers[y] + rng.normal(size=(n, d))
    return f, y


@pytest.mark.parametrize("n,d,c,seed", [(60, 8, 3, 0), (200, 16, 5, 1), (40, 39, 4, 2)])
def test_logme_matches_reference_n_greater_than_d(n, d, c, seed):
    f, y = _class_features(np.random.default_rng(seed), n, d, c)
    ref_score, ref_ev, ref_a, ref_b, ref_m = ref_logme(f, y)
    for mode in ("full", "reference"):  # full column rank: both modes agree with the published code
        r = B.logme(f, y, logdet=mode)
        np.testing.assert_allclose(r.score, ref_score, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(r.evidence, ref_ev, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(r.alpha, ref_a, rtol=1e-7)
        np.testing.assert_allclose(r.beta, ref_b, rtol=1e-7)
        np.testing.assert_allclose(r.weights, ref_m, rtol=1e-6, atol=1e-9)
    assert np.all(r.iterations >= 1) and np.all(r.iterations <= 11)


def test_logme_hard_coded_value():
    # Fixed small input; number produced by the reference transcription above and frozen here, so a change in
    # either the oracle or the implementation is caught.
    f = np.array([[1.0, 0.0], [0.9, 0.2], [0.1, 1.0], [0.0, 0.8], [0.5, 0.5], [1.2, -0.1]])
    y = np.array([0, 0, 1, 1, 1, 0])
    r = B.logme(f, y)
    assert r.score == pytest.approx(ref_logme(f, y)[0], rel=1e-10)
    assert r.score == pytest.approx(-0.5443173549479069, rel=1e-9)


@pytest.mark.parametrize("n,d,c,seed", [(12, 30, 3, 3), (5, 50, 2, 4)])
def test_logme_n_less_than_d_modes(n, d, c, seed):
    f, y = _class_features(np.random.default_rng(seed), n, d, c)
    ref = ref_logme(f, y)
    fixed = ref_logme(f, y, pad_sigma_to_d=True)
    r_ref = B.logme(f, y, logdet="reference")
    r_full = B.logme(f, y, logdet="full")
    np.testing.assert_allclose(r_ref.evidence, ref[1], rtol=1e-9)
    np.testing.assert_allclose(r_full.evidence, fixed[1], rtol=1e-9)
    # The two differ exactly by the (D - N) missing log(alpha) terms of the log-determinant.
    np.testing.assert_allclose(r_ref.evidence - r_full.evidence, 0.5 * (d - n) * np.log(r_full.alpha) / n,
                               rtol=1e-9)
    assert np.all(np.abs(r_ref.evidence - r_full.evidence) > 1e-3)


def _dense_log_marginal(f, y_, alpha, beta):
    # log N(y | 0, I/beta + F F^T / alpha): the Bayesian linear-regression evidence, computed densely.
    n = f.shape[0]
    cov = np.eye(n) / beta + f @ f.T / alpha
    sign, logdet = np.linalg.slogdet(cov)
    assert sign > 0
    return (-0.5 * n * np.log(2 * np.pi) - 0.5 * logdet - 0.5 * y_ @ np.linalg.solve(cov, y_)) / n


def test_logme_full_logdet_is_the_true_evidence_when_n_less_than_d():
    # At a converged fixed point the LogME value is the log marginal likelihood at (alpha, beta).  The exact
    # log-determinant ("full") reproduces the dense formula; the published one ("reference") does not.
    rng = np.random.default_rng(7)
    n, d = 10, 25
    f = rng.normal(size=(n, d))
    y = (rng.random(n) < 0.5).astype(int)
    y[:2] = [0, 1]
    full = B.logme(f, y, logdet="full")
    ref = B.logme(f, y, logdet="reference")
    for c in range(2):
        dense = _dense_log_marginal(f, (y == c).astype(float), full.alpha[c], full.beta[c])
        # (the 11-iteration cap leaves the fixed point a few 1e-3 short; the published logdet is off by ~3)
        assert full.evidence[c] == pytest.approx(dense, abs=1e-2)
        assert abs(ref.evidence[c] - dense) > 1.0


def test_logme_input_errors():
    with pytest.raises(ValueError, match="features must be"):
        B.logme(np.zeros(5), np.zeros(5, int))
    with pytest.raises(ValueError, match="labels must be"):
        B.logme(np.zeros((5, 2)), np.zeros(4, int))
    with pytest.raises(ValueError, match="non-finite"):
        B.logme(np.full((3, 2), np.nan), np.zeros(3, int))
    with pytest.raises(ValueError, match="logdet"):
        B.logme(np.ones((3, 2)), np.zeros(3, int), logdet="bogus")


# ==================================================================================================
# LEEP
# ==================================================================================================


def test_leep_hand_computed():
    # Perfectly informative source: P(y|z) = identity, every log-EEP is log 1 = 0.
    r = B.leep(np.eye(2), np.array([0, 1]))
    assert r.score == pytest.approx(0.0, abs=1e-15)
    # Uninformative source: joint = 1/4 everywhere, P(y|z) = 1/2, score = log(1/2).
    r = B.leep(np.full((2, 2), 0.5), np.array([0, 1]))
    assert r.score == pytest.approx(math.log(0.5), rel=1e-15)
    # theta = [[.8,.2],[.4,.6],[.1,.9]], y = [0,0,1]: joint/N-free P(y=0|z) = [1.2/1.3, .8/1.7].
    theta = np.array([[0.8, 0.2], [0.4, 0.6], [0.1, 0.9]])
    p00, p01 = 1.2 / 1.3, 0.8 / 1.7
    probs = [0.8 * p00 + 0.2 * p01, 0.4 * p00 + 0.6 * p01, 0.1 * (1 - p00) + 0.9 * (1 - p01)]
    r = B.leep(theta, np.array([0, 0, 1]))
    assert r.score == pytest.approx(np.mean(np.log(probs)), rel=1e-13)
    np.testing.assert_allclose(r.per_class, [np.mean(np.log(probs[:2])), np.log(probs[2])], rtol=1e-13)


@pytest.mark.parametrize("n,cs,ct,seed", [(50, 7, 3, 0), (300, 40, 10, 1)])
def test_leep_matches_reference(n, cs, ct, seed):
    rng = np.random.default_rng(seed)
    theta = rng.dirichlet(np.full(cs, 0.3), size=n)
    y = rng.integers(0, ct, size=n)
    y[:ct] = np.arange(ct)
    ref_score, ref_probs = ref_leep(theta, y)
    r = B.leep(theta, y)
    assert r.score == pytest.approx(ref_score, rel=1e-12)
    np.testing.assert_allclose(r.log_prob, np.log(ref_probs), rtol=1e-12)
    per_class = [np.log(ref_probs[y == c]).mean() for c in range(ct)]
    np.testing.assert_allclose(r.per_class, per_class, rtol=1e-12)
    # The LEEP score is the sample-weighted mean of the per-class scores.
    assert np.dot(np.bincount(y), r.per_class) / n == pytest.approx(r.score, rel=1e-12)


def test_leep_rejects_logits_and_handles_empty_source_class():
    with pytest.raises(ValueError, match="sum to 1"):
        B.leep(np.array([[2.0, 1.0], [0.3, 0.1]]), np.array([0, 1]))
    with pytest.raises(ValueError, match="non-negative"):
        B.leep(np.array([[2.0, -1.0], [0.5, 0.5]]), np.array([0, 1]))
    theta = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # source class 2 never predicted: reference gives nan
    r = B.leep(theta, np.array([0, 1]))
    assert r.score == pytest.approx(0.0, abs=1e-15)
    r = B.leep(np.eye(2), np.array([0, 0]), num_classes=3)  # class 1, 2 absent
    assert np.isnan(r.per_class[1]) and np.isnan(r.per_class[2])


# ==================================================================================================
# HEU
# ==================================================================================================


def test_heu_hand_computed():
    # softmax over heads: column 0 -> [1/2, 1/2], column 1 -> [3/4, 1/4].
    S = np.array([[0.0, math.log(3.0)], [0.0, 0.0]])
    bce = np.asarray(B.heu_losses(S))
    expected = np.array([[math.log(8), math.log(8 / 3)], [math.log(8 / 3), math.log(8)]])
    np.testing.assert_allclose(bce, expected, rtol=1e-6)
    sc = B.heu_scores([S], ["m"])
    np.testing.assert_allclose(sc.loss, [[math.log(8 / 3), math.log(8 / 3)]], rtol=1e-6)
    np.testing.assert_array_equal(sc.columns[0], [[0, 1], [1, 0]])  # class 0 -> head 1, class 1 -> head 0


def test_heu_three_classes_and_sigmoid_link():
    S = np.array([[2.0, -1.0, 0.0], [0.0, 1.0, -2.0]])
    P = np.exp(S) / np.exp(S).sum(axis=0)
    for h in range(2):
        for c in range(3):
            neg = sum(math.log(1 - P[h, o]) for o in range(3) if o != c) / 2
            assert float(B.heu_losses(S)[h, c]) == pytest.approx(-(math.log(P[h, c]) + neg), rel=1e-5)
    sig = 1 / (1 + np.exp(-S))
    expect = -(np.log(sig[1, 1]) + (np.log(1 - sig[1, 0]) + np.log(1 - sig[1, 2])) / 2)
    assert float(B.heu_losses(S, link="sigmoid")[1, 1]) == pytest.approx(expect, rel=1e-5)


def test_heu_ties_pick_lowest_head():
    sc = B.heu_scores([np.zeros((4, 3))], ["flat"])
    assert sc.info["heads"][0].tolist() == [0, 0, 0]
    np.testing.assert_allclose(sc.loss, np.full((1, 3), -math.log(0.25) - math.log(0.75)), rtol=1e-6)


def test_heu_equals_chco_loss_at_single_head_columns():
    chco = pytest.importorskip("mll_jax.chco")
    rng = np.random.default_rng(0)
    S = rng.normal(size=(5, 4)).astype(np.float32) * 2
    bce = np.asarray(B.heu_losses(S))
    for h in range(5):
        X = np.zeros((5, 4), np.float32)
        X[h] = 1.0
        np.testing.assert_allclose(np.asarray(chco.losses(S, X)), bce[h], rtol=1e-4)


# ==================================================================================================
# Random and the selection slot
# ==================================================================================================


def test_random_is_seeded_and_uniform():
    ids = [f"m{i}" for i in range(5)]
    a = select(B.random_scores(ids, 4, seed=3), k=2)
    b = select(B.random_scores(ids, 4, seed=3), k=2)
    assert a.experts == b.experts
    assert all(len(set(e)) == 2 for e in a.experts)
    counts = np.zeros(5)
    for seed in range(400):
        for e in select(B.random_scores(ids, 1, seed=seed), k=2).experts:
            counts[list(e)] += 1
    # each model is picked with probability k/M = 0.4; 400 draws -> sd ~ 9.8
    np.testing.assert_allclose(counts / 400, 0.4, atol=0.08)


def test_logme_and_leep_scores_in_the_slot():
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(3), 6)  # classes 0..2; class 3 has no node data
    good = np.eye(4)[labels] * 6 + rng.normal(size=(18, 4)) * 0.3  # separates classes well
    bad = rng.normal(size=(18, 4))
    ids = ["good", "bad"]
    for fn in (B.logme_scores, B.leep_scores):
        sc = fn([good, bad], labels, ids, num_classes=4)
        assert isinstance(sc, ModelScores) and sc.loss.shape == (2, 4)
        assert np.all(np.isinf(sc.loss[:, 3]))
        assert np.all(sc.loss[0, :3] < sc.loss[1, :3])
        sel = select(sc, k=1)
        assert sel.experts == ((0,), (0,), (0,), ())
    sc = B.leep_scores([good], labels, ["good"], num_classes=4)
    probs = np.exp(good) / np.exp(good).sum(1, keepdims=True)
    ref = ref_leep(probs, labels)
    assert sc.info["total"][0] == pytest.approx(ref[0], rel=1e-12)
    np.testing.assert_allclose(-sc.loss[0, :3], [np.log(ref[1][labels == c]).mean() for c in range(3)],
                               rtol=1e-12)
    sc = B.logme_scores([good], labels, ["good"], num_classes=4)
    assert sc.info["total"][0] == pytest.approx(ref_logme(good, labels, pad_sigma_to_d=True)[0], rel=1e-9)


def test_baseline_selection_heu_and_random_with_dict_labels():
    rng = np.random.default_rng(1)
    nodes = ["n00000001", "n00000002", "n00000003"]
    labels = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=(3, 2))}
    sel = B.baseline_selection("heu", labels, ["n00000002", None, "n00000001"], k=1, node_wnids=nodes,
                               class_names=["x", "y", "z"])
    assert sel.uncovered == [1]
    S = {m: labels[m][[1, 0]].T for m in labels}  # matched classes 0 and 2 -> nodes 2 and 1
    best = {m: B.heu_scores([S[m]], [m]).loss[0] for m in labels}
    for j, c in enumerate([0, 2]):
        winner = min(labels, key=lambda m: (best[m][j], m))
        assert sel.expert_ids(c) == [winner]
        assert np.all(sel.columns[winner][:, 1] == 0)
    sel = B.baseline_selection("random", labels, ["n00000002", None, "n00000001"], k=2, node_wnids=nodes,
                               columns="argmax")
    assert sel.uncovered == [1] and set(sel.used_model_ids) == {"a", "b"}
    np.testing.assert_array_equal(sel.columns["a"][:, 0], np.eye(4)[np.argmax(labels["a"][1])])
    with pytest.raises(ValueError, match="needs outputs"):
        B.baseline_selection("logme", labels, nodes, node_wnids=nodes)
    with pytest.raises(ValueError, match="unknown baseline"):
        B.baseline_selection("oracle", labels, nodes, node_wnids=nodes)


def test_old_baselines_module_re_exports_the_selection_names():
    """``mll_jax.baselines`` (kept for one release) holds the very objects of ``mll_jax.selection``."""
    assert mll_jax.baselines.__all__
    for name in mll_jax.baselines.__all__:
        assert getattr(mll_jax.baselines, name) is getattr(B, name), name
