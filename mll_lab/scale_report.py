"""The scale benchmark's growth runs, tables and figure (``benchmarks/scale_bench.py``; one point:
:func:`mll_lab.scale.run_scale_point`).

Growth in nodes: one point per node count (same hub).  Growth in models: at the largest node count, labelling of
the first k hub models (the sum of their measured labelling times) and selection over the first k models.  The
growth exponent of a stage is the least-squares slope of log(seconds) against log(size): 1 is linear.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mll_jax import MLL, SDAG, MLLConfig
from mll_lab.results import markdown_table
from mll_lab.scale import (SHIPPED, Meter, base_photos, bare_forward, growth_exponent, perturbed,
                           run_scale_point, wordnet_node_ids, write_image_folder)

__all__ = ["run_scale_bench", "summarise", "markdown_report", "plot_growth", "full_size_costs", "NODE_STAGES"]

#: stages of one point whose time is compared across node counts
NODE_STAGES = ("sdag_build", "image_folder_write", "sdag_images_ingest", "labelling_all")
TASK_STAGES = ("match", "label_reads", "select", "select_warm", "classify")


def run_scale_bench(work: str | os.PathLike, *, node_counts: Sequence[int], models: int,
                    model_counts: Sequence[int], log=print, **point_options) -> dict[str, Any]:
    """One :func:`run_scale_point` per node count (ascending; the kill test and the model-count selections only at
    the largest); returns {"points": [...], "summary": ...}."""
    work = Path(work)
    counts = sorted(set(int(n) for n in node_counts))
    std = point_options.get("logit_std", 3.0)
    hf_dir = work / ("hf_models" if std is None else f"hf_models_std{std:g}")
    points = []
    for i, n in enumerate(counts):
        last = i == len(counts) - 1
        log(f"scale point: {n} WordNet nodes requested, {models} models")
        t0 = time.perf_counter()
        opts = dict(point_options)
        kill = opts.pop("kill_test", False) and last
        p = run_scale_point(work / f"point_{n}", nodes=n, models=models, hf_dir=hf_dir, kill_test=kill,
                            model_counts=model_counts if last else (), log=log, **opts)
        p["point_seconds"] = time.perf_counter() - t0
        points.append(p)
    return {"points": points, "summary": summarise(points, model_counts)}


def _task_time(point: dict, c: str, stage: str) -> float | None:
    t = point["tasks"].get(c, {})
    r = t.get(stage)
    return r["wall_s"] if r else None


def summarise(points: list[dict], model_counts: Sequence[int]) -> dict[str, Any]:
    """Per stage the time at each node count and the growth exponents in nodes and in models."""
    full = points[-1]
    nodes = [p["nodes"] for p in points]
    out: dict[str, Any] = {"nodes": nodes, "models": len(full["hub"]), "node_growth": {}, "model_growth": {}}
    for s in NODE_STAGES:
        ts = [p["stages"][s]["wall_s"] for p in points]
        out["node_growth"][s] = {"seconds": ts, "exponent": growth_exponent(nodes, ts)}
    for c in full["tasks"]:
        for s in TASK_STAGES:
            ts = [_task_time(p, c, s) for p in points]
            out["node_growth"][f"{s} C={c}"] = {"seconds": ts, "exponent": growth_exponent(nodes, ts)}
    # models: labelling of the first k models (their measured times summed) and selection over the first k
    ids = full["hub"]
    ks = sorted({k for k in model_counts if 0 < k < len(ids)} | {len(ids)})
    lab = [sum(full["models"][m]["wall_s"] for m in ids[:k]) for k in ks]
    out["model_growth"]["labelling"] = {"models": ks, "seconds": lab, "exponent": growth_exponent(ks, lab)}
    for c, t in full["tasks"].items():
        if not all(f"select_{k}_models" in t for k in ks if k < len(ids)):
            continue
        sel = [t[f"select_{k}_models"]["wall_s"] if k < len(ids) else t["select_warm"]["wall_s"] for k in ks]
        out["model_growth"][f"select (warm) C={c}"] = {"models": ks, "seconds": sel, "exponent": growth_exponent(ks, sel)}
    ratios = {m: r["ratio_to_bare"] for m, r in full["models"].items() if r.get("ratio_to_bare")}
    out["label_vs_bare"] = {"min": min(ratios.values()) if ratios else None,
                            "median": float(np.median(list(ratios.values()))) if ratios else None,
                            "max": max(ratios.values()) if ratios else None}
    return out


def _fmt(x, nd=2):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def markdown_report(result: dict[str, Any], *, device: str = "cpu") -> str:
    """Tables for people: the largest point's stages and tasks, the per-architecture labelling throughput, the
    growth exponents and the kill test."""
    pts, summ = result["points"], result["summary"]
    full = pts[-1]
    mb = 2 ** 20
    lines = [f"Largest point: **{full['nodes']} SDAG nodes** ({full['edges']} edges, {full['nodes_with_images']} with "
             f"{full['images_per_node']} image(s) of {full['image_size']} px), **{len(full['hub'])} experts**, label "
             f"store {full['label_store_bytes'] / mb:.0f} MB; accelerator: {device}.", ""]
    rows = []
    for s, r in full["stages"].items():
        rows.append([s, _fmt(r["wall_s"]), _fmt(r["cpu_s"]), _fmt(r["read_bytes"] / mb, 1),
                     _fmt(r["written_bytes"] / mb, 1), _fmt(r["rss_peak_mb"], 0),
                     _fmt(summ["node_growth"].get(s, {}).get("exponent"))])
    lines += ["**Build and labelling stages** (wall and CPU seconds, MB read / written by the process, peak RSS "
              "during the stage, growth exponent in nodes):", "",
              markdown_table(["stage", "wall s", "CPU s", "read MB", "written MB", "peak RSS MB", "exp. nodes"], rows),
              ""]
    rows = []
    for c, t in full["tasks"].items():
        for s in ("match_cold", "match", "label_reads", "select", "select_warm", "classify"):
            if s not in t:
                continue
            r = t[s]
            key = f"{s} C={c}"
            rows.append([c, s, _fmt(r["wall_s"]), _fmt(r["read_bytes"] / mb, 2), _fmt(r["rss_peak_mb"], 0),
                         _fmt(summ["node_growth"].get(key, {}).get("exponent")),
                         _fmt(summ["model_growth"].get(f"select (warm) C={c}", {}).get("exponent")) if s == "select_warm"
                         else "-"])
        rows.append([c, "covered / models used", f"{t['covered']}/{c}", f"{t['models_used']}", "", "", ""])
        if t.get("chco"):
            ch = t["chco"]
            rows.append([c, "CHCO iterations mean / max, not converged", f"{ch['iterations_mean']:.0f} / "
                         f"{ch['iterations_max']}", f"{ch['not_converged']}", "", "", ""])
    lines += ["**Tasks** (matching against every labelled node, label reads of every model at the matched nodes, "
              "CHCO selection over every expert -- `select` is the first call, with XLA's compilation for the "
              "task's shapes, `select_warm` the same call again -- and classification of a test folder; "
              "`match_cold` embeds every node text once):", "",
              markdown_table(["C", "stage", "wall s", "read MB", "peak RSS MB", "exp. nodes", "exp. models"], rows),
              ""]
    rows = []
    for m, r in full["models"].items():
        rows.append([m, r["computed_nodes"], _fmt(r["wall_s"]), _fmt(r["label_images_per_s"], 0),
                     _fmt(r["bare_images_per_s"], 0), _fmt(100 * r["ratio_to_bare"] if r["ratio_to_bare"] else None, 1)])
    lines += ["**Labelling per model** (one model at a time through `MLL.label`; bare: the jitted network alone "
              "on a preprocessed device-resident batch, same process):", "",
              markdown_table(["model", "nodes computed", "wall s", "labelling img/s", "bare img/s", "% of bare"],
                             rows), ""]
    rows = [[k, _fmt(v.get("exponent")), " ".join(_fmt(x) for x in v["seconds"])]
            for k, v in summ["model_growth"].items()]
    ks = next(iter(summ["model_growth"].values()))["models"]
    lines += [f"**Growth in models** ({', '.join(map(str, ks))} models at {full['nodes']} nodes; labelling: the "
              "sum of the first k models' measured times):", "",
              markdown_table(["stage", "exponent", "seconds"], rows), ""]
    rows = [[k, _fmt(v.get("exponent")), " ".join(_fmt(x) for x in v["seconds"])]
            for k, v in summ["node_growth"].items()]
    lines += [f"**Growth in nodes** ({', '.join(map(str, summ['nodes']))} nodes):", "",
              markdown_table(["stage", "exponent", "seconds"], rows), ""]
    if "kill" in full:
        k = full["kill"]
        lines += [f"**Kill test:** `mll-jax label` of one model SIGKILLed after its progress bar showed "
                  f"{k['printed_progress']} nodes; {k.get('persisted_nodes')} nodes were on disk; lost "
                  f"{k.get('lost_nodes')} nodes (a unit is {k.get('unit_nodes')} nodes).", ""]
    if result.get("full_size"):
        rows = [[a, r["config"], _fmt(r["gflops_per_image"], 2), r["batch"], _fmt(r["images_per_s"], 2),
                 _fmt(r["label_images_per_s"], 2), _fmt(100 * r["ratio_to_bare"], 0)]
                for a, r in result["full_size"].items()]
        lines += ["**Full-size architectures** (default configurations at 224 px, random weights, 1,000 heads, "
                  "saved and registered as `hf:<dir>`; GFLOP by XLA's cost analysis; labelling: `MLL.label` of a few 224 px nodes, "
                  "run a second time with `recompute=True` so the compilation is not counted):", "",
                  markdown_table(["architecture", "configuration", "GFLOP / image", "batch", "bare img/s",
                                  "labelling img/s", "% of bare"], rows), ""]
    return "\n".join(lines)


def plot_growth(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Log-log figure: stage seconds against nodes (left) and against models (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = result["summary"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.5))
    nodes = summ["nodes"]
    for k, v in summ["node_growth"].items():
        ts = v["seconds"]
        if any(t is None or t <= 0 for t in ts) or (" C=" in k and not k.startswith(("select", "match"))):
            continue
        a.plot(nodes, ts, "o-", label=f"{k} ({_fmt(v['exponent'])})")
    ref = np.array(nodes, float)
    a.plot(ref, ref / ref[0] * 0.1, "k:", label="slope 1")
    a.set(xscale="log", yscale="log", xlabel="SDAG nodes", ylabel="seconds", title="growth in nodes")
    a.legend(fontsize=7)
    for k, v in summ["model_growth"].items():
        if any(t is None or t <= 0 for t in v["seconds"]):
            continue
        b.plot(v["models"], v["seconds"], "o-", label=f"{k} ({_fmt(v['exponent'])})")
    ks = np.array(next(iter(summ["model_growth"].values()))["models"], float)
    b.plot(ks, ks / ks[0] * 1.0, "k:", label="slope 1")
    b.set(xscale="log", yscale="log", xlabel="hub experts", ylabel="seconds", title=f"growth in models ({nodes[-1]} nodes)")
    b.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def full_size_costs(work: str | os.PathLike, archs: Sequence[str] = ("vit", "beit", "dinov2", "resnet", "regnet"),
                    nodes: int = 12, images_per_node: int = 2, batch: int = 8, seconds: float = 2.0,
                    log=print) -> dict[str, dict]:
    """Each architecture's default (full-size) configuration at 224 px with 1,000 heads and random weights, saved
    with ``save_pretrained`` and registered as ``hf:<dir>`` in a small system (``nodes`` nodes of
    ``images_per_node`` 224 px images): FLOPs per image (XLA cost analysis of the bare forward), images/s of the
    bare jitted forward, and of ``MLL.label`` end to end (host decode, preprocessing, forward, node means)."""
    import jax
    import transformers as tf

    specs = {"vit": (tf.ViTConfig, tf.FlaxViTForImageClassification, "ViT-B/16"),
             "beit": (tf.BeitConfig, tf.FlaxBeitForImageClassification, "BEiT-B/16"),
             "dinov2": (tf.Dinov2Config, tf.FlaxDinov2ForImageClassification, "DINOv2-B/14"),
             "resnet": (tf.ResNetConfig, tf.FlaxResNetForImageClassification, "ResNet-50"),
             "regnet": (tf.RegNetConfig, tf.FlaxRegNetForImageClassification, "RegNet (default config)")}
    work = Path(work)
    if work.exists():
        shutil.rmtree(work)
    sdag = SDAG.from_wnids(wordnet_node_ids(nodes))
    write_image_folder(work / "images", list(sdag.nodes), images_per_node, 224)
    mll = MLL.open(work / "mll", sdag=sdag, config=MLLConfig(progress=False), text_cache=work / "text_cache")
    mll.add_images_from_folder(work / "images", n_per_node=images_per_node, image_size=224, progress=False)
    probe = perturbed(base_photos(224), 1, batch)
    out = {}
    for a in archs:
        cfg_cls, model_cls, label = specs[a]
        kw = {"image_size": 224} if a in ("vit", "beit", "dinov2") else {}
        model = model_cls(cfg_cls(num_labels=1000, **kw), input_shape=(1, 224, 224, 3), seed=0)
        d = work / "models" / a
        model.save_pretrained(d)
        tf.ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=[0.485, 0.456, 0.406],
                             image_std=[0.229, 0.224, 0.225]).save_pretrained(d)
        del model
        mid = mll.add_model(f"hf:{d}", model_id=f"{a}-full", batch_size=batch)
        with Meter() as cold:
            mll.label([mid])
        with Meter() as m:  # again, compiled: every node recomputed
            mll.label([mid], recompute=True)
        n_img = nodes * images_per_node
        ex = mll.expert(mid)
        x = jax.device_put(np.asarray(ex.preprocess(probe)))
        ca = ex.forward.lower(ex.params, x).compile().cost_analysis()
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        bare = bare_forward(ex, probe, seconds)
        lab = n_img / m.result["wall_s"]
        out[a] = {"config": label, "gflops_per_image": float(ca.get("flops", float("nan"))) / batch / 1e9,
                  "batch": batch, "images_per_s": bare, "label_images": n_img, "label_seconds": m.result["wall_s"],
                  "label_seconds_first": cold.result["wall_s"],
                  "label_images_per_s": lab, "ratio_to_bare": lab / bare, "label_rss_peak_mb": m.result["rss_peak_mb"]}
        log(f"  full size {label:24s} {out[a]['gflops_per_image']:7.2f} GFLOP/image  bare {bare:7.2f} images/s  "
            f"labelling {lab:7.2f} images/s ({100 * lab / bare:.0f}%; {n_img} images; first run with compilation "
            f"{cold.result['wall_s']:.1f} s)")
    return out


def default_shipped(models: int) -> tuple[str, ...]:
    return tuple(SHIPPED[:models])
