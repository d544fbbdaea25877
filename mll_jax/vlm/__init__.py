"""MLL for vision-language models (arXiv 2501.18271): label, select and reuse a hub of CLIP-like dual encoders.

* :mod:`mll_jax.vlm.core` -- pure numerics (node counts, matching weights, F1, selection score, reuse ensemble,
  baselines).
* :mod:`mll_jax.vlm.models` -- the :class:`VLM` protocol and :class:`ClipVLM` (any HF ``FlaxCLIPModel``).
* :mod:`mll_jax.vlm.labels` -- :class:`VLMLabelStore` and :func:`label_vlm` (resumable, incremental labelling
  over an SDAG).
* :mod:`mll_jax.vlm.select` -- :func:`select_vlms` (class names -> per-class VLMs, from labels alone) and
  :func:`reuse_scores` / :func:`predict`.
* :mod:`mll_jax.vlm.expert_style` -- the CHCO-style baseline: VLMs as experts over their node-text heads
  (expert-style labels from the stored labelling embeddings, the expert pipeline's CHCO selection and reuse).
"""
