"""mll-jax: JAX-accelerated Model Label Learning.

The public API (imported lazily, so ``import mll_jax`` stays cheap)::

    from mll_jax import MLL, MLLConfig, Classifier, SDAG, load_images, as_image_batch

- :class:`MLL` (:mod:`mll_jax.system`) -- the system over an SDAG, a model hub and a label store: add models
  and node data, label, and get a zero-shot :class:`Classifier` for class names.
- :class:`MLLConfig` (:mod:`mll_jax.config`) -- every pipeline default, once.
- :func:`load_images`, :func:`as_image_batch` (:mod:`mll_jax.images`) -- the image-batch contract and the one
  decode rule.
- :func:`select_models`, :class:`Selection`, :func:`register_scorer` (:mod:`mll_jax.selection`) -- the selection
  entry point and the type that flows from matching to reuse.

Building blocks: :mod:`mll_jax.chco` (the batched CHCO solver, pure JAX), :mod:`mll_jax.projection`,
:mod:`mll_jax.wordnet`, :mod:`mll_jax.sdag`, :mod:`mll_jax.text`, :mod:`mll_jax.hub`, :mod:`mll_jax.models`,
:mod:`mll_jax.labelling`, :mod:`mll_jax.baselines`, :mod:`mll_jax.reuse`, :mod:`mll_jax.clip_patch`.
"""

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "MLL": "mll_jax.system",
    "Classifier": "mll_jax.system",
    "MLLError": "mll_jax.system",
    "StaleClassifierError": "mll_jax.system",
    "MLLConfig": "mll_jax.config",
    "SDAG": "mll_jax.sdag",
    "ModelHub": "mll_jax.hub",
    "LabelStore": "mll_jax.labelling",
    "load_images": "mll_jax.images",
    "load_folder": "mll_jax.images",
    "as_image_batch": "mll_jax.images",
    "sample_images": "mll_jax.samples",
    "Selection": "mll_jax.selection",
    "select_models": "mll_jax.selection",
    "register_scorer": "mll_jax.selection",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'mll_jax' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_PUBLIC))
