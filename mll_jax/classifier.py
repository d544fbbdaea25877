"""The classifier built by the system: a :class:`~mll_jax.selection.Selection` reused as an ensemble, ready to
predict, explain and save -- one class for every model family (``selection.family``):

* ``"experts"`` -- the expert selection reused as the entropy-weighted ensemble (Eq. 12-13, :class:`Reuser`), a
  zero-shot ``patch`` serving the uncovered classes;
* ``"vlms"`` -- the MLL-VLM selection reused as the entropy-weighted VLM ensemble over the class prompts
  (:class:`mll_jax.reuse.VLMEnsemble`), or the CHCO-style baseline (``selection.method == "chco"``): each selected
  VLM is an expert over its node-text heads (:class:`mll_jax.vlm.expert_style.VLMHeads`, logit scale
  ``MLLConfig.vlm_scale``) reused by the expert ensemble, uncovered classes scoring 0;
* ``"both"`` -- the experts where they cover a class, the VLM ensemble elsewhere (the rule below).

**One abstain rule.**  Every family's model outputs go through ``MLLConfig.on_nonfinite``: ``"raise"`` raises
:class:`mll_jax.errors.NonFiniteOutputError` naming the model, ``"abstain"`` predicts -1 for that image.  A
prediction is also -1 where no class can be predicted: nothing covered and no patch, or (CHCO-style VLMs) every
class scores 0.

**The "both" rule.**  The expert selection (``MLL.select``) decides which classes the experts cover.  The VLM
selection is made for *all* task classes (``select_vlms``) and its ensemble scores ``s(x) (C,)``
(:func:`mll_jax.vlm.select.reuse_scores`) are given to the expert reuser as the patch's logits
``log(s / sum s)``.  With the default ``patch_mode="all"`` the reuser's softmax turns them back into ``s / sum
s``: an uncovered class ``c`` scores ``s_c(x) / sum_y s_y(x)``, the normalised VLM ensemble score, and competes
with the covered classes' expert scores (both in ``[0, 1]``, see :mod:`mll_jax.reuse`).  Covered classes keep
their expert scores unchanged.

**Saved format.**  :meth:`Classifier.save` writes the selection's ``.npz`` with ``extra["format"] ==
"mll_jax.classifier/1"``, ``extra["models"]`` (the family), the config, the fingerprints of the expert labels and
weights, and (VLMs) ``extra["vlm_state"]``, each candidate VLM's fingerprint and labels key.
:meth:`Classifier.load` (and :meth:`mll_jax.system.MLL.load_classifier`) also reads the earlier formats
``mll_jax.vlm_classifier/1``, ``mll_jax.vlm_chco_classifier/1`` and ``models="both"`` files whose VLM selection
sits in ``extra["vlm_selection"]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mll_jax.config import MLLConfig
from mll_jax.errors import MLLError, StaleClassifierError
from mll_jax.families.base import label_fingerprint, model_fingerprint
from mll_jax.reuse import Reuser, VLMEnsemble, VLMPatch
from mll_jax.selection import Selection
from mll_jax.vlm.expert_style import VLMHeads
from mll_jax.vlm.select import VLMSelection

__all__ = ["head_summary", "FORMAT", "VLM_FORMAT", "VLM_CHCO_FORMAT", "BOTH_MODELS", "read_meta", "vlm_selection_to_json",
           "vlm_selection_from_json", "is_system", "Classifier", "load_classifier"]

#: The saved format (every family).
FORMAT = "mll_jax.classifier/1"
#: Earlier saved formats of VLM classifiers (read by :meth:`Classifier.load`).
VLM_FORMAT = "mll_jax.vlm_classifier/1"
VLM_CHCO_FORMAT = "mll_jax.vlm_chco_classifier/1"
#: ``extra["models"]`` of a ``models="both"`` classifier.
BOTH_MODELS = "both"


def vlm_selection_to_json(sel: VLMSelection) -> dict:
    """:meth:`mll_jax.vlm.select.VLMSelection.to_dict`."""
    return sel.to_dict()


def vlm_selection_from_json(d: Mapping[str, Any]) -> VLMSelection:
    """:meth:`mll_jax.vlm.select.VLMSelection.from_dict`."""
    return VLMSelection.from_dict(d)


def head_summary(expert: dict) -> str:
    """One line on an expert's predictor column for a class (an :meth:`Classifier.explain` expert entry): its
    heads by contribution on the class's node data (name, share of the contribution, weight) and how many heads
    carry 90% of it; by weight for selections saved without head probabilities."""
    heads = expert["heads"]
    if heads and heads[0].get("share") is not None:
        parts = ", ".join(f"{h.get('name') or h['head']} {100 * h['share']:.0f}% (w {h['weight']:.2f})" for h in heads)
        n90 = expert.get("heads_90")
        return f"heads by contribution: {parts}" + ((f"; {n90} heads carry 90%" if n90 != 1 else "; 1 head carries 90%")
                                                    if n90 is not None else "")
    return "heads: " + ", ".join(f"{h.get('name') or h['head']} {h['weight']:.2f}" for h in heads)


def read_meta(path) -> dict:
    """The ``meta`` JSON of a saved classifier (``FileNotFoundError`` if absent, :class:`MLLError` if unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(bytes(data["meta"]).decode())
    except FileNotFoundError:
        raise FileNotFoundError(f"no saved classifier at {path}") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise MLLError(f"{path} is not a readable saved classifier ({type(e).__name__}: {e})") from e


def is_system(obj) -> bool:
    """Whether ``obj`` is the MLL system (it loads experts and VLMs by id and has a hub)."""
    return callable(getattr(obj, "expert", None)) and callable(getattr(obj, "family", None)) and hasattr(obj, "hub")


class Classifier:
    """A zero-shot classifier: a :class:`Selection` of any family reused as an ensemble (module docstring).

    ``experts``: the :class:`mll_jax.system.MLL` system (it loads the selected experts and VLMs), or a mapping
    ``model_id -> model`` (experts: ``logits(images)``; MLL-VLM selection: VLMs; CHCO-style VLMs: expert-like
    head models, e.g. :class:`mll_jax.vlm.expert_style.VLMHeads`); for experts also a hub (``.load``).
    ``patch``: a zero-shot model for the uncovered classes (experts; ``"both"`` builds its VLM patch itself).
    """

    def __init__(self, selection: Selection, experts, patch=None, config: MLLConfig | None = None, *,
                 label_fingerprint: str | None = None, model_fingerprints: Mapping[str, str] | None = None):
        self.selection = selection
        self.config = config or MLLConfig()
        self.label_fingerprint = label_fingerprint
        self.model_fingerprints = dict(model_fingerprints or {})
        models = experts
        self._system = models if is_system(models) else None
        family, cfg = selection.family, self.config
        if family != "experts" and patch is not None and not (family == "both" and isinstance(patch, VLMPatch)):
            raise MLLError(f"a models={family!r} classifier serves uncovered classes itself; patch= applies to "
                           "models='experts' only")
        used = selection.used_model_ids
        if family == "vlms" and selection.vlm is not None:  # the MLL-VLM ensemble
            vlms = {m: self._model(models, m, vlm=True) for m in selection.vlm.used_models}
            self._reuser = VLMEnsemble(selection.vlm, vlms, on_nonfinite=cfg.on_nonfinite)
            self.patch = None
            return
        if family == "vlms":  # the CHCO-style baseline: VLMs as experts over their node-text heads
            if self._system is not None:
                emb = self._system.family("vlms").node_text_embeddings(list(used))
                source = {m: VLMHeads(self._system.vlm(m), emb[m], cfg.vlm_scale) for m in used}
            else:
                source = models
        else:
            source = {m: self._model(models, m) for m in used} if self._system is not None else models
        if family == "both" and patch is None:
            patch = VLMPatch(selection.vlm, {m: self._model(models, m, vlm=True) for m in selection.vlm.used_models})
        self.patch = patch
        with warnings.catch_warnings():
            if family == "vlms":  # uncovered classes of the CHCO-style baseline score 0 by design
                warnings.filterwarnings("ignore", ".*uncovered classes and no patch", RuntimeWarning)
            self._reuser = Reuser(selection, source, patch, patch_mode=cfg.patch_mode, patch_weight=cfg.patch_weight,
                                  batch_size=cfg.reuse_batch_size, progress=cfg.progress,
                                  on_nonfinite=cfg.on_nonfinite)

    @staticmethod
    def _model(models, model_id: str, vlm: bool = False):
        if is_system(models):
            return models.vlm(model_id) if vlm else models.expert(model_id)
        if isinstance(models, Mapping):
            if model_id not in models:
                raise KeyError(f"selected model {model_id!r} is not among the given models")
            return models[model_id]
        raise TypeError("models must be the MLL system or a mapping model_id -> model")

    # ------------------------------------------------------------------ what it is
    @property
    def models(self) -> str:
        """The family serving the task: ``"experts"``, ``"vlms"`` or ``"both"``."""
        return self.selection.family

    @property
    def method(self) -> str:
        return self.selection.method

    @property
    def vlm_selection(self) -> VLMSelection | None:
        """The MLL-VLM selection record (``"vlms"`` with method ``"mll"``, and ``"both"``)."""
        return self.selection.vlm

    @property
    def class_names(self) -> list[str]:
        return list(self.selection.class_names or [])

    @property
    def progress(self) -> bool:
        return self._reuser.progress

    @progress.setter
    def progress(self, value: bool) -> None:
        self._reuser.progress = bool(value)

    # ------------------------------------------------------------------ prediction
    def scores(self, images) -> np.ndarray:
        """``(N, C)`` class scores for an image batch (see :mod:`mll_jax.images` for the contract)."""
        return self._reuser.scores(images)

    def predict(self, images) -> np.ndarray:
        """``(N,)`` class indices (``-1``: abstained, see the module docstring)."""
        return self.predictions(self.scores(images))

    def predictions(self, scores) -> np.ndarray:
        """:meth:`predict`'s rule on scores from :meth:`scores` (predict and score in one pass)."""
        pred = self._reuser.predictions(scores)
        if self.models == "vlms" and self.selection.vlm is None:  # CHCO-style VLMs: nothing scored, abstain
            pred = np.where(np.nan_to_num(np.asarray(scores)).max(axis=1) > 0, pred, -1)
        return pred

    def predict_names(self, images) -> list[str | None]:
        names = self.class_names
        return [names[i] if i >= 0 else None for i in self.predict(images)]

    # ------------------------------------------------------------------ explanation
    def explain(self) -> list[dict]:
        """:meth:`Selection.explain`'s rows (the same for every family) with expert head names, plus
        ``method``, ``served_by`` (``"experts"``, ``"vlms"``, ``"patch"`` or why nobody) and, for classes the VLMs
        serve, ``vlms``: ``{"model", "f1", "score"}`` (MLL-VLM) or ``{"model", "loss", "heads"}`` (CHCO-style)."""
        rows = self.selection.explain()
        for r in rows:
            r["method"] = self.selection.method
            for e in r["experts"]:
                if e["family"] == "experts":
                    names = getattr(self._reuser.experts.get(e["model"]), "head_names", None)
                    for h in e["heads"]:
                        h["name"] = names[h["head"]] if names is not None and h["head"] < len(names) else None
            if r["family"] == "vlms" or self.models == "vlms":
                r["served_by"] = "vlms"
                r["vlms"] = [({"model": e["model"], "f1": e["f1"], "score": e["score"]} if "f1" in e else
                              {"model": e["model"], "loss": e["loss"], "heads": e["heads"]}) for e in r["experts"]]
            elif r["uncovered"]:
                r["served_by"] = "patch" if self.patch is not None else "nobody (no patch: never predicted)"
            else:
                r["served_by"] = "experts"
        return rows

    def explain_text(self) -> str:
        lines = []
        prefix = "expert " if self.models == "both" else ""
        for r in self.explain():
            if r["served_by"] == "vlms" and r["nodes"] is not None and self.models == "vlms":
                nodes = ", ".join(f"{n} {w:.2f}" for n, w, _ in r["nodes"] if w > 0)
                lines.append(f"{r['class']!r} -> VLMs (nodes: {nodes})")
                lines += [f"    {v['model']}: F1 {v['f1']:.3f}; score {v['score']:.3f}" for v in r["vlms"]]
                continue
            if self.models == "vlms":  # the CHCO-style baseline
                if r["uncovered"]:
                    lines.append(f"{r['class']!r} -> uncovered ({r['uncovered']})")
                    continue
                lines.append(f"{r['class']!r} -> VLMs as CHCO experts (node {r['node']}, similarity "
                             f"{r['similarity']:.2f})")
                lines += [f"    {v['model']}: CHCO loss {v['loss']:.3f}" for v in r["vlms"]]
                continue
            node = f"{r['node']} (similarity {r['similarity']:.2f})" if r["node"] else "no node"
            lines.append(f"{r['class']!r} -> {node}")
            if r.get("match") and r["match"].get("reason") and not r["uncovered"]:
                lines.append(f"    match: {r['match']['reason']}")
            for e in r["experts"]:
                if e["family"] == "experts":
                    lines.append(f"    {prefix}{e['model']}: loss {e['loss']:.3f}; {head_summary(e)}")
            if r["uncovered"] and r["served_by"] == "vlms":
                lines.append(f"    not covered by experts ({r['uncovered']}); served by VLMs: "
                             + ", ".join(f"{v['model']} (F1 {v['f1']:.3f})" for v in r["vlms"]))
            elif r["uncovered"]:
                lines.append(f"    uncovered: {r['uncovered']}; served by {r['served_by']}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ persistence
    def vlm_candidates(self) -> list[str]:
        """The candidate VLMs the selection was made from (their state is saved with the classifier)."""
        if self.selection.vlm is not None:
            return list(self.selection.vlm.model_ids)
        return list(self.selection.model_ids) if self.models == "vlms" else []

    def save(self, path: str | os.PathLike, mll=None) -> Path:
        """Save selection, predictor columns, matches, config, model ids and fingerprints (one ``.npz``, atomic;
        format ``mll_jax.classifier/1``).  A classifier with VLMs also saves each candidate VLM's fingerprint and
        labels key, read from ``mll`` (default: the system it was built with)."""
        path = Path(path)
        extra = {"format": FORMAT, "models": self.models, "config": self.config.to_dict(),
                 "label_fingerprint": self.label_fingerprint, "model_fingerprints": self.model_fingerprints,
                 "patch": None if self.patch is None else type(self.patch).__name__}
        if self.models != "experts":
            system = mll if mll is not None else self._system
            if system is None:
                raise MLLError("a classifier with VLMs saves their state from the MLL system: pass mll=")
            extra["vlm_state"] = system.family("vlms").saved_state(self.vlm_candidates())
        self.selection.save(path, extra=extra)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, experts, *, patch=None, labels=None, check: bool = True,
             progress: bool | None = None, models: str | None = None) -> "Classifier":
        """Load a saved classifier of any family and saved format (module docstring).

        ``experts``: the :class:`mll_jax.system.MLL` system (its labels, hub and VLM state are checked against the
        saved fingerprints unless ``check=False``); for experts also a hub or a mapping.  ``models``: refuse a file
        of another family (``"experts"``, ``"vlms"``, ``"both"``; default: any).  Raises :class:`StaleClassifierError` when the labels or the used models' weights
        changed since it was saved."""
        meta = read_meta(path)
        if meta.get("format") == VLM_FORMAT:
            sel, extra = Selection.from_vlm(VLMSelection.from_dict(meta["selection"])), dict(meta, models="vlms")
        else:
            extra = meta.get("extra") or {}
            if extra.get("format") not in (FORMAT, VLM_CHCO_FORMAT):
                raise MLLError(f"{path} is not a saved mll_jax classifier")
            sel = Selection.load(path)
            if extra.get("format") == VLM_CHCO_FORMAT:
                sel = dataclasses.replace(sel, family="vlms")
            elif extra.get("models") == BOTH_MODELS and sel.vlm is None:
                sel = sel.with_vlm(VLMSelection.from_dict(extra["vlm_selection"]))
        if models is not None and sel.family != models:
            raise MLLError(f"{path} was saved with models={sel.family!r}: load it with MLL.load_classifier")
        system = experts if is_system(experts) else None
        if sel.family != "experts":
            if system is None:
                raise MLLError(f"a models={sel.family!r} classifier loads from the MLL system (its hub holds the VLMs)")
            if patch is not None:
                raise MLLError(f"a models={sel.family!r} classifier brings its own VLMs for uncovered classes; patch= "
                               "does not apply")
        if "config" in extra:
            config = MLLConfig.from_dict(extra["config"])
        else:  # the earlier VLM formats saved no config: the system's, with the saved head scale
            config = system.config
            if "scale" in extra:
                config = config.replace(vlm_scale=float(extra["scale"]))
        if progress is not None:
            config = config.replace(progress=bool(progress))
        if system is not None and check and sel.family != "experts":
            system.family("vlms").check_saved_state(path, extra["vlm_state"])
        if system is not None and check and sel.family != "vlms":
            labels = system.labels if labels is None else labels
            missing = [m for m in sel.used_model_ids if m not in system.hub]
            if missing:
                raise StaleClassifierError(f"{path}: models {missing} are no longer in the hub")
            now = {m: model_fingerprint(system.hub, m) for m in sel.used_model_ids}
            changed = [m for m in sel.used_model_ids
                       if extra.get("model_fingerprints", {}).get(m) not in (None, now[m])]
            if changed:
                raise StaleClassifierError(f"{path}: the weights of {changed} changed since it was saved; build a new "
                                           "classifier")
        if labels is not None and check and extra.get("label_fingerprint"):
            absent = [m for m in sel.model_ids if m not in labels]
            if absent:
                raise StaleClassifierError(f"{path}: models {absent[:5]} have no labels any more")
            try:
                fp = label_fingerprint(labels, sel.model_ids, sel.wnids)
            except KeyError as e:
                raise StaleClassifierError(f"{path}: the labels changed since it was saved ({e})") from None
            if fp != extra["label_fingerprint"]:
                raise StaleClassifierError(f"{path}: the labels changed since it was saved (it was built from other "
                                           "label values); build a new classifier")
        return cls(sel, experts, patch, config, label_fingerprint=extra.get("label_fingerprint"),
                   model_fingerprints=extra.get("model_fingerprints"))

    def __repr__(self) -> str:
        cov = int(self.selection.covered.sum())
        if self.models == "experts":
            return (f"Classifier({len(self.class_names)} classes, {cov} covered, models "
                    f"{list(self.selection.used_model_ids)}, scorer {self.selection.method})")
        return (f"Classifier(models={self.models!r}, {len(self.class_names)} classes, {cov} covered by "
                f"{list(self.selection.used_model_ids)}, method {self.selection.method})")


def load_classifier(path, mll, *, check: bool = True) -> Classifier:
    """Load a classifier of any saved format with the system ``mll`` (:meth:`Classifier.load`)."""
    return Classifier.load(path, mll, check=check)
