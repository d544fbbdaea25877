"""Pure numerics of MLL for vision-language models (labels, matching, F1, selection score, reuse).

Every function here is a pure ``jnp`` function of arrays (jit-able; ``vmap``-able over a leading axis where
noted), so the labelling store, the benchmark and the system API share one implementation.

Notation: ``M`` VLMs, ``V`` SDAG nodes (those with images), ``C`` target classes, ``N`` images.

**Labels** (:func:`node_counts`).  A VLM classifies every node image zero-shot among the ``V`` node texts
(argmax of ``scale * cos(image, text(node))``; the scale does not change the argmax).  Per node ``v``:

* ``tp[v]`` -- images of ``v`` predicted as ``v``;
* ``fn[v]`` -- images of ``v`` predicted as another node;
* ``fp[v]`` -- images of other nodes predicted as ``v``.

Stored as ``counts[..., v, :] = (tp, fn, fp)`` (:data:`COUNT_FIELDS`).  :func:`restricted_node_counts` gives the
same counts with the prediction restricted to a subset of nodes (the nodes a task matched: the authors' rule,
which needs the node logits, not only the counts).

**Matching** (:func:`match_weights`).  A target class is matched to its ``top`` (5) most similar nodes by text
cosine similarity; the weights are the similarities, clipped at 0 (a node less similar than an orthogonal one
carries no evidence) and *normalised to sum to 1* per class.  The normalisation does not change F1 (F1 is
invariant to scaling all three counts of one class by the same factor); it only keeps class-level counts on
the scale of image counts, so they read as "effective images".  A class whose top similarities are all <= 0 gets
all-zero weights, zero class-level counts and F1 = 0 for every model.

**Scores.**  Class-level counts are the weighted sums of the matched nodes' counts (:func:`class_counts`);
``F1 = 2 tp / (2 tp + fp + fn)`` (0 where the denominator is 0; :func:`f1_score`); the selection score
(:func:`selection_scores`) is ``r[m, y] = a * F1[m, y] + (1 - a) * mean_{y' != y} F1[m, y']`` with ``a = 0.7``
(a task with one class has no other classes: ``r = F1``).  The top-``k`` VLMs per class are selected
(:func:`select_topk`; ties go to the lower model index).

**Reuse** (:func:`ensemble_scores`).  ``p_m(y|x) = softmax`` over the task classes of VLM ``m``'s zero-shot logits;
the ensemble score of class ``y`` is ``sum_{m selected for y} p_m(y|x) / H2(p_m(x))`` with ``H2`` the entropy in
bits.  *Zero-entropy guard:* ``H2`` is clipped below at ``min_entropy`` (:data:`MIN_ENTROPY_BITS` = 0.01 bits),
so a fully confident model gets the finite maximal weight ``1 / min_entropy`` (the authors' code divides by zero
and returns NaN/inf there).  For two classes the floor acts only when ``max p > 0.9991`` (``H2(0.999) = 0.0114``).
The entropy itself is computed from ``log_softmax`` with ``0 * log 0 = 0``, so saturated or ``-inf`` logits
give no NaN either.

**Baselines**: :func:`random_topk` (uniformly random ``k`` VLMs per class), :func:`inb_choice` (the VLM with the
best ImageNet zero-shot accuracy from metadata; without any metadata, the best zero-shot accuracy on the SDAG
node images), :func:`oracle_choice` (the single VLM with the best accuracy on the task: an upper reference).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

__all__ = [
    "COUNT_FIELDS",
    "DEFAULT_ALPHA",
    "DEFAULT_TOP_NODES",
    "MIN_ENTROPY_BITS",
    "node_counts",
    "restricted_node_counts",
    "match_weights",
    "class_counts",
    "f1_score",
    "selection_scores",
    "select_topk",
    "selection_mask",
    "entropy_bits",
    "ensemble_scores",
    "sdag_accuracy",
    "random_topk",
    "inb_choice",
    "oracle_choice",
]

COUNT_FIELDS = ("tp", "fn", "fp")
DEFAULT_ALPHA = 0.7
DEFAULT_TOP_NODES = 5
MIN_ENTROPY_BITS = 0.01


@jax.jit
def node_counts(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-node ``(tp, fn, fp)`` of a zero-shot prediction among the nodes.

    Args:
      logits: ``(N, V)`` zero-shot logits of node images against the ``V`` node texts.
      labels: ``(N,)`` int node index of each image; ``-1`` marks a padding row (ignored).
    Returns:
      ``(V, 3)`` float32 counts ``(tp, fn, fp)``.
    """
    v = logits.shape[-1]
    pred = jnp.argmax(logits, axis=-1)
    valid = (labels >= 0).astype(jnp.float32)
    truth = jax.nn.one_hot(labels, v, dtype=jnp.float32) * valid[:, None]
    guess = jax.nn.one_hot(pred, v, dtype=jnp.float32) * valid[:, None]
    conf = truth.T @ guess  # conf[i, j]: images of node i predicted as node j
    tp = jnp.diagonal(conf)
    return jnp.stack([tp, conf.sum(1) - tp, conf.sum(0) - tp], axis=-1)


