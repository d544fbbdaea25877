"""The scale benchmark (``mll_lab.scale``, ``benchmarks/scale_bench.py``) end to end at a tiny size: a WordNet SDAG
with images from an ImageNet-style folder, a hub of the CIFAR-10 CNN plus HF Flax models saved and registered as
``hf:<dir>``, labelling with a SIGKILLed and resumed ``mll-jax label``, tasks matched, read, selected and
classified, and the report (tables, growth exponents, figure, results files)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mll_jax import MLL, SDAG, MLLError
from mll_lab.results import write_results
from mll_lab.scale import Meter, growth_exponent, pick_classes, wordnet_node_ids
from mll_lab.scale_report import markdown_report, plot_growth, run_scale_bench


def test_growth_exponent_and_meter():
    assert growth_exponent([1, 2, 4], [3, 6, 12]) == pytest.approx(1.0)
    assert growth_exponent([1, 2, 4], [1, 4, 16]) == pytest.approx(2.0)
    assert growth_exponent([5], [1.0]) is None
    with Meter() as m:
        x = np.ones(20_000_000 // 8)  # 20 MB, touched
        x += 1
    r = m.result
    assert r["wall_s"] > 0 and r["rss_peak_mb"] >= r["rss_start_mb"] and r["maxrss_mb"] > 0


def test_wordnet_nodes_are_breadth_first_below_physical_entity():
    ids = wordnet_node_ids(40)
    assert len(ids) == 40 == len(set(ids)) and ids[0] == "n00001930"
    assert ids == wordnet_node_ids(60)[:40]  # a prefix: smaller SDAGs are subsets of larger ones


def test_scale_bench_tiny_end_to_end(tmp_path):
    shipped = ("cifar10-cnn",)
    # the kill comes at the first progress report past 10% of the nodes, long before the victim's 250 nodes are done
    res = run_scale_bench(tmp_path / "work", node_counts=[250], models=3, model_counts=[2], shipped=shipped,
                          classes=[4], images_per_node=1, image_size=32, unit_nodes=8, kill_test=True,
                          kill_after=0.1, test_per_class=1, bare_seconds=0.05, log=lambda *a: None)
    (p,) = res["points"]
    # the shape: at least the requested nodes (plus hypernyms), every node with its image, the hub as asked
    assert p["nodes"] >= 250 and p["nodes_with_images"] == p["nodes"]
    assert p["hub"][0] == "cifar10-cnn" and len(p["hub"]) == 3
    assert {m.split("-")[0] for m in p["hub"][1:]} == {"vit", "resnet"}
    for m, r in p["models"].items():
        assert r["labelled_nodes"] == p["nodes"], m
        assert r["computed_nodes"] + r["cached_nodes"] == p["nodes_with_images"], m
        assert r["bare_images_per_s"] > 0
    # the killed run lost at most one unit, and the resumed run computed only what was not on disk
    k = p["kill"]
    assert k["killed"] and k["returncode"] == -9
    assert k["persisted_nodes"] > 0 and k["lost_nodes"] <= k["unit_nodes"]
    victim = p["models"][p["hub"][-1]]
    assert victim["cached_nodes"] == k["persisted_nodes"]
    assert victim["computed_nodes"] == p["nodes_with_images"] - k["persisted_nodes"]
    # the task: every class matched, covered and served by experts (no loss threshold), every test image predicted
    t = p["tasks"]["4"]
    assert t["matched"] == 4 and t["covered"] == 4 and t["classes_with_models"] == 4
    assert t["label_read_values"] == 4 * sum(1000 if m != "cifar10-cnn" else 10 for m in p["hub"])
    assert t["predicted"] == t["test_images"] == 4
    assert "select_2_models" in t and t["select"]["wall_s"] > 0
    # the report
    s = res["summary"]
    assert s["model_growth"]["labelling"]["models"] == [2, 3]
    assert s["model_growth"]["labelling"]["exponent"] is not None
    text = markdown_report(res)
    assert "Kill test" in text and "select_warm" in text
    png = plot_growth(res, tmp_path / "growth.png")
    assert png.stat().st_size > 1000
    js, md = write_results("scale_tiny", res, text, directory=tmp_path)
    doc = json.loads(js.read_text())
    assert doc["points"][0]["nodes"] == p["nodes"] and doc["provenance"]["commit"]


def test_pick_classes_unique_leaf_names():
    sdag = SDAG.from_wnids(wordnet_node_ids(300), close_hypernyms=True)
    for w in sdag.nodes:
        sdag.set_images(w, np.zeros((1, 4, 4, 3), np.uint8))
    names = pick_classes(sdag, 20, seed=1)
    assert len(names) == len({n.lower() for n in names}) == 20
    assert names == pick_classes(sdag, 20, seed=1)


def test_add_images_of_many_nodes_saves_the_sdag_once(tmp_path, monkeypatch):
    """``MLL.add_images({node: images})`` fills many nodes with one save of the SDAG (a call per node rewrites its
    index every time: quadratic in the nodes)."""
    sdag = SDAG.from_wnids(wordnet_node_ids(30))
    mll = MLL.open(tmp_path / "mll", sdag=sdag)
    saves = []
    real_save = mll.sdag.save
    monkeypatch.setattr(mll.sdag, "save", lambda d: saves.append(d) or real_save(d))
    imgs = {w: np.full((2, 8, 8, 3), i, np.uint8) for i, w in enumerate(sdag.nodes[:20])}
    mll.add_images(imgs)
    assert len(saves) == 1
    mll.add_images(sdag.nodes[25], np.zeros((1, 8, 8, 3), np.uint8))
    assert len(saves) == 2
    again = MLL.open(tmp_path / "mll")
    assert len(again.sdag.nodes_with_images()) == 21
    np.testing.assert_array_equal(again.sdag.images(sdag.nodes[3]), imgs[sdag.nodes[3]])
    with pytest.raises(MLLError, match="images are missing"):
        mll.add_images(sdag.nodes[0])
    with pytest.raises(MLLError, match="one {node: images} mapping"):
        mll.add_images(imgs, np.zeros((1, 8, 8, 3), np.uint8))
