"""Eq. 2 (smoothing over the hierarchy) as a pure, jitted JAX function, and the DAG index it runs on.

In reverse topological order (hyponyms first), with discount delta::

    s_c = delta * r_c + (1 - delta) * mean_{k in ch(c), k labelled} s_k

:func:`smooth_labels` applies the synchronous update ``s <- F(s)`` ``num_iters`` times, where ``F`` evaluates the
rules of the package docstring for every node at once from the current child values (two ``segment_sum``).  A node
of height h (longest path down to a leaf) is exact after h updates, so ``num_iters = max height`` (from
:func:`dag_index`) gives exactly the sequential reverse-topological result, at O((N + E) H) per update.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["DagIndex", "dag_index", "smooth_labels"]


class DagIndex(NamedTuple):
    """Children index of a DAG whose nodes are numbered in topological order.

    edge_parent, edge_child: int32 (E,) node indices of every hypernym -> hyponym edge.
    height: longest path from any node down to a leaf (= number of smoothing updates needed).
    """

    edge_parent: np.ndarray
    edge_child: np.ndarray
    height: int


def dag_index(sdag) -> DagIndex:
    """:class:`DagIndex` of an :class:`mll_jax.sdag.SDAG` (node i = ``sdag.nodes[i]``)."""
    nodes = sdag.nodes
    pos = {w: i for i, w in enumerate(nodes)}
    ep, ec = [], []
    for p, c in sdag.edges():
        ep.append(pos[p])
        ec.append(pos[c])
    ep = np.asarray(ep, dtype=np.int32)
    ec = np.asarray(ec, dtype=np.int32)
    height = np.zeros(len(nodes), dtype=np.int64)
    children = [[] for _ in nodes]
    for p, c in zip(ep, ec):
        children[p].append(c)
    for i in range(len(nodes) - 1, -1, -1):  # reverse topological order
        if children[i]:
            height[i] = 1 + max(height[c] for c in children[i])
    return DagIndex(ep, ec, int(height.max()) if len(nodes) else 0)


@jax.jit
def smooth_labels(own, has_own, edge_parent, edge_child, delta, num_iters):
    """Eq. 2 on arrays: returns (labels (N, H), has_label (N,) bool).

    Args:
      own: (N, H) raw labels r_c (rows of nodes without own data are ignored).
      has_own: (N,) bool, node has own images.
      edge_parent, edge_child: (E,) int edge list, parent -> first-order child.
      delta: scalar discount in [0, 1].
      num_iters: number of synchronous updates; ``DagIndex.height`` makes the result exact.
    Rows of unlabelled nodes are 0.  Pure and jitted; vmap over models of equal H works.
    """
    own = jnp.asarray(own)
    n = own.shape[0]
    has_own = jnp.asarray(has_own, dtype=bool)
    delta = jnp.asarray(delta, dtype=own.dtype)
    own = jnp.where(has_own[:, None], own, 0)

    def update(_, carry):
        s, has = carry
        w = has[edge_child].astype(own.dtype)
        cnt = jax.ops.segment_sum(w, edge_parent, num_segments=n)
        tot = jax.ops.segment_sum(s[edge_child] * w[:, None], edge_parent, num_segments=n)
        has_child = cnt > 0
        cmean = tot / jnp.maximum(cnt, 1)[:, None]
        both = delta * own + (1 - delta) * cmean
        s_new = jnp.where((has_own & has_child)[:, None], both,
                          jnp.where(has_own[:, None], own, jnp.where(has_child[:, None], cmean, 0)))
        return s_new, has_own | has_child

    return jax.lax.fori_loop(0, num_iters, update, (own, has_own))
