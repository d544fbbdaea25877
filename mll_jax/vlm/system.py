"""VLMs in the MLL system: a model kind of the same hub, labelled by ``MLL.label()``, served by ``MLL.classifier``.

::

    mll = MLL.open("my_mll")
    mll.add_vlm("openai/clip-vit-base-patch32")            # any HF CLIP checkpoint by name or directory
    mll.add_vlm("offline:vlm-footwear", hub=vlm_hub)        # an offline dual encoder (mll_jax.vlm.offline)
    mll.label()                                             # experts -> root/labels, VLMs -> root/vlm_labels
    mll.classifier(names, models="vlms")                    # VLM selection + entropy-weighted VLM ensemble
    mll.classifier(names, models="vlms", vlm_options={"method": "chco"})   # baseline: VLMs as CHCO experts
    mll.classifier(names, models="both")                    # experts where they cover a class, VLMs elsewhere

Hub kinds (loaders registered with :meth:`mll_jax.hub.ModelHub.register_loader` when this module is imported;
:mod:`mll_jax.system` imports it lazily):

* ``clip_vlm`` -- ``source``: an HF CLIP checkpoint name or directory; ``options``: keyword arguments of
  :meth:`mll_jax.vlm.models.ClipVLM.from_pretrained` (``template``, ``batch_size``, ``from_pt``, ...).
* ``dual_encoder_vlm`` -- an offline dual encoder (:class:`mll_jax.vlm.offline.DualEncoderVLM`): the image
  tower stored like a ``flax_module`` (``<hub>/models/<id>/variables``), the text projection in
  ``text_proj.npy`` and the spec / logit scale in the entry's ``vlm`` field.  The frozen MiniLM text tower is
  one :class:`~mll_jax.vlm.offline.TextFeatures` per process.

Experts and VLMs are told apart by the hub entry (:func:`is_vlm_entry`: a VLM kind, or a ``flax_module`` entry
carrying a ``vlm`` field, which is how :mod:`mll_jax.vlm.offline` stores its own hub); expert labelling and
expert selection never see VLMs, VLM labelling and selection never see experts.

VLM labels live in a :class:`~mll_jax.vlm.labels.VLMLabelStore` under ``root/vlm_labels`` with a state file
``vlm_state.json`` (per VLM: the SDAG fingerprint, the model fingerprint and the labels' node-set key); a VLM is
*stale* when it has no labels or any of these changed, and only stale VLMs are relabelled (and then only the
node embeddings that are missing are computed, see :mod:`mll_jax.vlm.labels`).

**The "both" rule.**  The expert selection (``MLL.select``) decides which classes the experts cover.  The VLM
selection is made for *all* task classes (``select_vlms``) and its ensemble scores ``s(x) (C,)``
(:func:`mll_jax.vlm.select.reuse_scores`) are given to the expert reuser as the patch's logits
``log(s / sum s)``.  With the default ``patch_mode="all"`` the reuser's softmax turns them back into ``s / sum
s``: an uncovered class ``c`` scores ``s_c(x) / sum_y s_y(x)``, the normalised VLM ensemble score, and competes
with the covered classes' expert scores (both in ``[0, 1]``, see :mod:`mll_jax.reuse`).  Covered classes keep
their expert scores unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mll_jax.system import Classifier
from mll_jax.utils import atomic_write_json, file_hash, texts_hash

__all__ = ["VLM_KINDS", "is_vlm_entry", "use_text_features", "register_loaders", "add_vlm", "load_vlm", "vlm_ids",
           "vlm_store", "stale_vlms", "label_vlms", "vlm_labels", "select_vlms", "patch_logits", "VLMPatch", "VLMClassifier",
           "vlm_classifier", "BothClassifier", "load_classifier", "VLM_SELECT_OPTIONS",
           "select_vlms_chco", "VLMExpertClassifier"]

VLM_KINDS = ("clip_vlm", "dual_encoder_vlm")
#: Keys accepted in ``vlm_options`` (:func:`select_vlms`).
VLM_SELECT_OPTIONS = ("k", "alpha", "top", "scope", "descriptions", "method", "scale")
#: Options of each selection ``method`` (``"mll"``: the MLL-VLM selection; ``"chco"``: the CHCO-style baseline of
#: :mod:`mll_jax.vlm.expert_style`, VLMs as experts over their node-text heads).
VLM_METHOD_OPTIONS = {"mll": ("k", "alpha", "top", "scope", "descriptions", "method"),
                      "chco": ("k", "method", "scale")}

_TEXT_FEATURES = None


def _text_features():
    global _TEXT_FEATURES
    if _TEXT_FEATURES is None:
        from mll_jax.vlm.offline import TextFeatures

        _TEXT_FEATURES = TextFeatures()
    return _TEXT_FEATURES


def use_text_features(text_features) -> None:
    """Set the process-wide text tower of the offline dual encoders (default: MiniLM, loaded on first use);
    ``None`` resets it.  Loaded VLMs keep the one they were loaded with."""
    global _TEXT_FEATURES
    _TEXT_FEATURES = text_features


def is_vlm_entry(entry: Mapping[str, Any]) -> bool:
    """Whether a hub entry is a VLM (a VLM kind, or an offline dual encoder stored as ``flax_module`` + ``vlm``)."""
    return entry.get("kind") in VLM_KINDS or (entry.get("kind") == "flax_module" and bool(entry.get("vlm")))


def _load_clip_vlm(hub, entry: dict):
    from mll_jax.vlm.models import ClipVLM

    opts = dict(entry.get("options") or {})
    return ClipVLM.from_pretrained(entry["source"], model_id=entry["model_id"], **opts)


def _load_dual_encoder_vlm(hub, entry: dict):
    from mll_jax.hub import _load_flax_module  # the image tower is stored exactly like a flax_module
    from mll_jax.vlm.offline import DualEncoderSpec, DualEncoderVLM

    v = entry.get("vlm")
    if not v:
        raise ValueError(f"model {entry['model_id']!r}: dual_encoder_vlm entry has no 'vlm' field")
    tower = _load_flax_module(hub, {**entry, "num_heads": int(v["spec"]["dim"])})  # tower outputs: the embedding
    w = np.load(hub.model_dir(entry["model_id"], v.get("text_proj", "text_proj.npy")))
    spec = DualEncoderSpec(**{**v["spec"], "classes": tuple(v["spec"]["classes"])})
    return DualEncoderVLM(entry["model_id"], tower, w, float(v["logit_scale"]), _text_features(), spec)


def register_loaders() -> None:
    """Register the VLM kinds with :class:`mll_jax.hub.ModelHub` (idempotent)."""
    from mll_jax.hub import ModelHub

    ModelHub.register_loader("clip_vlm", _load_clip_vlm)
    ModelHub.register_loader("dual_encoder_vlm", _load_dual_encoder_vlm)


register_loaders()


# ------------------------------------------------------------------------------------------------ hub


def _clip_fingerprint(src: str, options: Mapping[str, Any]) -> str:
    p = Path(src).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in (".msgpack", ".safetensors", ".json",
                                                                              ".txt", ".bin"))
        base = file_hash(files, length=20)
    else:
        base = src
    return texts_hash(["clip_vlm", base, json.dumps(dict(options), sort_keys=True)], length=20)


def add_vlm(mll, source, *, model_id: str | None = None, hub=None, overwrite: bool = False, **options) -> str:
    """Register a VLM in ``mll.hub`` and return its id (see :meth:`mll_jax.system.MLL.add_vlm`)."""
    from mll_jax.hub import ModelHub
    from mll_jax.system import MLLError

    target = mll.hub
    if isinstance(source, str) and source.startswith("offline:"):
        src_id = source[len("offline:"):]
        if hub is None:
            raise MLLError(f"{source!r}: give hub= (the ModelHub or directory the offline dual encoders were "
                           "trained into, e.g. <home>/vlm_offline/hub)")
        src_hub = hub if isinstance(hub, ModelHub) else ModelHub(Path(hub).expanduser().absolute())
        if src_id not in src_hub:
            raise MLLError(f"{src_id!r} is not in hub {src_hub.root}; it has {src_hub.ids()[:20]}")
        e = src_hub.entry(src_id)
        if not e.get("vlm"):
            raise MLLError(f"hub model {src_id!r} is not an offline dual encoder (no 'vlm' field)")
        mid = model_id or src_id
        if mid in target and not overwrite:
            return mid
        if Path(src_hub.model_dir(src_id)).resolve() != Path(target.model_dir(mid)).resolve():
            dst = Path(target.model_dir(mid))
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(src_hub.model_dir(src_id), dst)
        fp = texts_hash(["dual_encoder_vlm", json.dumps(e["vlm"], sort_keys=True),
                         file_hash(sorted(p for p in Path(target.model_dir(mid)).rglob("*") if p.is_file()),
                                   length=20)], length=20)
        extra = {k: v for k, v in e.items() if k not in ("model_id", "kind", "num_heads", "head_names",
                                                          "head_wnids", "source", "options")}
        target.register(mid, "dual_encoder_vlm", source=f"offline:{src_id}",
                        options=e.get("options"), overwrite=overwrite, **{**extra, "fingerprint": fp})
        return mid
    if isinstance(source, str):
        src = source
        for prefix in ("hf:", "clip:"):
            if src.startswith(prefix):
                src = src[len(prefix):]
        if not src:
            raise MLLError(f"{source!r}: give an HF CLIP checkpoint name or directory")
        if Path(src).expanduser().is_dir():
            src = str(Path(src).expanduser().absolute())
        mid = model_id or os.path.basename(src.rstrip("/")).replace(os.sep, "__")
        if mid in target and not overwrite:
            return mid
        json.dumps(options)
        target.register(mid, "clip_vlm", source=src, options=dict(options), overwrite=overwrite,
                        fingerprint=_clip_fingerprint(src, options))
        return mid
    raise MLLError(f"cannot add a {type(source).__name__} as a VLM: give an HF CLIP checkpoint name or directory, "
                   "or 'offline:<model id>' with hub=")


def vlm_ids(mll) -> list[str]:
    """The hub's VLMs (sorted)."""
    return [m for m in mll.hub.ids() if is_vlm_entry(mll.hub.entry(m))]


