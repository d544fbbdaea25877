"""Model selection (MLL step 2): score every hub model per target class, keep the best experts.

Pipeline (CHCO, the method of the paper)::

    labels  --read-->  S_m (H_m, C) per model  --chco.solve_batch-->  loss (M, C), X_m (H_m, C)
            --select_top_k(k, beta)-->  Selection

* ``S_m[h, c]`` is model ``m``'s label value of head ``h`` at the SDAG node matched to target class ``c``
  (rows of the label store, transposed).
* CHCO returns, per model, a per-class loss ``L_c^m`` (lower is better) and a matrix ``X_m`` whose column
  ``x_c^m`` turns the model's heads into a one-vs-rest predictor for class ``c``:
  ``score_c(x) = softmax(f_m(x)) @ x_c^m``.
* For each class we keep up to ``k`` experts whose loss is at most ``beta`` (inclusive), lowest loss first;
  ties are broken by the candidate order (lower model index first), so selection is deterministic.
  Non-finite losses (``nan``, ``+-inf``) are never eligible.  A class with no expert is *uncovered* and is
  handled by the VLM patch at reuse time (:mod:`mll_jax.reuse`).
* Classes whose name matched no SDAG node (``wnid is None``) are uncovered by construction: CHCO is solved
  on the matched classes only and the unmatched columns get ``loss = +inf`` and zero columns.

Every scorer (CHCO here, Random / HEU / LogME / LEEP in :mod:`mll_jax.baselines`) produces the same
:class:`ModelScores` (a lower-is-better ``(M, C)`` matrix plus optional columns), so baselines plug into the
same :func:`select` slot.  Scorers that do not produce columns (Random, LogME, LEEP) get them from
:func:`fill_columns` (CHCO columns by default) so that only the *selection* differs between methods.

The label source is either a :class:`mll_jax.labelling.LabelStore` (anything with ``.read(model_id, wnids)``
and ``.model_ids()``) or a plain mapping handled by :class:`DictLabels`.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mll_jax.utils import atomic_write

__all__ = [
    "DictLabels",
    "as_label_reader",
    "label_submatrices",
    "ModelScores",
    "Selection",
    "select_top_k",
    "expand_classes",
    "chco_scores",
    "argmax_columns",
    "fill_columns",
    "select",
    "ScoringTask",
    "Scorer",
    "register_scorer",
    "get_scorer",
    "scorers",
    "select_models",
    "select_experts",
]


# --------------------------------------------------------------------------------------------------
# Label sources
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Scores and selection results
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelScores:
    """Output of any scorer: a lower-is-better ``(M, C)`` matrix, optionally with one-vs-rest columns.

    ``loss[m, c]`` ranks model ``m`` for class ``c`` (CHCO / HEU: the per-class loss; Random: a random
    key; LogME / LEEP: the negated per-class score).  ``+inf`` marks "not eligible".  ``columns[m]`` is
    ``(H_m, C)``: the model's one-vs-rest predictor columns, or ``None`` when the scorer has none.
    """

    method: str
    model_ids: tuple[str, ...]
    loss: np.ndarray
    columns: tuple[np.ndarray, ...] | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "model_ids", tuple(str(m) for m in self.model_ids))
        loss = np.asarray(self.loss, dtype=np.float64)
        if loss.ndim != 2 or loss.shape[0] != len(self.model_ids):
            raise ValueError(f"{self.method}: loss must be (M={len(self.model_ids)}, C), got {loss.shape}")
        object.__setattr__(self, "loss", loss)
        if self.columns is not None:
            cols = tuple(np.asarray(x, dtype=np.float32) for x in self.columns)
            if len(cols) != len(self.model_ids):
                raise ValueError(f"{self.method}: {len(cols)} column matrices for {len(self.model_ids)} models")
            for model_id, x in zip(self.model_ids, cols):
                if x.ndim != 2 or x.shape[1] != loss.shape[1]:
                    raise ValueError(
                        f"{self.method}: columns of model {model_id!r} have shape {x.shape}, expected (H, {loss.shape[1]})"
                    )
            object.__setattr__(self, "columns", cols)

    @property
    def num_classes(self) -> int:
        return int(self.loss.shape[1])


@dataclass(frozen=True)
class Selection:
    """Experts per target class.

    Attributes:
      method: scorer name ("chco", "random", "heu", "logme", "leep", ...).
      model_ids: the candidate models (rows of ``loss``).
      loss: ``(M, C)`` lower-is-better scores used for the ranking.
      experts: per class, indices into ``model_ids``, best first (empty tuple: uncovered).
      columns: ``model_id -> (H_m, C)`` one-vs-rest columns for every model used by some class
        (may be empty until :func:`fill_columns` is applied).
      k, beta: the reuse budget and the loss threshold (``None``: no threshold).
      class_names, wnids: the target classes (``wnids[c] is None``: matched no SDAG node).
      similarities: per class, the text similarity of its matched node (of the best node when unmatched).
      match_threshold: the similarity floor the matching used (for the explanation of uncovered classes).
      info: scorer diagnostics (e.g. CHCO iterations / convergence), JSON-able values only after save/load.
    """

    method: str
    model_ids: tuple[str, ...]
    loss: np.ndarray
    experts: tuple[tuple[int, ...], ...]
    columns: Mapping[str, np.ndarray]
    k: int
    beta: float | None
    class_names: tuple[str, ...] | None = None
    wnids: tuple[str | None, ...] | None = None
    similarities: tuple[float, ...] | None = None
    match_threshold: float | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.experts)

    def uncovered_reason(self, c: int) -> str | None:
        """Why class ``c`` has no expert (``None`` when it is covered)."""
        if self.experts[c]:
            return None
        sim = None if self.similarities is None else self.similarities[c]
        if self.wnids is not None and self.wnids[c] is None:
            thr = "" if self.match_threshold is None else f" < threshold {self.match_threshold:.2f}"
            best = "" if sim is None or not np.isfinite(sim) else f" (best similarity {sim:.2f}{thr})"
            return f"no SDAG node matched the class name{best}"
        if self.wnids is not None and sum(w is not None for w in self.wnids) < 2 and self.method in ("chco", "heu"):
            return "fewer than 2 classes matched an SDAG node: a one-vs-rest score needs at least 2"
        col = self.loss[:, c] if len(self.model_ids) else np.zeros(0)
        finite = np.isfinite(col)
        if not finite.any():
            return "no model has a usable score for the matched node"
        m = int(np.argmin(np.where(finite, col, np.inf)))
        if self.beta is not None:
            return (f"no model under the loss threshold beta={self.beta:g} (best: {self.model_ids[m]!r} with "
                    f"loss {col[m]:.3f})")
        return "no eligible model"  # pragma: no cover - every finite loss is eligible without a threshold

    def explain(self) -> list[dict]:
        """Per class: matched node, similarity, experts (id, loss, top heads of its predictor column)
        or the reason it is uncovered."""
        out = []
        for c in range(self.num_classes):
            row = {
                "class": self.class_names[c] if self.class_names else str(c),
                "node": None if self.wnids is None else self.wnids[c],
                "similarity": None if self.similarities is None else float(self.similarities[c]),
                "experts": [],
                "uncovered": self.uncovered_reason(c),
            }
            for m in self.experts[c]:
                mid = self.model_ids[m]
                e = {"model": mid, "loss": float(self.loss[m, c]), "heads": []}
                x = self.columns.get(mid)
                if x is not None:
                    col = np.asarray(x)[:, c]
                    for h in np.argsort(-col, kind="stable")[:5]:
                        if col[h] > 1e-3:
                            e["heads"].append({"head": int(h), "weight": float(col[h])})
                row["experts"].append(e)
            out.append(row)
        return out

    @property
    def covered(self) -> np.ndarray:
        """``(C,)`` bool: the class has at least one expert."""
        return np.array([len(e) > 0 for e in self.experts], dtype=bool)

    @property
    def uncovered(self) -> list[int]:
        return [c for c, e in enumerate(self.experts) if not e]

    @property
    def used_model_ids(self) -> tuple[str, ...]:
        """Models selected for at least one class, in candidate order."""
        used = sorted({m for e in self.experts for m in e})
        return tuple(self.model_ids[m] for m in used)

    def expert_ids(self, c: int) -> list[str]:
        return [self.model_ids[m] for m in self.experts[c]]

    def mask(self, model_ids: Sequence[str] | None = None) -> np.ndarray:
        """``(len(model_ids), C)`` bool: model selected for class (default rows: :attr:`used_model_ids`)."""
        model_ids = self.used_model_ids if model_ids is None else tuple(model_ids)
        row = {m: i for i, m in enumerate(model_ids)}
        out = np.zeros((len(model_ids), self.num_classes), dtype=bool)
        for c, experts in enumerate(self.experts):
            for m in experts:
                mid = self.model_ids[m]
                if mid in row:
                    out[row[mid], c] = True
        return out

    def missing_columns(self) -> list[str]:
        return [m for m in self.used_model_ids if m not in self.columns]

    def summary(self) -> str:
        cov = self.covered
        lines = [
            f"{self.method}: {int(cov.sum())}/{self.num_classes} classes covered, "
            f"{len(self.used_model_ids)} of {len(self.model_ids)} models used (k={self.k}, beta={self.beta})"
        ]
        for c, experts in enumerate(self.experts):
            name = self.class_names[c] if self.class_names else str(c)
            picks = (", ".join(f"{self.model_ids[m]} ({self.loss[m, c]:.4g})" for m in experts)
                     or f"-- (patch: {self.uncovered_reason(c)})")
            lines.append(f"  {name}: {picks}")
        return "\n".join(lines)

    # --- persistence (atomic: temp file + rename) ---------------------------------------------------

    def save(self, path: str | os.PathLike, *, extra: Mapping[str, Any] | None = None) -> None:
        """Write to an ``.npz`` file atomically (``extra``: JSON-able metadata kept alongside)."""
        path = os.fspath(path)
        meta = {
            "method": self.method,
            "model_ids": list(self.model_ids),
            "experts": [list(e) for e in self.experts],
            "column_ids": list(self.columns),
            "k": self.k,
            "beta": self.beta,
            "class_names": None if self.class_names is None else list(self.class_names),
            "wnids": None if self.wnids is None else list(self.wnids),
            "similarities": None if self.similarities is None else [float(x) for x in self.similarities],
            "match_threshold": self.match_threshold,
            "extra": dict(extra or {}),
        }
        arrays = {"loss": self.loss, "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
        for i, model_id in enumerate(self.columns):
            arrays[f"col{i}"] = np.asarray(self.columns[model_id])
        atomic_write(path, lambda fh: np.savez(fh, **arrays))

    @staticmethod
    def read_extra(path: str | os.PathLike) -> dict:
        """The ``extra`` metadata written by :meth:`save`."""
        return Selection._read(path)[0].get("extra") or {}

    @staticmethod
    def _read(path):
        path = os.fspath(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data["meta"]).decode())
                columns = {m: np.array(data[f"col{i}"]) for i, m in enumerate(meta["column_ids"])}
                loss = np.array(data["loss"])
        except FileNotFoundError:
            raise FileNotFoundError(f"no saved selection at {path}") from None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path} is not a readable saved selection ({type(e).__name__}: {e})") from e
        return meta, columns, loss

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Selection":
        meta, columns, loss = cls._read(path)
        return cls(
            method=meta["method"],
            model_ids=tuple(meta["model_ids"]),
            loss=loss,
            experts=tuple(tuple(e) for e in meta["experts"]),
            columns=columns,
            k=meta["k"],
            beta=meta["beta"],
            class_names=None if meta["class_names"] is None else tuple(meta["class_names"]),
            wnids=None if meta["wnids"] is None else tuple(meta["wnids"]),
            similarities=None if meta.get("similarities") is None else tuple(meta["similarities"]),
            match_threshold=meta.get("match_threshold"),
        )


# --------------------------------------------------------------------------------------------------
# Pure selection rule
# --------------------------------------------------------------------------------------------------


def select_top_k(loss, k: int, beta=None):
    """Top-``k`` eligible models per class (pure, jit-able with static ``k``).

    Args:
      loss: ``(M, C)``; lower is better.  Eligible: finite and ``loss <= beta`` (``beta=None``: no threshold).
      k: reuse budget (>= 1).  When fewer than ``k`` models are eligible the rest is padding.
      beta: scalar threshold or ``None``.

    Returns:
      ``(idx, valid)``, both ``(C, k)``: ``idx[c, j]`` is the ``j``-th best model for class ``c`` (``-1`` where
      ``valid`` is False).  Ties keep the candidate order (stable sort: lower model index first).
    """
    if int(k) != k or k < 1:
        raise ValueError(f"reuse budget k must be a positive integer, got {k!r}")
    k = int(k)
    loss = jnp.asarray(loss)
    if loss.ndim != 2:
        raise ValueError(f"loss must be (M, C), got shape {loss.shape}")
    num_models = loss.shape[0]
    eligible = jnp.isfinite(loss)
    if beta is not None:
        eligible = eligible & (loss <= beta)
    key = jnp.where(eligible, loss, jnp.inf)
    kk = min(k, num_models)
    order = jnp.argsort(key, axis=0, stable=True)[:kk]  # (kk, C)
    valid = jnp.take_along_axis(eligible, order, axis=0)
    idx = jnp.where(valid, order, -1).astype(jnp.int32)
    if kk < k:
        pad = k - kk
        idx = jnp.concatenate([idx, -jnp.ones((pad, loss.shape[1]), jnp.int32)], axis=0)
        valid = jnp.concatenate([valid, jnp.zeros((pad, loss.shape[1]), bool)], axis=0)
    return idx.T, valid.T


def expand_classes(scores: ModelScores, class_index: Sequence[int], num_classes: int) -> ModelScores:
    """Embed scores computed on a subset of classes (``class_index``) into ``num_classes`` columns.

    The other classes get ``loss = +inf`` (never eligible) and zero predictor columns.
    """
    class_index = np.asarray(class_index, dtype=np.int64)
    if class_index.shape != (scores.num_classes,):
        raise ValueError(f"class_index has {class_index.size} entries for {scores.num_classes} scored classes")
    loss = np.full((len(scores.model_ids), num_classes), np.inf)
    loss[:, class_index] = scores.loss
    columns = None
    if scores.columns is not None:
        columns = []
        for x in scores.columns:
            full = np.zeros((x.shape[0], num_classes), np.float32)
            full[:, class_index] = x
            columns.append(full)
        columns = tuple(columns)
    return replace(scores, loss=loss, columns=columns)


def select(
    scores: ModelScores,
    *,
    k: int,
    beta: float | None = None,
    class_names: Sequence[str] | None = None,
    wnids: Sequence[str | None] | None = None,
    similarities: Sequence[float] | None = None,
    match_threshold: float | None = None,
) -> Selection:
    """Apply the selection rule (:func:`select_top_k`) to any scorer's :class:`ModelScores`."""
    num_classes = scores.num_classes
    for name, seq in (("class_names", class_names), ("wnids", wnids), ("similarities", similarities)):
        if seq is not None and len(seq) != num_classes:
            raise ValueError(f"{name} has {len(seq)} entries but the scores cover {num_classes} classes")
    if beta is not None and not np.isscalar(beta):
        raise ValueError(f"beta must be a scalar or None, got {beta!r}")
    if len(scores.model_ids) == 0:
        idx = np.zeros((num_classes, k), np.int32) - 1
        valid = np.zeros((num_classes, k), bool)
    else:
        idx, valid = jax.device_get(select_top_k(scores.loss, k, beta))
    experts = tuple(tuple(int(i) for i, v in zip(row, ok) if v) for row, ok in zip(idx, valid))
    used = sorted({m for e in experts for m in e})
    columns = {}
    if scores.columns is not None:
        columns = {scores.model_ids[m]: scores.columns[m] for m in used}
    return Selection(
        method=scores.method,
        model_ids=scores.model_ids,
        loss=scores.loss,
        experts=experts,
        columns=columns,
        k=int(k),
        beta=None if beta is None else float(beta),
        class_names=None if class_names is None else tuple(class_names),
        wnids=None if wnids is None else tuple(wnids),
        similarities=None if similarities is None else tuple(float(x) for x in similarities),
        match_threshold=None if match_threshold is None else float(match_threshold),
        info=dict(scores.info),
    )


