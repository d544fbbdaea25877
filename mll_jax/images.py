"""The package's one image-batch contract, and the one rule for decoding image files.

**Image batch.** Everything in mll-jax that takes images (SDAG node data, experts, labelling, reuse, the
classifier, the patch) takes a *batch*:

* ``uint8`` array of shape ``(N, h, w)`` (grayscale) or ``(N, h, w, 3)`` (RGB); ``(N, h, w, 1)`` is accepted
  and read as grayscale;
* ``N >= 0``, ``h, w >= 1``.

A single image is a batch of one: ``image[None]``.  A 3-D array whose last axis has length 1, 3 or 4 and is
shorter than its second axis is refused, because it reads as one ``(h, w, c)`` image as easily as ``h``
grayscale images ``w`` pixels high and ``c`` wide: the error says what to pass.  RGBA (4 channels) and float arrays are refused with a hint (drop alpha; scale to 0-255 and
cast to uint8).  :func:`as_image_batch` enforces this; call it at every public entry point.

**Decoding files** (:func:`load_image`, :func:`load_images`, :func:`load_folder`): PIL, converted to RGB; with
``size`` the shorter side is resized to ``size`` with bicubic resampling and the centre ``size x size`` is
cropped.  The SDAG's folder import and the folder benchmark use this rule.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .utils import usable_cores
from mll_jax.errors import ImageBatchError, ImageDecodeError  # noqa: F401  (re-exported)

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageBatchError",
    "ImageDecodeError",
    "as_image_batch",
    "load_image",
    "load_images",
    "list_image_files",
    "load_folder",
]

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def as_image_batch(images, what: str = "images", *, copy: bool = False) -> np.ndarray:
    """Validate ``images`` against the image-batch contract and return it as a C-contiguous uint8 array.

    ``(N, h, w, 1)`` becomes ``(N, h, w)``.  Raises :class:`ImageBatchError` (a ``ValueError``) naming ``what``.
    """
    if isinstance(images, (str, bytes, os.PathLike)):
        raise ImageBatchError(f"{what}: got a path {images!r}; decode files with mll_jax.images.load_images(paths)")
    if isinstance(images, (list, tuple)) and images and all(isinstance(x, np.ndarray) for x in images):
        shapes = {x.shape for x in images}
        if len(shapes) > 1:
            raise ImageBatchError(f"{what}: images of different shapes {sorted(shapes)[:4]}; resize them to one size "
                                  "(mll_jax.images.load_images(paths, size=...))")
        images = np.stack(images)
    arr = np.asarray(images)
    if arr.dtype == object:
        raise ImageBatchError(f"{what}: not a numeric array (ragged list?)")
    if arr.dtype != np.uint8:
        hint = ""
        if np.issubdtype(arr.dtype, np.floating):
            hint = " (floats: scale to 0-255 and cast, e.g. (x * 255).round().astype(np.uint8))"
        elif np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
            hint = " (cast with .astype(np.uint8) if the values are 0-255)"
        raise ImageBatchError(f"{what}: images must be uint8, got {arr.dtype}{hint}")
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4) and arr.shape[-1] < arr.shape[1]:
        raise ImageBatchError(
            f"{what}: shape {arr.shape} is ambiguous: one (h, w, {arr.shape[-1]}) image or {arr.shape[0]} grayscale "
            f"images of {arr.shape[1]}x{arr.shape[2]}? Pass a batch: images[None] for one image, or (N, h, w) / "
            "(N, h, w, 3)")
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 4 and arr.shape[-1] == 4:
        raise ImageBatchError(f"{what}: RGBA images of shape {arr.shape}; drop the alpha channel (images[..., :3])")
    if not (arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] == 3)):
        raise ImageBatchError(f"{what}: images must be (N, h, w) grayscale or (N, h, w, 3) RGB uint8, got shape "
                              f"{arr.shape}")
    if arr.shape[1] < 1 or arr.shape[2] < 1:
        raise ImageBatchError(f"{what}: empty images of shape {arr.shape[1:]}")
    if copy:
        return np.array(arr, copy=True, order="C")
    return np.ascontiguousarray(arr)


def load_image(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """Decode one file to ``(h, w, 3)`` uint8 RGB (``(size, size, 3)`` with ``size``: shorter side resized with
    bicubic resampling, centre crop).  Raises :class:`ImageDecodeError` naming the file."""
    from PIL import Image

    path = Path(path)
    if size is not None and (int(size) != size or size < 1):
        raise ValueError(f"size must be a positive integer or None, got {size!r}")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None:
                size = int(size)
                w, h = im.size
                scale = size / min(w, h)
                nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                im = im.resize((nw, nh), Image.BICUBIC)
                left, top = (nw - size) // 2, (nh - size) // 2
                im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise ImageDecodeError(f"image file {path} does not exist") from None
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise ImageDecodeError(f"cannot decode image file {path}: {type(e).__name__}: {e}") from e


def list_image_files(root: str | os.PathLike) -> list[Path]:
    """Image files (by extension) directly in ``root``, sorted by name."""
    root = Path(root)
    return sorted(f for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)


def _expand(paths: Iterable[str | os.PathLike]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files = list_image_files(p)
            if not files:
                raise ImageDecodeError(f"folder {p} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
            out += files
        elif p.exists():
            out.append(p)
        else:
            raise ImageDecodeError(f"image file {p} does not exist")
    return out


def load_images(paths: Sequence[str | os.PathLike] | str | os.PathLike, size: int | None = 224, *,
                threads: int | None = None) -> tuple[np.ndarray, list[Path]]:
    """Decode image files and/or folders (their image files, sorted) into one ``(N, size, size, 3)`` batch.

    Returns ``(images, files)``.  With ``size=None`` every file must have the same size.  Decoding runs on
    ``threads`` host threads (PIL releases the GIL).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = _expand(paths)
    if not files:
        raise ImageDecodeError("no image files given")
    from concurrent.futures import ThreadPoolExecutor

    workers = threads or min(8, usable_cores())
    if workers > 1 and len(files) > 1:
        with ThreadPoolExecutor(workers) as ex:
            arrays = list(ex.map(lambda f: load_image(f, size), files))
    else:
        arrays = [load_image(f, size) for f in files]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ImageDecodeError(f"images of different sizes {sorted(shapes)[:4]}; pass size= to resize them")
    return np.stack(arrays), files


def load_folder(root: str | os.PathLike, size: int | None = 224, *, max_per_class: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """An ImageNet-style folder ``root/<class>/<files>`` -> ``(images, labels, class_folder_names)``."""
    root = Path(root)
    if not root.is_dir():
        raise ImageDecodeError(f"{root} is not a folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise ImageDecodeError(f"{root} has no class sub-folders")
    imgs, ys = [], []
    for c, name in enumerate(classes):
        files = list_image_files(root / name)[:max_per_class]
        if files:
            batch, _ = load_images(files, size)
            imgs.append(batch)
            ys += [c] * len(batch)
    if not imgs:
        raise ImageDecodeError(f"no image files under {root}")
    return np.concatenate(imgs), np.asarray(ys, np.int32), classes
