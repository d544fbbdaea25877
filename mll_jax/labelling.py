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
hash of it) holds a small ``meta.json`` (model id, heads, delta, names of the current checkpoint and row index),
``labels-<id>/``, an orbax checkpoint of the (num_labelled_nodes, H) float32 array saved with one row per
tensorstore chunk so that :meth:`LabelStore.read` reads only the requested rows, and ``labels-<id>.index.json``
(labelled node ids in row order, head names, images per node).  A commit writes a new checkpoint and index, then
atomically replaces ``meta.json``, then removes the old ones: readers always see a complete label set.  ``raw/``
holds the Eq. 1 raw means, appended in small atomically written ``.npz`` chunks while labelling runs, keyed by node
id and the node's image content hash: a killed run restarts where it stopped, and after nodes are added to (or
re-imaged in) the SDAG only those nodes are run through the expert again.  The raw cache is keyed by
``model_id``; if an expert's weights change under the same id, relabel with ``recompute=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DEFAULT_DELTA",
    "DagIndex",
    "dag_index",
    "smooth_labels",
    "node_mean_logits",
    "LabelStore",
    "LabellingError",
    "NonFiniteLogitsError",
    "label_models",
]

DEFAULT_DELTA = 0.5
_FORMAT = "mll_jax.labels/1"


class LabellingError(ValueError):
    """An expert misbehaved while being labelled (wrong output shape, ...)."""


