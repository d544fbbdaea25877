"""Classifiers built by the system: a selection reused as an ensemble, ready to predict, explain and save.

* :class:`Classifier` -- the expert selection reused as the entropy-weighted ensemble (Eq. 12-13), a zero-shot
  ``patch`` serving the uncovered classes; saved as ``mll_jax.classifier/1``.
* :class:`BothClassifier` -- ``models="both"``: the experts where they cover a class, the VLM ensemble elsewhere.
* VLM-only classifiers: :mod:`mll_jax.vlm_classifier`.
* :func:`load_classifier` reads every saved format.

**The "both" rule.**  The expert selection (``MLL.select``) decides which classes the experts cover.  The VLM
selection is made for *all* task classes (``select_vlms``) and its ensemble scores ``s(x) (C,)``
(:func:`mll_jax.vlm.select.reuse_scores`) are given to the expert reuser as the patch's logits
``log(s / sum s)``.  With the default ``patch_mode="all"`` the reuser's softmax turns them back into ``s / sum
s``: an uncovered class ``c`` scores ``s_c(x) / sum_y s_y(x)``, the normalised VLM ensemble score, and competes
with the covered classes' expert scores (both in ``[0, 1]``, see :mod:`mll_jax.reuse`).  Covered classes keep
their expert scores unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from mll_jax.config import MLLConfig
from mll_jax.errors import MLLError, StaleClassifierError
from mll_jax.families.base import label_fingerprint, model_fingerprint
from mll_jax.reuse import Reuser, VLMPatch
from mll_jax.selection import Selection
from mll_jax.vlm_classifier import (BOTH_MODELS, VLM_CHCO_FORMAT, VLM_FORMAT, VLMClassifier, VLMExpertClassifier,
                                    read_meta, vlm_selection_from_json, vlm_selection_to_json)

__all__ = ["Classifier", "BothClassifier", "VLMClassifier", "VLMExpertClassifier", "load_classifier"]


def _is_system(obj) -> bool:
    """Whether ``obj`` is the MLL system (it loads experts and VLMs by id and has a hub)."""
    return callable(getattr(obj, "expert", None)) and callable(getattr(obj, "family", None)) and hasattr(obj, "hub")


class Classifier:
    """A zero-shot classifier: a :class:`Selection` reused as an entropy-weighted ensemble (Eq. 12-13).

    ``experts``: an :class:`mll_jax.system.MLL` system, a hub (``.load``) or a mapping ``model_id -> expert``.
    """

    def __init__(self, selection: Selection, experts, patch=None, config: MLLConfig | None = None, *,
                 label_fingerprint: str | None = None, model_fingerprints: Mapping[str, str] | None = None):
        self.selection = selection
        self.config = config or MLLConfig()
        self.label_fingerprint = label_fingerprint
        self.model_fingerprints = dict(model_fingerprints or {})
        source = experts
        if _is_system(experts):
            source = {m: experts.expert(m) for m in selection.used_model_ids}
        self.patch = patch
        self._reuser = Reuser(selection, source, patch, patch_mode=self.config.patch_mode,
                              patch_weight=self.config.patch_weight, batch_size=self.config.reuse_batch_size,
                              progress=self.config.progress, on_nonfinite=self.config.on_nonfinite)

    @property
    def class_names(self) -> list[str]:
        return list(self.selection.class_names or [])

    def scores(self, images) -> np.ndarray:
        """``(N, C)`` class scores for an image batch (see :mod:`mll_jax.images` for the contract)."""
        return self._reuser.scores(images)

    def predict(self, images) -> np.ndarray:
        """``(N,)`` class indices (``-1``: abstained, see ``MLLConfig.on_nonfinite``)."""
        return self._reuser.predict(images)

    def predictions(self, scores) -> np.ndarray:
        """:meth:`predict`'s rule on scores from :meth:`scores` (predict and score in one pass)."""
        return self._reuser.predictions(scores)

    @property
    def progress(self) -> bool:
        return self._reuser.progress

    @progress.setter
    def progress(self, value: bool) -> None:
        self._reuser.progress = bool(value)

    def predict_names(self, images) -> list[str | None]:
        names = self.class_names
        return [names[i] if i >= 0 else None for i in self.predict(images)]

    def explain(self) -> list[dict]:
        """Per class: the matched node and similarity, the experts with their losses and heaviest heads (with
        head names where the hub has them), or why it went to the patch."""
        rows = self.selection.explain()
        for r in rows:
            for e in r["experts"]:
                names = getattr(self._reuser.experts.get(e["model"]), "head_names", None)
                for h in e["heads"]:
                    h["name"] = names[h["head"]] if names is not None and h["head"] < len(names) else None
            if r["uncovered"]:
                r["served_by"] = "patch" if self.patch is not None else "nobody (no patch: never predicted)"
        return rows

    #: prefix of an expert's line in :meth:`explain_text` (subclasses that mix model kinds set it)
    expert_prefix = ""

    def uncovered_text(self, row: dict) -> str:
        """The :meth:`explain_text` line of an uncovered class."""
        return f"    uncovered: {row['uncovered']}; served by {row['served_by']}"

    def explain_text(self) -> str:
        lines = []
        for r in self.explain():
            node = f"{r['node']} (similarity {r['similarity']:.2f})" if r["node"] else "no node"
            lines.append(f"{r['class']!r} -> {node}")
            for e in r["experts"]:
                heads = ", ".join(f"{h['name'] or h['head']} {h['weight']:.2f}" for h in e["heads"])
                lines.append(f"    {self.expert_prefix}{e['model']}: loss {e['loss']:.3f}; heads: {heads}")
            if r["uncovered"]:
                lines.append(self.uncovered_text(r))
        return "\n".join(lines)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Save selection, predictor columns, matches, config, model ids and fingerprints (one ``.npz``, atomic)."""
        path = Path(path)
        self.selection.save(path, extra={
            "format": "mll_jax.classifier/1",
            "config": self.config.to_dict(),
            "label_fingerprint": self.label_fingerprint,
            "model_fingerprints": self.model_fingerprints,
            "patch": None if self.patch is None else type(self.patch).__name__,
        })
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, experts, *, patch=None, labels=None, check: bool = True,
             progress: bool | None = None, models: str = "experts") -> "Classifier":
        """Load a saved classifier.  ``experts``: an :class:`MLL` system (its labels and hub are checked against
        the saved fingerprints unless ``check=False``), a hub or a mapping.  Raises
        :class:`StaleClassifierError` when the labels or the used models' weights changed since it was saved."""
        extra = Selection.read_extra(path)
        if extra.get("format") != "mll_jax.classifier/1":
            raise MLLError(f"{path} is not a saved mll_jax classifier")
        if extra.get("models", "experts") != models:
            raise MLLError(f"{path} was saved with models={extra.get('models')!r}: load it with MLL.load_classifier")
        sel = Selection.load(path)
        config = MLLConfig.from_dict(extra["config"])
        if progress is not None:
            config = config.replace(progress=bool(progress))
        if _is_system(experts) and check:
            labels = experts.labels if labels is None else labels
            missing = [m for m in sel.used_model_ids if m not in experts.hub]
            if missing:
                raise StaleClassifierError(f"{path}: models {missing} are no longer in the hub")
            now = {m: model_fingerprint(experts.hub, m) for m in sel.used_model_ids}
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
        return (f"Classifier({len(self.class_names)} classes, {cov} covered, models "
                f"{list(self.selection.used_model_ids)}, scorer {self.selection.method})")


