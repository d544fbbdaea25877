"""The VLM family: CLIP-like dual encoders of the same hub, labelled by F1 counts over the SDAG (``root/vlm_labels``),
selected per class from their labels (the MLL-VLM selection, or the CHCO-style baseline ``method="chco"``) and
reused as the entropy-weighted VLM ensemble.

VLM labels live in a :class:`~mll_jax.vlm.labels.VLMLabelStore` under ``root/vlm_labels`` with a state file
``vlm_state.json`` (per VLM: the SDAG fingerprint, the model fingerprint and the labels' node-set key); a VLM is
*stale* when it has no labels or any of these changed, and only stale VLMs are relabelled (and then only the
node embeddings that are missing are computed, see :mod:`mll_jax.vlm.labels`).

Sources (:meth:`VLMFamily.add`): an HF CLIP checkpoint name or directory (``clip:`` prefix; ``hf:`` is accepted
too), kind ``clip_vlm``; ``"offline:<id>"`` with ``hub=`` a hub the lab trained dual encoders into (copied into
this hub; kind ``dual_encoder_vlm``).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mll_jax.classifier import Classifier
from mll_jax.config import VLM_METHODS
from mll_jax.errors import MissingLabelsError, MLLError, StaleClassifierError, LabelsMissingError
from mll_jax.families.base import label_fingerprint, model_fingerprint, sdag_fingerprint
from mll_jax.hub import ModelHub
from mll_jax.names import check_class_names
from mll_jax.selection import Selection
from mll_jax.utils import atomic_write_json, file_hash, texts_hash
from mll_jax.vlm import expert_style as es
from mll_jax.vlm import select as vsel_mod
from mll_jax.vlm.labels import VLMLabelStore, label_vlm, node_logits, node_text_embeddings
from mll_jax.vlm.select import VLMSelection

__all__ = ["VLM_SELECT_OPTIONS", "VLM_METHOD_OPTIONS", "clip_fingerprint", "check_options", "VLMFamily"]

#: Options of the VLM selection: the :class:`~mll_jax.config.MLLConfig` fields ``vlm_<option>``.
VLM_SELECT_OPTIONS = ("k", "alpha", "top", "scope", "descriptions", "method", "scale")
#: Options of each selection ``method`` (``"mll"``: the MLL-VLM selection; ``"chco"``: the CHCO-style baseline of
#: :mod:`mll_jax.vlm.expert_style`, VLMs as experts over their node-text heads).
VLM_METHOD_OPTIONS = {"mll": ("k", "alpha", "top", "scope", "descriptions", "method"),
                      "chco": ("k", "method", "scale")}


def clip_fingerprint(src: str, options: Mapping[str, Any]) -> str:
    p = Path(src).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in (".msgpack", ".safetensors", ".json",
                                                                              ".txt", ".bin"))
        base = file_hash(files, length=20)
    else:
        base = src
    return texts_hash(["clip_vlm", base, json.dumps(dict(options), sort_keys=True)], length=20)


def check_options(opts: Mapping[str, Any] | None, default_method: str = "mll") -> dict:
    """VLM options given explicitly (short names of the ``vlm_*`` config fields), checked: unknown names and
    options of the other method (``opts["method"]``, else ``default_method``) are refused."""
    opts = dict(opts or {})
    bad = sorted(set(opts) - set(VLM_SELECT_OPTIONS))
    if bad:
        raise MLLError(f"unknown VLM options {bad}; accepted: {list(VLM_SELECT_OPTIONS)}")
    method = opts.get("method", default_method)
    if method not in VLM_METHODS:
        raise MLLError(f"the VLM method must be one of {sorted(VLM_METHOD_OPTIONS)}, got {method!r}")
    bad = sorted(set(opts) - set(VLM_METHOD_OPTIONS[method]))
    if bad:
        raise MLLError(f"VLM options {bad} do not apply to method {method!r} (its options: "
                       f"{list(VLM_METHOD_OPTIONS[method])})")
    return opts


class VLMFamily:
    """The hub's VLMs in a system (``system``: an :class:`mll_jax.system.MLL`, used through its public API)."""

    name = "vlms"

    def __init__(self, system):
        self.system = system

    # ------------------------------------------------------------------ models
    def add(self, source, *, model_id: str | None = None, hub=None, overwrite: bool = False, **options) -> str:
        """Register a VLM in the system's hub and return its id (see :meth:`mll_jax.system.MLL.add_vlm`)."""
        target = self.system.hub
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
                            fingerprint=clip_fingerprint(src, options))
            return mid
        raise MLLError(f"cannot add a {type(source).__name__} as a VLM: give an HF CLIP checkpoint name or directory, "
                       "or 'offline:<model id>' with hub=")

    def ids(self) -> list[str]:
        """The hub's VLMs (sorted)."""
        hub = self.system.hub
        return [m for m in hub.ids() if hub.family(m) == self.name]

    def load(self, model_id: str):
        """The hub's VLM ``model_id`` (loaded once per hub object)."""
        self.system.check_model(model_id)
        if self.system.hub.family(model_id) != self.name:
            raise MLLError(f"model {model_id!r} is an expert, not a VLM (MLL.vlm_ids() lists the VLMs)")
        return self.system.hub.load_vlm(model_id)

    def check_ids(self, model_ids: Sequence[str] | None) -> list[str]:
        ids = self.ids() if model_ids is None else list(model_ids)
        for m in ids:
            self.system.check_model(m)
            if self.system.hub.family(m) != self.name:
                raise MLLError(f"model {m!r} is an expert, not a VLM")
        return ids

    # ------------------------------------------------------------------ labels
    def store(self) -> VLMLabelStore:
        sysm = self.system
        if sysm.root is not None:
            return VLMLabelStore(sysm.root / "vlm_labels")
        return VLMLabelStore(Path(sysm.labels.root).parent / "vlm_labels")

    def read_state(self, store: VLMLabelStore | None = None) -> dict:
        try:
            return json.loads((Path((store or self.store()).root) / "vlm_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def write_state(self, store: VLMLabelStore, state: dict) -> None:
        atomic_write_json(Path(store.root) / "vlm_state.json", state, sort_keys=True)

    def wanted(self, model_id: str) -> dict:
        sysm = self.system
        nodes = list(sysm.sdag.nodes_with_images())
        return {"sdag": sdag_fingerprint(sysm.sdag), "model": model_fingerprint(sysm.hub, model_id),
                "nodes": texts_hash(nodes, length=16)}

    def stale(self, model_ids: Sequence[str] | None = None) -> list[str]:
        """VLMs without labels, or labelled from other SDAG data or another model fingerprint."""
        ids = self.check_ids(model_ids)
        store = self.store()
        state = self.read_state(store)
        have = set(store.models())
        return [m for m in ids if m not in have or state.get(m, {}).get("wanted") != self.wanted(m)]

    def label(self, model_ids: Sequence[str] | None, *, recompute: bool = False, processes=None,
              unit_nodes: int = 64) -> dict[str, dict]:
        """Label the stale VLMs (all given ones with ``recompute``) on process 0; returns ``{id: {"vlm": True,
        "nodes", "embedded", "sdag_accuracy"}}`` for those labelled (``embedded``: nodes encoded now)."""
        if processes is not None and processes.process_id != 0:
            return {}
        ids = self.check_ids(model_ids)
        todo = ids if recompute else self.stale(ids)
        store = self.store()
        out = {}
        for m in todo:
            if recompute:
                store.delete(m)
            vlm = self.load(m)
            done: list[str] = []
            lab = label_vlm(store, self.system.sdag, vlm, progress=self.system.config.progress, on_node=done.append)
            state = self.read_state(store)
            state[m] = {"wanted": self.wanted(m), "key": lab.key, "fingerprint": vlm.fingerprint}
            self.write_state(store, state)
            out[m] = {"vlm": True, "nodes": len(lab.nodes), "embedded": len(done), "sdag_accuracy": lab.sdag_accuracy}
        return out

    def labels(self, model_ids: Sequence[str] | None = None) -> dict:
        """``{id: VLMLabels}`` of the (labelled) hub VLMs; a VLM without labels raises ``MissingLabelsError``."""
        ids = self.check_ids(model_ids)
        store = self.store()
        state = self.read_state(store)
        out = {}
        for m in ids:
            try:
                out[m] = store.labels(m, state.get(m, {}).get("key"))
            except LabelsMissingError as e:
                raise MissingLabelsError(f"VLM {m!r} has no current labels: run MLL.label() ({e})") from None
        return out

    def forget(self, model_id: str) -> None:
        """Delete the VLM's labels."""
        self.store().delete(model_id)

    def node_text_embeddings(self, model_ids: Sequence[str]) -> dict:
        """``{id: (V, D)}`` stored node-text embeddings of the VLMs' labellings."""
        labels = self.labels(list(model_ids)) if model_ids else {}
        store = self.store()
        return {m: node_text_embeddings(store, labels[m]) for m in model_ids}

    # ------------------------------------------------------------------ what a saved classifier was built from
    def saved_state(self, model_ids: Sequence[str]) -> dict:
        """Per candidate VLM its hub fingerprint and labels key (saved with a classifier)."""
        hub = self.system.hub
        state = self.read_state()
        return {m: {"model": model_fingerprint(hub, m) if m in hub else None,
                    "labels": state.get(m, {}).get("key")} for m in model_ids}

    def check_saved_state(self, path, saved: Mapping[str, Any]) -> None:
        """Raise :class:`StaleClassifierError` when a saved classifier's VLMs changed since it was saved."""
        missing = [m for m in saved if m not in self.system.hub]
        if missing:
            raise StaleClassifierError(f"{path}: VLMs {missing} are no longer in the hub")
        now = self.saved_state(list(saved))
        changed = [m for m in saved if now[m] != saved[m]]
        if changed:
            raise StaleClassifierError(f"{path}: the weights or labels of VLMs {changed} changed since it was "
                                       "saved; build a new classifier")

    # ------------------------------------------------------------------ selection
    def task(self, class_names, model_ids, stacklevel: int = 4):
        """The checked class names and VLM ids a selection starts from (refused when the hub has no VLM; a warning
        names stale ones)."""
        names = check_class_names(class_names)
        ids = self.check_ids(model_ids)
        if not ids:
            raise MLLError("the hub has no VLMs: add one with MLL.add_vlm()")
        stale = self.stale(ids)
        if stale:
            warnings.warn(f"VLM labels of {stale} are stale or missing: run MLL.label()", RuntimeWarning,
                          stacklevel=stacklevel)
        return names, ids

    def select(self, class_names: Sequence[str], *, model_ids: Sequence[str] | None = None,
               stacklevel: int = 4) -> Selection:
        """Select VLMs per class by ``config.vlm_method``: the MLL-VLM selection (:meth:`select_mll`) or the
        CHCO-style baseline (:meth:`select_chco`); a :class:`Selection` with ``family="vlms"``."""
        if self.system.config.vlm_method == "chco":
            return self.select_chco(class_names, model_ids=model_ids, stacklevel=stacklevel + 1)
        return Selection.from_vlm(self.select_mll(class_names, model_ids=model_ids, stacklevel=stacklevel + 1))

    def select_mll(self, class_names: Sequence[str], *, model_ids: Sequence[str] | None = None,
                   stacklevel: int = 4) -> VLMSelection:
        """:func:`mll_jax.vlm.select.select_vlms` over the hub's labelled VLMs (the numerics record); nodes matched
        by the system's ``node_text`` with its encoder; ``config.vlm_k``, ``vlm_alpha``, ``vlm_top``,
        ``vlm_scope`` (``"all"`` | ``"task"``), ``vlm_descriptions`` (class -> text)."""
        sysm = self.system
        cfg = sysm.config
        names, ids = self.task(class_names, model_ids, stacklevel + 1)
        labels = self.labels(ids)
        nodes = list(labels[ids[0]].nodes)
        nl = None
        if cfg.vlm_scope == "task":
            store = self.store()
            nl = {m: node_logits(store, labels[m]) for m in ids}
        return vsel_mod.select_vlms(names, labels, nodes, [sysm.node_text(v) for v in nodes], sysm.encoder,
                                    descriptions=cfg.vlm_descriptions, scope=cfg.vlm_scope, node_logits=nl,
                                    k=cfg.vlm_k, alpha=cfg.vlm_alpha, top=cfg.vlm_top)

    def expert_style(self, ids: Sequence[str], scale: float) -> dict:
        """``{id: ExpertStyleLabels}`` of the VLMs ``ids`` (from the stored labelling embeddings, smoothed over the
        system's SDAG with its ``delta``)."""
        labels = self.labels(ids)
        store = self.store()
        sysm = self.system
        return {m: es.expert_style_labels(labels[m], node_logits(store, labels[m]), sysm.sdag, scale=scale,
                                          delta=sysm.config.delta) for m in ids}

    def select_chco(self, class_names: Sequence[str], *, model_ids: Sequence[str] | None = None,
                    stacklevel: int = 4) -> Selection:
        """The CHCO-style baseline (:mod:`mll_jax.vlm.expert_style`) over the hub's labelled VLMs: expert-style
        labels (head scale ``config.vlm_scale``), each class matched to one node by the expert matching, CHCO with
        the system's solver settings, top ``config.vlm_k`` under ``config.beta``.  A :class:`Selection` with
        ``family="vlms"``, ``method="chco"``."""
        sysm = self.system
        cfg = sysm.config
        names, ids = self.task(class_names, model_ids, stacklevel + 1)
        if not 1 <= cfg.vlm_k <= len(ids):
            raise MLLError(f"vlm_k must be an int in [1, {len(ids)}] (the number of VLMs), got {cfg.vlm_k!r}")
        esl = self.expert_style(ids, float(cfg.vlm_scale))
        matches = es.match_nodes(names, esl, sysm.node_text, sysm.encoder, threshold=cfg.match_threshold,
                                 cache_dir=sysm.text_cache)
        chco_opts = dict(cfg.chco_options)
        if cfg.chco_method is not None:
            chco_opts["method"] = cfg.chco_method
        return es.select_vlms_chco(names, esl, [mt.wnid for mt in matches], k=int(cfg.vlm_k), beta=cfg.beta,
                                   similarities=[mt.similarity for mt in matches],
                                   match_threshold=cfg.match_threshold, tol=cfg.chco_tol, **chco_opts)

    def select_both(self, experts, class_names: Sequence[str], *, method: str | None = None,
                    matches=None, stacklevel: int = 4) -> Selection:
        """``models="both"``: the expert selection (``experts``: the expert family, scorer ``method``) with the
        MLL-VLM selection of every class serving the classes the experts do not cover."""
        if self.system.config.vlm_method == "chco":
            raise MLLError("vlm_method='chco' (the CHCO-style VLM baseline) serves models='vlms' only")
        if not experts.labelled():
            raise MLLError("models='both' needs labelled experts in the hub (MLL.add_model, MLL.label); with VLMs "
                           "only use models='vlms'")
        vsel = self.select_mll(class_names, stacklevel=stacklevel + 1)
        return experts.select(class_names, method=method, matches=matches,
                              stacklevel=stacklevel + 1).with_vlm(vsel)

    # ------------------------------------------------------------------ reuse
    def classifier(self, class_names: Sequence[str], *, method: str | None = None) -> Classifier:
        """``models="vlms"``: the VLMs selected by ``config.vlm_method`` (``method`` overrides it) reused by the
        one :class:`~mll_jax.classifier.Classifier`."""
        sysm = self.system if method is None else self.system.with_config(vlm_method=method)
        sel = sysm.family("vlms").select(class_names, stacklevel=5)
        return Classifier(sel, sysm, None, sysm.config)

    def both_classifier(self, experts, class_names: Sequence[str], *, method: str | None = None,
                        matches=None) -> Classifier:
        """``models="both"``: :meth:`select_both` reused by the one :class:`~mll_jax.classifier.Classifier` (the
        experts for the classes they cover, the VLM ensemble for the others)."""
        sysm = self.system
        sel = self.select_both(experts, class_names, method=method, matches=matches, stacklevel=5)
        return Classifier(sel, sysm, None, sysm.config,
                          label_fingerprint=label_fingerprint(sysm.labels, sel.model_ids, sel.wnids),
                          model_fingerprints={m: model_fingerprint(sysm.hub, m) for m in sel.used_model_ids})
