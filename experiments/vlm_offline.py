"""Offline VLM benchmark (issue 8): MLL for vision-language models on a hub of small Fashion-MNIST dual encoders.

    MLL_JAX_HOME=... python experiments/vlm_offline.py --out_dir=docs/vlm

1. Trains (or reuses from ``<home>/vlm_offline/hub``) the dual encoders of :data:`mll_jax.vlm.offline.VLM_SPECS`
   on the expert-pool split.
2. Builds the SDAG (the ten Fashion-MNIST class synsets, 50 SDAG-split images each) and labels every VLM over it
   (:func:`mll_jax.vlm.labels.label_vlm`, resumable store ``<home>/vlm_offline/labels``).
3. For every task (``mll_jax.offline.data.TASKS`` + :data:`EXTRA_TASKS`, natural names, the official test split):
   top-1 accuracy of MLL-VLM (k = 1..max_k; selection from the labels only; with the stored labels among all
   nodes, and task-scoped: prediction among the nodes the task matched, the authors' rule), Random (k VLMs drawn
   per class,
   mean over ``--random_draws`` draws, same reuse), INB (single VLM with the best ImageNet accuracy from metadata;
   the offline hub has none, so the best zero-shot accuracy on the SDAG images), the mean single VLM (= expected
   accuracy of a uniformly random single VLM), the oracle single best VLM on the task, and the entropy-weighted
   ensemble of all VLMs.

Writes ``vlm_offline.json``, ``vlm_offline.md`` and ``vlm_accuracy_vs_k.png`` to ``--out_dir``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FLAGS = flags.FLAGS
flags.DEFINE_string("home", None, "cache root (default $MLL_JAX_HOME or ~/.cache/mll_jax); uses <home>/vlm_offline")
flags.DEFINE_string("out_dir", "docs/vlm", "where the table, json and figure go")
flags.DEFINE_integer("max_k", 3, "largest number of VLMs per class")
flags.DEFINE_integer("random_draws", 20, "draws of the Random baseline per task and k")
flags.DEFINE_integer("test_per_class", None, "test images per task class (default: all official test images)")
flags.DEFINE_float("alpha", 0.7, "weight of a class's own F1 in the selection score")
flags.DEFINE_enum("descriptions", "none", ["none", "wordnet"],
                  "class descriptions for matching: none (plain names) or the first WordNet noun sense")
flags.DEFINE_integer("top", 5, "nodes matched per class (the paper: 5)")
flags.DEFINE_list("models", [], "restrict the hub to these model ids (default: all of VLM_SPECS)")
flags.DEFINE_bool("rebuild", False, "retrain the VLMs")


def extra_tasks():
    from mll_jax.offline.data import Task, TaskClass

    def _t(name, description, *classes):
        return Task(name, tuple(TaskClass(n, tuple(m)) for n, m in classes), description)

    return (
        _t("tops", "T-shirt vs pullover vs coat vs shirt", ("T-shirt", [0]), ("pullover", [2]), ("coat", [4]),
           ("shirt", [6])),
        _t("shoes-plural", "sandals vs sneakers vs ankle boots", ("sandals", [5]), ("sneakers", [7]),
           ("ankle boots", [9])),
        _t("frock-jumper-purse", "new wordings: dress vs pullover vs bag", ("frock", [3]), ("jumper", [2]),
           ("purse", [8])),
    )


def main(argv):
    del argv
    import jax

    from mll_jax import wordnet
    from mll_jax.hub import ModelHub
    from mll_jax.offline import data as fdata
    from mll_jax.sdag import SDAG
    from mll_jax.text import lemma_node_text
    from mll_jax.utils import atomic_write_json, atomic_write_text, home
    from mll_jax.vlm import core
    from mll_jax.vlm.labels import VLMLabelStore, label_vlms, node_logits
    from mll_jax.vlm.offline import VLM_SPECS, TextFeatures, train_vlm_hub
    from mll_jax.vlm.select import class_descriptions, class_query_texts, reuse_scores, select_vlms

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every restore at INFO
    t_all = time.perf_counter()
    root = home(FLAGS.home) / "vlm_offline"
    out_dir = Path(FLAGS.out_dir)
    timings = {}
    wn = wordnet.get_wordnet()
    data = fdata.load_fashion_mnist()
    splits = fdata.make_splits(data.train_labels)
    tf = TextFeatures()
    specs = [s for s in VLM_SPECS if not FLAGS.models or s.model_id in FLAGS.models]
    t0 = time.perf_counter()
    vlms = train_vlm_hub(ModelHub(root / "hub"), data, splits, tf, specs, rebuild=FLAGS.rebuild)
    timings["train_or_load_s"] = time.perf_counter() - t0
    ids = [v.model_id for v in vlms]

    t0 = time.perf_counter()
    g = SDAG.from_wnids([c.wnid for c in fdata.CLASS_SYNSETS], wn=wn)
    for w, imgs in fdata.node_data(data, splits).items():
        g.set_images(w, imgs)
    store = VLMLabelStore(root / "labels")
    labels = label_vlms(store, g, vlms)
    nlogits = {m: node_logits(store, labels[m]) for m in ids}
    timings["label_s"] = time.perf_counter() - t0
    nodes = list(labels[ids[0]].nodes)
    node_emb = tf.encoder.encode([lemma_node_text(v, wn) for v in nodes])
    sdag_acc = np.array([labels[m].sdag_accuracy for m in ids])
    inb = int(core.inb_choice(np.full(len(ids), np.nan), sdag_acc))

    t0 = time.perf_counter()
    test_emb = {v.model_id: v.encode_images(data.test_images) for v in vlms}
    timings["test_embed_s"] = time.perf_counter() - t0

    tasks = list(fdata.TASKS) + list(extra_tasks())
    results = []
    key = jax.random.PRNGKey(0)
    for task in tasks:
        names = task.class_names
        idx, y = fdata.task_test_set(task, data.test_images, data.test_labels, max_per_class=FLAGS.test_per_class)
        logits = {v.model_id: v.logit_scale * test_emb[v.model_id][idx] @ v.encode_text([v.prompt(c) for c in names]).T
                  for v in vlms}
        single = np.array([float(np.mean(logits[m].argmax(1) == y)) for m in ids])
        desc = class_descriptions(names, wn=wn) if FLAGS.descriptions == "wordnet" else None
        class_emb = tf.encoder.encode(class_query_texts(names, desc))
        row = {"task": task.name, "classes": names, "n_test": int(len(y)), "single": dict(zip(ids, single.tolist())),
               "inb_model": ids[inb], "inb": float(single[inb]), "oracle_model": ids[int(single.argmax())],
               "oracle": float(single.max()), "mean_single": float(single.mean()), "mll": {}, "mll_task": {},
               "random": {}, "selection": {}}
        for k in range(1, min(FLAGS.max_k, len(ids)) + 1):
            sel = select_vlms(names, labels, nodes, node_emb=node_emb, class_emb=class_emb, k=k, alpha=FLAGS.alpha,
                              top=FLAGS.top)
            row["mll"][k] = float(np.mean(reuse_scores(sel, logits).argmax(1) == y))
            sel_t = select_vlms(names, labels, nodes, node_emb=node_emb, class_emb=class_emb, k=k, alpha=FLAGS.alpha,
                                top=FLAGS.top, scope="task", node_logits=nlogits)
            row["mll_task"][k] = float(np.mean(reuse_scores(sel_t, logits).argmax(1) == y))
            if k == 1:
                row["selection_task"] = {c: sel_t.models_for(c) for c in names}
            if k == 1:
                row["selection"] = {c: sel.models_for(c) for c in names}
                row["matches"] = {c: [(sel.nodes[j], round(float(w), 3)) for j, w in zip(sel.match_idx[i],
                                  sel.match_weights[i])] for i, c in enumerate(names)}
            accs = []
            for _ in range(FLAGS.random_draws):
                key, sub = jax.random.split(key)
                rs = sel.with_chosen(np.asarray(core.random_topk(sub, len(ids), len(names), k)))
                accs.append(float(np.mean(reuse_scores(rs, logits).argmax(1) == y)))
            row["random"][k] = float(np.mean(accs))
        allsel = sel.with_chosen(np.tile(np.arange(len(ids)), (len(names), 1)))
        row["all_ensemble"] = float(np.mean(reuse_scores(allsel, logits).argmax(1) == y))
        results.append(row)
        print(f"{task.name:28s} MLL k=1 {row['mll'][1]:.3f} task-scope {row['mll_task'][1]:.3f}  "
              f"INB {row['inb']:.3f}  oracle {row['oracle']:.3f} "
              f"({row['oracle_model']})  sel {row['selection']}", flush=True)
    timings["total_s"] = time.perf_counter() - t_all

    ks = sorted(results[0]["mll"])
    mean = lambda f: float(np.mean([f(r) for r in results]))  # noqa: E731
    summary = {"mll": {k: mean(lambda r: r["mll"][k]) for k in ks},
               "mll_task": {k: mean(lambda r: r["mll_task"][k]) for k in ks},
               "random": {k: mean(lambda r: r["random"][k]) for k in ks},
               "inb": mean(lambda r: r["inb"]), "oracle": mean(lambda r: r["oracle"]),
               "mean_single": mean(lambda r: r["mean_single"]), "all_ensemble": mean(lambda r: r["all_ensemble"])}
    hub_info = [{"model_id": v.model_id, "arch": v.spec.arch,
                 "classes": [fdata.FMNIST_CLASSES[c] for c in v.spec.classes],
                 "per_class": v.spec.per_class, "steps": v.spec.steps, "width": v.spec.width, "dim": v.spec.dim,
                 "sdag_accuracy": float(a), "logit_scale": v.logit_scale} for v, a in zip(vlms, sdag_acc)]
    doc = {"config": {"alpha": FLAGS.alpha, "top": FLAGS.top, "max_k": FLAGS.max_k, "random_draws": FLAGS.random_draws,
                      "test_per_class": FLAGS.test_per_class, "descriptions": FLAGS.descriptions},
           "hub": hub_info, "tasks": results, "summary": summary, "timings_s": timings}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "vlm_offline.json", doc, default=str)

    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    head = (["task"] + [f"MLL k={k}" for k in ks] + [f"MLL-task k={k}" for k in ks] + [f"Random k={k}" for k in ks] +
            ["INB", "mean single", "oracle", "all-ensemble"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results + [dict(task="**mean**", mll=summary["mll"], mll_task=summary["mll_task"],
                             random=summary["random"], inb=summary["inb"],
                             mean_single=summary["mean_single"], oracle=summary["oracle"],
                             all_ensemble=summary["all_ensemble"])]:
        cells = [r["task"]] + [pct(r["mll"][k]) for k in ks] + [pct(r["mll_task"][k]) for k in ks] + \
                [pct(r["random"][k]) for k in ks] + \
                [pct(r["inb"]), pct(r["mean_single"]), pct(r["oracle"]), pct(r["all_ensemble"])]
        lines.append("| " + " | ".join(cells) + " |")
    sel_lines = [f"- **{r['task']}**: all-node scope: "
                 + "; ".join(f"{c} -> {', '.join(m)}" for c, m in r["selection"].items())
                 + ". Task scope: " + "; ".join(f"{c} -> {', '.join(m)}" for c, m in r["selection_task"].items())
                 + f". (INB: {r['inb_model']}, oracle: {r['oracle_model']})" for r in results]
    hub_lines = ["| model | arch | trained classes | imgs/class | steps | width | dim | SDAG acc |", "|" + "---|" * 8]
    hub_lines += [f"| {h['model_id']} | {h['arch']} | {', '.join(h['classes'])} | {h['per_class']} | {h['steps']} | "
                  f"{h['width']} | {h['dim']} | {pct(h['sdag_accuracy'])} |" for h in hub_info]
    md = ["# Offline VLM benchmark (measured)", "",
          f"Top-1 accuracy (%) on the official Fashion-MNIST test images of each task; alpha={FLAGS.alpha}, "
          f"top-{FLAGS.top} nodes per class, "
          f"Random = mean of {FLAGS.random_draws} draws; descriptions={FLAGS.descriptions}. "
          f"Total run time {timings['total_s']:.0f} s (train/load {timings['train_or_load_s']:.0f} s, "
          f"label {timings['label_s']:.0f} s).", "", *lines, "", "## Hub", "", *hub_lines, "",
          "## Selected VLMs (k=1)", "", *sel_lines, ""]
    atomic_write_text(out_dir / "vlm_offline.md", "\n".join(md))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(ks, [100 * summary["mll"][k] for k in ks], "o-", label="MLL-VLM (labels among all nodes)")
    ax.plot(ks, [100 * summary["mll_task"][k] for k in ks], "^-", label="MLL-VLM (task-scoped labels)")
    ax.plot(ks, [100 * summary["random"][k] for k in ks], "s--", label="Random (same k, same reuse)")
    for name, style in (("oracle", ":"), ("inb", "-."), ("mean_single", "--"), ("all_ensemble", "-")):
        ax.axhline(100 * summary[name], ls=style, color="gray" if name != "oracle" else "k", lw=1,
                   label={"oracle": "oracle single VLM", "inb": "INB (best SDAG acc.)",
                          "mean_single": "random single VLM (expected)", "all_ensemble": "ensemble of all VLMs"}[name])
    ax.set_xlabel("k (VLMs selected per class)")
    ax.set_ylabel(f"mean top-1 accuracy over {len(results)} tasks (%)")
    ax.set_xticks(ks)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "vlm_accuracy_vs_k.png", dpi=120)
    print(json.dumps(summary, indent=1, default=str))
    print(f"total {timings['total_s']:.1f}s")


if __name__ == "__main__":
    app.run(main)
