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

Memory safety (files from untrusted sources): every tensor view is validated before memory
is touched -- int sizes/strides/offset, no negative values, at most :data:`MAX_NDIM` dims, the
last element inside its storage (or legacy storage view), storage byte counts matching the
file; storages are never read past the end of the file; the arrays made from views may take at
most :data:`MAX_EXPANSION` times the storage bytes (zero strides cannot blow up a tiny file);
zip members must be stored or deflated (no bombs); nested/cyclic objects are bounded.  The
pickle gets a fresh object for every allowed global (sealed: no ``BUILD``), so it cannot change
what later loads see.  Every failure is a :class:`CheckpointError` naming the file.

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
from mll_jax.errors import CheckpointError  # noqa: F401  (re-exported)

__all__ = [
    "CheckpointError",
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


#: Most dimensions a tensor may have.
MAX_NDIM = 64
#: Materialised tensors may take at most this many times the bytes of the storages read from the file
#: (tied weights share a storage; views overlapping through zero strides are bounded by this), plus
#: :data:`SLACK_BYTES`.
MAX_EXPANSION = 4
SLACK_BYTES = 1 << 20
#: Deepest container nesting accepted in a checkpoint object.
MAX_DEPTH = 200


class _Sealed:
    """Objects a pickle can get hold of: no ``BUILD`` (``__setstate__``) and no attribute assignment from it."""

    __slots__ = ()

    def __setstate__(self, state):
        raise CheckpointError(f"refusing to set the state of {type(self).__name__} from a pickle")


class _StorageType(_Sealed):
    """Marker standing for a ``torch.<X>Storage`` class in a pickle (a fresh one per reference)."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str):
        self.name = name
        self.dtype = _np_dtype(name)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"_StorageType({self.name})"


class _SafeFunction(_Sealed):
    """A fresh callable wrapper per reference, so a pickle cannot alter the function later loads use."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable):
        self._fn = fn

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)


class _Storage(_Sealed):
    """A (lazily filled) flat storage: numpy 1-D array of ``numel`` elements."""

    __slots__ = ("dtype", "numel", "array", "key")

    def __init__(self, dtype: np.dtype, numel: int | None, key: str):
        self.dtype = dtype
        self.numel = numel
        self.array: np.ndarray | None = None
        self.key = key


class _StorageView(_Sealed):
    """Legacy-format view into a root storage (``view_metadata``)."""

    __slots__ = ("root", "offset", "size")

    def __init__(self, root: _Storage, offset: int, size: int):
        self.root, self.offset, self.size = root, offset, size


def _int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise CheckpointError(f"{what} must be an int, got {type(v).__name__}")
    return v


