"""The selection entry point :func:`select_models` and its thin wrappers :func:`select_experts` (CHCO) and
:func:`baseline_selection` (Random, HEU, LogME, LEEP)."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import numpy as np

from mll_jax.selection.columns import fill_columns
from mll_jax.selection.labels import as_label_reader
from mll_jax.selection.registry import get_scorer
from mll_jax.selection.rule import expand_classes, select
from mll_jax.selection.scorers import SCORER_ONLY_OPTIONS
from mll_jax.selection.types import ModelScores, Scorer, ScoringTask, Selection

__all__ = ["select_models", "select_experts", "baseline_selection"]


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
    chco_opts = {k_: v for k_, v in options.items() if k_ not in SCORER_ONLY_OPTIONS}
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


def baseline_selection(
    method: str,
    labels: Any,
    wnids: Sequence[str | None],
    *,
    k: int = 3,
    beta: float | None = None,
    model_ids: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    node_wnids: Sequence[str] | None = None,
    outputs: Sequence[np.ndarray] | None = None,
    output_labels=None,
    seed: int = 0,
    columns: str = "chco",
    link: str = "softmax",
    progress: bool = False,
    **solver_kwargs,
) -> Selection:
    """A baseline in the selection slot: :func:`mll_jax.selection.select_models` with ``scorer=method``.

    ``method``: ``"random"``, ``"heu"`` (labels only), ``"logme"`` or ``"leep"`` (need ``outputs``: per
    candidate model its logits on the target node images, and ``output_labels``, their class ids over ALL
    classes; see :func:`target_node_data` and :func:`expert_outputs`).  ``beta`` applies to HEU only.
    """
    if method not in ("random", "heu", "logme", "leep"):
        raise ValueError(f"unknown baseline {method!r}; expected random, heu, logme or leep")
    node_data: Callable | None = None
    if method in ("logme", "leep"):
        if outputs is None or output_labels is None:
            raise ValueError(f"{method} needs outputs (model logits on the target node images) and output_labels")
        wnids = list(wnids)
        matched = [c for c, w in enumerate(wnids) if w is not None]
        remap = np.full(len(wnids), -1, np.int64)
        remap[matched] = np.arange(len(matched))
        lab = remap[np.asarray(output_labels, np.int64)]
        keep = lab >= 0

        def given_outputs(_model_ids, _wnids):
            return [np.asarray(z)[keep] for z in outputs], lab[keep]

        node_data = given_outputs
    return select_models(labels, wnids, scorer=method, k=k, beta=beta, model_ids=model_ids,
                         class_names=class_names, node_wnids=node_wnids, node_data=node_data, columns=columns,
                         progress=progress, seed=seed, link=link, **solver_kwargs)
