"""Keras 2 ``.h5`` models as Flax modules, read with h5py (no tensorflow).

:func:`parse_keras_config` turns the ``model_config`` JSON stored in a Keras ``.h5`` into a tuple of
:class:`KerasLayer` specs: a ``Sequential`` model (each layer takes the previous one's output) or a single-input,
single-output ``Functional`` graph (``Model`` in Keras 2.0; each layer names its inputs, e.g. the two branches of
an ``Add``).  :class:`KerasModel` is a Flax module that runs such a spec (NHWC, ``channels_last`` like Keras, so
``Flatten`` needs no reordering: ``reshape(N, -1)`` of an NHWC tensor is Keras' flatten order);
:func:`read_keras_h5` reads the weights with h5py (kernels are already HWIO / ``(in, out)``; depthwise kernels
``(kh, kw, C, m)`` become Flax grouped-conv kernels ``(kh, kw, 1, C*m)``; batch-norm gamma, beta, moving mean and
variance) and :func:`check_variables` checks them against the module.

:class:`KerasModel` may also map its input first (``input_gray``: RGB weights of a grayscale conversion, then
``x * input_scale + input_offset``), so an expert fed RGB 0-255 images runs the package's own preprocessing inside
the jitted forward; :func:`as_logits` drops the model's final softmax / sigmoid (the experts return logits), and
``two_class_logit`` turns one sigmoid unit ``z`` into the logit pair ``[0, z]`` (softmax of the pair = ``[1 -
sigmoid(z), sigmoid(z)]``).
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import flax.linen as nn
import h5py
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "KerasLayer",
    "KerasModel",
    "KerasSequential",
    "parse_keras_config",
    "keras_input_shape",
    "as_logits",
    "read_keras_h5",
    "check_variables",
    "load_keras_h5",
]


class KerasLayer(NamedTuple):
    """One Keras layer, reduced to what inference needs (hashable, so modules stay static).

    ``inputs``: the names of the layers whose outputs it takes (``""`` is the model input); empty: the previous
    layer's output (a ``Sequential`` model)."""

    kind: str  # conv, sepconv, dwconv, bn, maxpool, avgpool, flatten, dense, act, gap, gmp, rescale, add
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
    depth_multiplier: int = 1  # SeparableConv2D / DepthwiseConv2D
    inputs: tuple[str, ...] = ()


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

#: Layers that are the identity at inference.
_IDENTITY = ("InputLayer", "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout")


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


def _layer_spec(cls: str, c: dict, name: str, inputs: tuple[str, ...]) -> KerasLayer:
    """The spec of one (non-identity) Keras layer."""
    if c.get("data_format", "channels_last") != "channels_last":
        raise ValueError(f"Keras layer {name!r}: only channels_last is supported")
    if cls in ("Conv2D", "SeparableConv2D", "DepthwiseConv2D"):
        if int(c.get("groups", 1)) != 1:
            raise ValueError(f"Keras layer {name!r}: grouped convolutions are not supported")
        kind = {"Conv2D": "conv", "SeparableConv2D": "sepconv", "DepthwiseConv2D": "dwconv"}[cls]
        return KerasLayer(kind, name, int(c.get("filters") or 0), _pair(c["kernel_size"]),
                          _pair(c.get("strides", 1)), c.get("padding", "valid").upper(),
                          _activation_name(c.get("activation"), name), bool(c.get("use_bias", True)),
                          dilation=_pair(c.get("dilation_rate", 1)),
                          depth_multiplier=int(c.get("depth_multiplier", 1)), inputs=inputs)
    if cls == "Dense":
        return KerasLayer("dense", name, int(c["units"]), activation=_activation_name(c.get("activation"), name),
                          use_bias=bool(c.get("use_bias", True)), inputs=inputs)
    if cls == "BatchNormalization":
        axis = c.get("axis", -1)
        axis = axis[0] if isinstance(axis, (list, tuple)) else axis
        if axis not in (-1, 3, 1):  # 3 for NHWC images, 1 for (N, C) vectors
            raise ValueError(f"Keras layer {name!r}: batch norm over axis {axis} is not supported")
        return KerasLayer("bn", name, epsilon=float(c.get("epsilon", 1e-3)), center=bool(c.get("center", True)),
                          scale=bool(c.get("scale", True)), inputs=inputs)
    if cls in ("MaxPooling2D", "AveragePooling2D"):
        pool = _pair(c.get("pool_size", 2))
        strides = _pair(c["strides"]) if c.get("strides") is not None else pool
        return KerasLayer("maxpool" if cls == "MaxPooling2D" else "avgpool", name, kernel=pool, strides=strides,
                          padding=c.get("padding", "valid").upper(), inputs=inputs)
    simple = {"GlobalAveragePooling2D": "gap", "GlobalMaxPooling2D": "gmp", "Flatten": "flatten", "Add": "add"}
    if cls in simple:
        return KerasLayer(simple[cls], name, inputs=inputs)
    if cls == "Activation":
        return KerasLayer("act", name, activation=_activation_name(c.get("activation"), name), inputs=inputs)
    if cls == "ReLU":
        if c.get("max_value") not in (None, 6, 6.0) or float(c.get("negative_slope", 0) or 0) != 0:
            raise ValueError(f"Keras layer {name!r}: only plain ReLU / ReLU(6) are supported")
        return KerasLayer("act", name, activation="relu6" if c.get("max_value") else "relu", inputs=inputs)
    if cls == "Rescaling":
        return KerasLayer("rescale", name, value=float(c.get("scale", 1.0)), offset=float(c.get("offset", 0.0)),
                          inputs=inputs)
    raise ValueError(f"Keras layer {name!r}: unsupported layer type {cls!r}")