# --------------------------------------------------------------------------------------------------
# CHCO scoring and predictor columns
# --------------------------------------------------------------------------------------------------


def chco_scores(
    S_list: Sequence[np.ndarray],
    model_ids: Sequence[str],
    *,
    method: str | None = None,
    tol: float = 1e-5,
    chunk_size: int | None = None,
    progress: bool = True,
    solver: Callable | None = None,
    **solver_kwargs,
) -> ModelScores:
    """Score every model on every class with CHCO (``mll_jax.chco.solve_batch``).

    ``method``: the CHCO algorithm (``None``: ``chco.DEFAULT_METHOD``, the default of ``chco.solve_batch``).
    ``solver`` replaces ``chco.solve_batch`` (same signature and result fields); it is meant for tests
    and experiments with other solvers.  Extra keyword arguments (``max_iter``, ``atol``, ``dtype``, ...)
    go to the solver.
    """
    if len(S_list) != len(model_ids):
        raise ValueError(f"{len(S_list)} label sub-matrices for {len(model_ids)} model ids")
    if len(S_list) == 0:
        raise ValueError("no candidate models to score")
    num_classes = {np.shape(S)[1] for S in S_list}
    if len(num_classes) != 1:
        raise ValueError(f"label sub-matrices disagree on the number of classes: {sorted(num_classes)}")
    from mll_jax import chco

    if method is None:
        method = chco.DEFAULT_METHOD
    if solver is None:
        solver = chco.solve_batch
    res = solver(
        list(S_list), method=method, tol=tol, chunk_size=chunk_size, model_ids=list(model_ids), progress=progress,
        **solver_kwargs,
    )
    loss = np.asarray(res.loss, dtype=np.float64)
    converged = np.asarray(getattr(res, "converged", np.ones(len(model_ids), bool)))
    if not converged.all():
        bad = [m for m, ok in zip(model_ids, converged) if not ok]
        warnings.warn(f"CHCO did not converge (tol={tol}) for models {bad[:5]}"
                      + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""), RuntimeWarning, stacklevel=2)
    info = {
        "objective": np.asarray(getattr(res, "objective", np.full(len(model_ids), np.nan))),
        "iterations": np.asarray(getattr(res, "iterations", np.zeros(len(model_ids)))),
        "converged": converged,
        "solver_method": method,
    }
    return ModelScores("chco", tuple(model_ids), loss, tuple(np.asarray(x) for x in res.X), info)


