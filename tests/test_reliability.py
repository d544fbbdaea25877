"""Reliability defects of issue 11 (hub, labelling, SDAG, experts): each test failed on the code before the fix.

Item 2: stale labels after a model update; item 3: hub directory collisions; item 5: one image-batch contract;
item 6: label-store corruption; item 7 (part): SDAG order independent of PYTHONHASHSEED; item 8 (parts): manifest
module_class imports, batch_size <= 0.

Issue 23: every expert has a fingerprint (a user's own expert object without one is relabelled after new
weights, with a warning); format-1 label stores upgrade in place to format 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import flax.linen as nn  # noqa: E402

from mll_jax import hub as hub_mod  # noqa: E402
from mll_jax import images as images_mod  # noqa: E402
from mll_jax import sdag as sdag_mod  # noqa: E402
from mll_jax.hub import ModelHub, PreprocessSpec, UntrustedModuleError  # noqa: E402
from mll_jax.errors import LabellingError  # noqa: E402
from mll_jax.expert_fingerprint import expert_fingerprint, tree_fingerprint  # noqa: E402
from mll_jax.images import ImageBatchError  # noqa: E402
from mll_jax.label_upgrade import FORMAT_1, FORMAT_2, label_format, upgrade_label_store  # noqa: E402
from mll_jax.labelling import LabelStore, LabelStoreCorruptError, label_models, node_mean_logits  # noqa: E402
from mll_jax.models import FlaxModuleExpert  # noqa: E402
from mll_jax.sdag import SDAG  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOG, TOY_DOG, CHIHUAHUA, MALTESE = "n02084071", "n02085374", "n02085620", "n02085936"


class TinyDense(nn.Module):
    """Importable (module-level) Flax expert: flatten -> Dense."""

    features: int = 3

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.features, name="head")(x.reshape((x.shape[0], -1)))


SPEC = PreprocessSpec((6, 6), mean=(127.5,) * 3, std=(64.0,) * 3)


def _vars(seed, features=3):
    rng = np.random.default_rng(seed)
    return {"params": {"head": {"kernel": rng.normal(scale=0.1, size=(108, features)).astype(np.float32),
                                "bias": rng.normal(size=features).astype(np.float32)}}}


def _rand_images(n, seed, size=6):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture
def small(wn):
    g = SDAG.from_wnids([DOG, TOY_DOG, CHIHUAHUA, MALTESE], wn=wn)
    for i, w in enumerate((TOY_DOG, CHIHUAHUA, MALTESE)):
        g.set_images(w, _rand_images(2 + i, i))
    return g


# ------------------------------------------------------------------------- item 2: stale labels


def test_reregistered_model_is_relabelled_with_the_new_weights(tmp_path, small):
    hub = ModelHub(tmp_path / "hub")
    hub.add_flax_module("m", TinyDense(), _vars(1), SPEC)
    e1 = hub.load("m")
    assert isinstance(e1.fingerprint, str) and len(e1.fingerprint) == 64
    store = LabelStore(tmp_path / "labels")
    assert label_models(small, [e1], store, progress=False)["m"]["computed"] == 3
    assert store.fingerprint("m") == e1.fingerprint
    old = store.read_all("m")[1]

    hub.add_flax_module("m", TinyDense(), _vars(2), SPEC, overwrite=True)  # new weights, same id
    e2 = ModelHub(tmp_path / "hub").load("m")
    assert e2.fingerprint != e1.fingerprint
    with pytest.warns(UserWarning, match="'m' changed since it was labelled"):
        summary = label_models(small, [e2], store, progress=False)
    assert summary["m"]["computed"] == 3 and summary["m"]["fingerprint_changed"] is True
    assert store.fingerprint("m") == e2.fingerprint
    fresh = LabelStore(tmp_path / "fresh")
    label_models(small, [e2], fresh, progress=False)
    nodes, new = store.read_all("m")
    assert nodes == fresh.read_all("m")[0] and np.array_equal(new, fresh.read_all("m")[1])
    assert np.abs(new - old).max() > 1e-3
    # the raw cache holds only the new version now: a third run computes nothing
    assert label_models(small, [e2], store, progress=False)["m"]["computed"] == 0
    assert store.raw_fingerprints("m") == {e2.fingerprint}


def test_fingerprint_follows_weights_and_options(tmp_path):
    w = tmp_path / "w.pth"
    w.write_bytes(b"one")
    hub = ModelHub(tmp_path / "hub")
    hub.register("e", "efficientnet_lite", options={"variant": "lite0", "weights_path": str(w)})
    fp = hub.fingerprint("e")
    assert hub.entry("e")["fingerprint"] == fp
    w.write_bytes(b"two!")  # weights replaced in place (no re-registration)
    assert hub.fingerprint("e") != fp
    w.write_bytes(b"one")
    assert hub.fingerprint("e") == fp
    hub.register("e", "efficientnet_lite", options={"variant": "lite1", "weights_path": str(w)}, overwrite=True)
    assert hub.fingerprint("e") != fp


# ---------------------------------------------------------------------- item 3: hub directories


def test_hub_ids_never_share_a_directory(tmp_path):
    hub = ModelHub(tmp_path / "hub")
    hub.add_flax_module("p/q", TinyDense(), _vars(1), SPEC)
    hub.add_flax_module("p__q", TinyDense(), _vars(2), SPEC)
    assert hub.model_dir("p/q") != hub.model_dir("p__q")
    dirs = [e["dir"] for e in json.loads((tmp_path / "hub" / "manifest.json").read_text())["models"].values()]
    assert len(set(dirs)) == 2
    x = _rand_images(3, 0)
    want = {m: np.asarray(TinyDense().apply(_vars(s), SPEC(x))) for m, s in (("p/q", 1), ("p__q", 2))}
    fresh = ModelHub(tmp_path / "hub")
    for m in ("p/q", "p__q"):
        np.testing.assert_allclose(fresh.load(m).logits(x), want[m], atol=1e-5)
    fresh.remove("p/q")  # must not delete the other model's files
    np.testing.assert_allclose(ModelHub(tmp_path / "hub").load("p__q").logits(x), want["p__q"], atol=1e-5)
    assert not os.path.exists(tmp_path / "hub" / "models" / "p+q") and os.path.isdir(tmp_path / "hub" / "models" / "p__q")


def test_legacy_hub_directories_still_load(tmp_path):
    root = tmp_path / "hub"
    hub = ModelHub(root)
    hub.add_flax_module("a/b", TinyDense(), _vars(3), SPEC)
    data = json.loads((root / "manifest.json").read_text())
    os.rename(hub.model_dir("a/b"), root / "models" / "a__b")  # the old layout: no "dir", id with / -> __
    del data["models"]["a/b"]["dir"]
    (root / "manifest.json").write_text(json.dumps(data))
    ex = ModelHub(root).load("a/b")
    x = _rand_images(2, 1)
    np.testing.assert_allclose(ex.logits(x), np.asarray(TinyDense().apply(_vars(3), SPEC(x))), atol=1e-5)
    # a new id whose name the legacy directory took gets a hashed one; case variants never share one
    hub2 = ModelHub(root)
    hub2.add_flax_module("a__b", TinyDense(), _vars(4), SPEC)
    hub2.add_flax_module("A__B", TinyDense(), _vars(5), SPEC)
    dirs = {m: os.path.basename(hub2.model_dir(m)) for m in ("a/b", "a__b", "A__B")}
    assert dirs["a/b"] == "a__b" and len({d.lower() for d in dirs.values()}) == 3, dirs
    np.testing.assert_allclose(ModelHub(root).load("a/b").logits(x),
                               np.asarray(TinyDense().apply(_vars(3), SPEC(x))), atol=1e-5)
    data = json.loads((root / "manifest.json").read_text())
    # a tampered manifest cannot point outside the hub or two ids at one directory
    data["models"]["A__B"]["dir"] = "a__b"
    (root / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="point at one directory"):
        ModelHub(root).load("a/b")
    data["models"]["a/b"]["dir"] = "../../etc"
    (root / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="invalid directory name"):
        ModelHub(root).model_dir("a/b")


# ---------------------------------------------------------------------- item 8: module_class, batch_size


def test_manifest_module_class_is_checked_before_any_import(tmp_path, monkeypatch):
    pkg = tmp_path / "site"
    pkg.mkdir()
    marker = tmp_path / "imported"
    (pkg / "evil_mod_xyz.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                         "import flax.linen as nn\n"
                                         "class Net(nn.Module):\n"
                                         "    @nn.compact\n"
                                         "    def __call__(self, x):\n"
                                         "        return nn.Dense(2)(x.reshape((x.shape[0], -1)))\n")
    monkeypatch.syspath_prepend(str(pkg))
    hub = ModelHub(tmp_path / "hub")
    hub.register("evil", "flax_module", num_heads=2,
                 options={"module_class": "evil_mod_xyz:Net", "preprocess": SPEC.to_dict()})
    with pytest.raises(UntrustedModuleError, match="not in a trusted package.*nothing was imported"):
        hub.load("evil")
    assert not marker.exists() and "evil_mod_xyz" not in sys.modules
    hub.register("os", "flax_module", num_heads=2, options={"module_class": "os:system", "preprocess": {}})
    with pytest.raises(UntrustedModuleError):
        hub.load("os")
    # explicit opt-in: now it is imported (and fails later only because no variables were saved)
    with pytest.raises(FileNotFoundError, match="variables"):
        ModelHub(tmp_path / "hub", trusted_modules=["evil_mod_xyz"]).load("evil")
    assert marker.exists()
    sys.modules.pop("evil_mod_xyz", None)
    # a trusted package, but not a Flax module class
    hub.register("np", "flax_module", num_heads=2, options={"module_class": "mll_jax.utils:home",
                                                             "preprocess": SPEC.to_dict()})
    with pytest.raises(UntrustedModuleError, match="not a flax.linen.Module subclass"):
        hub.load("np")
    assert "mll_jax" in hub_mod.DEFAULT_TRUSTED_MODULES


def test_batch_size_zero_is_refused(tmp_path, small):
    hub = ModelHub(tmp_path / "hub")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        hub.add_flax_module("z", TinyDense(), _vars(1), SPEC, batch_size=0)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        hub.register("z", "flax_module", options={"module_class": "x:Y", "batch_size": 0})
    e = FlaxModuleExpert(TinyDense(), _vars(1), SPEC, "e", num_heads=3)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        node_mean_logits(e, _rand_images(2, 0), batch_size=0)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            label_models(small, [e], tmp_path / "labels", batch_size=bad, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        FlaxModuleExpert(TinyDense(), _vars(1), SPEC, "e", batch_size=0)


# ---------------------------------------------------------------------- item 5: image batches


def test_single_image_is_refused_everywhere_with_the_contract_message(tmp_path, small):
    one = _rand_images(1, 5)[0]  # (6, 6, 3): one image, or 6 grayscale 6x3 images?
    e = FlaxModuleExpert(TinyDense(), _vars(1), SPEC, "e", num_heads=3)
    calls = [lambda: small.set_images(DOG, one),
             lambda: small.add_images_from_arrays(one, np.zeros(6, int), ["dog"], {"dog": DOG}),
             lambda: node_mean_logits(e, one),
             lambda: e.logits(one),
             lambda: SPEC(one)]
    for call in calls:
        with pytest.raises(ImageBatchError, match=r"ambiguous.*images\[None\]"):
            call()
    assert small.num_images(DOG) == 0
    np.testing.assert_allclose(e.logits(one[None]), e.logits(_rand_images(1, 5)), atol=0)
    assert sdag_mod.IMAGE_EXTENSIONS is images_mod.IMAGE_EXTENSIONS
    assert sdag_mod.ImageDecodeError is images_mod.ImageDecodeError


def test_sdag_folder_import_uses_the_one_decode_rule(tmp_path, wn):
    from PIL import Image

    d = tmp_path / "data" / DOG
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(d / f"{i}.png")
    g = SDAG.from_wnids([DOG], wn=wn)
    g.add_images_from_folder(tmp_path / "data", image_size=16, progress=False)
    want = np.stack([images_mod.load_image(d / f"{i}.png", 16) for i in range(2)])  # bicubic + centre crop
    np.testing.assert_array_equal(g.images(DOG), want)


# ---------------------------------------------------------------------- item 6: store corruption


def _two_model_store(tmp_path, small):
    store = LabelStore(tmp_path / "labels")
    experts = [FlaxModuleExpert(TinyDense(), _vars(s), SPEC, m, num_heads=3) for m, s in (("A", 1), ("B", 2))]
    label_models(small, experts, store, progress=False)
    return store, experts


def test_truncated_meta_names_file_and_model_and_other_models_stay_usable(tmp_path, small):
    store, experts = _two_model_store(tmp_path, small)
    b_labels = store.read_all("B")[1]
    meta = store.model_dir("A") / "meta.json"
    meta.write_bytes(meta.read_bytes()[:25])
    fresh = LabelStore(tmp_path / "labels")
    assert fresh.model_ids() == ["B"]
    assert list(fresh.damaged_models()) == ["A"] and "meta.json" in fresh.damaged_models()["A"]
    np.testing.assert_array_equal(fresh.read_all("B")[1], b_labels)
    with pytest.raises(LabelStoreCorruptError, match=r"meta\.json of model 'A' is damaged.*store\.delete\('A'\)"):
        fresh.read("A", [TOY_DOG])
    fresh.delete("A")  # the recovery the message names
    label_models(small, experts, fresh, progress=False)
    assert fresh.model_ids() == ["A", "B"] and fresh.damaged_models() == {}


def test_edited_index_is_detected(tmp_path, small):
    store, _ = _two_model_store(tmp_path, small)
    meta = json.loads((store.model_dir("A") / "meta.json").read_text())
    f = store.model_dir("A") / meta["index"]
    doc = json.loads(f.read_text())
    doc["nodes"][0], doc["nodes"][1] = doc["nodes"][1], doc["nodes"][0]  # valid JSON, wrong rows
    f.write_text(json.dumps(doc))
    fresh = LabelStore(tmp_path / "labels")
    with pytest.raises(LabelStoreCorruptError, match=r"index\.json of model 'A' is damaged \(checksum mismatch"):
        fresh.read("A", [doc["nodes"][0]])
    assert fresh.model_ids() == ["B"] and "A" in fresh.damaged_models()
    with pytest.raises(LabelStoreCorruptError):
        fresh.check("A")
    fresh.check("B")


def test_damaged_raw_chunk_names_file_and_model_with_hint(tmp_path, small):
    store, experts = _two_model_store(tmp_path, small)
    (raw,) = (store.model_dir("A") / "raw").iterdir()
    raw.write_bytes(raw.read_bytes()[:40])
    with pytest.raises(LabelStoreCorruptError, match=rf"{raw.name} of model 'A' is damaged.*clear_raw\('A'\)"):
        label_models(small, experts, store, progress=False)
    with pytest.raises(LabelStoreCorruptError):
        store.check("A")
    assert store.model_ids() == ["A", "B"]  # the committed labels are intact
    store.clear_raw("A")
    assert label_models(small, experts, store, progress=False)["A"]["computed"] == 3


# ---------------------------------------------------------------------- item 7: SDAG order


_ORDER_SCRIPT = """
import hashlib, json, sys
from mll_jax.sdag import SDAG
from mll_jax.wordnet import get_wordnet
wn = get_wordnet()
a = SDAG.from_roots(["n02084071"], max_depth=2, include_instances=True, wn=wn)
b = SDAG.from_wnids(["n02085620", "n02110958", "n01440764"], close_hypernyms=True, wn=wn)
b.add_node("robo pup", hypernyms=["n02084071"])
print(json.dumps([list(g.nodes) + [p + ">" + c for p, c in g.edges()] for g in (a, b)]))
"""


def test_sdag_order_does_not_depend_on_the_hash_seed():
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
        r = subprocess.run([sys.executable, "-c", _ORDER_SCRIPT], capture_output=True, text=True, env=env,
                           timeout=300, cwd=str(ROOT))
        assert r.returncode == 0, r.stderr[-2000:]
        outs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    assert outs[0] == outs[1]
    assert len(outs[0][0]) > 100  # dog and two levels of hyponyms: many set-ordered siblings


# ------------------------------------------------------------- issue 23, item 1: every expert has a fingerprint


class OpaqueExpert:
    """A user's own expert: model_id, num_heads, logits; no fingerprint, no reachable parameters."""

    def __init__(self, model_id, seed, noise=0.0):
        rng = np.random.default_rng(seed)
        self.model_id, self.num_heads = model_id, 3
        self._w = rng.normal(size=(3, 3)).astype(np.float32)
        self._noise = noise  # relative float round-off of another run
        self.calls = 0

    def logits(self, images):
        self.calls += 1
        x = np.asarray(images, np.float32).reshape(len(images), -1, 3).mean(axis=1) / 255.0
        out = x @ self._w
        return (out * (1 + self._noise * np.sign(out))).astype(np.float32)


