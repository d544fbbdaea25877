"""CHCO scoring and one-vs-rest predictor columns.

CHCO returns, per model, a per-class loss ``L_c^m`` (lower is better) and a matrix ``X_m`` whose column ``x_c^m``
turns the model's heads into a one-vs-rest predictor for class ``c``: ``score_c(x) = softmax(f_m(x)) @ x_c^m``.
Scorers that do not produce columns (Random, LogME, LEEP) get them from :func:`fill_columns` (CHCO columns by
default) so that only the *selection* differs between methods.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np

from mll_jax import chco
from mll_jax.selection.labels import as_label_reader, label_submatrices
from mll_jax.selection.types import ModelScores, Selection

__all__ = ["chco_scores", "argmax_columns", "fill_columns", "head_probabilities"]


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
    Existing columns are kept.  Unmatched classes (``wnid is None``) get zero columns.  With a single matched class
    CHCO's loss is undefined (it needs a class to contrast with), so the columns are ``"argmax"`` ones.  Every used
    model also gets its head probabilities on the matched nodes (``Selection.head_mass``, for
    :meth:`Selection.explain`).
    """
    if how not in ("chco", "argmax"):
        raise ValueError(f"how must be 'chco' or 'argmax', got {how!r}")
    missing = selection.missing_columns()
    no_mass = [m for m in selection.used_model_ids if m not in selection.head_mass]
    if not missing and not no_mass:
        return selection
    if selection.wnids is None:
        if missing:
            raise ValueError("selection has no wnids: cannot read labels to compute predictor columns")
        return selection
    matched = [c for c, w in enumerate(selection.wnids) if w is not None]
    todo = list(dict.fromkeys(missing + no_mass))
    S_all = dict(zip(todo, label_submatrices(as_label_reader(labels, node_wnids), todo,
                                             [selection.wnids[c] for c in matched])))
    columns = dict(selection.columns)
    if missing:
        S_list = [S_all[m] for m in missing]
        if how == "chco" and len(matched) >= 2:
            cols = chco_scores(S_list, missing, progress=progress, **solver_kwargs).columns
        else:
            cols = tuple(argmax_columns(S) for S in S_list)
        for model_id, x in zip(missing, cols):
            full = np.zeros((x.shape[0], selection.num_classes), np.float32)
            full[:, matched] = x
            columns[model_id] = full
    head_mass = dict(selection.head_mass)
    for model_id in no_mass:
        head_mass[model_id] = head_probabilities(S_all[model_id], matched, selection.num_classes)
    return replace(selection, columns=columns, head_mass=head_mass)


def head_probabilities(S: np.ndarray, matched: Sequence[int], num_classes: int) -> np.ndarray:
    """``(H, num_classes)`` float32: ``softmax(S, axis=0)`` (CHCO's ``P``) of the label sub-matrix ``S`` (one column
    per matched class, in order) placed at the ``matched`` classes; zero columns elsewhere."""
    S = np.asarray(S, np.float64)
    out = np.zeros((S.shape[0], num_classes), np.float32)
    if S.shape[1]:
        e = np.exp(S - S.max(axis=0, keepdims=True))
        out[:, list(matched)] = e / e.sum(axis=0, keepdims=True)
    return out