def argmax_columns(S: np.ndarray) -> np.ndarray:
    """One-hot predictor columns: for class ``c`` the head with the largest label value ``S[h, c]``."""
    S = np.asarray(S)
    X = np.zeros(S.shape, np.float32)
    X[np.argmax(S, axis=0), np.arange(S.shape[1])] = 1.0
    return X


def fill_columns(
    selection: Selection,
    labels: Any,
    *,
    how: str = "chco",
    node_wnids: Sequence[str] | None = None,
    progress: bool = False,
    **solver_kwargs,
) -> Selection:
    """Give every used model of ``selection`` its one-vs-rest columns, computed from the labels.

    ``how="chco"``: CHCO columns (solved only for the used models, on the matched classes);
    ``how="argmax"``: one-hot on the head with the largest label value per class (:func:`argmax_columns`).
    Existing columns are kept.  Unmatched classes (``wnid is None``) get zero columns.
    """
    if how not in ("chco", "argmax"):
        raise ValueError(f"how must be 'chco' or 'argmax', got {how!r}")
    missing = selection.missing_columns()
    if not missing:
        return selection
    if selection.wnids is None:
        raise ValueError("selection has no wnids: cannot read labels to compute predictor columns")
    matched = [c for c, w in enumerate(selection.wnids) if w is not None]
    S_list = label_submatrices(as_label_reader(labels, node_wnids), missing, [selection.wnids[c] for c in matched])
    if how == "chco":
        sc = chco_scores(S_list, missing, progress=progress, **solver_kwargs)
        cols = sc.columns
    else:
        cols = tuple(argmax_columns(S) for S in S_list)
    columns = dict(selection.columns)
    for model_id, x in zip(missing, cols):
        full = np.zeros((x.shape[0], selection.num_classes), np.float32)
        full[:, matched] = x
        columns[model_id] = full
    return replace(selection, columns=columns)


