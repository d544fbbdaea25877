import json
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import numpy as np
import pytest

from mll_jax.labelling import (LabelStore, LabellingError, NonFiniteLogitsError, dag_index, label_models,
                               smooth_labels)
from mll_jax.sdag import SDAG

DOG, TOY_DOG, CHIHUAHUA, MALTESE, LAPDOG, PEKINESE = (
    "n02084071", "n02085374", "n02085620", "n02085936", "n02085272", "n02086079")
A = np.array([1.0, 2.0, -1.0])
B = np.array([0.0, -1.0, 3.0])


class LinearExpert:
    """logits(x) = mean_pixel(x) * A + B, so a node's Eq. 1 label is (mean pixel value) * A + B."""

    def __init__(self, model_id="lin", fail_on_call=None, bad_value_at=None, bad=np.nan, num_heads=3):
        self.model_id = model_id
        self.num_heads = num_heads
        self.head_names = ["a", "b", "c"][:num_heads]
        self.calls = 0
        self.fail_on_call = fail_on_call
        self.bad_value_at = bad_value_at  # mean pixel value that produces NaN/inf logits
        self.bad = bad
        self.params = {"A": A[:num_heads], "B": B[:num_heads]}  # what its logits are made of (fingerprinted, no probe)

    def logits(self, images):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise RuntimeError("simulated crash")
        v = images.reshape(len(images), -1).astype(np.float64).mean(axis=1)
        out = (v[:, None] * A[None, :] + B[None, :]).astype(np.float32)
        if self.bad_value_at is not None:
            out[v == self.bad_value_at, 0] = self.bad
        return out[:, :self.num_heads]


def imgs(*values):
    return np.asarray(values, dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), np.uint8)


@pytest.fixture
def tiny(wn):
    """dog -> {toy dog, lapdog}; toy dog -> {chihuahua, maltese, pekinese}; custom X under toy dog AND lapdog.

    Own images (mean pixel values): toy dog 10, 20; chihuahua 4; maltese 1, 2, 3; X 30, 50.
    dog, lapdog, pekinese have none.
    """
    g = SDAG.from_wnids([DOG, TOY_DOG, LAPDOG, CHIHUAHUA, MALTESE, PEKINESE], wn=wn)
    x = g.add_node("robo pup", description="toy robot dog", hypernyms=[TOY_DOG, LAPDOG])
    g.set_images(TOY_DOG, imgs(10, 20))
    g.set_images(CHIHUAHUA, imgs(4))
    g.set_images(MALTESE, imgs(1, 2, 3))
    g.set_images(x, imgs(30, 50))
    assert g.parents(TOY_DOG) == [DOG] and g.parents(LAPDOG) == [DOG] and set(g.parents(x)) == {TOY_DOG, LAPDOG}
    return g, x