def load_vlm(mll, model_id: str):
    """The hub's VLM ``model_id`` (loaded once per hub object)."""
    from mll_jax.system import MLLError

    mll._check_model(model_id)
    e = mll.hub.entry(model_id)
    if not is_vlm_entry(e):
        raise MLLError(f"model {model_id!r} is an expert, not a VLM (MLL.vlm_ids() lists the VLMs)")
    if e.get("kind") == "flax_module":  # an offline hub used directly: its entries are towers + a 'vlm' field
        from mll_jax.vlm.offline import load_dual_encoder

        return load_dual_encoder(mll.hub, model_id, _text_features())
    return mll.hub.load(model_id)


# ------------------------------------------------------------------------------------------------ labels


def vlm_store(mll):
    from mll_jax.vlm.labels import VLMLabelStore

    if mll.root is not None:
        return VLMLabelStore(mll.root / "vlm_labels")
    return VLMLabelStore(Path(mll.labels.root).parent / "vlm_labels")


def _state_file(store) -> Path:
    return Path(store.root) / "vlm_state.json"


def _read_state(store) -> dict:
    try:
        return json.loads(_state_file(store).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _wanted(mll, model_id: str) -> dict:
    from mll_jax.system import _model_fingerprint, _sdag_fingerprint

    nodes = list(mll.sdag.nodes_with_images())
    return {"sdag": _sdag_fingerprint(mll.sdag), "model": _model_fingerprint(mll.hub, model_id),
            "nodes": texts_hash(nodes, length=16)}


def _check_vlm_ids(mll, model_ids) -> list[str]:
    from mll_jax.system import MLLError

    ids = vlm_ids(mll) if model_ids is None else list(model_ids)
    for m in ids:
        mll._check_model(m)
        if not is_vlm_entry(mll.hub.entry(m)):
            raise MLLError(f"model {m!r} is an expert, not a VLM")
    return ids


def stale_vlms(mll, model_ids: Sequence[str] | None = None) -> list[str]:
    """VLMs without labels, or labelled from other SDAG data or another model fingerprint."""
    ids = _check_vlm_ids(mll, model_ids)
    store = vlm_store(mll)
    state = _read_state(store)
    have = set(store.models())
    return [m for m in ids if m not in have or state.get(m, {}).get("wanted") != _wanted(mll, m)]


def label_vlms(mll, model_ids: Sequence[str] | None = None, *, recompute: bool = False) -> dict[str, dict]:
    """Label the stale VLMs (all given ones with ``recompute``); returns ``{id: {"vlm": True, "nodes",
    "embedded", "sdag_accuracy"}}`` for those labelled (``embedded``: nodes whose images were encoded now)."""
    from mll_jax.vlm.labels import label_vlm

    ids = _check_vlm_ids(mll, model_ids)
    todo = ids if recompute else stale_vlms(mll, ids)
    store = vlm_store(mll)
    out = {}
    for m in todo:
        if recompute:
            store.delete(m)
        vlm = load_vlm(mll, m)
        done: list[str] = []
        lab = label_vlm(store, mll.sdag, vlm, progress=mll.config.progress, on_node=done.append)
        state = _read_state(store)
        state[m] = {"wanted": _wanted(mll, m), "key": lab.key, "fingerprint": vlm.fingerprint}
        atomic_write_json(_state_file(store), state, sort_keys=True)
        out[m] = {"vlm": True, "nodes": len(lab.nodes), "embedded": len(done), "sdag_accuracy": lab.sdag_accuracy}
    return out


def vlm_labels(mll, model_ids: Sequence[str] | None = None) -> dict:
    """``{id: VLMLabels}`` of the (labelled) hub VLMs; a VLM without labels raises ``MissingLabelsError``."""
    from mll_jax.system import MissingLabelsError
    from mll_jax.vlm.labels import LabelsMissingError

    ids = _check_vlm_ids(mll, model_ids)
    store = vlm_store(mll)
    state = _read_state(store)
    out = {}
    for m in ids:
        try:
            out[m] = store.labels(m, state.get(m, {}).get("key"))
        except LabelsMissingError as e:
            raise MissingLabelsError(f"VLM {m!r} has no current labels: run MLL.label() ({e})") from None
    return out


# ------------------------------------------------------------------------------------------------ selection


def _check_options(opts: Mapping[str, Any] | None) -> dict:
    from mll_jax.system import MLLError

    opts = dict(opts or {})
    bad = sorted(set(opts) - set(VLM_SELECT_OPTIONS))
    if bad:
        raise MLLError(f"unknown vlm_options {bad}; accepted: {list(VLM_SELECT_OPTIONS)}")
    method = opts.get("method", "mll")
    if method not in VLM_METHOD_OPTIONS:
        raise MLLError(f"vlm_options method must be one of {sorted(VLM_METHOD_OPTIONS)}, got {method!r}")
    bad = sorted(set(opts) - set(VLM_METHOD_OPTIONS[method]))
    if bad:
        raise MLLError(f"vlm_options {bad} do not apply to method {method!r} (its options: "
                       f"{list(VLM_METHOD_OPTIONS[method])})")
    return opts


def _task_vlms(mll, class_names, model_ids, vlm_options):
    """What both VLM selections start from: the checked class names, the checked options and the hub VLM ids
    (refused when there is none; a warning names stale ones)."""
    import warnings

    from mll_jax.system import MLLError, check_class_names

    names = check_class_names(class_names)
    opts = _check_options(vlm_options)
    ids = _check_vlm_ids(mll, model_ids)
    if not ids:
        raise MLLError("the hub has no VLMs: add one with MLL.add_vlm()")
    stale = stale_vlms(mll, ids)
    if stale:
        # stacklevel: past this helper and the select function, to the caller of MLL.select_vlms/classifier
        warnings.warn(f"VLM labels of {stale} are stale or missing: run MLL.label()", RuntimeWarning, stacklevel=4)
    return names, opts, ids


def select_vlms(mll, class_names: Sequence[str], *, model_ids: Sequence[str] | None = None,
                vlm_options: Mapping[str, Any] | None = None):
    """:func:`mll_jax.vlm.select.select_vlms` over the hub's labelled VLMs; nodes matched by ``mll.node_text``
    (the same node texts as expert matching) with ``mll.encoder``.  ``vlm_options``: ``k`` (default 1),
    ``alpha``, ``top``, ``scope`` (``"all"`` | ``"task"``), ``descriptions`` (class -> text)."""
    from mll_jax.system import MLLError
    from mll_jax.vlm import select as vsel
    from mll_jax.vlm.labels import node_logits

    names, opts, ids = _task_vlms(mll, class_names, model_ids, vlm_options)
    if opts.get("method", "mll") != "mll":
        raise MLLError(f"select_vlms is the MLL-VLM selection; method {opts['method']!r}: use select_vlms_chco")
    labels = vlm_labels(mll, ids)
    nodes = list(labels[ids[0]].nodes)
    kw = {k: opts[k] for k in ("k", "alpha", "top") if k in opts}
    scope = opts.get("scope", "all")
    nl = None
    if scope == "task":
        store = vlm_store(mll)
        nl = {m: node_logits(store, labels[m]) for m in ids}
    return vsel.select_vlms(names, labels, nodes, [mll.node_text(v) for v in nodes], mll.encoder,
                            descriptions=opts.get("descriptions"), scope=scope, node_logits=nl, **kw)


def _expert_style(mll, ids: Sequence[str], scale: float):
    """``{id: ExpertStyleLabels}`` of the hub VLMs ``ids`` (from the stored labelling embeddings, smoothed over
    the system's SDAG with its ``delta``)."""
    from mll_jax.vlm import expert_style as es
    from mll_jax.vlm.labels import node_logits

    labels = vlm_labels(mll, ids)
    store = vlm_store(mll)
    return {m: es.expert_style_labels(labels[m], node_logits(store, labels[m]), mll.sdag, scale=scale,
                                      delta=mll.config.delta) for m in ids}


def select_vlms_chco(mll, class_names: Sequence[str], *, model_ids: Sequence[str] | None = None,
                     vlm_options: Mapping[str, Any] | None = None):
    """The CHCO-style baseline (:mod:`mll_jax.vlm.expert_style`) over the hub's labelled VLMs: expert-style labels
    (``scale * cos`` over the node texts, Eq. 1 from the stored labelling embeddings, Eq. 2 over the system's SDAG
    with ``config.delta``), each class matched to one node by the expert matching (``config.match_threshold``,
    ``mll.node_text``), CHCO with the system's solver settings, top ``k`` (``vlm_options``, default 1) under
    ``config.beta``.  Returns the expert pipeline's :class:`mll_jax.selection.Selection`."""
    from mll_jax.system import MLLError
    from mll_jax.vlm import expert_style as es

    names, opts, ids = _task_vlms(mll, class_names, model_ids, dict(vlm_options or {}, method="chco"))
    k = opts.get("k", 1)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(ids):
        raise MLLError(f"vlm_options k must be an int in [1, {len(ids)}] (the number of VLMs), got {k!r}")
    esl = _expert_style(mll, ids, float(opts.get("scale", es.DEFAULT_HEAD_SCALE)))
    cfg = mll.config
    matches = es.match_nodes(names, esl, mll.node_text, mll.encoder, threshold=cfg.match_threshold,
                             cache_dir=mll.text_cache)
    chco_opts = dict(cfg.chco_options)
    if cfg.chco_method is not None:
        chco_opts["method"] = cfg.chco_method
    return es.select_vlms_chco(names, esl, [mt.wnid for mt in matches], k=int(k), beta=cfg.beta,
                               similarities=[mt.similarity for mt in matches], match_threshold=cfg.match_threshold,
                               tol=cfg.chco_tol, **chco_opts)


def patch_logits(scores) -> np.ndarray:
    """VLM ensemble scores ``(N, C)`` -> patch logits ``log(s / sum_y s_y)`` (the "both" rule, module docstring)."""
    s = np.asarray(scores, np.float64)
    return np.log(np.maximum(s / s.sum(axis=1, keepdims=True), 1e-30)).astype(np.float32)


class VLMPatch:
    """A VLM selection reused as a patch for the expert reuser: ``logits(images, class_names)`` returns
    ``log(s / sum_y s_y)`` of the VLM ensemble scores ``s`` (see the module docstring for the rule)."""

    def __init__(self, selection, vlms: Mapping[str, Any]):
        self.selection = selection
        self.vlms = dict(vlms)

    def scores(self, images) -> np.ndarray:
        from mll_jax.vlm.select import reuse_scores, task_logits

        names = self.selection.class_names
        logits = {m: task_logits(self.vlms[m], images, names) for m in self.selection.used_models}
        return reuse_scores(self.selection, logits)

    def logits(self, images, class_names: Sequence[str]) -> np.ndarray:
        if list(class_names) != list(self.selection.class_names):
            raise ValueError(f"VLMPatch was selected for {self.selection.class_names}, asked for {list(class_names)}")
        return patch_logits(self.scores(images))


# ------------------------------------------------------------------------------------------------ persistence

VLM_FORMAT = "mll_jax.vlm_classifier/1"
BOTH_MODELS = "both"


def _selection_to_json(sel) -> dict:
    return {"class_names": list(sel.class_names), "model_ids": list(sel.model_ids), "nodes": list(sel.nodes),
            "alpha": float(sel.alpha),
            **{f: np.asarray(getattr(sel, f)).tolist() for f in ("match_idx", "match_weights", "match_sims", "f1",
                                                                  "scores", "chosen")}}


def _selection_from_json(d: Mapping[str, Any]):
    from mll_jax.vlm.select import VLMSelection

    arr = {f: np.asarray(d[f], np.int32 if f in ("match_idx", "chosen") else np.float32)
           for f in ("match_idx", "match_weights", "match_sims", "f1", "scores", "chosen")}
    return VLMSelection(list(d["class_names"]), list(d["model_ids"]), list(d["nodes"]), arr["match_idx"],
                        arr["match_weights"], arr["match_sims"], arr["f1"], arr["scores"], arr["chosen"],
                        float(d["alpha"]))


def _vlm_state(mll, model_ids: Sequence[str]) -> dict:
    """What a VLM selection was computed from: per candidate VLM its hub fingerprint and labels key."""
    from mll_jax.system import _model_fingerprint

    state = _read_state(vlm_store(mll))
    return {m: {"model": _model_fingerprint(mll.hub, m) if m in mll.hub else None,
                "labels": state.get(m, {}).get("key")} for m in model_ids}


def _check_vlm_state(mll, path, saved: Mapping[str, Any]) -> None:
    from mll_jax.system import StaleClassifierError

    missing = [m for m in saved if m not in mll.hub]
    if missing:
        raise StaleClassifierError(f"{path}: VLMs {missing} are no longer in the hub")
    now = _vlm_state(mll, list(saved))
    changed = [m for m in saved if now[m] != saved[m]]
    if changed:
        raise StaleClassifierError(f"{path}: the weights or labels of VLMs {changed} changed since it was saved; "
                                   "build a new classifier")


def load_classifier(path, mll, *, check: bool = True):
    """Load a classifier saved by :meth:`VLMClassifier.save` or :meth:`BothClassifier.save` (``check``: raise
    :class:`mll_jax.system.StaleClassifierError` when the VLMs' weights or labels changed since)."""
    from mll_jax.system import MLLError

    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
    except FileNotFoundError:
        raise FileNotFoundError(f"no saved classifier at {path}") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise MLLError(f"{path} is not a readable saved classifier ({type(e).__name__}: {e})") from e
    if meta.get("format") == VLM_FORMAT:
        if check:
            _check_vlm_state(mll, path, meta["vlm_state"])
        vsel = _selection_from_json(meta["selection"])
        return VLMClassifier(vsel, {m: load_vlm(mll, m) for m in vsel.used_models}, mll)
    extra = (meta.get("extra") or {})
    if extra.get("format") == VLM_CHCO_FORMAT:
        return VLMExpertClassifier.load(path, mll, check=check)
    if extra.get("models") == BOTH_MODELS:
        return BothClassifier.load(path, mll, check=check)
    if extra.get("format") == "mll_jax.classifier/1":
        return Classifier.load(path, mll, check=check)
    raise MLLError(f"{path} is not a saved mll_jax classifier")


class VLMClassifier:
    """A classifier served by VLMs only (``MLL.classifier(..., models="vlms")``): VLM selection from the labels,
    entropy-weighted VLM ensemble (:func:`mll_jax.vlm.select.reuse_scores`)."""

    models = "vlms"

    def __init__(self, selection, vlms: Mapping[str, Any], mll=None):
        self.selection = selection
        self._patch = VLMPatch(selection, vlms)
        self._mll = mll

    @property
    def class_names(self) -> list[str]:
        return list(self.selection.class_names)

    def scores(self, images) -> np.ndarray:
        return self._patch.scores(images)

    #: display setting (the VLM ensemble shows no progress bar)
    progress = False

    def predict(self, images) -> np.ndarray:
        return self.predictions(self.scores(images))

    def predictions(self, scores) -> np.ndarray:
        """:meth:`predict`'s rule on scores already computed: argmax, -1 where a row is not finite."""
        s = np.asarray(scores)
        return np.where(np.isfinite(s).all(axis=1), np.argmax(np.nan_to_num(s, nan=-np.inf), axis=1), -1)

    def predict_names(self, images) -> list[str | None]:
        return [self.class_names[i] if i >= 0 else None for i in self.predict(images)]

    def explain(self) -> list[dict]:
        """Per class: ``served_by="vlms"``, the matched nodes (weights, similarities) and the VLMs with F1 / r."""
        ex = self.selection.explain()
        return [{"class": c, "served_by": "vlms", "nodes": ex[c]["nodes"],
                 "vlms": [{"model": m, "f1": f, "score": r} for m, f, r in ex[c]["models"]]}
                for c in self.class_names]

    def explain_text(self) -> str:
        lines = []
        for r in self.explain():
            nodes = ", ".join(f"{n} {w:.2f}" for n, w, _ in r["nodes"] if w > 0)
            lines.append(f"{r['class']!r} -> VLMs (nodes: {nodes})")
            for v in r["vlms"]:
                lines.append(f"    {v['model']}: F1 {v['f1']:.3f}; score {v['score']:.3f}")
        return "\n".join(lines)

    def save(self, path, mll=None) -> Path:
        """Write the VLM selection (one ``.npz``, atomic); with ``mll``, also the fingerprints and label keys of
        its VLMs, so that :func:`load_classifier` detects changed weights or labels."""
        from mll_jax.utils import atomic_write

        meta = {"format": VLM_FORMAT, "models": "vlms", "selection": _selection_to_json(self.selection),
                "vlm_state": _vlm_state(mll or self._mll, self.selection.model_ids)}
        path = Path(path)
        atomic_write(path, lambda fh: np.savez(fh, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8)))
        return path

    @classmethod
    def load(cls, path, mll, *, check: bool = True) -> "VLMClassifier":
        return load_classifier(path, mll, check=check)

    def __repr__(self) -> str:
        return f"VLMClassifier({len(self.class_names)} classes, VLMs {self.selection.used_models})"


