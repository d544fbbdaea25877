"""The CHCO-style baseline for VLMs (issue 8): a VLM treated as an *expert*, selected and reused by the expert
pipeline of :mod:`mll_jax.selection` / :mod:`mll_jax.reuse` instead of by F1 counts.

**Heads.**  A VLM's heads are its zero-shot logits over the SDAG node texts its VLM labelling uses
(:func:`mll_jax.vlm.labels.sdag_node_texts`: ``"<name>: <definition>"`` of every node with images)::

    f_m(x)[h] = scale * cos(image(x), text(node_h))          scale = 100 (the issue's labelling logits)

so every VLM has ``H = V`` heads, one per labelled node, whatever its own logit scale (``scale`` is a parameter).

**Label (Eq. 1).**  The expert-style label of node ``v`` is the mean of those logits over ``v``'s images:
``r_v^m = mean_{x in D_v} f_m(x)`` (:func:`raw_node_labels`, a pure segment mean).  It is computed from the image
and text embeddings the VLM labelling already stored (:func:`mll_jax.vlm.labels.node_logits`): no image tower runs
again.  **Smoothing (Eq. 2)** over an SDAG (the expert pipeline's, e.g. the WordNet subtrees above the labelled
nodes), with :func:`mll_jax.labelling.smooth_labels` / :func:`mll_jax.labelling.dag_index` exactly as for experts
(discount ``delta``, default :data:`mll_jax.config.DEFAULT_DELTA`): nodes without images but with labelled
hyponyms (``footwear``, ``clothing``) get labels too.  Without an SDAG the labels are the raw rows of the labelled
nodes.

**Matching.**  Each class goes to ONE node, as for experts (:func:`mll_jax.text.match_classes`: MiniLM cosine
between the class name and the node's matching text, similarity floor ``threshold``); a class below the floor is
uncovered.

**Selection.**  :func:`mll_jax.selection.select_models` with the ``"chco"`` scorer over the VLMs' expert-style
labels: per VLM, CHCO over the matched nodes (``S_m = rows of the matched nodes, transposed``: heads x classes)
gives a per-class loss and the combination ``X_m`` (heads -> one-vs-rest class scores); per class the top ``k``
VLMs with loss ``<= beta`` (the expert default :data:`mll_jax.config.DEFAULT_BETA`).  CHCO needs two matched
classes; classes with no VLM under ``beta`` are uncovered (:meth:`mll_jax.selection.Selection.uncovered_reason`).

**Reuse.**  :func:`mll_jax.reuse.ensemble_scores` (Eq. 12-13) on the selected VLMs' head logits of the task
images: ``softmax(f_m(x)) @ X_m`` per class, weighted by ``1 - entropy / log H``.  Uncovered classes score 0 (or
take a patch's scores, e.g. the MLL-VLM ensemble via :func:`mll_jax.reuse.patch_logits`).  Note that the
task's class names are never shown to the VLM here (unlike MLL-VLM, whose reuse prompts the class names): the
VLM only reads its node texts, and CHCO's ``X`` maps them to the classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mll_jax import text
from mll_jax.config import DEFAULT_BETA, DEFAULT_DELTA, DEFAULT_MATCH_THRESHOLD
from mll_jax.labelling import dag_index, smooth_labels
from mll_jax.selection import DictLabels, ModelScores, chco_scores, expand_classes, label_submatrices, select
from mll_jax.vlm.labels import node_text_embeddings

__all__ = ["DEFAULT_HEAD_SCALE", "ExpertStyleLabels", "raw_node_labels", "expert_style_labels", "label_source",
           "common_nodes", "match_nodes", "chco_vlm_scores", "select_vlms_chco", "head_logits", "vlm_head_logits", "VLMHeads"]

#: Scale of the heads' logits: the issue's VLM labelling logits ``100 * cos(image, text(node))``.
DEFAULT_HEAD_SCALE = 100.0


@partial(jax.jit, static_argnames="num_nodes")
def raw_node_labels(logits, node_index, num_nodes: int):
    """Eq. 1 on arrays: ``(labels (num_nodes, H), has_images (num_nodes,) bool)``.

    ``logits``: ``(N, H)`` head logits of every node image; ``node_index``: ``(N,)`` int, the node of each image
    (entries outside ``[0, num_nodes)`` are dropped: padding).  Row ``v`` is the mean of the logits of ``v``'s
    images (0 for a node without images).  Pure and jitted.
    """
    logits = jnp.asarray(logits, jnp.float32)
    node_index = jnp.asarray(node_index, jnp.int32)
    valid = (node_index >= 0) & (node_index < num_nodes)
    seg = jnp.where(valid, node_index, num_nodes)  # an extra segment for padding
    sums = jax.ops.segment_sum(jnp.where(valid[:, None], logits, 0.0), seg, num_segments=num_nodes + 1)[:num_nodes]
    cnt = jax.ops.segment_sum(valid.astype(jnp.float32), seg, num_segments=num_nodes + 1)[:num_nodes]
    return sums / jnp.maximum(cnt, 1.0)[:, None], cnt > 0


@dataclass(frozen=True)
class ExpertStyleLabels:
    """A VLM's expert-style labels: ``rows[i]`` is the (smoothed) label of node ``wnids[i]`` over the heads
    ``heads`` (the node texts of the VLM labelling, in its node order)."""

    model_id: str
    heads: tuple[str, ...]
    wnids: tuple[str, ...]
    rows: np.ndarray  # (len(wnids), len(heads)) float32
    scale: float
    delta: float | None  # None: not smoothed

    def read(self, wnids: Sequence[str]) -> np.ndarray:
        pos = {w: i for i, w in enumerate(self.wnids)}
        missing = [w for w in wnids if w not in pos]
        if missing:
            raise KeyError(f"VLM {self.model_id!r} has no expert-style label for nodes {missing[:5]}")
        return self.rows[[pos[w] for w in wnids]]


def expert_style_labels(labels, node_logits: tuple[np.ndarray, np.ndarray], sdag=None, *,
                        scale: float = DEFAULT_HEAD_SCALE, delta: float = DEFAULT_DELTA) -> ExpertStyleLabels:
    """Expert-style labels of one VLM from its VLM labelling (no model runs).

    Args:
      labels: the VLM's :class:`mll_jax.vlm.labels.VLMLabels` (its ``nodes`` are the heads).
      node_logits: ``(cos (N, V), node index (N,))`` of every labelled image against every node text, columns and
        indices in ``labels.nodes`` order (:func:`mll_jax.vlm.labels.node_logits`).
      sdag: an SDAG holding every labelled node, for the Eq. 2 smoothing (``None``: raw labels of the labelled
        nodes only).
      scale: the heads' logit scale (``scale * cos``); delta: the Eq. 2 discount.
    """
    heads = tuple(labels.nodes)
    cos, idx = node_logits
    cos = np.asarray(cos, np.float32)
    idx = np.asarray(idx)
    if cos.ndim != 2 or cos.shape[1] != len(heads) or idx.shape != (cos.shape[0],):
        raise ValueError(f"node_logits of VLM {labels.model_id!r} must be ((N, {len(heads)}), (N,)), got "
                         f"{cos.shape} and {idx.shape}")
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    raw, has = raw_node_labels(float(scale) * cos, idx, len(heads))
    raw, has = np.asarray(raw), np.asarray(has)
    if not has.all():
        bad = [h for h, ok in zip(heads, has) if not ok]
        raise ValueError(f"VLM {labels.model_id!r}: labelled nodes without images {bad[:5]}")
    if sdag is None:
        return ExpertStyleLabels(labels.model_id, heads, heads, raw.astype(np.float32), float(scale), None)
    if not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta must be in [0, 1], got {delta}")
    nodes = list(sdag.nodes)
    pos = {w: i for i, w in enumerate(nodes)}
    missing = [h for h in heads if h not in pos]
    if missing:
        raise ValueError(f"VLM {labels.model_id!r}: labelled nodes {missing[:5]} are not in the smoothing SDAG")
    own = np.zeros((len(nodes), len(heads)), np.float32)
    has_own = np.zeros(len(nodes), bool)
    for i, h in enumerate(heads):
        own[pos[h]] = raw[i]
        has_own[pos[h]] = True
    di = dag_index(sdag)
    s, has_label = smooth_labels(own, has_own, di.edge_parent, di.edge_child, float(delta), max(di.height, 1))
    has_label = np.asarray(has_label)
    wnids = tuple(w for w, ok in zip(nodes, has_label) if ok)
    return ExpertStyleLabels(labels.model_id, heads, wnids, np.asarray(s)[has_label].astype(np.float32),
                             float(scale), float(delta))


def label_source(es_labels: Mapping[str, ExpertStyleLabels] | Sequence[ExpertStyleLabels]):
    """The expert-style labels as a label reader of the expert pipeline (:class:`mll_jax.selection.DictLabels`)."""
    if isinstance(es_labels, Mapping):
        es_labels = list(es_labels.values())
    return DictLabels({e.model_id: (e.rows, list(e.wnids)) for e in es_labels})


def common_nodes(es_labels: Sequence[ExpertStyleLabels]) -> list[str]:
    """Nodes labelled for every VLM (in the first VLM's row order)."""
    es_labels = list(es_labels)
    if not es_labels:
        return []
    common = set(es_labels[0].wnids)
    for e in es_labels[1:]:
        common &= set(e.wnids)
    return [w for w in es_labels[0].wnids if w in common]


def match_nodes(class_names: Sequence[str], es_labels, node_text=None, encoder=None, *,
                threshold: float = DEFAULT_MATCH_THRESHOLD, cache_dir=None, node_emb=None, class_emb=None):
    """Each class to one node labelled for every VLM (:func:`common_nodes`), by the expert pipeline's matching
    (:func:`mll_jax.text.match_classes`; returns a list of :class:`mll_jax.text.Match`).

    ``node_text(wnid) -> str``: the node's matching text (the system's ``MLL.node_text``; offline:
    :func:`mll_jax.text.lemma_node_text`), embedded by ``encoder``; or precomputed unit embeddings ``node_emb``
    (rows in :func:`common_nodes` order) and ``class_emb`` (of the plain class names), matched by
    :func:`mll_jax.text.match_embeddings` with the same rule.
    """
    names = list(class_names)
    if isinstance(es_labels, Mapping):
        es_labels = list(es_labels.values())
    cand = common_nodes(es_labels)
    if node_emb is None or class_emb is None:
        if node_text is None or encoder is None:
            raise ValueError("give node_text and a text encoder, or node_emb and class_emb")
        return text.match_classes(names, cand, [node_text(w) for w in cand], encoder, threshold=threshold,
                                  cache_dir=cache_dir)
    if len(node_emb) != len(cand) or len(class_emb) != len(names):
        raise ValueError(f"embedding rows ({len(class_emb)} classes, {len(node_emb)} nodes) do not match "
                         f"{len(names)} classes / {len(cand)} candidate nodes")
    if not cand:
        return [text.Match(c, None, float("nan")) for c in names]
    res = text.match_embeddings(jnp.asarray(class_emb), jnp.asarray(node_emb), float(threshold))
    node, sim = np.asarray(res.node), np.asarray(res.similarity)
    return [text.Match(c, cand[k] if k >= 0 else None, float(v)) for c, k, v in zip(names, node, sim)]


def chco_vlm_scores(es_labels, wnids: Sequence[str | None], **chco_options):
    """CHCO of every VLM over the matched nodes: :class:`mll_jax.selection.ModelScores` ``(M, C)`` (unmatched
    classes, or fewer than two matched ones: ``+inf``) with the combination ``X_m`` of every VLM.  Solved once;
    :func:`select_vlms_chco` can then select for several ``k`` / ``beta`` from it.  ``chco_options``: ``method``,
    ``tol`` and solver keywords of :func:`mll_jax.selection.chco_scores`."""
    if isinstance(es_labels, Mapping):
        es_labels = list(es_labels.values())
    es_labels = list(es_labels)
    if not es_labels:
        raise ValueError("no VLM labels given: label at least one VLM first")
    ids = [e.model_id for e in es_labels]
    wnids = list(wnids)
    matched = [c for c, w in enumerate(wnids) if w is not None]
    if len(matched) < 2:  # CHCO contrasts a class with the others
        return ModelScores("chco", ids, np.full((len(ids), len(wnids)), np.inf))
    S_list = label_submatrices(label_source(es_labels), ids, [wnids[c] for c in matched])
    sc = chco_scores(S_list, ids, progress=False, **chco_options)
    return expand_classes(sc, matched, len(wnids))


def select_vlms_chco(class_names: Sequence[str], es_labels, wnids: Sequence[str | None], *, k: int = 1,
                     beta: float | None = DEFAULT_BETA, similarities: Sequence[float] | None = None,
                     match_threshold: float | None = None, scores=None, **chco_options):
    """The expert pipeline's CHCO selection over VLMs' expert-style labels: a :class:`mll_jax.selection.Selection`
    (method ``"chco"``, family ``"vlms"``; ``columns[m]`` is the ``(H, C)`` combination mapping the VLM's node-text heads to the
    classes): per class the top ``k`` VLMs with loss ``<= beta`` (:func:`mll_jax.selection.select`).
    ``wnids[c]``: class ``c``'s matched node (``None``: uncovered).  ``scores``: :func:`chco_vlm_scores` already
    computed for these labels and nodes (else solved here with ``chco_options``)."""
    if len(wnids) != len(class_names):
        raise ValueError(f"{len(wnids)} matched nodes for {len(class_names)} classes")
    if scores is None:
        scores = chco_vlm_scores(es_labels, wnids, **chco_options)
    elif scores.loss.shape[1] != len(class_names):
        raise ValueError(f"scores cover {scores.loss.shape[1]} classes, expected {len(class_names)}")
    sel = select(scores, k=int(k), beta=beta, class_names=list(class_names), wnids=list(wnids),
                 similarities=similarities, match_threshold=match_threshold)
    return dataclasses.replace(sel, family="vlms")


def head_logits(image_emb: np.ndarray, text_emb: np.ndarray, scale: float = DEFAULT_HEAD_SCALE) -> np.ndarray:
    """``(N, H)`` head logits ``scale * cos``: unit image embeddings against the unit node-text embeddings."""
    return (float(scale) * np.asarray(image_emb, np.float32) @ np.asarray(text_emb, np.float32).T).astype(np.float32)


def vlm_head_logits(vlm, images: np.ndarray, store, labels, scale: float = DEFAULT_HEAD_SCALE) -> np.ndarray:
    """The head logits of ``vlm`` on ``images``: its image embeddings against its stored node-text embeddings
    (:func:`mll_jax.vlm.labels.node_text_embeddings`; no text tower runs)."""
    return head_logits(vlm.encode_images(images), node_text_embeddings(store, labels), scale)


class VLMHeads:
    """A VLM as an expert over its node-text heads, for the expert reuser (:class:`mll_jax.reuse.Reuser`):
    ``logits(images) = scale * cos(image, node text)`` (:func:`head_logits`) against the stored node-text
    embeddings ``text_emb`` ``(H, D)`` of its labelling; ``num_heads = H``."""

    def __init__(self, vlm, text_emb: np.ndarray, scale: float = DEFAULT_HEAD_SCALE):
        self.vlm = vlm
        self.model_id = getattr(vlm, "model_id", None)
        self.text_emb = np.asarray(text_emb, np.float32)
        self.scale = float(scale)
        self.num_heads = int(self.text_emb.shape[0])

    def logits(self, images) -> np.ndarray:
        return head_logits(self.vlm.encode_images(images), self.text_emb, self.scale)
