"""Selection: the top-k / beta rule on hand-made losses, label readers, CHCO plumbing and persistence."""

import math
from dataclasses import replace
import subprocess
import sys
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from mll_jax import selection as S
from mll_jax.config import SCORERS
from mll_jax.selection import DictLabels, ModelScores, Selection, select, select_experts, select_top_k

INF = math.inf
NAN = math.nan


def _experts(idx, valid):
    idx, valid = np.asarray(idx), np.asarray(valid)
    return [[int(i) for i, v in zip(r, ok) if v] for r, ok in zip(idx, valid)]


# --------------------------------------------------------------------------------------------------
# select_top_k on hand-made losses
# --------------------------------------------------------------------------------------------------

LOSS = np.array(
    [  # classes:  0     1     2     3
        [0.30, 0.90, 0.20, NAN],  # model 0
        [0.10, 0.50, 0.20, INF],  # model 1
        [0.70, 0.60, 0.20, 0.80],  # model 2
        [0.50, 0.40, 0.05, 0.81],  # model 3
    ]
)


def test_top_k_orders_by_loss():
    idx, valid = select_top_k(LOSS, k=2)
    assert _experts(idx, valid) == [[1, 0], [3, 1], [3, 0], [2, 3]]
    assert np.asarray(idx).shape == (4, 2)


def test_beta_threshold_is_inclusive():
    # class 1: only 0.40 <= 0.5 and 0.50 <= 0.5; 0.6 and 0.9 are excluded.  class 3: nothing <= 0.5.
    idx, valid = select_top_k(LOSS, k=3, beta=0.5)
    assert _experts(idx, valid) == [[1, 0, 3], [3, 1], [3, 0, 1], []]
    assert np.asarray(idx)[3].tolist() == [-1, -1, -1]
    idx, valid = select_top_k(LOSS, k=4, beta=0.8)  # 0.80 is in, 0.81 is not
    assert _experts(idx, valid)[3] == [2]


def test_ties_keep_candidate_order():
    # class 2 has a three-way tie at 0.20 between models 0, 1, 2 after model 3 (0.05).
    idx, valid = select_top_k(LOSS, k=3)
    assert _experts(idx, valid)[2] == [3, 0, 1]
    idx, valid = select_top_k(np.zeros((5, 1)), k=5)
    assert _experts(idx, valid) == [[0, 1, 2, 3, 4]]


def test_non_finite_losses_are_never_selected():
    idx, valid = select_top_k(LOSS, k=4)
    assert _experts(idx, valid)[3] == [2, 3]  # nan (model 0) and inf (model 1) dropped
    idx, valid = select_top_k(np.array([[-INF, 1.0]]).T, k=2)
    assert _experts(idx, valid) == [[1]]


def test_k_larger_than_hub_pads_and_bad_k_fails():
    idx, valid = select_top_k(LOSS[:2], k=5)
    assert np.asarray(idx).shape == (4, 5)
    assert _experts(idx, valid) == [[1, 0], [1, 0], [0, 1], []]
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="positive integer"):
            select_top_k(LOSS, k=bad)
    with pytest.raises(ValueError, match=r"\(M, C\)"):
        select_top_k(np.zeros(3), k=1)


def test_top_k_is_jittable_with_traced_beta():
    f = jax.jit(select_top_k, static_argnames="k")
    idx, valid = f(LOSS, k=2, beta=0.45)
    assert _experts(idx, valid) == [[1, 0], [3], [3, 0], []]


# --------------------------------------------------------------------------------------------------
# Selection object
# --------------------------------------------------------------------------------------------------


def _scores(columns=True):
    cols = [np.full((h, 4), h, np.float32) for h in (2, 3, 4, 5)] if columns else None
    return ModelScores("hand", ["m0", "m1", "m2", "m3"], LOSS, cols)