class BothClassifier(Classifier):
    """``models="both"``: the expert selection for the classes it covers, the VLM ensemble (a
    :class:`VLMPatch`) for the others (see the module docstring for the rule)."""

    models = "both"

    def __init__(self, selection, experts, patch, config=None, **kw):
        super().__init__(selection, experts, patch, config, **kw)
        self._mll = experts

    @property
    def vlm_selection(self):
        return self.patch.selection

    def explain(self) -> list[dict]:
        """Expert rows as :meth:`Classifier.explain` (``served_by="experts"``); uncovered classes say why
        and list the VLMs serving them (``served_by="vlms"``, ``vlms``: model, F1, score)."""
        rows = super().explain()
        ex = self.vlm_selection.explain()
        for r in rows:
            if r["uncovered"]:
                r["served_by"] = "vlms"
                r["vlms"] = [{"model": m, "f1": f, "score": s} for m, f, s in ex[r["class"]]["models"]]
            else:
                r["served_by"] = "experts"
        return rows

    expert_prefix = "expert "

    def uncovered_text(self, row: dict) -> str:
        return (f"    not covered by experts ({row['uncovered']}); served by VLMs: "
                + ", ".join(f"{v['model']} (F1 {v['f1']:.3f})" for v in row["vlms"]))

    def save(self, path) -> Path:
        """:meth:`Classifier.save` plus the VLM selection and its VLMs' fingerprints / label keys."""
        path = Path(path)
        self.selection.save(path, extra={
            "format": "mll_jax.classifier/1", "models": BOTH_MODELS,
            "config": self.config.to_dict(),
            "label_fingerprint": self.label_fingerprint,
            "model_fingerprints": self.model_fingerprints,
            "patch": "VLMPatch",
            "vlm_selection": vlm_selection_to_json(self.vlm_selection),
            "vlm_state": self._mll.family("vlms").saved_state(self.vlm_selection.model_ids),
        })
        return path

    @classmethod
    def load(cls, path, experts, *, patch=None, labels=None, check: bool = True) -> "BothClassifier":
        """Load a saved ``models="both"`` classifier; ``experts`` must be the :class:`MLL` system (the VLM patch
        is rebuilt from the saved VLM selection; stale experts, labels or VLMs raise
        :class:`mll_jax.errors.StaleClassifierError`)."""
        if not _is_system(experts):
            raise MLLError("a models='both' classifier loads from the MLL system (its hub holds the VLMs)")
        if patch is not None:
            raise MLLError("a models='both' classifier brings its own VLM patch; patch= does not apply")
        extra = Selection.read_extra(path)
        if extra.get("models") != BOTH_MODELS:
            raise MLLError(f"{path} is not a saved models='both' classifier")
        if check:
            experts.family("vlms").check_saved_state(path, extra["vlm_state"])
        vsel = vlm_selection_from_json(extra["vlm_selection"])
        vpatch = VLMPatch(vsel, {m: experts.vlm(m) for m in vsel.used_models})
        plain = Classifier.load(path, experts, patch=vpatch, labels=labels, check=check, models=BOTH_MODELS)
        return cls(plain.selection, experts, vpatch, plain.config, label_fingerprint=plain.label_fingerprint,
                   model_fingerprints=plain.model_fingerprints)


def load_classifier(path, mll, *, check: bool = True):
    """Load a classifier of any saved format with the system ``mll`` (``check``: raise
    :class:`mll_jax.errors.StaleClassifierError` when the labels or the models' weights changed since)."""
    meta = read_meta(path)
    if meta.get("format") == VLM_FORMAT:
        return VLMClassifier.load(path, mll, check=check)
    extra = (meta.get("extra") or {})
    if extra.get("format") == VLM_CHCO_FORMAT:
        return VLMExpertClassifier.load(path, mll, check=check)
    if extra.get("models") == BOTH_MODELS:
        return BothClassifier.load(path, mll, check=check)
    if extra.get("format") == "mll_jax.classifier/1":
        return Classifier.load(path, mll, check=check)
    raise MLLError(f"{path} is not a saved mll_jax classifier")