VLM_CHCO_FORMAT = "mll_jax.vlm_chco_classifier/1"


def _node_text_embeddings(mll, model_ids: Sequence[str]) -> dict:
    from mll_jax.vlm.labels import node_text_embeddings

    labels = vlm_labels(mll, list(model_ids)) if model_ids else {}
    store = vlm_store(mll)
    return {m: node_text_embeddings(store, labels[m]) for m in model_ids}


class VLMExpertClassifier:
    """``MLL.classifier(..., models="vlms", vlm_options={"method": "chco"})``: the CHCO-style VLM baseline
    (:mod:`mll_jax.vlm.expert_style`).  Each selected VLM's heads are ``scale * cos(image, node text)`` over the
    node texts of its labelling (the stored text embeddings); the scores are the expert ensemble
    (:func:`mll_jax.reuse.ensemble_scores`) with the CHCO columns.  Uncovered classes score 0."""

    models = "vlms"
    method = "chco"
    progress = False

    def __init__(self, selection, vlms: Mapping[str, Any], text_emb: Mapping[str, np.ndarray], scale: float,
                 mll=None):
        self.selection = selection
        self.vlms = dict(vlms)
        self.text_emb = dict(text_emb)
        self.scale = float(scale)
        self._mll = mll

    @property
    def class_names(self) -> list[str]:
        return list(self.selection.class_names)

    def head_logits(self, images) -> dict:
        from mll_jax.images import as_image_batch
        from mll_jax.vlm.expert_style import head_logits

        images = as_image_batch(images)
        return {m: head_logits(self.vlms[m].encode_images(images), self.text_emb[m], self.scale)
                for m in self.selection.used_model_ids}

    def scores(self, images) -> np.ndarray:
        from mll_jax.images import as_image_batch
        from mll_jax.reuse import ensemble_scores

        images = as_image_batch(images)
        return ensemble_scores(self.selection, self.head_logits(images), len(images))

    def predict(self, images) -> np.ndarray:
        return self.predictions(self.scores(images))

    def predictions(self, scores) -> np.ndarray:
        """Argmax; -1 where a row is not finite or every class scores 0 (no selected VLM says anything)."""
        s = np.asarray(scores)
        ok = np.isfinite(s).all(axis=1) & (np.nan_to_num(s).max(axis=1) > 0)
        return np.where(ok, np.argmax(np.nan_to_num(s, nan=-np.inf), axis=1), -1)

    def predict_names(self, images) -> list[str | None]:
        return [self.class_names[i] if i >= 0 else None for i in self.predict(images)]

    def explain(self) -> list[dict]:
        """Per class: ``served_by="vlms"``, ``method="chco"``, the matched node and similarity, the VLMs with their
        CHCO loss (and top heads), or why the class is uncovered."""
        return [{"class": r["class"], "served_by": "vlms", "method": "chco", "node": r["node"],
                 "similarity": r["similarity"],
                 "vlms": [{"model": e["model"], "loss": e["loss"], "heads": e["heads"]} for e in r["experts"]],
                 "uncovered": r["uncovered"]} for r in self.selection.explain()]

    def explain_text(self) -> str:
        lines = []
        for r in self.explain():
            if r["uncovered"]:
                lines.append(f"{r['class']!r} -> uncovered ({r['uncovered']})")
                continue
            lines.append(f"{r['class']!r} -> VLMs as CHCO experts (node {r['node']}, similarity {r['similarity']:.2f})")
            for v in r["vlms"]:
                lines.append(f"    {v['model']}: CHCO loss {v['loss']:.3f}")
        return "\n".join(lines)

    def save(self, path, mll=None) -> Path:
        """Write the selection (the expert pipeline's ``.npz``, atomic) with the head scale and, for
        :func:`load_classifier`, the fingerprints and label keys of the candidate VLMs."""
        self.selection.save(path, extra={"format": VLM_CHCO_FORMAT, "models": "vlms", "method": "chco",
                                         "scale": self.scale,
                                         "vlm_state": _vlm_state(mll or self._mll, self.selection.model_ids)})
        return Path(path)

    @classmethod
    def load(cls, path, mll, *, check: bool = True) -> "VLMExpertClassifier":
        from mll_jax.selection import Selection
        from mll_jax.system import MLLError

        extra = Selection.read_extra(path)
        if extra.get("format") != VLM_CHCO_FORMAT:
            raise MLLError(f"{path} is not a saved CHCO-style VLM classifier")
        if check:
            _check_vlm_state(mll, path, extra["vlm_state"])
        sel = Selection.load(path)
        used = list(sel.used_model_ids)
        return cls(sel, {m: load_vlm(mll, m) for m in used}, _node_text_embeddings(mll, used), extra["scale"], mll)

    def __repr__(self) -> str:
        return f"VLMExpertClassifier({len(self.class_names)} classes, VLMs {list(self.selection.used_model_ids)})"


