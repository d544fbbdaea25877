"""The scorer registry: the names :func:`mll_jax.selection.select_models` accepts as ``scorer=``.

The built-in scorers (:data:`BUILTIN_SCORERS`: chco, random, heu, logme, leep) are registered here, when this
module is defined; :func:`register_scorer` adds more.
"""

from __future__ import annotations

from typing import Callable

from mll_jax.selection.scorers import chco_scorer, heu_scorer, leep_scorer, logme_scorer, random_scorer
from mll_jax.selection.types import ModelScores, Scorer, ScoringTask

__all__ = ["BUILTIN_SCORERS", "register_scorer", "get_scorer", "scorers"]

#: The built-in scorers.  CHCO and HEU share CHCO's loss scale (``beta`` applies) and need two matched classes.
BUILTIN_SCORERS = (
    Scorer("chco", chco_scorer, uses_beta=True, min_classes=2),
    Scorer("random", random_scorer),
    Scorer("heu", heu_scorer, uses_beta=True, min_classes=2),
    Scorer("logme", logme_scorer),
    Scorer("leep", leep_scorer),
)

_SCORERS: dict[str, Scorer] = {s.name: s for s in BUILTIN_SCORERS}


def register_scorer(name: str, fn: Callable[[ScoringTask], ModelScores], *, uses_beta: bool = False,
                    min_classes: int = 1, overwrite: bool = False) -> Scorer:
    """Make ``fn`` available to :func:`select_models` (and the system / CLI) as ``scorer=name``."""
    if not isinstance(name, str) or not name:
        raise ValueError("a scorer needs a non-empty name")
    if not callable(fn):
        raise TypeError(f"scorer {name!r}: fn must be callable")
    if name in _SCORERS and not overwrite:
        raise ValueError(f"scorer {name!r} is already registered (pass overwrite=True to replace it)")
    _SCORERS[name] = Scorer(name, fn, bool(uses_beta), int(min_classes))
    return _SCORERS[name]


def get_scorer(name: str) -> Scorer:
    if isinstance(name, Scorer):
        return name
    if name not in _SCORERS:
        raise ValueError(f"unknown scorer {name!r}; available: {sorted(_SCORERS)}")
    return _SCORERS[name]


def scorers() -> list[str]:
    """Names of the registered scorers."""
    return sorted(_SCORERS)