class ParamsExpert(OpaqueExpert):
    def __init__(self, model_id, seed):
        super().__init__(model_id, seed)
        self.params = {"w": self._w}


def test_expert_fingerprint_sources():
    own = OpaqueExpert("m", 1)
    own.fingerprint = "hub-sha"
    assert expert_fingerprint(own) == "hub-sha" and own.calls == 0
    own.fingerprint = 3
    with pytest.raises(LabellingError, match="'m': fingerprint must be a non-empty string"):
        expert_fingerprint(own)
    # parameters: no forward pass; equal weights -> equal fingerprints; any weight change -> another one
    a, b, c = ParamsExpert("m", 1), ParamsExpert("other id", 1), ParamsExpert("m", 2)
    fa = expert_fingerprint(a)
    assert len(fa) == 64 and fa == expert_fingerprint(b) != expert_fingerprint(c) and a.calls == 0
    a.params["w"] = a.params["w"].copy()
    a.params["w"][0, 0] += 1e-3
    assert expert_fingerprint(a) != fa
    assert tree_fingerprint({"a": [1, 2]}) is None and tree_fingerprint({"a": np.zeros(2)}) is not None
    # outputs on the seeded probe batch: stable across instances and float round-off, changed by new weights
    o1, o2, o3 = OpaqueExpert("m", 1), OpaqueExpert("m", 1, noise=1e-6), OpaqueExpert("m", 2)
    fo = expert_fingerprint(o1)
    assert fo == expert_fingerprint(o2) != expert_fingerprint(o3) and o1.calls == 1
    assert expert_fingerprint(o1) == fo  # deterministic


