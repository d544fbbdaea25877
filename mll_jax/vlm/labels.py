"""VLM labels over an SDAG: per model and node the counts ``(tp, fn, fp)`` of zero-shot prediction among the
nodes (see :mod:`mll_jax.vlm.core`), stored resumably and incrementally.

Store layout (one directory per model; every file written atomically with :mod:`mll_jax.utils`)::

    <root>/<model_id>/meta.json                    # {"model_id", "fingerprint"}; another fingerprint wipes the dir
    <root>/<model_id>/img/<node>-<data_key>.npy    # (n_v, D) image embeddings of a node's images
    <root>/<model_id>/txt/<text hash>.npy          # (1, D) embedding of one node text
    <root>/<model_id>/labels.json                  # {"key", "nodes", "counts"} for the node set of the last run

What is expensive (image and text embeddings) is saved per node as it is computed, so a killed run resumes where
it stopped, and adding nodes, changing a node's images (new ``data_key``) or its text costs only what changed.
The counts depend on the whole node set (prediction is *among* the nodes), so they are recomputed from the
stored embeddings (a cheap matrix product) whenever the set changes; ``labels.json`` is keyed by the node ids,
data keys and texts.  Embedding files of nodes that left the SDAG are kept (another SDAG may share the store;
:meth:`VLMLabelStore.delete` removes a model).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from mll_jax.utils import atomic_save_npy, atomic_write_json, next_pow2, texts_hash
from mll_jax.vlm import core
from mll_jax.vlm.models import check_vlm, node_text
from mll_jax.errors import LabelsMissingError  # noqa: F401  (re-exported)

__all__ = ["VLMLabels", "VLMLabelStore", "LabelsMissingError", "sdag_node_texts", "label_vlm", "label_vlms",
           "node_logits", "node_text_embeddings"]


LABELS_FORMAT = "mll-jax-vlm-labels/2"


@dataclass(frozen=True)
class VLMLabels:
    """Labels of one VLM: node ids and ``(V, 3)`` counts ``(tp, fn, fp)`` (float, whole numbers)."""

    model_id: str
    nodes: tuple[str, ...]
    counts: np.ndarray
    key: str = ""

    def aligned(self, nodes: Sequence[str]) -> np.ndarray:
        """Counts in the order of ``nodes`` (all must be labelled, and the node sets must agree)."""
        pos = {n: i for i, n in enumerate(self.nodes)}
        missing = [n for n in nodes if n not in pos]
        if missing:
            raise LabelsMissingError(f"VLM {self.model_id!r} has no labels for nodes {missing[:5]}; relabel it "
                                     "after adding nodes (label_vlm)")
        if len(nodes) != len(self.nodes):
            raise ValueError(f"VLM {self.model_id!r} was labelled among {len(self.nodes)} nodes, asked for "
                             f"{len(nodes)}: labels of different node sets are not comparable; relabel")
        return self.counts[[pos[n] for n in nodes]]

    @property
    def sdag_accuracy(self) -> float:
        return float(core.sdag_accuracy(jnp.asarray(self.counts)))


def _safe(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    if s != name:
        s = f"{s}-{texts_hash([name], length=8)}"
    return s


def sdag_node_texts(sdag, nodes: Sequence[str] | None = None,
                    text_fn: Callable[[str, str], str] = node_text) -> tuple[list[str], list[str]]:
    """``(nodes, texts)``: the SDAG's nodes with images (default) and the VLM text of each (name + definition)."""
    nodes = list(sdag.nodes_with_images() if nodes is None else nodes)
    return nodes, [text_fn(sdag.name(v), sdag.description(v)) for v in nodes]


class VLMLabelStore:
    """Per-model VLM label files under ``root`` (see the module docstring)."""

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def model_dir(self, model_id: str) -> Path:
        return self.root / _safe(model_id)

    def models(self) -> list[str]:
        out = []
        for d in sorted(self.root.iterdir()):
            f = d / "meta.json"
            if f.is_file():
                out.append(json.loads(f.read_text())["model_id"])
        return out

    def delete(self, model_id: str) -> None:
        shutil.rmtree(self.model_dir(model_id), ignore_errors=True)

    def open_model(self, model_id: str, fingerprint: str) -> Path:
        """The model's directory, emptied first if it holds labels of another fingerprint."""
        d = self.model_dir(model_id)
        meta = d / "meta.json"
        if meta.is_file():
            m = json.loads(meta.read_text())
            if m.get("fingerprint") != fingerprint or m.get("model_id") != model_id:
                shutil.rmtree(d)
        if not meta.is_file():
            atomic_write_json(meta, {"model_id": model_id, "fingerprint": fingerprint})
        return d

    def labels(self, model_id: str, key: str | None = None) -> VLMLabels:
        """The stored labels of ``model_id`` (with ``key``: only if computed for that node set)."""
        f = self.model_dir(model_id) / "labels.json"
        if not f.is_file():
            raise LabelsMissingError(f"VLM {model_id!r} is not labelled in {self.root}")
        doc = json.loads(f.read_text())
        if doc.get("format") != LABELS_FORMAT:
            raise LabelsMissingError(f"VLM {model_id!r}: stored labels have format {doc.get('format')!r}, expected "
                                     f"{LABELS_FORMAT!r}; relabel it")
        if key is not None and doc["key"] != key:
            raise LabelsMissingError(f"VLM {model_id!r}: stored labels are for another node set; relabel it")
        return VLMLabels(model_id, tuple(doc["nodes"]), np.asarray(doc["counts"], np.float32), doc["key"])


