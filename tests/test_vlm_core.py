"""Hand-computed checks of mll_jax.vlm.core (labels, matching weights, F1, selection score, reuse)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mll_jax.vlm import core

# 4 nodes, 2 images each; image labels and each model's zero-shot predictions among the nodes.
LABELS = np.array([0, 0, 1, 1, 2, 2, 3, 3])
PREDS = {
    "A": [2, 2, 1, 1, 2, 2, 3, 3],
    "B": [0, 1, 1, 1, 2, 3, 3, 3],
    "C": [1, 1, 0, 0, 2, 2, 2, 2],
}
# (tp, fn, fp) per node, counted by hand from PREDS.
HAND_COUNTS = {
    "A": [(0, 2, 0), (2, 0, 0), (2, 0, 2), (2, 0, 0)],
    "B": [(1, 1, 0), (2, 0, 1), (1, 1, 0), (2, 0, 1)],
    "C": [(0, 2, 2), (0, 2, 2), (2, 0, 2), (0, 2, 0)],
}
NODE_EMB = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0]], np.float32)
CLASS_EMB = np.array([[3, 4, 0], [0, 3, 4]], np.float32) / 5  # cosines: class0 (.6,.8,0,-.6), class1 (0,.6,.8,0)
# top-2 nodes: class0 -> nodes (1, 0) sims (.8, .6); class1 -> nodes (2, 1) sims (.8, .6); weights (4/7, 3/7)
HAND_F1 = {"A": (8 / 11, 7 / 9), "B": (22 / 29, 20 / 27), "C": (0.0, 4 / 9)}


def _logits(preds, v=4):
    return np.eye(v, dtype=np.float32)[preds] * 5.0 + 0.1 * np.arange(v, dtype=np.float32)[::-1]


def test_node_counts_hand():
    for m, preds in PREDS.items():
        c = np.asarray(core.node_counts(jnp.asarray(_logits(preds)), jnp.asarray(LABELS)))
        np.testing.assert_array_equal(c, np.array(HAND_COUNTS[m], np.float32), err_msg=m)
    # padding rows (label -1) are ignored
    lg = np.concatenate([_logits(PREDS["B"]), _logits([0, 3])])
    c = core.node_counts(jnp.asarray(lg), jnp.asarray(np.r_[LABELS, -1, -1]))
    np.testing.assert_array_equal(np.asarray(c), np.array(HAND_COUNTS["B"], np.float32))


def test_restricted_node_counts_hand():
    active = jnp.asarray([True, True, False, False])
    c = np.asarray(core.restricted_node_counts(jnp.asarray(_logits(PREDS["B"])), jnp.asarray(LABELS), active))
    np.testing.assert_array_equal(c, [(1, 1, 0), (2, 0, 1), (0, 0, 0), (0, 0, 0)])
    # model A sends node-0 images to node 2; restricted to {0, 1} the next best logit (node 0) wins
    c = np.asarray(core.restricted_node_counts(jnp.asarray(_logits(PREDS["A"])), jnp.asarray(LABELS), active))
    np.testing.assert_array_equal(c, [(2, 0, 0), (2, 0, 0), (0, 0, 0), (0, 0, 0)])
    # all nodes active: the plain counts
    c = core.restricted_node_counts(jnp.asarray(_logits(PREDS["C"])), jnp.asarray(LABELS), jnp.ones(4, bool))
    np.testing.assert_array_equal(np.asarray(c), np.array(HAND_COUNTS["C"], np.float32))


def test_match_weights_hand():
    idx, w, sims = core.match_weights(jnp.asarray(CLASS_EMB), jnp.asarray(NODE_EMB * 3.0), top=2)
    np.testing.assert_array_equal(np.asarray(idx), [[1, 0], [2, 1]])
    np.testing.assert_allclose(np.asarray(w), [[4 / 7, 3 / 7], [4 / 7, 3 / 7]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(sims), [[0.8, 0.6], [0.8, 0.6]], rtol=1e-6)
    # top=5 > V: all 4 nodes; the negative similarity gets weight 0, the rest sum to 1
    idx, w, _ = core.match_weights(jnp.asarray(CLASS_EMB), jnp.asarray(NODE_EMB), top=5)
    assert idx.shape == (2, 4)
    np.testing.assert_array_equal(np.asarray(idx)[0], [1, 0, 2, 3])
    np.testing.assert_allclose(np.asarray(w)[0], [4 / 7, 3 / 7, 0, 0], atol=1e-7)
    # a class orthogonal/opposite to every node: all-zero weights, not NaN
    _, w, _ = core.match_weights(jnp.asarray([[0.0, -1.0, -1.0]]), jnp.asarray(NODE_EMB[:3]), top=2)
    np.testing.assert_array_equal(np.asarray(w), 0.0)


def test_class_counts_f1_scores_and_selection_hand():
    counts = jnp.asarray(np.array([HAND_COUNTS[m] for m in "ABC"], np.float32))
    idx, w, _ = core.match_weights(jnp.asarray(CLASS_EMB), jnp.asarray(NODE_EMB), top=2)
    cc = np.asarray(core.class_counts(counts, idx, w))
    # model B, class 0: 4/7 * node1 (2,0,1) + 3/7 * node0 (1,1,0) = (11/7, 3/7, 4/7)
    np.testing.assert_allclose(cc[1, 0], [11 / 7, 3 / 7, 4 / 7], rtol=1e-6)
    # model C, class 1: 4/7 * node2 (2,0,2) + 3/7 * node1 (0,2,2) = (8/7, 6/7, 2)
    np.testing.assert_allclose(cc[2, 1], [8 / 7, 6 / 7, 2.0], rtol=1e-6)
    f1 = np.asarray(core.f1_score(jnp.asarray(cc)))
    np.testing.assert_allclose(f1, np.array([HAND_F1[m] for m in "ABC"]), rtol=1e-6, atol=1e-7)
    r = np.asarray(core.selection_scores(jnp.asarray(f1), 0.7))
    hand_r = np.array([[0.7 * a + 0.3 * b, 0.7 * b + 0.3 * a] for a, b in (HAND_F1[m] for m in "ABC")])
    np.testing.assert_allclose(r, hand_r, rtol=1e-6)
    # r: A (.7424, .7626), B (.7533, .7461), C (.1333, .3111): class 0 -> B, class 1 -> A
    np.testing.assert_array_equal(np.asarray(core.select_topk(jnp.asarray(r), 1)), [[1], [0]])
    np.testing.assert_array_equal(np.asarray(core.select_topk(jnp.asarray(r), 3)), [[1, 0, 2], [0, 1, 2]])
    mask = np.asarray(core.selection_mask(core.select_topk(jnp.asarray(r), 2), 3))
    np.testing.assert_array_equal(mask, [[True, True], [True, True], [False, False]])
    with pytest.raises(ValueError, match="k must be"):
        core.select_topk(jnp.asarray(r), 4)
    # one class: r = F1; nothing counted: F1 = 0 (not NaN)
    np.testing.assert_allclose(np.asarray(core.selection_scores(jnp.asarray(f1[:, :1]))), f1[:, :1])
    assert float(core.f1_score(jnp.zeros(3))) == 0.0
    # vmap over a batch of label sets
    f1b = jax.vmap(core.f1_score)(jnp.stack([jnp.asarray(cc), jnp.asarray(cc) * 2]))
    np.testing.assert_allclose(np.asarray(f1b[1]), f1, rtol=1e-6, atol=1e-7)
    # SDAG accuracy (INB fallback): A 6/8, B 6/8, C 2/8
    np.testing.assert_allclose(np.asarray(core.sdag_accuracy(counts)), [0.75, 0.75, 0.25])


def test_reuse_formula_and_zero_entropy_guard():
    # model 0: p = (1/4, 3/4), H2 = 0.5 + 0.75 * log2(4/3); model 1: p = (1, 0) exactly (H2 = 0 -> floor 0.01)
    logits = jnp.asarray([[[0.0, math.log(3.0)]], [[0.0, -jnp.inf]]], jnp.float32)
    h = 0.5 + 0.75 * math.log2(4 / 3)
    np.testing.assert_allclose(np.asarray(core.entropy_bits(logits))[:, 0], [h, 0.0], rtol=1e-6, atol=1e-7)
    sel = jnp.asarray([[True, True], [True, False]])
    s = np.asarray(core.ensemble_scores(logits, sel))
    assert np.all(np.isfinite(s))
    np.testing.assert_allclose(s[0], [0.25 / h + 1.0 / 0.01, 0.75 / h], rtol=1e-5)
    # saturated finite logits (softmax underflows to exactly 0/1 in float32): same finite answer
    s2 = np.asarray(core.ensemble_scores(jnp.asarray([[[0.0, math.log(3.0)]], [[200.0, -200.0]]]), sel))
    np.testing.assert_allclose(s2, s, rtol=1e-5)
    # another floor
    s3 = np.asarray(core.ensemble_scores(logits, sel, 0.5))
    np.testing.assert_allclose(s3[0], [0.25 / h + 1.0 / 0.5, 0.75 / h], rtol=1e-5)


def test_ensemble_matches_numpy_reference():
    rng = np.random.default_rng(0)
    lg = rng.normal(size=(3, 7, 4)) * 3
    sel = rng.random((3, 4)) < 0.5
    p = np.exp(lg - lg.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    h = -(p * np.log2(p)).sum(-1)
    ref = sum(sel[m][None, :] * p[m] / np.maximum(h[m], 0.01)[:, None] for m in range(3))
    np.testing.assert_allclose(np.asarray(core.ensemble_scores(jnp.asarray(lg, jnp.float32), jnp.asarray(sel))),
                               ref, rtol=1e-4)


def test_baselines():
    nan = float("nan")
    assert int(core.inb_choice(jnp.asarray([0.3, nan, 0.5]), jnp.asarray([0.9, 0.95, 0.1]))) == 2
    assert int(core.inb_choice(jnp.asarray([nan, nan, nan]), jnp.asarray([0.9, 0.95, 0.1]))) == 1
    assert int(core.oracle_choice(jnp.asarray([0.2, 0.7, 0.7]))) == 1
    r = np.asarray(core.random_topk(jax.random.PRNGKey(0), 5, 6, 3))
    assert r.shape == (6, 3) and r.min() >= 0 and r.max() < 5
    assert all(len(set(row)) == 3 for row in r)
    draws = np.asarray(core.random_topk(jax.random.PRNGKey(1), 4, 2000, 1))[:, 0]
    assert np.all(np.abs(np.bincount(draws, minlength=4) / 2000 - 0.25) < 0.05)  # uniform, not constant


def test_clip_hub_manifest():
    from mll_jax.vlm.models import clip_hub_manifest, imagenet_accuracy

    doc = clip_hub_manifest()
    names = [m["name"] for m in doc["models"]]
    assert len(names) == len(set(names)) >= 10
    for m in doc["models"]:
        acc = m["imagenet_zero_shot_top1"]
        assert acc is None or 0.0 < acc < 1.0, m
        assert (acc is None) == (m["open_clip"] is None), m
        assert m["pretraining_data"]
    # values as in the open_clip results table (ViT-B-32 openai: 0.6332; ViT-L-14 openai: 0.7554)
    assert imagenet_accuracy("openai/clip-vit-base-patch32") == 0.6332
    assert imagenet_accuracy("openai/clip-vit-large-patch14") == 0.7554
    assert imagenet_accuracy("patrickjohncyh/fashion-clip") is None and imagenet_accuracy("nope") is None
