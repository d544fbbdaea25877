"""The VLM protocol and its implementation for Hugging Face ``FlaxCLIPModel`` checkpoints.

A VLM (vision-language model) here is anything with

* ``model_id`` -- its name in the hub / label store;
* ``fingerprint`` -- a content id (weights + preprocessing); labels computed under another fingerprint are stale;
* ``logit_scale`` -- the temperature multiplying cosine similarities (CLIP: ``exp(logit_scale)``, 100 for the
  OpenAI checkpoints);
* ``encode_images(images) -> (N, D)`` and ``encode_text(texts) -> (T, D)`` float32 L2-normalised embeddings
  (``images`` follow :func:`mll_jax.images.as_image_batch`);
* ``prompt(class_name) -> str`` -- the text a class name is turned into for zero-shot classification.

:func:`zero_shot_logits` turns these into ``logit_scale * cos(image, text)``.  :class:`ClipVLM` wraps
:class:`mll_jax.clip_patch.ClipZeroShot` (any HF CLIP checkpoint by hub name or local directory; PyTorch-only
checkpoints are converted by transformers with ``from_pt=True``, which needs torch at conversion time only --
save the result with ``save_pretrained`` once and load the directory afterwards).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from mll_jax.images import as_image_batch
from mll_jax.clip_patch import ClipZeroShot
from mll_jax.utils import file_hash, texts_hash

__all__ = ["VLM", "ClipVLM", "zero_shot_logits", "node_text", "check_vlm", "clip_hub_manifest", "imagenet_accuracy"]


@runtime_checkable
class VLM(Protocol):
    model_id: str

    @property
    def fingerprint(self) -> str: ...

    @property
    def logit_scale(self) -> float: ...

    def encode_images(self, images: np.ndarray) -> np.ndarray: ...

    def encode_text(self, texts: Sequence[str]) -> np.ndarray: ...

    def prompt(self, class_name: str) -> str: ...


def check_vlm(vlm) -> None:
    """Raise ``TypeError`` naming what is missing when ``vlm`` does not implement :class:`VLM`."""
    missing = [a for a in ("model_id", "fingerprint", "logit_scale", "encode_images", "encode_text", "prompt")
               if not hasattr(vlm, a)]
    if missing:
        raise TypeError(f"{type(vlm).__name__} is not a VLM: missing {', '.join(missing)}")


def node_text(name: str, definition: str) -> str:
    """The text a VLM reads for an SDAG node: ``"<name>: <definition>"`` (the synset's name and definition)."""
    return f"{name}: {definition}" if definition else name


def zero_shot_logits(vlm: VLM, images: np.ndarray, texts: Sequence[str] | None = None, *,
                     text_emb: np.ndarray | None = None) -> np.ndarray:
    """``(N, T)`` logits ``vlm.logit_scale * cos(image, text)`` (give ``texts`` or precomputed ``text_emb``)."""
    if text_emb is None:
        if texts is None or not len(texts):
            raise ValueError("zero_shot_logits needs texts or text_emb")
        text_emb = vlm.encode_text(list(texts))
    img = vlm.encode_images(as_image_batch(images))
    return (float(vlm.logit_scale) * img @ np.asarray(text_emb, np.float32).T).astype(np.float32)


class ClipVLM:
    """A Hugging Face Flax CLIP checkpoint as a :class:`VLM` (wraps :class:`mll_jax.clip_patch.ClipZeroShot`).

    ``prompt`` uses the CLIP template (default ``"a photo of a {}"``); node texts are read without template.
    """

    def __init__(self, clip, model_id: str, fingerprint: str):
        self.clip = clip
        self.model_id = str(model_id)
        self._fingerprint = fingerprint

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, model_id: str | None = None, **kwargs) -> "ClipVLM":
        """Load any HF CLIP checkpoint (hub name or directory); ``kwargs`` go to ``ClipZeroShot.from_pretrained``
        (``from_pt``, ``cache_dir``, ``local_files_only``, ``template``, ``batch_size``, ``progress``)."""
        clip = ClipZeroShot.from_pretrained(name_or_path, **kwargs)
        p = Path(name_or_path)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in (".msgpack", ".safetensors",
                                                                                   ".json", ".txt", ".bin"))
            fp = file_hash(files, length=20)
        else:
            fp = texts_hash([str(name_or_path), str(kwargs.get("from_pt", False))], length=20)
        fp = texts_hash([fp, clip.template, "clip"], length=20)
        return cls(clip, model_id or os.path.basename(str(name_or_path).rstrip("/")), fp)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def logit_scale(self) -> float:
        return self.clip.logit_scale

    def prompt(self, class_name: str) -> str:
        return self.clip.template.format(class_name)

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        return self.clip.encode_images(as_image_batch(images))

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        return self.clip.encode_text(list(texts))

    def __repr__(self) -> str:
        return f"ClipVLM({self.model_id!r})"


def clip_hub_manifest() -> dict:
    """The shipped manifest of public HF CLIP checkpoints (``mll_jax/vlm/clip_hub.json``): name, pretraining
    data, open_clip row and ImageNet zero-shot top-1 (``None`` where unknown)."""
    import json

    return json.loads((Path(__file__).with_name("clip_hub.json")).read_text(encoding="utf-8"))


def imagenet_accuracy(name: str) -> float | None:
    """ImageNet zero-shot top-1 of a checkpoint from :func:`clip_hub_manifest` (``None`` if unknown / absent)."""
    for m in clip_hub_manifest()["models"]:
        if m["name"] == name:
            return m["imagenet_zero_shot_top1"]
    return None
