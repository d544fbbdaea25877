"""Model labels (paper Eq. 1-2) and their orbax-backed store.

Eq. 1 (raw label).  For expert m with H_m heads and an SDAG node c with representative images D_c::

    r_c^m = 1/|D_c| * sum_{x in D_c} f_m(x)          in R^{H_m}   (mean logit vector)

computed with the expert's own batched, jitted forward (``expert.logits(images)``).

Eq. 2 (smoothing over the hierarchy), in REVERSE topological order (hyponyms first), with discount delta::

    s_c = delta * r_c + (1 - delta) * mean_{k in ch(c), k labelled} s_k

where ch(c) are the first-order hyponyms of c in the SDAG and the s_k are already smoothed.  Rules for the
cases the formula does not cover:

* node with own data and no labelled child (e.g. a leaf): ``s_c = r_c`` (own data only);
* node WITHOUT own data but with labelled children: ``s_c = mean_k s_k`` (children only);
* node with neither own data nor a labelled descendant: no label; it is not stored, and
  :meth:`LabelStore.read` raises ``KeyError`` for it (:meth:`LabelStore.nodes` lists the labelled ones).

Default ``delta = 0.5``: a node's own images and its sub-hierarchy weigh equally, so a parent label stays close to
what the expert says on its own images while still summarising the hyponyms (the paper uses a discount in (0, 1);
0.5 is the neutral choice; pass another ``delta`` to :func:`label_models`).

:func:`smooth_labels` is the pure, jit-able implementation: given the raw labels of all nodes, an own-data mask and
the edge list (parent index, child index), it applies the synchronous update ``s <- F(s)`` ``num_iters`` times, where
``F`` evaluates the rules above for every node at once from the current child values (two ``segment_sum``).  A node of
height h (longest path down to a leaf) is exact after h updates, so ``num_iters = max height`` (from
:func:`dag_index`) gives exactly the sequential reverse-topological result, at O((N + E) H) per update.

Storage (:class:`LabelStore`): ``<path>/models/<model-dir>/`` per model (``<model-dir>`` = sanitised model id + a
hash of it) holds a small ``meta.json`` (format, model id, heads, delta, storage dtype, names and checksums of the
current files), ``labels-<id>.rows`` and ``labels-<id>.index.json`` (labelled node ids in row order, head names,
images per node).  Format 2 (``mll_jax.labels/2``, written by default): the rows file holds one fixed-size record
per labelled node: the H label values in the store's ``dtype`` (``LabelStore(path, dtype="float32" | "float16" |
"bfloat16")``, little-endian) followed by a CRC-32 of those bytes seeded with the row number; :meth:`LabelStore.read`
reads only the requested records (one ``pread`` per run of consecutive rows), checks each CRC and returns float32.
Reduced precision rounds to nearest: ``|read - committed| <= u |x| + eta`` (:func:`quantisation_bound`; float16
u = 2^-11, bfloat16 u = 2^-8).  Models labelled on the same SDAG share their node list, which is parsed once per
process (``nodes_sha256`` in meta.json).  Format 1 (``mll_jax.labels/1``: an orbax checkpoint ``labels-<id>/`` of
the float32 matrix, one row per tensorstore chunk) is still read, and written with ``format=1``.
:meth:`LabelStore.pack` builds read-optimised copies: per family (same node list, head count and dtype) one
node-major array in ``<path>/packs/`` whose node blocks hold that node's rows of every model, each block with a
CRC-32; :meth:`LabelStore.read_many` (what selection uses) then reads a query's C nodes as C block reads per family
instead of opening every model's file; models committed after the pack are read from their own files.  A commit
writes the new rows (or checkpoint) and index first, then atomically replaces ``meta.json``, then removes the old
ones: readers always see a complete label set.  ``raw/`` holds the Eq. 1 raw means, appended in small
atomically written ``.npz`` chunks while labelling runs, keyed by node id and the node's image content hash: a
killed run restarts where it stopped, and after nodes are added to (or re-imaged in) the SDAG only those nodes are
run through the expert again.

Model fingerprints (stale labels): an expert may carry ``expert.fingerprint`` (a string; experts loaded from
:class:`mll_jax.hub.ModelHub` do: a hash of weights, preprocessing and options).  Raw chunks and committed labels
record it; :func:`label_models` ignores raw means made under another fingerprint (the model was updated under the
same id) and recomputes every node, saying so (a warning and ``"fingerprint_changed": True`` in its summary).
:meth:`LabelStore.fingerprint` tells which model version the committed labels come from.

Integrity: ``meta.json`` records SHA-256 checksums of the row index and of the label matrix (format 2: of the
rows file, plus the node-list hash; every record carries its own CRC-32); they are verified when read (format 1:
the index on every read; format 2: the node list when first parsed, each row read by :meth:`LabelStore.read`; the
matrix by :meth:`LabelStore.read_all`; everything by :meth:`LabelStore.check`).  A
damaged or edited file raises :class:`LabelStoreCorruptError` naming the file and the model, with the recovery
(relabel that model: ``store.delete(model_id)`` then :func:`label_models`).  A damaged model is isolated:
:meth:`LabelStore.model_ids` lists the models whose labels can be opened and :meth:`LabelStore.damaged_models`
the others, so listing and selection over the intact models keep working.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import threading
import uuid
import warnings
import zlib
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .images import as_image_batch
from .utils import array_hash, atomic_write_bytes, orbax_checkpointer, texts_hash

__all__ = [
    "DEFAULT_DELTA",
    "DagIndex",
    "dag_index",
    "smooth_labels",
    "node_mean_logits",
    "LabelStore",
    "LabellingError",
    "LabelStoreCorruptError",
    "LabelPrecisionError",
    "LABEL_DTYPES",
    "quantisation_bound",
    "NonFiniteLogitsError",
    "label_models",
]

from mll_jax.config import DEFAULT_DELTA  # noqa: E402  (the one default, kept importable here)
from mll_jax.errors import LabelPrecisionError, LabelStoreCorruptError, LabellingError, NonFiniteLogitsError  # noqa: F401  (re-exported)
_FORMAT = "mll_jax.labels/2"     # written by commit: one row file per model (see the module docstring)
_PACK_FORMAT = "mll_jax.labelpack/1"  # consolidated read-optimised copy (LabelStore.pack)
_FORMAT_V1 = "mll_jax.labels/1"  # orbax / tensorstore checkpoint per model: still read, written with format=1

# Storage dtypes of format 2: name -> (unit roundoff u, half the smallest subnormal spacing eta, largest finite).
# Round to nearest even: |x - q(x)| <= u * |x| + eta for every finite |x| <= largest (see quantisation_bound).
LABEL_DTYPES = {
    "float32": (0.0, 0.0, float(np.finfo(np.float32).max)),
    "float16": (2.0 ** -11, 2.0 ** -25, 65504.0),
    "bfloat16": (2.0 ** -8, 2.0 ** -134, float(np.finfo(np.float32).max)),
}


def _storage_dtype(name: str) -> np.dtype:
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


def _positive_int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{what} must be a positive int, got {v!r}")
    return int(v)


# ---------------------------------------------------------------------------------------------------
# Eq. 2: pure smoothing
# ---------------------------------------------------------------------------------------------------

class DagIndex(NamedTuple):
    """Children index of a DAG whose nodes are numbered in topological order.

    edge_parent, edge_child: int32 (E,) node indices of every hypernym -> hyponym edge.
    height: longest path from any node down to a leaf (= number of smoothing updates needed).
    """

    edge_parent: np.ndarray
    edge_child: np.ndarray
    height: int


def dag_index(sdag) -> DagIndex:
    """:class:`DagIndex` of an :class:`mll_jax.sdag.SDAG` (node i = ``sdag.nodes[i]``)."""
    nodes = sdag.nodes
    pos = {w: i for i, w in enumerate(nodes)}
    ep, ec = [], []
    for p, c in sdag.edges():
        ep.append(pos[p])
        ec.append(pos[c])
    ep = np.asarray(ep, dtype=np.int32)
    ec = np.asarray(ec, dtype=np.int32)
    height = np.zeros(len(nodes), dtype=np.int64)
    children = [[] for _ in nodes]
    for p, c in zip(ep, ec):
        children[p].append(c)
    for i in range(len(nodes) - 1, -1, -1):  # reverse topological order
        if children[i]:
            height[i] = 1 + max(height[c] for c in children[i])
    return DagIndex(ep, ec, int(height.max()) if len(nodes) else 0)


@jax.jit
def smooth_labels(own, has_own, edge_parent, edge_child, delta, num_iters):
    """Eq. 2 on arrays: returns (labels (N, H), has_label (N,) bool).

    Args:
      own: (N, H) raw labels r_c (rows of nodes without own data are ignored).
      has_own: (N,) bool, node has own images.
      edge_parent, edge_child: (E,) int edge list, parent -> first-order child.
      delta: scalar discount in [0, 1].
      num_iters: number of synchronous updates; ``DagIndex.height`` makes the result exact.
    Rows of unlabelled nodes are 0.  Pure and jitted; vmap over models of equal H works.
    """
    own = jnp.asarray(own)
    n = own.shape[0]
    has_own = jnp.asarray(has_own, dtype=bool)
    delta = jnp.asarray(delta, dtype=own.dtype)
    own = jnp.where(has_own[:, None], own, 0)

    def update(_, carry):
        s, has = carry
        w = has[edge_child].astype(own.dtype)
        cnt = jax.ops.segment_sum(w, edge_parent, num_segments=n)
        tot = jax.ops.segment_sum(s[edge_child] * w[:, None], edge_parent, num_segments=n)
        has_child = cnt > 0
        cmean = tot / jnp.maximum(cnt, 1)[:, None]
        both = delta * own + (1 - delta) * cmean
        s_new = jnp.where((has_own & has_child)[:, None], both,
                          jnp.where(has_own[:, None], own, jnp.where(has_child[:, None], cmean, 0)))
        return s_new, has_own | has_child

    return jax.lax.fori_loop(0, num_iters, update, (own, has_own))


# ---------------------------------------------------------------------------------------------------
# Eq. 1
# ---------------------------------------------------------------------------------------------------

def node_mean_logits(expert, images: np.ndarray, *, batch_size: int = 64, node: str = "?") -> np.ndarray:
    """Eq. 1: mean logit vector (float32, (H,)) of ``expert`` over ``images``, in batches of ``batch_size``.

    Raises :class:`NonFiniteLogitsError` / :class:`LabellingError` naming the model and node on NaN/inf logits
    or a wrong output shape.
    """
    mid = getattr(expert, "model_id", "?")
    batch_size = _positive_int(batch_size, "batch_size")
    images = as_image_batch(images, f"images of node {node!r}")
    h = int(expert.num_heads)
    n = int(images.shape[0])
    if n == 0:
        raise LabellingError(f"node {node!r} has no images to label model {mid!r} with")
    total = np.zeros(h, dtype=np.float64)
    for i in range(0, n, batch_size):
        batch = images[i:i + batch_size]
        out = np.asarray(expert.logits(batch))
        if out.shape != (batch.shape[0], h):
            raise LabellingError(f"model {mid!r} returned logits of shape {out.shape} on node {node!r}; "
                                 f"expected ({batch.shape[0]}, {h}) (num_heads={h})")
        if not np.all(np.isfinite(out)):
            bad = int(np.sum(~np.isfinite(out).all(axis=1)))
            raise NonFiniteLogitsError(f"model {mid!r} produced non-finite logits (NaN/inf) on node {node!r} "
                                       f"({bad} of {batch.shape[0]} images in a batch); nothing was committed "
                                       "for this model")
        total += out.sum(axis=0, dtype=np.float64)
    return (total / n).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# store
# ---------------------------------------------------------------------------------------------------

def _safe_name(model_id: str) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)[:60].strip("._") or "model"
    return f"{base}-{hashlib.sha1(model_id.encode('utf-8')).hexdigest()[:10]}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_NO_FP = ""  # raw chunks of experts without a fingerprint (and chunks written before fingerprints existed)
_ANY = object()


def _row_crcs(buf: bytes, rec: np.dtype, rows) -> list[int]:
    """The format-2 row checksums: CRC-32 of each record's value bytes in ``buf`` (consecutive records of dtype
    ``rec``), seeded with its row number ``rows[k]`` so that a row moved elsewhere fails its check.  The one rule
    for the writer (:meth:`LabelStore.commit`) and the reader."""
    mv, size, vbytes = memoryview(buf), rec.itemsize, rec.fields["v"][0].itemsize
    return [zlib.crc32(mv[k * size:k * size + vbytes], r & 0xFFFFFFFF) for k, r in enumerate(rows)]


class LabelStore:
    """Per-model label matrices on disk (orbax checkpoints), readable row by row.

    ``path`` is created if needed.  Methods raise ``KeyError`` for unknown models or unlabelled nodes.
    """

    def __init__(self, path: str | os.PathLike, *, dtype: str = "float32", format: int = 2):
        if format not in (1, 2):
            raise ValueError(f"label store format must be 1 (orbax checkpoints) or 2 (row files), got {format!r}")
        dtype = str(np.dtype(dtype)) if not (isinstance(dtype, str) and dtype == "bfloat16") else dtype
        if dtype not in LABEL_DTYPES:
            raise ValueError(f"label dtype must be one of {sorted(LABEL_DTYPES)}, got {dtype!r}")
        if format == 1 and dtype != "float32":
            raise ValueError(f"format 1 (orbax) stores float32 only; {dtype} needs format=2")
        self.root = Path(path)
        (self.root / "models").mkdir(parents=True, exist_ok=True)
        self.dtype = dtype    # storage dtype of new commits (reads always return float32)
        self.format = format  # format of new commits (both formats are read)
        self._lock = threading.Lock()
        self._meta_cache: dict[str, tuple] = {}  # model -> (mtime_ns, meta, index doc, row index)
        self._ts_cache: dict[tuple[str, str], object] = {}
        self._nodesets: dict[str, tuple[list, dict]] = {}  # format 2: node-list hash -> (nodes, {node: row})
        self._bad_meta: dict[str, tuple] = {}  # model -> (meta.json identity, error) of labels found damaged
        self._pack_cache: dict[tuple, dict] = {}  # (pack directory, pack.json mtime) -> pack document

    def __repr__(self) -> str:
        return f"LabelStore({str(self.root)!r}, {len(self.model_ids())} models)"

    # ------------------------------------------------------------------ reading
    def _model_dir(self, model_id: str) -> Path:
        return self.root / "models" / _safe_name(model_id)

    def _corrupt(self, model_id: str | None, path: Path, problem: str) -> LabelStoreCorruptError:
        who = f"model {model_id!r}" if model_id is not None else f"the model in {path.parent}"
        how = (f"store.delete({model_id!r}) then label_models(...) again" if model_id is not None
               else f"remove {path.parent} and label that model again")
        return LabelStoreCorruptError(f"label store {self.root}: {path} of {who} is damaged ({problem}); "
                                      f"recover by relabelling that model: {how}")

    def _read_meta_file(self, f: Path, model_id: str | None) -> dict:
        try:
            meta = json.loads(f.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self._corrupt(model_id, f, f"unreadable JSON: {e}") from None
        if not isinstance(meta, dict) or not all(k in meta for k in ("model_id", "num_heads", "checkpoint", "index")):
            raise self._corrupt(model_id, f, "missing fields")
        if model_id is not None and meta["model_id"] != model_id:
            raise self._corrupt(model_id, f, f"it names model {meta['model_id']!r}")
        ck, ix = meta["checkpoint"], meta["index"]
        if not (isinstance(ck, str) and re.fullmatch(r"labels-[0-9a-f]{12}", ck) and ix == f"{ck}.index.json"):
            raise self._corrupt(model_id, f, "invalid checkpoint / index names")
        return meta

    def _scan(self) -> tuple[list[str], dict[str, str]]:
        ok, bad = [], {}
        for d in sorted((self.root / "models").iterdir()):
            f = d / "meta.json"
            if not f.is_file():
                continue
            idf = d / "model_id.txt"
            known = idf.read_text(encoding="utf-8") if idf.is_file() else None
            try:
                mid = known if known is not None else self._read_meta_file(f, None)["model_id"]
                if d.name != _safe_name(mid):
                    raise self._corrupt(mid, f, f"it lies in {d.name}, not in {_safe_name(mid)}")
                self._meta(mid)  # reads and verifies meta + index once; cached while meta.json is unchanged
                ok.append(mid)
            except LabelStoreCorruptError as e:
                bad[known if known is not None else d.name] = str(e)
        return sorted(ok), bad

    def model_ids(self) -> list[str]:
        """Ids of the models with committed, readable labels, sorted (damaged ones: :meth:`damaged_models`)."""
        return self._scan()[0]

    def damaged_models(self) -> dict[str, str]:
        """{model id (or its directory name if unknown): error} for models whose label files are damaged."""
        return self._scan()[1]

    def check(self, model_id: str) -> None:
        """Verify every file of ``model_id`` (meta, index and label checksums, raw chunks); raises
        :class:`LabelStoreCorruptError` naming the damaged file, ``KeyError`` for an unknown model."""
        meta, _, _ = self._meta(model_id)
        if meta.get("format") == _FORMAT:  # reads may have used a cached node list: verify this model's own
            self._nodeset(model_id, meta, cached=False)
        self.read_all(model_id)
        self.load_raw(model_id)

    def __contains__(self, model_id) -> bool:
        return (self._model_dir(model_id) / "meta.json").is_file()

    def _small_meta(self, model_id: str) -> tuple[int, dict]:
        f = self._model_dir(model_id) / "meta.json"
        try:
            mtime = f.stat().st_mtime_ns
        except FileNotFoundError:
            known = self.model_ids()
            raise KeyError(f"unknown model {model_id!r}: no labels in {self.root} (labelled models: "
                           f"{known[:10]}{' ...' if len(known) > 10 else ''})") from None
        return mtime, self._read_meta_file(f, model_id)

    def _read_index(self, model_id: str, meta: dict, parse: bool = True) -> dict | None:
        """The row index document, verified against ``index_sha256`` (``parse=False``: verify only)."""
        f = self._model_dir(model_id) / str(meta["index"])
        try:
            data = f.read_bytes()
        except FileNotFoundError:
            raise self._corrupt(model_id, f, "missing") from None
        want = meta.get("index_sha256")
        if want is not None and _sha256(data) != want:
            raise self._corrupt(model_id, f, "checksum mismatch: edited or damaged")
        if not parse:
            return None
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self._corrupt(model_id, f, f"unreadable JSON: {e}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list) \
                or len(doc["nodes"]) != meta.get("num_nodes", len(doc["nodes"])):
            raise self._corrupt(model_id, f, "malformed node list")
        return doc

    def _meta(self, model_id: str) -> tuple[dict, dict, dict]:
        """(meta, index document, {node: row}) of the committed labels, cached while meta.json is unchanged.

        Format 2: the document holds only ``nodes`` (head names and ``extra`` are read by :meth:`info`); the node
        list is parsed once per distinct list (``nodes_sha256`` in meta.json) and shared by every model labelled
        on the same SDAG, so opening M models costs M small meta.json reads, not M index reads and parses.
        """
        f = self._model_dir(model_id) / "meta.json"
        try:
            st = f.stat()
            mtime = (st.st_ino, st.st_mtime_ns)  # meta.json is replaced (new inode) on every commit
        except FileNotFoundError:
            mtime = None
        cached = self._meta_cache.get(model_id)
        if cached is not None and mtime is not None and cached[0] == mtime:
            return cached[1], cached[2], cached[3]
        bad = self._bad_meta.get(model_id)
        if bad is not None and mtime is not None and bad[0] == mtime:
            raise bad[1]  # found damaged before (the node list may since be cached from another model's index)
        try:
            meta, doc, rows = self._load_meta(model_id, f)
        except LabelStoreCorruptError as e:
            if mtime is not None:
                self._bad_meta[model_id] = (mtime, e)
            raise
        self._meta_cache[model_id] = (mtime, meta, doc, rows)
        return meta, doc, rows

    def _load_meta(self, model_id: str, f: Path) -> tuple[dict, dict, dict]:
        _, meta = self._small_meta(model_id)
        fmt = meta.get("format", _FORMAT_V1)
        if fmt == _FORMAT:
            self._check_meta_v2(model_id, meta)
            nodes, rows = self._nodeset(model_id, meta)
            doc = {"nodes": nodes}
        elif fmt == _FORMAT_V1:
            doc = self._read_index(model_id, meta)
            rows = {w: i for i, w in enumerate(doc["nodes"])}
        else:
            raise self._corrupt(model_id, f, f"unknown label format {fmt!r} (this mll_jax reads {_FORMAT_V1!r} "
                                             f"and {_FORMAT!r}; a newer version wrote it?)")
        return meta, doc, rows

    def _check_meta_v2(self, model_id: str, meta: dict) -> None:
        f = self._model_dir(model_id) / "meta.json"
        ok = (meta.get("dtype") in LABEL_DTYPES
              and isinstance(meta.get("nodes_sha256"), str) and isinstance(meta.get("rows_sha256"), str)
              and isinstance(meta.get("num_nodes"), int) and meta["num_nodes"] > 0
              and isinstance(meta.get("num_heads"), int) and meta["num_heads"] > 0)
        if not ok:
            raise self._corrupt(model_id, f, "missing or invalid format-2 fields (dtype, rows, checksums, shape)")

    def _nodeset(self, model_id: str, meta: dict, cached: bool = True) -> tuple[list, dict]:
        """Format 2: (nodes, {node: row}) for ``meta['nodes_sha256']``.  This model's index file is read (and
        checked against ``index_sha256`` and ``nodes_sha256``) only when no model with the same node list was read
        yet: reads use nothing else from it.  :meth:`info` and :meth:`check` always verify it."""
        key = meta["nodes_sha256"]
        hit = self._nodesets.get(key) if cached else None
        if hit is not None:  # the same node list, parsed and verified for another model
            return hit
        doc = self._read_index(model_id, meta)
        nodes = doc["nodes"]
        if not all(isinstance(w, str) for w in nodes) or texts_hash(nodes) != key:
            raise self._corrupt(model_id, self._model_dir(model_id) / meta["index"],
                                "its node list does not match meta.json (nodes_sha256)")
        rows = {w: i for i, w in enumerate(nodes)}
        if len(rows) != len(nodes):
            raise self._corrupt(model_id, self._model_dir(model_id) / meta["index"], "duplicate node ids")
        with self._lock:
            if len(self._nodesets) >= 64:
                self._nodesets.pop(next(iter(self._nodesets)))
            self._nodesets[key] = (nodes, rows)
        return nodes, rows

    def info(self, model_id: str) -> dict:
        """The model's metadata: num_heads, num_nodes, delta, fingerprint, head_names, num_images per node, ..."""
        meta, doc, _ = self._meta(model_id)
        if meta.get("format") == _FORMAT:  # the cached document holds only the nodes
            doc = self._read_index(model_id, meta)
        return {**meta, **{k: v for k, v in doc.items() if k != "nodes"}}

    def fingerprint(self, model_id: str) -> str | None:
        """Fingerprint of the model version the committed labels were made with (None: not recorded)."""
        return self._small_meta(model_id)[1].get("fingerprint")

    def nodes(self, model_id: str) -> list[str]:
        """Labelled node ids of the model, in row order (topological order of the SDAG)."""
        return list(self._meta(model_id)[1]["nodes"])

    def num_heads(self, model_id: str) -> int:
        return int(self._small_meta(model_id)[1]["num_heads"])

    def _open(self, model_id: str, meta: dict):
        import orbax.checkpoint as ocp
        import tensorstore as ts

        key = (model_id, meta["checkpoint"])
        with self._lock:
            t = self._ts_cache.get(key)
            if t is None:
                ckpt = self._model_dir(model_id) / meta["checkpoint"]
                ctx = ocp.type_handlers.get_ts_context(use_ocdbt=True)
                info = ocp.type_handlers.ParamInfo(name="labels", parent_dir=ckpt, is_ocdbt_checkpoint=True,
                                                   use_zarr3=bool(meta.get("use_zarr3", False)), ts_context=ctx)
                spec = ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=True)
                t = ts.open(spec, context=ctx, open=True).result()
                self._ts_cache = {k: v for k, v in self._ts_cache.items() if k[0] != model_id}
                self._ts_cache[key] = t
        return t

    def _row_dtype(self, meta: dict) -> np.dtype:
        """Format 2 record: the row (float32, or float16 / bfloat16 as uint16 bits) then a uint32 CRC-32."""
        h, name = int(meta["num_heads"]), meta["dtype"]
        bits = "<f4" if name == "float32" else "<u2"
        return np.dtype([("v", bits, (h,)), ("crc", "<u4")])

    @staticmethod
    def _to_float32(v: np.ndarray, name: str) -> np.ndarray:
        """Stored values (float32, or the uint16 bits of float16 / bfloat16) as float32, exactly."""
        if name == "bfloat16":
            return v.view(_storage_dtype("bfloat16")).astype(np.float32)
        if name == "float16":  # a 65536-entry table: 2x faster than numpy's float16 -> float32 cast here
            return _f16_table()[v]
        return np.asarray(v, dtype=np.float32)

    def _read_rows_v2(self, model_id: str, meta: dict, uniq: np.ndarray) -> np.ndarray:
        """Rows ``uniq`` (sorted, unique) of a format-2 row file, each checked against its CRC-32."""
        rec = self._row_dtype(meta)
        f = self._model_dir(model_id) / f"{meta['checkpoint']}.rows"
        size = rec.itemsize
        rows = uniq.tolist()
        cut = [0, *(np.flatnonzero(np.diff(uniq) != 1) + 1).tolist(), len(rows)]
        try:
            fd = os.open(f, os.O_RDONLY)
        except FileNotFoundError:
            raise self._corrupt(model_id, f, "missing") from None
        try:
            have = os.fstat(fd).st_size
            if have != int(meta["num_nodes"]) * size:
                raise self._corrupt(model_id, f, f"size {have} bytes, expected {int(meta['num_nodes']) * size} "
                                                 "(truncated or damaged)")
            parts = [os.pread(fd, (b - a) * size, rows[a] * size) for a, b in zip(cut[:-1], cut[1:])]
        finally:
            os.close(fd)
        buf = parts[0] if len(parts) == 1 else b"".join(parts)  # one pread per run of consecutive rows
        if len(buf) != len(rows) * size:
            raise self._corrupt(model_id, f, "short read (truncated)")
        arr = np.frombuffer(buf, dtype=rec)
        got = _row_crcs(buf, rec, rows)
        want = arr["crc"].tolist()
        if got != want:
            bad = next(r for r, a, b in zip(rows, got, want) if a != b)
            raise self._corrupt(model_id, f, f"checksum mismatch in row {bad}: edited or damaged")
        return self._to_float32(arr["v"], meta["dtype"])

    def read(self, model_id: str, wnids: Sequence[str]) -> np.ndarray:
        """Labels of ``wnids`` for ``model_id``: float32 (len(wnids), H), reading only those rows.

        Format 2: one ``pread`` per run of consecutive rows of the model's row file, every row verified by its
        CRC-32 (no checkpoint to open); format 1: a tensorstore read of the rows' chunks.
        """
        meta, _, index = self._meta(model_id)
        wnids = list(wnids)
        missing = [w for w in wnids if w not in index]
        if missing:
            raise KeyError(f"model {model_id!r} has no label for node(s) {missing[:10]}"
                           f"{' ...' if len(missing) > 10 else ''}: unknown wnid, or a node without images "
                           "and without labelled hyponyms")
        h = int(meta["num_heads"])
        if not wnids:
            return np.zeros((0, h), dtype=np.float32)
        rows = np.asarray([index[w] for w in wnids], dtype=np.int64)
        uniq, inv = np.unique(rows, return_inverse=True)
        if meta.get("format") == _FORMAT:
            return self._read_rows_v2(model_id, meta, uniq)[inv.reshape(-1)]
        try:
            t = self._open(model_id, meta)
            out = np.asarray(t.oindex[uniq].read().result(), dtype=np.float32)
        except Exception as e:  # tensorstore / orbax errors on a damaged checkpoint
            raise self._corrupt(model_id, self._model_dir(model_id) / meta["checkpoint"],
                                f"{type(e).__name__}: {str(e)[:300]}") from None
        if out.shape != (len(uniq), h):
            raise self._corrupt(model_id, self._model_dir(model_id) / meta["checkpoint"],
                                f"rows of shape {out.shape[1:]}, expected ({h},)")
        return out[inv.reshape(-1)]

    def read_all(self, model_id: str) -> tuple[list[str], np.ndarray]:
        """(labelled nodes, full (N, H) float32 matrix), checked against the whole-matrix checksum."""
        meta, doc, _ = self._meta(model_id)
        if meta.get("format") == _FORMAT:
            f = self._model_dir(model_id) / f"{meta['checkpoint']}.rows"
            try:
                data = f.read_bytes()
            except FileNotFoundError:
                raise self._corrupt(model_id, f, "missing") from None
            rec = self._row_dtype(meta)
            if len(data) != int(meta["num_nodes"]) * rec.itemsize or _sha256(data) != meta["rows_sha256"]:
                raise self._corrupt(model_id, f, "label checksum mismatch: edited or damaged")
            return list(doc["nodes"]), self._to_float32(np.frombuffer(data, dtype=rec)["v"], meta["dtype"])
        import orbax.checkpoint as ocp

        ckpt = self._model_dir(model_id) / meta["checkpoint"]
        try:
            with orbax_checkpointer(ocp.StandardCheckpointHandler()) as ck:
                arr = np.asarray(ck.restore(ckpt)["labels"], dtype=np.float32)
        except Exception as e:
            raise self._corrupt(model_id, ckpt, f"{type(e).__name__}: {str(e)[:300]}") from None
        want = meta.get("labels_sha256")
        if arr.shape != (len(doc["nodes"]), int(meta["num_heads"])) or (want is not None
                                                                        and array_hash(arr) != want):
            raise self._corrupt(model_id, ckpt, "label checksum mismatch: edited or damaged")
        return list(doc["nodes"]), arr

    # ------------------------------------------------------------------ consolidated packs (read-optimised)
    def _packs(self) -> list[dict]:
        """Valid pack documents under ``<root>/packs`` (a pack whose files are damaged is ignored with a warning:
        its models fall back to their own row files)."""
        d = self.root / "packs"
        if not d.is_dir():
            return []
        cache = self._pack_cache
        out = []
        for p in sorted(d.iterdir()):
            f = p / "pack.json"
            try:
                key = (p.name, f.stat().st_mtime_ns)
            except FileNotFoundError:
                continue
            doc = cache.get(key)
            if doc is None:
                try:
                    doc = json.loads(f.read_text(encoding="utf-8"))
                    if doc.get("format") != _PACK_FORMAT or doc.get("dtype") not in LABEL_DTYPES:
                        raise ValueError(f"unknown pack format {doc.get('format')!r}")
                    doc["_dir"] = p
                    doc["_member"] = {m: j for j, m in enumerate(doc["models"])}
                except (OSError, ValueError, KeyError, TypeError) as e:
                    warnings.warn(f"label store {self.root}: ignoring pack {p.name} ({type(e).__name__}: {e})",
                                  stacklevel=3)
                    continue
                cache[key] = doc
            out.append(doc)
        return out

    def pack(self, model_ids: Sequence[str] | None = None) -> list[str]:
        """Build read-optimised consolidated copies of the format-2 labels of ``model_ids`` (default: all).

        Models with the same node list, head count and storage dtype (a family: e.g. every ImageNet-1k
        classifier labelled on the same SDAG) go into one pack ``<root>/packs/<name>/``: ``rows.bin`` holds the
        (N nodes, M models, H) array node-major, so the rows of one node for every model of the family are one
        contiguous block, with one CRC-32 per node block in ``pack.json`` (written last: a pack is complete or
        absent).  :meth:`read_many` reads a query's C nodes as C block reads per family instead of opening M
        files.  A pack is a copy: the per-model files stay the source of truth, and a model committed again after
        packing is read from its own files until the next ``pack()``.  Returns the new pack directories' names.
        """
        ids = self.model_ids() if model_ids is None else list(model_ids)
        groups: dict[tuple, list[str]] = {}
        for m in ids:
            meta = self._meta(m)[0]
            if meta.get("format") != _FORMAT:
                continue  # format 1 models are read from their checkpoints
            groups.setdefault((meta["nodes_sha256"], int(meta["num_heads"]), meta["dtype"]), []).append(m)
        made = []
        (self.root / "packs").mkdir(exist_ok=True)
        for (nodes_sha, h, dtype), members in groups.items():
            metas = [self._meta(m)[0] for m in members]
            n = int(metas[0]["num_nodes"])
            vb = self._row_dtype(metas[0]).fields["v"][0].itemsize
            name = f"pack-{nodes_sha[:12]}-h{h}-{dtype}-{uuid.uuid4().hex[:8]}"
            pdir = self.root / "packs" / name
            pdir.mkdir()
            try:
                out = np.lib.format.open_memmap(pdir / "rows.tmp.npy", mode="w+", dtype=np.uint8,
                                                shape=(n, len(members), vb))
                for j, m in enumerate(members):  # every model's rows, verified (whole-file checksum) on the way
                    meta, rec = metas[j], self._row_dtype(metas[j])
                    f = self._model_dir(m) / f"{meta['checkpoint']}.rows"
                    data = f.read_bytes()
                    if _sha256(data) != meta["rows_sha256"]:
                        raise self._corrupt(m, f, "label checksum mismatch: edited or damaged")
                    out[:, j, :] = np.frombuffer(data, dtype=rec)["v"].view(np.uint8).reshape(n, vb)
                out.flush()
                crcs = [zlib.crc32(out[i].tobytes(), i) for i in range(n)]
                off = out.offset
                del out
                os.replace(pdir / "rows.tmp.npy", pdir / "rows.npy")
                doc = {"format": _PACK_FORMAT, "models": members, "checkpoints": [mt["checkpoint"] for mt in metas],
                       "nodes_sha256": nodes_sha, "num_nodes": n, "num_heads": h, "dtype": dtype,
                       "data_offset": int(off), "block_crc32": crcs}
                atomic_write_bytes(pdir / "pack.json", json.dumps(doc).encode("utf-8"))
            except BaseException:
                shutil.rmtree(pdir, ignore_errors=True)
                raise
            made.append(name)
            for q in (self.root / "packs").iterdir():  # older packs of the same family are superseded
                if q.name != name and q.name.startswith(f"pack-{nodes_sha[:12]}-h{h}-{dtype}-"):
                    shutil.rmtree(q, ignore_errors=True)
        return made

    def read_many(self, model_ids: Sequence[str], wnids: Sequence[str]) -> list[np.ndarray]:
        """``[self.read(m, wnids) for m in model_ids]``, with the same values, faster for many models.

        Models whose current labels are in a pack (:meth:`pack`) are read from it: one read of each requested
        node's block per pack (every block checked against its CRC-32); the others row file by row file.
        """
        model_ids, wnids = list(model_ids), list(wnids)
        out: list = [None] * len(model_ids)
        packs = self._packs() if wnids else []
        by_pack: dict[int, list[tuple[int, int]]] = {}
        for i, m in enumerate(model_ids):
            meta = self._meta(m)[0]
            for k, doc in enumerate(packs):
                j = doc["_member"].get(m)
                if (j is not None and meta.get("format") == _FORMAT and doc["checkpoints"][j] == meta["checkpoint"]
                        and doc["nodes_sha256"] == meta["nodes_sha256"]):
                    by_pack.setdefault(k, []).append((i, j))
                    break
        for k, pairs in by_pack.items():
            doc = packs[k]
            try:
                vals = self._read_pack(doc, model_ids[pairs[0][0]], wnids, [j for _, j in pairs])
            except FileNotFoundError:  # the pack was superseded while we read: fall back to the row files
                continue
            except LabelStoreCorruptError as e:  # the row files are the source of truth: use them
                warnings.warn(str(e), stacklevel=2)
                continue
            for (i, _), v in zip(pairs, vals):
                out[i] = v
        return [self.read(m, wnids) if v is None else v for m, v in zip(model_ids, out)]

    def _read_pack(self, doc: dict, mid: str, wnids: list, cols: list[int]) -> list[np.ndarray]:
        _, _, index = self._meta(mid)  # the node list of every member (same nodes_sha256)
        missing = [w for w in wnids if w not in index]
        if missing:
            self.read(mid, wnids)  # raises the usual KeyError
        rows = np.asarray([index[w] for w in wnids], dtype=np.int64)
        uniq, inv = np.unique(rows, return_inverse=True)
        h, n_models = int(doc["num_heads"]), len(doc["models"])
        vb = h * (4 if doc["dtype"] == "float32" else 2)
        block = n_models * vb
        f = doc["_dir"] / "rows.npy"
        fd = os.open(f, os.O_RDONLY)
        try:
            parts = [os.pread(fd, block, int(doc["data_offset"]) + int(r) * block) for r in uniq.tolist()]
        finally:
            os.close(fd)
        crcs = doc["block_crc32"]
        for r, b in zip(uniq.tolist(), parts):
            if len(b) != block or zlib.crc32(b, r) != crcs[r]:
                raise LabelStoreCorruptError(f"label store {self.root}: pack {f} is damaged (checksum mismatch in "
                                             f"node block {r}); recover by removing {doc['_dir']} (store.pack() "
                                             "rebuilds it)")
        bits = "<f4" if doc["dtype"] == "float32" else "<u2"
        arr = np.frombuffer(b"".join(parts), dtype=bits).reshape(len(uniq), n_models, h)
        inv = inv.reshape(-1)
        if np.array_equal(inv, np.arange(len(uniq))):
            return [self._to_float32(arr[:, c, :], doc["dtype"]) for c in cols]
        return [self._to_float32(arr[inv, c, :], doc["dtype"]) for c in cols]

    # ------------------------------------------------------------------ writing
    def commit(self, model_id: str, nodes: Sequence[str], labels: np.ndarray, *, delta: float | None = None,
               head_names: Sequence[str] | None = None, extra: Mapping | None = None,
               fingerprint: str | None = None) -> None:
        """Atomically replace the labels of ``model_id`` by ``labels`` (row i = ``nodes[i]``).

        Writes the label data (format 2: ``<checkpoint>.rows`` in the store's ``dtype``; format 1: an orbax
        checkpoint) and the row index (``<checkpoint>.index.json``: nodes, head names, ``extra``) first, then
        replaces the small ``meta.json`` that points to them (with their checksums and the model's
        ``fingerprint``), then removes the previous ones.  Raises :class:`LabelPrecisionError` when a label does
        not fit a float16 store.
        """
        labels = np.ascontiguousarray(labels, dtype=np.float32)
        nodes = [str(w) for w in nodes]
        if labels.ndim != 2 or labels.shape[0] != len(nodes) or labels.shape[0] == 0:
            raise ValueError(f"labels for {model_id!r} must be (len(nodes) > 0, H), got {labels.shape} for "
                             f"{len(nodes)} nodes")
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"duplicate node ids in the labels of {model_id!r}")
        if not np.all(np.isfinite(labels)):
            raise NonFiniteLogitsError(f"refusing to store non-finite labels for model {model_id!r}")
        if head_names is not None and len(head_names) != labels.shape[1]:
            raise ValueError(f"{len(head_names)} head names for {labels.shape[1]} heads of {model_id!r}")
        big = float(np.abs(labels).max())
        if big > LABEL_DTYPES[self.dtype][2]:
            raise LabelPrecisionError(f"labels of model {model_id!r} reach |{big:g}|, beyond the largest "
                                      f"{self.dtype} ({LABEL_DTYPES[self.dtype][2]:g}); use a float32 or bfloat16 "
                                      "store (LabelStore(path, dtype='float32'))")
        mdir = self._model_dir(model_id)
        mdir.mkdir(parents=True, exist_ok=True)
        self._write_id(model_id)
        name = f"labels-{uuid.uuid4().hex[:12]}"
        h = int(labels.shape[1])
        meta = {"format": _FORMAT if self.format == 2 else _FORMAT_V1, "model_id": model_id, "num_heads": h,
                "num_nodes": len(nodes), "delta": delta, "checkpoint": name, "index": f"{name}.index.json"}
        if self.format == 2:
            meta.update(dtype=self.dtype)  # the rows file is f"{checkpoint}.rows"
            rec = self._row_dtype(meta)
            out = np.zeros(len(nodes), dtype=rec)
            q = labels.astype(_storage_dtype(self.dtype))
            out["v"] = q if self.dtype == "float32" else q.view(np.uint16)
            out["crc"] = _row_crcs(out.tobytes(), rec, range(len(nodes)))
            data = out.tobytes()
            atomic_write_bytes(mdir / f"{name}.rows", data)
            meta.update(nodes_sha256=texts_hash(nodes), rows_sha256=_sha256(data))
        else:
            import orbax.checkpoint as ocp

            with orbax_checkpointer(ocp.StandardCheckpointHandler()) as ck:
                ck.save(mdir / name, args=ocp.args.StandardSave(
                    {"labels": labels}, save_args={"labels": ocp.SaveArgs(shard_axes=(0,))}))
            meta.update(use_zarr3=False, labels_sha256=array_hash(labels))
        doc = {"nodes": nodes, "head_names": None if head_names is None else [str(x) for x in head_names],
               **dict(extra or {})}
        index_bytes = json.dumps(doc, ensure_ascii=False).encode("utf-8")
        atomic_write_bytes(mdir / f"{name}.index.json", index_bytes)
        meta.update(fingerprint=fingerprint, index_sha256=_sha256(index_bytes))
        atomic_write_bytes(mdir / "meta.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
        self._meta_cache.pop(model_id, None)
        for p in mdir.iterdir():
            if p.name.startswith("labels-") and not p.name.startswith(name):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)

    def delete(self, model_id: str) -> None:
        """Remove a model's labels and raw cache."""
        mdir = self._model_dir(model_id)
        if not mdir.exists():
            raise KeyError(f"unknown model {model_id!r}")
        meta = mdir / "meta.json"
        if meta.exists():
            meta.unlink()
        shutil.rmtree(mdir, ignore_errors=True)
        self._meta_cache.pop(model_id, None)
        with self._lock:
            self._ts_cache = {k: v for k, v in self._ts_cache.items() if k[0] != model_id}

    # ------------------------------------------------------------------ raw (Eq. 1) cache
    def _raw_dir(self, model_id: str) -> Path:
        return self._model_dir(model_id) / "raw"

    def _raw_files(self, model_id: str) -> list[tuple[int, Path]]:
        """Raw chunks ``raw-<seq>-<hex>.npz`` in the order they apply (later ones win), by (seq, name).

        ``<hex>`` was 8 random hex digits before processes cooperated and is 32 (a full uuid4) now: two processes
        that list the directory at the same time pick the same ``seq`` but never the same name.  Chunks of equal
        ``seq`` come from one multi-process run, whose units are disjoint node sets, so their order does not
        matter."""
        d = self._raw_dir(model_id)
        if not d.is_dir():
            return []
        out = []
        for p in d.iterdir():
            m = re.match(r"^raw-(\d+)-[0-9a-f]+\.npz$", p.name)
            if m:
                out.append((int(m.group(1)), p))
        return sorted(out)

    def _write_id(self, model_id: str) -> None:
        f = self._model_dir(model_id) / "model_id.txt"  # names the model even when meta.json is damaged
        if not f.is_file():
            atomic_write_bytes(f, model_id.encode("utf-8"))

    def _read_raw_chunk(self, model_id: str, p: Path) -> tuple[str, list, list, np.ndarray]:
        try:
            with np.load(p, allow_pickle=False) as z:
                fp = str(z["fingerprint"]) if "fingerprint" in z.files else _NO_FP
                nodes, keys = z["nodes"].tolist(), z["keys"].tolist()
                means = np.asarray(z["means"], dtype=np.float32)
        except Exception as e:  # BadZipFile, KeyError, ValueError, OSError, ...
            raise self._corrupt(model_id, p, f"unreadable raw-label chunk ({type(e).__name__}: {str(e)[:200]}); "
                                f"store.clear_raw({model_id!r}) drops only this cache") from None
        if means.ndim != 2 or len(nodes) != len(keys) or len(nodes) != means.shape[0]:
            raise self._corrupt(model_id, p, "inconsistent raw-label chunk")
        return fp, nodes, keys, means

    def raw_fingerprints(self, model_id: str) -> set[str]:
        """Fingerprints the raw chunks of ``model_id`` were made under (``""``: none recorded)."""
        return {self._read_raw_chunk(model_id, p)[0] for _, p in self._raw_files(model_id)}

    def load_raw(self, model_id: str, fingerprint=_ANY) -> dict[str, tuple[str, np.ndarray]]:
        """Persisted Eq. 1 means: {node: (data_key, mean (H,) float32)}; later chunks win.

        With ``fingerprint`` (a string or None) only chunks made under that model fingerprint are used.
        A damaged chunk raises :class:`LabelStoreCorruptError` naming the file and the model.
        """
        want = _ANY if fingerprint is _ANY else (fingerprint or _NO_FP)
        out: dict[str, tuple[str, np.ndarray]] = {}
        for _, p in self._raw_files(model_id):
            fp, nodes, keys, means = self._read_raw_chunk(model_id, p)
            if want is not _ANY and fp != want:
                continue
            for w, k, m in zip(nodes, keys, means):
                out[w] = (k, m)
        return out

    def append_raw(self, model_id: str, entries: Mapping[str, tuple[str, np.ndarray]], *,
                   fingerprint: str | None = None) -> None:
        """Persist Eq. 1 means made by the model version ``fingerprint`` (one new atomically written chunk; several
        processes may append to the same model at once)."""
        if not entries:
            return
        d = self._raw_dir(model_id)
        d.mkdir(parents=True, exist_ok=True)
        self._write_id(model_id)
        files = self._raw_files(model_id)
        seq = files[-1][0] + 1 if files else 0
        nodes = list(entries)
        buf_path = d / f"raw-{seq:08d}-{uuid.uuid4().hex}.npz"  # unique across processes (see _raw_files)
        import io

        bio = io.BytesIO()
        np.savez(bio, nodes=np.asarray(nodes, dtype=str), keys=np.asarray([entries[w][0] for w in nodes], dtype=str),
                 means=np.stack([np.asarray(entries[w][1], dtype=np.float32) for w in nodes]),
                 fingerprint=np.asarray(fingerprint or _NO_FP, dtype=str))
        atomic_write_bytes(buf_path, bio.getvalue())

    def compact_raw(self, model_id: str, fingerprint=_ANY) -> None:
        """Merge the raw chunks of a model into one file (write the merged one first, then delete the rest).

        With ``fingerprint``, chunks of other model versions are dropped.
        """
        files = self._raw_files(model_id)
        if len(files) <= 1 and fingerprint is _ANY:
            return
        if fingerprint is _ANY:
            fps = {self._read_raw_chunk(model_id, p)[0] for _, p in files}
            if len(fps) > 1:
                raise ValueError(f"raw chunks of {model_id!r} come from several model versions; pass fingerprint")
            fingerprint = next(iter(fps)) if fps else None
        if len(files) <= 1 and self.raw_fingerprints(model_id) <= {fingerprint or _NO_FP}:
            return
        merged = self.load_raw(model_id, fingerprint)
        self.append_raw(model_id, merged, fingerprint=fingerprint)
        for _, p in files:
            p.unlink(missing_ok=True)

    def clear_raw(self, model_id: str) -> None:
        shutil.rmtree(self._raw_dir(model_id), ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------------

def _check_expert(expert) -> tuple[str, int]:
    mid = getattr(expert, "model_id", None)
    if not isinstance(mid, str) or not mid:
        raise LabellingError(f"expert {expert!r} has no string model_id")
    h = getattr(expert, "num_heads", None)
    if not isinstance(h, (int, np.integer)) or h < 1:
        raise LabellingError(f"model {mid!r} has invalid num_heads {h!r}")
    if not callable(getattr(expert, "logits", None)):
        raise LabellingError(f"model {mid!r} has no logits(images) method")
    fp = getattr(expert, "fingerprint", None)
    if fp is not None and not isinstance(fp, str):
        raise LabellingError(f"model {mid!r}: fingerprint must be a string or None, got {type(fp).__name__}")
    return mid, int(h)


def _node_blocks(nodes: Sequence[str], size: int) -> list[list[str]]:
    return [list(nodes[i:i + size]) for i in range(0, len(nodes), size)]


def label_models(sdag, experts: Iterable, store: "LabelStore | str | os.PathLike", *, delta: float = DEFAULT_DELTA,
                 batch_size: int = 64, flush_every: int = 64, recompute: bool = False,
                 progress: bool = True, workers: int = 2, processes=None, devices=None,
                 timeout: float | None = None) -> dict[str, dict]:
    """Label every expert on the SDAG (Eq. 1-2) and commit the labels to ``store``.

    Eq. 1 raw means are computed only for nodes whose images are not already in the store's raw cache for that
    model (new nodes, changed images, or nodes not reached by a killed run); smoothing (Eq. 2) is always
    recomputed.  A model whose logits are NaN/inf raises :class:`NonFiniteLogitsError` naming model and node; its
    committed labels (if any) are untouched and the unwritten means of that run are dropped.  ``recompute=True``
    discards the raw cache first.

    **Units.**  The SDAG nodes with images (in SDAG order) are cut into blocks of ``flush_every`` nodes; a
    (model, node block) is a unit of work.  A unit's missing nodes are computed together (no device batch mixes
    two units: :mod:`mll_jax.packing`) and written to the raw cache as ONE atomically written chunk, so a killed
    process loses at most its unfinished unit (on a Python exception the finished nodes of the current unit are
    written too), and a rerun computes only the nodes still missing.

    **Many processes** (``processes``: a :class:`mll_jax.distributed.Processes`; default
    :func:`mll_jax.distributed.current`, i.e. cooperating whenever ``jax.distributed`` is initialized with more
    than one process).  Every process calls ``label_models`` with the same arguments on the same shared store;
    per model, process 0 first clears the raw cache (``recompute``), every process reads which units still have
    work, and unit ``i`` of that list goes to process ``i mod N``.  After every process wrote its units (a
    key-value barrier; a process that failed or died is named in a :class:`mll_jax.distributed.ProcessFailedError`,
    ``timeout`` seconds without any unit finishing is an error too), process 0 smooths and commits, and the others
    wait for its outcome.  Units are computed the same way in any process, so the committed labels are bitwise
    those of a one-process run.  Within a process, batches of Flax experts are split over ``devices`` (default
    ``jax.local_devices()``).

    An expert's ``fingerprint`` attribute (hub experts have one) keys its raw cache: when it differs from the one
    the cache (or the committed labels) were made with, every node is recomputed and a warning says so.

    Images are packed into full device batches (:func:`mll_jax.packing.iter_node_means`: the expert's own fixed
    batch size for Flax experts, ``batch_size`` images per ``logits`` call otherwise), loaded and preprocessed on
    ``workers`` host threads ahead of the device; each node's mean is summed in float64 on the host and equals the
    node-by-node :func:`node_mean_logits` up to float32 round-off.

    Returns {model_id: {"labelled": nodes with a label, "computed": nodes run through the expert (by all
    processes), "cached": nodes taken from the raw cache}}, plus ``"fingerprint_changed": True`` for a model whose
    fingerprint changed, and with several processes ``"processes"`` (N) and ``"computed_here"`` (this process).
    """
    from tqdm.auto import tqdm

    from . import distributed
    from .packing import iter_node_means

    if not 0.0 <= float(delta) <= 1.0:
        raise ValueError(f"delta must lie in [0, 1], got {delta}")
    _positive_int(batch_size, "batch_size")
    _positive_int(flush_every, "flush_every")
    procs = distributed.current() if processes is None else processes
    if not isinstance(store, LabelStore):
        store = LabelStore(store)
    experts = list(experts)
    ids = [_check_expert(e)[0] for e in experts]
    dup = {m for m in ids if ids.count(m) > 1}
    if dup:
        raise ValueError(f"duplicate model ids: {sorted(dup)}")
    nodes = sdag.nodes
    with_data = sdag.nodes_with_images()
    if not with_data:
        raise ValueError("no SDAG node has images: nothing to label with (add data to the SDAG first)")
    idx = dag_index(sdag)
    pos = {w: i for i, w in enumerate(nodes)}
    keys = {w: sdag.data_key(w) for w in with_data}
    blocks = _node_blocks(with_data, int(flush_every))
    me, n_proc = procs.process_id, procs.num_processes
    who = f" [process {me + 1}/{n_proc}]" if procs.multi else ""
    summary: dict[str, dict] = {}
    for expert in experts:
        mid, h = _check_expert(expert)
        fp = getattr(expert, "fingerprint", None)
        tag = procs.new_tag(f"label/{mid}") if procs.multi else ""
        if recompute and me == 0:
            store.clear_raw(mid)
        procs.barrier(f"{tag}/cleared", f"preparing the labelling of {mid!r}", timeout=timeout)
        old_fps = store.raw_fingerprints(mid) - {fp or _NO_FP}
        if mid in store:
            try:
                committed = store.fingerprint(mid)
            except LabelStoreCorruptError:
                committed = fp  # damaged labels are replaced by this commit
            if committed != fp:
                old_fps.add(committed or _NO_FP)
        if old_fps and me == 0:
            warnings.warn(f"model {mid!r} changed since it was labelled (fingerprint "
                          f"{sorted(old_fps)[0][:12] or 'none'} -> {(fp or 'none')[:12]}): its labels are recomputed",
                          stacklevel=2)
        raw = store.load_raw(mid, fp)
        stale = [w for w, (_, m) in raw.items() if m.shape != (h,)]
        for w in stale:
            del raw[w]
        todo_set = {w for w in with_data if w not in raw or raw[w][0] != keys[w]}
        units = [(b, [w for w in blk if w in todo_set]) for b, blk in enumerate(blocks)]
        units = [u for u in units if u[1]]  # units with work, in block order: the same list in every process
        # every process has read the cache before anyone writes to it (the unit list must not depend on timing)
        procs.barrier(f"{tag}/scanned", f"reading the raw cache of {mid!r}", timeout=timeout)
        mine = distributed.assign(units, n_proc, me)
        n_mine = sum(len(u[1]) for u in mine)
        done_here = 0
        pbar = tqdm(total=len(with_data) if not procs.multi else n_mine,
                    initial=len(with_data) - len(todo_set) if not procs.multi else 0,
                    desc=f"labelling {mid}{who}", unit="node", disable=not progress)
        buffer: dict[str, tuple[str, np.ndarray]] = {}
        error = None
        try:
            left = {b: len(ws) for b, ws in mine}
            block_of = {w: b for b, ws in mine for w in ws}
            items = ((w, functools.partial(sdag.images, w), b) for b, ws in mine for w in ws)
            for w, mean in iter_node_means(expert, items, logits_batch_size=batch_size, workers=workers,
                                           devices=devices):
                buffer[w] = (keys[w], mean)
                pbar.update(1)
                b = block_of[w]
                left[b] -= 1
                if left[b] == 0:  # the unit is complete: one atomic chunk
                    store.append_raw(mid, buffer, fingerprint=fp)
                    raw.update(buffer)
                    done_here += 1
                    buffer = {}
                    procs.report_progress(f"{tag}/progress", done_here)
        except NonFiniteLogitsError as e:
            buffer = {}
            error = e
        except BaseException as e:
            store.append_raw(mid, buffer, fingerprint=fp)  # keep the finished nodes of a crashed / interrupted run
            error = e
        finally:
            pbar.close()
        if error is not None:
            if procs.multi and not isinstance(error, Exception):
                raise error  # KeyboardInterrupt & co.: leave; the others see this process die
            procs.barrier(f"{tag}/computed", f"labelling {mid!r}", error=error, timeout=timeout)
        procs.barrier(f"{tag}/computed", f"labelling {mid!r}", timeout=timeout, progress_prefix=f"{tag}/progress")
        if me == 0:
            try:
                if procs.multi:  # the other processes' units
                    raw = {w: v for w, v in store.load_raw(mid, fp).items() if v[1].shape == (h,)}
                missing = [w for w in with_data if w not in raw or raw[w][0] != keys[w]]
                if missing:
                    raise LabellingError(f"model {mid!r}: {len(missing)} nodes have no raw label after every unit "
                                         f"was reported done (first: {missing[:3]}); run label_models again")
                own = np.zeros((len(nodes), h), dtype=np.float32)
                has_own = np.zeros(len(nodes), dtype=bool)
                for w in with_data:
                    own[pos[w]] = raw[w][1]
                    has_own[pos[w]] = True
                s, has = smooth_labels(own, has_own, idx.edge_parent, idx.edge_child, np.float32(delta), idx.height)
                s, has = np.asarray(s), np.asarray(has)
                labelled = [w for w, ok in zip(nodes, has) if ok]
                store.commit(mid, labelled, s[has], delta=float(delta),  # process 0 alone (orbax: distributed.py)
                             head_names=getattr(expert, "head_names", None),
                             extra={"num_images": {w: sdag.num_images(w) for w in with_data}}, fingerprint=fp)
                store.compact_raw(mid, fp)
            except Exception as e:
                procs.publish(f"{tag}/result", e)
                raise
            procs.publish(f"{tag}/result", str(len(labelled)))
        else:
            labelled = range(int(procs.wait_for(f"{tag}/result", f"waiting for process 0 to commit {mid!r}",
                                                timeout)))
        summary[mid] = {"labelled": len(labelled), "computed": len(todo_set),
                        "cached": len(with_data) - len(todo_set)}
        if procs.multi:
            summary[mid].update(processes=n_proc, computed_here=n_mine)
        if old_fps:
            summary[mid]["fingerprint_changed"] = True
    return summary
