"""The one configuration object of the MLL system: every pipeline default lives here, once.

:class:`MLLConfig` is a frozen dataclass (flat, like big_vision's configs): build one, override fields with
:meth:`MLLConfig.replace` or keyword arguments to the system's methods, save it as JSON with the system.  The
module constants below are the defaults; library functions that take the same hyperparameter as an argument
(``label_models(delta=...)``, ``match_classes(threshold=...)``) use these constants as their defaults.

Solver internals (the CHCO algorithm, its tolerances and chunking) are hyperparameters of
:mod:`mll_jax.chco` and are passed through ``chco_method`` / ``chco_tol`` / ``chco_options``; ``None`` means
"the solver's own default".
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping
from mll_jax.errors import ConfigError  # noqa: F401  (re-exported)

__all__ = [
    "DEFAULT_DELTA",
    "LABEL_STATISTICS",
    "DEFAULT_LABEL_STATISTIC",
    "DEFAULT_K",
    "DEFAULT_BETA",
    "DEFAULT_MATCH_THRESHOLD",
    "DEFAULT_NODE_TEXT",
    "SCORERS",
    "DEFAULT_VLM_ALPHA",
    "DEFAULT_VLM_TOP",
    "DEFAULT_VLM_SCALE",
    "VLM_METHODS",
    "ConfigError",
    "MLLConfig",
]

#: Label smoothing discount of Eq. 2: a node's own images and its hyponyms weigh equally.
DEFAULT_DELTA = 0.5
#: What a label row summarises over a node's images: "mean_logit" (the paper's Eq. 1: the mean logit vector) or
#: "mean_probability" (the mean softmax output; the row stored is its log, so CHCO's softmax of the row is the
#: node's mean head probability).  See mll_jax.labelling.statistic.
LABEL_STATISTICS = ("mean_logit", "mean_probability")
DEFAULT_LABEL_STATISTIC = "mean_logit"
#: Reuse budget: experts per class.
DEFAULT_K = 3
#: CHCO loss threshold.  L_c = 0 for a perfect one-vs-rest predictor and 2 log 2 ~ 1.386 for an uninformative
#: one; 0.8 keeps experts clearly better than chance (offline benchmark: coverage 98.9% at 0.8, 100% at 1.0).
DEFAULT_BETA = 0.8
#: Cosine-similarity floor below which a class counts as not covered by the SDAG.  Chosen from
#: experiments/match_imagenet.py: basic-level names score 0.40-0.70 against their own synset
#: ("apple" 0.40, "dog" 0.43, "car" 0.45; the long WordNet definitions of coarse synsets keep these
#: low), ImageNet-1k names keep 89.8 of their 90.2 points of correct top-1 matches against the
#: ImageNet synsets + hypernyms at 0.35 (all of them against all WordNet nouns), and about half of
#: a list of unrelated concepts ("tax law", "democracy", "emoji", ...) score below 0.35 against the
#: ImageNet SDAG (the rest reach 0.35-0.46: with this small encoder the threshold is a weak filter).
DEFAULT_MATCH_THRESHOLD = 0.35
#: Node text for matching: "lemmas" (all synonyms + definition) or "sdag" (SDAG.text: first lemma + definition).
DEFAULT_NODE_TEXT = "lemmas"
#: Built-in scorers (see mll_jax.selection.select_models).
SCORERS = ("chco", "random", "heu", "logme", "leep")
#: Weight of F1 in the MLL-VLM selection score (the value of mll_jax.vlm.core.DEFAULT_ALPHA).
DEFAULT_VLM_ALPHA = 0.7
#: Nodes each class is matched to by the MLL-VLM selection (the value of mll_jax.vlm.core.DEFAULT_TOP_NODES).
DEFAULT_VLM_TOP = 5
#: Logit scale of a VLM's node-text heads in the CHCO-style VLM baseline (``scale * cos``; mll_jax.vlm.expert_style).
DEFAULT_VLM_SCALE = 100.0
#: How VLMs are selected: "mll" (the MLL-VLM F1 selection) or "chco" (the CHCO-style baseline).
VLM_METHODS = ("mll", "chco")


@dataclass(frozen=True)
class MLLConfig:
    """Every default of the MLL pipeline.

    Labelling: ``delta`` (Eq. 2 discount, in [0, 1]), ``label_statistic`` (``"mean_logit"``: Eq. 1;
    ``"mean_probability"``: each node's mean softmax output, see :mod:`mll_jax.labelling.statistic`; changing it
    makes every expert's labels stale), ``label_batch_size`` (images per forward pass).
    Matching: ``match_threshold`` (similarity floor; a class below it is uncovered), ``node_text``,
    ``match_wordnet`` (resolve class names that are WordNet lemmas through their senses, ranked by sense frequency,
    text similarity and the task's domain, and refuse a node that is a hypernym of the class: see
    :mod:`mll_jax.text.match`; on by default, ``False``: the embedding matcher alone).
    Selection: ``scorer`` (``"chco"`` or a baseline: random, heu, logme, leep), ``k`` (experts per class),
    ``beta`` (loss threshold for CHCO and HEU, whose losses share a scale; ``None``: no threshold; Random,
    LogME and LEEP rank without one), ``columns`` (how scorers without predictor columns get them:
    ``"chco"`` or ``"argmax"``), ``node_images`` (images per matched node for LogME / LEEP), ``seed``
    (Random), ``chco_method`` / ``chco_tol`` / ``chco_options`` (passed to :func:`mll_jax.chco.solve_batch`;
    ``None``: the solver's default).
    Reuse: ``reuse_batch_size``, ``patch_mode`` (``"all"`` / ``"uncovered"``), ``patch_weight``,
    ``on_nonfinite`` (``"raise"``: an expert or patch output that is NaN/inf raises, naming the model;
    ``"abstain"``: that image's prediction is -1).
    VLMs (``MLL.classifier(..., models="vlms" | "both")``): ``vlm_method`` (``"mll"``: the MLL-VLM F1 selection;
    ``"chco"``: the CHCO-style baseline, VLMs as experts over their node-text heads, ``models="vlms"`` only),
    ``vlm_k`` (VLMs per class), ``vlm_alpha`` (weight of F1 in the selection score), ``vlm_top`` (nodes matched
    per class), ``vlm_scope`` (``"all"``: the stored counts; ``"task"``: counts restricted to the task's matched
    nodes), ``vlm_descriptions`` (class name -> description appended to the matching query, or ``None``) -- the
    ``"mll"`` options; ``vlm_scale`` (the heads' logit scale) -- a ``"chco"`` option (``vlm_k`` applies to both;
    the ``"chco"`` selection takes ``beta`` and the CHCO settings above).
    Everything: ``progress`` (tqdm bars).
    """

    delta: float = DEFAULT_DELTA
    label_statistic: str = DEFAULT_LABEL_STATISTIC
    k: int = DEFAULT_K
    beta: float | None = DEFAULT_BETA
    match_threshold: float = DEFAULT_MATCH_THRESHOLD
    node_text: str = DEFAULT_NODE_TEXT
    match_wordnet: bool = True
    scorer: str = "chco"
    columns: str = "chco"
    node_images: int = 50
    seed: int = 0
    chco_method: str | None = None
    chco_tol: float = 1e-5
    chco_options: Mapping[str, Any] = field(default_factory=dict)
    label_batch_size: int = 64
    reuse_batch_size: int = 256
    patch_mode: str = "all"
    patch_weight: float = 1.0
    on_nonfinite: str = "raise"
    vlm_method: str = "mll"
    vlm_k: int = 1
    vlm_alpha: float = DEFAULT_VLM_ALPHA
    vlm_top: int = DEFAULT_VLM_TOP
    vlm_scope: str = "all"
    vlm_descriptions: Mapping[str, str] | None = None
    vlm_scale: float = DEFAULT_VLM_SCALE
    progress: bool = True

    def __post_init__(self):
        def bad(name, why):
            raise ConfigError(f"MLLConfig.{name}={getattr(self, name)!r}: {why}")

        def real(name, lo=None, hi=None, allow_none=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(name, "must be a finite number" + (" or None" if allow_none else ""))
            if lo is not None and v < lo:
                bad(name, f"must be >= {lo}")
            if hi is not None and v > hi:
                bad(name, f"must be <= {hi}")

        def pos_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(name, "must be a positive integer")

        real("delta", 0.0, 1.0)
        if self.label_statistic not in LABEL_STATISTICS:
            bad("label_statistic", f"must be one of {list(LABEL_STATISTICS)}")
        pos_int("k")
        real("beta", allow_none=True)
        real("match_threshold", -1.0, 1.0)
        if not isinstance(self.match_wordnet, bool):
            bad("match_wordnet", "must be True or False")
        if self.node_text not in ("lemmas", "sdag"):
            bad("node_text", "must be 'lemmas' or 'sdag'")
        if not isinstance(self.scorer, str) or not self.scorer:
            bad("scorer", f"must be a scorer name, e.g. one of {SCORERS}")
        if self.columns not in ("chco", "argmax"):
            bad("columns", "must be 'chco' or 'argmax'")
        pos_int("node_images")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            bad("seed", "must be an integer")
        real("chco_tol", 0.0)
        if not self.chco_tol > 0:
            bad("chco_tol", "must be > 0")
        if not isinstance(self.chco_options, Mapping):
            bad("chco_options", "must be a mapping of keyword arguments for chco.solve_batch")
        object.__setattr__(self, "chco_options", dict(self.chco_options))
        pos_int("label_batch_size")
        pos_int("reuse_batch_size")
        if self.patch_mode not in ("all", "uncovered"):
            bad("patch_mode", "must be 'all' or 'uncovered'")
        real("patch_weight", 0.0)
        if self.on_nonfinite not in ("raise", "abstain"):
            bad("on_nonfinite", "must be 'raise' or 'abstain'")
        if self.vlm_method not in VLM_METHODS:
            bad("vlm_method", f"VLM method must be one of {list(VLM_METHODS)}")
        pos_int("vlm_k")
        real("vlm_alpha", 0.0, 1.0)
        pos_int("vlm_top")
        if self.vlm_scope not in ("all", "task"):
            bad("vlm_scope", "must be 'all' or 'task'")
        if self.vlm_descriptions is not None:
            if not isinstance(self.vlm_descriptions, Mapping) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in self.vlm_descriptions.items()):
                bad("vlm_descriptions", "must be None or a mapping class name -> description")
            object.__setattr__(self, "vlm_descriptions", dict(self.vlm_descriptions))
        real("vlm_scale", 0.0)
        if not self.vlm_scale > 0:
            bad("vlm_scale", "must be > 0")
        if not isinstance(self.progress, bool):
            bad("progress", "must be True or False")

    def replace(self, **changes) -> "MLLConfig":
        """A copy with some fields changed (validated; unknown names raise :class:`ConfigError`)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(f"unknown MLLConfig fields {unknown}; known: {sorted(names)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MLLConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown MLLConfig fields {unknown}")
        return cls(**dict(d))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "MLLConfig":
        return cls.from_dict(json.loads(text))
