"""The digit CNNs of PyPI ``ccexam`` 1.0.0 (``ccexam/weights/{mnist,usps,svhn}.pth``) as Flax experts.

The ``.pth`` files are PyTorch state dicts (read by :mod:`mll_jax.models.torch_pickle`, no torch).  The networks
(``ccexam/models.py``), all with 3x3 convolutions padded by 1, ReLU and 2x2 max pooling after each stage:

* ``mnist`` (``MNISTNet``): Conv 32 - pool - Conv 64 - pool, Linear 3136 -> 128 - ReLU - Linear 128 -> 10;
  28x28 grayscale;
* ``usps`` (``USPSNet``): the same with batch norm after each conv and dropout before each linear layer (the
  identity at inference); 16x16 grayscale;
* ``svhn`` (``SVHNNet``): three stages of two Conv-BN-ReLU (32, 64, 128) and a pool, dropout, Linear 2048 -> 256
  - ReLU - dropout - Linear 256 -> 10; 32x32 RGB.

Preprocessing as ``ccexam.inference.build_transform`` (with ``ccexam.constants.DATASET_STATS``): PIL
``convert("L")`` (ITU-R 601-2: 0.299 R + 0.587 G + 0.114 B) for the grayscale models, or ``convert("RGB")``;
``transforms.Resize`` (PIL bilinear, antialiased) to the model's size; ``ToTensor`` (/255) and ``Normalize``
(MNIST mean 0.1307, std 0.3081; USPS 0.2471, 0.2994; SVHN per channel (0.4377, 0.4438, 0.4728), (0.1980, 0.2010,
0.1970)).  The expert resizes the RGB image on the device (:class:`mll_jax.models.DevicePreprocess`) and converts
to gray and normalises inside the forward (gray after the resize: the same up to PIL's uint8 rounding of the gray
image).  The network runs NHWC; the first linear layer's weight is permuted from PyTorch's (C, H, W) flatten
order to (H, W, C).  Logits are the last linear layer's outputs (the package takes their argmax).

Heads: the digits ``zero`` ... ``nine`` (class index = digit), with the WordNet nouns for the numbers (zero.n.02,
one.n.01, ..., nine.n.01, all hyponyms of digit.n.01).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from . import DevicePreprocess, FlaxModuleExpert
from .keras_h5 import check_variables
from .keras_mobilenet import file_sha256, find_package_file
from .torch_pickle import load_state_dict

__all__ = [
    "PIL_GRAY_WEIGHTS",
    "DIGIT_HEADS",
    "DIGIT_WNIDS",
    "DigitVariant",
    "CCEXAM_VARIANTS",
    "DigitCNN",
    "convert_state_dict",
    "ccexam_weight_files",
    "ccexam_heads",
    "load_ccexam",
]

#: PIL's ``convert("L")`` weights on R, G, B.
PIL_GRAY_WEIGHTS = (0.299, 0.587, 0.114)

DIGIT_HEADS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_WNIDS = ("n13742358", "n13742573", "n13743269", "n13744044", "n13744304", "n13744521", "n13744722",
               "n13744916", "n13745086", "n13745270")


class DigitVariant(NamedTuple):
    """One ``ccexam`` network: conv widths per stage, batch norm, hidden units, input size, colour, statistics."""

    stages: tuple[tuple[int, ...], ...]
    batch_norm: bool
    hidden: int
    size: int
    gray: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]


#: The ``ccexam`` networks by variant (the ``variant`` option of the hub kind ``ccexam``).
CCEXAM_VARIANTS = {
    "mnist": DigitVariant(((32,), (64,)), False, 128, 28, True, (0.1307,), (0.3081,)),
    "usps": DigitVariant(((32,), (64,)), True, 128, 16, True, (0.2471,), (0.2994,)),
    "svhn": DigitVariant(((32, 32), (64, 64), (128, 128)), True, 256, 32, False, (0.4377, 0.4438, 0.4728),
                         (0.1980, 0.2010, 0.1970)),
}


class DigitCNN(nn.Module):
    """A ``ccexam`` digit network on NHWC RGB 0-255 float input (its preprocessing included; inference mode)."""

    stages: tuple[tuple[int, ...], ...]
    batch_norm: bool
    hidden: int
    gray: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        if self.gray:
            x = jnp.tensordot(x, jnp.asarray(PIL_GRAY_WEIGHTS, x.dtype), axes=[[-1], [0]])[..., None]
        x = (x / 255.0 - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)
        for s, widths in enumerate(self.stages):
            for j, c in enumerate(widths):
                x = nn.Conv(c, (3, 3), padding=((1, 1), (1, 1)), name=f"conv{s}_{j}")(x)
                if self.batch_norm:
                    x = nn.BatchNorm(use_running_average=True, epsilon=1e-5, name=f"bn{s}_{j}")(x)
                x = jax.nn.relu(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = jax.nn.relu(nn.Dense(self.hidden, name="fc1")(x))
        return nn.Dense(self.num_classes, name="fc2")(x)


def _module(v: DigitVariant) -> DigitCNN:
    return DigitCNN(v.stages, v.batch_norm, v.hidden, v.gray, v.mean, v.std)


def convert_state_dict(sd: dict[str, np.ndarray], v: DigitVariant, source: str = "checkpoint") -> dict[str, Any]:
    """``{"params", "batch_stats"}`` of :class:`DigitCNN` from a ``ccexam`` state dict (its modules in
    registration order: convs, batch norms, linear layers)."""
    groups: dict[str, dict[str, np.ndarray]] = {}
    for k, a in sd.items():
        prefix, _, leaf = k.rpartition(".")
        groups.setdefault(prefix, {})[leaf] = np.asarray(a)
    convs = [g for g in groups.values() if g.get("weight") is not None and g["weight"].ndim == 4]
    bns = [g for g in groups.values() if "running_mean" in g]
    linears = [g for g in groups.values() if g.get("weight") is not None and g["weight"].ndim == 2]
    names = [f"{s}_{j}" for s, widths in enumerate(v.stages) for j in range(len(widths))]
    if len(convs) != len(names) or len(bns) != (len(names) if v.batch_norm else 0) or len(linears) != 2:
        raise ValueError(f"{source}: {len(convs)} convs, {len(bns)} batch norms, {len(linears)} linear layers do "
                         f"not fit this network ({len(names)} convs, batch norm {v.batch_norm}, 2 linear layers)")
    params: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    for i, n in enumerate(names):
        params[f"conv{n}"] = {"kernel": convs[i]["weight"].transpose(2, 3, 1, 0).astype(np.float32),
                              "bias": convs[i]["bias"].astype(np.float32)}
        if v.batch_norm:
            params[f"bn{n}"] = {"scale": bns[i]["weight"].astype(np.float32), "bias": bns[i]["bias"].astype(np.float32)}
            stats[f"bn{n}"] = {"mean": bns[i]["running_mean"].astype(np.float32),
                               "var": bns[i]["running_var"].astype(np.float32)}
    w1 = linears[0]["weight"]
    c = v.stages[-1][-1]
    side = v.size // 2 ** len(v.stages)
    if w1.shape[1] != c * side * side:
        raise ValueError(f"{source}: first linear layer takes {w1.shape[1]} features, expected {c}x{side}x{side}")
    # PyTorch flattens (C, H, W); the NHWC network flattens (H, W, C)
    w1 = w1.reshape(w1.shape[0], c, side, side).transpose(2, 3, 1, 0).reshape(side * side * c, w1.shape[0])
    params["fc1"] = {"kernel": w1.astype(np.float32), "bias": linears[0]["bias"].astype(np.float32)}
    params["fc2"] = {"kernel": linears[1]["weight"].T.astype(np.float32), "bias": linears[1]["bias"].astype(np.float32)}
    out: dict[str, Any] = {"params": params}
    if stats:
        out["batch_stats"] = stats
    return out


def _variant(variant: str) -> DigitVariant:
    if variant not in CCEXAM_VARIANTS:
        raise ValueError(f"unknown ccexam model {variant!r}; known: {sorted(CCEXAM_VARIANTS)}")
    return CCEXAM_VARIANTS[variant]


def ccexam_weight_files(variant: str) -> list[str]:
    """The installed ``.pth`` a variant is read from (:class:`~mll_jax.errors.MissingPackageError` with the pip
    command when ``ccexam`` is missing)."""
    _variant(variant)
    return [find_package_file("ccexam", "weights", f"{variant}.pth")]


def ccexam_heads(variant: str) -> tuple[list[str], list[str]]:
    """``(head_names, head_wnids)``: the ten digits."""
    _variant(variant)
    return list(DIGIT_HEADS), list(DIGIT_WNIDS)


def load_ccexam(variant: str, weights_path: str | os.PathLike | None = None, *, model_id: str | None = None,
                batch_size: int = 32, progress: bool = False) -> FlaxModuleExpert:
    """The expert of a ``ccexam`` network (``mnist``, ``usps`` or ``svhn``; default id ``ccexam-<variant>``)."""
    v = _variant(variant)
    path = os.fspath(weights_path) if weights_path is not None else ccexam_weight_files(variant)[0]
    variables = convert_state_dict(load_state_dict(path), v, path)
    module = _module(v)
    check_variables(module, variables, (1, v.size, v.size, 3), path)
    expert = FlaxModuleExpert(module, jax.tree_util.tree_map(jnp.asarray, variables), None,
                              model_id or f"ccexam-{variant}", list(DIGIT_HEADS), batch_size=batch_size,
                              num_heads=10, head_wnids=list(DIGIT_WNIDS), progress=progress,
                              device_preprocess=DevicePreprocess((v.size, v.size), "bilinear"))
    expert.fingerprint = f"ccexam:{variant}:{file_sha256(path)}"
    return expert
