"""Offline VLM benchmark: MLL for vision-language models on a hub of small Fashion-MNIST dual encoders.

    python experiments/vlm_offline.py --out_dir=results/vlm_offline      # or: python -m mll_lab.run (the main command)

1. Trains (or reuses from ``<home>/vlm_offline/hub``) the dual encoders of :data:`mll_lab.train_vlms.VLM_SPECS`
   on the expert-pool split.
2. Builds the SDAG (the ten Fashion-MNIST class synsets, 50 SDAG-split images each) and labels every VLM over it
   (:func:`mll_jax.vlm.labels.label_vlms`, resumable store ``<home>/vlm_offline/labels``).
3. For every task (:data:`mll_lab.fashion_mnist.TASKS` + :func:`extra_tasks`, natural names, the official test
   split): top-1 accuracy of MLL-VLM (k = 1..max_k; selection from the labels only; with the stored labels among
   all nodes, and task-scoped: prediction among the nodes the task matched, the authors' rule), Random (k VLMs
   drawn per class, mean over ``random_draws`` draws, same reuse), INB (single VLM with the best ImageNet accuracy
   from metadata; the offline hub has none, so the best zero-shot accuracy on the SDAG images), the mean single
   VLM (= expected accuracy of a uniformly random single VLM), the oracle single best VLM on the task, and the
   entropy-weighted ensemble of all VLMs.
4. With ``with_experts`` (default): the expert benchmark (:class:`mll_lab.benchmark.OfflineBenchmark`, its
   trained experts and labels; trained on first use under the same home, or reused from its cache) gives per task
   the expert selection (CHCO, its default config); "experts" is its Acc(a) (uncovered classes count as wrong)
   and "union" serves the classes the experts do not cover with the MLL-VLM k=1 ensemble as the patch
   (:func:`mll_jax.reuse.patch_logits`, the rule of ``MLL.classifier(models="both")``).
5. CHCO-VLM (:mod:`mll_jax.vlm.expert_style`): every VLM as an expert whose heads are its ``chco_scale * cos``
   logits over the SDAG node texts; expert-style labels (Eq. 1 means over each node's images, from the stored
   labelling embeddings; Eq. 2 smoothing over the expert benchmark's SDAG, the WordNet subtrees of
   :data:`mll_lab.fashion_mnist.SUBTREE_ROOTS`); each class matched to one node (the expert matching); CHCO per
   VLM, top-k under ``chco_beta``; reuse by the expert ensemble (Eq. 12-13).  Uncovered classes count as wrong
   ("CHCO-VLM k"), or take the MLL-VLM k=1 ensemble as the patch ("CHCO-VLM k=1 + MLL patch").
6. Accuracy vs hub size: MLL-VLM k=1 with the hub restricted to its first n VLMs in ``hub_orders`` random orders
   (mean over orders and tasks), with the oracle single VLM of the same sub-hub for reference.

:func:`run` is these steps in order: :func:`prepare` (1, 2, the CHCO-VLM labels and the test embeddings),
:func:`evaluate_task` per task (3-6), :func:`summarize_tasks`, then :func:`mll_lab.vlm_report.write_report`
(``vlm_offline.json``, ``vlm_offline.md``, ``vlm_accuracy_vs_k.png``, ``vlm_accuracy_vs_hub_size.png`` in
``out_dir``, and the table with provenance as ``results/vlm_table.{json,md}``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging as absl_logging

from mll_jax import wordnet
from mll_jax.hub import ModelHub
from mll_jax.reuse import ensemble_scores
from mll_jax.sdag import SDAG
from mll_jax.text import lemma_node_text
from mll_jax.utils import home
from mll_jax.vlm import core
from mll_jax.vlm import expert_style as es_mod
from mll_jax.vlm.labels import VLMLabelStore, label_vlms, node_logits, node_text_embeddings
from mll_jax.vlm.select import class_descriptions, class_query_texts, reuse_scores, select_vlms
from mll_jax.reuse import chco_reuse_scores, patch_logits
from mll_lab import fashion_mnist as fdata
from mll_lab.benchmark import OfflineBenchmark, evaluate_scores
from mll_lab.train_vlms import VLM_SPECS, TextFeatures, train_vlm_hub
from mll_lab.vlm_report import write_report

__all__ = ["VLMBenchConfig", "VLMBench", "extra_tasks", "prepare", "evaluate_task", "summarize_tasks", "run"]


@dataclass(frozen=True)
class VLMBenchConfig:
    """Settings of the offline VLM benchmark (the flags of experiments/vlm_offline.py and ``--vlm_*`` of the main
    command map onto these)."""

    home: str | None = None  # cache root (default $MLL_JAX_HOME or ~/.cache/mll_jax); uses <home>/vlm_offline
    out_dir: str = "results/vlm_offline"  # where the table, json and figures go
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
    """Tasks of the VLM benchmark beyond :data:`mll_lab.fashion_mnist.TASKS` (plural and new wordings)."""
    def _t(name, description, *classes):
        return fdata.Task(name, tuple(fdata.TaskClass(n, tuple(m)) for n, m in classes), description)

    return (
        _t("tops", "T-shirt vs pullover vs coat vs shirt", ("T-shirt", [0]), ("pullover", [2]), ("coat", [4]),
           ("shirt", [6])),
        _t("shoes-plural", "sandals vs sneakers vs ankle boots", ("sandals", [5]), ("sneakers", [7]),
           ("ankle boots", [9])),
        _t("frock-jumper-purse", "new wordings: dress vs pullover vs bag", ("frock", [3]), ("jumper", [2]),
           ("purse", [8])),
    )


@dataclass
class VLMBench:
    """Everything the per-task evaluation shares: data, the trained VLMs and their labels, the CHCO-VLM labels,
    the test embeddings and (optionally) the built expert benchmark."""

    cfg: VLMBenchConfig
    wn: Any
    data: Any
    tf: TextFeatures
    vlms: list
    ids: list
    labels: dict
    nlogits: dict
    nodes: list
    node_emb: np.ndarray
    sdag_acc: np.ndarray
    inb: int
    test_emb: dict
    orders: list
    timings: dict = field(default_factory=dict)
    es_labels: dict | None = None  # CHCO-VLM: expert-style labels, node-text embeddings, candidate embeddings
    es_text: dict | None = None
    es_cand_emb: np.ndarray | None = None
    es_sdag: Any = None
    bench: OfflineBenchmark | None = None  # the expert benchmark (with_experts)

    def node_name(self, wnid: str) -> str:
        return self.es_sdag.name(wnid)


def prepare(cfg: VLMBenchConfig) -> VLMBench:
    """Steps 1-2: train or load the VLMs, label them, the CHCO-VLM labels, test embeddings, the expert benchmark."""
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every restore at INFO
    root = home(cfg.home) / "vlm_offline"
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

    es = {}
    if cfg.chco:  # CHCO-VLM: expert-style labels from the stored labelling embeddings (no tower runs)
        t0, c0 = time.perf_counter(), time.process_time()
        es_sdag = SDAG.from_roots([wordnet.wnid(wn.synset(r)) for r in fdata.SUBTREE_ROOTS], wn=wn)
        es_labels = {m: es_mod.expert_style_labels(labels[m], nlogits[m], es_sdag, scale=cfg.chco_scale,
                                                   delta=cfg.chco_delta) for m in ids}
        es_text = {m: node_text_embeddings(store, labels[m]) for m in ids}
        es_cand_emb = tf.encoder.encode([lemma_node_text(w, wn) for w in es_mod.common_nodes(es_labels.values())])
        timings["chco_vlm_s"] = time.perf_counter() - t0
        timings["chco_vlm_cpu_s"] = time.process_time() - c0
        es = dict(es_labels=es_labels, es_text=es_text, es_cand_emb=es_cand_emb, es_sdag=es_sdag)

    t0 = time.perf_counter()
    test_emb = {v.model_id: v.encode_images(data.test_images) for v in vlms}
    timings["test_embed_s"] = time.perf_counter() - t0

    bench = None
    if cfg.with_experts:
        t0 = time.perf_counter()
        bench = OfflineBenchmark(home=cfg.home, progress=False)
        bench.build()
        timings["expert_benchmark_build_s"] = time.perf_counter() - t0
    rng_orders = np.random.default_rng(123)
    orders = [rng_orders.permutation(len(ids)) for _ in range(cfg.hub_orders)]
    return VLMBench(cfg=cfg, wn=wn, data=data, tf=tf, vlms=vlms, ids=ids, labels=labels, nlogits=nlogits,
                    nodes=nodes, node_emb=node_emb, sdag_acc=sdag_acc, inb=inb, test_emb=test_emb, orders=orders,
                    timings=timings, bench=bench, **es)


def _mll_rows(s: VLMBench, row: dict, names, logits, class_emb, y, key):
    """MLL-VLM (all-node and task scope) and Random for k = 1..max_k; returns the advanced PRNG key and the
    selection of the largest k."""
    cfg, ids = s.cfg, s.ids
    for k in range(1, min(cfg.max_k, len(ids)) + 1):
        sel = select_vlms(names, s.labels, s.nodes, node_emb=s.node_emb, class_emb=class_emb, k=k, alpha=cfg.alpha,
                          top=cfg.top)
        row["mll"][k] = float(np.mean(reuse_scores(sel, logits).argmax(1) == y))
        sel_t = select_vlms(names, s.labels, s.nodes, node_emb=s.node_emb, class_emb=class_emb, k=k, alpha=cfg.alpha,
                            top=cfg.top, scope="task", node_logits=s.nlogits)
        row["mll_task"][k] = float(np.mean(reuse_scores(sel_t, logits).argmax(1) == y))
        if k == 1:
            row["selection_task"] = {c: sel_t.models_for(c) for c in names}
            row["selection"] = {c: sel.models_for(c) for c in names}
            row["matches"] = {c: [(sel.nodes[j], round(float(w), 3)) for j, w in zip(sel.match_idx[i],
                              sel.match_weights[i])] for i, c in enumerate(names)}
        accs = []
        for _ in range(cfg.random_draws):
            key, sub = jax.random.split(key)
            rs = sel.with_chosen(np.asarray(core.random_topk(sub, len(ids), len(names), k)))
            accs.append(float(np.mean(reuse_scores(rs, logits).argmax(1) == y)))
        row["random"][k] = float(np.mean(accs))
    return key, sel


def _mll_k1_scores(s: VLMBench, names, logits, class_emb):
    """Class scores of the MLL-VLM k=1 ensemble (all-node scope)."""
    return reuse_scores(select_vlms(names, s.labels, s.nodes, node_emb=s.node_emb, class_emb=class_emb, k=1,
                                    alpha=s.cfg.alpha, top=s.cfg.top), logits)


def _chco_rows(s: VLMBench, row: dict, names, logits, class_emb, idx, y) -> list:
    """CHCO-VLM for k = 1..max_k (uncovered wrong, and k with the MLL-VLM k=1 patch); returns the matched wnids."""
    cfg, ids = s.cfg, s.ids
    t0, c0 = time.perf_counter(), time.process_time()
    es_match = es_mod.match_nodes(names, s.es_labels, node_emb=s.es_cand_emb, class_emb=class_emb
                                  if cfg.descriptions == "none" else s.tf.encoder.encode(list(names)))
    es_wnids = [mt.wnid for mt in es_match]
    hl = {m: es_mod.head_logits(s.test_emb[m][idx], s.es_text[m], cfg.chco_scale) for m in ids}
    mll_patch = None  # MLL-VLM k=1 ensemble for uncovered classes (computed when one is uncovered)
    row["chco"], row["chco_patched"], row["chco_cov"] = {}, {}, {}
    cscores = es_mod.chco_vlm_scores(s.es_labels, es_wnids)  # CHCO solved once per task
    for k in range(1, min(cfg.max_k, len(ids)) + 1):
        csel = es_mod.select_vlms_chco(names, s.es_labels, es_wnids, k=k, beta=cfg.chco_beta, scores=cscores,
                                       similarities=[mt.similarity for mt in es_match])
        cov = np.asarray(csel.covered)
        pred = chco_reuse_scores(csel, hl).argmax(1)
        row["chco"][k] = float(np.mean(cov[y] & (pred == y)))  # uncovered classes count as wrong
        row["chco_cov"][k] = float(np.mean(cov[y]))
        if cov.all():  # the patch only serves uncovered classes: the same predictions
            row["chco_patched"][k] = float(np.mean(pred == y))
        else:
            if mll_patch is None:
                mll_patch = patch_logits(_mll_k1_scores(s, names, logits, class_emb))
            pp = chco_reuse_scores(csel, hl, mll_patch).argmax(1)
            row["chco_patched"][k] = float(np.mean(pp == y))
        if k == 1:
            row["chco_selection"] = {c: (csel.expert_ids(i) if cov[i] else None) for i, c in enumerate(names)}
            row["chco_match"] = {c: (s.node_name(mt.wnid) if mt.wnid else None, round(mt.similarity, 3))
                                 for c, mt in zip(names, es_match)}
            row["chco_loss"] = {m: [None if not np.isfinite(v) else round(float(v), 4) for v in r_]
                                for m, r_ in zip(csel.model_ids, csel.loss)}
    s.timings["chco_vlm_s"] += time.perf_counter() - t0
    s.timings["chco_vlm_cpu_s"] += time.process_time() - c0
    return es_wnids


def _hub_size_rows(s: VLMBench, row: dict, names, logits, class_emb, y, single) -> None:
    """MLL-VLM k=1 on the first n VLMs of random orders (and the oracle of the same sub-hub)."""
    row["hub_size"] = {}
    for n in range(1, len(s.ids) + 1):
        accs, ors = [], []
        for order in s.orders:
            sub = [s.ids[i] for i in order[:n]]
            s_n = select_vlms(names, {m: s.labels[m] for m in sub}, s.nodes, node_emb=s.node_emb,
                              class_emb=class_emb, k=1, alpha=s.cfg.alpha, top=s.cfg.top)
            accs.append(float(np.mean(reuse_scores(s_n, logits).argmax(1) == y)))
            ors.append(float(max(single[i] for i in order[:n])))
        row["hub_size"][n] = {"mll": float(np.mean(accs)), "oracle": float(np.mean(ors))}


def _expert_rows(s: VLMBench, row: dict, task, names, logits, class_emb, idx, y, es_wnids) -> None:
    """The expert benchmark's selection on the same images, alone and with the MLL-VLM k=1 patch."""
    bench = s.bench
    vlm_scores = _mll_k1_scores(s, names, logits, class_emb)
    matches = bench.match(names)
    esel = bench.select(names, matches)
    if s.cfg.test_per_class is None:  # the benchmark's own (cached) test logits: the same images
        yb, logits_fn, _ = bench.task_test(task)
        if not np.array_equal(yb, y):
            raise RuntimeError(f"{task.name}: the expert benchmark's test set differs from this one")
    else:  # a subsample of this script's: run the experts on exactly these images (logit cache)
        def logits_fn(m, _imgs=s.data.test_images[idx]):
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
    if es_wnids is not None:  # CHCO-VLM matched the classes to the same nodes as the experts?
        row["chco_same_match_as_experts"] = [mt.wnid for mt in matches] == es_wnids


