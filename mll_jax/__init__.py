"""mll-jax: JAX-accelerated Model Label Learning.

Submodules are imported lazily so that ``import mll_jax`` stays cheap:

- :mod:`mll_jax.chco` -- the batched CHCO solver (pure JAX, jit/vmap-able).
- :mod:`mll_jax.projection` -- capped-simplex projections.
- :mod:`mll_jax.wordnet`, :mod:`mll_jax.sdag` -- the Semantic DAG.
- :mod:`mll_jax.text` -- text encoder and class-name matching.
- :mod:`mll_jax.hub`, :mod:`mll_jax.models` -- the model hub and Flax experts.
- :mod:`mll_jax.labelling` -- model labels (Eq. 1-2) and their orbax store.
- :mod:`mll_jax.selection`, :mod:`mll_jax.baselines`, :mod:`mll_jax.reuse` -- selection and reuse.
"""

__version__ = "0.1.0"
