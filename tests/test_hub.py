"""Tests for mll_jax.hub.ModelHub: manifest bookkeeping, errors, loaders per kind."""

from __future__ import annotations

import glob
import json
import os
import re

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import flax.linen as nn  # noqa: E402

from mll_jax.hub import MANIFEST_NAME, ModelHub, PreprocessSpec  # noqa: E402
from mll_jax.models import CIFAR10_CLASSES, CIFAR10_WNIDS, imagenet_wnids  # noqa: E402


class TinyNet(nn.Module):
    """Importable test module (module-level so the hub can re-create it)."""

    features: int = 3

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), strides=(2, 2), name="conv")(x)
        x = jax.nn.relu(x).mean(axis=(1, 2))
        return nn.Dense(self.features, name="head")(x)


def _random_variables(module, input_shape, seed=0):
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), np.zeros(input_shape, np.float32)))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: rng.normal(scale=0.3, size=s.shape).astype(s.dtype), shapes)


def test_register_entry_ids_and_errors(tmp_path):
    hub = ModelHub(tmp_path / "hub")
    assert hub.ids() == [] and len(hub) == 0
    e = hub.register("m1", "keras_cifar10", head_names=CIFAR10_CLASSES, head_wnids=CIFAR10_WNIDS,
                     source="pypi:cifar-10-model")
    assert e["num_heads"] == 10 and e["kind"] == "keras_cifar10"
    hub.register("a/m0", "hf_flax", source="some/repo")
    assert hub.ids() == ["a/m0", "m1"] and "m1" in hub and "zz" not in hub
    # a fresh object reads the same manifest from disk
    again = ModelHub(tmp_path / "hub")
    assert again.entry("m1")["head_names"] == CIFAR10_CLASSES
    assert again.entry("m1")["head_wnids"][0] == "n02691156"
    # entries are copies
    again.entry("m1")["head_names"].append("x")
    assert len(again.entry("m1")["head_names"]) == 10

    with pytest.raises(ValueError, match="'m1' is already registered"):
        hub.register("m1", "keras_cifar10")
    hub.register("m1", "keras_cifar10", num_heads=10, overwrite=True)
    assert hub.entry("m1")["head_names"] is None
    with pytest.raises(KeyError, match="unknown model id 'nope'.*known ids"):
        hub.entry("nope")
    with pytest.raises(KeyError, match="unknown model id"):
        hub.load("nope")
    with pytest.raises(ValueError, match="unknown kind 'pytorch'"):
        hub.register("m2", "pytorch")
    with pytest.raises(ValueError, match="invalid model id"):
        hub.register("../evil", "hf_flax")
    with pytest.raises(ValueError, match="2 head names for 3 heads"):
        hub.register("m3", "hf_flax", num_heads=3, head_names=["a", "b"])
    with pytest.raises(ValueError, match="malformed wnids"):
        hub.register("m4", "hf_flax", head_wnids=["dog"])
    with pytest.raises(ValueError, match="num_heads"):
        hub.register("m5", "hf_flax", num_heads=0)
    assert hub.ids() == ["a/m0", "m1"]  # failed registrations left no trace


def test_manifest_writes_are_atomic(tmp_path, monkeypatch):
    hub = ModelHub(tmp_path)
    hub.register("keep", "hf_flax", source="x")
    before = (tmp_path / MANIFEST_NAME).read_text()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(os, "fsync", boom)  # the write fails after the temp file is filled
    with pytest.raises(RuntimeError, match="disk full"):
        hub.register("new", "hf_flax", source="y")
    monkeypatch.undo()
    assert (tmp_path / MANIFEST_NAME).read_text() == before
    assert glob.glob(str(tmp_path / ".manifest.*")) == []
    assert hub.ids() == ["keep"]
    # two hub objects on the same root: registrations merge instead of overwriting each other
    other = ModelHub(tmp_path)
    other.register("b", "hf_flax", source="b")
    hub.register("c", "hf_flax", source="c")
    assert ModelHub(tmp_path).ids() == ["b", "c", "keep"]
    hub.remove("b")
    assert other.ids() == ["c", "keep"]
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="corrupt hub manifest"):
        hub.ids()


def test_offline_experts_registered_and_loadable(tmp_path):
    pytest.importorskip("cifar_10_model")
    hub = ModelHub.with_offline_experts(tmp_path)
    ids = hub.ids()
    assert "cifar10-cnn" in ids
    for mid in ids:
        e = hub.entry(mid)
        if mid.startswith("efficientnet-lite"):
            assert e["kind"] == "efficientnet_lite" and e["num_heads"] == 1000
            assert e["head_wnids"] == list(imagenet_wnids()) and e["head_names"][1] == "goldfish"
    assert hub.entry("cifar10-cnn")["head_names"] == CIFAR10_CLASSES
    # idempotent
    assert ModelHub.with_offline_experts(tmp_path).ids() == ids

    ex = hub.load("cifar10-cnn")
    assert hub.load("cifar10-cnn") is ex  # cached per hub
    assert ex.model_id == "cifar10-cnn" and ex.num_heads == 10
    from mll_jax.models.cifar_cnn import load_cifar10_cnn

    imgs = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(ex.logits(imgs), load_cifar10_cnn().logits(imgs), atol=1e-6)

    if "efficientnet-lite0" in ids:
        lite = hub.load("efficientnet-lite0")
        assert lite.model_id == "efficientnet-lite0" and lite.num_heads == 1000
        assert lite.head_wnids[0] == "n01440764"


