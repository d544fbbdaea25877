"""Classifiers served by the hub's VLMs alone (``MLL.classifier(names, models="vlms")``).

* :class:`VLMClassifier` -- the MLL-VLM selection (:mod:`mll_jax.vlm.select`) reused as the entropy-weighted VLM
  ensemble (:class:`mll_jax.reuse.VLMPatch`); saved as ``mll_jax.vlm_classifier/1``.
* :class:`VLMExpertClassifier` -- the CHCO-style baseline (``method="chco"``, :mod:`mll_jax.vlm.expert_style`):
  each selected VLM's heads are ``scale * cos(image, node text)``, reused by the expert ensemble; saved as the
  expert selection's ``.npz`` with format ``mll_jax.vlm_chco_classifier/1``.

``mll`` is the :class:`mll_jax.system.MLL` holding the VLMs (used through ``mll.vlm(id)`` and its VLM family).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mll_jax.errors import MLLError
from mll_jax.images import as_image_batch
from mll_jax.reuse import VLMPatch, ensemble_scores
from mll_jax.selection import Selection
from mll_jax.utils import atomic_write
from mll_jax.vlm.expert_style import head_logits
from mll_jax.vlm.select import VLMSelection

__all__ = ["VLM_FORMAT", "VLM_CHCO_FORMAT", "BOTH_MODELS", "vlm_selection_to_json", "vlm_selection_from_json",
           "read_meta", "VLMClassifier", "VLMExpertClassifier"]

VLM_FORMAT = "mll_jax.vlm_classifier/1"
BOTH_MODELS = "both"


def vlm_selection_to_json(sel) -> dict:
    return {"class_names": list(sel.class_names), "model_ids": list(sel.model_ids), "nodes": list(sel.nodes),
            "alpha": float(sel.alpha),
            **{f: np.asarray(getattr(sel, f)).tolist() for f in ("match_idx", "match_weights", "match_sims", "f1",
                                                                  "scores", "chosen")}}


def vlm_selection_from_json(d: Mapping[str, Any]):
    arr = {f: np.asarray(d[f], np.int32 if f in ("match_idx", "chosen") else np.float32)
           for f in ("match_idx", "match_weights", "match_sims", "f1", "scores", "chosen")}
    return VLMSelection(list(d["class_names"]), list(d["model_ids"]), list(d["nodes"]), arr["match_idx"],
                        arr["match_weights"], arr["match_sims"], arr["f1"], arr["scores"], arr["chosen"],
                        float(d["alpha"]))


def read_meta(path) -> dict:
    """The ``meta`` JSON of a saved classifier (``FileNotFoundError`` if absent, :class:`MLLError` if unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(bytes(data["meta"]).decode())
    except FileNotFoundError:
        raise FileNotFoundError(f"no saved classifier at {path}") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise MLLError(f"{path} is not a readable saved classifier ({type(e).__name__}: {e})") from e


class VLMClassifier:
    """A classifier served by VLMs only (``MLL.classifier(..., models="vlms")``): VLM selection from the labels,
    entropy-weighted VLM ensemble (:func:`mll_jax.vlm.select.reuse_scores`)."""

    models = "vlms"

    def __init__(self, selection, vlms: Mapping[str, Any], mll=None):
        self.selection = selection
        self._patch = VLMPatch(selection, vlms)
        self._mll = mll

    @property
    def class_names(self) -> list[str]:
        return list(self.selection.class_names)

    def scores(self, images) -> np.ndarray:
        return self._patch.scores(images)

    #: display setting (the VLM ensemble shows no progress bar)
    progress = False

    def predict(self, images) -> np.ndarray:
        return self.predictions(self.scores(images))

    def predictions(self, scores) -> np.ndarray:
        """:meth:`predict`'s rule on scores already computed: argmax, -1 where a row is not finite."""
        s = np.asarray(scores)
        return np.where(np.isfinite(s).all(axis=1), np.argmax(np.nan_to_num(s, nan=-np.inf), axis=1), -1)

    def predict_names(self, images) -> list[str | None]:
        return [self.class_names[i] if i >= 0 else None for i in self.predict(images)]

    def explain(self) -> list[dict]:
        """Per class: ``served_by="vlms"``, the matched nodes (weights, similarities) and the VLMs with F1 / r."""
        ex = self.selection.explain()
        return [{"class": c, "served_by": "vlms", "nodes": ex[c]["nodes"],
                 "vlms": [{"model": m, "f1": f, "score": r} for m, f, r in ex[c]["models"]]}
                for c in self.class_names]

    def explain_text(self) -> str:
        lines = []
        for r in self.explain():
            nodes = ", ".join(f"{n} {w:.2f}" for n, w, _ in r["nodes"] if w > 0)
            lines.append(f"{r['class']!r} -> VLMs (nodes: {nodes})")
            for v in r["vlms"]:
                lines.append(f"    {v['model']}: F1 {v['f1']:.3f}; score {v['score']:.3f}")
        return "\n".join(lines)

    def save(self, path, mll=None) -> Path:
        """Write the VLM selection (one ``.npz``, atomic); with ``mll``, also the fingerprints and label keys of
        its VLMs, so that :func:`load_classifier` detects changed weights or labels."""
        meta = {"format": VLM_FORMAT, "models": "vlms", "selection": vlm_selection_to_json(self.selection),
                "vlm_state": (mll or self._mll).family("vlms").saved_state(self.selection.model_ids)}
        path = Path(path)
        atomic_write(path, lambda fh: np.savez(fh, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8)))
        return path

    @classmethod
    def load(cls, path, mll, *, check: bool = True) -> "VLMClassifier":
        """Load a classifier saved by :meth:`save`."""
        meta = read_meta(path)
        if meta.get("format") != VLM_FORMAT:
            raise MLLError(f"{path} is not a saved VLM classifier")
        if check:
            mll.family("vlms").check_saved_state(path, meta["vlm_state"])
        vsel = vlm_selection_from_json(meta["selection"])
        return cls(vsel, {m: mll.vlm(m) for m in vsel.used_models}, mll)

    def __repr__(self) -> str:
        return f"VLMClassifier({len(self.class_names)} classes, VLMs {self.selection.used_models})"