def _inbound_names(nodes, name: str) -> list[str]:
    """The input layer names of a functional layer (Keras 2 ``[[[name, 0, 0, {}], ...]]`` or Keras 3
    ``[{"args": [...keras_history...]}]``); a layer called more than once is refused."""
    if not nodes:
        return []
    if len(nodes) != 1:
        raise ValueError(f"Keras layer {name!r}: shared layers (called {len(nodes)} times) are not supported")
    node = nodes[0]
    if isinstance(node, list):  # Keras 2
        return [str(n[0]) for n in node]
    found: list[str] = []

    def walk(o):
        if isinstance(o, dict):
            if "keras_history" in o:
                found.append(str(o["keras_history"][0]))
            else:
                for v in o.values():
                    walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(node.get("args", []))
    return found


def _endpoint_names(spec) -> list[str]:
    """``input_layers`` / ``output_layers`` of a functional config: ``[[name, 0, 0], ...]`` or ``[name, 0, 0]``."""
    if spec and isinstance(spec[0], str):
        return [spec[0]]
    return [str(s[0]) for s in spec or []]


def parse_keras_config(config: str | dict) -> tuple[KerasLayer, ...]:
    """Parse a Keras ``Sequential`` or single-input, single-output ``Functional`` ``model_config`` into layer specs.

    Supported: InputLayer, Conv2D, SeparableConv2D, DepthwiseConv2D, Dense, BatchNormalization, MaxPooling2D,
    AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D, Flatten, Add, Dropout, Activation, ReLU,
    Rescaling.  Anything else raises ``ValueError`` naming the layer.  The model's output is the last spec.
    """
    if isinstance(config, (str, bytes)):
        config = json.loads(config)
    cls_name = config.get("class_name")
    if cls_name not in ("Sequential", "Functional", "Model"):
        raise ValueError(f"only Keras Sequential and Functional models are supported, got {cls_name!r}")
    cfg = config.get("config") or {}
    layers = cfg.get("layers") if isinstance(cfg, dict) else cfg
    if not layers:
        raise ValueError("Keras config has no layers")
    specs: list[KerasLayer] = []
    if cls_name == "Sequential":
        for layer in layers:
            cls, c = layer["class_name"], layer["config"]
            if cls not in _IDENTITY:
                specs.append(_layer_spec(cls, c, c.get("name", cls), ()))
    else:
        if len(_endpoint_names(cfg.get("input_layers"))) != 1 or len(_endpoint_names(cfg.get("output_layers"))) != 1:
            raise ValueError("only Keras Functional models with one input and one output are supported")
        alias: dict[str, str] = {}  # identity layer -> the layer it passes on ("" = the model input)
        for layer in layers:
            cls, c = layer["class_name"], layer["config"]
            name = layer.get("name") or c.get("name", cls)
            inputs = tuple(alias.get(n, n) for n in _inbound_names(layer.get("inbound_nodes"), name))
            if cls == "InputLayer":
                alias[name] = ""
            elif cls in _IDENTITY:
                alias[name] = inputs[0]
            else:
                if cls != "Add" and len(inputs) != 1:
                    raise ValueError(f"Keras layer {name!r}: expected one input, got {list(inputs)}")
                specs.append(_layer_spec(cls, c, name, inputs))
        out = _endpoint_names(cfg["output_layers"])[0]
        if not specs or alias.get(out, out) != specs[-1].name:
            raise ValueError(f"Keras Functional model: the output {out!r} is not its last layer")
    if not specs:
        raise ValueError("Keras config has no layers")
    return tuple(specs)