# --------------------------------------------------------------------------------------------------
# Scorers and the one selection entry point
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoringTask:
    """What a scorer sees: the label reader, the candidate models and the matched classes' nodes.

    ``wnids`` holds only the matched classes (no ``None``); a scorer returns :class:`ModelScores` with one column
    per entry of ``wnids``.  ``node_data(model_ids, wnids) -> (outputs, labels)`` gives, for scorers that need
    target data (LogME, LEEP), every model's logits on the nodes' representative images and their class ids
    (``None`` when no image source is available).  ``options`` carries scorer options (``seed``, ``link``, the
    CHCO ``method`` / ``tol`` / solver keyword arguments).
    """

    labels: Any
    model_ids: tuple[str, ...]
    wnids: tuple[str, ...]
    node_data: Callable[[Sequence[str], Sequence[str]], tuple[list, np.ndarray]] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    progress: bool = False


@dataclass(frozen=True)
class Scorer:
    """A named scorer: ``fn(task: ScoringTask) -> ModelScores`` (lower is better).

    ``uses_beta``: the loss threshold applies to its scores (CHCO and HEU share CHCO's loss scale);
    ``min_classes``: classes that must be matched for it to score at all (one-vs-rest scores need 2).
    """

    name: str
    fn: Callable[[ScoringTask], ModelScores]
    uses_beta: bool = False
    min_classes: int = 1


