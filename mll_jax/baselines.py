"""Selection baselines that plug into the same slot as CHCO (:func:`mll_jax.selection.select`).

Every baseline returns a :class:`mll_jax.selection.ModelScores`: a lower-is-better ``(M, C)`` matrix
(model ``m`` for target class ``c``).  The selection rule (top-``k``, threshold ``beta``) and the reuse
step are shared with CHCO, so only the *ranking* differs.

Random
  ``loss[m, c] ~ U(0, 1)`` i.i.d. (seeded): the top-``k`` are ``k`` models drawn uniformly without
  replacement per class.  No columns (use :func:`mll_jax.selection.fill_columns`).

HEU (single best head, from the labels only)
  For model ``m`` with label sub-matrix ``S (H, C)`` let ``P[h, c']`` be head ``h``'s predicted probability on
  the node data of class ``c'``: ``link="softmax"`` (default): ``P = softmax(S, axis=0)`` over heads, the same
  ``P`` as in CHCO; ``link="sigmoid"``: ``P = sigmoid(S)`` elementwise.  Using head ``h`` alone as a
  one-vs-rest predictor for class ``c`` gives the binary cross entropy on the ``C`` class nodes (positive:
  node ``c``; negatives: the other ``C - 1`` nodes, weighted ``1/(C-1)`` so both sides count equally)::

      BCE[h, c] = -( log P[h, c] + 1/(C-1) * sum_{c' != c} log(1 - P[h, c']) )

  HEU picks ``h*(c) = argmin_h BCE[h, c]`` (ties: lowest head index); the model's loss for class ``c`` is
  ``BCE[h*, c]`` and its column is the one-hot ``e_{h*}``.  With ``link="softmax"`` this is exactly the CHCO
  per-class loss evaluated at a single-head column (``X[:, c] = e_h``), so the same ``beta`` applies.
  Probabilities are clipped to ``[eps, 1 - eps]`` (``eps = 1e-12``) inside the logarithms.

LogME / LEEP (need target data)
  These transferability estimators need images of the target classes.  In the zero-shot setting the only
  such images are the representative images of the matched SDAG nodes, so: for every matched class ``c``
  take the images of node ``wnids[c]`` (label ``c``), run every candidate model on them (``logits()``), and

  * LogME: features = the model's logits (``features="logits"``) or its softmax outputs (``"probs"``);
    the per-class score is LogME's per-class evidence (the class-``c`` one-vs-rest Bayesian linear
    regression); the usual LogME value is the mean over classes.  ``loss = -evidence_c``.
  * LEEP: pseudo source labels = the model's softmax outputs; the per-class score is the mean of
    ``log P(y_i | x_i)`` over the images of class ``c``; the usual LEEP value is the mean over all images.
    ``loss = -leep_c``.

  Classes without node images (or unmatched) get ``loss = +inf``.  Columns: as for Random.

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
from functools import partial
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mll_jax.selection import ModelScores, Selection, label_submatrices, register_scorer, select_models

__all__ = [
    "random_scores",
    "heu_losses",
    "heu_scores",
    "LogMEResult",
    "logme",
    "LEEPResult",
    "leep",
    "target_node_data",
    "expert_outputs",
    "logme_scores",
    "leep_scores",
    "baseline_selection",
]

_EPS = 1e-12


# --------------------------------------------------------------------------------------------------
# Random
# --------------------------------------------------------------------------------------------------


def random_scores(model_ids: Sequence[str], num_classes: int, *, seed: int = 0) -> ModelScores:
    """Random selection: i.i.d. uniform keys, so top-k = k models drawn uniformly without replacement."""
    rng = np.random.default_rng(seed)
    loss = rng.random((len(model_ids), num_classes))
    return ModelScores("random", tuple(model_ids), loss, None, {"seed": seed})


# --------------------------------------------------------------------------------------------------
# HEU
# --------------------------------------------------------------------------------------------------


@partial(jax.jit, static_argnames=("link",))
def heu_losses(S, link: str = "softmax"):
    """``BCE[h, c]`` of every single head ``h`` as a one-vs-rest predictor of class ``c`` (pure, jit-able).

    ``S``: ``(H, C)`` label sub-matrix.  See the module docstring for the definition.
    """
    S = jnp.asarray(S)
    if link == "softmax":
        P = jax.nn.softmax(S, axis=0)
    elif link == "sigmoid":
        P = jax.nn.sigmoid(S)
    else:
        raise ValueError(f"link must be 'softmax' or 'sigmoid', got {link!r}")
    P = jnp.clip(P, _EPS, 1.0 - _EPS)
    log_pos = jnp.log(P)
    log_neg = jnp.log1p(-P)
    C = S.shape[1]
    neg = (jnp.sum(log_neg, axis=1, keepdims=True) - log_neg) / max(C - 1, 1)
    return -(log_pos + neg)


def heu_scores(S_list: Sequence[np.ndarray], model_ids: Sequence[str], *, link: str = "softmax") -> ModelScores:
    """HEU: per class and model the single head with minimum BCE; column = one-hot on that head."""
    if len(S_list) != len(model_ids):
        raise ValueError(f"{len(S_list)} label sub-matrices for {len(model_ids)} model ids")
    losses, columns, heads = [], [], []
    for model_id, S in zip(model_ids, S_list):
        S = np.asarray(S, dtype=np.float32)
        if S.ndim != 2:
            raise ValueError(f"label sub-matrix of model {model_id!r} must be (H, C), got {S.shape}")
        bce = np.asarray(heu_losses(S, link=link))
        h = np.argmin(bce, axis=0)  # first minimum: lowest head index on ties
        losses.append(bce[h, np.arange(S.shape[1])])
        X = np.zeros(S.shape, np.float32)
        X[h, np.arange(S.shape[1])] = 1.0
        columns.append(X)
        heads.append(h)
    return ModelScores("heu", tuple(model_ids), np.stack(losses), tuple(columns), {"heads": heads, "link": link})


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


# --------------------------------------------------------------------------------------------------
# Target data from the SDAG nodes, expert outputs, and the LogME / LEEP slot
# --------------------------------------------------------------------------------------------------


def target_node_data(sdag: Any, wnids: Sequence[str | None], *, max_per_class: int | None = None):
    """Representative images of the matched target classes: ``(images_per_class, labels)``.

    ``images_per_class[c]`` is ``sdag.images(wnids[c])`` (possibly truncated to ``max_per_class``) or an
    empty array for unmatched classes; ``labels`` is the concatenated class-id vector.  Nodes may have images
    of different sizes, so images stay grouped per class.
    """
    per_class, labels = [], []
    for c, w in enumerate(wnids):
        imgs = np.zeros((0, 1, 1), np.uint8) if w is None else np.asarray(sdag.images(w))
        if max_per_class is not None:
            imgs = imgs[:max_per_class]
        per_class.append(imgs)
        labels.append(np.full(len(imgs), c, np.int64))
    return per_class, np.concatenate(labels) if labels else np.zeros(0, np.int64)


def expert_outputs(experts: Sequence[Any], images_per_class: Sequence[np.ndarray], *, progress: bool = True):
    """``logits`` of every expert on the concatenated class images: list of ``(N, H_m)`` float32."""
    from tqdm.auto import tqdm

    outs = []
    for expert in tqdm(experts, desc="target node data", disable=not progress):
        chunks = []
        for imgs in images_per_class:
            if len(imgs) == 0:
                continue
            z = np.asarray(expert.logits(imgs), dtype=np.float32)
            if z.shape != (len(imgs), expert.num_heads):
                raise ValueError(
                    f"expert {expert.model_id!r} returned logits of shape {z.shape}, expected "
                    f"({len(imgs)}, {expert.num_heads})"
                )
            chunks.append(z)
        if not chunks:
            raise ValueError("no target class has node images: LogME / LEEP cannot be computed")
        outs.append(np.concatenate(chunks))
    return outs


def _per_class_scores(outputs, labels, model_ids, num_classes, fn, method, **info):
    labels = np.asarray(labels, np.int64)
    if len(outputs) != len(model_ids):
        raise ValueError(f"{len(outputs)} output matrices for {len(model_ids)} model ids")
    present = np.bincount(labels, minlength=num_classes)[:num_classes] > 0
    loss = np.full((len(model_ids), num_classes), np.inf)
    totals = []
    for m, (model_id, z) in enumerate(zip(model_ids, outputs)):
        z = np.asarray(z)
        if z.ndim != 2 or z.shape[0] != labels.shape[0]:
            raise ValueError(f"outputs of model {model_id!r} have shape {z.shape}; expected ({labels.shape[0]}, H)")
        per_class, total = fn(z)
        loss[m, present] = -per_class[present]
        totals.append(total)
    loss[~np.isfinite(loss)] = np.inf
    return ModelScores(method, tuple(model_ids), loss, None, {"total": np.asarray(totals), **info})


def _softmax_np(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def logme_scores(
    outputs: Sequence[np.ndarray],
    labels,
    model_ids: Sequence[str],
    *,
    num_classes: int | None = None,
    features: str = "logits",
    logdet: str = "full",
) -> ModelScores:
    """LogME in the selection slot: ``loss[m, c] = -evidence_c`` of model ``m``'s outputs (info: totals)."""
    if features not in ("logits", "probs"):
        raise ValueError(f"features must be 'logits' or 'probs', got {features!r}")
    labels = np.asarray(labels, np.int64)
    c = int(labels.max()) + 1 if num_classes is None else int(num_classes)

    present = np.bincount(labels, minlength=c)[:c] > 0

    def fn(z):
        f = _softmax_np(np.asarray(z, np.float64)) if features == "probs" else z
        r = logme(f, labels, num_classes=c, logdet=logdet)
        return r.evidence, float(r.evidence[present].mean())  # LogME value over the classes with data

    return _per_class_scores(outputs, labels, model_ids, c, fn, "logme", features=features, logdet=logdet)


