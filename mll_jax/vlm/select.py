"""Select VLMs for a target task from their labels alone, and reuse them (the entropy-weighted ensemble).

::

    sel = select_vlms(class_names, labels, nodes, node_texts, encoder, k=1)   # no model runs on task data
    logits = {m: task_logits(vlms[m], images, class_names) for m in sel.used_models}
    pred = predict(sel, logits)

Matching: each class's query text (its name, or ``"<name>: <description>"`` when a description is given) and
each node's text (``SDAG.text``: ``"Name: ...\\nDescription: ..."``) are embedded by the text encoder
(:class:`mll_jax.text.TextEncoder`, MiniLM); the class takes its top-5 nodes with normalised similarity weights
(:func:`mll_jax.vlm.core.match_weights`).  ``class_descriptions(..., source="wordnet")`` offers the definition of
the first WordNet noun sense of a class name as its description (first senses can be wrong: "sneaker" is first a
person) -- it is opt-in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from mll_jax.names import check_class_names
from mll_jax.vlm import core
from mll_jax.vlm.labels import VLMLabels
from mll_jax.vlm.models import zero_shot_logits
from mll_jax.wordnet import get_wordnet

__all__ = ["VLMSelection", "class_query_texts", "class_descriptions", "select_vlms", "task_logits",
           "reuse_scores", "predict"]


def _check_classes(class_names: Sequence[str]) -> list[str]:
    return check_class_names(class_names)


def class_query_texts(class_names: Sequence[str], descriptions: Mapping[str, str] | None = None) -> list[str]:
    """The text matched against node texts: the plain name, or ``"Name: <n>\\nDescription: <d>"`` (the node-text
    format) when ``descriptions`` has one for the class."""
    descriptions = descriptions or {}
    return [f"Name: {c}\nDescription: {descriptions[c]}" if descriptions.get(c) else c for c in class_names]


def class_descriptions(class_names: Sequence[str], source: str = "wordnet", wn=None) -> dict[str, str]:
    """Descriptions for class names: ``"wordnet"`` takes the definition of the first noun synset having the
    name as a lemma (classes that are no lemma get none)."""
    if source != "wordnet":
        raise ValueError(f"unknown description source {source!r} (expected 'wordnet')")
    if wn is None:
        wn = get_wordnet()
    out = {}
    for c in class_names:
        ss = wn.synsets(c.strip().replace(" ", "_"), pos="n")
        if ss:
            out[c] = ss[0].definition()
    return out


@dataclass
class VLMSelection:
    """The result of :func:`select_vlms` (everything is indexed by ``model_ids`` / ``class_names`` order)."""

    class_names: list[str]
    model_ids: list[str]
    nodes: list[str]
    match_idx: np.ndarray  # (C, T) indices into nodes
    match_weights: np.ndarray  # (C, T)
    match_sims: np.ndarray  # (C, T)
    f1: np.ndarray  # (M, C)
    scores: np.ndarray  # (M, C) r
    chosen: np.ndarray  # (C, k) indices into model_ids, best first
    alpha: float = core.DEFAULT_ALPHA
    meta: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.chosen.shape[1])

    @property
    def mask(self) -> np.ndarray:
        """``(M, C)`` bool: model ``m`` serves class ``y``."""
        return np.asarray(core.selection_mask(jnp.asarray(self.chosen), len(self.model_ids)))

    @property
    def used_models(self) -> list[str]:
        """Models selected for at least one class (hub order)."""
        return [m for m, used in zip(self.model_ids, self.mask.any(1)) if used]

    def models_for(self, class_name: str) -> list[str]:
        return [self.model_ids[i] for i in self.chosen[self.class_names.index(class_name)]]

    def explain(self) -> dict:
        """Per class: matched nodes with weights, and the selected models with F1 and score."""
        out = {}
        for c, name in enumerate(self.class_names):
            out[name] = {
                "nodes": [(self.nodes[j], round(float(w), 4), round(float(s), 4))
                          for j, w, s in zip(self.match_idx[c], self.match_weights[c], self.match_sims[c])],
                "models": [(self.model_ids[m], round(float(self.f1[m, c]), 4), round(float(self.scores[m, c]), 4))
                           for m in self.chosen[c]],
            }
        return out

    #: array fields of :meth:`to_dict` / :meth:`from_dict` (int32: ``match_idx``, ``chosen``; float32: the rest)
    ARRAYS = ("match_idx", "match_weights", "match_sims", "f1", "scores", "chosen")

    def to_dict(self) -> dict:
        """A JSON-able dict (the record saved with a classifier; :meth:`from_dict` reads it back)."""
        return {"class_names": list(self.class_names), "model_ids": list(self.model_ids), "nodes": list(self.nodes),
                "alpha": float(self.alpha), **{f: np.asarray(getattr(self, f)).tolist() for f in self.ARRAYS}}

    @classmethod
    def from_dict(cls, d: Mapping) -> "VLMSelection":
        arr = {f: np.asarray(d[f], np.int32 if f in ("match_idx", "chosen") else np.float32) for f in cls.ARRAYS}
        return cls(list(d["class_names"]), list(d["model_ids"]), list(d["nodes"]), arr["match_idx"],
                   arr["match_weights"], arr["match_sims"], arr["f1"], arr["scores"], arr["chosen"],
                   float(d["alpha"]))

    def with_chosen(self, chosen) -> "VLMSelection":
        """The same selection with other per-class models (baselines in the same slot)."""
        chosen = np.asarray(chosen, np.int32)
        if chosen.ndim == 1:
            chosen = np.repeat(chosen[None], len(self.class_names), 0) if chosen.size != len(self.class_names) \
                else chosen[:, None]
        if chosen.shape[0] != len(self.class_names):
            raise ValueError(f"chosen must have one row per class ({len(self.class_names)}), got {chosen.shape}")
        return VLMSelection(self.class_names, self.model_ids, self.nodes, self.match_idx, self.match_weights,
                            self.match_sims, self.f1, self.scores, chosen, self.alpha, dict(self.meta))


def select_vlms(class_names: Sequence[str], labels: Mapping[str, VLMLabels] | Sequence[VLMLabels],
                nodes: Sequence[str], node_texts: Sequence[str] | None = None, encoder=None, *,
                node_emb: np.ndarray | None = None, class_emb: np.ndarray | None = None,
                descriptions: Mapping[str, str] | None = None, k: int = 1, alpha: float = core.DEFAULT_ALPHA,
                top: int = core.DEFAULT_TOP_NODES, scope: str = "all",
                node_logits: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> VLMSelection:
    """Per class, the top-``k`` VLMs by the score ``r`` computed from their labels alone.

    Args:
      class_names: the task's classes.
      labels: the VLMs' labels (all over the same node set).
      nodes: the candidate nodes (the labelled ones), in the order of ``node_texts`` / ``node_emb``.
      node_texts, encoder: node texts for matching (``SDAG.text``) and the text encoder embedding them and the
        class queries; or precomputed ``node_emb`` / ``class_emb`` (unit rows).
      descriptions: optional class name -> description (appended to the query text).
      scope: ``"all"`` -- the stored counts (prediction among all labelled nodes); ``"task"`` -- counts recomputed
        with the prediction restricted to the nodes the task matched (with positive weight) and only their images
        counted (the authors' rule); needs ``node_logits`` (:func:`mll_jax.vlm.labels.node_logits` per model).
    """
    names = _check_classes(class_names)
    if isinstance(labels, Mapping):
        labels = list(labels.values())
    labels = list(labels)
    if not labels:
        raise ValueError("no VLM labels given: label at least one VLM first")
    nodes = list(nodes)
    if not 1 <= k <= len(labels):
        raise ValueError(f"k must be in [1, {len(labels)}] (the number of labelled VLMs), got {k}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    counts = np.stack([lab.aligned(nodes) for lab in labels])  # (M, V, 3)
    if node_emb is None:
        if encoder is None or node_texts is None:
            raise ValueError("give node_texts and a text encoder, or node_emb")
        if len(node_texts) != len(nodes):
            raise ValueError(f"{len(node_texts)} node texts for {len(nodes)} nodes")
        node_emb = encoder.encode(list(node_texts))
    if class_emb is None:
        if encoder is None:
            raise ValueError("give a text encoder or class_emb")
        class_emb = encoder.encode(class_query_texts(names, descriptions))
    if len(node_emb) != len(nodes) or len(class_emb) != len(names):
        raise ValueError(f"embedding rows ({len(class_emb)} classes, {len(node_emb)} nodes) do not match "
                         f"{len(names)} classes / {len(nodes)} nodes")
    idx, w, sims = core.match_weights(jnp.asarray(class_emb), jnp.asarray(node_emb), top=top)
    if scope == "task":
        if node_logits is None:
            raise ValueError("scope='task' needs node_logits (mll_jax.vlm.labels.node_logits) for every VLM")
        missing = [lab.model_id for lab in labels if lab.model_id not in node_logits]
        if missing:
            raise KeyError(f"node_logits missing for VLMs {missing}")
        active = np.zeros(len(nodes), bool)
        active[np.asarray(idx)[np.asarray(w) > 0]] = True
        rows = []
        for lab in labels:
            lg, nl = node_logits[lab.model_id]
            order = [list(lab.nodes).index(n) for n in nodes]  # node_logits columns follow lab.nodes
            inv = np.argsort(order)
            rows.append(core.restricted_node_counts(jnp.asarray(np.asarray(lg)[:, order]),
                                                    jnp.asarray(inv[np.asarray(nl)]), jnp.asarray(active)))
        counts = np.stack([np.asarray(r) for r in rows])
    elif scope != "all":
        raise ValueError(f"scope must be 'all' or 'task', got {scope!r}")
    f1 = core.f1_score(core.class_counts(jnp.asarray(counts), idx, w))
    r = core.selection_scores(f1, alpha)
    chosen = core.select_topk(r, k)
    return VLMSelection(names, [lab.model_id for lab in labels], nodes, np.asarray(idx), np.asarray(w),
                        np.asarray(sims), np.asarray(f1), np.asarray(r), np.asarray(chosen), float(alpha))


def task_logits(vlm, images: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """``(N, C)`` zero-shot logits of a VLM over the task classes (each class name through ``vlm.prompt``)."""
    return zero_shot_logits(vlm, images, [vlm.prompt(c) for c in _check_classes(class_names)])


def reuse_scores(sel: VLMSelection, logits: Mapping[str, np.ndarray],
                 min_entropy: float = core.MIN_ENTROPY_BITS) -> np.ndarray:
    """``(N, C)`` ensemble scores (:func:`mll_jax.vlm.core.ensemble_scores`) from the used models' task logits."""
    used = sel.used_models
    missing = [m for m in used if m not in logits]
    if missing:
        raise KeyError(f"task logits missing for selected VLMs {missing}")
    rows = [sel.model_ids.index(m) for m in used]
    lg = np.stack([np.asarray(logits[m], np.float32) for m in used])
    if lg.ndim != 3 or lg.shape[2] != len(sel.class_names):
        raise ValueError(f"task logits must be (N, {len(sel.class_names)}) per model, got {lg.shape[1:]}")
    return np.asarray(core.ensemble_scores(jnp.asarray(lg), jnp.asarray(sel.mask[rows]), min_entropy))


def predict(sel: VLMSelection, logits: Mapping[str, np.ndarray], **kw) -> np.ndarray:
    return np.argmax(reuse_scores(sel, logits, **kw), axis=1)