VLM_CHCO_FORMAT = "mll_jax.vlm_chco_classifier/1"


class VLMExpertClassifier:
    """``MLL.classifier(..., models="vlms", vlm_options={"method": "chco"})``: the CHCO-style VLM baseline
    (:mod:`mll_jax.vlm.expert_style`).  Each selected VLM's heads are ``scale * cos(image, node text)`` over the
    node texts of its labelling (the stored text embeddings); the scores are the expert ensemble
    (:func:`mll_jax.reuse.ensemble_scores`) with the CHCO columns.  Uncovered classes score 0."""

    models = "vlms"
    method = "chco"
    progress = False

    def __init__(self, selection, vlms: Mapping[str, Any], text_emb: Mapping[str, np.ndarray], scale: float,
                 mll=None):
        self.selection = selection
        self.vlms = dict(vlms)
        self.text_emb = dict(text_emb)
        self.scale = float(scale)
        self._mll = mll

    @property
    def class_names(self) -> list[str]:
        return list(self.selection.class_names)

    def head_logits(self, images) -> dict:
        images = as_image_batch(images)
        return {m: head_logits(self.vlms[m].encode_images(images), self.text_emb[m], self.scale)
                for m in self.selection.used_model_ids}

    def scores(self, images) -> np.ndarray:
        images = as_image_batch(images)
        return ensemble_scores(self.selection, self.head_logits(images), len(images))

    def predict(self, images) -> np.ndarray:
        return self.predictions(self.scores(images))

    def predictions(self, scores) -> np.ndarray:
        """Argmax; -1 where a row is not finite or every class scores 0 (no selected VLM says anything)."""
        s = np.asarray(scores)
        ok = np.isfinite(s).all(axis=1) & (np.nan_to_num(s).max(axis=1) > 0)
        return np.where(ok, np.argmax(np.nan_to_num(s, nan=-np.inf), axis=1), -1)

    def predict_names(self, images) -> list[str | None]:
        return [self.class_names[i] if i >= 0 else None for i in self.predict(images)]

    def explain(self) -> list[dict]:
        """Per class: ``served_by="vlms"``, ``method="chco"``, the matched node and similarity, the VLMs with their
        CHCO loss (and top heads), or why the class is uncovered."""
        return [{"class": r["class"], "served_by": "vlms", "method": "chco", "node": r["node"],
                 "similarity": r["similarity"],
                 "vlms": [{"model": e["model"], "loss": e["loss"], "heads": e["heads"]} for e in r["experts"]],
                 "uncovered": r["uncovered"]} for r in self.selection.explain()]

    def explain_text(self) -> str:
        lines = []
        for r in self.explain():
            if r["uncovered"]:
                lines.append(f"{r['class']!r} -> uncovered ({r['uncovered']})")
                continue
            lines.append(f"{r['class']!r} -> VLMs as CHCO experts (node {r['node']}, similarity {r['similarity']:.2f})")
            for v in r["vlms"]:
                lines.append(f"    {v['model']}: CHCO loss {v['loss']:.3f}")
        return "\n".join(lines)

    def save(self, path, mll=None) -> Path:
        """Write the selection (the expert pipeline's ``.npz``, atomic) with the head scale and, for
        :func:`load_classifier`, the fingerprints and label keys of the candidate VLMs."""
        self.selection.save(path, extra={"format": VLM_CHCO_FORMAT, "models": "vlms", "method": "chco",
                                         "scale": self.scale,
                                         "vlm_state": (mll or self._mll).family("vlms").saved_state(self.selection.model_ids)})
        return Path(path)

    @classmethod
    def load(cls, path, mll, *, check: bool = True) -> "VLMExpertClassifier":
        extra = Selection.read_extra(path)
        if extra.get("format") != VLM_CHCO_FORMAT:
            raise MLLError(f"{path} is not a saved CHCO-style VLM classifier")
        if check:
            mll.family("vlms").check_saved_state(path, extra["vlm_state"])
        sel = Selection.load(path)
        used = list(sel.used_model_ids)
        return cls(sel, {m: mll.vlm(m) for m in used}, mll.family("vlms").node_text_embeddings(used), extra["scale"], mll)

    def __repr__(self) -> str:
        return f"VLMExpertClassifier({len(self.class_names)} classes, VLMs {list(self.selection.used_model_ids)})"