def test_expert_fingerprint_probe_failure_says_what_to_do():
    class Picky(OpaqueExpert):
        input_size = 5

        def logits(self, images):
            raise ValueError(f"needs 6x6 images, got {images.shape}")

    with pytest.raises(LabellingError, match=r"'p' .*\(4, 5, 5, 3\) probe batch raised ValueError.*`fingerprint`"):
        expert_fingerprint(Picky("p", 0))


def test_fingerprintless_expert_with_new_weights_is_relabelled(tmp_path, small):
    """The library path: a user's expert object without a fingerprint, then the same id with new weights."""
    store = LabelStore(tmp_path / "labels")
    old_expert = OpaqueExpert("mine", 1)
    assert label_models(small, [old_expert], store, progress=False)["mine"]["computed"] == 3
    assert store.fingerprint("mine") == expert_fingerprint(old_expert)
    old = store.read_all("mine")[1]
    assert label_models(small, [OpaqueExpert("mine", 1)], store, progress=False)["mine"]["computed"] == 0

    new_expert = OpaqueExpert("mine", 2)
    with pytest.warns(UserWarning, match="'mine' changed since it was labelled"):
        summary = label_models(small, [new_expert], store, progress=False)
    assert summary["mine"]["computed"] == 3 and summary["mine"]["fingerprint_changed"] is True
    fresh = LabelStore(tmp_path / "fresh")
    label_models(small, [OpaqueExpert("mine", 2)], fresh, progress=False)
    new = store.read_all("mine")[1]
    assert np.array_equal(new, fresh.read_all("mine")[1]) and np.abs(new - old).max() > 1e-3
    assert store.fingerprint("mine") == expert_fingerprint(new_expert)