def leep_scores(outputs: Sequence[np.ndarray], labels, model_ids: Sequence[str], *,
                num_classes: int | None = None) -> ModelScores:
    """LEEP in the selection slot: ``loss[m, c] = -`` mean log-EEP over class ``c``'s images (logits in)."""
    labels = np.asarray(labels, np.int64)
    c = int(labels.max()) + 1 if num_classes is None else int(num_classes)

    def fn(z):
        r = leep(_softmax_np(np.asarray(z, np.float64)), labels, num_classes=c)
        return r.per_class, r.score

    return _per_class_scores(outputs, labels, model_ids, c, fn, "leep")


def _random_scorer(task) -> ModelScores:
    return random_scores(task.model_ids, len(task.wnids), seed=int(task.options.get("seed", 0)))


def _heu_scorer(task) -> ModelScores:
    S_list = label_submatrices(task.labels, task.model_ids, task.wnids)
    return heu_scores(S_list, task.model_ids, link=task.options.get("link", "softmax"))


def _node_data_scorer(method):
    def fn(task) -> ModelScores:
        if task.node_data is None:
            raise ValueError(f"{method} needs target data: the logits of every candidate model on the matched "
                             "nodes' images (give node_data, or use the MLL system, which reads them from the SDAG)")
        outputs, labels = task.node_data(task.model_ids, task.wnids)
        labels = np.asarray(labels, np.int64)
        if len(labels) == 0:
            return ModelScores(method, task.model_ids, np.full((len(task.model_ids), len(task.wnids)), np.inf))
        if method == "logme":
            return logme_scores(outputs, labels, task.model_ids, num_classes=len(task.wnids),
                                features=task.options.get("features", "logits"),
                                logdet=task.options.get("logdet", "full"))
        return leep_scores(outputs, labels, task.model_ids, num_classes=len(task.wnids))

    return fn


