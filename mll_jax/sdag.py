"""The Semantic DAG (SDAG): WordNet 3.0 noun synsets with representative images.

Nodes are identified by wnids (``"n%08d"`` noun offsets, equal to ImageNet wnids) or, for concepts that are not
in WordNet, by custom ids ``"custom-<slug>"``.  Edges go hypernym -> hyponym.  :attr:`SDAG.nodes` is kept in a
topological order (every hypernym before its hyponyms) at all times.

Node text (used to match class names to nodes): ``"Name: <name>\\nDescription: <definition>"`` where ``<name>``
is the synset's FIRST LEMMA NAME with underscores replaced by spaces (``"dog"``, ``"tench"``,
``"running shoe"``), not the synset id (``dog.n.01``): lemma names are what class names look like, and the
description disambiguates homonyms (``crane`` the bird vs the machine).

Edge rule (one rule for every way of building the graph): the parents of a WordNet node are, along every
hypernym path upwards (hypernyms and instance hypernyms), the FIRST synset present in the graph.  In a graph
closed under hypernyms these are just the direct hypernyms; when intermediate synsets are missing, the node
hangs under its closest WordNet ancestors present; with none present it is a root.

Representative data D_c: up to ``n_per_node`` uint8 images per node, an image batch of the package's contract
(:func:`mll_jax.images.as_image_batch`: (N, h, w) grayscale or (N, h, w, 3) RGB; one image is ``image[None]``),
drawn deterministically (``numpy.random.default_rng([seed, crc32(node_id)])`` without replacement, so a node's
sample does not depend on which other nodes exist) from

* an ImageNet-style folder of ``nXXXXXXXX/`` directories of image files (ImageNet / ImageNet-21k layout),
  decoded by the package's one rule (:func:`mll_jax.images.load_image`: RGB, shorter side to ``image_size``
  with bicubic resampling, centre crop) -- :meth:`SDAG.add_images_from_folder`;
* a labelled array dataset plus a class-name -> wnid map -- :meth:`SDAG.add_images_from_arrays`.

On disk (:meth:`SDAG.save` / :meth:`SDAG.load`) an SDAG is a directory with ``sdag.json`` (nodes in topological
order with names, descriptions, parents and image-file references) and ``images/<node>-<hash>.npy``, one
uncompressed array per node.  Image files are content-addressed and written before the json, which is replaced
atomically, so a killed save leaves the previous state loadable; unreferenced files are removed afterwards.
Loaded images are read lazily, one node at a time.

Determinism: node order, edges and sampled images do not depend on ``PYTHONHASHSEED`` (WordNet relations are
walked in offset order, see :func:`mll_jax.wordnet.hypernyms`).
"""

from __future__ import annotations

import heapq
import json
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from mll_jax import wordnet as _wordnet
from mll_jax.images import IMAGE_EXTENSIONS, ImageDecodeError, as_image_batch
from mll_jax import sdag_sources
from mll_jax.utils import array_hash, atomic_write

__all__ = ["SDAG", "ImageDecodeError", "IMAGE_EXTENSIONS", "FORMAT"]

FORMAT = "mll_jax.sdag/1"
_CUSTOM_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _synset_name(s) -> str:
    return s.lemma_names()[0].replace("_", " ")


def _up(s):
    return _wordnet.hypernyms(s, instances=True)


def _down(s, include_instances: bool):
    return _wordnet.hyponyms(s, instances=include_instances)


def _check_images(images, what: str) -> np.ndarray:
    """The image-batch contract (:func:`mll_jax.images.as_image_batch`), as a read-only private copy."""
    arr = as_image_batch(images, what, copy=True)
    arr.setflags(write=False)
    return arr


