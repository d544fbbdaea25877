"""Read PyTorch checkpoints (``.pth`` / ``.pt``) into numpy arrays, without torch.

Both on-disk formats written by ``torch.save`` are supported:

* the *zip* format (torch >= 1.6): a zip archive with ``<root>/data.pkl`` (the pickled
  object, whose storages are persistent ids ``('storage', StorageType, key, location,
  numel)``) and the raw storages in ``<root>/data/<key>``;
* the *legacy* format: a plain sequence of pickles -- magic number, protocol version,
  system info, the object (same persistent ids, plus an optional view description),
  the list of storage keys -- followed by each storage's raw bytes, preceded by an
  int64 element count, in the order of that list.

Untrusted pickles can run arbitrary code, so everything goes through
:class:`RestrictedUnpickler`, which resolves only the handful of globals a tensor
checkpoint needs (tensor rebuild functions, storage-type markers, ``OrderedDict``)
and refuses everything else with an :class:`pickle.UnpicklingError` naming the
global. Rebuild functions are replaced by our own numpy implementations; nothing
from torch is ever imported.

Public API: :func:`load_torch_checkpoint` (the object, tensors as numpy arrays) and
:func:`load_state_dict` (a flat ``{name: np.ndarray}``).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO, Callable

import numpy as np

__all__ = [
    "RestrictedUnpickler",
    "load_torch_checkpoint",
    "load_state_dict",
    "flatten_state_dict",
]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch storage class name -> numpy dtype (little-endian unless the file says otherwise)
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "BFloat16Storage": "bfloat16",
    "ComplexDoubleStorage": np.complex128,
    "ComplexFloatStorage": np.complex64,
}


def _np_dtype(name: str) -> np.dtype:
    dt = _STORAGE_DTYPES[name]
    if dt == "bfloat16":
        import ml_dtypes  # shipped with jax

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dt)


class _StorageType:
    """Marker standing for a ``torch.<X>Storage`` class in a pickle."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str):
        self.name = name
        self.dtype = _np_dtype(name)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"_StorageType({self.name})"


class _Storage:
    """A (lazily filled) flat storage: numpy 1-D array of ``numel`` elements."""

    __slots__ = ("dtype", "numel", "array", "key")

    def __init__(self, dtype: np.dtype, numel: int | None, key: str):
        self.dtype = dtype
        self.numel = numel
        self.array: np.ndarray | None = None
        self.key = key


class _StorageView:
    """Legacy-format view into a root storage (``view_metadata``)."""

    __slots__ = ("root", "offset", "size")

    def __init__(self, root: _Storage, offset: int, size: int):
        self.root, self.offset, self.size = root, offset, size


class _LazyTensor:
    """A tensor whose storage bytes may not be read yet; materialised at the end."""

    __slots__ = ("storage", "offset", "shape", "stride")

    def __init__(self, storage, offset, shape, stride):
        self.storage, self.offset = storage, int(offset)
        self.shape = tuple(int(s) for s in shape)
        self.stride = tuple(int(s) for s in stride)

    def materialise(self) -> np.ndarray:
        st, base = self.storage, 0
        if isinstance(st, _StorageView):
            base = st.offset
            st = st.root
        if st.array is None:
            raise pickle.UnpicklingError(f"storage {st.key!r} was never read from the checkpoint")
        flat = st.array[base:]
        if len(self.shape) == 0:
            return np.array(flat[self.offset])
        needed = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride)) + 1
        if any(n == 0 for n in self.shape):
            return np.zeros(self.shape, dtype=st.dtype)
        if needed > flat.size:
            raise pickle.UnpicklingError(
                f"tensor of shape {self.shape} (offset {self.offset}, stride {self.stride}) "
                f"overruns its storage {st.key!r} of {flat.size} elements"
            )
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.shape, strides=tuple(s * item for s in self.stride)
        )
        return np.array(view, copy=True)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    # protocol-2 pickles of ``bytes`` use _codecs.encode(str, 'latin1'); only allow that.
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin1 byte strings")
    return obj.encode("latin1")


