"""Node data sources of an :class:`mll_jax.sdag.SDAG`: an ImageNet-style folder or a labelled array dataset.

Both fill nodes through the SDAG's public API (``node in sdag``, :meth:`~mll_jax.sdag.SDAG.add_nodes`,
:meth:`~mll_jax.sdag.SDAG.set_images`), sampling each node's images deterministically with
:func:`sample_indices`.
"""

from __future__ import annotations

import os
import warnings
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mll_jax.images import as_image_batch, list_image_files, load_image
from mll_jax.wordnet import is_wnid

__all__ = ["sample_indices", "add_images_from_folder", "add_images_from_arrays"]


def sample_indices(n_total: int, n: int, node_id: str, seed: int) -> np.ndarray:
    """``n`` of ``n_total`` indices, sorted, drawn with ``default_rng([seed, crc32(node_id)])`` (all if fewer): a
    node's sample does not depend on which other nodes exist."""
    if n_total <= n:
        return np.arange(n_total)
    rng = np.random.default_rng([seed, zlib.crc32(node_id.encode())])
    return np.sort(rng.choice(n_total, size=n, replace=False))


def add_images_from_folder(sdag, root: str | os.PathLike, *, n_per_node: int = 50, seed: int = 0,
                           image_size: int | None = 224, add_missing: bool = False,
                           progress: bool = True) -> dict[str, int]:
    """Fill nodes from an ImageNet-style folder ``root/nXXXXXXXX/*.JPEG`` (replacing their images).

    Up to ``n_per_node`` files per wnid directory are sampled deterministically (sorted file list, seeded
    choice) and decoded with :func:`mll_jax.images.load_image` (RGB; shorter side to ``image_size`` with
    bicubic resampling, then centre crop; ``None`` keeps the size, which must then be uniform per node).
    Directories of wnids not in the graph are skipped unless ``add_missing``.  Raises :class:`ImageDecodeError` naming the file for undecodable images.  Returns
    {wnid: number of images stored}.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if n_per_node < 1:
        raise ValueError(f"n_per_node must be >= 1, got {n_per_node}")
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and is_wnid(p.name))
    if not dirs:
        raise ValueError(f"{root} has no nXXXXXXXX/ wnid directories (ImageNet layout expected)")
    missing = [p.name for p in dirs if p.name not in sdag]
    if missing and add_missing:
        sdag.add_nodes(missing)
    todo = [p for p in dirs if p.name in sdag]
    out: dict[str, int] = {}
    for d in tqdm(todo, desc="SDAG images", unit="node", disable=not progress):
        files = list_image_files(d)
        if not files:
            continue
        idx = sample_indices(len(files), n_per_node, d.name, seed)
        imgs = [load_image(files[i], image_size) for i in idx]
        shapes = {im.shape for im in imgs}
        if len(shapes) > 1:
            raise ValueError(f"images of {d} have different sizes {sorted(shapes)}; pass image_size to resize")
        sdag.set_images(d.name, np.stack(imgs))
        out[d.name] = len(imgs)
    if missing and not add_missing:
        warnings.warn(f"{len(missing)} wnid directories are not SDAG nodes and were skipped "
                      f"(e.g. {missing[:3]}); pass add_missing=True to add them", stacklevel=3)
    return out

def add_images_from_arrays(sdag, images, labels, class_names: Sequence[str],
                           name_to_wnid: Mapping[str, str], *, n_per_node: int = 50, seed: int = 0,
                           add_missing: bool = False) -> dict[str, int]:
    """Fill nodes from a labelled array dataset (replacing their images).

    Args:
      images: an image batch (:func:`mll_jax.images.as_image_batch`): uint8 (N, h, w) or (N, h, w, 3).
      labels: int (N,), indices into ``class_names``.
      class_names: name of each class index.
      name_to_wnid: class name -> node id (a wnid or a present custom id); classes not in it are ignored;
        several classes may map to one node (their images are pooled).
      add_missing: add wnids that are not yet nodes (else they are skipped with a warning).
    Returns {node: number of images stored}.
    """
    images = as_image_batch(images, "images")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must be (N,) with N={images.shape[0]}, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"labels must lie in [0, {len(class_names)}), got range "
                         f"[{labels.min()}, {labels.max()}]")
    if n_per_node < 1:
        raise ValueError(f"n_per_node must be >= 1, got {n_per_node}")
    unknown = [n for n in name_to_wnid if n not in class_names]
    if unknown:
        raise KeyError(f"name_to_wnid has class names not in class_names: {unknown[:5]}")
    node_classes: dict[str, list[int]] = {}
    for k, n in enumerate(class_names):
        if n in name_to_wnid:
            node_classes.setdefault(name_to_wnid[n], []).append(k)
    missing = [w for w in node_classes if w not in sdag]
    bad = [w for w in missing if not is_wnid(w)]
    if bad:
        raise KeyError(f"name_to_wnid maps to ids that are neither wnids nor SDAG nodes: {bad[:5]}")
    if missing and add_missing:
        sdag.add_nodes(missing)
    elif missing:
        warnings.warn(f"{len(missing)} mapped wnids are not SDAG nodes and were skipped (e.g. {missing[:3]}); "
                      "pass add_missing=True to add them", stacklevel=3)
    out: dict[str, int] = {}
    for w, ks in node_classes.items():
        if w not in sdag:
            continue
        pool = np.flatnonzero(np.isin(labels, ks))
        if pool.size == 0:
            continue
        idx = pool[sample_indices(pool.size, n_per_node, w, seed)]
        sdag.set_images(w, images[idx])
        out[w] = int(idx.size)
    return out
