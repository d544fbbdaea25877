"""Deprecated (kept for one release): the VLM classifiers are the one :class:`mll_jax.classifier.Classifier`.

``VLMClassifier`` and ``VLMExpertClassifier`` are aliases of it; the format names and the VLM selection's JSON
helpers live in :mod:`mll_jax.classifier`.
"""

from mll_jax.classifier import (BOTH_MODELS, VLM_CHCO_FORMAT, VLM_FORMAT, Classifier, read_meta,
                                vlm_selection_from_json, vlm_selection_to_json)

__all__ = ["VLM_FORMAT", "VLM_CHCO_FORMAT", "BOTH_MODELS", "vlm_selection_to_json", "vlm_selection_from_json",
           "read_meta", "VLMClassifier", "VLMExpertClassifier"]

#: Deprecated alias of :class:`mll_jax.classifier.Classifier` (``models="vlms"``).
VLMClassifier = Classifier
#: Deprecated alias of :class:`mll_jax.classifier.Classifier` (``models="vlms"``, ``method="chco"``).
VLMExpertClassifier = Classifier
