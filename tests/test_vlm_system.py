"""VLMs in the MLL system (issue 8): a model kind of the same hub, labelled by MLL.label() next to the experts,
served by MLL.classifier(models="vlms" | "both"); checked against the functional API (mll_jax.vlm.*) on the same
data, with the tiny random-weight FlaxCLIP of tests/test_clip_patch.py and a numpy toy expert."""

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from test_clip_patch import SIZE, tiny_clip_dir  # noqa: E402,F401  (fixture reused, not duplicated)

from mll_jax.config import MLLConfig  # noqa: E402
from mll_jax.selection import Selection  # noqa: E402
from mll_jax.system import MLL, Classifier, MLLError  # noqa: E402
from mll_jax.vlm.labels import VLMLabelStore, label_vlm  # noqa: E402
from mll_jax.vlm.models import ClipVLM  # noqa: E402
from mll_jax.vlm.select import predict, reuse_scores, select_vlms, task_logits  # noqa: E402
from mll_jax.vlm.system import BothClassifier, VLMClassifier  # noqa: E402

WNIDS = ["n03595614", "n04489008", "n04021028", "n03236735"]  # jersey, trouser, pullover, dress


class _ToyExpert:
    """Three heads (jersey, trouser, other) from the mean pixel: node i's images have values in [60 i, 60 i + 40),
    so the jersey and trouser nodes each have their own head and the pullover and dress nodes share "other"."""

    model_id, num_heads, head_names = "toy-expert", 3, ["jersey", "trouser", "other"]

    def logits(self, x):
        m = np.asarray(x, np.float32).reshape(len(x), -1).mean(1, keepdims=True)
        return (-((m - np.array([[20.0, 80.0, 170.0]])) ** 2) / 100.0).astype(np.float32)