def _labels_key(nodes, data_keys, texts) -> str:
    return texts_hash([f"{n}\0{k}\0{t}" for n, k, t in zip(nodes, data_keys, texts)], length=24)


def label_vlm(store: VLMLabelStore, sdag, vlm, *, nodes: Sequence[str] | None = None,
              text_fn: Callable[[str, str], str] = node_text, progress: bool = False,
              on_node: Callable[[str], None] | None = None) -> VLMLabels:
    """Label one VLM over the SDAG's nodes with images (or ``nodes``); only what is missing is computed.

    ``on_node(node)`` is called after a node's image embeddings are saved (progress hooks, tests).
    """
    check_vlm(vlm)
    nodes, texts = sdag_node_texts(sdag, nodes, text_fn)
    if len(nodes) < 2:
        raise ValueError(f"labelling needs at least 2 SDAG nodes with images, got {len(nodes)}")
    data_keys = [sdag.data_key(v) for v in nodes]
    if any(k is None for k in data_keys):
        raise ValueError(f"nodes without images: {[v for v, k in zip(nodes, data_keys) if k is None][:5]}")
    key = _labels_key(nodes, data_keys, texts)
    d = store.open_model(vlm.model_id, vlm.fingerprint)
    try:
        return store.labels(vlm.model_id, key)
    except LabelsMissingError:
        pass
    # text embeddings (one file per distinct text)
    tfiles = [d / "txt" / f"{texts_hash([t], length=24)}.npy" for t in texts]
    todo = [i for i, f in enumerate(tfiles) if not f.is_file()]
    if todo:
        emb = np.asarray(vlm.encode_text([texts[i] for i in todo]), np.float32)
        for i, e in zip(todo, emb):
            atomic_save_npy(tfiles[i], e[None])
    txt = np.concatenate([np.load(f) for f in tfiles])
    # image embeddings, node by node
    ifiles = [d / "img" / f"{_safe(v)}-{k[:24]}.npy" for v, k in zip(nodes, data_keys)]
    it = range(len(nodes))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"label {vlm.model_id}", unit="node")
    for i in it:
        if not ifiles[i].is_file():
            atomic_save_npy(ifiles[i], np.asarray(vlm.encode_images(sdag.images(nodes[i])), np.float32))
            if on_node is not None:
                on_node(nodes[i])
    counts = np.zeros((len(nodes), 3), np.float32)
    txt_j = jnp.asarray(txt)
    for i in range(len(nodes)):
        img = np.load(ifiles[i])
        n = len(img)
        rows = next_pow2(n)
        pad = np.zeros((rows, img.shape[1]), np.float32)
        pad[:n] = img
        lab = np.full(rows, -1, np.int32)
        lab[:n] = i
        counts += np.asarray(core.node_counts(jnp.asarray(pad) @ txt_j.T, jnp.asarray(lab)))
    atomic_write_json(d / "labels.json", {"format": LABELS_FORMAT, "key": key, "nodes": nodes,
                                          "counts": counts.tolist(), "img_files": [f.name for f in ifiles],
                                          "txt_files": [f.name for f in tfiles]})
    return VLMLabels(vlm.model_id, tuple(nodes), counts, key)


def _labels_doc(store: VLMLabelStore, labels: VLMLabels) -> tuple[Path, dict]:
    d = store.model_dir(labels.model_id)
    doc = json.loads((d / "labels.json").read_text())
    if doc["key"] != labels.key:
        raise LabelsMissingError(f"VLM {labels.model_id!r}: stored labels changed since these were read; reload them")
    return d, doc


def node_text_embeddings(store: VLMLabelStore, labels: VLMLabels) -> np.ndarray:
    """``(V, D)`` stored embeddings of the node texts of ``labels`` (rows in ``labels.nodes`` order)."""
    d, doc = _labels_doc(store, labels)
    return np.concatenate([np.load(d / "txt" / f) for f in doc["txt_files"]])


def node_logits(store: VLMLabelStore, labels: VLMLabels) -> tuple[np.ndarray, np.ndarray]:
    """``(logits (N, V), node index (N,))`` of every node image against every node text (cosine; the argmax is
    what labels count), read from the stored embeddings of ``labels`` (for task-scoped selection and the
    expert-style labels of :mod:`mll_jax.vlm.expert_style`)."""
    d, doc = _labels_doc(store, labels)
    txt = node_text_embeddings(store, labels)
    imgs = [np.load(d / "img" / f) for f in doc["img_files"]]
    lab = np.concatenate([np.full(len(x), i, np.int32) for i, x in enumerate(imgs)])
    return (np.concatenate(imgs) @ txt.T).astype(np.float32), lab


def label_vlms(store: VLMLabelStore, sdag, vlms: Iterable, **kw) -> dict[str, VLMLabels]:
    """:func:`label_vlm` for each VLM; returns ``{model_id: labels}``."""
    out: dict[str, VLMLabels] = {}
    for vlm in vlms:
        if vlm.model_id in out:
            raise ValueError(f"two VLMs share the model id {vlm.model_id!r}")
        out[vlm.model_id] = label_vlm(store, sdag, vlm, **kw)
    return out
