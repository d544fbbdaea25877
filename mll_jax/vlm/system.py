"""Deprecated: the old home of the VLM half of the system (one release of re-exports).

VLMs are a family of the system's hub: :mod:`mll_jax.families.vlms` (labels, selection), :mod:`mll_jax.hub.kinds`
(the ``clip_vlm`` and ``dual_encoder_vlm`` kinds), :mod:`mll_jax.classifier` (the one :class:`Classifier` of every
family; ``VLMClassifier``, ``VLMExpertClassifier`` and ``BothClassifier`` are deprecated aliases of it),
:mod:`mll_jax.reuse` (:class:`VLMPatch`, :func:`patch_logits`).
"""

from mll_jax.classifier import BOTH_MODELS, VLM_CHCO_FORMAT, VLM_FORMAT, Classifier, load_classifier
from mll_jax.families.vlms import VLM_METHOD_OPTIONS, VLM_SELECT_OPTIONS
from mll_jax.hub.kinds import use_text_features
from mll_jax.reuse import VLMPatch, patch_logits

__all__ = ["VLM_SELECT_OPTIONS", "VLM_METHOD_OPTIONS", "use_text_features", "patch_logits", "VLMPatch",
           "VLMClassifier", "VLMExpertClassifier", "BothClassifier", "load_classifier", "VLM_FORMAT",
           "VLM_CHCO_FORMAT", "BOTH_MODELS"]

#: Deprecated aliases of :class:`mll_jax.classifier.Classifier` (one class serves every ``models=``).
VLMClassifier = VLMExpertClassifier = BothClassifier = Classifier
