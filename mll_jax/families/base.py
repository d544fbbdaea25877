"""What a model family is to the system, and the fingerprints both families record.

The system (:class:`mll_jax.system.MLL`) holds one hub with two families of models, told apart by the hub
(:meth:`mll_jax.hub.ModelHub.family`): experts (image classifiers with heads, :mod:`mll_jax.families.experts`) and
VLMs (image / text embeddings, :mod:`mll_jax.families.vlms`).  Each family knows its models' labels and when they
are stale, labels them, selects them for a task and builds the classifier that reuses them; the system dispatches
by family and never branches on a model's kind.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = ["Family", "ExpertModel", "VLMModel", "sdag_fingerprint", "model_fingerprint", "label_fingerprint"]


@runtime_checkable
class ExpertModel(Protocol):
    """An expert: ``logits(images) -> (N, num_heads)`` (optional ``head_names`` / ``head_wnids``)."""

    model_id: str
    num_heads: int

    def logits(self, images) -> Any: ...


@runtime_checkable
class VLMModel(Protocol):
    """A VLM: unit image and text embeddings and a logit scale (see :class:`mll_jax.vlm.models.VLM`)."""

    model_id: str

    @property
    def logit_scale(self) -> float: ...

    def encode_images(self, images) -> Any: ...

    def encode_text(self, texts: Sequence[str]) -> Any: ...


@runtime_checkable
class Family(Protocol):
    """One family of the hub's models, as the system uses it."""

    #: ``"experts"`` or ``"vlms"`` (the hub's name for the family)
    name: str

    def ids(self) -> list[str]:
        """The hub's models of this family (hub order)."""

    def stale(self, model_ids: Sequence[str] | None = None) -> list[str]:
        """Models of this family whose labels are missing or out of date."""

    def label(self, model_ids: Sequence[str] | None, *, recompute: bool, processes, unit_nodes: int
              ) -> dict[str, dict]:
        """Label the stale models (all given ones with ``recompute``); a summary row per labelled model."""

    def forget(self, model_id: str) -> None:
        """Delete what the family keeps for ``model_id`` (labels, state, loaded model)."""

    def select(self, class_names: Sequence[str], **kwargs):
        """Select this family's models per class: a :class:`mll_jax.selection.Selection` of this family."""

    def classifier(self, class_names: Sequence[str], *, method: str | None = None):
        """Select this family's models for the task (``method``: how; default: the system's config) and return
        the :class:`mll_jax.classifier.Classifier` that reuses them."""


def sdag_fingerprint(sdag) -> str:
    """Hash of the SDAG's nodes and of which data each node with images holds."""
    data = [list(sdag.nodes), [(w, sdag.data_key(w)) for w in sdag.nodes_with_images()]]
    return hashlib.sha1(json.dumps(data).encode()).hexdigest()[:16]


def model_fingerprint(hub, model_id: str) -> str:
    """The hub's fingerprint of a model (kind, source, options and weight bytes; see ModelHub.fingerprint)."""
    return str(hub.fingerprint(model_id))


def label_fingerprint(labels, model_ids: Sequence[str], wnids: Sequence[str | None]) -> str:
    """Hash of the label rows a selection was computed from (every candidate model, the matched nodes)."""
    h = hashlib.sha256()
    matched = [w for w in wnids if w is not None]
    many = labels.read_many(list(model_ids), matched) if matched and hasattr(labels, "read_many") else None
    for i, m in enumerate(model_ids):
        h.update(m.encode() + b"\0")
        if matched:
            rows = labels.read(m, matched) if many is None else many[i]
            h.update(np.ascontiguousarray(np.asarray(rows, np.float32)).tobytes())
    return h.hexdigest()[:24]