class NonFiniteLogitsError(LabellingError):
    """An expert produced NaN or inf logits."""


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


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class LabelStore:
    """Per-model label matrices on disk (orbax checkpoints), readable row by row.

    ``path`` is created if needed.  Methods raise ``KeyError`` for unknown models or unlabelled nodes.
    """

    def __init__(self, path: str | os.PathLike):
        self.root = Path(path)
        (self.root / "models").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._meta_cache: dict[str, tuple] = {}  # model -> (mtime_ns, meta, index doc, row index)
        self._ts_cache: dict[tuple[str, str], object] = {}

    def __repr__(self) -> str:
        return f"LabelStore({str(self.root)!r}, {len(self.model_ids())} models)"

    # ------------------------------------------------------------------ reading
    def _model_dir(self, model_id: str) -> Path:
        return self.root / "models" / _safe_name(model_id)

    def model_ids(self) -> list[str]:
        """Ids of the models with committed labels, sorted."""
        out = []
        for d in sorted((self.root / "models").iterdir()):
            f = d / "meta.json"
            if f.is_file():
                out.append(json.loads(f.read_text(encoding="utf-8"))["model_id"])
        return sorted(out)

    def __contains__(self, model_id) -> bool:
        return (self._model_dir(model_id) / "meta.json").is_file()

    def _small_meta(self, model_id: str) -> tuple[int, dict]:
        f = self._model_dir(model_id) / "meta.json"
        try:
            mtime = f.stat().st_mtime_ns
            return mtime, json.loads(f.read_text(encoding="utf-8"))
        except FileNotFoundError:
            known = self.model_ids()
            raise KeyError(f"unknown model {model_id!r}: no labels in {self.root} (labelled models: "
                           f"{known[:10]}{' ...' if len(known) > 10 else ''})") from None

    def _meta(self, model_id: str) -> tuple[dict, dict, dict]:
        """(meta, index document, {node: row}) of the committed labels, cached while meta.json is unchanged."""
        f = self._model_dir(model_id) / "meta.json"
        try:
            st = f.stat()
            mtime = (st.st_ino, st.st_mtime_ns)  # meta.json is replaced (new inode) on every commit
        except FileNotFoundError:
            mtime = None
        cached = self._meta_cache.get(model_id)
        if cached is not None and mtime is not None and cached[0] == mtime:
            return cached[1], cached[2], cached[3]
        _, meta = self._small_meta(model_id)
        doc = json.loads((self._model_dir(model_id) / meta["index"]).read_text(encoding="utf-8"))
        rows = {w: i for i, w in enumerate(doc["nodes"])}
        self._meta_cache[model_id] = (mtime, meta, doc, rows)
        return meta, doc, rows

    def info(self, model_id: str) -> dict:
        """The model's metadata: num_heads, num_nodes, delta, head_names, num_images per node, ..."""
        meta, doc, _ = self._meta(model_id)
        return {**meta, **{k: v for k, v in doc.items() if k != "nodes"}}

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

    def read(self, model_id: str, wnids: Sequence[str]) -> np.ndarray:
        """Labels of ``wnids`` for ``model_id``: float32 (len(wnids), H), reading only those rows."""
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
        t = self._open(model_id, meta)
        out = np.asarray(t.oindex[uniq].read().result(), dtype=np.float32)
        return out[inv.reshape(-1)]

    def read_all(self, model_id: str) -> tuple[list[str], np.ndarray]:
        """(labelled nodes, full (N, H) float32 matrix) via a plain orbax restore."""
        import orbax.checkpoint as ocp

        meta, doc, _ = self._meta(model_id)
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ck:
            arr = ck.restore(self._model_dir(model_id) / meta["checkpoint"])["labels"]
        return list(doc["nodes"]), np.asarray(arr, dtype=np.float32)

    # ------------------------------------------------------------------ writing
    def commit(self, model_id: str, nodes: Sequence[str], labels: np.ndarray, *, delta: float | None = None,
               head_names: Sequence[str] | None = None, extra: Mapping | None = None) -> None:
        """Atomically replace the labels of ``model_id`` by ``labels`` (row i = ``nodes[i]``).

        Writes the orbax checkpoint and the row index (``<checkpoint>.index.json``: nodes, head names, ``extra``)
        first, then replaces the small ``meta.json`` that points to them, then removes the previous ones.
        """
        import orbax.checkpoint as ocp

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
        mdir = self._model_dir(model_id)
        mdir.mkdir(parents=True, exist_ok=True)
        name = f"labels-{uuid.uuid4().hex[:12]}"
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ck:
            ck.save(mdir / name, args=ocp.args.StandardSave(
                {"labels": labels}, save_args={"labels": ocp.SaveArgs(shard_axes=(0,))}))
        doc = {"nodes": nodes, "head_names": None if head_names is None else [str(h) for h in head_names],
               **dict(extra or {})}
        _atomic_write(mdir / f"{name}.index.json", json.dumps(doc, ensure_ascii=False).encode("utf-8"))
        meta = {"format": _FORMAT, "model_id": model_id, "num_heads": int(labels.shape[1]),
                "num_nodes": len(nodes), "delta": delta, "checkpoint": name, "index": f"{name}.index.json",
                "use_zarr3": False}
        _atomic_write(mdir / "meta.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
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

    # ------------------------------------------------------------------ raw (Eq. 1) cache
    def _raw_dir(self, model_id: str) -> Path:
        return self._model_dir(model_id) / "raw"

    def _raw_files(self, model_id: str) -> list[tuple[int, Path]]:
        d = self._raw_dir(model_id)
        if not d.is_dir():
            return []
        out = []
        for p in d.iterdir():
            m = re.match(r"^raw-(\d+)-[0-9a-f]+\.npz$", p.name)
            if m:
                out.append((int(m.group(1)), p))
        return sorted(out)

    def load_raw(self, model_id: str) -> dict[str, tuple[str, np.ndarray]]:
        """Persisted Eq. 1 means: {node: (data_key, mean (H,) float32)}; later chunks win."""
        out: dict[str, tuple[str, np.ndarray]] = {}
        for _, p in self._raw_files(model_id):
            with np.load(p, allow_pickle=False) as z:
                for w, k, m in zip(z["nodes"].tolist(), z["keys"].tolist(), z["means"]):
                    out[w] = (k, np.asarray(m, dtype=np.float32))
        return out

    def append_raw(self, model_id: str, entries: Mapping[str, tuple[str, np.ndarray]]) -> None:
        """Persist Eq. 1 means (one new atomically written chunk)."""
        if not entries:
            return
        d = self._raw_dir(model_id)
        d.mkdir(parents=True, exist_ok=True)
        files = self._raw_files(model_id)
        seq = files[-1][0] + 1 if files else 0
        nodes = list(entries)
        buf_path = d / f"raw-{seq:08d}-{uuid.uuid4().hex[:8]}.npz"
        import io

        bio = io.BytesIO()
        np.savez(bio, nodes=np.asarray(nodes, dtype=str), keys=np.asarray([entries[w][0] for w in nodes], dtype=str),
                 means=np.stack([np.asarray(entries[w][1], dtype=np.float32) for w in nodes]))
        _atomic_write(buf_path, bio.getvalue())

    def compact_raw(self, model_id: str) -> None:
        """Merge the raw chunks of a model into one file (write the merged one first, then delete the rest)."""
        files = self._raw_files(model_id)
        if len(files) <= 1:
            return
        merged = self.load_raw(model_id)
        self.append_raw(model_id, merged)
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
    return mid, int(h)


def label_models(sdag, experts: Iterable, store: "LabelStore | str | os.PathLike", *, delta: float = DEFAULT_DELTA,
                 batch_size: int = 64, flush_every: int = 16, recompute: bool = False,
                 progress: bool = True) -> dict[str, dict]:
    """Label every expert on the SDAG (Eq. 1-2) and commit the labels to ``store``.

    Eq. 1 raw means are computed only for nodes whose images are not already in the store's raw cache for that
    model (new nodes, changed images, or nodes not reached by a killed run) and persisted every ``flush_every``
    nodes (and when the expert raises); smoothing (Eq. 2) is always recomputed.  A model whose logits are NaN/inf
    raises :class:`NonFiniteLogitsError` naming model and node; its committed labels (if any) are untouched and the
    unflushed means of that run are dropped.  ``recompute=True`` discards the raw cache first.

    Returns {model_id: {"labelled": nodes with a label, "computed": nodes run through the expert,
    "cached": nodes taken from the raw cache}}.
    """
    from tqdm.auto import tqdm

    if not 0.0 <= float(delta) <= 1.0:
        raise ValueError(f"delta must lie in [0, 1], got {delta}")
    if batch_size < 1 or flush_every < 1:
        raise ValueError("batch_size and flush_every must be >= 1")
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
    summary: dict[str, dict] = {}
    for expert in experts:
        mid, h = _check_expert(expert)
        if recompute:
            store.clear_raw(mid)
        raw = store.load_raw(mid)
        stale = [w for w, (_, m) in raw.items() if m.shape != (h,)]
        for w in stale:
            del raw[w]
        todo = [w for w in with_data if w not in raw or raw[w][0] != keys[w]]
        pbar = tqdm(total=len(with_data), initial=len(with_data) - len(todo), desc=f"labelling {mid}",
                    unit="node", disable=not progress)
        buffer: dict[str, tuple[str, np.ndarray]] = {}
        try:
            for w in todo:
                mean = node_mean_logits(expert, sdag.images(w), batch_size=batch_size, node=w)
                buffer[w] = (keys[w], mean)
                pbar.update(1)
                if len(buffer) >= flush_every:
                    store.append_raw(mid, buffer)
                    raw.update(buffer)
                    buffer = {}
        except NonFiniteLogitsError:
            buffer = {}
            raise
        except BaseException:
            store.append_raw(mid, buffer)  # keep the finished nodes of a crashed / interrupted run
            raise
        finally:
            pbar.close()
        store.append_raw(mid, buffer)
        raw.update(buffer)
        own = np.zeros((len(nodes), h), dtype=np.float32)
        has_own = np.zeros(len(nodes), dtype=bool)
        for w in with_data:
            own[pos[w]] = raw[w][1]
            has_own[pos[w]] = True
        s, has = smooth_labels(own, has_own, idx.edge_parent, idx.edge_child, np.float32(delta), idx.height)
        s, has = np.asarray(s), np.asarray(has)
        labelled = [w for w, ok in zip(nodes, has) if ok]
        store.commit(mid, labelled, s[has], delta=float(delta), head_names=getattr(expert, "head_names", None),
                     extra={"num_images": {w: sdag.num_images(w) for w in with_data}})
        store.compact_raw(mid)
        summary[mid] = {"labelled": len(labelled), "computed": len(todo), "cached": len(with_data) - len(todo)}
    return summary