def vlm_classifier(mll, class_names: Sequence[str], models: str, *, patch=None, scorer: str | None = None,
                   vlm_options: Mapping[str, Any] | None = None, **overrides):
    """The ``models="vlms"`` / ``"both"`` branch of :meth:`mll_jax.system.MLL.classifier`."""
    from mll_jax.system import MLLError, _model_fingerprint, label_fingerprint

    if models not in ("vlms", "both"):
        raise MLLError(f"models must be 'experts', 'vlms' or 'both', got {models!r}")
    if patch is not None:
        raise MLLError(f"models={models!r} serves uncovered classes with the hub's VLMs; patch= applies to "
                       "models='experts' only")
    sysm = mll if not overrides else mll.with_config(**overrides)
    if models == "both" and not sysm.labelled_models():
        raise MLLError("models='both' needs labelled experts in the hub (MLL.add_model, MLL.label); with VLMs only "
                       "use models='vlms'")
    if (vlm_options or {}).get("method", "mll") == "chco":
        if models != "vlms":
            raise MLLError("vlm_options method='chco' (the CHCO-style VLM baseline) serves models='vlms' only")
        from mll_jax.vlm.expert_style import DEFAULT_HEAD_SCALE

        csel = select_vlms_chco(sysm, class_names, vlm_options=vlm_options)
        scale = float(vlm_options.get("scale", DEFAULT_HEAD_SCALE))
        return VLMExpertClassifier(csel, {m: load_vlm(sysm, m) for m in csel.used_model_ids},
                                   _node_text_embeddings(sysm, csel.used_model_ids), scale, sysm)
    vsel = select_vlms(sysm, class_names, vlm_options=vlm_options)
    vlms = {m: load_vlm(sysm, m) for m in vsel.used_models}
    if models == "vlms":
        return VLMClassifier(vsel, vlms, sysm)
    sel = sysm.select(class_names, scorer=scorer)
    vpatch = VLMPatch(vsel, vlms)
    return BothClassifier(sel, sysm, vpatch, sysm.config,
                          label_fingerprint=label_fingerprint(sysm.labels, sel.model_ids, sel.wnids),
                          model_fingerprints={m: _model_fingerprint(sysm.hub, m) for m in sel.used_model_ids})