register_scorer("random", _random_scorer)
register_scorer("heu", _heu_scorer, uses_beta=True, min_classes=2)
register_scorer("logme", _node_data_scorer("logme"))
register_scorer("leep", _node_data_scorer("leep"))


def baseline_selection(
    method: str,
    labels: Any,
    wnids: Sequence[str | None],
    *,
    k: int = 3,
    beta: float | None = None,
    model_ids: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    node_wnids: Sequence[str] | None = None,
    outputs: Sequence[np.ndarray] | None = None,
    output_labels=None,
    seed: int = 0,
    columns: str = "chco",
    link: str = "softmax",
    progress: bool = False,
    **solver_kwargs,
) -> Selection:
    """A baseline in the selection slot: :func:`mll_jax.selection.select_models` with ``scorer=method``.

    ``method``: ``"random"``, ``"heu"`` (labels only), ``"logme"`` or ``"leep"`` (need ``outputs``: per
    candidate model its logits on the target node images, and ``output_labels``, their class ids over ALL
    classes; see :func:`target_node_data` and :func:`expert_outputs`).  ``beta`` applies to HEU only.
    """
    if method not in ("random", "heu", "logme", "leep"):
        raise ValueError(f"unknown baseline {method!r}; expected random, heu, logme or leep")
    node_data = None
    if method in ("logme", "leep"):
        if outputs is None or output_labels is None:
            raise ValueError(f"{method} needs outputs (model logits on the target node images) and output_labels")
        wnids = list(wnids)
        matched = [c for c, w in enumerate(wnids) if w is not None]
        remap = np.full(len(wnids), -1, np.int64)
        remap[matched] = np.arange(len(matched))
        lab = remap[np.asarray(output_labels, np.int64)]
        keep = lab >= 0

        def node_data(_model_ids, _wnids):
            return [np.asarray(z)[keep] for z in outputs], lab[keep]

    return select_models(labels, wnids, scorer=method, k=k, beta=beta, model_ids=model_ids,
                         class_names=class_names, node_wnids=node_wnids, node_data=node_data, columns=columns,
                         progress=progress, seed=seed, link=link, **solver_kwargs)