class SDAG:
    """A Semantic DAG over WordNet 3.0 noun synsets (plus optional custom nodes), with per-node images.

    Build with :meth:`from_roots`, :meth:`from_wnids`, or an empty ``SDAG()`` and :meth:`add_node`.
    ``wn`` is an nltk WordNet reader (default :func:`mll_jax.wordnet.get_wordnet`, loaded lazily: a loaded SDAG
    needs WordNet only to add nodes).
    """

    def __init__(self, wn=None):
        self._wn = wn
        self._order: list[str] = []
        self._order_view: tuple[str, ...] | None = None  # cached tuple of _order
        self._pos: dict[str, int] = {}
        self._parents: dict[str, list[str]] = {}
        self._children: dict[str, list[str]] = {}
        self._name: dict[str, str] = {}
        self._desc: dict[str, str] = {}
        self._anchors: dict[str, list[str]] = {}  # custom node -> requested hypernyms
        self._images: dict[str, np.ndarray] = {}  # in-memory images
        self._image_files: dict[str, Path] = {}  # images on disk (absolute paths), read lazily
        self._data_key: dict[str, str] = {}
        self._num_images: dict[str, int] = {}
        self.meta: dict = {}

    # ------------------------------------------------------------------ basic accessors
    @property
    def wn(self):
        if self._wn is None:
            self._wn = _wordnet.get_wordnet()
        return self._wn

    @property
    def nodes(self) -> tuple[str, ...]:
        """Node ids in topological order (hypernym before hyponym)."""
        if self._order_view is None:
            self._order_view = tuple(self._order)
        return self._order_view

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, node) -> bool:
        return node in self._pos

    def __iter__(self):
        return iter(self.nodes)

    def __repr__(self) -> str:
        n_data = sum(1 for w in self._order if self._num_images.get(w, 0))
        return f"SDAG({len(self)} nodes, {self.num_edges()} edges, {n_data} with images)"

    def _check(self, node: str) -> None:
        if node not in self._pos:
            raise KeyError(f"node {node!r} is not in the SDAG ({len(self)} nodes)")

    def index(self, node: str) -> int:
        """Position of ``node`` in :attr:`nodes`."""
        self._check(node)
        return self._pos[node]

    def parents(self, node: str) -> list[str]:
        self._check(node)
        return list(self._parents[node])

    def children(self, node: str) -> list[str]:
        self._check(node)
        return list(self._children[node])

    def roots(self) -> list[str]:
        return [w for w in self._order if not self._parents[w]]

    def edges(self) -> list[tuple[str, str]]:
        """All (hypernym, hyponym) edges, ordered by the hyponym's position."""
        return [(p, c) for c in self._order for p in self._parents[c]]

    def num_edges(self) -> int:
        return sum(len(p) for p in self._parents.values())

    def is_custom(self, node: str) -> bool:
        self._check(node)
        return node in self._anchors

    def name(self, node: str) -> str:
        self._check(node)
        return self._name[node]

    def description(self, node: str) -> str:
        self._check(node)
        return self._desc[node]

    def text(self, node: str) -> str:
        """``"Name: <name>\\nDescription: <definition>"``."""
        self._check(node)
        return f"Name: {self._name[node]}\nDescription: {self._desc[node]}"

    def descendants(self, node: str) -> list[str]:
        """All nodes below ``node`` in the graph, in topological order."""
        self._check(node)
        seen, stack = set(), [node]
        while stack:
            for c in self._children[stack.pop()]:
                if c not in seen:
                    seen.add(c)
                    stack.append(c)
        return sorted(seen, key=self._pos.__getitem__)

    # ------------------------------------------------------------------ images
    def num_images(self, node: str) -> int:
        self._check(node)
        return self._num_images.get(node, 0)

    def data_key(self, node: str) -> str | None:
        """Content hash of the node's images (None without images); changes whenever the images change."""
        self._check(node)
        return self._data_key.get(node)

    def images(self, node: str) -> np.ndarray:
        """The node's images, uint8 (N, h, w) or (N, h, w, 3); an empty (0, 0, 0) array without data."""
        self._check(node)
        if node in self._images:
            return self._images[node]
        if node in self._image_files:
            arr = np.load(self._image_files[node], allow_pickle=False)
            arr.setflags(write=False)
            return arr
        return np.zeros((0, 0, 0), dtype=np.uint8)

    def set_images(self, node: str, images) -> None:
        """Replace the node's images: an image batch (:func:`mll_jax.images.as_image_batch`: uint8 (N, h, w) or
        (N, h, w, 3); one image is ``image[None]``); N=0 clears them."""
        self._check(node)
        arr = _check_images(images, f"node {node!r}")
        self._image_files.pop(node, None)
        self._images.pop(node, None)
        self._data_key.pop(node, None)
        self._num_images.pop(node, None)
        if arr.shape[0] == 0:
            return
        self._images[node] = arr
        self._data_key[node] = array_hash(arr)
        self._num_images[node] = int(arr.shape[0])

    def nodes_with_images(self) -> list[str]:
        return [w for w in self._order if self._num_images.get(w, 0) > 0]

    # ------------------------------------------------------------------ structure maintenance
    def _wordnet_parents(self, synset, present, memo: dict) -> list[str]:
        """First present synset along each hypernym path above ``synset`` (the edge rule of this module)."""
        out: list[str] = []
        for h in _up(synset):
            hw = _wordnet.wnid(h)
            found = [hw] if hw in present else self._closest_above(h, present, memo)
            for f in found:
                if f not in out:
                    out.append(f)
        return out

    def _closest_above(self, synset, present, memo: dict) -> list[str]:
        key = synset.offset()
        if key not in memo:
            memo[key] = self._wordnet_parents(synset, present, memo)
        return memo[key]

    def _set_parents(self, node: str, parents: Sequence[str]) -> None:
        for p in self._parents.get(node, []):
            self._children[p].remove(node)
        self._parents[node] = list(parents)
        for p in parents:
            self._children[p].append(node)

    def _resolve_anchors(self, anchors: Sequence[str], present, memo: dict) -> list[str]:
        out: list[str] = []
        for a in anchors:
            if a in present:
                found = [a]
            elif _wordnet.is_wnid(a):
                found = self._closest_above(_wordnet.synset_from_wnid(a, self.wn), present, memo)
            else:
                found = []
            for f in found:
                if f not in out:
                    out.append(f)
        return out

    def _reorder(self, priority: Iterable[str]) -> None:
        """Stable topological sort (Kahn) preferring the order of ``priority``."""
        prio = {w: i for i, w in enumerate(priority)}
        indeg = {w: len(self._parents[w]) for w in prio}
        heap = [(prio[w], w) for w, d in indeg.items() if d == 0]
        heapq.heapify(heap)
        order = []
        while heap:
            _, w = heapq.heappop(heap)
            order.append(w)
            for c in self._children[w]:
                indeg[c] -= 1
                if indeg[c] == 0:
                    heapq.heappush(heap, (prio[c], c))
        if len(order) != len(prio):
            stuck = [w for w, d in indeg.items() if d > 0][:10]
            raise ValueError(f"the SDAG has a cycle through {stuck}")
        self._order = order
        self._order_view = None
        self._pos = {w: i for i, w in enumerate(order)}
        for w in order:  # children listed in topological order too (deterministic)
            self._children[w].sort(key=self._pos.__getitem__)
            self._parents[w].sort(key=self._pos.__getitem__)

    def _insert_raw(self, node: str, name: str, desc: str) -> None:
        self._pos[node] = len(self._order)
        self._order.append(node)
        self._order_view = None
        self._parents[node] = []
        self._children[node] = []
        self._name[node] = name
        self._desc[node] = desc

    def _add_wordnet_nodes(self, wnids: Sequence[str]) -> list[str]:
        new = []
        synsets = {}
        for w in wnids:
            if w in self._pos or w in synsets:
                continue
            synsets[w] = _wordnet.synset_from_wnid(w, self.wn)
            new.append(w)
        if not new:
            return []
        for w in new:
            s = synsets[w]
            self._insert_raw(w, _synset_name(s), s.definition())
        present = self._pos  # dict: membership test
        memo: dict = {}
        # Nodes whose closest present ancestors may have changed: existing WordNet descendants of new nodes.
        affected = set(new)
        seen = set()
        stack = [synsets[w] for w in new]
        while stack:
            s = stack.pop()
            for h in _down(s, True):
                if h.offset() in seen:
                    continue
                seen.add(h.offset())
                hw = _wordnet.wnid(h)
                if hw in present and hw not in self._anchors:
                    affected.add(hw)
                stack.append(h)
        for w in sorted(affected, key=self._pos.__getitem__):
            s = synsets.get(w) or _wordnet.synset_from_wnid(w, self.wn)
            self._set_parents(w, self._wordnet_parents(s, present, memo))
        for c, anchors in self._anchors.items():
            self._set_parents(c, self._resolve_anchors(anchors, present, memo))
        self._reorder(self._order)
        return new

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_roots(cls, roots: Iterable[str], *, max_depth: int | None = None, include_instances: bool = False,
                   wn=None) -> "SDAG":
        """The WordNet subtree(s) below ``roots`` (hyponym closure), optionally cut at ``max_depth``.

        Depth is the shortest hyponym distance from a root (roots have depth 0).  Instance hyponyms (named
        entities such as cities) are left out unless ``include_instances``.
        """
        g = cls(wn)
        roots = list(roots)
        if not roots:
            raise ValueError("from_roots needs at least one root wnid")
        if max_depth is not None and max_depth < 0:
            raise ValueError(f"max_depth must be >= 0, got {max_depth}")
        order: "OrderedDict[str, object]" = OrderedDict()
        frontier = []
        for r in roots:
            s = _wordnet.synset_from_wnid(r, g.wn)
            if r not in order:
                order[r] = s
                frontier.append(s)
        depth = 0
        while frontier and (max_depth is None or depth < max_depth):
            nxt = []
            for s in frontier:
                for h in _down(s, include_instances):
                    hw = _wordnet.wnid(h)
                    if hw not in order:
                        order[hw] = h
                        nxt.append(h)
            frontier = nxt
            depth += 1
        for w, s in order.items():
            g._insert_raw(w, _synset_name(s), s.definition())
        memo: dict = {}
        for w, s in order.items():
            g._set_parents(w, g._wordnet_parents(s, g._pos, memo))
        g._reorder(list(order))
        g.meta = {"built_from": {"roots": roots, "max_depth": max_depth, "include_instances": include_instances}}
        return g

    @classmethod
    def from_wnids(cls, wnids: Iterable[str], *, close_hypernyms: bool = False, wn=None) -> "SDAG":
        """An SDAG over exactly ``wnids`` (plus, if ``close_hypernyms``, every synset on their hypernym paths).

        Edges follow the module's closest-present-ancestor rule, so e.g. the 1000 ImageNet-1k classes without
        closure give mostly roots, and with closure the full WordNet hierarchy above them.
        """
        g = cls(wn)
        order: "OrderedDict[str, object]" = OrderedDict()
        for w in wnids:
            if w not in order:
                order[w] = _wordnet.synset_from_wnid(w, g.wn)
        if close_hypernyms:
            stack = list(order.values())
            while stack:
                s = stack.pop()
                for h in _up(s):
                    hw = _wordnet.wnid(h)
                    if hw not in order:
                        order[hw] = h
                        stack.append(h)
        for w, s in order.items():
            g._insert_raw(w, _synset_name(s), s.definition())
        memo: dict = {}
        for w, s in order.items():
            g._set_parents(w, g._wordnet_parents(s, g._pos, memo))
        g._reorder(list(order))
        g.meta = {"built_from": {"wnids": len(order), "close_hypernyms": close_hypernyms}}
        return g

    def add_node(self, node: str, *, description: str | None = None, hypernyms: Sequence[str] | None = None,
                 images=None, node_id: str | None = None) -> str:
        """Add a WordNet synset (``node`` is a wnid) or a custom concept (``node`` is its name); returns its id.

        WordNet node: it goes under its closest WordNet ancestors present in the graph (a root if none), and
        existing descendants in WordNet are re-hung under it where it is now their closest ancestor.  Adding a
        wnid already present only (re)sets ``images`` if given.

        Custom node (id ``node_id`` or ``"custom-<slug of name>"``; text from ``node`` and ``description``):
        it goes under ``hypernyms`` (wnids, present or not -- then their closest present ancestors are used --
        or ids of present custom nodes).  Without ``hypernyms``, if the name is the lemma of exactly one WordNet
        noun synset, that synset's hypernyms are used (a clear hypernym); otherwise the node is a new root.
        """
        if _wordnet.is_wnid(node):
            if description is not None or hypernyms is not None or node_id is not None:
                raise ValueError(f"{node} is a WordNet node: its name, description and hypernyms come from WordNet")
            self._add_wordnet_nodes([node])
            if images is not None:
                self.set_images(node, images)
            return node
        if not isinstance(node, str) or not node.strip():
            raise ValueError(f"a custom node needs a non-empty name, got {node!r}")
        name = " ".join(node.split())
        if node_id is None:
            slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
            if not slug:
                raise ValueError(f"cannot make an id from name {name!r}; pass node_id")
            node_id = f"custom-{slug}"
        if _wordnet.is_wnid(node_id) or not _CUSTOM_ID_RE.match(node_id):
            raise ValueError(f"invalid custom node id {node_id!r}: use letters, digits, '.', '_', '-' and not "
                             "the wnid form n########")
        if node_id in self._pos:
            raise ValueError(f"node id {node_id!r} already exists in the SDAG")
        if hypernyms is None:
            syns = self.wn.synsets(name.replace(" ", "_"), pos="n")
            anchors = [_wordnet.wnid(h) for h in _up(syns[0])] if len(syns) == 1 else []
        else:
            anchors = list(hypernyms)
            for a in anchors:
                if _wordnet.is_wnid(a):
                    _wordnet.synset_from_wnid(a, self.wn)  # KeyError if unknown
                elif a not in self._pos:
                    raise KeyError(f"hypernym {a!r} of custom node {node_id!r} is neither a wnid nor a node "
                                   "in the SDAG")
        self._insert_raw(node_id, name, description or "")
        self._anchors[node_id] = anchors
        self._set_parents(node_id, self._resolve_anchors(anchors, self._pos, {}))
        self._reorder(self._order)
        if images is not None:
            self.set_images(node_id, images)
        return node_id

    def add_nodes(self, wnids: Sequence[str]) -> list[str]:
        """Add many WordNet nodes at once (one re-sort); returns the ones that were new."""
        for w in wnids:
            if not _wordnet.is_wnid(w):
                raise KeyError(f"malformed wnid {w!r}")
        return self._add_wordnet_nodes(list(wnids))

    # ------------------------------------------------------------------ data sources (mll_jax.sdag_sources)
    def add_images_from_folder(self, root: str | os.PathLike, *, n_per_node: int = 50, seed: int = 0,
                               image_size: int | None = 224, add_missing: bool = False,
                               progress: bool = True) -> dict[str, int]:
        """Fill nodes from an ImageNet-style folder ``root/nXXXXXXXX/*.JPEG`` (replacing their images); see
        :func:`mll_jax.sdag_sources.add_images_from_folder`.  Returns {wnid: number of images stored}."""
        return sdag_sources.add_images_from_folder(self, root, n_per_node=n_per_node, seed=seed,
                                                   image_size=image_size, add_missing=add_missing,
                                                   progress=progress)

    def add_images_from_arrays(self, images, labels, class_names: Sequence[str],
                               name_to_wnid: Mapping[str, str], *, n_per_node: int = 50, seed: int = 0,
                               add_missing: bool = False) -> dict[str, int]:
        """Fill nodes from a labelled array dataset (replacing their images); see
        :func:`mll_jax.sdag_sources.add_images_from_arrays`.  Returns {node: number of images stored}."""
        return sdag_sources.add_images_from_arrays(self, images, labels, class_names, name_to_wnid,
                                                   n_per_node=n_per_node, seed=seed, add_missing=add_missing)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the SDAG to ``directory`` (created if needed; an existing SDAG there is replaced safely)."""
        d = Path(directory)
        img_dir = d / "images"
        img_dir.mkdir(parents=True, exist_ok=True)
        nodes_json = []
        new_files: dict[str, Path] = {}
        for w in self._order:
            entry = {"id": w, "name": self._name[w], "description": self._desc[w], "parents": self._parents[w]}
            if w in self._anchors:
                entry["custom"] = True
                entry["hypernyms"] = self._anchors[w]
            if self._num_images.get(w, 0) > 0:
                key = self._data_key[w]
                fname = f"{w}-{key[:20]}.npy"
                target = img_dir / fname
                if not target.exists():
                    arr = self.images(w)
                    atomic_write(target, lambda f, a=arr: np.save(f, a, allow_pickle=False))
                new_files[w] = target
                entry["images"] = f"images/{fname}"
                entry["data_key"] = key
                entry["num_images"] = self._num_images[w]
            nodes_json.append(entry)
        doc = {"format": FORMAT, "meta": self.meta, "nodes": nodes_json}
        payload = json.dumps(doc, indent=1, ensure_ascii=False).encode("utf-8")
        atomic_write(d / "sdag.json", lambda f: f.write(payload))
        keep = {p.name for p in new_files.values()}
        for p in img_dir.iterdir():
            if p.suffix == ".npy" and p.name not in keep:
                p.unlink(missing_ok=True)
        # images now live on disk: drop the in-memory copies
        self._images.clear()
        self._image_files = dict(new_files)
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike, wn=None) -> "SDAG":
        """Read an SDAG written by :meth:`save` (images are read lazily per node)."""
        d = Path(directory)
        f = d / "sdag.json"
        if not f.is_file():
            raise FileNotFoundError(f"{d} is not a saved SDAG (no sdag.json)")
        doc = json.loads(f.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT:
            raise ValueError(f"{f}: unsupported format {doc.get('format')!r} (expected {FORMAT!r})")
        g = cls(wn)
        g.meta = doc.get("meta", {})
        for e in doc["nodes"]:
            w = e["id"]
            if w in g._pos:
                raise ValueError(f"{f}: duplicate node {w!r}")
            g._insert_raw(w, e["name"], e["description"])
            if e.get("custom"):
                g._anchors[w] = list(e.get("hypernyms", []))
            for p in e["parents"]:
                if p not in g._pos:
                    raise ValueError(f"{f}: node {w!r} listed before its parent {p!r} (not topological)")
            g._set_parents(w, e["parents"])
            if e.get("images"):
                path = d / e["images"]
                if not path.is_file():
                    raise FileNotFoundError(f"{f}: image file {path} of node {w!r} is missing")
                g._image_files[w] = path
                g._data_key[w] = e["data_key"]
                g._num_images[w] = int(e["num_images"])
        return g
