"""Offline VLM benchmark (issue 8): MLL for vision-language models on a hub of small Fashion-MNIST dual encoders.

    python experiments/vlm_offline.py ``out_dir``=docs/vlm      # or: python -m mll_jax.run (the main command)

1. Trains (or reuses from ``<home>/vlm_offline/hub``) the dual encoders of :data:`mll_jax.vlm.offline.VLM_SPECS`
   on the expert-pool split.
2. Builds the SDAG (the ten Fashion-MNIST class synsets, 50 SDAG-split images each) and labels every VLM over it
   (:func:`mll_jax.vlm.labels.label_vlm`, resumable store ``<home>/vlm_offline/labels``).
3. For every task (``mll_jax.offline.data.TASKS`` + :data:`EXTRA_TASKS`, natural names, the official test split):
   top-1 accuracy of MLL-VLM (k = 1..max_k; selection from the labels only; with the stored labels among all
   nodes, and task-scoped: prediction among the nodes the task matched, the authors' rule), Random (k VLMs drawn
   per class,
   mean over ````random_draws```` draws, same reuse), INB (single VLM with the best ImageNet accuracy from metadata;
   the offline hub has none, so the best zero-shot accuracy on the SDAG images), the mean single VLM (= expected
   accuracy of a uniformly random single VLM), the oracle single best VLM on the task, and the entropy-weighted
   ensemble of all VLMs.
4. With ````with_experts```` (default): the expert benchmark (:class:`mll_jax.offline.benchmark.OfflineBenchmark`,
   its trained experts and labels; trained on first use under the same home, or reused from its cache) gives
   per task the expert selection (CHCO, its default config); "experts" is its Acc(a) (uncovered classes count as
   wrong) and "union" serves the classes the experts do not cover with the MLL-VLM k=1 ensemble as the patch
   (:func:`mll_jax.vlm.system.patch_logits`, the rule of ``MLL.classifier(models="both")``).
5. CHCO-VLM (:mod:`mll_jax.vlm.expert_style`): every VLM as an expert whose heads are its ``chco_scale * cos``
   logits over the SDAG node texts; expert-style labels (Eq. 1 means over each node's images, from the stored
   labelling embeddings; Eq. 2 smoothing over the expert benchmark's SDAG, the WordNet subtrees of
   ``mll_jax.offline.data.SUBTREE_ROOTS``); each class matched to one node (the expert matching); CHCO per VLM,
   top-k under ``chco_beta``; reuse by the expert ensemble (Eq. 12-13).  Uncovered classes count as wrong ("CHCO-VLM
   k"), or take the MLL-VLM k=1 ensemble as the patch ("CHCO-VLM k=1 + MLL patch").
6. Accuracy vs hub size: MLL-VLM k=1 with the hub restricted to its first n VLMs in ````hub_orders```` random
   orders (mean over orders and tasks), with the oracle single VLM of the same sub-hub for reference.

Writes ``vlm_offline.json``, ``vlm_offline.md``, ``vlm_accuracy_vs_k.png`` and ``vlm_accuracy_vs_hub_size.png``
to ````out_dir````.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["VLMBenchConfig", "extra_tasks", "run"]


@dataclass(frozen=True)
class VLMBenchConfig:
    """Settings of the offline VLM benchmark (the flags of experiments/vlm_offline.py and ``--vlm_*`` of the main
    command map onto these)."""

    home: str | None = None  # cache root (default $MLL_JAX_HOME or ~/.cache/mll_jax); uses <home>/vlm_offline
    out_dir: str = "docs/vlm"  # where the table, json and figures go
    max_k: int = 3  # largest number of VLMs per class
    random_draws: int = 20  # draws of the Random baseline per task and k
    test_per_class: int | None = None  # test images per task class (None: all official test images)
    alpha: float = 0.7  # weight of a class's own F1 in the selection score
    descriptions: str = "none"  # class descriptions for matching: "none" or "wordnet" (first noun sense)
    top: int = 5  # nodes matched per class (the paper: 5)
    models: tuple[str, ...] = ()  # restrict the hub to these model ids (default: all of VLM_SPECS)
    rebuild: bool = False  # retrain the VLMs
    with_experts: bool = True  # also the expert benchmark's selection and the union experts + VLMs
    hub_orders: int = 10  # random hub orders for the accuracy-vs-hub-size curve
    chco: bool = True  # the CHCO-VLM baseline (VLMs as experts over their node-text heads)
    chco_scale: float = 100.0  # the heads' logit scale (scale * cos; the issue's labelling logits: 100)
    chco_beta: float | None = 0.8  # CHCO loss threshold (the expert default, mll_jax.config.DEFAULT_BETA)
    chco_delta: float = 0.5  # Eq. 2 discount (the expert default, mll_jax.config.DEFAULT_DELTA)


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


def run(cfg: "VLMBenchConfig") -> dict:
    """Run the offline VLM benchmark (see the module docstring); writes its files to ``cfg.out_dir`` and returns
    the summary."""
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
    from mll_jax.vlm import expert_style as es_mod
    from mll_jax.vlm.labels import node_text_embeddings

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every restore at INFO
    t_all = time.perf_counter()
    root = home(cfg.home) / "vlm_offline"
    out_dir = Path(cfg.out_dir)
    timings = {}
    wn = wordnet.get_wordnet()
    data = fdata.load_fashion_mnist()
    splits = fdata.make_splits(data.train_labels)
    tf = TextFeatures()
    specs = [s for s in VLM_SPECS if not cfg.models or s.model_id in cfg.models]
    t0 = time.perf_counter()
    vlms = train_vlm_hub(ModelHub(root / "hub"), data, splits, tf, specs, rebuild=cfg.rebuild)
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

    es_labels, es_text = None, None
    if cfg.chco:  # CHCO-VLM: expert-style labels from the stored labelling embeddings (no tower runs)
        t0, c0 = time.perf_counter(), time.process_time()
        es_sdag = SDAG.from_roots([wordnet.wnid(wn.synset(r)) for r in fdata.SUBTREE_ROOTS], wn=wn)
        es_labels = {m: es_mod.expert_style_labels(labels[m], nlogits[m], es_sdag, scale=cfg.chco_scale,
                                                   delta=cfg.chco_delta) for m in ids}
        es_text = {m: node_text_embeddings(store, labels[m]) for m in ids}
        es_cand_emb = tf.encoder.encode([lemma_node_text(w, wn) for w in es_mod.common_nodes(es_labels.values())])
        timings["chco_vlm_s"] = time.perf_counter() - t0
        timings["chco_vlm_cpu_s"] = time.process_time() - c0

    t0 = time.perf_counter()
    test_emb = {v.model_id: v.encode_images(data.test_images) for v in vlms}
    timings["test_embed_s"] = time.perf_counter() - t0

    tasks = list(fdata.TASKS) + list(extra_tasks())
    g_name = (lambda w: es_sdag.name(w)) if cfg.chco else None  # noqa: E731
    bench = None
    if cfg.with_experts:
        from mll_jax.offline.benchmark import OfflineBenchmark

        t0 = time.perf_counter()
        bench = OfflineBenchmark(home=cfg.home, progress=False)
        bench.build()
        timings["expert_benchmark_build_s"] = time.perf_counter() - t0
    rng_orders = np.random.default_rng(123)
    orders = [rng_orders.permutation(len(ids)) for _ in range(cfg.hub_orders)]
    results = []
    key = jax.random.PRNGKey(0)
    for task in tasks:
        names = task.class_names
        idx, y = fdata.task_test_set(task, data.test_images, data.test_labels, max_per_class=cfg.test_per_class)
        logits = {v.model_id: v.logit_scale * test_emb[v.model_id][idx] @ v.encode_text([v.prompt(c) for c in names]).T
                  for v in vlms}
        single = np.array([float(np.mean(logits[m].argmax(1) == y)) for m in ids])
        desc = class_descriptions(names, wn=wn) if cfg.descriptions == "wordnet" else None
        class_emb = tf.encoder.encode(class_query_texts(names, desc))
        row = {"task": task.name, "classes": names, "n_test": int(len(y)), "single": dict(zip(ids, single.tolist())),
               "inb_model": ids[inb], "inb": float(single[inb]), "oracle_model": ids[int(single.argmax())],
               "oracle": float(single.max()), "mean_single": float(single.mean()), "mll": {}, "mll_task": {},
               "random": {}, "selection": {}}
        for k in range(1, min(cfg.max_k, len(ids)) + 1):
            sel = select_vlms(names, labels, nodes, node_emb=node_emb, class_emb=class_emb, k=k, alpha=cfg.alpha,
                              top=cfg.top)
            row["mll"][k] = float(np.mean(reuse_scores(sel, logits).argmax(1) == y))
            sel_t = select_vlms(names, labels, nodes, node_emb=node_emb, class_emb=class_emb, k=k, alpha=cfg.alpha,
                                top=cfg.top, scope="task", node_logits=nlogits)
            row["mll_task"][k] = float(np.mean(reuse_scores(sel_t, logits).argmax(1) == y))
            if k == 1:
                row["selection_task"] = {c: sel_t.models_for(c) for c in names}
            if k == 1:
                row["selection"] = {c: sel.models_for(c) for c in names}
                row["matches"] = {c: [(sel.nodes[j], round(float(w), 3)) for j, w in zip(sel.match_idx[i],
                                  sel.match_weights[i])] for i, c in enumerate(names)}
            accs = []
            for _ in range(cfg.random_draws):
                key, sub = jax.random.split(key)
                rs = sel.with_chosen(np.asarray(core.random_topk(sub, len(ids), len(names), k)))
                accs.append(float(np.mean(reuse_scores(rs, logits).argmax(1) == y)))
            row["random"][k] = float(np.mean(accs))
        if es_labels is not None:  # CHCO-VLM baseline (same test images, same k)
            t0, c0 = time.perf_counter(), time.process_time()
            es_match = es_mod.match_nodes(names, es_labels, node_emb=es_cand_emb, class_emb=class_emb
                                          if cfg.descriptions == "none" else tf.encoder.encode(list(names)))
            es_wnids = [mt.wnid for mt in es_match]
            hl = {m: es_mod.head_logits(test_emb[m][idx], es_text[m], cfg.chco_scale) for m in ids}
            mll_patch = None  # MLL-VLM k=1 ensemble for uncovered classes (computed when one is uncovered)
            row["chco"], row["chco_patched"], row["chco_cov"] = {}, {}, {}
            cscores = es_mod.chco_vlm_scores(es_labels, es_wnids)  # CHCO solved once per task
            for k in range(1, min(cfg.max_k, len(ids)) + 1):
                csel = es_mod.select_vlms_chco(names, es_labels, es_wnids, k=k, beta=cfg.chco_beta, scores=cscores,
                                               similarities=[mt.similarity for mt in es_match])
                cov = np.asarray(csel.covered)
                pred = es_mod.chco_reuse_scores(csel, hl).argmax(1)
                row["chco"][k] = float(np.mean(cov[y] & (pred == y)))  # uncovered classes count as wrong
                row["chco_cov"][k] = float(np.mean(cov[y]))
                if cov.all():  # the patch only serves uncovered classes: the same predictions
                    row["chco_patched"][k] = float(np.mean(pred == y))
                else:
                    if mll_patch is None:
                        from mll_jax.vlm.system import patch_logits as _patch_logits

                        mll_patch = _patch_logits(reuse_scores(select_vlms(
                            names, labels, nodes, node_emb=node_emb, class_emb=class_emb, k=1, alpha=cfg.alpha,
                            top=cfg.top), logits))
                    pp = es_mod.chco_reuse_scores(csel, hl, mll_patch).argmax(1)
                    row["chco_patched"][k] = float(np.mean(pp == y))
                if k == 1:
                    row["chco_selection"] = {c: (csel.expert_ids(i) if cov[i] else None) for i, c in enumerate(names)}
                    row["chco_match"] = {c: (g_name(mt.wnid) if mt.wnid else None, round(mt.similarity, 3))
                                         for c, mt in zip(names, es_match)}
                    row["chco_loss"] = {m: [None if not np.isfinite(v) else round(float(v), 4) for v in r_]
                                        for m, r_ in zip(csel.model_ids, csel.loss)}
            timings["chco_vlm_s"] += time.perf_counter() - t0
            timings["chco_vlm_cpu_s"] += time.process_time() - c0
        allsel = sel.with_chosen(np.tile(np.arange(len(ids)), (len(names), 1)))
        row["all_ensemble"] = float(np.mean(reuse_scores(allsel, logits).argmax(1) == y))
        # accuracy vs hub size: MLL k=1 on the first n VLMs of random orders (oracle of the same sub-hub)
        row["hub_size"] = {}
        for n in range(1, len(ids) + 1):
            accs, ors = [], []
            for order in orders:
                sub = [ids[i] for i in order[:n]]
                s_n = select_vlms(names, {m: labels[m] for m in sub}, nodes, node_emb=node_emb, class_emb=class_emb,
                                  k=1, alpha=cfg.alpha, top=cfg.top)
                accs.append(float(np.mean(reuse_scores(s_n, logits).argmax(1) == y)))
                ors.append(float(max(single[i] for i in order[:n])))
            row["hub_size"][n] = {"mll": float(np.mean(accs)), "oracle": float(np.mean(ors))}
        if bench is not None:
            from mll_jax.offline.benchmark import evaluate_scores
            from mll_jax.reuse import ensemble_scores
            from mll_jax.vlm.system import patch_logits

            sel1 = select_vlms(names, labels, nodes, node_emb=node_emb, class_emb=class_emb, k=1, alpha=cfg.alpha,
                               top=cfg.top)
            vlm_scores = reuse_scores(sel1, logits)
            matches = bench.match(names)
            esel = bench.select(names, matches)
            if cfg.test_per_class is None:  # the benchmark's own (cached) test logits: the same images
                yb, logits_fn, _ = bench.task_test(task)
                if not np.array_equal(yb, y):
                    raise RuntimeError(f"{task.name}: the expert benchmark's test set differs from this one")
            else:  # a subsample of this script's: run the experts on exactly these images (logit cache)
                def logits_fn(m, _imgs=data.test_images[idx]):
                    return bench.expert(m).logits(_imgs)
            elog = {m: logits_fn(m) for m in esel.used_model_ids}
            cov = np.asarray(esel.covered)
            e_only = ensemble_scores(esel, elog, len(y))
            union = ensemble_scores(esel, elog, len(y), patch_logits(vlm_scores),
                                    patch_mode=bench.mll_config.patch_mode, patch_weight=bench.mll_config.patch_weight)
            row["experts"] = evaluate_scores(e_only, y, cov, patched=False)["acc_all"]  # uncovered count as wrong
            row["union"] = evaluate_scores(union, y, cov, patched=True)["acc_all"]
            row["expert_coverage"] = float(np.mean(cov[y]))
            row["expert_selection"] = {c: (esel.expert_ids(i) if cov[i] else None) for i, c in enumerate(names)}
            if es_labels is not None:  # CHCO-VLM matched the classes to the same nodes as the experts?
                row["chco_same_match_as_experts"] = [mt.wnid for mt in matches] == es_wnids
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
               "mean_single": mean(lambda r: r["mean_single"]), "all_ensemble": mean(lambda r: r["all_ensemble"]),
               "hub_size": {n: {key: mean(lambda r: r["hub_size"][n][key]) for key in ("mll", "oracle")}
                            for n in results[0]["hub_size"]}}
    if es_labels is not None:
        summary.update(chco={k: mean(lambda r: r["chco"][k]) for k in ks},
                       chco_cov={k: mean(lambda r: r["chco_cov"][k]) for k in ks},
                       chco_patched={k: mean(lambda r: r["chco_patched"][k]) for k in ks})
    if bench is not None:
        summary.update(experts=mean(lambda r: r["experts"]), union=mean(lambda r: r["union"]),
                       expert_coverage=mean(lambda r: r["expert_coverage"]))
    hub_info = [{"model_id": v.model_id, "arch": v.spec.arch,
                 "classes": [fdata.FMNIST_CLASSES[c] for c in v.spec.classes],
                 "per_class": v.spec.per_class, "steps": v.spec.steps, "width": v.spec.width, "dim": v.spec.dim,
                 "sdag_accuracy": float(a), "logit_scale": v.logit_scale} for v, a in zip(vlms, sdag_acc)]
    doc = {"config": {"alpha": cfg.alpha, "top": cfg.top, "max_k": cfg.max_k, "random_draws": cfg.random_draws,
                      "test_per_class": cfg.test_per_class, "descriptions": cfg.descriptions,
                      "with_experts": cfg.with_experts, "hub_orders": cfg.hub_orders, "chco": cfg.chco,
                      "chco_scale": cfg.chco_scale, "chco_beta": cfg.chco_beta, "chco_delta": cfg.chco_delta},
           "hub": hub_info, "tasks": results, "summary": summary, "timings_s": timings}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "vlm_offline.json", doc, default=str)

    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    head = (["task"] + [f"MLL k={k}" for k in ks] + [f"MLL-task k={k}" for k in ks] + [f"Random k={k}" for k in ks] +
            ["INB", "mean single", "oracle", "all-ensemble"] +
            ([f"CHCO-VLM k={k} (cov.)" for k in ks] + ["CHCO-VLM k=1 + MLL patch"] if es_labels is not None else []) +
            (["experts (cov.)", "experts + VLMs"] if bench is not None else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results + [dict(task="**mean**", mll=summary["mll"], mll_task=summary["mll_task"],
                             random=summary["random"], inb=summary["inb"],
                             mean_single=summary["mean_single"], oracle=summary["oracle"],
                             all_ensemble=summary["all_ensemble"], experts=summary.get("experts"),
                             chco=summary.get("chco"), chco_cov=summary.get("chco_cov"),
                             chco_patched=summary.get("chco_patched"),
                             union=summary.get("union"), expert_coverage=summary.get("expert_coverage"))]:
        cells = [r["task"]] + [pct(r["mll"][k]) for k in ks] + [pct(r["mll_task"][k]) for k in ks] + \
                [pct(r["random"][k]) for k in ks] + \
                [pct(r["inb"]), pct(r["mean_single"]), pct(r["oracle"]), pct(r["all_ensemble"])]
        if es_labels is not None:
            cells += [f"{pct(r['chco'][k])} ({pct(r['chco_cov'][k])})" for k in ks] + [pct(r["chco_patched"][1])]
        if bench is not None:
            cells += [f"{pct(r['experts'])} ({pct(r['expert_coverage'])})", pct(r["union"])]
        lines.append("| " + " | ".join(cells) + " |")
    sel_lines = [f"- **{r['task']}**: all-node scope: "
                 + "; ".join(f"{c} -> {', '.join(m)}" for c, m in r["selection"].items())
                 + ". Task scope: " + "; ".join(f"{c} -> {', '.join(m)}" for c, m in r["selection_task"].items())
                 + f". (INB: {r['inb_model']}, oracle: {r['oracle_model']})"
                 + ("" if es_labels is None else ". CHCO-VLM: " + "; ".join(
                     f"{c} [{r['chco_match'][c][0]}] -> {', '.join(m) if m else 'uncovered'}"
                     for c, m in r["chco_selection"].items())) for r in results]
    hub_lines = ["| model | arch | trained classes | imgs/class | steps | width | dim | SDAG acc |", "|" + "---|" * 8]
    hub_lines += [f"| {h['model_id']} | {h['arch']} | {', '.join(h['classes'])} | {h['per_class']} | {h['steps']} | "
                  f"{h['width']} | {h['dim']} | {pct(h['sdag_accuracy'])} |" for h in hub_info]
    md = ["# Offline VLM benchmark (measured)", "",
          f"Top-1 accuracy (%) on the official Fashion-MNIST test images of each task; alpha={cfg.alpha}, "
          f"top-{cfg.top} nodes per class, "
          f"Random = mean of {cfg.random_draws} draws; descriptions={cfg.descriptions}. "
          + ("" if es_labels is None else
             f"CHCO-VLM: heads {cfg.chco_scale:g} * cos over the node texts, beta={cfg.chco_beta}, "
             f"delta={cfg.chco_delta}, uncovered classes count as wrong (cov. = share of test images whose class "
             f"is covered; {timings['chco_vlm_s']:.1f} s wall, {timings['chco_vlm_cpu_s']:.1f} s CPU in all). ") +
          f"Total run time {timings['total_s']:.0f} s (train/load {timings['train_or_load_s']:.0f} s, "
          f"label {timings['label_s']:.0f} s).", "", *lines, "", "## Hub", "", *hub_lines, "",
          "## Accuracy vs hub size (MLL-VLM k=1)", "",
          f"Mean over {cfg.hub_orders} random hub orders and the {len(results)} tasks; the hub is the first n VLMs "
          "of each order.", "",
          "| n VLMs | " + " | ".join(str(n) for n in summary["hub_size"]) + " |",
          "|---|" + "---|" * len(summary["hub_size"]),
          "| MLL-VLM k=1 | " + " | ".join(pct(v["mll"]) for v in summary["hub_size"].values()) + " |",
          "| oracle single VLM of the sub-hub | " + " | ".join(pct(v["oracle"]) for v in summary["hub_size"].values())
          + " |", "",
          "## Selected VLMs (k=1)", "", *sel_lines, ""]
    atomic_write_text(out_dir / "vlm_offline.md", "\n".join(md))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.0, 3.8))
    ax.plot(ks, [100 * summary["mll"][k] for k in ks], "o-", label="MLL-VLM (labels among all nodes)")
    ax.plot(ks, [100 * summary["mll_task"][k] for k in ks], "^-", label="MLL-VLM (task-scoped labels)")
    ax.plot(ks, [100 * summary["random"][k] for k in ks], "s--", label="Random (same k, same reuse)")
    if es_labels is not None:
        ax.plot(ks, [100 * summary["chco"][k] for k in ks], "d-", color="tab:purple",
                label="CHCO-VLM (expert-style labels; uncovered wrong)")
    for name, style in (("oracle", ":"), ("inb", "-."), ("mean_single", "--"), ("all_ensemble", "-")):
        ax.axhline(100 * summary[name], ls=style, color="gray" if name != "oracle" else "k", lw=1,
                   label={"oracle": "oracle single VLM", "inb": "INB (best SDAG acc.)",
                          "mean_single": "random single VLM (expected)", "all_ensemble": "ensemble of all VLMs"}[name])
    ax.set_xlabel("k (VLMs selected per class)")
    ax.set_ylabel(f"mean top-1 accuracy over {len(results)} tasks (%)")
    ax.set_xticks(ks)
    if bench is not None:
        ax.axhline(100 * summary["union"], ls="-", color="tab:red", lw=1, label="experts + MLL-VLM patch")
        ax.axhline(100 * summary["experts"], ls="--", color="tab:red", lw=1, label="experts only (uncovered wrong)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "vlm_accuracy_vs_k.png", dpi=120)
    plt.close(fig)
    hs = sorted(summary["hub_size"])
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(hs, [100 * summary["hub_size"][n]["mll"] for n in hs], "o-", label="MLL-VLM k=1")
    ax.plot(hs, [100 * summary["hub_size"][n]["oracle"] for n in hs], "k:", label="oracle single VLM of the sub-hub")
    ax.set_xlabel("VLMs in the hub (first n of a random order)")
    ax.set_ylabel(f"mean top-1 accuracy over {len(results)} tasks (%)")
    ax.set_title(f"mean over {cfg.hub_orders} random hub orders", fontsize=8)
    ax.set_xticks(hs)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "vlm_accuracy_vs_hub_size.png", dpi=120)
    print(json.dumps(summary, indent=1, default=str))
    print(f"total {timings['total_s']:.1f}s")
    return summary