# ------------------------------------------------------------- issue 23, item 4: format-1 stores upgrade in place


def test_format1_store_upgrades_in_place_to_format2(tmp_path, small):
    old = LabelStore(tmp_path / "labels", format=1)
    hub = ModelHub(tmp_path / "hub")
    hub.add_flax_module("m", TinyDense(), _vars(1), SPEC)
    e = hub.load("m")
    label_models(small, [e], old, progress=False)
    assert label_format(old, "m") == FORMAT_1
    nodes, labels = old.read_all("m")
    info = old.info("m")
    assert upgrade_label_store(tmp_path / "labels") == ["m"]
    new = LabelStore(tmp_path / "labels")
    assert label_format(new, "m") == FORMAT_2
    n2, l2 = new.read_all("m")
    assert n2 == nodes and l2.dtype == np.float32 and np.array_equal(l2, labels)  # bitwise
    got = new.info("m")
    for k in ("fingerprint", "delta", "head_names", "num_images", "num_heads", "num_nodes"):
        assert got[k] == info[k], k
    np.testing.assert_array_equal(new.read("m", nodes[::-1]), labels[::-1])
    new.check("m")
    assert upgrade_label_store(new) == []  # already format 2
    # nothing to relabel afterwards
    assert label_models(small, [e], new, progress=False)["m"]["computed"] == 0