def test_select_builds_selection():
    sel = select(_scores(), k=1, beta=0.45, class_names=list("abcd"), wnids=["n1", "n2", "n3", None])
    assert sel.experts == ((1,), (3,), (3,), ())
    assert sel.covered.tolist() == [True, True, True, False]
    assert sel.uncovered == [3]
    assert sel.used_model_ids == ("m1", "m3")
    assert set(sel.columns) == {"m1", "m3"} and sel.columns["m3"].shape == (5, 4)
    assert sel.expert_ids(0) == ["m1"]
    np.testing.assert_array_equal(sel.mask(), [[1, 0, 0, 0], [0, 1, 1, 0]])
    np.testing.assert_array_equal(sel.mask(["m3", "m0"]), [[0, 1, 1, 0], [0, 0, 0, 0]])
    assert "d: -- (patch: no SDAG node matched the class name)" in sel.summary() and "1/4" not in sel.summary() and "3/4 classes" in sel.summary()
    assert sel.missing_columns() == []
    with pytest.raises(ValueError, match="class_names has 2"):
        select(_scores(), k=1, class_names=["a", "b"])


def test_selection_save_load_roundtrip(tmp_path):
    sel = select(_scores(), k=2, beta=0.6, class_names=list("abcd"), wnids=["n1", None, "n3", "n4"])
    path = tmp_path / "sub" / "sel.npz"
    sel.save(path)
    back = Selection.load(path)
    assert back.experts == sel.experts and back.model_ids == sel.model_ids and back.wnids == sel.wnids
    assert back.k == 2 and back.beta == 0.6 and back.class_names == sel.class_names
    np.testing.assert_array_equal(back.loss, sel.loss)
    assert set(back.columns) == set(sel.columns)
    for m in sel.columns:
        np.testing.assert_array_equal(back.columns[m], sel.columns[m])
    assert [p.name for p in path.parent.iterdir()] == ["sel.npz"]  # no temp file left behind
    assert back.matching is None and back.explain()[1]["match"] is None

    # how each class was matched travels with the selection; a refused class's reason is its uncovered reason
    notes = tuple({"method": "lemma", "synset": f"n{c}", "candidates": [[f"n{c}", 0.5]], "reason": f"why {c}",
                   "refused": None} for c in range(4))
    notes = notes[:1] + ({**notes[1], "reason": "'b' matched 'x', a hypernym: no labelled node at or below 'b'",
                          "refused": "n9"},) + notes[2:]
    replace(sel, experts=sel.experts[:1] + ((),) + sel.experts[2:], matching=notes).save(path)  # 'b' uncovered
    back = Selection.load(path)
    assert back.matching == notes and back.explain()[0]["match"]["reason"] == "why 0"
    assert back.uncovered_reason(1) == "'b' matched 'x', a hypernym: no labelled node at or below 'b'"


def test_model_scores_validation():
    with pytest.raises(ValueError, match="loss must be"):
        ModelScores("x", ["a"], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="columns of model 'a'"):
        ModelScores("x", ["a"], np.zeros((1, 3)), [np.zeros((4, 2))])


def test_expand_classes():
    sc = ModelScores("x", ["a"], np.array([[1.0, 2.0]]), [np.array([[1.0, 0.0], [0.0, 1.0]])])
    full = S.expand_classes(sc, [0, 2], 3)
    np.testing.assert_array_equal(full.loss, [[1.0, INF, 2.0]])
    np.testing.assert_array_equal(full.columns[0], [[1, 0, 0], [0, 0, 1]])


# --------------------------------------------------------------------------------------------------
# Label readers
# --------------------------------------------------------------------------------------------------

NODES = ["n00000001", "n00000002", "n00000003"]


def test_dict_labels_shared_index_and_pairs():
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    b = np.arange(9, dtype=np.float32).reshape(3, 3)
    r = DictLabels({"a": a, "b": (b, NODES[::-1])}, node_wnids=NODES)
    assert r.model_ids() == ["a", "b"] and r.num_heads("b") == 3
    np.testing.assert_array_equal(r.read("a", ["n00000003", "n00000001"]), a[[2, 0]])
    np.testing.assert_array_equal(r.read("b", ["n00000003"]), b[[0]])
    subs = S.label_submatrices(r, ["a", "b"], ["n00000002", "n00000003"])
    np.testing.assert_array_equal(subs[0], a[[1, 2]].T)
    assert subs[1].shape == (3, 2)


