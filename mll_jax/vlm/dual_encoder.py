"""Small CLIP-like dual encoders stored in a model hub: what the library needs to load and use one.

A dual encoder (:class:`DualEncoderVLM`, a :class:`mll_jax.vlm.models.VLM`) pairs

* an image tower: a :class:`mll_jax.models.gray_hf.GrayHFClassifier` whose ``num_labels`` outputs are the
  ``dim``-d embedding, stored in the hub as kind ``flax_module`` (loaded with ``hub.load``);
* a text tower: frozen MiniLM sentence embeddings (:class:`TextFeatures`, one per process) followed by a learned
  linear projection ``384 -> dim`` (``text_proj.npy`` next to the tower's variables);
* a learned temperature ``logit_scale``.

The hub entry's ``vlm`` field records the :class:`DualEncoderSpec` (what it was trained on), the logit scale and
the projection file; :func:`load_dual_encoder` rebuilds the VLM from it.  Training lives in the lab
(``mll_lab.train_vlms``); nothing here trains.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from mll_jax.images import as_image_batch
from mll_jax.models.gray_hf import ARCHS
from mll_jax.text import TextEncoder
from mll_jax.utils import array_hash, texts_hash

__all__ = ["NUM_LABELS", "MAX_LOG_SCALE", "DualEncoderSpec", "TextFeatures", "DualEncoderVLM", "l2_normalize",
           "spec_from_json", "load_dual_encoder"]

#: Number of Fashion-MNIST labels (``DualEncoderSpec.classes`` are labels 0..9).
NUM_LABELS = 10
#: Largest log temperature (the logit scale is clipped to [1, 100]).
MAX_LOG_SCALE = math.log(100.0)


@dataclass(frozen=True)
class DualEncoderSpec:
    """What one dual encoder is: tower architecture, the Fashion-MNIST labels it is trained on, its budget."""

    model_id: str
    arch: str  # "resnet" | "vit"
    classes: tuple[int, ...]  # Fashion-MNIST labels it is trained on
    per_class: int = 200
    steps: int = 150
    width: int = 8
    dim: int = 32
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"{self.model_id}: arch must be 'resnet' or 'vit', got {self.arch!r}")
        if len(set(self.classes)) < 2 or any(not 0 <= c < NUM_LABELS for c in self.classes):
            raise ValueError(f"{self.model_id}: needs >= 2 distinct Fashion-MNIST labels, got {self.classes}")

    def to_json(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d


def spec_from_json(d: dict) -> DualEncoderSpec:
    """The :class:`DualEncoderSpec` of a hub entry's ``vlm["spec"]`` (JSON lists back to tuples)."""
    return DualEncoderSpec(**{**d, "classes": tuple(d["classes"])})


def l2_normalize(x):
    """Rows of ``x`` scaled to unit L2 norm (JAX; zero rows stay zero)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class TextFeatures:
    """Frozen MiniLM sentence embeddings with an in-memory cache, shared by all offline dual encoders."""

    def __init__(self, encoder=None):
        if encoder is None:
            encoder = TextEncoder.load()
        self.encoder = encoder
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            for t, e in zip(todo, self.encoder.encode(todo)):
                self._cache[t] = e
        return np.stack([self._cache[t] for t in texts]).astype(np.float32)


@dataclass
class DualEncoderVLM:
    """A trained dual encoder as a :class:`mll_jax.vlm.models.VLM`."""

    model_id: str
    image_expert: object  # FlaxModuleExpert: uint8 images -> (N, dim) unnormalised embeddings
    text_proj: np.ndarray  # (384, dim)
    scale: float
    text_features: TextFeatures
    spec: DualEncoderSpec
    _fingerprint: str = ""

    @property
    def fingerprint(self) -> str:
        if not self._fingerprint:
            self._fingerprint = texts_hash([json.dumps(self.spec.to_json(), sort_keys=True), array_hash(self.text_proj),
                                            repr(self.scale)], length=20)
        return self._fingerprint

    @property
    def logit_scale(self) -> float:
        return float(self.scale)

    def prompt(self, class_name: str) -> str:
        return class_name

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        z = np.asarray(self.image_expert.logits(as_image_batch(images)), np.float32)
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        z = self.text_features(list(texts)) @ self.text_proj
        return (z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def load_dual_encoder(hub, model_id: str, text_features: TextFeatures) -> DualEncoderVLM:
    """The dual encoder ``model_id`` of ``hub`` (a :class:`mll_jax.hub.ModelHub` whose entry has a ``vlm`` field)."""
    e = hub.entry(model_id)
    v = e.get("vlm")
    if not v:
        raise KeyError(f"hub model {model_id!r} is not a dual-encoder VLM (no 'vlm' entry)")
    w = np.load(hub.model_dir(model_id, v["text_proj"]))
    return DualEncoderVLM(model_id, hub.load(model_id), w, float(v["logit_scale"]), text_features,
                          spec_from_json(v["spec"]))
