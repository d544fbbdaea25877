"""Transferability estimators on target data: LogME and LEEP (float64, in JAX).

Reference compatibility.  :func:`logme` and :func:`leep` reproduce the reference implementations of
thuml/LogME (``LogME.py`` fixed-point version, ``LEEP.py``) number for number (float64), re-implemented here
in JAX.  The fixed-point loop runs at most 11 iterations and stops once ``|t' - t| / t <= 1e-3`` with
``t = alpha / beta``; the final evidence uses the last ``alpha, beta`` and the last residual terms, and the
weights use the last ``t`` before the update, as in the reference.

N < D edge (thuml/LogME#23).  With ``N`` samples and ``D`` feature dimensions the reference sums
``log(alpha + beta * sigma_i)`` over the ``min(N, D)`` (``N > D``: nonzero) singular values only, but the
evidence needs ``log det(alpha I_D + beta F^T F)``, which has ``D - rank`` extra ``log(alpha)`` terms.  By
default (``logdet="full"``) we use the exact log-determinant (the fix proposed in thuml/LogME PR #24);
``logdet="reference"`` reproduces the published code, bug included.  Both agree when ``F`` has full column
rank (in particular for ``N > D``, the common case for the reference).  Here ``N < D`` is common (a few node
images per class, ``D`` = number of heads), hence the default.

LEEP edge: a source class whose probability is 0 on every sample makes the reference divide 0/0 (``nan``);
we give it ``P(y | z) = 0`` (it never contributes since all its ``theta`` are 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["LogMEResult", "logme", "LEEPResult", "leep"]


# --------------------------------------------------------------------------------------------------
# LogME
# --------------------------------------------------------------------------------------------------


class LogMEResult:
    """LogME output: ``score`` (mean evidence), per-class ``evidence`` (C,), ``alpha``, ``beta`` (C,),
    ``weights`` (C, D) (posterior mean of the linear head), ``iterations`` (C,)."""

    __slots__ = ("score", "evidence", "alpha", "beta", "weights", "iterations")

    def __init__(self, score, evidence, alpha, beta, weights, iterations):
        self.score, self.evidence, self.alpha, self.beta = score, evidence, alpha, beta
        self.weights, self.iterations = weights, iterations

    def __repr__(self):
        return f"LogMEResult(score={self.score:.6g}, evidence={np.array2string(self.evidence, precision=4)})"


def _logme_core(f, Y, full_logdet: bool):
    """float64 fixed-point LogME on features ``f (N, D)`` and one-vs-rest targets ``Y (N, C)``."""
    N, D = f.shape
    u, s, vh = jnp.linalg.svd(f, full_matrices=False)  # u (N, k), s (k,), vh (k, D), k = min(N, D)
    k = s.shape[0]
    sigma = s**2
    proj = u.T @ Y  # (k, C)
    x2 = proj**2
    res_x2 = jnp.sum(Y**2, axis=0) - jnp.sum(x2, axis=0)  # energy of y outside the span of u
    if full_logdet:
        keep = jnp.ones_like(s, dtype=bool)
        n_extra = D - k  # zero eigenvalues of F^T F beyond the thin SVD
    else:  # the reference: thin SVD for N <= D, rank-truncated (s > 1e-10) for N > D
        keep = (s > 1e-10) if N > D else jnp.ones_like(s, dtype=bool)
        n_extra = 0

    def per_class(x2c, res_x2c):
        def terms(alpha, beta, t):
            gamma = jnp.sum(sigma / (sigma + t))
            m2 = jnp.sum(sigma * x2c / (t + sigma) ** 2)
            res2 = jnp.sum(x2c / (1.0 + sigma / t) ** 2) + res_x2c
            return gamma, m2, res2

        def body(state):
            i, alpha, beta, _, _, _, _ = state
            t = alpha / beta
            gamma, m2, res2 = terms(alpha, beta, t)
            alpha = gamma / (m2 + 1e-5)
            beta = (N - gamma) / (res2 + 1e-5)
            done = jnp.abs(alpha / beta - t) / t <= 1e-3
            return i + 1, alpha, beta, t, m2, res2, done

        def cond(state):
            return (state[0] < 11) & ~state[-1]

        one = jnp.ones((), f.dtype)
        init = (jnp.int32(0), one, one, one, 0.0 * one, 0.0 * one, jnp.bool_(False))
        it, alpha, beta, t, m2, res2, _ = jax.lax.while_loop(cond, body, init)
        logdet = jnp.sum(jnp.where(keep, jnp.log(alpha + beta * sigma), 0.0)) + n_extra * jnp.log(alpha)
        evidence = (
            D / 2.0 * jnp.log(alpha)
            + N / 2.0 * jnp.log(beta)
            - 0.5 * logdet
            - beta / 2.0 * res2
            - alpha / 2.0 * m2
            - N / 2.0 * jnp.log(2.0 * jnp.pi)
        ) / N
        return evidence, alpha, beta, t, it

    evidence, alpha, beta, t, it = jax.vmap(per_class, in_axes=(1, 0))(x2, res_x2)
    coef = s[None, :] * proj.T / (t[:, None] + sigma[None, :])  # (C, k)
    weights = coef @ vh  # (C, D)
    return evidence, alpha, beta, weights, it


_logme_jit = jax.jit(_logme_core, static_argnames=("full_logdet",))


def _check_labels(labels, n: int, num_classes: int | None, what: str) -> tuple[np.ndarray, int]:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{what}: labels must be (N={n},), got shape {labels.shape}")
    if n == 0:
        raise ValueError(f"{what}: no samples")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(labels == np.round(labels)):
            raise ValueError(f"{what}: labels must be integer class ids")
        labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise ValueError(f"{what}: labels must be >= 0")
    c = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if labels.max() >= c:
        raise ValueError(f"{what}: label {int(labels.max())} >= num_classes={c}")
    return labels.astype(np.int64), c


def logme(features, labels, *, num_classes: int | None = None, logdet: str = "full") -> LogMEResult:
    """LogME (fixed-point algorithm) of ``features (N, D)`` for class ids ``labels (N,)``, in float64.

    ``num_classes`` defaults to ``labels.max() + 1`` (as the reference).  ``logdet``: ``"full"`` (exact
    log-determinant, default) or ``"reference"`` (thuml/LogME as published; differs only when ``F`` lacks
    full column rank, e.g. ``N < D``).  See the module docstring.
    """
    if logdet not in ("full", "reference"):
        raise ValueError(f"logdet must be 'full' or 'reference', got {logdet!r}")
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"logme: features must be (N, D), got shape {f.shape}")
    if not np.all(np.isfinite(f)):
        raise ValueError("logme: features contain non-finite values")
    labels, c = _check_labels(labels, f.shape[0], num_classes, "logme")
    Y = (labels[:, None] == np.arange(c)[None, :]).astype(np.float64)
    with jax.enable_x64(True):
        ev, alpha, beta, weights, it = jax.device_get(
            _logme_jit(jnp.asarray(f, jnp.float64), jnp.asarray(Y, jnp.float64), full_logdet=(logdet == "full"))
        )
    ev = np.asarray(ev, np.float64)
    return LogMEResult(float(ev.mean()), ev, np.asarray(alpha), np.asarray(beta), np.asarray(weights),
                       np.asarray(it))


# --------------------------------------------------------------------------------------------------
# LEEP
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LEEPResult:
    """LEEP output: ``score`` (mean log expected empirical prediction), ``per_class`` (C,) means over the
    samples of each class (``nan`` for a class without samples), ``log_prob`` (N,)."""

    score: float
    per_class: np.ndarray
    log_prob: np.ndarray


@jax.jit
def _leep_core(theta, Y):
    n = theta.shape[0]
    joint = Y.T @ theta / n  # (C_t, C_s): empirical joint of (target y, source z)
    marginal = jnp.sum(joint, axis=0, keepdims=True)  # (1, C_s)
    cond = jnp.where(marginal > 0, joint / jnp.where(marginal > 0, marginal, 1.0), 0.0)  # P(y | z)
    eep = theta @ cond.T  # (N, C_t)
    log_prob = jnp.log(jnp.sum(eep * Y, axis=1))
    counts = jnp.sum(Y, axis=0)
    per_class = jnp.where(counts > 0, (Y.T @ log_prob) / jnp.where(counts > 0, counts, 1.0), jnp.nan)
    return jnp.mean(log_prob), per_class, log_prob


def leep(probs, labels, *, num_classes: int | None = None, atol: float = 1e-3) -> LEEPResult:
    """LEEP of source-model probabilities ``probs (N, C_s)`` (rows on the simplex) for ``labels (N,)``.

    float64.  ``num_classes`` defaults to ``labels.max() + 1``; rows must sum to 1 within ``atol``
    (pass softmax outputs, not logits).
    """
    theta = np.asarray(probs, dtype=np.float64)
    if theta.ndim != 2:
        raise ValueError(f"leep: probs must be (N, C_s), got shape {theta.shape}")
    if not np.all(np.isfinite(theta)) or theta.min() < 0:
        raise ValueError("leep: probs must be finite and non-negative (softmax outputs)")
    row = theta.sum(axis=1)
    if np.any(np.abs(row - 1.0) > atol):
        raise ValueError(f"leep: probs rows must sum to 1 (got sums in [{row.min():.4g}, {row.max():.4g}]); "
                         "pass softmax outputs, not logits")
    labels, c = _check_labels(labels, theta.shape[0], num_classes, "leep")
    Y = (labels[:, None] == np.arange(c)[None, :]).astype(np.float64)
    with jax.enable_x64(True):
        score, per_class, log_prob = jax.device_get(_leep_core(jnp.asarray(theta), jnp.asarray(Y)))
    return LEEPResult(float(score), np.asarray(per_class, np.float64), np.asarray(log_prob, np.float64))
