"""The model hub: a manifest of models (experts and VLMs) and how to load them.

* :mod:`mll_jax.hub.store` -- :class:`ModelHub` (the manifest, model directories, fingerprints, loading).
* :mod:`mll_jax.hub.kinds` -- the kinds every hub knows (loader + family ``"experts"`` / ``"vlms"``),
  :func:`load_flax_module`, :func:`load_vlm`.
* :mod:`mll_jax.hub.trust` -- which ``module_class`` a manifest may name (:func:`trust_modules`) and the aliases
  of classes that moved (:data:`MODULE_CLASS_ALIASES`).
* :mod:`mll_jax.hub.preprocess` -- :class:`PreprocessSpec`.
* :mod:`mll_jax.hub.fingerprint` -- the weight fingerprints.
"""

from mll_jax.errors import UntrustedModuleError
from mll_jax.hub.kinds import FAMILIES, family, kind_names, load_flax_module, load_vlm, register_kind, use_text_features
from mll_jax.hub.preprocess import PreprocessSpec
from mll_jax.hub.store import MANIFEST_NAME, ModelHub, default_hub_root
from mll_jax.hub.trust import DEFAULT_TRUSTED_MODULES, MODULE_CLASS_ALIASES, trust_modules

__all__ = ["ModelHub", "MANIFEST_NAME", "default_hub_root", "PreprocessSpec", "trust_modules",
           "DEFAULT_TRUSTED_MODULES", "UntrustedModuleError", "MODULE_CLASS_ALIASES", "FAMILIES", "family", "kind_names",
           "register_kind", "load_flax_module", "load_vlm", "use_text_features"]
