"""The selection rule: per class the top ``k`` eligible models (loss ``<= beta``), lowest loss first.

Ties are broken by the candidate order (lower model index first), so selection is deterministic.  Non-finite
losses (``nan``, ``+-inf``) are never eligible.  A class with no expert is *uncovered* and is handled by the VLM
patch at reuse time (:mod:`mll_jax.reuse`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mll_jax.selection.types import ModelScores, Selection

__all__ = ["select_top_k", "expand_classes", "select"]


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
