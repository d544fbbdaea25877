"""The zero-shot benchmark pipeline shared by the offline and the folder benchmark.

Per task: class names -> SDAG nodes (the system's matching, candidates = the labelled nodes); experts per class by
CHCO or a baseline scorer (budget ``k``, loss threshold ``beta``); the entropy-weighted ensemble of
:func:`mll_jax.reuse.ensemble_scores` on cached test logits; uncovered classes go to the CLIP patch if one is
configured, else they are reported uncovered (:mod:`mll_lab.metrics`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from mll_jax.clip_patch import ClipZeroShot
from mll_jax.config import DEFAULT_BETA, SCORERS, MLLConfig
from mll_jax.hub import ModelHub
from mll_jax.reuse import ensemble_scores
from mll_jax.families.experts import register_shipped
from mll_jax.system import MLL
from mll_jax.utils import home as cache_home
from mll_lab.logit_cache import CachedExpert, LogitCache, images_key
from mll_lab.metrics import TaskResult, evaluate_scores

__all__ = ["DEFAULT_BETA", "METHODS", "BenchmarkConfig", "ZeroShotBenchmark"]

#: Selection methods: the paper's CHCO and the baselines of mll_jax.baselines.
METHODS = SCORERS


@dataclass
class BenchmarkConfig:
    """Settings of a benchmark run (the command-line flags of ``python -m mll_lab.run`` map onto these)."""

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
        return cache_home(self.home)

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
            self._patch = ClipZeroShot.from_pretrained(self.config.clip_model, progress=self.config.progress)
        return self._patch

    @patch.setter
    def patch(self, patch) -> None:
        """Use ``patch`` (anything with ``logits(images, class_names)``) for uncovered classes."""
        self._patch = patch

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
    def register_imagenet_experts(self) -> list[str]:
        """The shipped real experts the config asks for (EfficientNet-Lite at ``imagenet_resolution``, CIFAR CNN)."""
        res = self.config.imagenet_resolution
        ids = [register_shipped(self.hub, f"efficientnet-{v}", resolution=res) for v in self.config.imagenet_experts]
        if self.config.cifar10_expert:
            ids.append(register_shipped(self.hub, "cifar10-cnn", batch_size=256))
        return ids

    def sdag_dir_current(self, d: Path, meta: dict) -> bool:
        f = d / "benchmark_meta.json"
        if self.config.rebuild or not f.is_file() or not (d / "sdag.json").is_file():
            return False
        try:
            return json.loads(f.read_text(encoding="utf-8")) == meta
        except (OSError, ValueError):
            return False


