"""Label readers: the ``LabelStore`` reading API over a label store or plain arrays, and CHCO's inputs.

The label source of a selection is either a :class:`mll_jax.labelling.LabelStore` (anything with
``.read(model_id, wnids)`` and ``.model_ids()``) or a plain mapping handled by :class:`DictLabels`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["DictLabels", "as_label_reader", "label_submatrices"]


class DictLabels:
    """Label source from plain arrays, with the ``LabelStore`` reading API.

    ``labels`` maps ``model_id`` to either

    * an array ``(num_nodes, H)`` whose rows follow the shared ``node_wnids`` index, or
    * a pair ``(array (num_nodes, H), wnids)`` with the model's own row index.

    ``read(model_id, wnids)`` returns the ``(len(wnids), H)`` float32 rows, like ``LabelStore.read``.
    """

    def __init__(self, labels: Mapping[str, Any], node_wnids: Sequence[str] | None = None):
        self._rows: dict[str, np.ndarray] = {}
        self._index: dict[str, dict[str, int]] = {}
        shared = None
        if node_wnids is not None:
            shared = {w: i for i, w in enumerate(node_wnids)}
            if len(shared) != len(node_wnids):
                raise ValueError("node_wnids contains duplicate wnids")
        for model_id, value in labels.items():
            if isinstance(value, tuple) and len(value) == 2:
                rows, wnids = value
                index = {w: i for i, w in enumerate(wnids)}
                if len(index) != len(wnids):
                    raise ValueError(f"labels of model {model_id!r}: duplicate wnids in its row index")
            else:
                rows, index = value, shared
                if index is None:
                    raise ValueError(
                        f"labels of model {model_id!r} are a bare array: pass node_wnids (the shared row "
                        "index) or give a (rows, wnids) pair"
                    )
            rows = np.asarray(rows, dtype=np.float32)
            if rows.ndim != 2:
                raise ValueError(f"labels of model {model_id!r} must be 2-D (num_nodes, H), got {rows.shape}")
            if rows.shape[0] != len(index):
                raise ValueError(
                    f"labels of model {model_id!r} have {rows.shape[0]} rows but its wnid index has "
                    f"{len(index)} entries"
                )
            self._rows[str(model_id)] = rows
            self._index[str(model_id)] = index

    def model_ids(self) -> list[str]:
        return list(self._rows)

    def num_heads(self, model_id: str) -> int:
        return int(self._get(model_id).shape[1])

    def nodes(self, model_id: str) -> list[str]:
        self._get(model_id)
        return list(self._index[model_id])

    def _get(self, model_id: str) -> np.ndarray:
        try:
            return self._rows[model_id]
        except KeyError:
            raise KeyError(f"no labels for model {model_id!r}") from None

    def read(self, model_id: str, wnids: Sequence[str]) -> np.ndarray:
        rows = self._get(model_id)
        index = self._index[model_id]
        missing = [w for w in wnids if w not in index]
        if missing:
            raise KeyError(f"model {model_id!r} has no label rows for wnids {missing[:5]}"
                           + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""))
        return rows[[index[w] for w in wnids]]


def as_label_reader(labels: Any, node_wnids: Sequence[str] | None = None):
    """A LabelStore-like reader (``.read``, ``.model_ids``) for a LabelStore or a plain mapping."""
    if hasattr(labels, "read") and hasattr(labels, "model_ids"):
        if node_wnids is not None:
            raise ValueError("node_wnids is only meaningful for a plain mapping of label arrays")
        return labels
    if isinstance(labels, Mapping):
        return DictLabels(labels, node_wnids)
    raise TypeError(
        f"labels must be a LabelStore (with .read/.model_ids) or a mapping model_id -> rows, got {type(labels)}"
    )


def label_submatrices(labels: Any, model_ids: Sequence[str], wnids: Sequence[str]) -> list[np.ndarray]:
    """CHCO inputs: ``S_m = labels.read(m, wnids).T`` of shape ``(H_m, C)`` for every model, checked finite."""
    reader = as_label_reader(labels)
    out = []
    many = reader.read_many(list(model_ids), list(wnids)) if hasattr(reader, "read_many") else None
    for i, model_id in enumerate(model_ids):
        rows = np.asarray(reader.read(model_id, list(wnids)) if many is None else many[i])
        if rows.ndim != 2 or rows.shape[0] != len(wnids):
            raise ValueError(
                f"label store returned shape {rows.shape} for model {model_id!r}; expected ({len(wnids)}, H)"
            )
        if not np.all(np.isfinite(rows)):
            bad = sorted({wnids[i] for i in np.nonzero(~np.isfinite(rows).all(axis=1))[0]})
            raise ValueError(f"labels of model {model_id!r} are not finite at wnids {bad[:5]}")
        out.append(np.ascontiguousarray(rows.T))
    return out
