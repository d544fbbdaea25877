"""The CHCO-style VLM baseline (mll_jax.vlm.expert_style): hand-computed expert-style labels of two VLMs with
fixed 2-d embeddings over three nodes (+ Eq. 2 smoothing to their WordNet hypernyms), and the selection / reuse
against a direct mll_jax.chco computation and a numpy ensemble."""

import numpy as np
import pytest

from mll_jax import chco
from mll_lab import fashion_mnist as fdata
from mll_jax.reuse import chco_reuse_scores
from mll_jax.sdag import SDAG
from mll_jax.vlm import expert_style as es
from mll_jax.vlm.labels import VLMLabelStore, label_vlm, node_logits, node_text_embeddings

SANDAL, SNEAKER, BOOT = (next(c.wnid for c in fdata.CLASS_SYNSETS if c.label == i) for i in (5, 7, 9))
E = {0: (1.0, 0.0), 1: (0.6, 0.8), 2: (0.0, 1.0), 3: (0.8, 0.6)}  # image embeddings, by the image's pixel value
IMAGES = {SANDAL: [0, 1], SNEAKER: [2], BOOT: [1, 3]}  # node -> the embedding ids of its images
TEXTS = {"A": {"sandal": (1.0, 0.0), "gym shoe": (0.0, 1.0), "boot": (0.6, 0.8)},
         "B": {"sandal": (0.0, 1.0), "gym shoe": (1.0, 0.0), "boot": (0.8, 0.6)}}
# Eq. 1 by hand: 100 * mean over the node's images of cos(image, text(head)); heads (sandal, gym shoe, boot)
# A: sandal (1,0),(.6,.8) -> [.8 .4 .8]; gym shoe (0,1) -> [0 1 .8]; boot (.6,.8),(.8,.6) -> [.7 .7 .98]
# B: sandal -> [(0+.8)/2, (1+.6)/2, (.8+.96)/2]; gym shoe -> [1 0 .6]; boot -> [(.8+.6)/2, (.6+.8)/2, (.96+1)/2]
HAND = {"A": {SANDAL: [80, 40, 80], SNEAKER: [0, 100, 80], BOOT: [70, 70, 98]},
        "B": {SANDAL: [40, 80, 88], SNEAKER: [100, 0, 60], BOOT: [70, 70, 98]}}


class FixedVLM:
    """A VLM with fixed unit embeddings: an image's embedding is E[its pixel value], a node text's is looked up
    by the node name before the colon."""

    logit_scale = 10.0  # not used by the expert-style labels (they use scale * cos, scale = 100)

    def __init__(self, name):
        self.model_id = f"vlm-{name}"
        self.fingerprint = name
        self.texts = TEXTS[name]

    def prompt(self, c):
        return c

    def encode_images(self, images):
        return np.array([E[int(im.reshape(-1)[0])] for im in np.asarray(images)], np.float32)

    def encode_text(self, texts):
        return np.array([self.texts[t.split(":")[0]] for t in texts], np.float32)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    g = SDAG.from_wnids([SANDAL, SNEAKER, BOOT], close_hypernyms=True)
    for w, ids in IMAGES.items():
        g.set_images(w, np.stack([np.full((28, 28), i, np.uint8) for i in ids]))
    store = VLMLabelStore(tmp_path_factory.mktemp("vlm_labels"))
    vlms = [FixedVLM("A"), FixedVLM("B")]
    labels = {v.model_id: label_vlm(store, g, v) for v in vlms}
    return g, store, vlms, labels


def _hand(name, heads, nodes):
    col = [[SANDAL, SNEAKER, BOOT].index(h) for h in heads]
    return np.array([[HAND[name][n][j] for j in col] for n in nodes], np.float32)


def test_expert_style_labels_by_hand(labelled):
    g, store, vlms, labels = labelled
    for v, name in zip(vlms, "AB"):
        lab = labels[v.model_id]
        raw = es.expert_style_labels(lab, node_logits(store, lab))  # no smoothing: the labelled nodes
        assert raw.heads == lab.nodes and raw.wnids == lab.nodes and raw.delta is None
        np.testing.assert_allclose(raw.rows, _hand(name, lab.nodes, lab.nodes), rtol=0, atol=1e-4)
        # Eq. 2 over the WordNet hypernyms: shoe (no images) = mean(sandal, gym shoe); footwear (no images) =
        # mean(boot, shoe); every ancestor above has one labelled child: = footwear.
        sm = es.expert_style_labels(lab, node_logits(store, lab), g, delta=0.5)
        h = {w: _hand(name, lab.nodes, [w])[0] for w in (SANDAL, SNEAKER, BOOT)}
        shoe = (h[SANDAL] + h[SNEAKER]) / 2
        footwear = (h[BOOT] + shoe) / 2
        by_name = {g.name(w): r for w, r in zip(sm.wnids, sm.rows)}
        assert set(by_name) == {g.name(w) for w in g.nodes}
        for n, want in (("sandal", h[SANDAL]), ("gym shoe", h[SNEAKER]), ("boot", h[BOOT]), ("shoe", shoe),
                        ("footwear", footwear), ("entity", footwear)):
            np.testing.assert_allclose(by_name[n], want, rtol=0, atol=1e-4, err_msg=f"{v.model_id} {n}")
        # the scale multiplies the labels; the raw Eq. 1 mean is a pure function of the node logits
        s10 = es.expert_style_labels(lab, node_logits(store, lab), scale=10.0)
        np.testing.assert_allclose(s10.rows, raw.rows / 10, rtol=1e-6, atol=1e-5)
    lg = np.array([[1.0, 2.0], [3.0, 5.0], [7.0, 9.0], [100.0, 100.0]])
    r, has = es.raw_node_labels(lg, np.array([0, 0, 2, -1]), 3)  # -1: padding, dropped
    np.testing.assert_allclose(np.asarray(r), [[2, 3.5], [0, 0], [7, 9]])
    np.testing.assert_array_equal(np.asarray(has), [True, False, True])