_SCORERS: dict[str, Scorer] = {}
#: Options meant for the baseline scorers, never passed on to the CHCO solver.
_SCORER_ONLY_OPTIONS = ("seed", "link", "features", "logdet")


def register_scorer(name: str, fn: Callable[[ScoringTask], ModelScores], *, uses_beta: bool = False,
                    min_classes: int = 1, overwrite: bool = False) -> Scorer:
    """Make ``fn`` available to :func:`select_models` (and the system / CLI) as ``scorer=name``."""
    if not isinstance(name, str) or not name:
        raise ValueError("a scorer needs a non-empty name")
    if not callable(fn):
        raise TypeError(f"scorer {name!r}: fn must be callable")
    if name in _SCORERS and not overwrite:
        raise ValueError(f"scorer {name!r} is already registered (pass overwrite=True to replace it)")
    _SCORERS[name] = Scorer(name, fn, bool(uses_beta), int(min_classes))
    return _SCORERS[name]


def get_scorer(name: str) -> Scorer:
    import mll_jax.baselines  # noqa: F401  (registers random, heu, logme, leep)

    if isinstance(name, Scorer):
        return name
    if name not in _SCORERS:
        raise ValueError(f"unknown scorer {name!r}; available: {sorted(_SCORERS)}")
    return _SCORERS[name]


