"""Packed labelling batches: moved to :mod:`mll_jax.labelling.packing`; this module re-exports its public names
(``from mll_jax.packing import iter_node_means`` keeps working)."""

from mll_jax.labelling.packing import PackingError, iter_node_means, packed_node_means

__all__ = ["iter_node_means", "packed_node_means", "PackingError"]
