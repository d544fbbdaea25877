"""The VLM path end to end on a tiny random-weight FlaxCLIP (from tests/test_clip_patch.py): labels over an SDAG,
selection, reuse; labelling resumed after SIGKILL gives identical labels; incremental relabelling."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("transformers")

from test_clip_patch import SIZE, tiny_clip_dir  # noqa: E402,F401  (fixture reused, not duplicated)

from mll_jax.vlm import core  # noqa: E402
from mll_jax.vlm.labels import LabelsMissingError, VLMLabelStore, label_vlm, node_logits, sdag_node_texts  # noqa: E402
from mll_jax.vlm.models import ClipVLM, VLM  # noqa: E402
from mll_jax.vlm.select import predict, reuse_scores, select_vlms, task_logits  # noqa: E402

WNIDS = ["n03595614", "n04489008", "n04021028", "n03236735", "n03057021"]  # jersey, trouser, pullover, dress, coat


def _sdag(wnids, n=6):
    from mll_jax.sdag import SDAG

    g = SDAG.from_wnids(wnids)
    rng = np.random.default_rng(0)
    for i, w in enumerate(wnids):
        g.set_images(w, rng.integers(0, 256, size=(n + i, SIZE, SIZE, 3), dtype=np.uint8))
    return g


@pytest.fixture(scope="module")
def vlms(tiny_clip_dir):
    a = ClipVLM.from_pretrained(str(tiny_clip_dir), model_id="clip-a", batch_size=8)
    b = ClipVLM.from_pretrained(str(tiny_clip_dir), model_id="clip-b", batch_size=8, template="{}")
    return a, b


def _hand_counts(vlm, g):
    nodes, texts = sdag_node_texts(g)
    txt = vlm.clip.encode_text(texts)
    out = np.zeros((len(nodes), 3))
    for i, v in enumerate(nodes):
        pred = np.argmax(vlm.clip.encode_images(g.images(v)) @ txt.T, 1)
        out[i, 0] += np.sum(pred == i)
        out[i, 1] += np.sum(pred != i)
        np.add.at(out[:, 2], pred[pred != i], 1)
    return out


def test_clip_labels_select_reuse_end_to_end(vlms, tmp_path):
    a, b = vlms
    assert isinstance(a, VLM) and a.fingerprint != b.fingerprint
    g = _sdag(WNIDS[:4])
    store = VLMLabelStore(tmp_path / "labels")
    labs = {v.model_id: label_vlm(store, g, v) for v in vlms}
    hand = _hand_counts(a, g)
    np.testing.assert_array_equal(labs["clip-a"].counts, hand)
    assert hand[:, 2].sum() == hand[:, 1].sum() and hand[:, :2].sum() == sum(g.num_images(w) for w in WNIDS[:4])
    assert 0 < hand[:, 0].sum() < hand[:, :2].sum()  # random weights: some right, some wrong -> not vacuous
    assert store.models() == ["clip-a", "clip-b"]
    np.testing.assert_array_equal(store.labels("clip-a").counts, hand)  # read back from disk

    classes = ["T-shirt", "trousers", "frock"]
    nodes = list(labs["clip-a"].nodes)
    rng = np.random.default_rng(1)
    node_emb = rng.normal(size=(4, 8)).astype(np.float32)
    class_emb = node_emb[[0, 1, 3]] + 0.1 * rng.normal(size=(3, 8)).astype(np.float32)
    sel = select_vlms(classes, labs, nodes, node_emb=node_emb, class_emb=class_emb, k=2)
    assert sel.chosen.shape == (3, 2) and set(sel.used_models) == {"clip-a", "clip-b"}
    # the class-level F1 agrees with the core functions applied by hand
    counts = np.stack([labs[m].counts for m in sel.model_ids])
    idx, w, _ = core.match_weights(class_emb, node_emb)
    np.testing.assert_allclose(sel.f1, core.f1_score(core.class_counts(counts, idx, w)), rtol=1e-6)
    assert set(sel.explain()) == set(classes)
    # task scope: counts recomputed from the stored embeddings, prediction among the matched nodes only
    nl = {m: node_logits(store, labs[m]) for m in labs}
    lg, lab_idx = nl["clip-a"]
    np.testing.assert_array_equal(np.asarray(core.node_counts(lg, lab_idx)), hand)  # same argmax as the labels
    sel_t = select_vlms(classes, labs, nodes, node_emb=node_emb, class_emb=class_emb, k=1, top=2, scope="task",
                        node_logits=nl)
    active = np.zeros(4, bool)
    active[sel_t.match_idx[sel_t.match_weights > 0]] = True
    cnt = np.stack([core.restricted_node_counts(nl[m][0], nl[m][1], active) for m in sel_t.model_ids])
    np.testing.assert_allclose(sel_t.f1, core.f1_score(core.class_counts(cnt, sel_t.match_idx, sel_t.match_weights)),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="node_logits"):
        select_vlms(classes, labs, nodes, node_emb=node_emb, class_emb=class_emb, scope="task")

    images = rng.integers(0, 256, size=(5, SIZE, SIZE, 3), dtype=np.uint8)
    logits = {m: task_logits(v, images, classes) for m, v in zip(sel.model_ids, vlms)}
    # task logits = logit_scale * cos(image, prompt), independently through ClipZeroShot.logits
    np.testing.assert_allclose(logits["clip-a"], a.clip.logits(images, classes), rtol=1e-5, atol=1e-5)
    p = {m: np.exp(x - x.max(1, keepdims=True)) for m, x in logits.items()}
    p = {m: x / x.sum(1, keepdims=True) for m, x in p.items()}
    ref = sum(p[m] / np.maximum(-(p[m] * np.log2(p[m])).sum(1, keepdims=True), 0.01) for m in p)  # k=2: both
    np.testing.assert_allclose(reuse_scores(sel, logits), ref, rtol=1e-4)
    np.testing.assert_array_equal(predict(sel, logits), ref.argmax(1))
    with pytest.raises(KeyError, match="missing"):
        reuse_scores(sel, {"clip-a": logits["clip-a"]})
    with pytest.raises(ValueError, match="duplicate"):
        select_vlms(["a", "a"], labs, nodes, node_emb=node_emb, class_emb=class_emb[:2])
    with pytest.raises(ValueError, match="k must be"):
        select_vlms(classes, labs, nodes, node_emb=node_emb, class_emb=class_emb, k=3)


_CHILD = textwrap.dedent("""
    import sys, time
    from mll_jax.sdag import SDAG
    from mll_jax.vlm.labels import VLMLabelStore, label_vlm
    from mll_jax.vlm.models import ClipVLM
    vlm = ClipVLM.from_pretrained(sys.argv[1], model_id="clip-a", batch_size=8)
    g = SDAG.load(sys.argv[2])
    def on_node(v):
        print("done", v, flush=True)
        time.sleep(0.5)
    label_vlm(VLMLabelStore(sys.argv[3]), g, vlm, on_node=on_node)
    print("finished", flush=True)
