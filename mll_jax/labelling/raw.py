"""The raw (Eq. 1) cache of a label store: ``<model dir>/raw/raw-<seq>-<hex>.npz`` chunks of node means.

Appended in small atomically written ``.npz`` chunks while labelling runs, keyed by node id and the node's image
content hash, with the model fingerprint they were made under: a killed run restarts where it stopped, and after
nodes are added to (or re-imaged in) the SDAG only those nodes are run through the expert again.
:class:`RawLabelCache` is the part of :class:`mll_jax.labelling.LabelStore` that reads and writes them (it uses
the store's :meth:`~mll_jax.labelling.LabelStore.model_dir` and :meth:`~mll_jax.labelling.LabelStore.corrupt`).
"""

from __future__ import annotations

import io
import re
import shutil
import uuid
from pathlib import Path
from typing import Mapping

import numpy as np

from . import layout
from .layout import NO_FINGERPRINT

__all__ = ["RawLabelCache", "ANY_FINGERPRINT"]

#: ``fingerprint`` default of the raw-cache methods: chunks of every model version
ANY_FINGERPRINT = object()


class RawLabelCache:
    """Raw-cache methods of :class:`mll_jax.labelling.LabelStore` (a base class; the store provides
    ``model_dir(model_id)`` and ``corrupt(model_id, path, problem)``)."""

    def raw_dir(self, model_id: str) -> Path:
        return self.model_dir(model_id) / "raw"

    def raw_files(self, model_id: str) -> list[tuple[int, Path]]:
        """Raw chunks ``raw-<seq>-<hex>.npz`` in the order they apply (later ones win), by (seq, name).

        ``<hex>`` is 32 hex digits (a uuid4; stores written by older versions also hold 8-digit names): two
        processes that list the directory at the same time pick the same ``seq`` but never the same name.  Chunks of equal
        ``seq`` come from one multi-process run, whose units are disjoint node sets, so their order does not
        matter."""
        d = self.raw_dir(model_id)
        if not d.is_dir():
            return []
        out = []
        for p in d.iterdir():
            m = re.match(r"^raw-(\d+)-[0-9a-f]+\.npz$", p.name)
            if m:
                out.append((int(m.group(1)), p))
        return sorted(out)

    def _read_raw_chunk(self, model_id: str, p: Path) -> tuple[str, list, list, np.ndarray]:
        try:
            with np.load(p, allow_pickle=False) as z:
                fp = str(z["fingerprint"]) if "fingerprint" in z.files else NO_FINGERPRINT
                nodes, keys = z["nodes"].tolist(), z["keys"].tolist()
                means = np.asarray(z["means"], dtype=np.float32)
        except Exception as e:  # BadZipFile, KeyError, ValueError, OSError, ...
            raise self.corrupt(model_id, p, f"unreadable raw-label chunk ({type(e).__name__}: {str(e)[:200]}); "
                                f"store.clear_raw({model_id!r}) drops only this cache") from None
        if means.ndim != 2 or len(nodes) != len(keys) or len(nodes) != means.shape[0]:
            raise self.corrupt(model_id, p, "inconsistent raw-label chunk")
        return fp, nodes, keys, means

    def raw_fingerprints(self, model_id: str) -> set[str]:
        """Fingerprints the raw chunks of ``model_id`` were made under (``""``: none recorded)."""
        return {self._read_raw_chunk(model_id, p)[0] for _, p in self.raw_files(model_id)}

    def load_raw(self, model_id: str, fingerprint=ANY_FINGERPRINT) -> dict[str, tuple[str, np.ndarray]]:
        """Persisted Eq. 1 means: {node: (data_key, mean (H,) float32)}; later chunks win.

        With ``fingerprint`` (a string or None) only chunks made under that model fingerprint are used.
        A damaged chunk raises :class:`LabelStoreCorruptError` naming the file and the model.
        """
        want = ANY_FINGERPRINT if fingerprint is ANY_FINGERPRINT else (fingerprint or NO_FINGERPRINT)
        out: dict[str, tuple[str, np.ndarray]] = {}
        for _, p in self.raw_files(model_id):
            fp, nodes, keys, means = self._read_raw_chunk(model_id, p)
            if want is not ANY_FINGERPRINT and fp != want:
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
        d = self.raw_dir(model_id)
        d.mkdir(parents=True, exist_ok=True)
        layout.write_model_id(self.model_dir(model_id), model_id)
        files = self.raw_files(model_id)
        seq = files[-1][0] + 1 if files else 0
        nodes = list(entries)
        buf_path = d / f"raw-{seq:08d}-{uuid.uuid4().hex}.npz"  # unique across processes (see raw_files)
        bio = io.BytesIO()
        np.savez(bio, nodes=np.asarray(nodes, dtype=str), keys=np.asarray([entries[w][0] for w in nodes], dtype=str),
                 means=np.stack([np.asarray(entries[w][1], dtype=np.float32) for w in nodes]),
                 fingerprint=np.asarray(fingerprint or NO_FINGERPRINT, dtype=str))
        layout.write_file(buf_path, bio.getvalue())

    def compact_raw(self, model_id: str, fingerprint=ANY_FINGERPRINT) -> None:
        """Merge the raw chunks of a model into one file (write the merged one first, then delete the rest).

        With ``fingerprint``, chunks of other model versions are dropped.
        """
        files = self.raw_files(model_id)
        if len(files) <= 1 and fingerprint is ANY_FINGERPRINT:
            return
        if fingerprint is ANY_FINGERPRINT:
            fps = {self._read_raw_chunk(model_id, p)[0] for _, p in files}
            if len(fps) > 1:
                raise ValueError(f"raw chunks of {model_id!r} come from several model versions; pass fingerprint")
            fingerprint = next(iter(fps)) if fps else None
        if len(files) <= 1 and self.raw_fingerprints(model_id) <= {fingerprint or NO_FINGERPRINT}:
            return
        merged = self.load_raw(model_id, fingerprint)
        self.append_raw(model_id, merged, fingerprint=fingerprint)
        for _, p in files:
            p.unlink(missing_ok=True)

    def clear_raw(self, model_id: str) -> None:
        shutil.rmtree(self.raw_dir(model_id), ignore_errors=True)