class BothClassifier(Classifier):
    """``models="both"``: the expert selection for the classes it covers, the VLM ensemble (a
    :class:`VLMPatch`) for the others (see the module docstring for the rule)."""

    models = "both"

    def __init__(self, selection, experts, patch, config=None, **kw):
        super().__init__(selection, experts, patch, config, **kw)
        self._mll = experts

    @property
    def vlm_selection(self):
        return self.patch.selection

    def explain(self) -> list[dict]:
        """Expert rows as :meth:`Classifier.explain` (``served_by="experts"``); uncovered classes say why
        and list the VLMs serving them (``served_by="vlms"``, ``vlms``: model, F1, score)."""
        rows = super().explain()
        ex = self.vlm_selection.explain()
        for r in rows:
            if r["uncovered"]:
                r["served_by"] = "vlms"
                r["vlms"] = [{"model": m, "f1": f, "score": s} for m, f, s in ex[r["class"]]["models"]]
            else:
                r["served_by"] = "experts"
        return rows

    _expert_prefix = "expert "

    def _uncovered_text(self, row: dict) -> str:
        return (f"    not covered by experts ({row['uncovered']}); served by VLMs: "
                + ", ".join(f"{v['model']} (F1 {v['f1']:.3f})" for v in row["vlms"]))

    def save(self, path) -> Path:
        """:meth:`Classifier.save` plus the VLM selection and its VLMs' fingerprints / label keys."""
        path = Path(path)
        self.selection.save(path, extra={
            "format": "mll_jax.classifier/1", "models": BOTH_MODELS,
            "config": self.config.to_dict(),
            "label_fingerprint": self.label_fingerprint,
            "model_fingerprints": self.model_fingerprints,
            "patch": "VLMPatch",
            "vlm_selection": _selection_to_json(self.vlm_selection),
            "vlm_state": _vlm_state(self._mll, self.vlm_selection.model_ids),
        })
        return path

    @classmethod
    def load(cls, path, experts, *, patch=None, labels=None, check: bool = True) -> "BothClassifier":
        """Load a saved ``models="both"`` classifier; ``experts`` must be the :class:`MLL` system (the VLM patch
        is rebuilt from the saved VLM selection; stale experts, labels or VLMs raise
        :class:`mll_jax.system.StaleClassifierError`)."""
        from mll_jax.selection import Selection
        from mll_jax.system import MLL, MLLError

        if not isinstance(experts, MLL):
            raise MLLError("a models='both' classifier loads from the MLL system (its hub holds the VLMs)")
        if patch is not None:
            raise MLLError("a models='both' classifier brings its own VLM patch; patch= does not apply")
        extra = Selection.read_extra(path)
        if extra.get("models") != BOTH_MODELS:
            raise MLLError(f"{path} is not a saved models='both' classifier")
        if check:
            _check_vlm_state(experts, path, extra["vlm_state"])
        vsel = _selection_from_json(extra["vlm_selection"])
        vpatch = VLMPatch(vsel, {m: load_vlm(experts, m) for m in vsel.used_models})
        plain = Classifier.load(path, experts, patch=vpatch, labels=labels, check=check, _models=BOTH_MODELS)
        return cls(plain.selection, experts, vpatch, plain.config, label_fingerprint=plain.label_fingerprint,
                   model_fingerprints=plain.model_fingerprints)
