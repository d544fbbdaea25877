"""Model reuse (MLL step 3, Eq. 12-13): entropy-weighted ensemble of the selected experts + VLM patch.

For an image ``x``, every selected expert ``m`` gives its softmax output ``F_m(x)`` (``H_m``-vector).
Its one-vs-rest score for class ``c`` is ``F_m(x)^T x_c^m`` with the column ``x_c^m`` from selection, and its
confidence is ``a_m(x) = 1 - entropy(F_m(x)) / log H_m`` (in ``[0, 1]``; 1 = one-hot, 0 = uniform).  With
``E_c`` the experts of class ``c``::

    w_m^c(x) = a_m(x) / sum_{m' in E_c} a_m'(x)                      (Eq. 12, weights over E_c)
    p_c(x)   = sum_{m in E_c} w_m^c(x) * F_m(x)^T x_c^m
    y(x)     = argmax_c p_c(x)                                          (Eq. 13)

Edge cases (our choices): if every expert of class ``c`` has zero confidence on ``x`` the weights fall back
to uniform over ``E_c``; a one-head model (``H_m = 1``, ``log H_m = 0``) has confidence 0.

Uncovered classes (no expert) take their score from the VLM patch.  The patch gives zero-shot logits over
the ``C`` class prompts; we turn them into a distribution over *all* ``C`` classes (``patch_mode="all"``,
default) and use ``p_c(x) = patch_c(x)`` for the uncovered ``c``.  Both the expert scores and this value are
estimates of ``P(y = c | x)`` in ``[0, 1]`` (``F^T x_c <= max_h x_hc <= 1`` because the columns of
``X`` have entries in ``[0, 1]``), so they are compared on the same scale; the patch's mass on covered classes
is discarded, which makes it assign an uncovered class only when it is confident about it, in proportion
to how confident the experts are.  ``patch_mode="uncovered"`` renormalises the patch over the uncovered
classes only (a stronger patch).  ``patch_weight`` multiplies the patch scores (default 1).  Without a patch,
uncovered classes score 0.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mll_jax.images import as_image_batch
from mll_jax.selection import Selection
from mll_jax.errors import NonFiniteOutputError  # noqa: F401  (re-exported)
from mll_jax.vlm.select import reuse_scores, task_logits

__all__ = ["NonFiniteOutputError", "expert_terms", "combine", "patch_scores", "ensemble_scores", "Reuser", "patch_logits",
           "VLMPatch", "VLMEnsemble", "chco_reuse_scores"]


@jax.jit
def expert_terms(logits, X):
    """One expert's one-vs-rest scores and confidence (pure, jit/vmap-able).

    Args:
      logits: ``(N, H)`` expert logits; ``X``: ``(H, C)`` predictor columns.
    Returns:
      ``scores (N, C) = softmax(logits) @ X`` and ``confidence (N,) = 1 - entropy / log H`` clipped to [0, 1].
    """
    logits = jnp.asarray(logits, jnp.float32)
    X = jnp.asarray(X, jnp.float32)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(log_p)
    scores = p @ X
    H = logits.shape[-1]
    entropy = -jnp.sum(jnp.where(p > 0, p * log_p, 0.0), axis=-1)
    if H > 1:
        conf = jnp.clip(1.0 - entropy / jnp.log(jnp.float32(H)), 0.0, 1.0)
    else:
        conf = jnp.zeros(logits.shape[:-1], jnp.float32)
    return scores, conf


@jax.jit
def combine(scores, confidence, mask, patch=None, covered=None):
    """Eq. 12 ensemble plus the patch for uncovered classes (pure, jit-able).

    Args:
      scores: ``(M, N, C)`` per-expert one-vs-rest scores (:func:`expert_terms`).
      confidence: ``(M, N)`` per-expert confidence.
      mask: ``(M, C)`` bool, expert ``m`` selected for class ``c``.
      patch: ``(N, C)`` patch scores for uncovered classes, or ``None`` (uncovered classes score 0).
      covered: ``(C,)`` bool; default ``mask.any(0)``.
    Returns:
      ``(N, C)`` class scores ``p_c(x)``.
    """
    scores = jnp.asarray(scores, jnp.float32)
    confidence = jnp.asarray(confidence, jnp.float32)
    mask = jnp.asarray(mask, bool)
    m = mask[:, None, :].astype(jnp.float32)  # (M, 1, C)
    w = confidence[:, :, None] * m  # (M, N, C)
    total = jnp.sum(w, axis=0)  # (N, C)
    n_sel = jnp.sum(m, axis=0)  # (1, C)
    uniform = m / jnp.maximum(n_sel, 1.0)
    w = jnp.where(total[None] > 0, w / jnp.where(total > 0, total, 1.0)[None], uniform)
    p = jnp.sum(w * scores, axis=0)
    if covered is None:
        covered = jnp.any(mask, axis=0)
    fallback = jnp.zeros_like(p) if patch is None else jnp.asarray(patch, jnp.float32)
    return jnp.where(jnp.asarray(covered, bool)[None, :], p, fallback)


def patch_scores(logits, covered, mode: str = "all", weight: float = 1.0):
    """Patch scores ``(N, C)`` from zero-shot logits (pure): softmax over all classes (``"all"``) or over the
    uncovered ones (``"uncovered"``), times ``weight``.  Only the uncovered entries are used by :func:`combine`."""
    logits = jnp.asarray(logits, jnp.float32)
    covered = jnp.asarray(covered, bool)
    if mode == "all":
        probs = jax.nn.softmax(logits, axis=-1)
    elif mode == "uncovered":
        probs = jax.nn.softmax(jnp.where(covered[None, :], -jnp.inf, logits), axis=-1)
        probs = jnp.where(covered[None, :], 0.0, probs)
    else:
        raise ValueError(f"patch mode must be 'all' or 'uncovered', got {mode!r}")
    return weight * probs


def ensemble_scores(selection: Selection, logits: Mapping[str, Any], num_images: int, patch_logits=None, *,
                    patch_mode: str = "all", patch_weight: float = 1.0) -> np.ndarray:
    """``(N, C)`` class scores of a selection's ensemble from precomputed outputs (Eq. 12-13 + patch).

    ``logits[model_id]``: ``(N, H_m)`` logits of every used model on the same ``N`` images; ``patch_logits``:
    ``(N, C)`` zero-shot logits of the patch (``None``: uncovered classes score 0).  :class:`Reuser` computes the
    outputs batch by batch and calls this; benchmarks call it on cached outputs.
    """
    used = selection.used_model_ids
    C = selection.num_classes
    terms_s, terms_c = [], []
    for m in used:
        z = np.asarray(logits[m])
        X = selection.columns[m]
        if z.shape != (num_images, X.shape[0]):
            raise ValueError(f"expert {m!r} gave logits of shape {z.shape}, expected ({num_images}, {X.shape[0]})")
        s, a = expert_terms(z, X)
        terms_s.append(s)
        terms_c.append(a)
    if terms_s:
        scores, conf = jnp.stack(terms_s), jnp.stack(terms_c)
    else:
        scores, conf = jnp.zeros((0, num_images, C)), jnp.zeros((0, num_images))
    covered = selection.covered
    patch = None
    if patch_logits is not None:
        patch = patch_scores(np.asarray(patch_logits), covered, patch_mode, patch_weight)
    return np.array(combine(scores, conf, selection.mask(used), patch, covered))


class Reuser:
    """Zero-shot classifier from a :class:`~mll_jax.selection.Selection`, the experts and a VLM patch.

    Args:
      selection: experts per class with predictor columns for every used model.
      experts: ``model_id -> expert`` mapping, or a hub with ``.load(model_id)`` (only used models are loaded).
        An expert has ``num_heads`` and ``logits(images) -> (N, num_heads)``.
      patch: object with ``logits(images, class_names) -> (N, C)`` zero-shot logits (e.g.
        :class:`mll_jax.clip_patch.ClipZeroShot`), used for uncovered classes; ``None``: uncovered score 0.
      class_names: prompts for the patch (default ``selection.class_names``).
      batch_size: images per forward pass; progress: tqdm bar over batches.
      on_nonfinite: ``"raise"`` (default): NaN/inf outputs of an expert or the patch raise
        :class:`NonFiniteOutputError` naming the model; ``"abstain"``: those images get prediction ``-1`` and
        scores NaN.  Images no class can be predicted for (nothing covered and no patch) are predicted ``-1``.
    """

    def __init__(
        self,
        selection: Selection,
        experts: Mapping[str, Any] | Any,
        patch: Any | None = None,
        *,
        class_names: Sequence[str] | None = None,
        patch_mode: str = "all",
        patch_weight: float = 1.0,
        batch_size: int = 256,
        progress: bool = True,
        on_nonfinite: str = "raise",
    ):
        if on_nonfinite not in ("raise", "abstain"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'abstain', got {on_nonfinite!r}")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.on_nonfinite = on_nonfinite
        if patch_mode not in ("all", "uncovered"):
            raise ValueError(f"patch_mode must be 'all' or 'uncovered', got {patch_mode!r}")
        missing = selection.missing_columns()
        if missing:
            raise ValueError(
                f"selection has no predictor columns for models {missing[:5]}; call "
                "mll_jax.selection.fill_columns(selection, labels) first"
            )
        self.selection = selection
        self.model_ids = selection.used_model_ids
        self.mask = selection.mask(self.model_ids)
        self.covered = selection.covered
        self.class_names = list(class_names if class_names is not None else (selection.class_names or []))
        if patch is not None and len(self.class_names) != selection.num_classes:
            raise ValueError(
                f"the patch needs {selection.num_classes} class names, got {len(self.class_names)}"
            )
        if patch is None and not self.covered.all():
            warnings.warn(
                f"{int((~self.covered).sum())} uncovered classes and no patch: they will never be predicted",
                RuntimeWarning, stacklevel=2,
            )
        self.patch = patch
        self.patch_mode = patch_mode
        self.patch_weight = float(patch_weight)
        self.batch_size = int(batch_size)
        self.progress = progress
        self.experts = {}
        for model_id in self.model_ids:
            if isinstance(experts, Mapping):
                if model_id not in experts:
                    raise KeyError(f"selected model {model_id!r} is not among the given experts")
                expert = experts[model_id]
            elif hasattr(experts, "load"):
                expert = experts.load(model_id)
            else:
                raise TypeError("experts must be a mapping model_id -> expert or a hub with .load(model_id)")
            heads = selection.columns[model_id].shape[0]
            if getattr(expert, "num_heads", heads) != heads:
                raise ValueError(
                    f"expert {model_id!r} has {expert.num_heads} heads but its predictor columns have {heads} rows"
                )
            self.experts[model_id] = expert

    def _batch_scores(self, images: np.ndarray) -> np.ndarray:
        n = len(images)
        C = self.selection.num_classes
        abstain = np.zeros(n, bool)
        outputs = {}
        for model_id in self.model_ids:
            heads = self.selection.columns[model_id].shape[0]
            z = np.asarray(self.experts[model_id].logits(images))
            if z.shape != (n, heads):
                raise ValueError(f"expert {model_id!r} returned logits of shape {z.shape}, expected ({n}, {heads})")
            abstain |= self._check_finite(z, f"expert {model_id!r}")
            outputs[model_id] = z
        z_patch = None
        if self.patch is not None and not self.covered.all():
            z_patch = np.asarray(self.patch.logits(images, self.class_names))
            if z_patch.shape != (n, C):
                raise ValueError(f"patch returned logits of shape {z_patch.shape}, expected ({n}, {C})")
            abstain |= self._check_finite(z_patch, f"the patch ({type(self.patch).__name__})")
        out = ensemble_scores(self.selection, outputs, n, z_patch, patch_mode=self.patch_mode,
                              patch_weight=self.patch_weight)
        out[abstain] = np.nan
        return out

    def _check_finite(self, z: np.ndarray, who: str) -> np.ndarray:
        bad = ~np.isfinite(z).all(axis=1)
        if bad.any() and self.on_nonfinite == "raise":
            raise NonFiniteOutputError(
                f"{who} returned NaN/inf outputs for {int(bad.sum())} of {len(z)} images (first: #{int(np.argmax(bad))} "
                "of this batch); set on_nonfinite='abstain' to skip such images")
        return bad

    def scores(self, images: np.ndarray) -> np.ndarray:
        """``(N, C)`` class scores ``p_c(x)`` for uint8 images ``(N, h, w[, 3])``."""
        from tqdm.auto import tqdm

        images = as_image_batch(images, "images to classify")
        out = np.zeros((len(images), self.selection.num_classes), np.float32)
        starts = range(0, len(images), self.batch_size)
        for start in tqdm(starts, desc="reuse", unit="batch", disable=not self.progress):
            stop = min(start + self.batch_size, len(images))
            out[start:stop] = self._batch_scores(images[start:stop])
        return out

    def predict(self, images: np.ndarray) -> np.ndarray:
        """``(N,)`` predicted class indices (Eq. 13); ``-1`` where the classifier abstains (non-finite outputs with
        ``on_nonfinite="abstain"``, or no class can be predicted: nothing covered and no patch)."""
        return self.predictions(self.scores(images))

    def predictions(self, scores: np.ndarray) -> np.ndarray:
        """The prediction rule of :meth:`predict` applied to scores already computed with :meth:`scores`."""
        s = np.asarray(scores)
        pred = np.argmax(np.nan_to_num(s, nan=-np.inf), axis=1)
        can = np.isfinite(s).all(axis=1)
        if self.patch is None:
            can &= bool(self.covered.any())
        return np.where(can, pred, -1)


def patch_logits(scores) -> np.ndarray:
    """VLM ensemble scores ``(N, C)`` -> patch logits ``log(s / sum_y s_y)`` (the rule of ``MLL.classifier(models="both")``, :mod:`mll_jax.classifier`)."""
    s = np.asarray(scores, np.float64)
    return np.log(np.maximum(s / s.sum(axis=1, keepdims=True), 1e-30)).astype(np.float32)


class VLMPatch:
    """A VLM selection reused as a patch for the expert reuser: ``logits(images, class_names)`` returns
    ``log(s / sum_y s_y)`` of the VLM ensemble scores ``s`` (see :mod:`mll_jax.classifier` for the rule)."""

    def __init__(self, selection, vlms: Mapping[str, Any]):
        self.selection = selection
        self.vlms = dict(vlms)

    def scores(self, images) -> np.ndarray:
        names = self.selection.class_names
        logits = {m: task_logits(self.vlms[m], images, names) for m in self.selection.used_models}
        return reuse_scores(self.selection, logits)

    def logits(self, images, class_names: Sequence[str]) -> np.ndarray:
        if list(class_names) != list(self.selection.class_names):
            raise ValueError(f"VLMPatch was selected for {self.selection.class_names}, asked for {list(class_names)}")
        return patch_logits(self.scores(images))


class VLMEnsemble:
    """The MLL-VLM reuse as a classifier's scorer: the entropy-weighted ensemble of the VLMs a
    :class:`mll_jax.vlm.select.VLMSelection` chose (:func:`mll_jax.vlm.select.reuse_scores` over the task's class
    prompts), with the classifier's rule for non-finite outputs (``on_nonfinite``: ``"raise"`` raises
    :class:`NonFiniteOutputError`; ``"abstain"``: the image's scores are NaN and its prediction is -1)."""

    #: display setting (the VLM ensemble shows no progress bar)
    progress = False

    def __init__(self, selection, vlms: Mapping[str, Any], on_nonfinite: str = "raise"):
        if on_nonfinite not in ("raise", "abstain"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'abstain', got {on_nonfinite!r}")
        self.patch = VLMPatch(selection, vlms)
        self.experts = self.patch.vlms
        self.on_nonfinite = on_nonfinite

    def scores(self, images) -> np.ndarray:
        s = np.asarray(self.patch.scores(images))
        bad = ~np.isfinite(s).all(axis=1)
        if bad.any():
            if self.on_nonfinite == "raise":
                raise NonFiniteOutputError(
                    f"the VLM ensemble returned NaN/inf scores for {int(bad.sum())} of {len(s)} images (first: "
                    f"#{int(np.argmax(bad))}); set on_nonfinite='abstain' to skip such images")
            s = np.array(s, dtype=np.result_type(s, np.float32))
            s[bad] = np.nan
        return s

    def predictions(self, scores) -> np.ndarray:
        """Argmax; -1 where a row is not finite."""
        s = np.asarray(scores)
        return np.where(np.isfinite(s).all(axis=1), np.argmax(np.nan_to_num(s, nan=-np.inf), axis=1), -1)


def chco_reuse_scores(sel, logits: Mapping[str, np.ndarray], patch_logits=None, **kw) -> np.ndarray:
    """``(N, C)`` scores of the expert pipeline's ensemble (:func:`ensemble_scores`) from the used VLMs' head logits
    (the CHCO-style VLM baseline of :mod:`mll_jax.vlm.expert_style`: VLMs as experts over their node-text heads)."""
    used = sel.used_model_ids
    missing = [m for m in used if m not in logits]
    if missing:
        raise KeyError(f"head logits missing for selected VLMs {missing}")
    if used:
        n = len(logits[used[0]])
    elif patch_logits is not None:
        n = len(patch_logits)
    else:
        n = len(next(iter(logits.values()))) if logits else 0
    return ensemble_scores(sel, {m: logits[m] for m in used}, n, patch_logits, **kw)