def evaluate_task(s: VLMBench, task, key) -> tuple[dict, Any]:
    """Steps 3-6 for one task: its result row, and the advanced PRNG key of the Random baseline."""
    cfg, ids, vlms = s.cfg, s.ids, s.vlms
    names = task.class_names
    idx, y = fdata.task_test_set(task, s.data.test_images, s.data.test_labels, max_per_class=cfg.test_per_class)
    logits = {v.model_id: v.logit_scale * s.test_emb[v.model_id][idx] @ v.encode_text([v.prompt(c) for c in names]).T
              for v in vlms}
    single = np.array([float(np.mean(logits[m].argmax(1) == y)) for m in ids])
    desc = class_descriptions(names, wn=s.wn) if cfg.descriptions == "wordnet" else None
    class_emb = s.tf.encoder.encode(class_query_texts(names, desc))
    row = {"task": task.name, "classes": names, "n_test": int(len(y)), "single": dict(zip(ids, single.tolist())),
           "inb_model": ids[s.inb], "inb": float(single[s.inb]), "oracle_model": ids[int(single.argmax())],
           "oracle": float(single.max()), "mean_single": float(single.mean()), "mll": {}, "mll_task": {},
           "random": {}, "selection": {}}
    key, sel = _mll_rows(s, row, names, logits, class_emb, y, key)
    es_wnids = _chco_rows(s, row, names, logits, class_emb, idx, y) if s.es_labels is not None else None
    allsel = sel.with_chosen(np.tile(np.arange(len(ids)), (len(names), 1)))
    row["all_ensemble"] = float(np.mean(reuse_scores(allsel, logits).argmax(1) == y))
    _hub_size_rows(s, row, names, logits, class_emb, y, single)
    if s.bench is not None:
        _expert_rows(s, row, task, names, logits, class_emb, idx, y, es_wnids)
    return row, key


