"""Which Flax module classes a hub manifest may name (``module_class``), checked before any import.

A manifest's ``module_class`` (``"pkg.mod:Class"``) is first mapped through :data:`MODULE_CLASS_ALIASES` (classes
that moved keep loading from manifests written before the move), then imported only if its module lies in a
trusted package (:data:`DEFAULT_TRUSTED_MODULES`, :func:`trust_modules`, ``ModelHub(root, trusted_modules=...)``
or ``$MLL_JAX_TRUSTED_MODULES``), and must be a ``flax.linen.Module`` subclass.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from typing import Iterable, Sequence

from mll_jax.errors import UntrustedModuleError

__all__ = ["DOTTED_RE", "DEFAULT_TRUSTED_MODULES", "MODULE_CLASS_ALIASES", "trust_modules", "trusted",
           "resolve_module_class", "import_class"]

DOTTED_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

#: Packages whose Flax module classes a manifest may name (``module_class``) without an explicit opt-in.
DEFAULT_TRUSTED_MODULES = ("mll_jax", "flax", "transformers")
_TRUSTED_MODULES: set[str] = set()

#: Stored ``module_class`` strings of classes that moved -> where they live now (the stored string is kept).
MODULE_CLASS_ALIASES = {
    "mll_jax.offline.train:GrayHFClassifier": "mll_jax.models.gray_hf:GrayHFClassifier",
}


def resolve_module_class(path: str) -> str:
    """The class path a stored ``module_class`` names now (:data:`MODULE_CLASS_ALIASES`; an alias whose module is
    not installed leaves the stored path)."""
    new = MODULE_CLASS_ALIASES.get(path)
    if new is None:
        return path
    try:
        found = importlib.util.find_spec(new.partition(":")[0]) is not None
    except ModuleNotFoundError:
        found = False
    return new if found else path


def trust_modules(*prefixes: str) -> None:
    """Allow manifests to name Flax module classes from these packages (process-wide), e.g. ``"mypkg"``.

    Also: ``ModelHub(root, trusted_modules=[...])`` (one hub) or ``$MLL_JAX_TRUSTED_MODULES`` (comma-separated).
    :meth:`ModelHub.add_flax_module` trusts the module of the instance it is given.
    """
    for p in prefixes:
        if not isinstance(p, str) or not DOTTED_RE.match(p):
            raise ValueError(f"trusted module prefix must be a dotted module name, got {p!r}")
        _TRUSTED_MODULES.add(p)


def trusted(prefix_lists: Iterable[Iterable[str]]) -> list[str]:
    env = [p.strip() for p in os.environ.get("MLL_JAX_TRUSTED_MODULES", "").split(",") if p.strip()]
    out: list[str] = []
    for ps in (DEFAULT_TRUSTED_MODULES, sorted(_TRUSTED_MODULES), env, *prefix_lists):
        out += [p for p in ps if p not in out]
    return out


def import_class(path: str, trusted: Sequence[str] = DEFAULT_TRUSTED_MODULES, model_id: str = "?"):
    """Resolve ``"pkg.mod:Class"`` -- only after checking ``pkg.mod`` is in a trusted package (no import
    of anything else), and only to a ``flax.linen.Module`` subclass."""
    import flax.linen as nn

    path = resolve_module_class(path) if isinstance(path, str) else path
    if not isinstance(path, str) or ":" not in path:
        raise ValueError(f"model {model_id!r}: module_class must look like 'package.module:ClassName', "
                         f"got {path!r}")
    mod, _, name = path.partition(":")
    if not DOTTED_RE.match(mod) or not DOTTED_RE.match(name):
        raise ValueError(f"model {model_id!r}: malformed module_class {path!r}")
    if not any(mod == p or mod.startswith(p + ".") for p in trusted):
        top = mod.split(".")[0]
        raise UntrustedModuleError(
            f"model {model_id!r}: module_class {path!r} is not in a trusted package ({', '.join(trusted)}); "
            f"nothing was imported. If you trust it: mll_jax.hub.trust_modules({top!r}), "
            f"ModelHub(root, trusted_modules=[{top!r}]) or MLL_JAX_TRUSTED_MODULES={top}")
    obj = importlib.import_module(mod)
    for part in name.split("."):
        if not isinstance(obj, type) and not isinstance(obj, type(sys)):
            break
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise UntrustedModuleError(f"model {model_id!r}: {path} is not a flax.linen.Module subclass")
    return obj
