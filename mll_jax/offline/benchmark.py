"""Zero-shot benchmarks, end to end: SDAG -> model labels -> class matching -> selection -> reuse -> metrics.

Two benchmarks share one pipeline (:class:`ZeroShotBenchmark`):

* :class:`OfflineBenchmark` (runs anywhere, no download): the SDAG is the WordNet 3.0 subtrees below clothing,
  footwear and bag; the nodes of the ten Fashion-MNIST classes hold ``per_class_sdag`` training images each
  (the other nodes get labels by smoothing over their hyponyms, Eq. 2); the hub holds the small experts of
  :mod:`mll_jax.offline.train` plus real ImageNet EfficientNet-Lite experts (and the CIFAR-10 CNN) reused on
  upsampled grayscale images; target tasks (:data:`mll_jax.offline.data.TASKS`) use natural class names and are
  evaluated on the official Fashion-MNIST test split.
* :class:`FolderBenchmark` (the paper's setting, for users who have the data): SDAG node data from an
  ImageNet-style folder (``nXXXXXXXX/`` directories), Hugging Face Flax classifiers and EfficientNet-Lite experts,
  an optional CLIP patch, tasks from a JSON file whose classes name the test folders.

Per task: class names -> SDAG nodes (:func:`mll_jax.text.match_classes`, candidates = the labelled nodes); experts
per class by CHCO (:func:`mll_jax.selection.select_experts`, budget ``k``, loss threshold ``beta``) or a baseline
(:func:`mll_jax.baselines.baseline_selection`: random, heu, logme, leep); the entropy-weighted ensemble of
:mod:`mll_jax.reuse` (its pure :func:`~mll_jax.reuse.expert_terms` / :func:`~mll_jax.reuse.combine` on cached test
logits); uncovered classes go to the CLIP patch if one is configured, else they are reported uncovered.

Metrics (paper Table 1), over the task's test images:

* ``coverage``: fraction of test images whose true class is covered (has at least one expert);
* ``acc_covered`` (Acc(c)): accuracy on the test images of covered classes;
* ``acc_all`` (Acc(a)): accuracy on all test images; images of uncovered classes count as wrong unless a patch
  exists (then the patch's prediction counts);
* ``n_models``: number of distinct experts the task uses.

Expert outputs are cached on disk (:class:`LogitCache`, keyed by model id and the images' content hash), so the
labels, the LogME/LEEP baselines and every task's evaluation reuse one forward pass per image and model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mll_jax.config import DEFAULT_BETA, SCORERS, MLLConfig
from mll_jax.offline import data as fdata
from mll_jax.utils import array_hash, atomic_save_npy, atomic_write_json
from mll_jax.utils import home as _home

__all__ = [
    "DEFAULT_BETA",
    "METHODS",
    "BenchmarkConfig",
    "LogitCache",
    "CachedExpert",
    "TaskResult",
    "ZeroShotBenchmark",
    "OfflineBenchmark",
    "FolderBenchmark",
    "evaluate_scores",
    "format_results",
    "summarize",
]

#: Selection methods: the paper's CHCO and the baselines of mll_jax.baselines.
METHODS = SCORERS


def images_key(images: np.ndarray) -> str:
    """Content hash of an image batch (shape, dtype and bytes)."""
    return array_hash(images, length=20)


# ---------------------------------------------------------------------------------------------------
# Logit cache
# ---------------------------------------------------------------------------------------------------

class LogitCache:
    """On-disk cache of expert logits: ``<root>/<model_id>/<images hash>.npy`` (atomic writes).

    The key is the model id, the model's fingerprint (when the expert has one: :class:`CachedExpert` puts it in the
    key) and the content hash of the images, so logits of replaced weights are never served.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, model_id: str, key: str) -> Path:
        return self.root / model_id.replace("/", "__") / f"{key}.npy"

    def get(self, model_id: str, key: str) -> np.ndarray | None:
        p = self._path(model_id, key)
        if not p.is_file():
            return None
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None

    def put(self, model_id: str, key: str, logits: np.ndarray) -> None:
        atomic_save_npy(self._path(model_id, key), np.asarray(logits, np.float32))

    def clear(self, model_id: str | None = None) -> None:
        import shutil

        d = self.root if model_id is None else self.root / model_id.replace("/", "__")
        shutil.rmtree(d, ignore_errors=True)


