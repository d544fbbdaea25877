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

The LogME and LEEP estimators themselves (and their reference compatibility) are in
:mod:`mll_jax.selection.transferability`.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mll_jax.selection.transferability import leep, logme
from mll_jax.selection.types import ModelScores

__all__ = [
    "random_scores",
    "heu_losses",
    "heu_scores",
    "target_node_data",
    "expert_outputs",
    "logme_scores",
    "leep_scores",
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
