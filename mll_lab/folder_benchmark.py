"""The paper's setting for users who have the data: ImageNet-style folders, HF models, a CLIP patch.

SDAG node data from an ImageNet-style folder (``nXXXXXXXX/`` directories), Hugging Face Flax classifiers and
EfficientNet-Lite experts, an optional CLIP patch, tasks from a JSON file whose classes name the test folders
(:func:`mll_lab.fashion_mnist.load_tasks_file`).  Not runnable offline (no ImageNet, HF models or CLIP weights).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mll_jax import wordnet
from mll_jax.images import list_image_files, load_images
from mll_jax.sdag import SDAG
from mll_jax.utils import atomic_write_json
from mll_lab.fashion_mnist import load_tasks_file
from mll_lab.pipeline import BenchmarkConfig, ZeroShotBenchmark

__all__ = ["FolderTask", "FolderBenchmark"]


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
                       for t in load_tasks_file(c.tasks_file)]
        self._test_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _build_hub(self) -> list[str]:
        ids = []
        for name in self.config.hf_models:
            mid = name.strip("/").replace(os.sep, "__")
            if mid not in self.hub:
                self.hub.register(mid, "hf_flax", source=name, options={"batch_size": 32})
            ids.append(mid)
        ids += self.register_imagenet_experts()
        if not ids:
            raise ValueError("empty hub: give --hf_models and/or --imagenet_experts")
        return ids

    def _build_sdag(self):
        c = self.config
        d = self.home / "sdag"
        root = Path(c.imagenet_dir)
        wnids = sorted(p.name for p in root.iterdir() if p.is_dir() and wordnet.is_wnid(p.name))
        if not wnids:
            raise ValueError(f"{root} has no nXXXXXXXX/ directories (ImageNet layout expected)")
        meta = {"imagenet_dir": str(root.resolve()), "wnids": len(wnids), "per_class": c.per_class_sdag,
                "seed": c.split_seed, "image_size": c.image_size}
        if self.sdag_dir_current(d, meta):
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