def summarize_tasks(s: VLMBench, results: list) -> dict:
    """Means over the tasks of every column."""
    ks = sorted(results[0]["mll"])
    mean = lambda f: float(np.mean([f(r) for r in results]))  # noqa: E731
    summary = {"mll": {k: mean(lambda r: r["mll"][k]) for k in ks},
               "mll_task": {k: mean(lambda r: r["mll_task"][k]) for k in ks},
               "random": {k: mean(lambda r: r["random"][k]) for k in ks},
               "inb": mean(lambda r: r["inb"]), "oracle": mean(lambda r: r["oracle"]),
               "mean_single": mean(lambda r: r["mean_single"]), "all_ensemble": mean(lambda r: r["all_ensemble"]),
               "hub_size": {n: {key: mean(lambda r: r["hub_size"][n][key]) for key in ("mll", "oracle")}
                            for n in results[0]["hub_size"]}}
    if s.es_labels is not None:
        summary.update(chco={k: mean(lambda r: r["chco"][k]) for k in ks},
                       chco_cov={k: mean(lambda r: r["chco_cov"][k]) for k in ks},
                       chco_patched={k: mean(lambda r: r["chco_patched"][k]) for k in ks})
    if s.bench is not None:
        summary.update(experts=mean(lambda r: r["experts"]), union=mean(lambda r: r["union"]),
                       expert_coverage=mean(lambda r: r["expert_coverage"]))
    return summary


