"""The built-in scorers, ``fn(task: ScoringTask) -> ModelScores`` (lower is better): CHCO (the MLL method),
Random, HEU, LogME and LEEP.  :mod:`mll_jax.selection.registry` registers them under their names."""

from __future__ import annotations

import numpy as np

from mll_jax.selection.baselines import heu_scores, leep_scores, logme_scores, random_scores
from mll_jax.selection.columns import chco_scores
from mll_jax.selection.labels import label_submatrices
from mll_jax.selection.types import ModelScores, ScoringTask

__all__ = ["SCORER_ONLY_OPTIONS", "chco_scorer", "random_scorer", "heu_scorer", "logme_scorer", "leep_scorer"]

#: Options meant for the baseline scorers, never passed on to the CHCO solver.
SCORER_ONLY_OPTIONS = ("seed", "link", "features", "logdet")


def chco_scorer(task: ScoringTask) -> ModelScores:
    opts = dict(task.options)
    S_list = label_submatrices(task.labels, task.model_ids, task.wnids)
    return chco_scores(S_list, task.model_ids, method=opts.pop("method", None), tol=opts.pop("tol", 1e-5),
                       progress=task.progress, **{k: v for k, v in opts.items() if k not in SCORER_ONLY_OPTIONS})


def random_scorer(task: ScoringTask) -> ModelScores:
    return random_scores(task.model_ids, len(task.wnids), seed=int(task.options.get("seed", 0)))


def heu_scorer(task: ScoringTask) -> ModelScores:
    S_list = label_submatrices(task.labels, task.model_ids, task.wnids)
    return heu_scores(S_list, task.model_ids, link=task.options.get("link", "softmax"))


def _node_data_scorer(method):
    def fn(task: ScoringTask) -> ModelScores:
        if task.node_data is None:
            raise ValueError(f"{method} needs target data: the logits of every candidate model on the matched "
                             "nodes' images (give node_data, or use the MLL system, which reads them from the SDAG)")
        outputs, labels = task.node_data(task.model_ids, task.wnids)
        labels = np.asarray(labels, np.int64)
        if len(labels) == 0:
            return ModelScores(method, task.model_ids, np.full((len(task.model_ids), len(task.wnids)), np.inf))
        if method == "logme":
            return logme_scores(outputs, labels, task.model_ids, num_classes=len(task.wnids),
                                features=task.options.get("features", "logits"),
                                logdet=task.options.get("logdet", "full"))
        return leep_scores(outputs, labels, task.model_ids, num_classes=len(task.wnids))

    return fn


logme_scorer = _node_data_scorer("logme")
leep_scorer = _node_data_scorer("leep")