def test_eq1_eq2_hand_computation(tmp_path, tiny):
    g, x = tiny
    store = LabelStore(tmp_path / "labels")
    summary = label_models(g, [LinearExpert()], store, delta=0.3, progress=False)
    assert summary == {"lin": {"labelled": 6, "computed": 4, "cached": 0}}
    # Hand computation with delta = 0.3 (labels are affine in the mean pixel value v: label = v*A + B):
    #  leaves: chihuahua 4, maltese 2, X 40 (own only); pekinese: no data -> unlabelled
    #  toy dog: 0.3 * 15 + 0.7 * mean(4, 2, 40) = 4.5 + 0.7 * 46/3
    #  lapdog (no own data): its only labelled child X -> 40
    #  dog (no own data): mean(toy dog, lapdog)
    toy = 0.3 * 15 + 0.7 * (4 + 2 + 40) / 3
    v = {CHIHUAHUA: 4.0, MALTESE: 2.0, x: 40.0, TOY_DOG: toy, LAPDOG: 40.0, DOG: (toy + 40.0) / 2}
    assert abs(v[DOG] - 27.616666) < 1e-5
    assert store.model_ids() == ["lin"] and store.num_heads("lin") == 3
    assert set(store.nodes("lin")) == set(v) and PEKINESE not in store.nodes("lin")
    order = [DOG, x, MALTESE, LAPDOG, TOY_DOG, CHIHUAHUA]
    expect = np.stack([v[w] * A + B for w in order]).astype(np.float32)
    np.testing.assert_allclose(store.read("lin", order), expect, rtol=1e-6, atol=1e-5)
    with pytest.raises(KeyError, match="no label for node"):
        store.read("lin", [PEKINESE])
    info = store.info("lin")
    assert info["delta"] == 0.3 and info["head_names"] == ["a", "b", "c"]


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_mean_probability_labels_hand_computation(tmp_path, tiny):
    """``statistic="mean_probability"``: each node's mean softmax row, smoothed by Eq. 2 (the same rules), stored as
    its log; raw rows of one statistic never serve the other, and switching is no model change."""
    g, x = tiny
    store = LabelStore(tmp_path / "labels")
    p = {v: _softmax(v * A + B) for v in (1, 2, 3, 4, 10, 20, 30, 50)}  # per-image softmax rows (mean pixel v)
    own = {TOY_DOG: (p[10] + p[20]) / 2, CHIHUAHUA: p[4], MALTESE: (p[1] + p[2] + p[3]) / 3, x: (p[30] + p[50]) / 2}
    toy = 0.3 * own[TOY_DOG] + 0.7 * (own[CHIHUAHUA] + own[MALTESE] + own[x]) / 3
    want = {CHIHUAHUA: own[CHIHUAHUA], MALTESE: own[MALTESE], x: own[x], TOY_DOG: toy, LAPDOG: own[x],
            DOG: (toy + own[x]) / 2}
    order = [DOG, x, MALTESE, LAPDOG, TOY_DOG, CHIHUAHUA]
    expect = np.log(np.maximum(np.stack([want[w] for w in order]), 1e-30))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "model changed" warning when only the statistic changes
        logit = label_models(g, [LinearExpert()], store, delta=0.3, progress=False)
        first = store.read("lin", order)
        prob = label_models(g, [LinearExpert()], store, delta=0.3, progress=False, statistic="mean_probability")
        got = store.read("lin", order)
        again = label_models(g, [LinearExpert()], store, delta=0.3, progress=False)
    assert logit == prob == again == {"lin": {"labelled": 6, "computed": 4, "cached": 0}}
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-4)
    assert np.isclose(np.exp(got[2]).sum(), 1.0, atol=1e-5) and got.min() < -60  # the floor: log(1e-30) = -69
    np.testing.assert_array_equal(store.read("lin", order), first)
    assert store.info("lin")["statistic"] == "mean_logit"
    with pytest.raises(ValueError, match="label statistic must be one of"):
        label_models(g, [LinearExpert()], store, progress=False, statistic="median")


def test_smooth_labels_matches_sequential_reference(wn):
    """The jitted synchronous form equals the plain reverse-topological loop on a WordNet subtree with
    multiple inheritance, random data masks, and is vmappable over models."""
    g = SDAG.from_roots(["n05566097"], wn=wn)  # digit: little finger/toe have two parents
    idx = dag_index(g)
    assert idx.height == 2
    n, h = len(g), 4
    rng = np.random.default_rng(0)
    children = {i: [g.index(c) for c in g.children(w)] for i, w in enumerate(g.nodes)}

    def reference(own, has_own, delta):
        s = np.zeros_like(own, dtype=np.float64)
        has = np.zeros(n, bool)
        for i in range(n - 1, -1, -1):
            kids = [k for k in children[i] if has[k]]
            if has_own[i] and kids:
                s[i] = delta * own[i] + (1 - delta) * np.mean([s[k] for k in kids], axis=0)
            elif has_own[i]:
                s[i] = own[i]
            elif kids:
                s[i] = np.mean([s[k] for k in kids], axis=0)
            has[i] = has_own[i] or bool(kids)
        return s, has

    owns, masks = [], []
    for trial in range(4):
        own = rng.normal(size=(n, h)).astype(np.float32)
        has_own = rng.random(n) < 0.5
        delta = [0.0, 0.25, 0.7, 1.0][trial]
        s, has = smooth_labels(own, has_own, idx.edge_parent, idx.edge_child, delta, idx.height)
        s_ref, has_ref = reference(own, has_own, delta)
        np.testing.assert_array_equal(np.asarray(has), has_ref)
        np.testing.assert_allclose(np.asarray(s)[has_ref], s_ref[has_ref], rtol=1e-5, atol=1e-6)
        assert np.all(np.asarray(s)[~has_ref] == 0)
        owns.append(own)
        masks.append(has_own)
    # fewer updates than the height is NOT exact (the iteration count matters)
    s1, _ = smooth_labels(owns[1], masks[1] | True, idx.edge_parent, idx.edge_child, 0.25, 1)
    s_ref, _ = reference(owns[1], masks[1] | True, 0.25)
    assert not np.allclose(np.asarray(s1), s_ref, atol=1e-4)
    batched = jax.vmap(smooth_labels, in_axes=(0, 0, None, None, None, None))(
        np.stack(owns), np.stack(masks), idx.edge_parent, idx.edge_child, 0.25, idx.height)
    single = smooth_labels(owns[2], masks[2], idx.edge_parent, idx.edge_child, 0.25, idx.height)
    np.testing.assert_allclose(np.asarray(batched[0][2]), np.asarray(single[0]), rtol=1e-6)