class _LazyTensor(_Sealed):
    """A tensor whose storage bytes may not be read yet; validated and materialised at the end."""

    __slots__ = ("storage", "offset", "shape", "stride")

    def __init__(self, storage, offset, shape, stride):
        if not isinstance(storage, (_Storage, _StorageView)):
            raise CheckpointError(f"tensor storage must be a storage reference, got {type(storage).__name__}")
        if not isinstance(shape, (tuple, list)) or not isinstance(stride, (tuple, list)):
            raise CheckpointError("tensor size and stride must be tuples")
        if len(shape) != len(stride):
            raise CheckpointError(f"tensor size {len(shape)}-d but stride {len(stride)}-d")
        if len(shape) > MAX_NDIM:
            raise CheckpointError(f"tensor with {len(shape)} dimensions (at most {MAX_NDIM})")
        self.storage = storage
        self.offset = _int(offset, "storage offset")
        self.shape = tuple(_int(s, "tensor size") for s in shape)
        self.stride = tuple(_int(s, "tensor stride") for s in stride)
        if self.offset < 0:
            raise CheckpointError(f"negative storage offset {self.offset}")
        if any(n < 0 for n in self.shape):
            raise CheckpointError(f"negative tensor size {self.shape}")
        if any(s < 0 for s in self.stride):
            raise CheckpointError(f"negative tensor stride {self.stride} (torch never writes these)")

    def nbytes(self) -> int:
        numel = 1
        for n in self.shape:
            numel *= n
        st = self.storage.root if isinstance(self.storage, _StorageView) else self.storage
        return numel * st.dtype.itemsize

    def materialise(self) -> np.ndarray:
        st, lo, hi = self.storage, 0, None
        if isinstance(st, _StorageView):
            lo, hi = st.offset, st.offset + st.size
            st = st.root
        if st.array is None:
            raise CheckpointError(f"storage {st.key!r} was never read from the checkpoint")
        size = st.array.size
        if hi is None:
            hi = size
        if lo < 0 or hi < lo or hi > size:
            raise CheckpointError(f"storage view [{lo}, {hi}) outside storage {st.key!r} of {size} elements")
        flat = st.array[lo:hi]
        if any(n == 0 for n in self.shape):
            if self.offset > flat.size:
                raise CheckpointError(f"storage offset {self.offset} past the end of storage {st.key!r}")
            return np.zeros(self.shape, dtype=st.dtype)
        # Python ints: no overflow.  Strides are >= 0, so the lowest element is at ``offset``.
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
        if last >= flat.size:
            raise CheckpointError(
                f"tensor of shape {self.shape} (offset {self.offset}, stride {self.stride}) "
                f"overruns its storage {st.key!r} of {flat.size} elements"
            )
        if len(self.shape) == 0:
            return np.array(flat[self.offset])
        item = flat.itemsize
        # a dimension of size 1 never steps: its stride (which may be any int) is irrelevant
        strides = tuple(0 if n == 1 else s * item for n, s in zip(self.shape, self.stride))
        view = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.shape, strides=strides,
                                               writeable=False)
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
        raise CheckpointError("_codecs.encode is only allowed for latin1 byte strings")
    return obj.encode("latin1")


# (module, name) -> factory of the object handed to the pickle (a FRESH object per reference: a pickle
# must not be able to change what later loads get); anything else is refused.
_SAFE_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,  # an immutable C type
    ("torch._utils", "_rebuild_tensor"): lambda: _SafeFunction(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): lambda: _SafeFunction(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): lambda: _SafeFunction(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): lambda: _SafeFunction(_rebuild_parameter_with_state),
    ("_codecs", "encode"): lambda: _SafeFunction(_codecs_encode),
}
for _name in _STORAGE_DTYPES:
    _SAFE_GLOBALS[("torch", _name)] = (lambda n: (lambda: _StorageType(n)))(_name)


# pickle opcodes a tensor checkpoint never needs and that make the C unpickler pre-allocate or expose buffers
_REFUSED_OPCODES = {"BYTEARRAY8", "NEXT_BUFFER", "READONLY_BUFFER"}
_MEMO_OPCODES = {"PUT", "BINPUT", "LONG_BINPUT"}