def test_expert_style_label_errors(labelled):
    g, store, vlms, labels = labelled
    lab = labels["vlm-A"]
    cos, idx = node_logits(store, lab)
    with pytest.raises(ValueError, match="node_logits"):
        es.expert_style_labels(lab, (cos[:, :2], idx))
    with pytest.raises(ValueError, match="scale"):
        es.expert_style_labels(lab, (cos, idx), scale=0.0)
    with pytest.raises(ValueError, match="not in the smoothing SDAG"):
        es.expert_style_labels(lab, (cos, idx), SDAG.from_wnids([SANDAL, BOOT]))


def _softmax(z):
    z = z - z.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


def test_chco_selection_and_reuse_against_direct_chco(labelled):
    g, store, vlms, labels = labelled
    esl = {m: es.expert_style_labels(labels[m], node_logits(store, labels[m]), g) for m in labels}
    names, wnids = ["sandal", "sneaker", "boot"], [SANDAL, SNEAKER, BOOT]
    # direct: CHCO per VLM on S = its labels at the matched nodes, transposed (heads x classes)
    direct = {m: chco.solve(esl[m].read(wnids).T, tol=1e-7) for m in esl}
    loss = np.stack([np.asarray(direct[m].loss) for m in esl])
    sel = es.select_vlms_chco(names, esl, wnids, k=1, beta=None, tol=1e-7)
    np.testing.assert_allclose(sel.loss, loss, rtol=1e-3, atol=1e-3)
    assert sel.method == "chco" and list(sel.model_ids) == list(esl)
    assert [e for e in sel.experts] == [(int(np.argmin(loss[:, c])),) for c in range(3)]
    for m in sel.used_model_ids:  # the combination X maps the node-text heads to the classes
        Xd = np.asarray(direct[m].X)
        assert np.asarray(sel.columns[m]).shape == (3, 3)
        np.testing.assert_allclose(chco.losses(esl[m].read(wnids).T, sel.columns[m]), loss[list(esl).index(m)],
                                   atol=1e-3)
        np.testing.assert_allclose(chco.objective(esl[m].read(wnids).T, sel.columns[m]),
                                   chco.objective(esl[m].read(wnids).T, Xd), rtol=1e-4, atol=1e-4)
    # beta between the two VLMs' losses of a class keeps only the better one; under no loss: uncovered
    c = int(np.argmax(np.abs(loss[0] - loss[1])))
    lo, hi = sorted(loss[:, c])
    sel2 = es.select_vlms_chco(names, esl, wnids, k=2, beta=float((lo + hi) / 2), tol=1e-7)
    assert sel2.experts[c] == (int(np.argmin(loss[:, c])),)
    sel3 = es.select_vlms_chco(names, esl, wnids, k=2, beta=float(loss.min() / 2), tol=1e-7)
    assert not sel3.covered.any()
    # a class matched to no node is uncovered; its columns are zero
    sel4 = es.select_vlms_chco(names, esl, [SANDAL, None, BOOT], k=2, beta=None, tol=1e-7)
    assert sel4.covered.tolist() == [True, False, True]
    assert all(np.all(np.asarray(x)[:, 1] == 0) for x in sel4.columns.values())

    # reuse: Eq. 12-13 on the head logits (100 * cos against the stored node-text embeddings), numpy reference
    sel_k2 = es.select_vlms_chco(names, esl, wnids, k=2, beta=None, tol=1e-7)
    imgs = np.stack([np.full((28, 28), i, np.uint8) for i in (0, 1, 2, 3, 1)])
    hl = {v.model_id: es.vlm_head_logits(v, imgs, store, labels[v.model_id]) for v in vlms}
    for v in vlms:
        txt = node_text_embeddings(store, labels[v.model_id])
        np.testing.assert_allclose(hl[v.model_id], 100 * v.encode_images(imgs) @ txt.T, atol=1e-4)
    ref = np.zeros((len(imgs), 3))
    wsum = np.zeros((len(imgs), 3))
    for m in sel_k2.used_model_ids:
        p = _softmax(hl[m].astype(np.float64))
        conf = 1 - (-(p * np.log(np.where(p > 0, p, 1))).sum(1)) / np.log(3)
        mask = sel_k2.mask([m])[0]
        ref += (conf[:, None] * (p @ np.asarray(sel_k2.columns[m], np.float64))) * mask
        wsum += conf[:, None] * mask
    ref = ref / wsum
    got = chco_reuse_scores(sel_k2, hl)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(KeyError, match="head logits missing"):
        chco_reuse_scores(sel_k2, {"vlm-A": hl["vlm-A"]})
