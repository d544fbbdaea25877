"""What a label row summarises over a node's images: the label statistic.

* ``"mean_logit"`` (default; the paper's Eq. 1): ``r_c = mean_{x in D_c} f(x)``, the mean logit vector.  CHCO
  scores the softmax of the smoothed rows.
* ``"mean_probability"``: ``p_c = mean_{x in D_c} softmax(f(x))``, the node's mean head probability.  Eq. 2
  smooths these probability rows (with the same delta and rules), and the row stored is ``log p_c`` (floored at
  :data:`LOG_FLOOR`), so that CHCO's softmax of a row is the smoothed mean probability again.

Why offer both.  The softmax of a mean logit vector is peaked whenever the expert's logits have a large spread,
even where its per-image predictions disagree across the node's images (an off-domain expert whose mean logits
still differ between two nodes); the mean probability keeps that disagreement.  On the real-photo benchmark
(results/real_photo_bench_shipped.md) CHCO over the 11 shipped experts reaches 48.5 / 51.8 / 50.4% (k = 1/2/3)
with mean-logit labels and 64.9 / 67.0 / 66.7% with mean-probability labels; with the 19-expert hub the two are
within two points (results/real_photo_bench.md).
"""

from __future__ import annotations

import numpy as np

from mll_jax.config import DEFAULT_LABEL_STATISTIC, LABEL_STATISTICS

__all__ = ["LABEL_STATISTICS", "DEFAULT_LABEL_STATISTIC", "LOG_FLOOR", "check_statistic", "per_image_rows",
           "summed_rows", "finish_rows", "raw_cache_key", "model_fingerprint"]

#: Smallest probability whose log is stored (a head with no mass on a node and its hyponyms): log(1e-30) = -69.
LOG_FLOOR = 1e-30


#: Separates a model fingerprint from the statistic in the raw cache's key.
_KEY_SEPARATOR = "|statistic="


def raw_cache_key(fingerprint: str | None, statistic: str) -> str | None:
    """The key of a model's raw (Eq. 1) cache chunks: its fingerprint for ``"mean_logit"`` (the key raw chunks
    always had), the fingerprint and the statistic otherwise, so raw rows of one statistic never serve another."""
    if statistic == DEFAULT_LABEL_STATISTIC:
        return fingerprint
    return f"{fingerprint or ''}{_KEY_SEPARATOR}{check_statistic(statistic)}"


def model_fingerprint(key: str) -> str:
    """The model fingerprint inside a raw cache key (:func:`raw_cache_key`)."""
    return key.split(_KEY_SEPARATOR, 1)[0]


def check_statistic(statistic: str) -> str:
    """``statistic`` if it is one of :data:`LABEL_STATISTICS`, else ``ValueError`` saying which are."""
    if statistic not in LABEL_STATISTICS:
        raise ValueError(f"label statistic must be one of {list(LABEL_STATISTICS)}, got {statistic!r}")
    return statistic


def per_image_rows(logits: np.ndarray, statistic: str = DEFAULT_LABEL_STATISTIC) -> np.ndarray:
    """The rows whose mean over a node's images is its raw label, in float64: the logits themselves, or their
    softmax over heads (``"mean_probability"``)."""
    z = np.asarray(logits, np.float64)
    if statistic == "mean_logit":
        return z
    check_statistic(statistic)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def summed_rows(logits: np.ndarray, statistic: str = DEFAULT_LABEL_STATISTIC) -> np.ndarray:
    """The sum over a batch of images (axis 0) of their :func:`per_image_rows`, in float64 (the float32 logits
    summed in float64 for ``"mean_logit"``)."""
    if statistic == "mean_logit":
        return np.asarray(logits).sum(axis=0, dtype=np.float64)
    return per_image_rows(logits, statistic).sum(axis=0)


def finish_rows(smoothed: np.ndarray, statistic: str = DEFAULT_LABEL_STATISTIC) -> np.ndarray:
    """The label rows to store from the smoothed raw rows (float32): unchanged for ``"mean_logit"``, their log
    (floored at :data:`LOG_FLOOR`) for ``"mean_probability"``."""
    s = np.asarray(smoothed)
    if statistic == "mean_logit":
        return s.astype(np.float32, copy=False)
    check_statistic(statistic)
    return np.log(np.maximum(s.astype(np.float64), LOG_FLOOR)).astype(np.float32)
