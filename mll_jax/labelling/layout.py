"""On-disk layout of a label store: format names, storage dtypes, file names, checksums.

The one place that defines the bytes of :class:`mll_jax.labelling.LabelStore`: the format strings written into
``meta.json`` and ``pack.json``, the storage dtypes of format 2 and their rounding bounds, the record layout of a
format-2 row (the H values, then a CRC-32 seeded with the row number), the model directory name and the atomic
file writer every store write goes through (:func:`write_file`; tests replace :data:`atomic_write_bytes` here to
inject faults into every write of the store).
"""

from __future__ import annotations

import functools
import hashlib
import re
import zlib
from pathlib import Path

import numpy as np

from mll_jax.utils import atomic_write_bytes

__all__ = ["FORMAT", "FORMAT_V1", "PACK_FORMAT", "LABEL_DTYPES", "NO_FINGERPRINT", "storage_dtype",
           "quantisation_bound", "positive_int", "safe_name", "sha256", "row_dtype", "row_crcs", "to_float32",
           "write_file", "write_model_id", "atomic_write_bytes"]

FORMAT = "mll_jax.labels/2"     # written by commit: one row file per model (see the package docstring)
PACK_FORMAT = "mll_jax.labelpack/1"  # consolidated read-optimised copy (LabelStore.pack)
FORMAT_V1 = "mll_jax.labels/1"  # orbax / tensorstore checkpoint per model: still read, written with format=1

#: fingerprint recorded for raw chunks of experts without one (and chunks written before fingerprints existed)
NO_FINGERPRINT = ""

# Storage dtypes of format 2: name -> (unit roundoff u, half the smallest subnormal spacing eta, largest finite).
# Round to nearest even: |x - q(x)| <= u * |x| + eta for every finite |x| <= largest (see quantisation_bound).
LABEL_DTYPES = {
    "float32": (0.0, 0.0, float(np.finfo(np.float32).max)),
    "float16": (2.0 ** -11, 2.0 ** -25, 65504.0),
    "bfloat16": (2.0 ** -8, 2.0 ** -134, float(np.finfo(np.float32).max)),
}


def storage_dtype(name: str) -> np.dtype:
    """The numpy dtype of storage dtype ``name`` (little-endian; bfloat16 from ``ml_dtypes``)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name).newbyteorder("<")


@functools.lru_cache(maxsize=1)
def _f16_table() -> np.ndarray:
    return np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)


def quantisation_bound(labels, dtype: str) -> np.ndarray:
    """Elementwise bound on ``|read(x) - x|`` for labels committed with storage ``dtype`` (0 for float32).

    Float16 and bfloat16 round to nearest even with unit roundoff ``u`` (2^-11, 2^-8): the error of a normal
    number is at most ``u * |x|``; below the normal range at most half the subnormal spacing ``eta``
    (2^-25, 2^-134).  So ``|q(x) - x| <= u * |x| + eta``.  On softmax probabilities over heads (CHCO's P) a
    logit error of at most ``d`` changes every probability by a factor in ``[exp(-2d), exp(2d)]``.
    """
    if dtype not in LABEL_DTYPES:
        raise ValueError(f"unknown label dtype {dtype!r}; one of {sorted(LABEL_DTYPES)}")
    u, eta, _ = LABEL_DTYPES[dtype]
    return u * np.abs(np.asarray(labels, dtype=np.float64)) + eta


def positive_int(v, what: str) -> int:
    """``v`` as an int, or ``ValueError`` naming ``what`` unless it is a positive int (bools refused)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{what} must be a positive int, got {v!r}")
    return int(v)


def safe_name(model_id: str) -> str:
    """The directory name of a model: its id sanitised and cut to 60 characters, plus a hash of the id."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)[:60].strip("._") or "model"
    return f"{base}-{hashlib.sha1(model_id.encode('utf-8')).hexdigest()[:10]}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def row_dtype(meta: dict) -> np.dtype:
    """Format 2 record: the row (float32, or float16 / bfloat16 as uint16 bits) then a uint32 CRC-32."""
    h, name = int(meta["num_heads"]), meta["dtype"]
    bits = "<f4" if name == "float32" else "<u2"
    return np.dtype([("v", bits, (h,)), ("crc", "<u4")])


def row_crcs(buf: bytes, rec: np.dtype, rows) -> list[int]:
    """The format-2 row checksums: CRC-32 of each record's value bytes in ``buf`` (consecutive records of dtype
    ``rec``), seeded with its row number ``rows[k]`` so that a row moved elsewhere fails its check.  The one rule
    for the writer (:meth:`LabelStore.commit`) and the reader."""
    mv, size, vbytes = memoryview(buf), rec.itemsize, rec.fields["v"][0].itemsize
    return [zlib.crc32(mv[k * size:k * size + vbytes], r & 0xFFFFFFFF) for k, r in enumerate(rows)]


def to_float32(v: np.ndarray, name: str) -> np.ndarray:
    """Stored values (float32, or the uint16 bits of float16 / bfloat16) as float32, exactly."""
    if name == "bfloat16":
        return v.view(storage_dtype("bfloat16")).astype(np.float32)
    if name == "float16":  # a 65536-entry table: 2x faster than numpy's float16 -> float32 cast here
        return _f16_table()[v]
    return np.asarray(v, dtype=np.float32)


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (every file the label store writes goes through here)."""
    atomic_write_bytes(path, data)


def write_model_id(model_dir: Path, model_id: str) -> None:
    """``<model dir>/model_id.txt``: names the model even when its meta.json is damaged (written once)."""
    f = model_dir / "model_id.txt"
    if not f.is_file():
        write_file(f, model_id.encode("utf-8"))
