"""The offline zero-shot benchmark: Fashion-MNIST on WordNet, a trained hub of small experts, MLL end to end.

- :mod:`mll_jax.offline.data` -- Fashion-MNIST (Debian ``dataset-fashion-mnist``), class -> WordNet synset map,
  deterministic splits, target tasks with natural class names.
- :mod:`mll_jax.offline.train` -- the hub's experts: tiny Hugging Face Flax ResNet / ViT classifiers on class
  subsets and superclass output spaces, trained with optax, stored with orbax, registered in the model hub.
- :mod:`mll_jax.offline.benchmark` -- SDAG + labels + matching + selection + reuse + metrics (paper Table 1).
"""