def scorers() -> list[str]:
    """Names of the registered scorers."""
    get_scorer("chco")
    return sorted(_SCORERS)


def _chco_scorer(task: ScoringTask) -> ModelScores:
    opts = dict(task.options)
    S_list = label_submatrices(task.labels, task.model_ids, task.wnids)
    return chco_scores(S_list, task.model_ids, method=opts.pop("method", None), tol=opts.pop("tol", 1e-5),
                       progress=task.progress, **{k: v for k, v in opts.items() if k not in _SCORER_ONLY_OPTIONS})


register_scorer("chco", _chco_scorer, uses_beta=True, min_classes=2)


def select_models(
    labels: Any,
    wnids: Sequence[str | None],
    *,
    scorer: str | Scorer = "chco",
    k: int,
    beta: float | None = None,
    model_ids: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    similarities: Sequence[float] | None = None,
    match_threshold: float | None = None,
    node_wnids: Sequence[str] | None = None,
    node_data: Callable | None = None,
    columns: str = "chco",
    progress: bool = False,
    **options,
) -> Selection:
    """The selection entry point: score every candidate model per class, keep the top ``k`` (under ``beta``
    for scorers whose losses have CHCO's scale), and give every used model its predictor columns.

    ``scorer``: ``"chco"`` (the MLL method), ``"random"``, ``"heu"``, ``"logme"``, ``"leep"`` or any name given
    to :func:`register_scorer`.  Unmatched classes (``wnids[c] is None``) are uncovered; with fewer matched
    classes than the scorer needs, every class is uncovered (``Selection.uncovered_reason`` says why).
    ``columns``: how models get predictor columns when the scorer gives none (``"chco"`` or ``"argmax"``).
    ``options`` go to the scorer (CHCO: ``method``, ``tol``, ``solver`` and solver keywords; Random: ``seed``).
    """
    sc = get_scorer(scorer)
    reader = as_label_reader(labels, node_wnids)
    model_ids = tuple(reader.model_ids() if model_ids is None else model_ids)
    wnids = list(wnids)
    C = len(wnids)
    matched = [c for c, w in enumerate(wnids) if w is not None]
    meta = dict(class_names=class_names, wnids=wnids, similarities=similarities, match_threshold=match_threshold)
    beta = beta if sc.uses_beta else None
    if not model_ids or len(matched) < sc.min_classes:
        scores = ModelScores(sc.name, model_ids, np.full((len(model_ids), C), np.inf))
        return select(scores, k=k, beta=beta, **meta)
    task = ScoringTask(reader, model_ids, tuple(wnids[c] for c in matched), node_data, dict(options), progress)
    scores = sc.fn(task)
    if not isinstance(scores, ModelScores) or scores.loss.shape != (len(model_ids), len(matched)):
        raise ValueError(f"scorer {sc.name!r} returned {type(scores).__name__} with loss shape "
                         f"{getattr(getattr(scores, 'loss', None), 'shape', None)}; expected ModelScores with "
                         f"({len(model_ids)}, {len(matched)})")
    scores = expand_classes(scores, matched, C)
    sel = select(scores, k=k, beta=beta, **meta)
    chco_opts = {k_: v for k_, v in options.items() if k_ not in _SCORER_ONLY_OPTIONS}
    return fill_columns(sel, reader, how=columns, progress=progress, **chco_opts)