def _images(i, n, seed):
    return np.random.default_rng(seed).integers(60 * i, 60 * i + 40, size=(n, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def system(tiny_clip_dir, tmp_path_factory):
    from mll_jax.sdag import SDAG

    g = SDAG.from_wnids(WNIDS)
    for i, w in enumerate(WNIDS):
        g.set_images(w, _images(i, 5 + i, i))
    root = tmp_path_factory.mktemp("vlm_sys") / "mll"
    toy = _ToyExpert()
    mll = MLL.open(root, sdag=g, config=MLLConfig(progress=False, k=1), text_cache=root.parent / "tc",
                   expert_wrapper=lambda mid, load: toy)
    mll.hub.register("toy-expert", "flax_module", num_heads=3, head_names=toy.head_names)
    assert mll.add_vlm(str(tiny_clip_dir), model_id="clip-a", batch_size=8) == "clip-a"
    assert mll.add_vlm(f"clip:{tiny_clip_dir}", model_id="clip-b", batch_size=8, template="{}") == "clip-b"
    summary = mll.label()
    return mll, summary


@pytest.fixture(scope="module")
def plain_vlms(tiny_clip_dir):
    """The same two VLMs built directly (functional API), not through the hub."""
    return [ClipVLM.from_pretrained(str(tiny_clip_dir), model_id="clip-a", batch_size=8),
            ClipVLM.from_pretrained(str(tiny_clip_dir), model_id="clip-b", batch_size=8, template="{}")]


def _functional(mll, vlms, tmp_path, class_names, k=1):
    """The functional API on the same SDAG, node texts and encoder: labels, selection, VLMs by id."""
    store = VLMLabelStore(tmp_path / "functional")
    labels = {v.model_id: label_vlm(store, mll.sdag, v) for v in vlms}
    nodes = list(labels["clip-a"].nodes)
    sel = select_vlms(class_names, labels, nodes, [mll.node_text(v) for v in nodes], mll.encoder, k=k)
    return labels, sel, {v.model_id: v for v in vlms}


def test_vlms_are_a_hub_kind_labelled_apart_from_experts(system):
    mll, summary = system
    assert mll.vlm_ids() == ["clip-a", "clip-b"] and mll.expert_ids() == ["toy-expert"]
    assert mll.model_ids() == ["clip-a", "clip-b", "toy-expert"]
    assert mll.labelled_models() == ["toy-expert"]  # expert labels only
    assert summary["toy-expert"]["computed"] == 4
    for m in ("clip-a", "clip-b"):
        assert summary[m]["vlm"] and summary[m]["nodes"] == 4 and summary[m]["embedded"] == 4
    assert (mll.root / "vlm_labels" / "clip-a" / "labels.json").is_file()
    assert mll.label() == {} and mll.stale_vlms() == [] and mll.stale_models() == []
    assert mll.hub.entry("clip-a")["kind"] == "clip_vlm"
    assert mll.add_vlm(f"hf:{mll.hub.entry('clip-a')['source']}", model_id="clip-a") == "clip-a"  # idempotent
    with pytest.raises(MLLError, match="is an expert, not a VLM"):
        mll.vlm("toy-expert")
    with pytest.raises(MLLError, match="hub="):
        mll.add_vlm("offline:vlm-footwear")
    # one source vocabulary: add_model hands clip: / offline: sources to the VLM family
    assert mll.add_model(f"clip:{mll.hub.entry('clip-a')['source']}", model_id="clip-a") == "clip-a"
    with pytest.raises(MLLError, match="hub="):
        mll.add_model("offline:vlm-footwear")
    with pytest.raises(MLLError, match="apply to experts"):
        mll.add_model("clip:x", resolution=64)
    with pytest.raises(MLLError, match="models must be"):
        mll.classifier(["jersey", "trousers"], models="vlm")
    with pytest.raises(MLLError, match="unknown vlm_options"):
        mll.classifier(["jersey", "trousers"], models="vlms", vlm_options={"kk": 2})


@pytest.mark.parametrize("k", [1, 2])
def test_classifier_vlms_equals_the_functional_api(system, plain_vlms, tmp_path, k):
    mll, _ = system
    names = ["jersey", "trousers", "frock"]
    labels, sel, vlms = _functional(mll, plain_vlms, tmp_path, names, k=k)
    for m, lab in mll.family("vlms").labels().items():  # the system's stored labels are the functional ones
        np.testing.assert_array_equal(lab.counts, labels[m].counts)
        assert lab.nodes == labels[m].nodes
    clf = mll.classifier(names, models="vlms", vlm_k=k)
    assert isinstance(clf, Classifier) and clf.class_names == names and clf.models == "vlms"
    assert isinstance(clf.selection, Selection) and clf.selection.family == "vlms" and clf.selection.method == "mll"
    np.testing.assert_array_equal(clf.selection.vlm.chosen, sel.chosen)
    np.testing.assert_array_equal(clf.selection.experts, sel.chosen)
    np.testing.assert_allclose(clf.selection.vlm.scores, sel.scores, rtol=1e-6)
    np.testing.assert_array_equal(clf.selection.loss, -sel.scores.astype(np.float64))
    assert mll.with_config(vlm_k=k).select(names, models="vlms").experts == clf.selection.experts
    assert mll.select_vlms(names, k=k).experts == clf.selection.experts
    with pytest.warns(DeprecationWarning, match="vlm_options= is deprecated"):
        old = mll.classifier(names, models="vlms", vlm_options={"k": k})  # the deprecated spelling, same selection
    assert isinstance(old, VLMClassifier) and old.selection.experts == clf.selection.experts
    images = np.random.default_rng(7).integers(0, 256, size=(9, SIZE, SIZE, 3), dtype=np.uint8)
    logits = {m: task_logits(vlms[m], images, names) for m in sel.used_models}
    np.testing.assert_allclose(clf.scores(images), reuse_scores(sel, logits), rtol=1e-5)
    np.testing.assert_array_equal(clf.predict(images), predict(sel, logits))
    assert len(set(clf.predict(images).tolist())) >= 1
    ex = clf.explain()
    assert [r["class"] for r in ex] == names and all(r["served_by"] == "vlms" for r in ex)
    assert [[v["model"] for v in r["vlms"]] for r in ex] == [sel.models_for(c) for c in names]
    assert "F1" in clf.explain_text()
    again = mll.load_classifier(clf.save(tmp_path / "clf.npz"))  # no re-selection
    assert isinstance(again, VLMClassifier)
    np.testing.assert_array_equal(again.selection.vlm.chosen, sel.chosen)
    np.testing.assert_array_equal(again.scores(images), clf.scores(images))


def test_classifier_both_experts_where_covered_vlm_patch_elsewhere(system, plain_vlms, tmp_path):
    mll, _ = system
    names = ["jersey", "trousers", "violin"]
    sel_e = mll.select(names)
    # the toy expert covers jersey and trousers (their nodes have their own heads); no node matches "violin"
    assert sel_e.covered.tolist() == [True, True, False] and list(sel_e.wnids[:2]) == WNIDS[:2]
    assert sel_e.uncovered_reason(2).endswith("no labelled node at or below it")  # the lemma path: why
    clf = mll.classifier(names, models="both")
    assert isinstance(clf, BothClassifier) and isinstance(clf, Classifier)
    np.testing.assert_array_equal(clf.selection.covered, sel_e.covered)
    assert list(clf.selection.used_model_ids) == ["toy-expert"]
    images = np.concatenate([_images(0, 3, 11), _images(1, 3, 12), _images(3, 3, 13)])
    with pytest.warns(RuntimeWarning, match="never be predicted"):
        experts_only = mll.classifier(names)
    expected = experts_only.scores(images)  # covered columns: the expert ensemble, unchanged
    _, vsel, vlms = _functional(mll, plain_vlms, tmp_path, names)
    s = reuse_scores(vsel, {m: task_logits(vlms[m], images, names) for m in vsel.used_models})
    expected[:, 2] = s[:, 2] / s.sum(1)  # uncovered: the normalised VLM ensemble score (module docstring rule)
    got = clf.scores(images)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert expected[:, 2].min() > 0 and np.array_equal(clf.predict(images), expected.argmax(1))
    ex = clf.explain()
    assert [r["served_by"] for r in ex] == ["experts", "experts", "vlms"]
    assert ex[0]["experts"][0]["model"] == "toy-expert" and ex[2]["vlms"][0]["model"] == vsel.models_for("violin")[0]
    text = clf.explain_text()
    assert "expert toy-expert" in text and "served by VLMs" in text
    p = clf.save(tmp_path / "both.npz")
    again = mll.load_classifier(p)
    assert isinstance(again, BothClassifier)
    np.testing.assert_allclose(again.scores(images), got, rtol=1e-6)
    assert [r["served_by"] for r in again.explain()] == ["experts", "experts", "vlms"]
    with pytest.raises(MLLError, match="models='both'"):
        Classifier.load(p, mll, models="experts")  # asked for an experts-only classifier
    assert Classifier.load(p, mll).models == "both"
    with pytest.raises(MLLError, match="patch="):
        mll.classifier(names, models="both", patch=object())


@pytest.mark.filterwarnings("ignore:CHCO did not converge")  # random tiny CLIP: peaked 100 * cos heads
def test_classifier_vlms_chco_baseline_equals_the_functional_api(system, plain_vlms, tmp_path):
    """method="chco": the CHCO-style baseline (mll_jax.vlm.expert_style) through the system equals
    the functional pipeline on the system's stored labels, SDAG, matching and config."""
    from mll_jax.reuse import chco_reuse_scores
    from mll_jax.vlm import expert_style as es
    from mll_jax.vlm.labels import node_logits
    from mll_jax.vlm.system import VLMExpertClassifier

    mll, _ = system
    names = ["jersey", "trousers", "violin"]
    clf = mll.classifier(names, models="vlms", method="chco", vlm_k=2, beta=None)
    assert isinstance(clf, VLMExpertClassifier) and clf.class_names == names
    assert (clf.models, clf.selection.family, clf.selection.method) == ("vlms", "vlms", "chco")
    labels, store = mll.family("vlms").labels(), mll.family("vlms").store()
    esl = {m: es.expert_style_labels(labels[m], node_logits(store, labels[m]), mll.sdag, delta=mll.config.delta)
           for m in labels}
    matches = es.match_nodes(names, esl, mll.node_text, mll.encoder, threshold=mll.config.match_threshold)
    wnids = [mt.wnid for mt in matches]
    assert wnids == WNIDS[:2] + [None] and list(clf.selection.wnids) == wnids
    sel = es.select_vlms_chco(names, esl, wnids, k=2, beta=None)
    np.testing.assert_allclose(clf.selection.loss, sel.loss, rtol=1e-5)
    assert clf.selection.experts == sel.experts and clf.selection.covered.tolist() == [True, True, False]
    images = np.concatenate([_images(0, 3, 21), _images(1, 3, 22), _images(3, 2, 23)])
    hl = {v.model_id: es.vlm_head_logits(v, images, store, labels[v.model_id]) for v in plain_vlms}
    want = chco_reuse_scores(sel, hl)
    assert np.all(want[:, 2] == 0) and want[:, :2].min() > 0  # uncovered: 0; covered: the expert ensemble
    np.testing.assert_allclose(clf.scores(images), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(clf.predict(images), want.argmax(1))
    ex = clf.explain()
    assert [(r["served_by"], r["method"]) for r in ex] == [("vlms", "chco")] * 3
    assert [[v["model"] for v in r["vlms"]] for r in ex[:2]] == [sel.expert_ids(0), sel.expert_ids(1)]
    assert ex[2]["uncovered"].startswith("no SDAG node matched") and "CHCO loss" in clf.explain_text()
    again = mll.load_classifier(clf.save(tmp_path / "chco.npz"))  # no re-selection
    assert isinstance(again, VLMExpertClassifier) and again.selection.experts == sel.experts
    np.testing.assert_array_equal(again.scores(images), clf.scores(images))
    with pytest.raises(MLLError, match="do not apply to method 'chco'"):
        mll.classifier(names, models="vlms", vlm_options={"method": "chco", "alpha": 0.5})
    with pytest.raises(MLLError, match="models='vlms' only"):
        mll.classifier(names, models="both", vlm_options={"method": "chco"})
    with pytest.raises(MLLError, match="method must be one of"):
        mll.classifier(names, models="vlms", vlm_options={"method": "heu"})


SAVED = Path(__file__).resolve().parent / "data" / "classifiers"


@pytest.mark.parametrize("name", ["experts", "vlms", "vlms_chco", "both"])
def test_saved_formats_of_every_model_kind_load(system, name):
    """tests/data/classifiers holds one classifier of each saved format (mll_jax.classifier/1 for experts and
    models='both', mll_jax.vlm_classifier/1, mll_jax.vlm_chco_classifier/1), written by the system on this
    module's fixture (the tiny random CLIP is drawn afresh per run, so fingerprints are not checked): each loads
    to a classifier that explains itself as when it was saved."""
    mll, _ = system
    want = json.loads((SAVED / "explain.json").read_text())[name]
    clf = mll.load_classifier(SAVED / f"{name}.npz", check=False)
    assert clf.class_names == ["jersey", "trousers", "violin"]
    assert clf.explain_text() == want["explain_text"]
    images = np.random.default_rng(5).integers(0, 256, size=(4, SIZE, SIZE, 3), dtype=np.uint8)
    assert clf.scores(images).shape == (4, 3) and clf.predict(images).shape == (4,)


def test_relabel_only_when_stale(system, plain_vlms, tmp_path):
    mll, _ = system  # last test of the module: it changes the SDAG data
    assert mll.label() == {}
    saved = mll.classifier(["jersey", "trousers"], models="vlms").save(tmp_path / "v.npz")
    mll.add_images(WNIDS[2], _images(2, 4, 99))  # new images for one node
    assert mll.stale_vlms() == ["clip-a", "clip-b"] and mll.stale_models() == ["toy-expert"]
    summary = mll.label(["clip-a"])  # only the named VLM
    assert set(summary) == {"clip-a"} and summary["clip-a"]["embedded"] == 1  # only the changed node is encoded
    assert mll.stale_vlms() == ["clip-b"]
    from mll_jax.system import StaleClassifierError

    with pytest.raises(StaleClassifierError, match="clip-a"):  # its selection was made from the old labels
        mll.load_classifier(saved)
    summary = mll.label()
    assert set(summary) == {"clip-b", "toy-expert"} and summary["clip-b"]["embedded"] == 1
    assert mll.label() == {}
    labels, _, _ = _functional(mll, plain_vlms, tmp_path, ["jersey"])
    for m, lab in mll.family("vlms").labels().items():  # incremental labels equal a fresh labelling of the new data
        np.testing.assert_array_equal(lab.counts, labels[m].counts)
    mll.remove_model("clip-b")
    assert mll.vlm_ids() == ["clip-a"] and not (mll.root / "vlm_labels" / "clip-b").exists()


@pytest.mark.slow
def test_offline_dual_encoder_kind(tmp_path):
    """An offline dual encoder (mll_jax.vlm.dual_encoder, trained by mll_lab.train_vlms) copied into a system's hub as kind dual_encoder_vlm: loads
    to the same embeddings, labels, and is served by models='vlms'."""
    import jax

    from mll_jax.hub import ModelHub, use_text_features
    from mll_jax.sdag import SDAG
    from mll_jax.vlm.dual_encoder import DualEncoderSpec, TextFeatures, load_dual_encoder
    from mll_lab import fashion_mnist as fdata
    from mll_lab.train_vlms import dual_encoder_tower, register_dual_encoder
    from test_vlm_offline import HashEncoder

    # an untrained dual encoder saved exactly as train_vlm_hub saves one (training is tested in test_vlm_offline)
    spec = DualEncoderSpec("t-vlm", "vit", (5, 7, 9), per_class=16, steps=3, width=4, dim=8, batch_size=16)
    module, cfg = dual_encoder_tower(spec)
    variables = jax.device_get(dict(jax.jit(module.init)(jax.random.PRNGKey(0), np.zeros((1, 28, 28, 1), np.float32))))
    proj = np.random.default_rng(0).standard_normal((384, 8)).astype(np.float32)
    src = ModelHub(tmp_path / "vlm_hub")
    register_dual_encoder(src, spec, {"module": module, "config": cfg, "variables": variables, "text_proj": proj,
                                      "scale": 12.0, "losses": [(0, 1.0)], "train_seconds": 0.0})
    tf = TextFeatures(HashEncoder())
    v = load_dual_encoder(src, "t-vlm", tf)
    rng = np.random.default_rng(3)
    g = SDAG.from_wnids([fdata.CLASS_SYNSETS[c].wnid for c in (5, 7, 9)])
    for w in g.nodes:
        g.set_images(w, rng.integers(0, 256, (5, 28, 28), dtype=np.uint8))
    mll = MLL.open(tmp_path / "mll", sdag=g, config=MLLConfig(progress=False), encoder=HashEncoder(),
                   text_cache=tmp_path / "tc")
    use_text_features(tf)
    try:
        assert mll.add_vlm("offline:t-vlm", hub=tmp_path / "vlm_hub") == "t-vlm"
        assert mll.hub.entry("t-vlm")["kind"] == "dual_encoder_vlm" and mll.vlm_ids() == ["t-vlm"]
        assert mll.expert_ids() == []
        with pytest.raises(MLLError, match="needs labelled experts"):
            mll.classifier(["sandal", "sneaker"], models="both")
        loaded = mll.vlm("t-vlm")
        imgs = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
        np.testing.assert_allclose(loaded.encode_images(imgs), v.encode_images(imgs), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(loaded.encode_text(["sandal"]), v.encode_text(["sandal"]), rtol=1e-5, atol=1e-6)
        assert loaded.fingerprint == v.fingerprint
        assert set(mll.label()) == {"t-vlm"} and mll.label() == {}
        clf = mll.classifier(["sandal", "sneaker", "boot"], models="vlms")
        assert clf.selection.vlm.used_models == ["t-vlm"]
        lg = v.logit_scale * v.encode_images(imgs) @ v.encode_text(["sandal", "sneaker", "boot"]).T
        np.testing.assert_array_equal(clf.predict(imgs), lg.argmax(1))  # one VLM: its own zero-shot argmax
    finally:
        use_text_features(None)


def test_cli_serves_vlms(tiny_clip_dir, tmp_path):
    """`mll-jax hub add vlm:<dir>`, `label`, `classify --models=vlms` (subprocesses) equal the API on the same root."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo), MLL_JAX_HOME=str(tmp_path / "home"))
    folder = tmp_path / "nodes"
    for i, w in enumerate(WNIDS):
        (folder / w).mkdir(parents=True)
        for j, img in enumerate(_images(i, 3, 10 + i)):
            Image.fromarray(img).save(folder / w / f"{j}.png")
    test_files = []
    for i, img in enumerate(np.concatenate([_images(0, 2, 50), _images(1, 2, 51)])):
        test_files.append(tmp_path / f"t{i}.png")
        Image.fromarray(img).save(test_files[-1])

    def cli(*args):
        p = subprocess.run([sys.executable, "-m", "mll_jax.cli", *map(str, args), "--noprogress"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"{args}\n{p.stdout}\n{p.stderr[-2000:]}"
        return p.stdout

    cli("sdag", "build", "--root=mll", f"--wnids={','.join(WNIDS)}", f"--images={folder}", f"--image_size={SIZE}")
    assert "clip-a: added" in cli("hub", "add", "--root=mll", f"vlm:{tiny_clip_dir}", "--model_id=clip-a",
                                  "--batch_size=8")
    cli("label", "--root=mll")
    cli("classify", "--root=mll", "--classes=jersey,trousers", "--models=vlms", "--output=pred.json",
        "--image_size=0", *test_files)
    got = json.loads((tmp_path / "pred.json").read_text())
    mll = MLL.open(tmp_path / "mll", config=MLLConfig(progress=False), text_cache=tmp_path / "home" / "text_cache")
    assert mll.vlm_ids() == ["clip-a"] and mll.stale_vlms() == []
    clf = mll.classifier(["jersey", "trousers"], models="vlms")
    imgs = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in test_files])
    assert got["models"] == ["clip-a"]
    assert [r["index"] for r in got["predictions"]] == clf.predict(imgs).tolist()
    np.testing.assert_allclose([r["scores"] for r in got["predictions"]], clf.scores(imgs), rtol=1e-5, atol=1e-6)
    # The CHCO-style baseline through the CLI equals the API's.
    cli("classify", "--root=mll", "--classes=jersey,trousers", "--models=vlms", "--vlm_method=chco",
        "--output=pred_chco.json", "--image_size=0", *test_files)
    got = json.loads((tmp_path / "pred_chco.json").read_text())
    clf = mll.classifier(["jersey", "trousers"], models="vlms", vlm_options={"method": "chco"})
    assert [r["index"] for r in got["predictions"]] == clf.predict(imgs).tolist()
    np.testing.assert_allclose([r["scores"] for r in got["predictions"]], clf.scores(imgs), rtol=1e-5, atol=1e-6)
    p = subprocess.run([sys.executable, "-m", "mll_jax.cli", "classify", "--root=mll", "--classes=jersey,trousers",
                        "--vlm_method=chco", str(test_files[0])], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 2 and "--vlm_method applies to --models=vlms" in p.stderr
