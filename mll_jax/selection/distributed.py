"""CHCO scoring with the models split over cooperating ``jax.distributed`` processes."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mll_jax import distributed
from mll_jax.selection.columns import chco_scores
from mll_jax.selection.types import ModelScores

__all__ = ["chco_scores_distributed"]


def chco_scores_distributed(S_list: Sequence[np.ndarray], model_ids: Sequence[str], *,
                            processes: distributed.Processes | None = None, **kw) -> ModelScores:
    """:func:`mll_jax.selection.chco_scores` (CHCO scores of a hub's models on a task) with the models split over
    the processes (:func:`mll_jax.distributed.solve_batch`); every process gets the whole result.

    ``processes``: the cooperating processes (default :func:`mll_jax.distributed.current`); ``kw`` go to
    :func:`mll_jax.selection.chco_scores` (``method``, ``tol``, ``progress``, solver keywords)."""

    def solver(S, **kws):
        return distributed.solve_batch(S, processes=processes, **kws)

    return chco_scores(S_list, model_ids, solver=solver, **kw)
