"""CLIP zero-shot classifier (Flax), used by :class:`mll_jax.reuse.Reuser` as the patch for uncovered classes.

Zero-shot logits follow CLIP: prompts ``"a photo of a {class}"`` are embedded by the text tower, images by
the vision tower, both L2-normalised, and ``logits[n, c] = exp(logit_scale) * <img_n, txt_c>``.

Usage (downloads the public Flax weights on first use; no torch needed)::

    from mll_jax.clip_patch import ClipZeroShot

    clip = ClipZeroShot.from_pretrained("openai/clip-vit-base-patch32")
    logits = clip.logits(images, ["cat", "dog", "axolotl"])   # images: uint8 (N, h, w[, 3])
    probs = clip.probs(images, ["cat", "dog", "axolotl"])

Weights are cached under ``cache_dir`` (default ``$MLL_JAX_HOME/huggingface``, ``MLL_JAX_HOME`` defaulting to
``~/.cache/mll_jax``); a local directory written by ``save_pretrained`` (model + processor) works as well.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mll_jax.utils import home

__all__ = ["ClipZeroShot", "DEFAULT_TEMPLATE", "default_cache_dir"]

DEFAULT_TEMPLATE = "a photo of a {}"


def default_cache_dir() -> str:
    return os.path.join(home(), "huggingface")


def _to_rgb(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be uint8 (N, h, w), (N, h, w, 1) or (N, h, w, 3), got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return images


def _pad_rows(a: np.ndarray, batch_size: int) -> np.ndarray:
    """Pad a batch (repeating its last row) to ``min(batch_size, next power of two)`` rows, so that jitted
    calls see at most ``log2(batch_size) + 1`` shapes."""
    n = len(a)
    target = min(batch_size, 1 << max(0, (n - 1).bit_length()))
    if target <= n:
        return a
    return np.concatenate([a, np.repeat(a[-1:], target - n, 0)])


class ClipZeroShot:
    """Flax CLIP zero-shot classifier.

    Args:
      model: a ``transformers.FlaxCLIPModel``.
      params: its parameters (default ``model.params``; needed for a model loaded with ``_do_init=False``).
      tokenizer: its tokenizer (``CLIPTokenizer`` / ``CLIPTokenizerFast``).
      image_processor: its ``CLIPImageProcessor`` (resize, centre crop, normalise; numpy only).
      template: prompt template with one ``{}`` for the class name.
      batch_size: images / prompts per jitted forward pass (the last batch is padded: one compilation).
      progress: tqdm bar over image batches.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        image_processor: Any,
        *,
        params: Any = None,
        template: str = DEFAULT_TEMPLATE,
        batch_size: int = 64,
        progress: bool = False,
    ):
        if "{}" not in template:
            raise ValueError(f"template must contain '{{}}' for the class name, got {template!r}")
        self.model = model
        self.params = model.params if params is None else params
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.template = template
        self.batch_size = int(batch_size)
        self.progress = progress
        text_cfg = model.config.text_config
        self.max_length = int(min(getattr(tokenizer, "model_max_length", 10**9) or 10**9,
                                  text_cfg.max_position_embeddings))
        self._text_cache: dict[tuple[str, ...], np.ndarray] = {}

        def image_features(params, pixel_values):
            z = model.get_image_features(pixel_values=pixel_values, params=params)
            return z / jnp.linalg.norm(z, axis=-1, keepdims=True)

        def text_features(params, input_ids, attention_mask):
            z = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask, params=params)
            return z / jnp.linalg.norm(z, axis=-1, keepdims=True)

        self._image_features = jax.jit(image_features)
        self._text_features = jax.jit(text_features)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = "openai/clip-vit-base-patch32",
        *,
        cache_dir: str | None = None,
        from_pt: bool = False,
        dtype=jnp.float32,
        local_files_only: bool = False,
        **kwargs,
    ) -> "ClipZeroShot":
        """Load a Hugging Face CLIP checkpoint (hub name or local directory) as Flax.

        ``from_pt=True`` converts PyTorch weights and needs torch installed (mll-jax itself never does);
        the OpenAI checkpoints ship Flax weights, so it is not needed for them.  ``kwargs`` go to
        :class:`ClipZeroShot` (``template``, ``batch_size``, ``progress``).
        """
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPTokenizer, FlaxCLIPModel

        if cache_dir is None and not os.path.isdir(name_or_path):
            cache_dir = default_cache_dir()
        common = dict(cache_dir=cache_dir, local_files_only=local_files_only)
        try:
            # _do_init=False: no throw-away random initialisation before the weights are read
            model, params = FlaxCLIPModel.from_pretrained(
                name_or_path, from_pt=from_pt, dtype=dtype, _do_init=False, **common
            )
        except OSError as e:
            raise OSError(
                f"could not load CLIP weights {name_or_path!r} ({e}). Give a hub name with Flax weights "
                "(e.g. openai/clip-vit-base-patch32, network needed once) or a directory written by "
                "save_pretrained."
            ) from e
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, **common)
        except Exception:  # e.g. no `tokenizers` support for this vocabulary: the slow tokenizer always works
            tokenizer = CLIPTokenizer.from_pretrained(name_or_path, **common)
        image_processor = CLIPImageProcessor.from_pretrained(name_or_path, **common)
        return cls(model, tokenizer, image_processor, params=params, **kwargs)

    # ---------------------------------------------------------------------------------------------

    @property
    def logit_scale(self) -> float:
        """``exp(logit_scale)``: the temperature multiplying cosine similarities."""
        return float(np.exp(np.asarray(self.params["logit_scale"])))

    def prompts(self, class_names: Sequence[str]) -> list[str]:
        return [self.template.format(name) for name in class_names]

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        enc = self.tokenizer(
            list(texts), padding="max_length", max_length=self.max_length, truncation=True, return_tensors="np"
        )
        return {"input_ids": np.asarray(enc["input_ids"], np.int32),
                "attention_mask": np.asarray(enc["attention_mask"], np.int32)}

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """``(T, D)`` L2-normalised text embeddings."""
        texts = list(texts)
        if not texts:
            raise ValueError("no texts to encode")
        enc = self.tokenize(texts)
        out = []
        bs = self.batch_size
        for start in range(0, len(texts), bs):
            ids = enc["input_ids"][start : start + bs]
            mask = enc["attention_mask"][start : start + bs]
            n = len(ids)
            ids, mask = _pad_rows(ids, bs), _pad_rows(mask, bs)
            out.append(np.asarray(self._text_features(self.params, ids, mask))[:n])
        return np.concatenate(out).astype(np.float32)

    def class_embeddings(self, class_names: Sequence[str]) -> np.ndarray:
        """``(C, D)`` prompt embeddings for the class names (cached per class list)."""
        key = tuple(class_names)
        if key not in self._text_cache:
            self._text_cache[key] = self.encode_text(self.prompts(key))
        return self._text_cache[key]

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 images -> ``(N, 3, S, S)`` float32 pixel values (grayscale is replicated to RGB)."""
        rgb = _to_rgb(images)
        out = self.image_processor(images=list(rgb), return_tensors="np", input_data_format="channels_last")
        return np.asarray(out["pixel_values"], np.float32)

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        """``(N, D)`` L2-normalised image embeddings, in jitted fixed-size batches."""
        from tqdm.auto import tqdm

        images = _to_rgb(images)
        n_total = len(images)
        out = []
        bs = self.batch_size
        for start in tqdm(range(0, n_total, bs), desc="CLIP", unit="batch", disable=not self.progress):
            pix = self.preprocess(images[start : start + bs])
            n = len(pix)
            pix = _pad_rows(pix, bs)
            out.append(np.asarray(self._image_features(self.params, pix))[:n])
        if not out:
            return np.zeros((0, self.model.config.projection_dim), np.float32)
        return np.concatenate(out).astype(np.float32)

    def logits(self, images: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
        """``(N, C)`` zero-shot logits ``exp(logit_scale) * cos(image, prompt)``."""
        txt = self.class_embeddings(class_names)
        img = self.encode_images(images)
        return (self.logit_scale * img @ txt.T).astype(np.float32)

    def probs(self, images: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
        """``(N, C)`` softmax over the class prompts."""
        return np.asarray(jax.nn.softmax(jnp.asarray(self.logits(images, class_names)), axis=-1))

    def predict(self, images: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
        return np.argmax(self.logits(images, class_names), axis=1)