def test_label_reader_errors():
    r = DictLabels({"a": np.zeros((3, 2))}, node_wnids=NODES)
    with pytest.raises(KeyError, match="model 'a' has no label rows for wnids \\['n09999999'\\]"):
        r.read("a", ["n09999999"])
    with pytest.raises(KeyError, match="no labels for model 'zz'"):
        r.read("zz", NODES)
    with pytest.raises(ValueError, match="pass node_wnids"):
        DictLabels({"a": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="2 rows but its wnid index has 3"):
        DictLabels({"a": np.zeros((2, 2))}, node_wnids=NODES)
    with pytest.raises(ValueError, match="not finite at wnids \\['n00000002'\\]"):
        S.label_submatrices(DictLabels({"m": np.array([[0.0], [np.nan], [1.0]])}, NODES), ["m"], NODES)
    with pytest.raises(TypeError, match="LabelStore"):
        S.as_label_reader([1, 2, 3])

    class Store:  # duck-typed LabelStore is passed through
        def model_ids(self):
            return ["s"]

        def read(self, model_id, wnids):
            return np.ones((len(wnids), 4), np.float32)

    store = Store()
    assert S.as_label_reader(store) is store
    assert S.label_submatrices(store, ["s"], NODES[:2])[0].shape == (4, 2)


# --------------------------------------------------------------------------------------------------
# CHCO plumbing (stand-in solver) and the real solver
# --------------------------------------------------------------------------------------------------


def _stand_in_solver(calls):
    """Private stand-in for chco.solve_batch: loss[m, c] = -S_m[0, c] (head 0's label), X = identity."""

    def solve_batch(S_list, *, method, tol, chunk_size, model_ids, progress, **kw):
        calls.append(dict(method=method, tol=tol, model_ids=list(model_ids), shapes=[s.shape for s in S_list], **kw))
        loss = np.stack([-s[0] for s in S_list])
        X = [np.eye(s.shape[0], s.shape[1], dtype=np.float32) for s in S_list]
        return SimpleNamespace(X=X, loss=loss, converged=np.ones(len(S_list), bool))

    return solve_batch


def test_select_experts_plumbing_with_unmatched_classes():
    # rows: nodes n1, n2, n3; column 0 = head 0.
    labels = {
        "weak": np.array([[0.5, 0.0, 0.0], [0.2, 0.0, 0.0], [0.9, 0.0, 0.0]]),
        "strong": np.array([[2.0, 0.0, 0.0, 0.0], [0.1, 0.0, 0.0, 0.0], [0.3, 0.0, 0.0, 0.0]]),
    }
    calls = []
    wnids = ["n00000003", None, "n00000001", "n00000002"]
    sel = select_experts(labels, wnids, k=2, beta=-0.3, node_wnids=NODES, class_names=list("wxyz"),
                         solver=_stand_in_solver(calls), progress=False, max_iter=7)
    # matched classes 0, 2, 3 -> nodes n3, n1, n2
    assert calls[0]["shapes"] == [(3, 3), (4, 3)] and calls[0]["max_iter"] == 7
    assert calls[0]["model_ids"] == ["weak", "strong"]
    np.testing.assert_allclose(sel.loss, [[-0.9, INF, -0.5, -0.2], [-0.3, INF, -2.0, -0.1]])
    # class 0: -0.9 and -0.3 (= beta, inclusive); class 2: strong first; class 3: both above beta.
    assert sel.experts == ((0, 1), (), (1, 0), ())
    assert sel.uncovered == [1, 3]
    np.testing.assert_array_equal(sel.columns["weak"], [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    assert sel.columns["strong"].shape == (4, 4) and not sel.columns["strong"][:, 1].any()


def test_select_experts_degenerate_tasks():
    labels = {"a": np.zeros((3, 2))}
    with pytest.warns(RuntimeWarning, match="CHCO needs at least 2"):
        sel = select_experts(labels, ["n00000001", None], node_wnids=NODES, progress=False)
    assert sel.uncovered == [0, 1]


def test_select_experts_with_real_chco():
    chco = pytest.importorskip("mll_jax.chco")
    rng = np.random.default_rng(0)
    nodes = [f"n{i:08d}" for i in range(6)]
    good = np.full((6, 5), -2.0)
    good[np.arange(4), np.arange(4)] = 6.0  # heads 0..3 fire on nodes 0..3 only
    labels = {
        "noise": rng.normal(size=(6, 7)),
        "good": good + 0.1 * rng.normal(size=(6, 5)),
        "flat": np.zeros((6, 3)),
    }
    wnids = [nodes[3], nodes[1], None, nodes[0], nodes[2]]
    sel = select_experts(labels, wnids, k=2, beta=1.0, node_wnids=nodes, progress=False)
    matched = [0, 1, 3, 4]
    subs = S.label_submatrices(DictLabels(labels, nodes), list(labels), [wnids[c] for c in matched])
    ref = chco.solve_batch(subs, model_ids=list(labels), progress=False)
    np.testing.assert_allclose(sel.loss[:, matched], ref.loss, rtol=1e-5, atol=1e-6)
    assert np.all(np.isinf(sel.loss[:, 2]))
    # The flat model cannot tell classes apart: Q[c', c] is the same for every c', so by the loss definition
    # L_c = -log q - log(1 - q) >= 2 log 2 > beta.  The aligned model is nearly perfect.
    assert np.all(sel.loss[2, matched] >= 2 * math.log(2) - 1e-4)
    assert np.all(sel.loss[1, matched] < 0.1)
    for c in matched:
        assert sel.expert_ids(c)[0] == "good"
        assert "flat" not in sel.expert_ids(c)
    assert sel.uncovered == [2]
    # the aligned model's column for class c puts (full) weight on the head of c's node, none on the others
    # that fire on other classes' nodes (head 4 fires nowhere, so its weight is not determined)
    head = {0: 3, 1: 1, 3: 0, 4: 2}
    for c, h in head.items():
        col = sel.columns["good"][:, c]
        assert col[h] > 0.99
        assert np.all(col[[g for g in head.values() if g != h]] < 0.01)


def test_select_experts_reads_a_label_store(tmp_path):
    labelling = pytest.importorskip("mll_jax.labelling")
    rng = np.random.default_rng(3)
    rows = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=(3, 2))}
    store = labelling.LabelStore(tmp_path / "labels")
    for m, r in rows.items():
        store.commit(m, NODES, r)
    wnids = ["n00000002", "n00000003", "n00000001"]
    from_store = select_experts(store, wnids, k=1, solver=_stand_in_solver([]), progress=False)
    from_dict = select_experts(rows, wnids, k=1, node_wnids=NODES, solver=_stand_in_solver([]), progress=False)
    assert set(from_store.model_ids) == {"a", "b"}
    order = [from_dict.model_ids.index(m) for m in from_store.model_ids]
    np.testing.assert_allclose(from_store.loss, from_dict.loss[order], rtol=1e-6)
    # stand-in loss = -(head 0 label of the class's node)
    np.testing.assert_allclose(from_store.loss[from_store.model_ids.index("a")], -rows["a"][[1, 2, 0], 0], rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Scorer registry and the distributed CHCO scorer
# --------------------------------------------------------------------------------------------------


def test_builtin_scorers_are_registered_by_the_registry_alone():
    """The five built-in scorers exist as soon as the registry is imported, whatever else was imported."""
    assert S.scorers() == sorted(SCORERS)
    assert [(s.name, s.uses_beta, s.min_classes) for s in S.registry.BUILTIN_SCORERS] == [
        ("chco", True, 2), ("random", False, 1), ("heu", True, 2), ("logme", False, 1), ("leep", False, 1)]
    code = ("from mll_jax.selection.registry import scorers, get_scorer; "
            "print(scorers(), get_scorer('heu').uses_beta)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"{sorted(SCORERS)} True"
    with pytest.raises(ValueError, match="unknown scorer 'oracle'; available: \\['chco', 'heu'"):
        S.get_scorer("oracle")
    with pytest.raises(ValueError, match="already registered"):
        S.register_scorer("chco", lambda task: None)


def test_chco_scores_distributed_with_one_process_is_chco_scores():
    rng = np.random.default_rng(11)
    S_list = [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(6, 3)).astype(np.float32)]
    ids = ["a", "b"]
    ref = S.chco_scores(S_list, ids, progress=False)
    got = S.chco_scores_distributed(S_list, ids, progress=False)
    assert got.method == "chco" and got.model_ids == ("a", "b")
    np.testing.assert_array_equal(got.loss, ref.loss)
    for x, y in zip(got.columns, ref.columns):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(got.info["iterations"], ref.info["iterations"])


def test_explain_ranks_heads_by_contribution_on_the_node_data(tmp_path):
    """explain() ranks a predictor's heads by X[h, c] * softmax(S)[h, c] (hand-computed), not by weight: a head
    with full weight but no mass on the class's node comes after the heads that carry the node."""
    nodes = ["n00000001", "n00000002"]
    # one model, 4 heads; node 1: heads 0 and 1 carry the mass; node 2: head 3
    L = np.array([[3.0, 2.0, -5.0, -5.0], [-5.0, -5.0, -5.0, 4.0]])
    labels = {"m": L}
    X = np.array([[1.0, 0.0], [0.5, 0.0], [1.0, 0.0], [0.0, 1.0]])  # head 2: weight 1, no mass on node 1
    scores = ModelScores("chco", ("m",), np.array([[0.1, 0.1]]), (X,))
    sel = select(scores, k=1, beta=None, class_names=["a", "b"], wnids=nodes)
    sel = S.fill_columns(sel, DictLabels(labels, nodes))
    P = np.exp(L.T - L.T.max(axis=0)) / np.exp(L.T - L.T.max(axis=0)).sum(axis=0)
    np.testing.assert_allclose(sel.head_mass["m"], P, rtol=1e-6)
    heads, n90 = sel.head_contributions("m", 0)
    contrib = X[:, 0] * P[:, 0]
    assert [h["head"] for h in heads] == [0, 1, 2]  # by contribution; weight order would put head 2 second
    np.testing.assert_allclose([h["contribution"] for h in heads], contrib[[0, 1, 2]], rtol=1e-6)
    np.testing.assert_allclose([h["share"] for h in heads], contrib[[0, 1, 2]] / contrib.sum(), rtol=1e-6)
    # head 0 carries e^3 / (e^3 + 0.5 e^2 + ...) = 0.85 of the contribution: two heads are needed for 90%
    assert heads[0]["share"] < 0.9 < heads[0]["share"] + heads[1]["share"] and n90 == 2
    row = sel.explain()[0]["experts"][0]
    assert row["heads_90"] == 2 and row["heads"][0]["mass"] == pytest.approx(P[0, 0], rel=1e-6)
    # the head probabilities survive save / load; a selection without them falls back to weight order
    sel.save(tmp_path / "s.npz")
    again = Selection.load(tmp_path / "s.npz")
    assert again.explain() == sel.explain()
    old = replace(sel, head_mass={})
    assert [h["head"] for h in old.head_contributions("m", 0)[0]] == [0, 2, 1]


@pytest.mark.parametrize("scorer", ["random", "logme"])
def test_a_single_matched_class_gets_argmax_columns(scorer):
    """A task where only one class matched a node: scorers that need no second class still select experts for it,
    and its columns are argmax ones (CHCO's loss needs a class to contrast with)."""
    nodes = ["n00000001", "n00000002"]
    L = np.array([[3.0, 0.0, -1.0], [0.0, 2.0, 5.0]])
    labels = DictLabels({"m": L}, nodes)

    def node_data(model_ids, wnids):
        return [np.array([[3.0, 0.0, -1.0], [2.5, 0.1, -1.0]])], np.array([0, 0])

    sel = S.select_models(labels, ["n00000001", None], scorer=scorer, k=1, beta=None, class_names=["a", "b"],
                          node_data=node_data)
    assert sel.experts == ((0,), ())
    np.testing.assert_array_equal(sel.columns["m"], [[1, 0], [0, 0], [0, 0]])