def keras_input_shape(config: str | dict) -> tuple[int | None, ...] | None:
    """The ``batch_input_shape`` of a ``model_config`` (``(None, H, W, C)``), ``None`` if not recorded."""
    if isinstance(config, (str, bytes)):
        config = json.loads(config)
    cfg = config.get("config") or {}
    for layer in (cfg.get("layers") or [] if isinstance(cfg, dict) else cfg):
        c = layer.get("config", {})
        shape = c.get("batch_input_shape") or c.get("batch_shape")
        if shape:
            return tuple(None if s is None else int(s) for s in shape)
    return None


def as_logits(layers: tuple[KerasLayer, ...]) -> tuple[tuple[KerasLayer, ...], str]:
    """``(layers, removed)``: the model without its final ``softmax`` / ``sigmoid`` (a separate ``Activation``
    layer is dropped, a conv / dense layer's own activation becomes linear); ``removed`` names the activation
    (``"linear"`` when the model ends otherwise)."""
    last = layers[-1]
    if last.activation not in ("softmax", "sigmoid") or last.kind not in ("act", "dense", "conv", "sepconv"):
        return layers, "linear"
    if last.kind == "act":
        if len(layers) < 2 or last.inputs not in ((), (layers[-2].name,)):
            raise ValueError(f"Keras layer {last.name!r}: the final activation does not follow the layer before it")
        return layers[:-1], last.activation
    return layers[:-1] + (last._replace(activation="linear"),), last.activation


class KerasModel(nn.Module):
    """Runs a tuple of :class:`KerasLayer` specs on NHWC float input (inference mode).

    ``input_gray`` (RGB weights, e.g. ``(0.299, 0.587, 0.114)``) first reduces an RGB input to one channel; then
    ``x * input_scale + input_offset``.  ``two_class_logit``: the single output ``z`` becomes ``[0, z]``."""

    layers: tuple[KerasLayer, ...]
    input_gray: tuple[float, ...] = ()
    input_scale: float = 1.0
    input_offset: float = 0.0
    two_class_logit: bool = False

    @nn.compact
    def __call__(self, x):
        if self.input_gray:
            x = jnp.tensordot(x, jnp.asarray(self.input_gray, x.dtype), axes=[[-1], [0]])[..., None]
        if self.input_scale != 1.0 or self.input_offset != 0.0:
            x = x * self.input_scale + self.input_offset
        values = {"": x}
        for l in self.layers:
            args = [values[n] for n in l.inputs] if l.inputs else [x]
            x = args[0]
            if l.kind == "conv":
                x = nn.Conv(l.features, l.kernel, strides=l.strides, padding=l.padding,
                            kernel_dilation=l.dilation, use_bias=l.use_bias, name=l.name)(x)
                x = _ACTIVATIONS[l.activation](x)
            elif l.kind in ("sepconv", "dwconv"):  # depthwise (a grouped conv), then for sepconv pointwise
                c, sep = x.shape[-1], l.kind == "sepconv"
                x = nn.Conv(c * l.depth_multiplier, l.kernel, strides=l.strides, padding=l.padding,
                            kernel_dilation=l.dilation, feature_group_count=c, use_bias=l.use_bias and not sep,
                            name=f"{l.name}_depthwise" if sep else l.name)(x)
                if sep:
                    x = nn.Conv(l.features, (1, 1), use_bias=l.use_bias, name=f"{l.name}_pointwise")(x)
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
            elif l.kind == "add":
                x = sum(args[1:], args[0])
            elif l.kind == "act":
                x = _ACTIVATIONS[l.activation](x)
            elif l.kind == "rescale":
                x = x * l.value + l.offset
            else:  # pragma: no cover - parse_keras_config guards this
                raise ValueError(f"unknown layer kind {l.kind!r}")
            values[l.name] = x
        if self.two_class_logit:
            x = jnp.concatenate([jnp.zeros_like(x), x], axis=-1)
        return x