def run(cfg: VLMBenchConfig) -> dict:
    """Run the offline VLM benchmark (see the module docstring); writes its files to ``cfg.out_dir`` and the table
    to ``results/vlm_table.*``, and returns the summary."""
    load_at_start = os.getloadavg()
    t_all = time.perf_counter()
    s = prepare(cfg)
    tasks = list(fdata.TASKS) + list(extra_tasks())
    results = []
    key = jax.random.PRNGKey(0)
    for task in tasks:
        row, key = evaluate_task(s, task, key)
        results.append(row)
        print(f"{task.name:28s} MLL k=1 {row['mll'][1]:.3f} task-scope {row['mll_task'][1]:.3f}  "
              f"INB {row['inb']:.3f}  oracle {row['oracle']:.3f} "
              f"({row['oracle_model']})  sel {row['selection']}", flush=True)
    s.timings["total_s"] = time.perf_counter() - t_all
    summary = summarize_tasks(s, results)
    hub_info = [{"model_id": v.model_id, "arch": v.spec.arch,
                 "classes": [fdata.FMNIST_CLASSES[c] for c in v.spec.classes],
                 "per_class": v.spec.per_class, "steps": v.spec.steps, "width": v.spec.width, "dim": v.spec.dim,
                 "sdag_accuracy": float(a), "logit_scale": v.logit_scale} for v, a in zip(s.vlms, s.sdag_acc)]
    write_report(Path(cfg.out_dir), cfg, hub_info, results, summary, s.timings, chco=s.es_labels is not None,
                 with_experts=s.bench is not None, load_at_start=load_at_start)
    print(json.dumps(summary, indent=1, default=str))
    print(f"total {s.timings['total_s']:.1f}s")
    return summary
