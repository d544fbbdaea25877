"""The MLL system API: configuration, class-name validation, the classifier (selection -> reuse), its
persistence with label / weight fingerprints, and the acceptance test of issue 7 on real experts and images."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mll_jax.config import ConfigError, MLLConfig
from mll_jax.reuse import NonFiniteOutputError, Reuser
from mll_jax.selection import ModelScores, select
from mll_jax.system import (
    MLL,
    Classifier,
    ClassNamesError,
    StaleClassifierError,
    UnknownModelError,
    check_class_names,
)

# ------------------------------------------------------------------------------------------------ config


def test_config_defaults_live_once():
    from mll_jax import config, labelling, text

    c = MLLConfig()
    assert (c.delta, c.k, c.beta, c.match_threshold) == (0.5, 3, 0.8, 0.35)
    # the library functions' defaults are the config's constants, not copies that could drift
    assert labelling.DEFAULT_DELTA == config.DEFAULT_DELTA and text.DEFAULT_THRESHOLD == config.DEFAULT_MATCH_THRESHOLD
    from mll_lab.benchmark import BenchmarkConfig

    b = BenchmarkConfig()
    assert b.mll_config() == c


@pytest.mark.parametrize("field,value", [("delta", 1.5), ("delta", float("nan")), ("k", 0), ("k", 2.5),
                                         ("beta", float("inf")), ("node_text", "x"), ("chco_tol", 0.0),
                                         ("label_batch_size", 0), ("reuse_batch_size", -1), ("patch_mode", "some"),
                                         ("on_nonfinite", "ignore"), ("columns", "best"), ("vlm_method", "heu"),
                                         ("vlm_k", 0), ("vlm_alpha", 1.5), ("vlm_top", 0), ("vlm_scope", "some"),
                                         ("vlm_scale", 0.0), ("vlm_descriptions", {"a": 1})])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=f"MLLConfig.{field}="):
        MLLConfig(**{field: value})


def test_config_replace_and_json_roundtrip():
    c = MLLConfig().replace(k=2, beta=None)
    assert c.k == 2 and c.beta is None
    assert MLLConfig.from_json(c.to_json()) == c
    with pytest.raises(ConfigError, match="unknown MLLConfig fields \\['kk'\\]"):
        c.replace(kk=1)


def test_config_vlm_defaults_and_old_files():
    """The VLM defaults are config fields equal to the library defaults; a config.json written before they existed
    still loads (with those defaults) and a new one round-trips them."""
    from mll_jax import config
    from mll_jax.vlm import core, expert_style

    c = MLLConfig()
    assert (c.vlm_method, c.vlm_k, c.vlm_scope, c.vlm_descriptions) == ("mll", 1, "all", None)
    assert (c.vlm_alpha, c.vlm_top, c.vlm_scale) == (core.DEFAULT_ALPHA, core.DEFAULT_TOP_NODES,
                                                     expert_style.DEFAULT_HEAD_SCALE)
    assert config.DEFAULT_VLM_SCALE == expert_style.DEFAULT_HEAD_SCALE
    old = {k: v for k, v in c.to_dict().items() if not k.startswith("vlm_")}
    assert MLLConfig.from_dict(old) == c
    v = c.replace(vlm_method="chco", vlm_k=2, vlm_descriptions={"dog": "a domestic canine"})
    assert MLLConfig.from_json(v.to_json()) == v


def test_opening_a_system_leaves_an_older_config_file_as_it_is(tmp_path, wn):
    """A config.json written before a field existed (here: label_statistic) loads with the field's default and is not
    rewritten by a process that only opens the system (an older version can still read it); a changed config is."""
    from mll_jax import MLL
    from mll_jax.sdag import SDAG

    root = tmp_path / "sys"
    MLL.open(root, sdag=SDAG.from_wnids(["n02084071", "n02121620"], wn=wn), config=MLLConfig(progress=False))
    cfg = root / "config.json"
    old = {k: v for k, v in json.loads(cfg.read_text()).items() if k != "label_statistic"}
    cfg.write_text(json.dumps(old))
    before = cfg.read_bytes()
    assert MLL.open(root).config == MLLConfig(progress=False) and cfg.read_bytes() == before
    MLL.open(root, config=MLLConfig(progress=False, label_statistic="mean_probability"))
    assert json.loads(cfg.read_text())["label_statistic"] == "mean_probability"


# ------------------------------------------------------------------------------------------------ class names


def test_class_names_validation():
    assert check_class_names([" tabby  cat", "golden retriever"]) == ["tabby cat", "golden retriever"]
    with pytest.raises(ClassNamesError, match="got the string 'cat,dog'.*\\['cat', 'dog'\\]"):
        check_class_names("cat,dog")
    with pytest.raises(ClassNamesError, match="no class names"):
        check_class_names([])
    with pytest.raises(ClassNamesError, match="class name 1 is empty"):
        check_class_names(["cat", "  "])
    with pytest.raises(ClassNamesError, match="duplicate class names: 'cat' \\(#0\\) and ' Cat ' \\(#1\\)"):
        check_class_names(["cat", " Cat "])
    with pytest.raises(ClassNamesError, match="must be strings"):
        check_class_names(["cat", 3])


# ------------------------------------------------------------------------------------------------ reuse guards


class _Lin:
    def __init__(self, mid, h, seed, nan_rows=()):
        self.model_id, self.num_heads, self.head_names = mid, h, [f"h{i}" for i in range(h)]
        self.w = np.random.default_rng(seed).normal(size=(16, h)).astype(np.float32)
        self.nan_rows = list(nan_rows)

    def logits(self, x):
        z = (np.asarray(x, np.float32).reshape(len(x), -1)[:, :16] / 255.0) @ self.w * 5
        z[[i for i in self.nan_rows if i < len(z)]] = np.nan
        return z


def _selection(C=3):
    rng = np.random.default_rng(0)
    loss = np.array([[0.1, 0.5, np.inf], [0.3, 0.2, np.inf]])[:, :C]
    cols = (rng.uniform(size=(3, C)).astype(np.float32), rng.uniform(size=(4, C)).astype(np.float32))
    return select(ModelScores("chco", ("a", "b"), loss, cols), k=2, beta=None, class_names=list("xyz")[:C],
                  wnids=["n1", "n2", None][:C], similarities=[0.9, 0.8, 0.1][:C], match_threshold=0.35)


def test_reuse_raises_on_nonfinite_expert_outputs_naming_the_model_or_abstains():
    imgs = np.random.default_rng(1).integers(0, 256, (5, 4, 4), dtype=np.uint8)
    sel = _selection()
    experts = {"a": _Lin("a", 3, 1), "b": _Lin("b", 4, 2, nan_rows=[2])}
    with pytest.raises(NonFiniteOutputError, match="expert 'b' returned NaN/inf outputs for 1 of 5 images"):
        Reuser(sel, experts, progress=False).predict(imgs)
    pred = Reuser(sel, experts, progress=False, on_nonfinite="abstain").predict(imgs)
    clean = Reuser(sel, {"a": experts["a"], "b": _Lin("b", 4, 2)}, progress=False).predict(imgs)
    assert pred[2] == -1 and np.array_equal(np.delete(pred, 2), np.delete(clean, 2))


def test_reuse_with_nothing_covered_and_no_patch_never_says_class_0():
    imgs = np.zeros((4, 4, 4), np.uint8)
    sel = select(ModelScores("chco", ("a",), np.full((1, 2), np.inf), (np.zeros((3, 2), np.float32),)), k=1,
                 class_names=["x", "y"], wnids=[None, None])
    with pytest.warns(RuntimeWarning, match="never be predicted"):
        r = Reuser(sel, {"a": _Lin("a", 3, 1)}, progress=False)
    assert list(r.predict(imgs)) == [-1] * 4


def test_reuse_rejects_ambiguous_single_image():
    sel = _selection()
    r = Reuser(sel, {"a": _Lin("a", 3, 1), "b": _Lin("b", 4, 2)}, progress=False)
    with pytest.raises(ValueError, match="ambiguous.*images\\[None\\]"):
        r.predict(np.zeros((32, 32, 3), np.uint8))


def test_selection_of_vlms_is_the_one_selection_type(tmp_path):
    """An MLL-VLM selection record becomes a Selection (family "vlms", experts = chosen VLMs, loss = -score) that
    explains itself with the rows of every family and survives save / load; "both" adds it to an expert
    selection for the classes the experts do not cover."""
    from mll_jax.selection import Selection
    from mll_jax.vlm.select import VLMSelection

    vsel = VLMSelection(["x", "y", "z"], ["v1", "v2"], ["n1", "n2"], np.array([[0, 1], [1, 0], [1, 0]], np.int32),
                        np.array([[0.7, 0.3], [1.0, 0.0], [0.6, 0.4]], np.float32),
                        np.array([[0.9, 0.2], [0.8, 0.1], [0.5, 0.4]], np.float32),
                        np.array([[0.5, 0.2, 0.1], [0.4, 0.6, 0.3]], np.float32),
                        np.array([[0.45, 0.25, 0.2], [0.35, 0.5, 0.3]], np.float32), np.array([[0], [1], [1]], np.int32))
    sel = Selection.from_vlm(vsel)
    assert (sel.family, sel.method, sel.experts, sel.wnids) == ("vlms", "mll", ((0,), (1,), (1,)), ("n1", "n2", "n2"))
    np.testing.assert_array_equal(sel.loss, -vsel.scores.astype(np.float64))
    rows = sel.explain()
    assert [r["family"] for r in rows] == ["vlms"] * 3 and all(r["uncovered"] is None for r in rows)
    assert rows[0]["experts"] == [{"model": "v1", "family": "vlms", "loss": -0.44999998807907104, "heads": [],
                                   "f1": 0.5, "score": 0.45}]
    assert rows[1]["nodes"] == [("n2", 1.0, 0.8), ("n1", 0.0, 0.1)]
    sel.save(tmp_path / "s.npz")
    again = Selection.load(tmp_path / "s.npz")
    assert again.family == "vlms" and again.experts == sel.experts and again.explain() == rows
    np.testing.assert_array_equal(again.vlm.chosen, vsel.chosen)
    exp = select(ModelScores("chco", ("a",), np.array([[0.1, 0.2, np.inf]])), k=1, beta=0.8,
                 class_names=["x", "y", "z"], wnids=["n1", "n2", None])
    both = exp.with_vlm(vsel)
    rows = both.explain()
    assert both.family == "both" and both.used_model_ids == ("a",)
    assert [r["family"] for r in rows] == ["experts", "experts", "vlms"]
    assert rows[0]["experts"][0]["family"] == "experts" and rows[2]["experts"][0]["model"] == "v2"
    assert rows[2]["uncovered"].startswith("no SDAG node matched")
    assert list(Selection.load(exp.save(tmp_path / "e.npz") or tmp_path / "e.npz").explain()) == exp.explain()


def test_selection_explains_uncovered_classes():
    sel = _selection()
    assert sel.uncovered_reason(0) is None
    assert sel.uncovered_reason(2) == "no SDAG node matched the class name (best similarity 0.10 < threshold 0.35)"
    s2 = select(ModelScores("chco", ("a", "b"), np.array([[0.9, 0.1], [1.2, 0.3]])), k=1, beta=0.8,
                class_names=["x", "y"], wnids=["n1", "n2"])
    assert s2.uncovered_reason(0) == "no model under the loss threshold beta=0.8 (best: 'a' with loss 0.900)"


# ------------------------------------------------------------------------------------------------ the system


@pytest.fixture(scope="module")
def small_system(tmp_path_factory, wn):
    """A system over a WordNet subtree with the real CIFAR-10 CNN labelled on real CIFAR-10 sample images."""
    from mll_jax import SDAG
    from mll_jax.models import CIFAR10_WNIDS
    from mll_jax.samples import SampleImagesNotFound, sample_images

    try:
        imgs, y, _ = sample_images("cifar10")
    except SampleImagesNotFound as e:
        pytest.skip(str(e))
    root = tmp_path_factory.mktemp("mll") / "sys"
    sdag = SDAG.from_wnids(list(CIFAR10_WNIDS), close_hypernyms=True, wn=wn)
    mll = MLL.open(root, sdag=sdag, config=MLLConfig(progress=False))
    for c in sorted(set(y.tolist())):
        mll.add_images(CIFAR10_WNIDS[c], imgs[y == c][:1])  # one image per class as node data
    assert mll.add_model("cifar10-cnn") == "cifar10-cnn"
    summary = mll.label()
    assert summary["cifar10-cnn"]["computed"] == len(set(y.tolist()))
    return mll, imgs, y


def test_system_labels_once_and_only_what_is_new(small_system):
    mll, imgs, y = small_system
    assert mll.label() == {}  # nothing stale
    assert mll.stale_models() == []
    with pytest.raises(UnknownModelError, match="unknown model id 'nope'; the hub has \\['cifar10-cnn'\\]"):
        mll.label(["nope"])
    with pytest.raises(Exception, match="unknown model 'lite9'"):
        mll.add_model("lite9")


def test_classifier_explain_save_load_and_stale_detection(small_system, tmp_path):
    mll, imgs, y = small_system
    with pytest.raises(ClassNamesError):
        mll.classifier("ship,truck")
    clf = mll.classifier(["ship", "truck", "airplane"], k=1)
    ex = clf.explain()
    assert [r["class"] for r in ex] == ["ship", "truck", "airplane"]
    assert all(r["experts"][0]["model"] == "cifar10-cnn" for r in ex if not r["uncovered"])
    text = clf.explain_text()
    assert "cifar10-cnn" in text
    pred = clf.predict(imgs)
    assert pred.shape == (len(imgs),) and set(pred.tolist()) <= {-1, 0, 1, 2}
    p = clf.save(tmp_path / "clf.npz")
    again = Classifier.load(p, mll)
    np.testing.assert_array_equal(again.predict(imgs), pred)
    assert again.selection.similarities == clf.selection.similarities
    # new node data for a matched node: relabelled, the saved classifier no longer matches the labels
    w = clf.selection.wnids[0]
    old = mll.sdag.images(w)
    mll.add_images(w, imgs[y == 1][:1])
    assert mll.stale_models() == ["cifar10-cnn"]
    with pytest.warns(RuntimeWarning, match="stale"):
        mll.select(["ship", "truck"])
    assert mll.label()["cifar10-cnn"]["computed"] == 1  # only the changed node runs through the expert
    try:
        with pytest.raises(StaleClassifierError, match="labels changed"):
            Classifier.load(p, mll)
    finally:
        mll.add_images(w, old)
        mll.label()
    np.testing.assert_array_equal(Classifier.load(p, mll).predict(imgs), pred)


def test_label_statistic_makes_labels_stale_and_stores_log_mean_probabilities(small_system):
    """``MLLConfig.label_statistic="mean_probability"``: every expert is stale, relabelling stores the log of each
    node's mean softmax output (a node with one image and no labelled hyponym: log softmax of its logits), and
    going back to the default relabels to the same mean-logit labels."""
    from mll_jax.models import CIFAR10_WNIDS

    mll, imgs, y = small_system
    leaves = [w for w in CIFAR10_WNIDS if mll.sdag.num_images(w) == 1 and not mll.sdag.children(w)]
    before = mll.labels.read("cifar10-cnn", leaves)
    prob = mll.with_config(label_statistic="mean_probability")
    assert prob.stale_models() == ["cifar10-cnn"] and mll.stale_models() == []
    try:
        assert prob.label()["cifar10-cnn"]["computed"] == len(set(y.tolist()))
        assert prob.stale_models() == [] and mll.stale_models() == ["cifar10-cnn"]
        got = mll.labels.read("cifar10-cnn", leaves)
        z = np.asarray(mll.expert("cifar10-cnn").logits(np.stack([mll.sdag.images(w)[0] for w in leaves])),
                       np.float64)
        log_softmax = z - z.max(axis=1, keepdims=True)
        log_softmax -= np.log(np.exp(log_softmax).sum(axis=1, keepdims=True))
        np.testing.assert_allclose(got, np.maximum(log_softmax, np.log(1e-30)), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(before, z, rtol=1e-4, atol=1e-4)  # the default: the node's logits (Eq. 1)
    finally:
        mll.label()
    assert mll.stale_models() == [] and prob.stale_models() == ["cifar10-cnn"]
    np.testing.assert_array_equal(mll.labels.read("cifar10-cnn", leaves), before)
    with pytest.raises(ConfigError, match="label_statistic"):
        MLLConfig(label_statistic="median")


# ------------------------------------------------------------------------------------------------ acceptance


@pytest.mark.slow
def test_system_from_scratch_two_real_experts_reload_in_new_process(tmp_path, wn):
    """Issue 7: build through the API, label two real experts, classify real images, save, reload the classifier in
    a new process, identical predictions."""
    from mll_jax import SDAG, sample_images
    from mll_jax.models import imagenet_wnids

    try:
        images, labels, _ = sample_images("imagenet", size=96)
        test, y, _ = sample_images("cifar10")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    wnids = [imagenet_wnids()[c] for c in labels]
    sdag = SDAG.from_wnids(sorted(set(wnids)), close_hypernyms=True, wn=wn)
    root = tmp_path / "sys"
    mll = MLL.open(root, sdag=sdag, config=MLLConfig(progress=False))
    for w in sorted(set(wnids)):
        mll.add_images(w, images[[x == w for x in wnids]])
    ids = [mll.add_model("efficientnet-lite0", resolution=64), mll.add_model("cifar10-cnn")]
    assert ids == ["efficientnet-lite0-r64", "cifar10-cnn"]
    summary = mll.label()
    assert set(summary) == set(ids) and all(s["computed"] == len(set(wnids)) for s in summary.values())
    clf = mll.classifier(["dog", "car", "bird"])
    assert clf.selection.covered.all()
    pred = clf.predict(test)
    assert pred.shape == (20,) and (pred >= 0).all()
    # every class is served by both experts (the CIFAR CNN's heads include dog, automobile and bird)
    assert all(len(e) == 2 for e in clf.selection.experts)
    cifar_heads = {r["class"]: [h["name"] for h in r["experts"][[e["model"] for e in r["experts"]].index("cifar10-cnn")]
                                ["heads"]] for r in clf.explain()}
    assert "automobile" in cifar_heads["car"] and "dog" in cifar_heads["dog"] and "bird" in cifar_heads["bird"]
    clf.save(tmp_path / "clf.npz")
    script = textwrap.dedent(f"""
        import json
        from mll_jax import MLL, Classifier, sample_images
        mll = MLL.open({str(root)!r})
        clf = Classifier.load({str(tmp_path / 'clf.npz')!r}, mll)
        test, _, _ = sample_images("cifar10")
        print(json.dumps(clf.predict(test).tolist()))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == pred.tolist()
