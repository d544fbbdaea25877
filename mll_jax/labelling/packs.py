"""Consolidated, read-optimised copies of a label store's format-2 labels (``<root>/packs/``).

Per family (models with the same node list, head count and storage dtype) one node-major array whose node blocks
hold that node's rows of every model, each block with a CRC-32 in ``pack.json`` (written last: a pack is complete
or absent).  :meth:`PackedLabels.read_many` (what selection uses) then reads a query's C nodes as C block reads per
family instead of opening every model's file; models committed after the pack are read from their own files.
:class:`PackedLabels` is the part of :class:`mll_jax.labelling.LabelStore` that builds and reads packs (it uses the
store's ``committed``, ``model_dir``, ``corrupt``, ``read`` and ``model_ids``).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
import zlib
from typing import Sequence

import numpy as np

from mll_jax.errors import LabelStoreCorruptError

from . import layout
from .layout import FORMAT, LABEL_DTYPES, PACK_FORMAT

__all__ = ["PackedLabels"]


class PackedLabels:
    """Pack methods of :class:`mll_jax.labelling.LabelStore` (a base class)."""

    def _packs(self) -> list[dict]:
        """Valid pack documents under ``<root>/packs`` (a pack whose files are damaged is ignored with a warning:
        its models fall back to their own row files)."""
        d = self.root / "packs"
        if not d.is_dir():
            return []
        cache = self.__dict__.setdefault("_pack_docs", {})  # (pack directory, pack.json mtime) -> document
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
                    if doc.get("format") != PACK_FORMAT or doc.get("dtype") not in LABEL_DTYPES:
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
            meta = self.committed(m)[0]
            if meta.get("format") != FORMAT:
                continue  # format 1 models are read from their checkpoints
            groups.setdefault((meta["nodes_sha256"], int(meta["num_heads"]), meta["dtype"]), []).append(m)
        made = []
        (self.root / "packs").mkdir(exist_ok=True)
        for (nodes_sha, h, dtype), members in groups.items():
            metas = [self.committed(m)[0] for m in members]
            n = int(metas[0]["num_nodes"])
            vb = layout.row_dtype(metas[0]).fields["v"][0].itemsize
            name = f"pack-{nodes_sha[:12]}-h{h}-{dtype}-{uuid.uuid4().hex[:8]}"
            pdir = self.root / "packs" / name
            pdir.mkdir()
            try:
                out = np.lib.format.open_memmap(pdir / "rows.tmp.npy", mode="w+", dtype=np.uint8,
                                                shape=(n, len(members), vb))
                for j, m in enumerate(members):  # every model's rows, verified (whole-file checksum) on the way
                    meta, rec = metas[j], layout.row_dtype(metas[j])
                    f = self.model_dir(m) / f"{meta['checkpoint']}.rows"
                    data = f.read_bytes()
                    if layout.sha256(data) != meta["rows_sha256"]:
                        raise self.corrupt(m, f, "label checksum mismatch: edited or damaged")
                    out[:, j, :] = np.frombuffer(data, dtype=rec)["v"].view(np.uint8).reshape(n, vb)
                out.flush()
                crcs = [zlib.crc32(out[i].tobytes(), i) for i in range(n)]
                off = out.offset
                del out
                os.replace(pdir / "rows.tmp.npy", pdir / "rows.npy")
                doc = {"format": PACK_FORMAT, "models": members, "checkpoints": [mt["checkpoint"] for mt in metas],
                       "nodes_sha256": nodes_sha, "num_nodes": n, "num_heads": h, "dtype": dtype,
                       "data_offset": int(off), "block_crc32": crcs}
                layout.write_file(pdir / "pack.json", json.dumps(doc).encode("utf-8"))
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
            meta = self.committed(m)[0]
            for k, doc in enumerate(packs):
                j = doc["_member"].get(m)
                if (j is not None and meta.get("format") == FORMAT and doc["checkpoints"][j] == meta["checkpoint"]
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
        _, _, index = self.committed(mid)  # the node list of every member (same nodes_sha256)
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
            return [layout.to_float32(arr[:, c, :], doc["dtype"]) for c in cols]
        return [layout.to_float32(arr[inv, c, :], doc["dtype"]) for c in cols]

