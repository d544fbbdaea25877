"""On-disk cache of expert outputs for the benchmarks: one forward pass per image batch and model.

:class:`LogitCache` stores ``<root>/<model_id>/<images hash>.npy``; :class:`CachedExpert` puts it in front of an
expert (same ``logits(images)`` contract), so labels, the LogME/LEEP baselines and every task's evaluation reuse
the same outputs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from mll_jax.utils import array_hash, atomic_save_npy

__all__ = ["images_key", "LogitCache", "CachedExpert"]


def images_key(images: np.ndarray) -> str:
    """Content hash of an image batch (shape, dtype and bytes)."""
    return array_hash(images, length=20)



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

