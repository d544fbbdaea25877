"""Selection baselines (Random, HEU, LogME, LEEP): they live in :mod:`mll_jax.selection`
(:mod:`mll_jax.selection.baselines`, :mod:`mll_jax.selection.transferability`, and
:func:`mll_jax.selection.baseline_selection`).  This module re-exports their names for one release."""

from mll_jax.selection import (
    LEEPResult,
    LogMEResult,
    baseline_selection,
    expert_outputs,
    heu_losses,
    heu_scores,
    leep,
    leep_scores,
    logme,
    logme_scores,
    random_scores,
    target_node_data,
)

__all__ = [
    "random_scores",
    "heu_losses",
    "heu_scores",
    "LogMEResult",
    "logme",
    "LEEPResult",
    "leep",
    "target_node_data",
    "expert_outputs",
    "logme_scores",
    "leep_scores",
    "baseline_selection",
]
