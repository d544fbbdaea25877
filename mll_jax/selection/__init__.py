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

Every scorer (CHCO, and Random / HEU / LogME / LEEP) produces the same :class:`ModelScores` (a lower-is-better
``(M, C)`` matrix plus optional columns), so baselines plug into the same :func:`select` slot.  Scorers that do
not produce columns (Random, LogME, LEEP) get them from :func:`fill_columns` (CHCO columns by default) so that
only the *selection* differs between methods.

The label source is either a :class:`mll_jax.labelling.LabelStore` (anything with ``.read(model_id, wnids)``
and ``.model_ids()``) or a plain mapping handled by :class:`DictLabels`.

Modules (one concept each; this package re-exports their public names):

* :mod:`~mll_jax.selection.labels` -- label readers (:class:`DictLabels`, :func:`as_label_reader`,
  :func:`label_submatrices`);
* :mod:`~mll_jax.selection.types` -- :class:`ModelScores`, :class:`Selection` (with ``save`` / ``load``),
  :class:`ScoringTask`, :class:`Scorer`;
* :mod:`~mll_jax.selection.rule` -- the pure top-k rule (:func:`select_top_k`), :func:`expand_classes`,
  :func:`select`;
* :mod:`~mll_jax.selection.columns` -- :func:`chco_scores`, :func:`argmax_columns`, :func:`fill_columns`;
* :mod:`~mll_jax.selection.transferability` -- LogME and LEEP (:func:`logme`, :func:`leep`);
* :mod:`~mll_jax.selection.baselines` -- Random, HEU and the LogME / LEEP selection slot;
* :mod:`~mll_jax.selection.scorers` -- the built-in scorer functions;
* :mod:`~mll_jax.selection.registry` -- :func:`register_scorer`, :func:`get_scorer`, :func:`scorers`;
* :mod:`~mll_jax.selection.api` -- :func:`select_models`, :func:`select_experts`, :func:`baseline_selection`;
* :mod:`~mll_jax.selection.distributed` -- :func:`chco_scores_distributed` (models split over processes).
"""

from mll_jax.selection.api import baseline_selection, select_experts, select_models
from mll_jax.selection.baselines import (
    expert_outputs,
    heu_losses,
    heu_scores,
    leep_scores,
    logme_scores,
    random_scores,
    target_node_data,
)
from mll_jax.selection.columns import argmax_columns, chco_scores, fill_columns, head_probabilities
from mll_jax.selection.distributed import chco_scores_distributed
from mll_jax.selection.labels import DictLabels, as_label_reader, label_submatrices
from mll_jax.selection.registry import get_scorer, register_scorer, scorers
from mll_jax.selection.rule import expand_classes, select, select_top_k
from mll_jax.selection.transferability import LEEPResult, LogMEResult, leep, logme
from mll_jax.selection.types import ModelScores, Scorer, ScoringTask, Selection, heads_carrying

__all__ = [
    # labels
    "DictLabels",
    "as_label_reader",
    "label_submatrices",
    # types
    "ModelScores",
    "Selection",
    "ScoringTask",
    "Scorer",
    "heads_carrying",
    # rule
    "select_top_k",
    "expand_classes",
    "select",
    # columns
    "chco_scores",
    "argmax_columns",
    "fill_columns",
    "head_probabilities",
    "chco_scores_distributed",
    # registry
    "register_scorer",
    "get_scorer",
    "scorers",
    # entry points
    "select_models",
    "select_experts",
    "baseline_selection",
    # baselines
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
]
