"""Hugging Face Flax image classifiers on grayscale input, as a Flax module the model hub can re-create.

:class:`GrayHFClassifier` wraps the Flax module of ``FlaxResNetForImageClassification`` or
``FlaxViTForImageClassification`` (built from a Hugging Face config given as a JSON dict) so that it takes 1-channel
gray or 3-channel RGB input.  The hub stores it as kind ``flax_module`` with ``module_class =
"mll_jax.models.gray_hf:GrayHFClassifier"`` and ``module_kwargs = {"arch": ..., "config": ...}``, so a stored model
is rebuilt with nothing but this module (``GrayHFClassifier(**module_kwargs)``).  The experts and the image towers
of the dual encoders of the Fashion-MNIST lab (:mod:`mll_lab`) are such modules.

Transformers is imported lazily, when a module is first applied.
"""

from __future__ import annotations

import warnings
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["LUMA", "ARCHS", "GrayHFClassifier", "hf_module", "plain_config"]

#: ITU-R BT.601 luma weights (RGB -> gray).
LUMA = (0.299, 0.587, 0.114)
#: The supported architectures (``arch``).
ARCHS = ("resnet", "vit")


def hf_module(arch: str, config: dict):
    """The Hugging Face Flax image-classification module of ``arch`` ('resnet' or 'vit') built from a config dict."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "TensorFlow and JAX classes are deprecated" (transformers 4.x)
        if arch == "resnet":
            from transformers import ResNetConfig
            from transformers.models.resnet.modeling_flax_resnet import FlaxResNetForImageClassificationModule

            return FlaxResNetForImageClassificationModule(ResNetConfig(**config))
        if arch == "vit":
            from transformers import ViTConfig
            from transformers.models.vit.modeling_flax_vit import FlaxViTForImageClassificationModule

            return FlaxViTForImageClassificationModule(ViTConfig(**config))
    raise ValueError(f"unknown expert architecture {arch!r} (expected 'resnet' or 'vit')")


def plain_config(tree):
    """Nested FrozenDict / Mapping -> plain dicts (HF configs insist on dict, flax freezes module attributes)."""
    if hasattr(tree, "items"):
        return {k: plain_config(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [plain_config(v) for v in tree]
    return tree


class GrayHFClassifier(nn.Module):
    """A Hugging Face Flax image-classification module on grayscale input.

    Input: float32 NHWC, either 1 channel (already normalised gray) or 3 channels (per-channel normalised RGB,
    as produced by the hub's :class:`~mll_jax.hub.PreprocessSpec`), which is reduced to ITU-R 601 luma; since the
    luma weights sum to 1, normalising the channels with the gray mean/std and then taking luma equals
    normalising the luma.  Output: (N, num_labels) logits.  ``config`` is the HF config as a JSON dict, so the
    module is re-creatable from the hub manifest (kind ``flax_module``).
    """

    arch: str
    config: Any

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        if x.shape[-1] == 3:
            x = x @ jnp.asarray(LUMA, x.dtype)[:, None]
        elif x.shape[-1] != 1:
            raise ValueError(f"GrayHFClassifier expects 1 or 3 channels, got input of shape {x.shape}")
        net = hf_module(self.arch, plain_config(self.config))
        net = net.clone(parent=self, name="net")
        return net(x, deterministic=deterministic, return_dict=False)[0]