#: The former name of :class:`KerasModel` (which then ran Sequential models only).
KerasSequential = KerasModel


def _layer_weights(group) -> dict[str, np.ndarray]:
    """``{'kernel': ..., 'bias': ...}`` for one layer group of ``model_weights``."""
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


def _depthwise_kernel(k: np.ndarray) -> np.ndarray:
    """Keras ``(kh, kw, C, m)`` -> Flax grouped conv ``(kh, kw, 1, C*m)`` (output channel ``c*m + j``)."""
    return k.reshape(k.shape[0], k.shape[1], 1, -1)


def _layer_variables(l: KerasLayer, w: dict[str, np.ndarray], params: dict, stats: dict) -> None:
    if l.kind in ("conv", "dense"):
        params[l.name] = {"kernel": w["kernel"], **({"bias": w["bias"]} if l.use_bias else {})}
    elif l.kind == "dwconv":
        params[l.name] = {"kernel": _depthwise_kernel(w["depthwise_kernel"]),
                          **({"bias": w["bias"]} if l.use_bias else {})}
    elif l.kind == "sepconv":
        params[f"{l.name}_depthwise"] = {"kernel": _depthwise_kernel(w["depthwise_kernel"])}
        params[f"{l.name}_pointwise"] = {"kernel": w["pointwise_kernel"], **({"bias": w["bias"]} if l.use_bias else {})}
    else:  # bn
        params[l.name] = {**({"scale": w["gamma"]} if l.scale else {}), **({"bias": w["beta"]} if l.center else {})}
        stats[l.name] = {"mean": w["moving_mean"], "var": w["moving_variance"]}


def read_keras_h5(path: str | os.PathLike, layers: tuple[KerasLayer, ...] | None = None
                  ) -> tuple[tuple[KerasLayer, ...], dict[str, Any]]:
    """Read a Keras 2 ``.h5`` (full model or weights-only with ``layers`` given).

    Returns ``(layers, variables)`` with ``variables = {"params": ..., "batch_stats": ...}``.
    """
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
            if l.kind not in ("conv", "sepconv", "dwconv", "dense", "bn"):
                continue
            if l.name not in root:
                raise ValueError(f"{path}: no weights for layer {l.name!r}")
            try:
                _layer_variables(l, _layer_weights(root[l.name]), params, stats)
            except KeyError as e:
                raise ValueError(f"{path}: layer {l.name!r} has no weight {e.args[0]!r}") from None
    variables: dict[str, Any] = {"params": params}
    if stats:
        variables["batch_stats"] = stats
    return layers, variables


def check_variables(module: nn.Module, variables: dict, input_shape: tuple[int, ...], what: str) -> None:
    """Raise ``ValueError`` unless ``variables`` have exactly the module's names and shapes for ``input_shape``."""
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
                  layers: tuple[KerasLayer, ...] | None = None, channels: int = 3) -> tuple[KerasModel, dict[str, Any]]:
    """Module + checked variables for a Keras ``.h5`` taking ``input_size=(H, W)`` input of ``channels`` channels."""
    layers, variables = read_keras_h5(path, layers)
    module = KerasModel(layers)
    check_variables(module, variables, (1, *input_size, channels), os.fspath(path))
    return module, jax.tree_util.tree_map(jnp.asarray, variables)