@jax.jit
def restricted_node_counts(logits: jax.Array, labels: jax.Array, active: jax.Array) -> jax.Array:
    """:func:`node_counts` with prediction restricted to the ``active`` nodes (``(V,)`` bool) and only the images
    of active nodes counted; rows of inactive nodes are all zero.  This is the authors' task-scoped rule (their
    selection masks the node logits to the nodes matched by the task before the argmax)."""
    masked = jnp.where(active[None, :], logits, -jnp.inf)
    keep = (labels >= 0) & active[jnp.clip(labels, 0, logits.shape[-1] - 1)]
    return node_counts(masked, jnp.where(keep, labels, -1))


@partial(jax.jit, static_argnames=("top",))
def match_weights(class_emb: jax.Array, node_emb: jax.Array, top: int = DEFAULT_TOP_NODES
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Top-``top`` nodes of each class by cosine similarity, with normalised weights.

    Args:
      class_emb: ``(C, D)`` class text embeddings; node_emb: ``(V, D)`` node text embeddings (rows need not be
        unit: they are normalised here).
      top: nodes per class (``min(top, V)`` are taken).
    Returns:
      ``(idx (C, T) int32, weights (C, T), sims (C, T))``: node indices by decreasing similarity, weights =
      ``max(sim, 0)`` normalised to sum 1 per class (all zero when no similarity is positive), raw cosines.
    """
    t = min(int(top), node_emb.shape[0])
    a = class_emb / jnp.maximum(jnp.linalg.norm(class_emb, axis=-1, keepdims=True), 1e-12)
    b = node_emb / jnp.maximum(jnp.linalg.norm(node_emb, axis=-1, keepdims=True), 1e-12)
    sims, idx = jax.lax.top_k(a @ b.T, t)
    w = jnp.maximum(sims, 0.0)
    tot = w.sum(-1, keepdims=True)
    w = jnp.where(tot > 0, w / jnp.where(tot > 0, tot, 1.0), 0.0)
    return idx.astype(jnp.int32), w, sims


@jax.jit
def class_counts(counts: jax.Array, idx: jax.Array, weights: jax.Array) -> jax.Array:
    """Class-level counts: ``(M, V, 3)`` node counts, ``(C, T)`` matches -> ``(M, C, 3)`` weighted sums."""
    return jnp.einsum("mctk,ct->mck", counts[:, idx, :], weights)


@jax.jit
def f1_score(counts: jax.Array) -> jax.Array:
    """``F1 = 2 tp / (2 tp + fp + fn)`` over the last axis ``(tp, fn, fp)``; 0 where nothing was counted."""
    tp, fn, fp = counts[..., 0], counts[..., 1], counts[..., 2]
    den = 2 * tp + fp + fn
    return jnp.where(den > 0, 2 * tp / jnp.where(den > 0, den, 1.0), 0.0)


@partial(jax.jit, static_argnames=())
def selection_scores(f1: jax.Array, alpha: float = DEFAULT_ALPHA) -> jax.Array:
    """``r[m, y] = alpha * F1[m, y] + (1 - alpha) * mean_{y' != y} F1[m, y']`` (``r = F1`` for one class)."""
    c = f1.shape[-1]
    if c == 1:
        return f1
    others = (f1.sum(-1, keepdims=True) - f1) / (c - 1)
    return alpha * f1 + (1 - alpha) * others


@partial(jax.jit, static_argnames=("k",))
def select_topk(scores: jax.Array, k: int = 1) -> jax.Array:
    """``(M, C)`` scores -> ``(C, k)`` model indices, best first (ties: lower model index first)."""
    m = scores.shape[0]
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, {m}] (the number of VLMs), got {k}")
    return jax.lax.top_k(scores.T, k)[1].astype(jnp.int32)


@partial(jax.jit, static_argnames=("num_models",))
def selection_mask(chosen: jax.Array, num_models: int) -> jax.Array:
    """``(C, k)`` chosen model indices -> ``(M, C)`` bool: is VLM ``m`` selected for class ``y``."""
    return jax.nn.one_hot(chosen, num_models, dtype=jnp.float32).sum(1).T > 0


@jax.jit
def entropy_bits(logits: jax.Array) -> jax.Array:
    """Entropy (bits) of ``softmax(logits)`` over the last axis; ``0 log 0 = 0`` (no NaN for ``-inf`` logits)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(logp)
    plogp = jnp.where(p > 0, p * jnp.where(p > 0, logp, 0.0), 0.0)
    return -plogp.sum(-1) / jnp.log(2.0)


@jax.jit
def ensemble_scores(logits: jax.Array, selected: jax.Array, min_entropy: float = MIN_ENTROPY_BITS) -> jax.Array:
    """Entropy-weighted ensemble of the selected VLMs.

    Args:
      logits: ``(M, N, C)`` zero-shot logits of each VLM over the task classes.
      selected: ``(M, C)`` bool / 0-1: VLM ``m`` is selected for class ``y``.
      min_entropy: floor of ``H2`` in bits (the zero-entropy guard, see the module docstring).
    Returns:
      ``(N, C)`` scores ``sum_m selected[m, y] * p_m(y|x) / max(H2(p_m(x)), min_entropy)``.
    """
    p = jax.nn.softmax(logits, axis=-1)
    w = 1.0 / jnp.maximum(entropy_bits(logits), min_entropy)  # (M, N)
    return jnp.einsum("mnc,mn,mc->nc", p, w, selected.astype(p.dtype))


@jax.jit
def sdag_accuracy(counts: jax.Array) -> jax.Array:
    """Zero-shot accuracy on all node images from ``(..., V, 3)`` counts: ``sum tp / sum (tp + fn)``."""
    tp = counts[..., 0].sum(-1)
    n = tp + counts[..., 1].sum(-1)
    return jnp.where(n > 0, tp / jnp.where(n > 0, n, 1.0), 0.0)


@partial(jax.jit, static_argnames=("num_models", "num_classes", "k"))
def random_topk(key: jax.Array, num_models: int, num_classes: int, k: int = 1) -> jax.Array:
    """Random baseline: ``(C, k)`` distinct VLMs drawn uniformly at random for each class."""
    if not 1 <= k <= num_models:
        raise ValueError(f"k must be in [1, {num_models}], got {k}")
    keys = jax.random.split(key, num_classes)
    return jax.vmap(lambda kk: jax.random.permutation(kk, num_models)[:k])(keys).astype(jnp.int32)


@jax.jit
def inb_choice(imagenet_acc: jax.Array, sdag_acc: jax.Array) -> jax.Array:
    """INB: the VLM with the best known ImageNet accuracy (NaN = unknown); if none is known, the best SDAG
    zero-shot accuracy.  Ties: lower index."""
    known = ~jnp.isnan(imagenet_acc)
    by_meta = jnp.argmax(jnp.where(known, imagenet_acc, -jnp.inf))
    return jnp.where(known.any(), by_meta, jnp.argmax(sdag_acc)).astype(jnp.int32)


@jax.jit
def oracle_choice(task_acc: jax.Array) -> jax.Array:
    """The single VLM with the best accuracy on the task (an upper reference; ties: lower index)."""
    return jnp.argmax(task_acc).astype(jnp.int32)