# (module, name) -> replacement; anything else is refused.
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("_codecs", "encode"): _codecs_encode,
}
for _name in _STORAGE_DTYPES:
    _SAFE_GLOBALS[("torch", _name)] = _StorageType(_name)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only tensor-checkpoint globals and torch storage ids.

    ``storage_loader(key, dtype, numel)`` returns the ``_Storage`` for a persistent id
    (the zip and legacy readers differ in where the bytes live).
    """

    def __init__(self, file: BinaryIO, storage_loader: Callable[[str, np.dtype, int | None], _Storage],
                 source: str = "<checkpoint>"):
        super().__init__(file)
        self._storage_loader = storage_loader
        self._source = source

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle API
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"{self._source}: refusing to load global '{module}.{name}' -- only tensor "
                "state dicts can be read without torch (allowed: "
                + ", ".join(sorted(f"{m}.{n}" for m, n in _SAFE_GLOBALS if not n.endswith("Storage")))
                + ", torch.*Storage)"
            ) from None

    def persistent_load(self, pid):  # noqa: D102 - pickle API
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"{self._source}: unsupported persistent id {pid!r}")
        kind = pid[0]
        if isinstance(kind, bytes):
            kind = kind.decode("ascii")
        if kind != "storage":
            raise pickle.UnpicklingError(
                f"{self._source}: unsupported persistent id type {kind!r} (only tensor storages)"
            )
        if len(pid) < 5:
            raise pickle.UnpicklingError(f"{self._source}: malformed storage id {pid!r}")
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], pid[4]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"{self._source}: unsupported storage type {storage_type!r}")
        storage = self._storage_loader(key, storage_type.dtype, None if numel is None else int(numel))
        view = pid[5] if len(pid) > 5 else None
        if view is not None:  # legacy: (view_key, offset, size) into the root storage
            _view_key, offset, size = view
            return _StorageView(storage, int(offset), int(size))
        return storage


def _materialise(obj):
    if isinstance(obj, _LazyTensor):
        return obj.materialise()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _materialise(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialise(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialise(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(v) for v in obj)
    return obj


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise pickle.UnpicklingError(f"{path}: zip checkpoint without a unique data.pkl ({names[:5]}...)")
        root = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if root + "byteorder" in names:
            byteorder = zf.read(root + "byteorder").decode("ascii").strip()
        storages: dict[str, _Storage] = {}

        def loader(key: str, dtype: np.dtype, numel: int | None) -> _Storage:
            if key not in storages:
                member = f"{root}data/{key}"
                try:
                    raw = zf.read(member)
                except KeyError:
                    raise pickle.UnpicklingError(f"{path}: storage {member!r} missing from archive") from None
                dt = dtype.newbyteorder("<" if byteorder == "little" else ">")
                st = _Storage(dtype, numel, key)
                if len(raw) % dt.itemsize:
                    raise pickle.UnpicklingError(f"{path}: storage {key!r} has a truncated size {len(raw)}")
                st.array = np.frombuffer(raw, dtype=dt).astype(dtype, copy=False)
                storages[key] = st
            return storages[key]

        obj = RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), loader, source=path).load()
        return _materialise(obj)


def _load_legacy(path: str) -> Any:
    with open(path, "rb") as f:
        storages: dict[str, _Storage] = {}

        def loader(key: str, dtype: np.dtype, numel: int | None) -> _Storage:
            if key not in storages:
                storages[key] = _Storage(dtype, numel, key)
            return storages[key]

        def header_load():
            return RestrictedUnpickler(f, loader, source=path).load()

        magic = header_load()
        if magic != LEGACY_MAGIC:
            raise pickle.UnpicklingError(f"{path}: not a PyTorch checkpoint (bad magic number)")
        protocol = header_load()
        if protocol != LEGACY_PROTOCOL:
            raise pickle.UnpicklingError(f"{path}: unsupported legacy protocol version {protocol!r}")
        sys_info = header_load()
        little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
        obj = header_load()
        keys = header_load()
        if not isinstance(keys, list):
            raise pickle.UnpicklingError(f"{path}: malformed storage key list")
        for key in keys:
            key = str(key)
            if key not in storages:
                raise pickle.UnpicklingError(f"{path}: storage {key!r} listed but never referenced")
            st = storages[key]
            head = f.read(8)
            if len(head) != 8:
                raise pickle.UnpicklingError(f"{path}: truncated before storage {key!r}")
            (numel,) = struct.unpack("<q" if little else ">q", head)
            dt = st.dtype.newbyteorder("<" if little else ">")
            raw = f.read(numel * dt.itemsize)
            if len(raw) != numel * dt.itemsize:
                raise pickle.UnpicklingError(f"{path}: truncated storage {key!r}")
            st.array = np.frombuffer(raw, dtype=dt).astype(st.dtype, copy=False)
        return _materialise(obj)


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
    """Load a ``torch.save`` file, returning the object with tensors as numpy arrays.

    Only containers (dict/OrderedDict/list/tuple), plain Python values and tensors are
    supported; pickles referencing any other global raise :class:`pickle.UnpicklingError`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"PyTorch checkpoint not found: {path}")
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    return _load_legacy(path)


def flatten_state_dict(obj: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Flatten nested dicts of arrays into ``{"a.b.c": array}`` (non-arrays are dropped)."""
    out: dict[str, np.ndarray] = {}
    if isinstance(obj, np.ndarray):
        out[prefix.rstrip(".")] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten_state_dict(v, f"{prefix}{k}."))
    return out


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a checkpoint's state dict as ``{name: np.ndarray}``.

    Checkpoints that wrap the weights (``{"state_dict": ...}`` or ``{"model": ...}``) are
    unwrapped; a ``module.`` prefix (DataParallel) is stripped.
    """
    obj = load_torch_checkpoint(path)
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model_state_dict", "model"):
            if wrapper in obj and isinstance(obj[wrapper], dict):
                obj = obj[wrapper]
                break
    flat = flatten_state_dict(obj)
    if not flat:
        raise ValueError(f"{os.fspath(path)}: no tensors found in checkpoint")
    if all(k.startswith("module.") for k in flat):
        flat = {k[len("module."):]: v for k, v in flat.items()}
    return flat