def select_experts(
    labels: Any,
    wnids: Sequence[str | None],
    *,
    k: int = 3,
    beta: float | None = None,
    model_ids: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    node_wnids: Sequence[str] | None = None,
    method: str | None = None,
    tol: float = 1e-5,
    chunk_size: int | None = None,
    progress: bool = True,
    solver: Callable | None = None,
    **solver_kwargs,
) -> Selection:
    """CHCO selection (the MLL method): :func:`select_models` with ``scorer="chco"``.

    ``method``, ``tol``, ``chunk_size``, ``solver`` and ``**solver_kwargs`` go to :func:`chco_scores`.  CHCO
    needs at least two matched classes (its loss contrasts a class with the others); with fewer, every class
    is left uncovered (a ``RuntimeWarning`` says so) and the reuse step falls back to the patch.
    """
    reader = as_label_reader(labels, node_wnids)
    if model_ids is None and not reader.model_ids():
        raise ValueError("no candidate models: the label source is empty and no model_ids were given")
    n_matched = sum(w is not None for w in wnids)
    if n_matched < 2:
        warnings.warn(
            f"only {n_matched} of {len(wnids)} target classes matched an SDAG node; CHCO needs at least 2, "
            "so every class is left to the patch", RuntimeWarning, stacklevel=2,
        )
    return select_models(reader, wnids, scorer="chco", k=k, beta=beta, model_ids=model_ids,
                         class_names=class_names, progress=progress, method=method, tol=tol,
                         chunk_size=chunk_size, solver=solver, **solver_kwargs)