def test_resume_after_crash_is_identical_and_skips_done_nodes(tmp_path, tiny):
    g, _ = tiny
    clean = LabelStore(tmp_path / "clean")
    full = LinearExpert()
    label_models(g, [full], clean, progress=False)
    assert full.calls == 1  # the 8 images of the 4 nodes with data are packed into one batch
    label_models(g, [full], LabelStore(tmp_path / "one"), progress=False, batch_size=1)
    assert full.calls == 1 + 8  # batch_size=1: one call per image
    store = LabelStore(tmp_path / "resumed")
    crashing = LinearExpert(fail_on_call=4)  # one image per call: the first two nodes (2 + 1 images) finish
    with pytest.raises(RuntimeError, match="simulated crash"):
        label_models(g, [crashing], store, progress=False, flush_every=16, batch_size=1)
    assert store.model_ids() == []  # nothing committed by the crashed run
    again = LinearExpert()
    summary = label_models(g, [again], store, progress=False, batch_size=1)
    assert summary["lin"] == {"labelled": 6, "computed": 2, "cached": 2}
    assert again.calls == 8 - 3  # only the images of the two unfinished nodes
    n1, l1 = clean.read_all("lin")
    n2, l2 = store.read_all("lin")
    assert n1 == n2 and np.array_equal(l1, l2)
    # nothing to do on a third run; raw chunks were compacted into one file
    third = LinearExpert()
    assert label_models(g, [third], store, progress=False)["lin"]["computed"] == 0 and third.calls == 0
    raw_files = list((store.model_dir("lin") / "raw").iterdir())
    assert len(raw_files) == 1