""")


def test_resume_after_kill_and_incremental(vlms, tiny_clip_dir, tmp_path):
    a, _ = vlms
    g = _sdag(WNIDS[:4])
    g.save(tmp_path / "sdag")
    store_dir = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tiny_clip_dir), str(tmp_path / "sdag"),
                             str(store_dir)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        seen = [proc.stdout.readline() for _ in range(2)]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert all(s.startswith("done") for s in seen), seen
    store = VLMLabelStore(store_dir)
    with pytest.raises(LabelsMissingError):
        store.labels("clip-a")  # killed before the counts were written
    done = []
    resumed = label_vlm(store, g, a, on_node=done.append)
    assert 1 <= len(done) <= 2  # only the nodes the killed run had not saved
    fresh = label_vlm(VLMLabelStore(tmp_path / "fresh"), g, a)
    np.testing.assert_array_equal(resumed.counts, fresh.counts)
    assert resumed.nodes == fresh.nodes and resumed.key == fresh.key

    # incremental: one new node costs one node's images; counts equal a fresh labelling of the new SDAG
    g.add_node(WNIDS[4], images=np.random.default_rng(5).integers(0, 256, (7, SIZE, SIZE, 3), dtype=np.uint8))
    done.clear()
    inc = label_vlm(store, g, a, on_node=done.append)
    assert done == [WNIDS[4]] and len(inc.nodes) == 5
    np.testing.assert_array_equal(inc.counts, label_vlm(VLMLabelStore(tmp_path / "fresh2"), g, a).counts)
    # a changed model (another fingerprint) is relabelled from scratch
    b2 = ClipVLM(a.clip, "clip-a", "other-fingerprint")
    done.clear()
    label_vlm(store, g, b2, on_node=done.append)
    assert len(done) == 5
