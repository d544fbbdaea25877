"""Reuse (Eq. 12-13) against hand-computed numbers."""

import math

import jax
import numpy as np
import pytest

from mll_jax.reuse import Reuser, combine, expert_terms, patch_scores
from mll_jax.selection import Selection


def _entropy(p):
    return -sum(q * math.log(q) for q in p if q > 0)


# Expert A: 2 heads; expert B: 3 heads.  Three images (index stored in pixel [0, 0]).
LOGITS_A = np.array([[0.0, 0.0], [math.log(3), 0.0], [math.log(3), 0.0]], np.float32)
LOGITS_B = np.array([[math.log(8), 0.0, 0.0], [0.0, 0.0, 0.0], [math.log(8), 0.0, 0.0]], np.float32)
X_A = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)  # class 0 <- head 0, class 1 <- head 1
X_B = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.0, 0.0]], np.float32)  # class 0 <- h0 + h2 / 2
MASK = np.array([[True, True, False], [True, False, False]])  # class 0: A, B; class 1: A; class 2: uncovered
PATCH_LOGITS = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, math.log(8)], [0.0, 0.0, 0.0]], np.float32)

# Hand computation.
CONF_A = [0.0, 1 - _entropy([0.75, 0.25]) / math.log(2), 1 - _entropy([0.75, 0.25]) / math.log(2)]
CONF_B = [1 - _entropy([0.8, 0.1, 0.1]) / math.log(3), 0.0, 1 - _entropy([0.8, 0.1, 0.1]) / math.log(3)]
SCORE_A0 = [0.5, 0.75, 0.75]  # p_A . x_0
SCORE_A1 = [0.5, 0.25, 0.25]
SCORE_B0 = [0.8 + 0.1 * 0.5, 1 / 3 + 1 / 6, 0.85]
EXPECTED = np.array(
    [
        # image 0: A has zero confidence -> class 0 is B alone; class 1 (A alone, conf 0) falls back to uniform
        [SCORE_B0[0], SCORE_A1[0], 1 / 3],
        # image 1: B has zero confidence -> class 0 is A alone; patch softmax [.1, .1, .8]
        [SCORE_A0[1], SCORE_A1[1], 0.8],
        # image 2: both confident -> confidence-weighted mean
        [
            (CONF_A[2] * SCORE_A0[2] + CONF_B[2] * SCORE_B0[2]) / (CONF_A[2] + CONF_B[2]),
            SCORE_A1[2],
            1 / 3,
        ],
    ]
)


def test_hand_numbers_are_what_we_think():
    assert CONF_A[1] == pytest.approx(0.188722, abs=1e-6)
    assert CONF_B[0] == pytest.approx(0.418328, abs=1e-6)
    assert EXPECTED[2, 0] == pytest.approx(0.818912, abs=1e-6)


