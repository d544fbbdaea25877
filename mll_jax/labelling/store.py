"""The label store: per-model label matrices on disk, readable row by row (format 2; format 1 still read).

``<path>/models/<model-dir>/`` per model (``<model-dir>`` = sanitised model id + a hash of it,
:func:`mll_jax.labelling.layout.safe_name`) holds a small ``meta.json`` (format, model id, heads, delta, storage
dtype, names and checksums of the current files), ``labels-<id>.rows`` and ``labels-<id>.index.json`` (labelled
node ids in row order, head names, images per node), ``model_id.txt`` and the raw cache ``raw/``
(:mod:`mll_jax.labelling.raw`).  Format 2 and format 1 are described in the package docstring; packs in
:mod:`mll_jax.labelling.packs`, format-1 checkpoints in :mod:`mll_jax.labelling.format1`.

A commit writes the new rows (or checkpoint) and index first, then atomically replaces ``meta.json``, then removes
the old ones: readers always see a complete label set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mll_jax.errors import LabelPrecisionError, LabelStoreCorruptError, NonFiniteLogitsError
from mll_jax.utils import array_hash, texts_hash

from . import format1, layout
from .layout import FORMAT, FORMAT_V1, LABEL_DTYPES
from .packs import PackedLabels
from .raw import RawLabelCache

__all__ = ["LabelStore"]


class LabelStore(PackedLabels, RawLabelCache):
    """Per-model label matrices on disk (format 2 row files; format 1 orbax checkpoints), readable row by row.

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

    def __repr__(self) -> str:
        return f"LabelStore({str(self.root)!r}, {len(self.model_ids())} models)"

    # ------------------------------------------------------------------ reading
    def model_dir(self, model_id: str) -> Path:
        """The directory of ``model_id``'s files (``<root>/models/<sanitised id>-<hash>``; it may not exist)."""
        return self.root / "models" / layout.safe_name(model_id)


    def corrupt(self, model_id: str | None, path: Path, problem: str) -> LabelStoreCorruptError:
        """The :class:`LabelStoreCorruptError` for damaged file ``path`` of ``model_id``, with the recovery."""
        who = f"model {model_id!r}" if model_id is not None else f"the model in {path.parent}"
        how = (f"store.delete({model_id!r}) then label_models(...) again" if model_id is not None
               else f"remove {path.parent} and label that model again")
        return LabelStoreCorruptError(f"label store {self.root}: {path} of {who} is damaged ({problem}); "
                                      f"recover by relabelling that model: {how}")

    def _read_meta_file(self, f: Path, model_id: str | None) -> dict:
        try:
            meta = json.loads(f.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self.corrupt(model_id, f, f"unreadable JSON: {e}") from None
        if not isinstance(meta, dict) or not all(k in meta for k in ("model_id", "num_heads", "checkpoint", "index")):
            raise self.corrupt(model_id, f, "missing fields")
        if model_id is not None and meta["model_id"] != model_id:
            raise self.corrupt(model_id, f, f"it names model {meta['model_id']!r}")
        ck, ix = meta["checkpoint"], meta["index"]
        if not (isinstance(ck, str) and re.fullmatch(r"labels-[0-9a-f]{12}", ck) and ix == f"{ck}.index.json"):
            raise self.corrupt(model_id, f, "invalid checkpoint / index names")
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
                if d.name != layout.safe_name(mid):
                    raise self.corrupt(mid, f, f"it lies in {d.name}, not in {layout.safe_name(mid)}")
                self.committed(mid)  # reads and verifies meta + index once; cached while meta.json is unchanged
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
        meta, _, _ = self.committed(model_id)
        if meta.get("format") == FORMAT:  # reads may have used a cached node list: verify this model's own
            self._nodeset(model_id, meta, cached=False)
        self.read_all(model_id)
        self.load_raw(model_id)

    def __contains__(self, model_id) -> bool:
        return (self.model_dir(model_id) / "meta.json").is_file()

    def _small_meta(self, model_id: str) -> tuple[int, dict]:
        f = self.model_dir(model_id) / "meta.json"
        try:
            mtime = f.stat().st_mtime_ns
        except FileNotFoundError:
            known = self.model_ids()
            raise KeyError(f"unknown model {model_id!r}: no labels in {self.root} (labelled models: "
                           f"{known[:10]}{' ...' if len(known) > 10 else ''})") from None
        return mtime, self._read_meta_file(f, model_id)

    def _read_index(self, model_id: str, meta: dict, parse: bool = True) -> dict | None:
        """The row index document, verified against ``index_sha256`` (``parse=False``: verify only)."""
        f = self.model_dir(model_id) / str(meta["index"])
        try:
            data = f.read_bytes()
        except FileNotFoundError:
            raise self.corrupt(model_id, f, "missing") from None
        want = meta.get("index_sha256")
        if want is not None and layout.sha256(data) != want:
            raise self.corrupt(model_id, f, "checksum mismatch: edited or damaged")
        if not parse:
            return None
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self.corrupt(model_id, f, f"unreadable JSON: {e}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list) \
                or len(doc["nodes"]) != meta.get("num_nodes", len(doc["nodes"])):
            raise self.corrupt(model_id, f, "malformed node list")
        return doc

    def committed(self, model_id: str) -> tuple[dict, dict, dict]:
        """(meta, index document, {node: row}) of the committed labels, cached while meta.json is unchanged.

        Format 2: the document holds only ``nodes`` (head names and ``extra`` are read by :meth:`info`); the node
        list is parsed once per distinct list (``nodes_sha256`` in meta.json) and shared by every model labelled
        on the same SDAG, so opening M models costs M small meta.json reads, not M index reads and parses.
        """
        f = self.model_dir(model_id) / "meta.json"
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
        fmt = meta.get("format", FORMAT_V1)
        if fmt == FORMAT:
            self._check_meta_v2(model_id, meta)
            nodes, rows = self._nodeset(model_id, meta)
            doc = {"nodes": nodes}
        elif fmt == FORMAT_V1:
            doc = self._read_index(model_id, meta)
            rows = {w: i for i, w in enumerate(doc["nodes"])}
        else:
            raise self.corrupt(model_id, f, f"unknown label format {fmt!r} (this mll_jax reads {FORMAT_V1!r} "
                                             f"and {FORMAT!r}; a newer version wrote it?)")
        return meta, doc, rows

    def _check_meta_v2(self, model_id: str, meta: dict) -> None:
        f = self.model_dir(model_id) / "meta.json"
        ok = (meta.get("dtype") in LABEL_DTYPES
              and isinstance(meta.get("nodes_sha256"), str) and isinstance(meta.get("rows_sha256"), str)
              and isinstance(meta.get("num_nodes"), int) and meta["num_nodes"] > 0
              and isinstance(meta.get("num_heads"), int) and meta["num_heads"] > 0)
        if not ok:
            raise self.corrupt(model_id, f, "missing or invalid format-2 fields (dtype, rows, checksums, shape)")

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
            raise self.corrupt(model_id, self.model_dir(model_id) / meta["index"],
                                "its node list does not match meta.json (nodes_sha256)")
        rows = {w: i for i, w in enumerate(nodes)}
        if len(rows) != len(nodes):
            raise self.corrupt(model_id, self.model_dir(model_id) / meta["index"], "duplicate node ids")
        with self._lock:
            if len(self._nodesets) >= 64:
                self._nodesets.pop(next(iter(self._nodesets)))
            self._nodesets[key] = (nodes, rows)
        return nodes, rows

    def info(self, model_id: str) -> dict:
        """The model's metadata: num_heads, num_nodes, delta, fingerprint, head_names, num_images per node, ..."""
        meta, doc, _ = self.committed(model_id)
        if meta.get("format") == FORMAT:  # the cached document holds only the nodes
            doc = self._read_index(model_id, meta)
        return {**meta, **{k: v for k, v in doc.items() if k != "nodes"}}

    def fingerprint(self, model_id: str) -> str | None:
        """Fingerprint of the model version the committed labels were made with (None: not recorded)."""
        return self._small_meta(model_id)[1].get("fingerprint")

    def nodes(self, model_id: str) -> list[str]:
        """Labelled node ids of the model, in row order (topological order of the SDAG)."""
        return list(self.committed(model_id)[1]["nodes"])

    def num_heads(self, model_id: str) -> int:
        return int(self._small_meta(model_id)[1]["num_heads"])

    def _open_v1(self, model_id: str, meta: dict):
        """The tensorstore array of a format-1 model's checkpoint, kept open while its meta.json is unchanged."""
        key = (model_id, meta["checkpoint"])
        with self._lock:
            t = self._ts_cache.get(key)
            if t is None:
                t = format1.open_rows(self.model_dir(model_id) / meta["checkpoint"], meta.get("use_zarr3", False))
                self._ts_cache = {k: v for k, v in self._ts_cache.items() if k[0] != model_id}
                self._ts_cache[key] = t
        return t

    def _read_rows_v2(self, model_id: str, meta: dict, uniq: np.ndarray) -> np.ndarray:
        """Rows ``uniq`` (sorted, unique) of a format-2 row file, each checked against its CRC-32."""
        rec = layout.row_dtype(meta)
        f = self.model_dir(model_id) / f"{meta['checkpoint']}.rows"
        size = rec.itemsize
        rows = uniq.tolist()
        cut = [0, *(np.flatnonzero(np.diff(uniq) != 1) + 1).tolist(), len(rows)]
        try:
            fd = os.open(f, os.O_RDONLY)
        except FileNotFoundError:
            raise self.corrupt(model_id, f, "missing") from None
        try:
            have = os.fstat(fd).st_size
            if have != int(meta["num_nodes"]) * size:
                raise self.corrupt(model_id, f, f"size {have} bytes, expected {int(meta['num_nodes']) * size} "
                                                 "(truncated or damaged)")
            parts = [os.pread(fd, (b - a) * size, rows[a] * size) for a, b in zip(cut[:-1], cut[1:])]
        finally:
            os.close(fd)
        buf = parts[0] if len(parts) == 1 else b"".join(parts)  # one pread per run of consecutive rows
        if len(buf) != len(rows) * size:
            raise self.corrupt(model_id, f, "short read (truncated)")
        arr = np.frombuffer(buf, dtype=rec)
        got = layout.row_crcs(buf, rec, rows)
        want = arr["crc"].tolist()
        if got != want:
            bad = next(r for r, a, b in zip(rows, got, want) if a != b)
            raise self.corrupt(model_id, f, f"checksum mismatch in row {bad}: edited or damaged")
        return layout.to_float32(arr["v"], meta["dtype"])

    def read(self, model_id: str, wnids: Sequence[str]) -> np.ndarray:
        """Labels of ``wnids`` for ``model_id``: float32 (len(wnids), H), reading only those rows.

        Format 2: one ``pread`` per run of consecutive rows of the model's row file, every row verified by its
        CRC-32 (no checkpoint to open); format 1: a tensorstore read of the rows' chunks.
        """
        meta, _, index = self.committed(model_id)
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
        if meta.get("format") == FORMAT:
            return self._read_rows_v2(model_id, meta, uniq)[inv.reshape(-1)]
        try:
            t = self._open_v1(model_id, meta)
            out = np.asarray(t.oindex[uniq].read().result(), dtype=np.float32)
        except Exception as e:  # tensorstore / orbax errors on a damaged checkpoint
            raise self.corrupt(model_id, self.model_dir(model_id) / meta["checkpoint"],
                                f"{type(e).__name__}: {str(e)[:300]}") from None
        if out.shape != (len(uniq), h):
            raise self.corrupt(model_id, self.model_dir(model_id) / meta["checkpoint"],
                                f"rows of shape {out.shape[1:]}, expected ({h},)")
        return out[inv.reshape(-1)]

    def read_all(self, model_id: str) -> tuple[list[str], np.ndarray]:
        """(labelled nodes, full (N, H) float32 matrix), checked against the whole-matrix checksum."""
        meta, doc, _ = self.committed(model_id)
        if meta.get("format") == FORMAT:
            f = self.model_dir(model_id) / f"{meta['checkpoint']}.rows"
            try:
                data = f.read_bytes()
            except FileNotFoundError:
                raise self.corrupt(model_id, f, "missing") from None
            rec = layout.row_dtype(meta)
            if len(data) != int(meta["num_nodes"]) * rec.itemsize or layout.sha256(data) != meta["rows_sha256"]:
                raise self.corrupt(model_id, f, "label checksum mismatch: edited or damaged")
            return list(doc["nodes"]), layout.to_float32(np.frombuffer(data, dtype=rec)["v"], meta["dtype"])
        ckpt = self.model_dir(model_id) / meta["checkpoint"]
        try:
            arr = format1.read_matrix(ckpt)
        except Exception as e:
            raise self.corrupt(model_id, ckpt, f"{type(e).__name__}: {str(e)[:300]}") from None
        want = meta.get("labels_sha256")
        if arr.shape != (len(doc["nodes"]), int(meta["num_heads"])) or (want is not None
                                                                        and array_hash(arr) != want):
            raise self.corrupt(model_id, ckpt, "label checksum mismatch: edited or damaged")
        return list(doc["nodes"]), arr

    # ------------------------------------------------------------------ consolidated packs (read-optimised)
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
        mdir = self.model_dir(model_id)
        mdir.mkdir(parents=True, exist_ok=True)
        layout.write_model_id(mdir, model_id)
        name = f"labels-{uuid.uuid4().hex[:12]}"
        h = int(labels.shape[1])
        meta = {"format": FORMAT if self.format == 2 else FORMAT_V1, "model_id": model_id, "num_heads": h,
                "num_nodes": len(nodes), "delta": delta, "checkpoint": name, "index": f"{name}.index.json"}
        if self.format == 2:
            meta.update(dtype=self.dtype)  # the rows file is f"{checkpoint}.rows"
            rec = layout.row_dtype(meta)
            out = np.zeros(len(nodes), dtype=rec)
            q = labels.astype(layout.storage_dtype(self.dtype))
            out["v"] = q if self.dtype == "float32" else q.view(np.uint16)
            out["crc"] = layout.row_crcs(out.tobytes(), rec, range(len(nodes)))
            data = out.tobytes()
            layout.write_file(mdir / f"{name}.rows", data)
            meta.update(nodes_sha256=texts_hash(nodes), rows_sha256=layout.sha256(data))
        else:
            format1.write(mdir / name, labels)
            meta.update(use_zarr3=False, labels_sha256=array_hash(labels))
        doc = {"nodes": nodes, "head_names": None if head_names is None else [str(x) for x in head_names],
               **dict(extra or {})}
        index_bytes = json.dumps(doc, ensure_ascii=False).encode("utf-8")
        layout.write_file(mdir / f"{name}.index.json", index_bytes)
        meta.update(fingerprint=fingerprint, index_sha256=layout.sha256(index_bytes))
        layout.write_file(mdir / "meta.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
        self._meta_cache.pop(model_id, None)
        for p in mdir.iterdir():
            if p.name.startswith("labels-") and not p.name.startswith(name):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)

    def delete(self, model_id: str) -> None:
        """Remove a model's labels and raw cache."""
        mdir = self.model_dir(model_id)
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
