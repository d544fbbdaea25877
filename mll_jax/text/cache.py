"""Node-embedding cache: :func:`encode_cached` memoises ``encoder.encode(texts)`` on disk.

File ``<cache_dir>/text_emb_<encoder_id>_<sha256(texts)>.npz`` keyed by the encoder's content fingerprint
(:attr:`TextEncoder.encoder_id`) and a SHA-256 of the texts; written to a temporary file and renamed, so a crash
never leaves a torn cache.  Long lists are encoded in chunks saved as they finish, so an interrupted run resumes.

Each file also holds a digest per text (``text_digests``).  A list that is not cached takes the rows of the texts
it shares with the most recent cache files of the same encoder (:data:`REUSE_FILES` of them) and encodes only the
others: a node added to an SDAG of 11,000 nodes encodes one text, not 11,000.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from mll_jax.text.encoder import TextEncoder
from mll_jax.utils import atomic_write, texts_hash

__all__ = ["encode_cached", "text_digests", "REUSE_FILES"]

#: how many of the most recent cache files of the same encoder a cache miss takes shared rows from
REUSE_FILES = 4


def text_digests(texts: Sequence[str]) -> np.ndarray:
    """A 16-byte SHA-256 prefix per text (``S16`` array): the key rows are reused by."""
    return np.array([hashlib.sha256(t.encode("utf-8")).digest()[:16] for t in texts], dtype="S16")


def _shared_rows(cache_dir: Path, encoder: TextEncoder, digests: np.ndarray, exclude: Path
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(found, rows)``: which texts have a row in one of the :data:`REUSE_FILES` most recent cache files of this
    encoder, and those rows (zeros elsewhere)."""
    found = np.zeros(len(digests), bool)
    rows = np.zeros((len(digests), encoder.dim), np.float32)
    files = [p for p in cache_dir.glob(f"text_emb_{encoder.encoder_id}_*.npz") if p != exclude]
    files.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    want = {d: i for i, d in enumerate(digests.tolist())}
    for f in files[:REUSE_FILES]:
        try:
            with np.load(f, allow_pickle=False) as z:
                if "text_digests" not in z.files:
                    continue
                have = z["text_digests"]
                emb = z["embeddings"]
        except (OSError, ValueError, KeyError, EOFError):
            continue
        if emb.shape != (have.shape[0], encoder.dim):
            continue
        for j, d in enumerate(have.tolist()):
            i = want.get(d)
            if i is not None and not found[i]:
                rows[i] = emb[j]
                found[i] = True
        if found.all():
            break
    return found, rows


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
    file that is unreadable or has the wrong shape is ignored and rewritten.  A list that is not
    cached reuses the rows of texts held by the :data:`REUSE_FILES` most recent cache files of
    the encoder and encodes only the others (the file also stores ``text_digests``).
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
    digests = text_digests(texts)
    found, shared = _shared_rows(cache_dir, encoder, digests, path)
    if found.any():  # encode only the texts no recent cache file holds
        missing = np.flatnonzero(~found)
        if missing.size:
            shared[missing] = encoder.encode([texts[i] for i in missing], progress=progress)
        _save(path, shared, encoder, digests)
        return shared
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
    _save(path, emb, encoder, digests)
    for part in cache_dir.glob(f"{path.name}.part*.npy"):
        part.unlink(missing_ok=True)
    return emb


def _save(path: Path, emb: np.ndarray, encoder: TextEncoder, digests: np.ndarray) -> None:
    atomic_write(path, lambda fh: np.savez(fh, embeddings=emb, encoder=np.asarray(encoder.name),
                                           encoder_id=np.asarray(encoder.encoder_id), text_digests=digests))