def test_expert_terms_hand_computed():
    s, a = expert_terms(LOGITS_A, X_A)
    np.testing.assert_allclose(np.asarray(a), CONF_A, atol=1e-6)
    np.testing.assert_allclose(np.asarray(s), np.stack([SCORE_A0, SCORE_A1, [0, 0, 0]], 1), atol=1e-6)
    s, a = expert_terms(LOGITS_B, X_B)
    np.testing.assert_allclose(np.asarray(a), CONF_B, atol=1e-6)
    np.testing.assert_allclose(np.asarray(s)[:, 0], SCORE_B0, atol=1e-6)
    # extreme logits: one-hot output, confidence 1, no nan
    s, a = expert_terms(np.array([[1e4, -1e4, 0.0]]), np.eye(3))
    np.testing.assert_allclose(np.asarray(a), [1.0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(s), [[1, 0, 0]], atol=1e-6)
    # a one-head model has zero confidence
    assert float(expert_terms(np.zeros((1, 1)), np.ones((1, 2)))[1][0]) == 0.0


def _terms():
    sa, ca = expert_terms(LOGITS_A, X_A)
    sb, cb = expert_terms(LOGITS_B, X_B)
    return np.stack([sa, sb]), np.stack([ca, cb])


def test_combine_hand_computed():
    scores, conf = _terms()
    patch = patch_scores(PATCH_LOGITS, MASK.any(0))
    out = np.asarray(combine(scores, conf, MASK, patch))
    np.testing.assert_allclose(out, EXPECTED, atol=1e-6)
    assert np.argmax(out, 1).tolist() == [0, 2, 0]
    # without a patch the uncovered class scores 0
    out = np.asarray(combine(scores, conf, MASK))
    np.testing.assert_allclose(out[:, 2], 0.0)
    np.testing.assert_allclose(out[:, :2], EXPECTED[:, :2], atol=1e-6)
    # jit/vmap friendly: vmap over a leading batch of identical problems
    batched = jax.vmap(combine, in_axes=(0, 0, None, 0))(
        np.stack([scores] * 2), np.stack([conf] * 2), MASK, np.stack([patch] * 2)
    )
    np.testing.assert_allclose(np.asarray(batched)[1], EXPECTED, atol=1e-6)


def test_patch_modes():
    covered = np.array([True, True, False])
    z = np.array([[0.0, math.log(2), math.log(3)]])
    np.testing.assert_allclose(np.asarray(patch_scores(z, covered)), [[1 / 6, 2 / 6, 3 / 6]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(patch_scores(z, covered, "uncovered")), [[0, 0, 1]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(patch_scores(z, covered, "all", 2.0)), [[1 / 3, 2 / 3, 1]], rtol=1e-6)
    with pytest.raises(ValueError, match="patch mode"):
        patch_scores(z, covered, "nope")


# --------------------------------------------------------------------------------------------------
# Reuser with fake experts and patch
# --------------------------------------------------------------------------------------------------


class FakeExpert:
    def __init__(self, model_id, table):
        self.model_id, self.table, self.num_heads = model_id, table, table.shape[1]
        self.calls = []

    def logits(self, images):
        self.calls.append(len(images))
        return self.table[images[:, 0, 0].astype(int)]


class FakePatch:
    def __init__(self, table):
        self.table, self.names = table, None

    def logits(self, images, class_names):
        self.names = list(class_names)
        return self.table[images[:, 0, 0].astype(int)]


def _images():
    imgs = np.zeros((3, 4, 4), np.uint8)
    imgs[:, 0, 0] = [0, 1, 2]
    return imgs


def _selection(columns=True):
    return Selection(
        method="hand",
        model_ids=("unused", "A", "B"),
        loss=np.zeros((3, 3)),
        experts=((1, 2), (1,), ()),
        columns={"A": X_A, "B": X_B} if columns else {},
        k=2,
        beta=None,
        class_names=("cat", "dog", "axolotl"),
        wnids=("n1", "n2", None),
    )


def test_reuser_matches_hand_computation_in_batches():
    experts = {"A": FakeExpert("A", LOGITS_A), "B": FakeExpert("B", LOGITS_B)}
    patch = FakePatch(PATCH_LOGITS)
    r = Reuser(_selection(), experts, patch, batch_size=2, progress=False)
    np.testing.assert_allclose(r.scores(_images()), EXPECTED, atol=1e-6)
    assert r.predict(_images()).tolist() == [0, 2, 0]
    assert experts["A"].calls == [2, 1, 2, 1]  # batched: 2 + 1 per call, two calls
    assert patch.names == ["cat", "dog", "axolotl"]
    # uncovered-only patch normalisation: the patch scores 1 for class 2 everywhere
    r = Reuser(_selection(), experts, patch, patch_mode="uncovered", progress=False)
    assert r.predict(_images()).tolist() == [2, 2, 2]


def test_reuser_loads_only_used_models_from_hub():
    class Hub:
        def __init__(self):
            self.loaded = []

        def load(self, model_id):
            self.loaded.append(model_id)
            return FakeExpert(model_id, {"A": LOGITS_A, "B": LOGITS_B}[model_id])

    hub = Hub()
    with pytest.warns(RuntimeWarning, match="uncovered classes and no patch"):
        r = Reuser(_selection(), hub, progress=False)
    assert hub.loaded == ["A", "B"]
    np.testing.assert_allclose(r.scores(_images())[:, :2], EXPECTED[:, :2], atol=1e-6)


def test_reuser_errors():
    experts = {"A": FakeExpert("A", LOGITS_A), "B": FakeExpert("B", LOGITS_B)}
    with pytest.raises(ValueError, match="no predictor columns for models \\['A', 'B'\\]"):
        Reuser(_selection(columns=False), experts)
    with pytest.raises(KeyError, match="'B' is not among the given experts"):
        Reuser(_selection(), {"A": experts["A"]}, FakePatch(PATCH_LOGITS))
    with pytest.raises(ValueError, match="expert 'B' has 2 heads but its predictor columns have 3"):
        Reuser(_selection(), {"A": experts["A"], "B": FakeExpert("B", LOGITS_A)}, FakePatch(PATCH_LOGITS))
    with pytest.raises(ValueError, match="3 class names, got 2"):
        Reuser(_selection(), experts, FakePatch(PATCH_LOGITS), class_names=["a", "b"])
    r = Reuser(_selection(), experts, FakePatch(PATCH_LOGITS[:, :2]), progress=False)
    with pytest.raises(ValueError, match="patch returned logits of shape \\(3, 2\\)"):
        r.scores(_images())
    with pytest.raises(ValueError, match="images must be"):
        r.scores(np.zeros((3, 4)))