def _scan_pickle(f: BinaryIO, size: int, source: str) -> None:
    """Walk one pickle's opcodes (pure Python, reads are bounded by the data) before the C unpickler runs it.

    Refuses opcodes outside a tensor checkpoint's needs and memo indices beyond the pickle's length (the C
    unpickler sizes its memo table by the largest index: a 10-byte pickle could otherwise take gigabytes).
    Leaves ``f`` where it was.
    """
    import pickletools

    start = f.tell()
    try:
        for op, arg, _pos in pickletools.genops(f):
            if op.name in _REFUSED_OPCODES:
                raise CheckpointError(f"{source}: pickle opcode {op.name} is not allowed in a tensor checkpoint")
            if op.name in _MEMO_OPCODES and (not isinstance(arg, int) or arg < 0 or arg > size):
                raise CheckpointError(f"{source}: pickle memo index {arg} out of range")
            if op.name == "STOP":
                break
    except CheckpointError:
        raise
    except Exception as e:  # genops: ValueError for truncated / malformed opcodes and arguments
        raise CheckpointError(f"{source}: malformed pickle ({type(e).__name__}: {str(e)[:200]})") from None
    finally:
        f.seek(start)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only tensor-checkpoint globals and torch storage ids.

    ``storage_loader(key, dtype, numel)`` returns the ``_Storage`` for a persistent id
    (the zip and legacy readers differ in where the bytes live).
    """

    def __init__(self, file: BinaryIO, storage_loader: Callable[[str, np.dtype, int | None], _Storage],
                 source: str = "<checkpoint>"):
        super().__init__(file)
        self._file = file
        self._storage_loader = storage_loader
        self._source = source

    def load(self):
        """Validate the opcodes first (:func:`_scan_pickle`; seekable files only), then unpickle."""
        f = self._file
        if hasattr(f, "seek") and hasattr(f, "tell"):
            pos = f.tell()
            f.seek(0, os.SEEK_END)
            size = f.tell() - pos
            f.seek(pos)
            _scan_pickle(f, size, self._source)
        return super().load()

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle API
        try:
            factory = _SAFE_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise CheckpointError(
                f"{self._source}: refusing to load global '{module}.{name}' -- only tensor "
                "state dicts can be read without torch (allowed: "
                + ", ".join(sorted(f"{m}.{n}" for m, n in _SAFE_GLOBALS if not n.endswith("Storage")))
                + ", torch.*Storage)"
            ) from None
        return factory()

    def persistent_load(self, pid):  # noqa: D102 - pickle API
        if not isinstance(pid, tuple) or not pid:
            raise CheckpointError(f"{self._source}: unsupported persistent id of type {type(pid).__name__}")
        kind = pid[0]
        if isinstance(kind, bytes):
            kind = kind.decode("ascii")
        if kind != "storage":
            raise CheckpointError(
                f"{self._source}: unsupported persistent id type {str(kind)[:40]!r} (only tensor storages)"
            )
        if len(pid) < 5 or len(pid) > 6:
            raise CheckpointError(f"{self._source}: malformed storage id of length {len(pid)}")
        storage_type, key, _location, numel = pid[1], pid[2], pid[3], pid[4]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self._source}: unsupported storage type {type(storage_type).__name__}")
        if not isinstance(key, (str, int)) or isinstance(key, bool):
            raise CheckpointError(f"{self._source}: storage key must be a string, got {type(key).__name__}")
        if numel is not None and (_int(numel, "storage size") < 0):
            raise CheckpointError(f"{self._source}: negative storage size {numel}")
        storage = self._storage_loader(str(key), storage_type.dtype, numel)
        if storage.dtype != storage_type.dtype:
            raise CheckpointError(f"{self._source}: storage {str(key)!r} referenced with two dtypes "
                                  f"({storage.dtype} and {storage_type.dtype})")
        view = pid[5] if len(pid) > 5 else None
        if view is not None:  # legacy: (view_key, offset, size) into the root storage
            if not isinstance(view, tuple) or len(view) != 3:
                raise CheckpointError(f"{self._source}: malformed storage view")
            _view_key, offset, size = view
            offset, size = _int(offset, "storage view offset"), _int(size, "storage view size")
            if offset < 0 or size < 0:
                raise CheckpointError(f"{self._source}: negative storage view ({offset}, {size})")
            return _StorageView(storage, offset, size)
        return storage


class _Materialiser:
    """Replace lazy tensors by arrays in a (possibly shared / cyclic) object graph, within a memory budget."""

    def __init__(self, budget: int, source: str):
        self.budget, self.used, self.source = budget, 0, source
        self.memo: dict[int, Any] = {}

    def tensor(self, t: _LazyTensor) -> np.ndarray:
        n = t.nbytes()
        if self.used + n > self.budget:
            raise CheckpointError(
                f"{self.source}: tensors would need more than {self.budget} bytes, {MAX_EXPANSION}x the storage "
                f"bytes in the file (a view of shape {t.shape} with stride {t.stride}; zero-stride / expanded "
                "views are limited)")
        self.used += n
        return t.materialise()

    def __call__(self, obj, depth: int = 0):
        if depth > MAX_DEPTH:
            raise CheckpointError(f"{self.source}: objects nested deeper than {MAX_DEPTH} levels")
        if isinstance(obj, (_Storage, _StorageView, _StorageType, _SafeFunction)):
            raise CheckpointError(f"{self.source}: a bare {type(obj).__name__} outside a tensor")
        if not isinstance(obj, (_LazyTensor, dict, list, tuple)):
            return obj
        key = id(obj)
        if key in self.memo:
            return self.memo[key]
        if isinstance(obj, _LazyTensor):
            out = self.memo[key] = self.tensor(obj)
        elif isinstance(obj, dict):
            out = self.memo[key] = collections.OrderedDict() if isinstance(obj, collections.OrderedDict) else {}
            for k, v in list(obj.items()):
                out[k] = self(v, depth + 1)
        elif isinstance(obj, list):
            out = self.memo[key] = []
            out.extend(self(v, depth + 1) for v in list(obj))
        else:
            out = tuple(self(v, depth + 1) for v in obj)
            out = self.memo.setdefault(key, out)
        return out


def _storage_bytes(storages: dict) -> int:
    return sum(s.array.nbytes for s in storages.values() if s.array is not None)


def _materialise(obj, storages: dict, source: str):
    budget = MAX_EXPANSION * _storage_bytes(storages) + SLACK_BYTES
    return _Materialiser(budget, source)(obj)


_ALLOWED_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


def _zip_read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: str) -> bytes:
    if info.compress_type not in _ALLOWED_COMPRESSION:
        raise CheckpointError(f"{path}: member {info.filename!r} uses an unsupported compression "
                              f"({info.compress_type}); torch writes stored members")
    # deflate expands at most ~1032x: refuse members claiming more (zip bombs)
    if info.file_size > 1100 * info.compress_size + 4096:
        raise CheckpointError(f"{path}: member {info.filename!r} claims {info.file_size} bytes from "
                              f"{info.compress_size} compressed bytes")
    with zf.open(info) as f:
        data = f.read(info.file_size + 1)
    if len(data) != info.file_size:
        raise CheckpointError(f"{path}: member {info.filename!r} has {len(data)} bytes, header says "
                              f"{info.file_size}")
    return data


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        names = list(infos)
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise CheckpointError(f"{path}: zip checkpoint without a unique data.pkl ({names[:5]}...)")
        root = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if root + "byteorder" in infos:
            byteorder = _zip_read(zf, infos[root + "byteorder"], path).decode("ascii").strip()
            if byteorder not in ("little", "big"):
                raise CheckpointError(f"{path}: unknown byteorder {byteorder[:20]!r}")
        storages: dict[str, _Storage] = {}

        def loader(key: str, dtype: np.dtype, numel: int | None) -> _Storage:
            if key not in storages:
                member = f"{root}data/{key}"
                if member not in infos:
                    raise CheckpointError(f"{path}: storage {member!r} missing from archive")
                raw = _zip_read(zf, infos[member], path)
                dt = dtype.newbyteorder("<" if byteorder == "little" else ">")
                st = _Storage(dtype, numel, key)
                if len(raw) % dt.itemsize:
                    raise CheckpointError(f"{path}: storage {key!r} has a truncated size {len(raw)}")
                if numel is not None and numel * dt.itemsize > len(raw):
                    raise CheckpointError(f"{path}: storage {key!r} holds {len(raw) // dt.itemsize} elements, "
                                          f"the pickle says {numel}")
                st.array = np.frombuffer(raw, dtype=dt).astype(dtype, copy=False)
                storages[key] = st
            return storages[key]

        obj = RestrictedUnpickler(io.BytesIO(_zip_read(zf, infos[pkl[0]], path)), loader, source=path).load()
        return _materialise(obj, storages, path)


def _load_legacy(path: str) -> Any:
    with open(path, "rb") as fh:
        data = fh.read()
    f = io.BytesIO(data)  # reads past the end return short data: no allocation from a crafted length
    storages: dict[str, _Storage] = {}

    def loader(key: str, dtype: np.dtype, numel: int | None) -> _Storage:
        if key not in storages:
            storages[key] = _Storage(dtype, numel, key)
        return storages[key]

    def header_load():
        return RestrictedUnpickler(f, loader, source=path).load()

    magic = header_load()
    if type(magic) is not int or magic != LEGACY_MAGIC:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (bad magic number)")
    protocol = header_load()
    if type(protocol) is not int or protocol != LEGACY_PROTOCOL:
        raise CheckpointError(f"{path}: unsupported legacy protocol version")
    sys_info = header_load()
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    little = little if isinstance(little, bool) else True
    obj = header_load()
    keys = header_load()
    if not isinstance(keys, list):
        raise CheckpointError(f"{path}: malformed storage key list")
    for key in keys:
        if not isinstance(key, (str, int)) or isinstance(key, bool):
            raise CheckpointError(f"{path}: malformed storage key of type {type(key).__name__}")
        key = str(key)
        if key not in storages:
            raise CheckpointError(f"{path}: storage {key[:40]!r} listed but never referenced")
        st = storages[key]
        if st.array is not None:
            raise CheckpointError(f"{path}: storage {key[:40]!r} listed twice")
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{path}: truncated before storage {key!r}")
        (numel,) = struct.unpack("<q" if little else ">q", head)
        dt = st.dtype.newbyteorder("<" if little else ">")
        if numel < 0 or numel * dt.itemsize > len(data) - f.tell():
            raise CheckpointError(f"{path}: storage {key!r} claims {numel} elements, more than the file holds")
        raw = f.read(numel * dt.itemsize)
        st.array = np.frombuffer(raw, dtype=dt).astype(st.dtype, copy=False)
    return _materialise(obj, storages, path)


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
    """Load a ``torch.save`` file, returning the object with tensors as numpy arrays.

    Only containers (dict/OrderedDict/list/tuple), plain Python values and tensors are
    supported.  Every failure to read the file -- a refused global, a corrupt or truncated
    file, a tensor view outside its storage, a view needing far more memory than the file
    holds -- raises :class:`CheckpointError` (a ``ValueError`` and ``pickle.UnpicklingError``)
    naming the file; a missing file raises ``FileNotFoundError``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"PyTorch checkpoint not found: {path}")
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        return _load_legacy(path)
    except CheckpointError as e:
        msg = str(e)
        raise CheckpointError(msg if path in msg else f"{path}: {msg}") from None
    except (Exception, RecursionError) as e:  # anything a corrupt file makes pickle / zipfile / numpy raise
        raise CheckpointError(f"{path}: corrupt or unsupported checkpoint ({type(e).__name__}: "
                              f"{str(e)[:200]})") from e


def flatten_state_dict(obj: Any, prefix: str = "", *, _depth: int = 0) -> dict[str, np.ndarray]:
    """Flatten nested dicts of arrays into ``{"a.b.c": array}`` (non-arrays are dropped)."""
    if _depth > MAX_DEPTH:
        raise CheckpointError(f"state dict nested deeper than {MAX_DEPTH} levels (or cyclic) at {prefix[:80]!r}")
    out: dict[str, np.ndarray] = {}
    if isinstance(obj, np.ndarray):
        out[prefix.rstrip(".")] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten_state_dict(v, f"{prefix}{k}.", _depth=_depth + 1))
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
        raise CheckpointError(f"{os.fspath(path)}: no tensors found in checkpoint")
    if all(k.startswith("module.") for k in flat):
        flat = {k[len("module."):]: v for k, v in flat.items()}
    return flat