def test_only_new_nodes_are_computed_after_sdag_grows(tmp_path, tiny):
    g, x = tiny
    store = LabelStore(tmp_path / "labels")
    label_models(g, [LinearExpert()], store, delta=0.3, progress=False)
    g.set_images(PEKINESE, imgs(8, 8, 8))  # a node gains data ...
    tench = g.add_node("n01440764", images=imgs(100))  # ... and a new root arrives
    e = LinearExpert()
    summary = label_models(g, [e], store, delta=0.3, progress=False)
    assert e.calls == 1 and summary["lin"] == {"labelled": 8, "computed": 2, "cached": 4}
    toy = 0.3 * 15 + 0.7 * (4 + 2 + 8 + 40) / 4  # pekinese now counts among toy dog's children
    got = store.read("lin", [TOY_DOG, DOG, tench, PEKINESE])
    want = np.stack([v * A + B for v in (toy, (toy + 40) / 2, 100.0, 8.0)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_partial_row_reads(tmp_path, tiny):
    g, x = tiny
    store = LabelStore(tmp_path / "labels")
    label_models(g, [LinearExpert("m1"), LinearExpert("m/2 with spaces", num_heads=2)], store, progress=False)
    assert store.model_ids() == ["m/2 with spaces", "m1"] and store.num_heads("m/2 with spaces") == 2
    nodes, full = store.read_all("m1")
    assert nodes == [w for w in g.nodes if w != PEKINESE]  # rows in topological order
    want = [CHIHUAHUA, DOG, CHIHUAHUA, x]
    np.testing.assert_array_equal(store.read("m1", want), full[[nodes.index(w) for w in want]])
    assert store.read("m1", []).shape == (0, 3)
    assert store.read("m/2 with spaces", [DOG]).shape == (1, 2)
    # stored one fixed-size record per row (3 float32 + a CRC-32): a read touches only the requested rows
    meta = json.loads((store.model_dir("m1") / "meta.json").read_text())
    assert meta["format"] == "mll_jax.labels/2" and meta["dtype"] == "float32"
    assert (store.model_dir("m1") / (meta["checkpoint"] + ".rows")).stat().st_size == len(nodes) * (3 * 4 + 4)
    # a second store object on the same directory sees the same labels
    np.testing.assert_array_equal(LabelStore(tmp_path / "labels").read("m1", [x]), full[[nodes.index(x)]])
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        store.read("nope", [DOG])
    with pytest.raises(KeyError, match="unknown model"):
        store.nodes("nope")
    with pytest.raises(KeyError, match=r"no label for node\(s\) \['n99999999'\]"):
        store.read("m1", [DOG, "n99999999"])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_logits_error_leaves_store_intact(tmp_path, tiny, bad):
    g, x = tiny
    store = LabelStore(tmp_path / "labels")
    label_models(g, [LinearExpert("good"), LinearExpert("victim")], store, progress=False)
    before = {m: store.read_all(m) for m in store.model_ids()}
    broken = LinearExpert("victim", bad_value_at=2.0, bad=bad)  # mean pixel 2.0 = the maltese images
    g.set_images(CHIHUAHUA, imgs(5))  # forces recomputation of a node for the victim
    g.set_images(MALTESE, imgs(2, 2))
    with pytest.raises(NonFiniteLogitsError, match=rf"model 'fresh' .*non-finite.* node '{MALTESE}'"):
        label_models(g, [LinearExpert("fresh", bad_value_at=2.0, bad=bad)], store, progress=False)
    with pytest.raises(NonFiniteLogitsError, match=rf"model 'victim' .*non-finite.* node '{MALTESE}'"):
        label_models(g, [broken], store, progress=False)
    assert store.model_ids() == ["good", "victim"]  # "fresh" failed first: nothing committed for it
    for m, (nodes, arr) in before.items():
        n2, a2 = store.read_all(m)
        assert n2 == nodes and np.array_equal(a2, arr)
    # the store is still usable: relabel the victim with a fixed model; the failed run's means were dropped,
    # so both changed nodes (chihuahua, finished before the NaN, and maltese) are recomputed
    summary = label_models(g, [LinearExpert("victim")], store, progress=False)
    assert summary["victim"] == {"labelled": 6, "computed": 2, "cached": 2}
    np.testing.assert_allclose(store.read("victim", [CHIHUAHUA])[0], 5 * A + B, rtol=1e-6)


def test_bad_experts_and_arguments(tmp_path, tiny):
    g, _ = tiny
    store = LabelStore(tmp_path / "labels")

    class WrongShape(LinearExpert):
        def logits(self, images):
            return super().logits(images)[:, :2]

    with pytest.raises(LabellingError, match=r"model 'ws' returned logits of shape \(8, 2\)"):  # one packed batch
        label_models(g, [WrongShape("ws")], store, progress=False)
    with pytest.raises(ValueError, match="delta must lie in"):
        label_models(g, [LinearExpert()], store, delta=1.5, progress=False)
    with pytest.raises(ValueError, match="duplicate model ids"):
        label_models(g, [LinearExpert(), LinearExpert()], store, progress=False)
    empty = SDAG.from_wnids([DOG], wn=g.wn)
    with pytest.raises(ValueError, match="no SDAG node has images"):
        label_models(empty, [LinearExpert()], store, progress=False)
    assert store.model_ids() == []


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from mll_jax.labelling import LabelStore, label_models
    from mll_jax.sdag import SDAG

    class Killer:
        model_id, num_heads, head_names, fingerprint = "lin", 2, None, "killer-1"
        def __init__(self, kill_at):
            self.calls, self.kill_at = 0, kill_at
        def logits(self, images):
            self.calls += 1
            if self.calls == self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup code runs
            v = images.reshape(len(images), -1).mean(axis=1)
            return np.stack([v, -v], axis=1).astype(np.float32)

    g = SDAG.load(sys.argv[1])
    e = Killer(int(sys.argv[3]))
    s = label_models(g, [e], LabelStore(sys.argv[2]), progress=False, flush_every=3, batch_size=1)  # a call per image
    print("CALLS", e.calls, s["lin"]["computed"])
""")


def test_resume_after_sigkill(tmp_path, wn):
    g = SDAG.from_roots(["n03380867"], max_depth=1, wn=wn)  # footwear + 6 children
    for i, w in enumerate(g.nodes):
        g.set_images(w, imgs(i * 10 + 1))
    g.save(tmp_path / "sdag")
    script = tmp_path / "kill.py"
    script.write_text(_KILL_SCRIPT)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, str(script), str(tmp_path / "sdag"), str(tmp_path / "labels")]
    r = subprocess.run(args + ["6"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    assert LabelStore(tmp_path / "labels").model_ids() == []
    # 5 nodes finished before the kill; with flush_every=3 the first 3 were persisted
    r = subprocess.run(args + ["0"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "CALLS 4 4" in r.stdout
    store = LabelStore(tmp_path / "labels")
    v_root = 0.5 * 1 + 0.5 * np.mean([11, 21, 31, 41, 51, 61])
    np.testing.assert_allclose(store.read("lin", [g.nodes[0], g.nodes[3]]),
                               [[v_root, -v_root], [31, -31]], rtol=1e-6)
