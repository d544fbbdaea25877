"""The pure matching core: cosine similarity + (iterated) mutual-best rule + threshold (:func:`match_embeddings`).

Let ``S[i, n]`` be the cosine similarity of class ``i`` and node ``n`` and drop every pair with
``S[i, n] < threshold``.  In each round, every still-unmatched class proposes its most similar
still-free node ``n_i = argmax_n S[i, n]``; the proposal is *accepted* when ``i`` is also the
most similar class for ``n_i`` among all still-unmatched classes (the paper's mutual-best rule;
ties go to the lower class index, then the lower node index).  Accepted pairs are fixed and
their classes and nodes leave the pool.  *Fallback:* a class whose proposal lost re-proposes in
the next round to its best node among the nodes that remain, and so on until every class is
matched or has no remaining node at or above the threshold; such a class is *uncovered*.
Each round accepts at least the globally most similar remaining pair, so this ends in at most
``C`` rounds; the result equals the greedy matching that takes pairs in order of decreasing
similarity (tested).  With ``mutual=False`` every class simply takes its argmax node (several
classes may share one), thresholded.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mll_jax.config import DEFAULT_MATCH_THRESHOLD as DEFAULT_THRESHOLD

__all__ = ["DEFAULT_THRESHOLD", "MatchResult", "match_embeddings"]


class MatchResult(NamedTuple):
    """Output of :func:`match_embeddings` (all (C,) arrays).

    node: assigned node index, -1 when uncovered; similarity: similarity of the assigned node
    (of the best node when uncovered); best_node / best_similarity: the plain argmax node.
    """

    node: jax.Array
    similarity: jax.Array
    best_node: jax.Array
    best_similarity: jax.Array


@partial(jax.jit, static_argnames=("mutual", "num_candidates"))
def match_embeddings(class_emb: jax.Array, node_emb: jax.Array, threshold: float = DEFAULT_THRESHOLD,
                     *, mutual: bool = True, num_candidates: int | None = None) -> MatchResult:
    """Pure matching core: cosine similarity + (iterated) mutual-best rule + threshold.

    ``class_emb`` (C, D), ``node_emb`` (N, D), both L2-normalised.  See the module docstring for
    the rule.  Only each class's top ``K = min(N, num_candidates or C)`` nodes are considered,
    which is exact for ``K >= C`` (a class is matched before ``C`` nodes are taken).
    """
    if class_emb.ndim != 2 or node_emb.ndim != 2 or class_emb.shape[1] != node_emb.shape[1]:
        raise ValueError(f"class embeddings {class_emb.shape} and node embeddings {node_emb.shape} must be "
                         "(C, D) and (N, D) with the same D")
    C, N = class_emb.shape[0], node_emb.shape[0]
    if N == 0:
        raise ValueError("match_embeddings: no nodes to match against (node_emb is empty)")
    sim = jnp.dot(class_emb, node_emb.T, precision=jax.lax.Precision.HIGHEST)
    best_node = jnp.argmax(sim, axis=1).astype(jnp.int32)
    best_sim = jnp.max(sim, axis=1)
    if not mutual:
        ok = best_sim >= threshold
        return MatchResult(jnp.where(ok, best_node, -1), best_sim, best_node, best_sim)

    K = min(N, num_candidates or C)
    cand_sim, cand_idx = jax.lax.top_k(sim, K)  # (C, K), descending, ties -> lower node index
    cand_idx = cand_idx.astype(jnp.int32)
    neg = jnp.array(-jnp.inf, sim.dtype)
    cls_ids = jnp.arange(C, dtype=jnp.int32)

    def body(state):
        node, done, taken, rnd = state
        avail = (~taken[cand_idx]) & (~done)[:, None] & (cand_sim >= threshold)
        s = jnp.where(avail, cand_sim, neg)
        j = jnp.argmax(s, axis=1)
        prop_sim = jnp.take_along_axis(s, j[:, None], axis=1)[:, 0]
        prop_node = jnp.take_along_axis(cand_idx, j[:, None], axis=1)[:, 0]
        active = jnp.isfinite(prop_sim)
        # Best remaining class for every node (over all remaining candidate pairs), ties -> lower class.
        col_max = jax.ops.segment_max(s.ravel(), cand_idx.ravel(), num_segments=N)
        at_max = avail & (s == col_max[cand_idx])
        col_arg = jax.ops.segment_min(jnp.where(at_max, cls_ids[:, None], C).ravel(), cand_idx.ravel(),
                                      num_segments=N)
        accept = active & (col_arg[prop_node] == cls_ids)
        node = jnp.where(accept, prop_node, node)
        taken = taken.at[jnp.where(accept, prop_node, N)].set(True, mode="drop")
        done = done | accept | ~active
        return node, done, taken, rnd + 1

    def cond(state):
        _, done, _, rnd = state
        return (~jnp.all(done)) & (rnd <= C)

    init = (jnp.full((C,), -1, jnp.int32), jnp.zeros((C,), bool), jnp.zeros((N,), bool), jnp.int32(0))
    node, _, _, _ = jax.lax.while_loop(cond, body, init)
    assigned_sim = jnp.where(node >= 0, sim[cls_ids, jnp.maximum(node, 0)], best_sim)
    return MatchResult(node, assigned_sim, best_node, best_sim)
