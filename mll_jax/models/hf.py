"""Hugging Face Flax image classifiers (and any Flax module) as experts.

:func:`load_hf_image_classifier` accepts a hub name or a local directory and returns a
:class:`~mll_jax.models.FlaxModuleExpert` built on ``FlaxAutoModelForImageClassification``
(ResNet, ViT, BEiT, RegNet, DINOv2 in transformers 4.57). Weights are found in this order:

1. ``flax_model.msgpack`` -- native Flax weights;
2. ``model.safetensors`` with ``format: flax`` metadata -- Flax-layout safetensors;
3. ``model.safetensors`` in PyTorch layout (``format: pt`` or no metadata) -- read with
   ``safetensors.numpy`` and converted by transformers' own ``convert_pytorch_state_dict_to_flax``
   (numpy in, no torch; the same conversion ``from_pt=True`` applies to safetensors);
4. ``pytorch_model.bin`` / a ``.pth`` -- read with :mod:`mll_jax.models.torch_pickle`
   (restricted unpickler, no torch), then converted as in 3.

Preprocessing uses the checkpoint's own (slow, numpy) ``AutoImageProcessor``; without a
``preprocessor_config.json`` it falls back to a resize to ``config.image_size`` (or 224)
and ImageNet mean/std. Head names come from ``config.id2label`` (``None`` when they are
the generic ``LABEL_i``); 1000-way ImageNet heads also get ``head_wnids``.

:class:`FlaxModuleExpert` (re-exported here) wraps any ``nn.Module`` or apply function.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable

import numpy as np

from . import FlaxModuleExpert, imagenet_class_names, imagenet_wnids, resize_images
from .torch_pickle import load_state_dict

__all__ = [
    "FlaxModuleExpert",
    "load_hf_image_classifier",
    "hf_flax_expert",
    "load_pytorch_weights",
    "SimpleImageProcessor",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SimpleImageProcessor:
    """Fallback preprocessing: resize to ``size``, scale to [0, 1], normalise; NCHW float32 out."""

    def __init__(self, size: int | tuple[int, int] = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 resample: str = "bilinear"):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.resample = resample

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = resize_images(images, self.size, self.resample) / 255.0
        x = (x - self.mean) / self.std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def _processor_fn(processor: Any) -> Callable[[np.ndarray], np.ndarray]:
    if isinstance(processor, SimpleImageProcessor) or not hasattr(processor, "preprocess"):
        return processor

    def run(images: np.ndarray) -> np.ndarray:
        out = processor(images=[im for im in images], return_tensors="np")
        return np.asarray(out["pixel_values"], dtype=np.float32)

    return run


def _head_names(config) -> tuple[list[str] | None, list[str] | None]:
    id2label = getattr(config, "id2label", None) or {}
    n = int(getattr(config, "num_labels", len(id2label)))
    names = [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(n)]
    if all(re.fullmatch(r"LABEL_\d+", s) for s in names):
        names = None
    wnids = None
    if n == 1000 and names is not None:
        clean = imagenet_class_names()
        # HF ImageNet checkpoints use the classic "tench, Tinca tinca" names in index order
        if names[0].lower().startswith("tench") and names[1].lower().startswith("goldfish") \
                and names[999].lower().startswith("toilet tissue"):
            wnids = list(imagenet_wnids())
            names = list(clean)
    return names, wnids


def _tree_shapes(tree) -> dict[str, tuple]:
    import jax

    return {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_params(model, params, what: str) -> None:
    expected, got = _tree_shapes(model.params_shape_tree), _tree_shapes(params)
    missing = sorted(expected.keys() - got.keys())
    if missing:
        raise ValueError(f"{what}: {len(missing)} model weights missing from the checkpoint, e.g. {missing[:3]}")
    bad = [k for k in expected if got[k] != expected[k]]
    if bad:
        raise ValueError(f"{what}: shape mismatch for {bad[0]}: {got[bad[0]]} vs {expected[bad[0]]}")


def load_pytorch_weights(model, path: str | os.PathLike) -> dict:
    """Convert a PyTorch-layout checkpoint (``.safetensors`` / ``.bin`` / ``.pth``) to ``model``'s params.

    Uses transformers' own ``convert_pytorch_state_dict_to_flax`` on numpy arrays; the file
    is read with ``safetensors.numpy`` or the restricted unpickler, never with torch. ``model``
    may be created with ``_do_init=False`` (only its ``params_shape_tree`` is used).
    """
    import types

    from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax

    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        state = load_file(path)
    else:
        state = load_state_dict(path)
    state = {k: (v.astype(np.float32) if v.dtype.name == "bfloat16" else v) for k, v in state.items()}
    # the converter only needs the parameter tree's structure and shapes
    shim = types.SimpleNamespace(params=model.params_shape_tree, base_model_prefix=model.base_model_prefix)
    params = convert_pytorch_state_dict_to_flax(state, shim)
    _check_params(model, params, path)
    # drop unexpected extras (e.g. num_batches_tracked) so the tree matches the model's
    return _prune_like(model.params_shape_tree, params)


def _prune_like(ref, tree):
    if isinstance(ref, dict):
        return {k: _prune_like(ref[k], tree[k]) for k in ref}
    return tree


def _safetensors_format(path: str) -> str | None:
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
    return meta.get("format")


def hf_flax_expert(model, image_processor: Any = None, *, params: Any = None, model_id: str | None = None,
                   batch_size: int = 16, head_names: list[str] | None = None,
                   progress: bool = False) -> FlaxModuleExpert:
    """Wrap a ``FlaxPreTrainedModel`` image classifier (+ processor) as an expert.

    ``params`` default to ``model.params`` (pass them for models made with ``_do_init=False``).
    """
    config = model.config
    names, wnids = _head_names(config)
    if head_names is not None:
        names = list(head_names)
    if image_processor is None:
        size = getattr(config, "image_size", 224)
        image_processor = SimpleImageProcessor(size if isinstance(size, (int, tuple, list)) else 224)
    preprocess = _processor_fn(image_processor)
    model_id = model_id or getattr(config, "_name_or_path", None) or type(model).__name__

    def apply_fn(params, pixel_values):
        return model(pixel_values, params=params, train=False).logits

    if params is None:
        params = model.params
    return FlaxModuleExpert(apply_fn, params, preprocess, model_id, names, batch_size=batch_size,
                            num_heads=int(config.num_labels), head_wnids=wnids, progress=progress)


def load_hf_image_classifier(name_or_path: str | os.PathLike, *, model_id: str | None = None,
                             batch_size: int = 16, image_processor: Any = None, revision: str | None = None,
                             local_files_only: bool = False, progress: bool = False) -> FlaxModuleExpert:
    """Load a Hugging Face image classifier as a Flax expert (see module docstring for formats).

    ``name_or_path`` may be a hub name (downloads unless ``local_files_only``), a directory
    with ``config.json`` and weights, or a weights file (``.safetensors``/``.bin``/``.pth``)
    with ``config.json`` next to it.
    """
    from transformers import AutoConfig, FlaxAutoModelForImageClassification

    src = os.fspath(name_or_path)
    weights_file = None
    if os.path.isfile(src):
        weights_file, src = src, os.path.dirname(os.path.abspath(src))
    is_local = os.path.isdir(src)
    kw: dict[str, Any] = {"local_files_only": local_files_only}
    if revision is not None:
        kw["revision"] = revision

    if is_local and not os.path.isfile(os.path.join(src, "config.json")):
        raise FileNotFoundError(f"{src}: no config.json; not a Hugging Face model directory")
    if is_local and weights_file is None:
        for cand in ("flax_model.msgpack", "flax_model.msgpack.index.json", "model.safetensors",
                     "pytorch_model.bin"):
            if os.path.isfile(os.path.join(src, cand)):
                weights_file = os.path.join(src, cand)
                break
        else:
            raise FileNotFoundError(
                f"{src}: no weights (flax_model.msgpack, model.safetensors or pytorch_model.bin)"
            )

    native = weights_file is None or weights_file.endswith((".msgpack", ".msgpack.index.json")) or (
        os.path.basename(weights_file) == "model.safetensors" and _safetensors_format(weights_file) == "flax"
    )
    # _do_init=False: no random initialisation (an XLA compile of the whole init) before loading
    if native:
        try:
            model, params = FlaxAutoModelForImageClassification.from_pretrained(src, _do_init=False, **kw)
        except ValueError as e:  # hub repo with PyTorch-only weights: transformers needs an initialised model
            if "_do_init=False" not in str(e):
                raise
            model = FlaxAutoModelForImageClassification.from_pretrained(src, **kw)
            params = model.params
        _check_params(model, params, src)
    else:
        config = AutoConfig.from_pretrained(src, **kw)
        model = FlaxAutoModelForImageClassification.from_config(config, _do_init=False)
        params = load_pytorch_weights(model, weights_file)
    import jax

    params = jax.tree_util.tree_map(jax.numpy.asarray, params)

    if image_processor is None:
        image_processor = _auto_processor(src, kw)
    if model_id is None:
        model_id = os.path.basename(src.rstrip("/")) if is_local else src
    return hf_flax_expert(model, image_processor, params=params, model_id=model_id, batch_size=batch_size,
                          progress=progress)


def _auto_processor(src: str, kw: dict) -> Any:
    if os.path.isdir(src) and not os.path.isfile(os.path.join(src, "preprocessor_config.json")):
        return None
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(src, use_fast=False, **kw)
    except (OSError, ValueError):
        return None


def read_config(path: str | os.PathLike) -> dict:
    """The ``config.json`` of a local HF model directory, as a dict."""
    with open(os.path.join(os.fspath(path), "config.json"), encoding="utf-8") as f:
        return json.load(f)