def test_load_errors_missing_files_and_head_mismatch(tmp_path):
    pytest.importorskip("cifar_10_model")
    hub = ModelHub(tmp_path)
    hub.register("gone", "keras_cifar10", num_heads=10, options={"weights_path": str(tmp_path / "no.h5")})
    with pytest.raises(FileNotFoundError, match="model 'gone'.*no.h5"):
        hub.load("gone")
    hub.register("liar", "keras_cifar10", num_heads=7)
    with pytest.raises(ValueError, match="'liar': manifest says 7 heads.*10"):
        hub.load("liar")
    hub.register("lite-missing", "efficientnet_lite", num_heads=1000,
                 options={"variant": "lite0", "weights_path": str(tmp_path / "none.pth")})
    with pytest.raises(FileNotFoundError, match="lite-missing"):
        hub.load("lite-missing")


def test_flax_module_saved_with_orbax_roundtrip(tmp_path):
    hub = ModelHub(tmp_path)
    module = TinyNet(features=3)
    variables = _random_variables(module, (1, 16, 16, 3))
    spec = PreprocessSpec((16, 16), mean=(127.5,) * 3, std=(64.0,) * 3, resample="bilinear")
    entry = hub.add_flax_module("tiny", module, variables, spec, head_names=["a", "b", "c"],
                                head_wnids=["n02084071", "n02121620", "n01503061"])
    assert entry["num_heads"] == 3 and entry["options"]["module_class"].endswith(":TinyNet")
    assert os.path.isdir(hub.model_dir("tiny", "variables"))
    assert not [p for p in os.listdir(hub.model_dir("tiny")) if "tmp" in p]

    fresh = ModelHub(tmp_path)
    ex = fresh.load("tiny")
    assert ex.num_heads == 3 and ex.head_names == ["a", "b", "c"] and ex.head_wnids[1] == "n02121620"
    imgs = np.random.default_rng(1).integers(0, 256, (5, 20, 24, 3), dtype=np.uint8)
    x = spec(imgs)
    assert x.shape == (5, 16, 16, 3)
    # hand-computed normalisation of the resized pixels
    from mll_jax.models import resize_images

    np.testing.assert_allclose(x, (resize_images(imgs, (16, 16), "bilinear") - 127.5) / 64.0, atol=1e-5)
    expect = np.asarray(jax.jit(module.apply)(variables, x))
    np.testing.assert_allclose(ex.logits(imgs), expect, atol=1e-5)

    with pytest.raises(ValueError, match="already registered"):
        hub.add_flax_module("tiny", module, variables, spec)

    class Local(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(x.reshape((x.shape[0], -1)))

    with pytest.raises(ValueError, match="not importable"):
        hub.add_flax_module("local", Local(), {}, spec, num_heads=2)

    import shutil

    shutil.rmtree(hub.model_dir("tiny", "variables"))
    with pytest.raises(FileNotFoundError, match="'tiny'.*variables"):
        ModelHub(tmp_path).load("tiny")
    hub.remove("tiny")
    assert "tiny" not in hub and not os.path.exists(hub.model_dir("tiny"))


def test_hf_flax_kind(tmp_path):
    tr = pytest.importorskip("transformers")
    cfg = tr.ViTConfig(image_size=16, patch_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=16, num_labels=3, id2label={0: "cat", 1: "dog", 2: "bird"},
                       label2id={"cat": 0, "dog": 1, "bird": 2})
    model = tr.FlaxViTForImageClassification(cfg, _do_init=False)
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda s: rng.normal(scale=0.2, size=s.shape).astype(s.dtype),
                                    model.params_shape_tree)
    model.save_pretrained(tmp_path / "vit", params=params)
    hub = ModelHub(tmp_path / "hub")
    hub.register("tiny-vit", "hf_flax", source=str(tmp_path / "vit"), num_heads=3,
                 head_names=["cat", "dog", "bird"])
    ex = hub.load("tiny-vit")
    assert ex.model_id == "tiny-vit" and ex.head_names == ["cat", "dog", "bird"]
    out = ex.logits(np.zeros((2, 20, 20), np.uint8))
    assert out.shape == (2, 3) and out.dtype == np.float32 and np.isfinite(out).all()
    # all-black images through the fallback preprocessing: identical rows
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    assert re.match(r"ModelHub\(", repr(hub))
