"""Eq. 1 node by node: the mean logit vector of an expert over one node's images.

This is the reference path; labelling runs the packed path (:mod:`mll_jax.labelling.packing`), which equals it up
to float32 round-off.
"""

from __future__ import annotations

import numpy as np

from mll_jax.config import DEFAULT_LABEL_STATISTIC
from mll_jax.errors import LabellingError, NonFiniteLogitsError
from mll_jax.images import as_image_batch

from .layout import positive_int
from .statistic import check_statistic, summed_rows

__all__ = ["node_mean_logits"]


def node_mean_logits(expert, images: np.ndarray, *, batch_size: int = 64, node: str = "?",
                     statistic: str = DEFAULT_LABEL_STATISTIC) -> np.ndarray:
    """Eq. 1: mean logit vector (float32, (H,)) of ``expert`` over ``images``, in batches of ``batch_size``
    (``statistic="mean_probability"``: the mean softmax output, :mod:`mll_jax.labelling.statistic`).

    Raises :class:`NonFiniteLogitsError` / :class:`LabellingError` naming the model and node on NaN/inf logits
    or a wrong output shape.
    """
    mid = getattr(expert, "model_id", "?")
    batch_size = positive_int(batch_size, "batch_size")
    images = as_image_batch(images, f"images of node {node!r}")
    h = int(expert.num_heads)
    check_statistic(statistic)
    n = int(images.shape[0])
    if n == 0:
        raise LabellingError(f"node {node!r} has no images to label model {mid!r} with")
    total = np.zeros(h, dtype=np.float64)
    for i in range(0, n, batch_size):
        batch = images[i:i + batch_size]
        out = np.asarray(expert.logits(batch))
        if out.shape != (batch.shape[0], h):
            raise LabellingError(f"model {mid!r} returned logits of shape {out.shape} on node {node!r}; "
                                 f"expected ({batch.shape[0]}, {h}) (num_heads={h})")
        if not np.all(np.isfinite(out)):
            bad = int(np.sum(~np.isfinite(out).all(axis=1)))
            raise NonFiniteLogitsError(f"model {mid!r} produced non-finite logits (NaN/inf) on node {node!r} "
                                       f"({bad} of {batch.shape[0]} images in a batch); nothing was committed "
                                       "for this model")
        total += summed_rows(out, statistic)
    return (total / n).astype(np.float32)
