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

**Bad files.** :func:`load_images` and :func:`load_folder` decide per file (``on_error``): ``"skip"`` (the
default) leaves out a file that cannot be decoded (empty, truncated, not an image, too large) with one warning per
call, and records it in the result's ``skipped`` list (:class:`SkippedFile`: path and reason); ``"stop"`` raises
:class:`ImageDecodeError` naming the first bad file.  The results are still the tuples they always were
(``images, files = load_images(...)``), with the extra attribute ``skipped``.  Paths that do not exist and folders
without image files are argument errors and always raise.

**Decompression bombs.** A file whose header declares more than ``max_pixels`` pixels (default
:data:`MAX_IMAGE_PIXELS`, PIL's own limit; a module-level setting, and an argument of every loader; ``None``
turns the check off) is refused before anything is decoded, with :class:`ImageTooLargeError` (a bad file as
above).

**Messages** name the API arguments (``size=``, ``on_error=``, ``max_pixels=``).  Front ends pass ``arg_names``
(e.g. ``{"size": "--image_size"}``) to have them name their own flags instead.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from mll_jax.errors import ImageBatchError, ImageDecodeError, ImageTooLargeError  # noqa: F401  (re-exported)
from mll_jax.utils import usable_cores

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "ImageBatchError",
    "ImageDecodeError",
    "ImageTooLargeError",
    "SkippedFile",
    "LoadedImages",
    "LoadedFolder",
    "as_image_batch",
    "load_image",
    "load_images",
    "list_image_files",
    "load_folder",
]

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

#: Default pixel limit (width x height) of a decoded file: PIL's ``Image.MAX_IMAGE_PIXELS`` (about 89.5 million
#: pixels, 256 MiB as RGB).  Change it here for the whole process or pass ``max_pixels=`` to a loader.
MAX_IMAGE_PIXELS = 89_478_485

_DEFAULT = object()  # "use MAX_IMAGE_PIXELS as it is at call time"
_ON_ERROR = ("skip", "stop")


class SkippedFile(NamedTuple):
    """A file a loader left out: its path and why (the :class:`ImageDecodeError` message)."""

    path: Path
    reason: str


class LoadedImages(tuple):
    """``(images, files)`` as returned by :func:`load_images`, plus ``skipped``: the files left out."""

    skipped: list[SkippedFile]

    def __new__(cls, images: np.ndarray, files: list[Path], skipped: Sequence[SkippedFile] = ()):
        self = super().__new__(cls, (images, files))
        self.skipped = list(skipped)
        return self

    @property
    def images(self) -> np.ndarray:
        return self[0]

    @property
    def files(self) -> list[Path]:
        return self[1]


class LoadedFolder(tuple):
    """``(images, labels, class_folder_names)`` as returned by :func:`load_folder`, plus ``skipped``."""

    skipped: list[SkippedFile]

    def __new__(cls, images: np.ndarray, labels: np.ndarray, classes: list[str],
                skipped: Sequence[SkippedFile] = ()):
        self = super().__new__(cls, (images, labels, classes))
        self.skipped = list(skipped)
        return self


def _arg(arg_names: Mapping[str, str] | None, name: str) -> str:
    """How a message names the argument ``name`` (``size=`` in the API; a front end's flag via ``arg_names``)."""
    return (arg_names or {}).get(name, name)


def _check_size(size, arg_names) -> None:
    if size is None:
        return
    try:
        ok = not isinstance(size, bool) and int(size) == size and size >= 1
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{_arg(arg_names, 'size')} must be a positive integer or None, got {size!r}")


def _pixel_limit(max_pixels) -> int | None:
    limit = MAX_IMAGE_PIXELS if max_pixels is _DEFAULT else max_pixels
    if limit is None:
        return None
    if isinstance(limit, bool) or int(limit) != limit or limit < 1:
        raise ValueError(f"max_pixels must be a positive integer or None, got {limit!r}")
    return int(limit)


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


