"""Upgrade format-1 label stores (orbax checkpoints) to the checksummed row files of format 2, in place.

Format 1 verifies a model's whole matrix only when it is read whole; a row read (:meth:`LabelStore.read`) is not
checked.  Format 2 carries a CRC-32 per row.  :func:`upgrade_label_store` rewrites every format-1 model of a store
through :class:`mll_jax.labelling.LabelStore`'s public API: :meth:`~LabelStore.read_all` (which verifies the
whole-matrix checksum first; a damaged model raises :class:`LabelStoreCorruptError` and is left as it is) and
:meth:`~LabelStore.commit` into format 2, float32 (the values are bitwise those of format 1).  Node order, head
names, delta, fingerprint and the index's extra fields (``num_images``) are kept.  Each model's commit is atomic
(new files first, then the small ``meta.json`` is replaced, then the old checkpoint removed), so an interrupted
upgrade leaves every model in format 1 or in format 2, readable either way; run it again to finish.  The raw
(Eq. 1) cache is not touched.  Run it as a writer (:func:`mll_jax.locking.writer_lock`).
"""

from __future__ import annotations

import os
from typing import Sequence

from mll_jax.labelling import LabelStore

__all__ = ["FORMAT_1", "FORMAT_2", "label_format", "upgrade_label_store"]

FORMAT_1 = "mll_jax.labels/1"
FORMAT_2 = "mll_jax.labels/2"

# meta.json fields (the rest of LabelStore.info() comes from the row index: head_names and the extra fields)
_META_FIELDS = frozenset({"format", "model_id", "num_heads", "num_nodes", "delta", "checkpoint", "index", "dtype",
                          "nodes_sha256", "rows_sha256", "use_zarr3", "labels_sha256", "fingerprint",
                          "index_sha256"})


def label_format(store: LabelStore, model_id: str) -> str:
    """The format string of ``model_id``'s committed labels (:data:`FORMAT_1` for stores older than formats)."""
    return str(store.info(model_id).get("format") or FORMAT_1)


def upgrade_label_store(store: "LabelStore | str | os.PathLike", model_ids: Sequence[str] | None = None
                        ) -> list[str]:
    """Rewrite the format-1 models of ``store`` (default: all its models) in format 2; returns the ids upgraded
    (models already in format 2 are left alone).  See the module doc."""
    src = store if isinstance(store, LabelStore) else LabelStore(store)
    dst = LabelStore(src.root, dtype="float32", format=2)
    ids = src.model_ids() if model_ids is None else list(model_ids)
    done = []
    for mid in ids:
        info = src.info(mid)
        if (info.get("format") or FORMAT_1) != FORMAT_1:
            continue
        nodes, labels = src.read_all(mid)
        extra = {k: v for k, v in info.items() if k not in _META_FIELDS and k != "head_names"}
        dst.commit(mid, nodes, labels, delta=info.get("delta"), head_names=info.get("head_names"),
                   extra=extra, fingerprint=info.get("fingerprint"))
        done.append(mid)
    return done
