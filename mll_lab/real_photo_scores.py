"""Scores and predictors of the real-photo benchmark (:mod:`mll_lab.real_photo_benchmark`), derived from the
system's selections: :func:`restrict` (a selection over a subset of candidates, any k and threshold, read from one
selection over all of them), :func:`mean_probability_labels` (labels of mean softmax outputs, for ``chco-meanprob``),
:func:`sparse_columns` and :func:`heads_combined` (the heads a predictor combines), :func:`output_scale` (how
confident an expert is) and :func:`median_losses` (every expert's CHCO loss over the folds)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from mll_jax.labelling import dag_index, smooth_labels
from mll_jax.selection import DictLabels, ModelScores, heads_carrying, select

__all__ = ["restrict", "mean_probability_labels", "sparse_columns", "heads_combined", "output_scale", "median_losses"]


def restrict(full, model_ids: Sequence[str], k: int, beta: float | None):
    """The selection the system makes over ``model_ids`` with budget ``k`` and threshold ``beta``, read from
    ``full``: a selection of the same task and scorer over a superset of candidates, made with ``k`` = its number of
    candidates and no threshold, so that every model with a finite score has its columns and head mass.  Exact for
    scorers whose per-model scores do not depend on the other candidates (CHCO, HEU, LogME, LEEP); for Random the
    drawn order of the superset is kept."""
    rows = [full.model_ids.index(m) for m in model_ids]
    scores = ModelScores(full.method, tuple(model_ids), np.asarray(full.loss)[rows], info=full.info)
    sel = select(scores, k=k, beta=beta, class_names=full.class_names, wnids=full.wnids,
                 similarities=full.similarities, match_threshold=full.match_threshold)
    used = sel.used_model_ids
    return dataclasses.replace(sel, columns={m: full.columns[m] for m in used},
                               head_mass={m: full.head_mass[m] for m in used if m in full.head_mass},
                               matching=full.matching)


def mean_probability_labels(sdag, rows: dict, tables: dict, models: Sequence[str], delta: float) -> DictLabels:
    """Labels whose rows are ``log`` of each node's mean softmax output over its images (``rows``: node wnid -> the
    rows of its images in every expert's ``table``), smoothed over the hierarchy as Eq. 2 (same delta), so that
    CHCO's ``softmax(S)`` is the node's mean head probability; the system's labels are the node's mean logits
    (Eq. 1), whose softmax an expert can make peaked on a node where its per-image predictions disagree.  Rows of
    nodes without images or labelled hyponyms are 0."""
    nodes = list(sdag.nodes)
    pos = {w: i for i, w in enumerate(nodes)}
    index = dag_index(sdag)
    out = {}
    for m in models:
        t = tables[m]
        z = np.asarray(t.table, np.float64)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        own = np.zeros((len(nodes), p.shape[1]), np.float32)
        has = np.zeros(len(nodes), bool)
        for w, ii in rows.items():
            own[pos[w]] = p[list(ii)].mean(axis=0)
            has[pos[w]] = True
        smooth, labelled = smooth_labels(own, has, index.edge_parent, index.edge_child, float(delta),
                                         max(index.height, 1))
        logp = np.log(np.maximum(np.asarray(smooth, np.float64), 1e-30))
        out[m] = np.where(np.asarray(labelled)[:, None], logp, 0.0).astype(np.float32)
    return DictLabels(out, nodes)


def sparse_columns(sel, share: float = 0.9) -> dict:
    """The selection's columns with each class column cut to the heads that carry ``share`` of its contribution
    ``X[h, c] * P[h, c]`` on the class's matched node (``P``: ``sel.head_mass``); other entries set to 0."""
    out = {}
    for m, x in sel.columns.items():
        x = np.asarray(x, np.float64).copy()
        p = sel.head_mass.get(m)
        if p is None:
            out[m] = x
            continue
        contrib = x * np.asarray(p, np.float64)
        for c in range(x.shape[1]):
            keep = heads_carrying(contrib[:, c], share)
            if len(keep):
                cut = np.ones(len(x), bool)
                cut[keep] = False
                x[cut, c] = 0.0
        out[m] = x.astype(np.float32)
    return out


def heads_combined(sel, columns=None) -> list[tuple[int, int]]:
    """Per class: ``(heads with weight > 1e-3, heads carrying 90% of the contribution on the node)`` summed over the
    class's experts (``(0, 0)``: uncovered)."""
    cols = sel.columns if columns is None else columns
    out = []
    for c in range(sel.num_classes):
        n = n90 = 0
        for mi in sel.experts[c]:
            mid = sel.model_ids[mi]
            x = cols.get(mid)
            if x is None:
                continue
            n += int((np.asarray(x)[:, c] > 1e-3).sum())
            p = sel.head_mass.get(mid)
            if p is not None:
                n90 += len(heads_carrying(np.asarray(x, np.float64)[:, c] * np.asarray(p, np.float64)[:, c]))
        out.append((n, n90))
    return out


def output_scale(logits: np.ndarray) -> dict:
    """How confident an expert is on the photos: the mean over photos of the standard deviation of its logits and of
    its largest softmax probability."""
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return {"logit_std": round(float(z.std(axis=1).mean()), 4), "max_probability": round(float(p.max(axis=1).mean()), 4)}


def median_losses(folds: list) -> dict:
    """Per model, per class: the median over the folds of its CHCO loss (``None`` where no fold has a finite one)."""
    out = {}
    for m in (folds[0] if folds else {}):
        rows = np.array([[np.nan if v is None else v for v in f[m]] for f in folds], float)
        ok = np.isfinite(rows).any(axis=0)
        med = np.nanmedian(np.where(ok, rows, 0.0), axis=0) if len(rows) else []
        out[m] = [round(float(v), 4) if o else None for v, o in zip(med, ok)]
    return out