def load_image(path: str | os.PathLike, size: int | None = None, *, max_pixels=_DEFAULT,
               arg_names: Mapping[str, str] | None = None) -> np.ndarray:
    """Decode one file to ``(h, w, 3)`` uint8 RGB (``(size, size, 3)`` with ``size``: shorter side resized with
    bicubic resampling, centre crop).  Raises :class:`ImageDecodeError` naming the file
    (:class:`ImageTooLargeError` for more than ``max_pixels`` pixels, default :data:`MAX_IMAGE_PIXELS`)."""
    from PIL import Image

    path = Path(path)
    _check_size(size, arg_names)
    limit = _pixel_limit(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            with Image.open(path) as im:
                w, h = im.size  # from the header: nothing decoded yet
                if limit is not None and w * h > limit:
                    raise ImageTooLargeError(
                        f"image file {path} is {w}x{h} = {w * h:,} pixels, over the limit of {limit:,} (a "
                        f"decompression-bomb guard; raise it with {_arg(arg_names, 'max_pixels')}=)")
                im = im.convert("RGB")
                if size is not None:
                    size = int(size)
                    scale = size / min(w, h)
                    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                    im = im.resize((nw, nh), Image.BICUBIC)
                    left, top = (nw - size) // 2, (nh - size) // 2
                    im = im.crop((left, top, left + size, top + size))
                return np.asarray(im, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError(f"image file {path} does not exist") from None
    except Image.DecompressionBombError as e:  # PIL refuses twice its own limit while reading the header
        bound = "PIL's limit" if limit is None else f"the limit of {limit:,}"
        raise ImageTooLargeError(f"image file {path} declares more pixels than {bound} (a decompression-bomb "
                                 f"guard; {_arg(arg_names, 'max_pixels')}=): {e}") from None
    except MemoryError:
        raise ImageTooLargeError(f"image file {path} does not fit in memory when decoded") from None
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


def _decode_all(files: list[Path], size, *, on_error: str, max_pixels, arg_names, threads: int | None
                ) -> tuple[list[np.ndarray], list[Path], list[SkippedFile]]:
    from concurrent.futures import ThreadPoolExecutor

    def one(f):
        try:
            return load_image(f, size, max_pixels=max_pixels, arg_names=arg_names)
        except ImageDecodeError as e:
            if on_error == "stop":
                raise
            return e

    workers = threads or min(8, usable_cores())
    if workers > 1 and len(files) > 1:
        with ThreadPoolExecutor(workers) as ex:
            results = list(ex.map(one, files))
    else:
        results = [one(f) for f in files]
    arrays, kept, skipped = [], [], []
    for f, r in zip(files, results):
        if isinstance(r, ImageDecodeError):
            skipped.append(SkippedFile(f, str(r)))
        else:
            arrays.append(r)
            kept.append(f)
    return arrays, kept, skipped


def _warn_skipped(skipped: list[SkippedFile], total: int) -> None:
    if skipped:
        first = skipped[0].reason
        warnings.warn(f"skipped {len(skipped)} of {total} image files that cannot be used (first: {first})",
                      stacklevel=3)


def _check_options(size, on_error, arg_names) -> None:
    if on_error not in _ON_ERROR:
        raise ValueError(f"{_arg(arg_names, 'on_error')} must be one of {_ON_ERROR}, got {on_error!r}")
    _check_size(size, arg_names)


def load_images(paths: Sequence[str | os.PathLike] | str | os.PathLike, size: int | None = 224, *,
                threads: int | None = None, on_error: str = "skip", max_pixels=_DEFAULT,
                arg_names: Mapping[str, str] | None = None) -> LoadedImages:
    """Decode image files and/or folders (their image files, sorted) into one ``(N, size, size, 3)`` batch.

    Returns ``(images, files)`` (a :class:`LoadedImages`: ``files`` are the files decoded, in order; its
    ``skipped`` attribute lists the files left out and why).  A file that cannot be decoded (empty, truncated,
    not an image, over ``max_pixels`` pixels) is skipped with a warning (``on_error="skip"``) or raises
    :class:`ImageDecodeError` (``on_error="stop"``); when no file can be decoded it raises too.  With
    ``size=None`` every file must have the same size.  Decoding runs on ``threads`` host threads (PIL releases
    the GIL).  ``arg_names`` maps argument names to the names messages use (a command line's flags).
    """
    _check_options(size, on_error, arg_names)
    _pixel_limit(max_pixels)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = _expand(paths)
    if not files:
        raise ImageDecodeError("no image files given")
    arrays, kept, skipped = _decode_all(files, size, on_error=on_error, max_pixels=max_pixels,
                                        arg_names=arg_names, threads=threads)
    if not arrays:
        raise ImageDecodeError(f"none of the {len(files)} image files can be decoded (first: {skipped[0].reason})")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ImageDecodeError(f"images of different sizes {sorted(shapes)[:4]}; pass {_arg(arg_names, 'size')}=N "
                               "to resize them to N x N")
    _warn_skipped(skipped, len(files))
    return LoadedImages(np.stack(arrays), kept, skipped)


def load_folder(root: str | os.PathLike, size: int | None = 224, *, max_per_class: int | None = None,
                on_error: str = "skip", max_pixels=_DEFAULT, arg_names: Mapping[str, str] | None = None,
                threads: int | None = None) -> LoadedFolder:
    """An ImageNet-style folder ``root/<class>/<files>`` -> ``(images, labels, class_folder_names)``.

    Bad files are skipped or stop the load as in :func:`load_images` (the result's ``skipped`` lists them);
    ``max_per_class`` counts the files listed per class, before any is skipped."""
    _check_options(size, on_error, arg_names)
    _pixel_limit(max_pixels)
    root = Path(root)
    if not root.is_dir():
        raise ImageDecodeError(f"{root} is not a folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise ImageDecodeError(f"{root} has no class sub-folders")
    imgs, ys, skipped = [], [], []
    total = 0
    for c, name in enumerate(classes):
        files = list_image_files(root / name)[:max_per_class]
        total += len(files)
        if files:
            arrays, _, bad = _decode_all(files, size, on_error=on_error, max_pixels=max_pixels,
                                         arg_names=arg_names, threads=threads)
            skipped += bad
            if arrays:
                imgs += arrays
                ys += [c] * len(arrays)
    if not imgs:
        if skipped:
            raise ImageDecodeError(f"none of the {total} image files under {root} can be decoded (first: "
                                   f"{skipped[0].reason})")
        raise ImageDecodeError(f"no image files under {root}")
    shapes = {a.shape for a in imgs}
    if len(shapes) > 1:
        raise ImageDecodeError(f"images of different sizes {sorted(shapes)[:4]}; pass {_arg(arg_names, 'size')}=N "
                               "to resize them to N x N")
    _warn_skipped(skipped, total)
    return LoadedFolder(np.stack(imgs), np.asarray(ys, np.int32), classes, skipped)