class CachedExpert:
    """An expert whose ``logits(images)`` are memoised in a :class:`LogitCache` (same contract as the expert).

    ``expert`` is an expert or a zero-argument callable returning one (then it is loaded on the first cache miss
    only, and ``num_heads`` must be given).
    """

    def __init__(self, expert, cache: LogitCache, *, model_id: str | None = None, num_heads: int | None = None,
                 head_names=None, fingerprint: str | None = None):
        if callable(expert) and not hasattr(expert, "logits"):
            if model_id is None or num_heads is None:
                raise ValueError("a lazily loaded CachedExpert needs model_id and num_heads")
            self._loader, self._expert = expert, None
        else:
            self._loader, self._expert = None, expert
            model_id = expert.model_id if model_id is None else model_id
            num_heads = expert.num_heads if num_heads is None else num_heads
            head_names = getattr(expert, "head_names", None) if head_names is None else head_names
        self.cache = cache
        self.model_id = model_id
        #: the model version (ModelHub.fingerprint): part of the cache key, and recorded with the labels
        self.fingerprint = fingerprint if fingerprint is not None else getattr(self._expert, "fingerprint", None)
        self._num_heads = None if num_heads is None else int(num_heads)
        self.head_names = head_names

    @property
    def expert(self):
        if self._expert is None:
            self._expert = self._loader()
        return self._expert

    @property
    def num_heads(self) -> int:
        if self._num_heads is None:
            self._num_heads = int(self.expert.num_heads)
        return self._num_heads

    def logits(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        key = images_key(images) if not self.fingerprint else f"{self.fingerprint[:16]}-{images_key(images)}"
        z = self.cache.get(self.model_id, key)
        if z is not None and z.shape == (len(images), self.num_heads):
            return z
        z = np.asarray(self.expert.logits(images), np.float32)
        if z.shape != (len(images), self.num_heads):
            raise ValueError(f"expert {self.model_id!r} returned logits of shape {z.shape}, expected "
                             f"({len(images)}, {self.num_heads})")
        if not np.all(np.isfinite(z)):
            raise FloatingPointError(f"expert {self.model_id!r} returned non-finite logits")
        self.cache.put(self.model_id, key, z)
        return z

    def __repr__(self) -> str:
        return f"CachedExpert({self.model_id!r}, num_heads={self._num_heads})"


# ---------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------

def evaluate_scores(scores: np.ndarray, y: np.ndarray, covered: np.ndarray, *, patched: bool) -> dict:
    """Metrics of class scores ``(N, C)`` against labels ``y`` given the covered classes (paper Table 1).

    Without a patch, images of uncovered classes always count as wrong (their classes score 0 and could only win
    ties); with a patch the prediction counts as it is.
    """
    scores = np.asarray(scores)
    y = np.asarray(y)
    covered = np.asarray(covered, bool)
    pred = np.argmax(scores, axis=1) if len(scores) else np.zeros(0, int)
    correct = pred == y
    cov = covered[y] if len(y) else np.zeros(0, bool)
    n = len(y)
    C = len(covered)
    per_class = [float(np.mean(correct[y == c])) if np.any(y == c) else float("nan") for c in range(C)]
    return {
        "n_test": int(n),
        "coverage": float(cov.mean()) if n else float("nan"),
        "acc_covered": float(correct[cov].mean()) if cov.any() else float("nan"),
        "acc_all": float((correct if patched else correct & cov).mean()) if n else float("nan"),
        "per_class_accuracy": per_class,
        "predictions": pred,
    }


@dataclass
class TaskResult:
    task: str
    method: str
    k: int
    beta: float | None
    class_names: list
    wnids: list  # matched node per class (None: no node)
    node_names: list
    similarities: list
    experts: list  # per class: list of model ids (empty: uncovered)
    covered: list
    n_test: int
    coverage: float
    acc_covered: float
    acc_all: float
    n_models: int
    per_class_accuracy: list
    patched: bool = False
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        for key in ("coverage", "acc_covered", "acc_all"):
            if d[key] is not None and not np.isfinite(d[key]):
                d[key] = None
        d["per_class_accuracy"] = [None if not np.isfinite(a) else a for a in d["per_class_accuracy"]]
        return d


def summarize(results: Sequence[TaskResult]) -> dict:
    """Mean metrics over tasks (Acc(c) over the tasks where it is defined)."""
    if not results:
        return {}

    def mean(vals):
        vals = [v for v in vals if v is not None and np.isfinite(v)]
        return float(np.mean(vals)) if vals else float("nan")

    return {
        "tasks": len(results),
        "acc_covered": mean(r.acc_covered for r in results),
        "coverage": mean(r.coverage for r in results),
        "acc_all": mean(r.acc_all for r in results),
        "n_models": mean(r.n_models for r in results),
    }


def _fmt(v, pct=True):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{100 * v:.1f}" if pct else f"{v:.1f}"


def format_results(results: Sequence[TaskResult], *, details: bool = True) -> str:
    """A plain-text table: one row per (task, method) plus the mean per method."""
    lines = []
    hdr = f"{'task':<28} {'method':<7} {'Acc(c)':>7} {'cover':>7} {'Acc(a)':>7} {'#models':>8}"
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for r in results:
        lines.append(f"{r.task:<28} {r.method:<7} {_fmt(r.acc_covered):>7} {_fmt(r.coverage):>7} "
                     f"{_fmt(r.acc_all):>7} {r.n_models:>8d}")
    lines.append("-" * len(hdr))
    for m in dict.fromkeys(r.method for r in results):
        s = summarize([r for r in results if r.method == m])
        lines.append(f"{'MEAN':<28} {m:<7} {_fmt(s['acc_covered']):>7} {_fmt(s['coverage']):>7} "
                     f"{_fmt(s['acc_all']):>7} {_fmt(s['n_models'], pct=False):>8}")
    if details:
        lines.append("")
        for r in results:
            if r.method != "chco":
                continue
            parts = []
            for c, w, nm, sim, ex in zip(r.class_names, r.wnids, r.node_names, r.similarities, r.experts):
                node = f"{nm} ({w}, {sim:.2f})" if w else f"no node (best {sim:.2f})"
                parts.append(f"    {c!r} -> {node}; experts: {', '.join(ex) if ex else 'UNCOVERED'}")
            lines.append(f"{r.task}:")
            lines.extend(parts)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------

@dataclass
class BenchmarkConfig:
    """Settings of a benchmark run (the command-line flags of ``python -m mll_jax.run`` map onto these)."""

    home: str | None = None  # cache root (default $MLL_JAX_HOME or ~/.cache/mll_jax)
    k: int = MLLConfig.k  # reuse budget: experts per class
    beta: float | None = DEFAULT_BETA  # CHCO loss threshold (None: no threshold)
    delta: float = MLLConfig.delta  # label smoothing discount (Eq. 2)
    match_threshold: float | None = None  # text similarity floor (None: MLLConfig's default)
    node_text: str = MLLConfig.node_text  # "lemmas": all synonyms in the node name; "sdag": SDAG.text
    # offline benchmark
    per_class_sdag: int = 50  # SDAG images per Fashion-MNIST class
    split_seed: int = 0
    test_per_class: int | None = None  # test images per class (None: all; Fashion-MNIST: the official 10k)
    train_steps: int | None = None  # override every expert's training steps (tests)
    expert_ids: tuple[str, ...] | None = None  # restrict the trained experts (None: all of HUB_SPECS)
    imagenet_experts: tuple[str, ...] = ("lite0",)  # EfficientNet-Lite variants reused zero-shot
    imagenet_resolution: int | None = 128  # input size of those experts (None: native 224/240/260)
    cifar10_expert: bool = True  # the PyPI CIFAR-10 CNN (an out-of-domain expert)
    # paper setting (FolderBenchmark)
    imagenet_dir: str | None = None
    test_dir: str | None = None
    tasks_file: str | None = None
    hf_models: tuple[str, ...] = ()
    image_size: int = 224
    # both
    clip_model: str | None = None  # CLIP patch for uncovered classes (hub name or local dir)
    patch_mode: str = MLLConfig.patch_mode
    rebuild: bool = False
    progress: bool = True
    seed: int = 0  # random baseline seed

    def home_path(self) -> Path:
        return _home(self.home)

    def mll_config(self) -> MLLConfig:
        """The system configuration these settings stand for (validated there)."""
        kw = dict(k=self.k, beta=self.beta, delta=self.delta, node_text=self.node_text, seed=self.seed,
                  patch_mode=self.patch_mode, progress=self.progress)
        if self.match_threshold is not None:
            kw["match_threshold"] = self.match_threshold
        return MLLConfig(**kw)


# ---------------------------------------------------------------------------------------------------
# The shared pipeline
# ---------------------------------------------------------------------------------------------------

class ZeroShotBenchmark:
    """Pipeline shared by the offline and the folder benchmark; subclasses build sdag / hub / tasks / test data.

    Subclass contract: ``_build_sdag() -> SDAG``, ``_build_hub() -> list[model_id]`` (registering models in
    ``self.hub``), ``tasks() -> list`` of objects with ``name`` and ``class_names``, ``task_test(task) ->
    (y, logits_fn, images_fn)`` where ``logits_fn(model_id) -> (n, H)`` and ``images_fn() -> uint8 images``.
    """

    name = "benchmark"

    def __init__(self, config: BenchmarkConfig | None = None, **overrides):
        config = config or BenchmarkConfig()
        if overrides:
            config = dataclasses.replace(config, **overrides)
        self.mll_config = config.mll_config()  # validates k, beta, delta, node_text, ...
        self.config = config
        self.home = config.home_path() / self.name
        self.home.mkdir(parents=True, exist_ok=True)
        self.cache = LogitCache(self.home / "logits")
        self._sdag = None
        self._system = None
        self._hub = None
        self._model_ids: list[str] | None = None
        self._experts: dict[str, CachedExpert] = {}
        self._patch = None
        self._labelled = False
        self.timings: dict[str, float] = {}

    # ---------------------------------------------------------------- building blocks
    @property
    def hub(self):
        if self._hub is None:
            from mll_jax.hub import ModelHub

            self._hub = ModelHub(self.home / "hub")
        return self._hub

    @property
    def model_ids(self) -> list[str]:
        if self._model_ids is None:
            t = time.perf_counter()
            self._model_ids = list(self._build_hub())
            self.timings["hub"] = time.perf_counter() - t
        return self._model_ids

    def expert(self, model_id: str) -> CachedExpert:
        """The hub's expert behind the benchmark's logit cache (loaded on the first cache miss only)."""
        if model_id not in self._experts:
            entry = self.hub.entry(model_id)
            if entry.get("num_heads"):
                self._experts[model_id] = CachedExpert(lambda: self.hub.load(model_id), self.cache,
                                                       model_id=model_id, num_heads=entry["num_heads"],
                                                       head_names=entry.get("head_names"),
                                                       fingerprint=self.hub.fingerprint(model_id))
            else:
                self._experts[model_id] = CachedExpert(self.hub.load(model_id), self.cache,
                                                       fingerprint=self.hub.fingerprint(model_id))
        return self._experts[model_id]

    @property
    def sdag(self):
        if self._sdag is None:
            t = time.perf_counter()
            self._sdag = self._build_sdag()
            self.timings["sdag"] = time.perf_counter() - t
        return self._sdag

    @property
    def system(self):
        """The :class:`mll_jax.MLL` system over this benchmark's SDAG, hub and label store, with every benchmark
        model labelled (computed on first use; only stale models are relabelled)."""
        from mll_jax.system import MLL

        if self._system is None:
            self._system = MLL(self.sdag, self.hub, self.home / "labels", self.mll_config,
                               text_cache=self.home / "text_cache", expert_wrapper=lambda m, _load: self.expert(m))
        if not self._labelled:
            t = time.perf_counter()
            self._system.label(self.model_ids)
            self._labelled = True
            self.timings["labels"] = self.timings.get("labels", 0.0) + time.perf_counter() - t
        return self._system

    @property
    def store(self):
        """The label store (every benchmark model labelled)."""
        return self.system.labels

    def candidate_nodes(self) -> list[str]:
        """SDAG nodes that carry a label for every benchmark model."""
        return self.system.candidate_nodes(self.model_ids)

    @property
    def encoder(self):
        t = time.perf_counter()
        enc = self.system.encoder
        self.timings.setdefault("text_encoder", time.perf_counter() - t)
        return enc

    def match(self, class_names: Sequence[str]):
        """Class names -> list of :class:`mll_jax.text.Match` over the labelled nodes (the system's matching)."""
        return self.system.match(class_names, self.model_ids)

    @property
    def patch(self):
        if self._patch is None and self.config.clip_model:
            from mll_jax.clip_patch import ClipZeroShot

            self._patch = ClipZeroShot.from_pretrained(self.config.clip_model, progress=self.config.progress)
        return self._patch

    def build(self) -> dict:
        """Build (or load from the cache) everything: hub, SDAG, labels, text encoder; returns timings."""
        _ = self.model_ids
        _ = self.sdag
        _ = self.system
        _ = self.encoder
        return dict(self.timings)

    # ---------------------------------------------------------------- selection, reuse, metrics
    def select(self, class_names: Sequence[str], matches, *, method: str = "chco", k: int | None = None,
               beta: float | None | str = "config", model_ids: Sequence[str] | None = None):
        """The system's selection for one task (``method``: CHCO or a baseline scorer)."""
        if method not in METHODS:
            raise ValueError(f"unknown selection method {method!r}; expected one of {METHODS}")
        ids = list(self.model_ids if model_ids is None else model_ids)
        return self.system.select(class_names, scorer=method, k=k, beta=beta, model_ids=ids, matches=matches)

    def reuse_scores(self, sel, logits_fn, images_fn=None) -> tuple[np.ndarray, bool]:
        """(N, C) class scores of the selection's ensemble on a task's test images (cached logits; + patch)."""
        from mll_jax.reuse import ensemble_scores

        logits = {m: logits_fn(m) for m in sel.used_model_ids}
        z_patch = None
        if self.patch is not None and not sel.covered.all():
            imgs = images_fn()
            key = images_key(imgs) + "-" + hashlib.sha1("\n".join(sel.class_names).encode()).hexdigest()[:10]
            pid = "clip-" + self.config.clip_model.replace("/", "__")
            z_patch = self.cache.get(pid, key)
            if z_patch is None:
                z_patch = np.asarray(self.patch.logits(imgs, list(sel.class_names)), np.float32)
                self.cache.put(pid, key, z_patch)
        if logits:
            n = len(next(iter(logits.values())))
        elif z_patch is not None:
            n = len(z_patch)
        else:
            n = len(images_fn()) if images_fn is not None else 0
        out = ensemble_scores(sel, logits, n, z_patch, patch_mode=self.mll_config.patch_mode,
                              patch_weight=self.mll_config.patch_weight)
        return out, z_patch is not None

    def run_task(self, task, *, method: str = "chco", k: int | None = None, beta: float | None | str = "config",
                 model_ids: Sequence[str] | None = None, matches=None) -> TaskResult:
        t0 = time.perf_counter()
        class_names = list(task.class_names)
        matches = self.match(class_names) if matches is None else matches
        wnids = [m.wnid for m in matches]
        sel = self.select(class_names, matches, method=method, k=k, beta=beta, model_ids=model_ids)
        y, logits_fn, images_fn = self.task_test(task)
        scores, patched = self.reuse_scores(sel, logits_fn, images_fn)
        met = evaluate_scores(scores, y, sel.covered, patched=patched)
        g = self.sdag
        return TaskResult(
            task=task.name, method=method, k=sel.k, beta=sel.beta, class_names=class_names, wnids=wnids,
            node_names=[g.name(w) if w else None for w in wnids], similarities=[m.similarity for m in matches],
            experts=[sel.expert_ids(c) for c in range(len(class_names))], covered=[bool(c) for c in sel.covered],
            n_test=met["n_test"], coverage=met["coverage"], acc_covered=met["acc_covered"], acc_all=met["acc_all"],
            n_models=len(sel.used_model_ids), per_class_accuracy=met["per_class_accuracy"], patched=patched,
            seconds=time.perf_counter() - t0,
            extra={"loss": {m: [None if not np.isfinite(v) else float(v) for v in row]
                            for m, row in zip(sel.model_ids, sel.loss)}})

    def run(self, tasks=None, methods: Sequence[str] = ("chco",), **kw) -> list[TaskResult]:
        """Every task with every method; matching is done once per task."""
        from tqdm.auto import tqdm

        tasks = self.tasks() if tasks is None else tasks
        out = []
        for task in tqdm(tasks, desc="tasks", unit="task", disable=not self.config.progress):
            matches = self.match(task.class_names)
            for m in methods:
                out.append(self.run_task(task, method=m, matches=matches, **kw))
        return out

    # ---------------------------------------------------------------- subclass hooks
    def _build_sdag(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _build_hub(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def tasks(self) -> list:  # pragma: no cover - abstract
        raise NotImplementedError

    def task_test(self, task):  # pragma: no cover - abstract
        raise NotImplementedError

    # ---------------------------------------------------------------- shared helpers
    def _register_imagenet_experts(self) -> list[str]:
        """The shipped real experts the config asks for (EfficientNet-Lite at ``imagenet_resolution``, CIFAR CNN)."""
        from mll_jax.system import register_shipped

        res = self.config.imagenet_resolution
        ids = [register_shipped(self.hub, f"efficientnet-{v}", resolution=res) for v in self.config.imagenet_experts]
        if self.config.cifar10_expert:
            ids.append(register_shipped(self.hub, "cifar10-cnn", batch_size=256))
        return ids

    def _sdag_dir_current(self, d: Path, meta: dict) -> bool:
        f = d / "benchmark_meta.json"
        if self.config.rebuild or not f.is_file() or not (d / "sdag.json").is_file():
            return False
        try:
            return json.loads(f.read_text(encoding="utf-8")) == meta
        except (OSError, ValueError):
            return False


# ---------------------------------------------------------------------------------------------------
# The offline benchmark (Fashion-MNIST)
# ---------------------------------------------------------------------------------------------------

class OfflineBenchmark(ZeroShotBenchmark):
    """Fashion-MNIST zero-shot benchmark (see the module docstring)."""

    name = "offline"

    def __init__(self, config: BenchmarkConfig | None = None, *, data: fdata.FashionMNIST | None = None,
                 specs=None, task_list: Sequence[fdata.Task] | None = None, **overrides):
        super().__init__(config, **overrides)
        self._data = data
        self._splits = None
        self._test_idx = None
        from mll_jax.offline.train import HUB_SPECS

        specs = HUB_SPECS if specs is None else tuple(specs)
        if self.config.expert_ids is not None:
            known = {s.model_id for s in specs}
            bad = [m for m in self.config.expert_ids if m not in known]
            if bad:
                raise KeyError(f"unknown offline expert ids {bad}; known: {sorted(known)}")
            specs = tuple(s for s in specs if s.model_id in self.config.expert_ids)
        self.specs = specs
        self._task_list = list(fdata.TASKS if task_list is None else task_list)

    @property
    def data(self) -> fdata.FashionMNIST:
        if self._data is None:
            self._data = fdata.load_fashion_mnist()
        return self._data

    @property
    def splits(self) -> fdata.Splits:
        if self._splits is None:
            self._splits = fdata.make_splits(self.data.train_labels, self.config.per_class_sdag,
                                             self.config.split_seed)
        return self._splits

    def _build_hub(self) -> list[str]:
        from mll_jax.offline.train import is_current, train_hub

        steps = self.config.train_steps
        effective = [s if steps is None else dataclasses.replace(s, steps=int(steps)) for s in self.specs]
        stale = [s.model_id for s in effective if self.config.rebuild or not is_current(self.hub, s)]
        train_hub(self.hub, self.data, self.splits, self.specs, rebuild=self.config.rebuild,
                  steps=self.config.train_steps, progress=self.config.progress)
        for m in stale:  # retrained: cached logits and labels of the old weights are void
            self.cache.clear(m)
            from mll_jax.labelling import LabelStore

            st = LabelStore(self.home / "labels")
            if m in st:
                st.delete(m)
            st.clear_raw(m)
        ids = [s.model_id for s in self.specs]
        return ids + self._register_imagenet_experts()

    def _build_sdag(self):
        from mll_jax import wordnet
        from mll_jax.sdag import SDAG

        d = self.home / "sdag"
        meta = {"roots": list(fdata.SUBTREE_ROOTS), "per_class": self.config.per_class_sdag,
                "seed": self.config.split_seed, "classes": [c.wnid for c in fdata.CLASS_SYNSETS]}
        if self._sdag_dir_current(d, meta):
            return SDAG.load(d)
        wn = wordnet.get_wordnet()
        fdata.verify_class_synsets(wn)
        roots = [wordnet.wnid(wn.synset(r)) for r in fdata.SUBTREE_ROOTS]
        g = SDAG.from_roots(roots, wn=wn)
        for w, imgs in fdata.node_data(self.data, self.splits).items():
            if w not in g:
                raise ValueError(f"class node {w} is not in the SDAG built from {fdata.SUBTREE_ROOTS}")
            g.set_images(w, imgs)
        g.save(d)
        atomic_write_json(d / "benchmark_meta.json", meta)
        return g

    def tasks(self) -> list[fdata.Task]:
        return list(self._task_list)

    @property
    def test_idx(self) -> np.ndarray:
        """Indices into the official test split used for evaluation (``test_per_class`` per class)."""
        if self._test_idx is None:
            lab = self.data.test_labels
            n = self.config.test_per_class
            rng = np.random.default_rng(self.config.split_seed + 1)
            idx = []
            for c in range(len(fdata.FMNIST_CLASSES)):
                ii = np.flatnonzero(lab == c)
                if n is not None and n < len(ii):
                    ii = np.sort(rng.choice(ii, n, replace=False))
                idx.append(ii)
            self._test_idx = np.sort(np.concatenate(idx))
        return self._test_idx

    def test_logits(self, model_id: str) -> np.ndarray:
        """(len(test_idx), H) logits of a hub model on the evaluation images (cached)."""
        return self.expert(model_id).logits(self.data.test_images[self.test_idx])

    def task_test(self, task):
        lab = self.data.test_labels[self.test_idx]
        rows, y = fdata.task_test_set(task, self.data.test_images[self.test_idx], lab)

        def logits_fn(m):
            return self.test_logits(m)[rows]

        def images_fn():
            return self.data.test_images[self.test_idx][rows]

        return y, logits_fn, images_fn


# ---------------------------------------------------------------------------------------------------
# The paper's setting: ImageNet-style folders, HF models, CLIP (not runnable offline)
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FolderTask:
    name: str
    class_names: tuple[str, ...]
    folders: tuple[tuple[str, ...], ...]  # per class: sub-folders of the test dir



class FolderBenchmark(ZeroShotBenchmark):
    """The paper's benchmark for users with the data (needs ``imagenet_dir``, ``test_dir``, ``tasks_file``).

    * SDAG: the wnid directories of ``imagenet_dir`` with their WordNet hypernym closure; ``per_class_sdag``
      images per directory as node data (:meth:`mll_jax.sdag.SDAG.add_images_from_folder`).
    * Hub: ``hf_models`` (Hugging Face Flax image classifiers, hub names or local dirs, kind ``hf_flax``) plus the
      EfficientNet-Lite experts of ``imagenet_experts``.
    * Tasks: ``tasks_file`` JSON ``[{"name": ..., "classes": [{"name": "husky", "folders": ["n02110185"]}, ...]}]``;
      test images of a class are the files of its folders under ``test_dir`` (at most ``test_per_class`` each,
      sorted order) -- keep them disjoint from the SDAG images (e.g. ImageNet val in folder layout).
    * Patch: ``clip_model`` (e.g. ``openai/clip-vit-base-patch32``) for uncovered classes.
    """

    name = "folder"

    def __init__(self, config: BenchmarkConfig | None = None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        missing = [f for f in ("imagenet_dir", "test_dir", "tasks_file") if not getattr(c, f)]
        if missing:
            raise ValueError(f"the folder benchmark needs {', '.join('--' + m for m in missing)}")
        for f in ("imagenet_dir", "test_dir"):
            if not Path(getattr(c, f)).is_dir():
                raise FileNotFoundError(f"--{f} {getattr(c, f)} is not a directory")
        self._tasks = [FolderTask(t["name"], tuple(x["name"] for x in t["classes"]),
                                  tuple(tuple(x["folders"]) for x in t["classes"]))
                       for t in fdata.load_tasks_file(c.tasks_file)]
        self._test_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _build_hub(self) -> list[str]:
        ids = []
        for name in self.config.hf_models:
            mid = name.strip("/").replace(os.sep, "__")
            if mid not in self.hub:
                self.hub.register(mid, "hf_flax", source=name, options={"batch_size": 32})
            ids.append(mid)
        ids += self._register_imagenet_experts()
        if not ids:
            raise ValueError("empty hub: give --hf_models and/or --imagenet_experts")
        return ids

    def _build_sdag(self):
        from mll_jax import wordnet
        from mll_jax.sdag import SDAG

        c = self.config
        d = self.home / "sdag"
        root = Path(c.imagenet_dir)
        wnids = sorted(p.name for p in root.iterdir() if p.is_dir() and wordnet.is_wnid(p.name))
        if not wnids:
            raise ValueError(f"{root} has no nXXXXXXXX/ directories (ImageNet layout expected)")
        meta = {"imagenet_dir": str(root.resolve()), "wnids": len(wnids), "per_class": c.per_class_sdag,
                "seed": c.split_seed, "image_size": c.image_size}
        if self._sdag_dir_current(d, meta):
            return SDAG.load(d)
        g = SDAG.from_wnids(wnids, close_hypernyms=True)
        g.add_images_from_folder(root, n_per_node=c.per_class_sdag, seed=c.split_seed, image_size=c.image_size,
                                 progress=c.progress)
        g.save(d)
        atomic_write_json(d / "benchmark_meta.json", meta)
        return g

    def tasks(self) -> list[FolderTask]:
        return list(self._tasks)

    def _task_images(self, task: FolderTask) -> tuple[np.ndarray, np.ndarray]:
        from mll_jax.images import list_image_files, load_images

        if task.name in self._test_cache:
            return self._test_cache[task.name]
        imgs, ys = [], []
        for c, folders in enumerate(task.folders):
            files = []
            for f in folders:
                d = Path(self.config.test_dir) / f
                if not d.is_dir():
                    raise FileNotFoundError(f"task {task.name!r}: test folder {d} does not exist")
                files += list_image_files(d)
            if self.config.test_per_class is not None:
                files = files[: self.config.test_per_class]
            if not files:
                raise ValueError(f"task {task.name!r}: class {task.class_names[c]!r} has no test images")
            imgs.append(load_images(files, self.config.image_size)[0])
            ys += [c] * len(files)
        out = (np.concatenate(imgs), np.asarray(ys, np.int32))
        self._test_cache[task.name] = out
        return out

    def task_test(self, task):
        images, y = self._task_images(task)
        return y, (lambda m: self.expert(m).logits(images)), (lambda: images)
