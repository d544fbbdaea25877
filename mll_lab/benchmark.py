"""Zero-shot benchmarks, end to end: SDAG -> model labels -> class matching -> selection -> reuse -> metrics.

Two benchmarks share one pipeline (:class:`ZeroShotBenchmark`):

* :class:`OfflineBenchmark` (runs anywhere, no download): the SDAG is the WordNet 3.0 subtrees below clothing,
  footwear and bag; the nodes of the ten Fashion-MNIST classes hold ``per_class_sdag`` training images each
  (the other nodes get labels by smoothing over their hyponyms, Eq. 2); the hub holds the small experts of
  :mod:`mll_lab.train_experts` plus real ImageNet EfficientNet-Lite experts (and the CIFAR-10 CNN) reused on
  upsampled grayscale images; target tasks (:data:`mll_lab.fashion_mnist.TASKS`) use natural class names and are
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

This module holds :class:`OfflineBenchmark` and re-exports the pieces it is built from: the pipeline
(:mod:`mll_lab.pipeline`), the logit cache (:mod:`mll_lab.logit_cache`), the metrics (:mod:`mll_lab.metrics`) and
the folder benchmark (:mod:`mll_lab.folder_benchmark`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from mll_jax import wordnet
from mll_jax.labelling import LabelStore
from mll_jax.sdag import SDAG
from mll_jax.utils import atomic_write_json
from mll_lab import fashion_mnist as fdata
from mll_lab.folder_benchmark import FolderBenchmark, FolderTask
from mll_lab.logit_cache import CachedExpert, LogitCache, images_key
from mll_lab.metrics import TaskResult, evaluate_scores, format_percent, format_results, summarize
from mll_lab.pipeline import DEFAULT_BETA, METHODS, BenchmarkConfig, ZeroShotBenchmark
from mll_lab.train_experts import HUB_SPECS, is_current, train_hub

__all__ = [
    "DEFAULT_BETA",
    "METHODS",
    "BenchmarkConfig",
    "LogitCache",
    "CachedExpert",
    "images_key",
    "TaskResult",
    "ZeroShotBenchmark",
    "OfflineBenchmark",
    "FolderBenchmark",
    "FolderTask",
    "evaluate_scores",
    "format_percent",
    "format_results",
    "summarize",
]


class OfflineBenchmark(ZeroShotBenchmark):
    """Fashion-MNIST zero-shot benchmark (see the module docstring)."""

    name = "offline"

    def __init__(self, config: BenchmarkConfig | None = None, *, data: fdata.FashionMNIST | None = None,
                 specs=None, task_list: Sequence[fdata.Task] | None = None, **overrides):
        super().__init__(config, **overrides)
        self._data = data
        self._splits = None
        self._test_idx = None
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
        steps = self.config.train_steps
        effective = [s if steps is None else dataclasses.replace(s, steps=int(steps)) for s in self.specs]
        stale = [s.model_id for s in effective if self.config.rebuild or not is_current(self.hub, s)]
        train_hub(self.hub, self.data, self.splits, self.specs, rebuild=self.config.rebuild,
                  steps=self.config.train_steps, progress=self.config.progress)
        for m in stale:  # retrained: cached logits and labels of the old weights are void
            self.cache.clear(m)
            st = LabelStore(self.home / "labels")
            if m in st:
                st.delete(m)
            st.clear_raw(m)
        ids = [s.model_id for s in self.specs]
        return ids + self.register_imagenet_experts()

    def _build_sdag(self):
        d = self.home / "sdag"
        meta = {"roots": list(fdata.SUBTREE_ROOTS), "per_class": self.config.per_class_sdag,
                "seed": self.config.split_seed, "classes": [c.wnid for c in fdata.CLASS_SYNSETS]}
        if self.sdag_dir_current(d, meta):
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


