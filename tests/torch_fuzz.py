"""Fuzzer for mll_jax.models.torch_pickle, run by tests/test_torch_pickle_fuzz.py in a SUBPROCESS (an interpreter
crash -- SIGSEGV, SIGBUS, abort -- then fails the test instead of killing pytest).

    python tests/torch_fuzz.py OUT_DIR N_FLIPS N_VIEWS SEED

Families (all written without torch by the small torch.save-compatible writer below):

* byte flips / truncations of a real small zip and legacy checkpoint (1-8 random bytes changed, or the file cut);
* flips inside the zip's ``data.pkl`` re-zipped with valid CRCs (so the unpickler itself sees the damage);
* crafted tensor views (random offset, sizes, strides -- negative, zero, huge -- over random storages, zip and
  legacy, with random legacy storage views), checked against an independent numpy-indexing reference.

Every outcome must be a ``CheckpointError`` (a ``ValueError``) or the correct tensors.  Prints one JSON line of
counts; exits 1 on any wrong outcome.
"""

from __future__ import annotations

import collections
import io
import json
import pickle
import struct
import sys
import types
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from mll_jax.models import torch_pickle as tp

LEGACY_MAGIC, LEGACY_PROTOCOL = tp.LEGACY_MAGIC, tp.LEGACY_PROTOCOL
_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float16): "HalfStorage",
            np.dtype(np.int64): "LongStorage", np.dtype(np.uint8): "ByteStorage", np.dtype(np.bool_): "BoolStorage",
            np.dtype(np.float64): "DoubleStorage"}


class Storage:
    def __init__(self, array, key):
        self.array, self.key = np.ascontiguousarray(array).reshape(-1), key


class Tensor:
    def __init__(self, storage, offset, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, tuple(shape), tuple(stride)

    def __reduce_ex__(self, proto):
        return (sys.modules["torch._utils"]._rebuild_tensor_v2,
                (self.storage, self.offset, self.shape, self.stride, False, collections.OrderedDict()))


@contextmanager
def fake_torch():
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*a):
        raise AssertionError

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in set(_STORAGE.values()):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    try:
        yield torch
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def write(path, obj, *, legacy=False, views=None) -> None:
    """``torch.save``-compatible file (legacy or zip layout) for an object whose tensors are :class:`Tensor`s
    (also the writer of tests/test_models.py)."""
    with fake_torch() as torch:
        storages = {}

        class P(pickle.Pickler):
            def persistent_id(self, o):
                if isinstance(o, Storage):
                    storages[o.key] = o
                    stype = getattr(torch, _STORAGE[o.array.dtype])
                    if legacy:
                        return ("storage", stype, o.key, "cpu", o.array.size, (views or {}).get(o.key))
                    return ("storage", stype, o.key, "cpu", o.array.size)
                return None

        if legacy:
            with open(path, "wb") as f:
                for o in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"protocol_version": 1001, "little_endian": True,
                                                          "type_sizes": {"short": 2, "int": 4, "long": 4}}):
                    pickle.dump(o, f, protocol=2)
                P(f, protocol=2).dump(obj)
                keys = sorted(storages)
                pickle.dump(keys, f, protocol=2)
                for k in keys:
                    a = storages[k].array.astype(storages[k].array.dtype.newbyteorder("<"))
                    f.write(struct.pack("<q", a.size) + a.tobytes())
        else:
            buf = io.BytesIO()
            P(buf, protocol=2).dump(obj)
            with zipfile.ZipFile(path, "w") as zf:
                zf.writestr("archive/data.pkl", buf.getvalue())
                zf.writestr("archive/byteorder", "little")
                zf.writestr("archive/version", "3\n")
                for k, st in storages.items():
                    zf.writestr(f"archive/data/{k}", st.array.astype(st.array.dtype.newbyteorder("<")).tobytes())


def base_state_dict(rng):
    """A small real state dict: conv weight, bias, half, int64 scalar, and a transposed view sharing a storage."""
    w = rng.normal(size=(4, 3, 2, 2)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    h = rng.normal(size=(3, 2)).astype(np.float16)
    shared = rng.normal(size=(5, 6)).astype(np.float32)
    st = Storage(shared, "4")
    obj = collections.OrderedDict([
        ("conv.weight", Tensor(Storage(w, "0"), 0, w.shape, (12, 4, 2, 1))),
        ("conv.bias", Tensor(Storage(b, "1"), 0, (4,), (1,))),
        ("half", Tensor(Storage(h, "2"), 0, (3, 2), (2, 1))),
        ("count", Tensor(Storage(np.array([7], np.int64), "3"), 0, (), ())),
        ("full", Tensor(st, 0, (5, 6), (6, 1))),
        ("view", Tensor(st, 2, (3, 4), (1, 6))),
    ])
    expect = {"conv.weight": w, "conv.bias": b, "half": h, "count": np.array(7, np.int64), "full": shared,
              "view": np.lib.stride_tricks.as_strided(shared.ravel()[2:], (3, 4), (4, 24))}
    return obj, expect


def reference_view(base, offset, shape, stride, view, budget):
    """Independent reference: the tensor by fancy indexing, or None when the view must be refused."""
    if view is not None:
        vo, vs = view
        if vo < 0 or vs < 0 or vo + vs > base.size:
            return None
        base = base[vo:vo + vs]
    if offset < 0 or any(n < 0 for n in shape) or any(s < 0 for s in stride) or len(shape) > tp.MAX_NDIM:
        return None
    numel = int(np.prod(shape, dtype=object)) if shape else 1
    if numel * base.itemsize > budget:
        return None
    if numel == 0:
        return np.zeros(shape, base.dtype) if offset <= base.size else None
    if offset + sum((n - 1) * s for n, s in zip(shape, stride)) >= base.size:
        return None
    idx = np.full(shape, offset, dtype=np.int64)
    for ax, (n, s) in enumerate(zip(shape, stride)):
        sh = [1] * len(shape)
        sh[ax] = n
        idx = idx + (np.arange(n, dtype=np.int64) * s).reshape(sh)
    return base[idx]


class Failure(Exception):
    pass


def check_outcome(path, expect=None, budget=None):
    """'error' for a clean CheckpointError, 'ok' for a result; raises Failure for anything else."""
    try:
        obj = tp.load_torch_checkpoint(path)
    except tp.CheckpointError:
        return "error", None
    except BaseException as e:  # noqa: BLE001 - the point of the fuzzer
        raise Failure(f"{path}: {type(e).__name__}: {e}") from e
    # no internal object may leak out, and the arrays stay within the memory budget
    seen, stack, total = set(), [obj], 0
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, np.ndarray):
            total += o.nbytes
        elif isinstance(o, dict):
            stack += list(o.keys()) + list(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack += list(o)
        elif type(o).__module__ == tp.__name__:
            raise Failure(f"{path}: internal object {type(o).__name__} leaked into the result")
    if budget is not None and total > budget:
        raise Failure(f"{path}: result takes {total} bytes, budget {budget}")
    if expect is not None:
        for k, v in expect.items():
            got = obj[k]
            if got.shape != v.shape or got.dtype != v.dtype or not np.array_equal(got, v, equal_nan=True):
                raise Failure(f"{path}: wrong tensor {k!r}")
    return "ok", obj


def main(out_dir, n_flips, n_views, seed):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    counts = collections.Counter()
    obj, expect = base_state_dict(rng)
    bases = {}
    for legacy in (False, True):
        p = out / f"base-{'legacy' if legacy else 'zip'}.pth"
        write(p, obj, legacy=legacy)
        assert check_outcome(p, expect)[0] == "ok"
        bases[legacy] = p.read_bytes()
    with zipfile.ZipFile(io.BytesIO(bases[False])) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    target = out / "m.pth"

    # 1. byte flips / truncations of whole files, and flips inside data.pkl re-zipped with valid CRCs
    for i in range(n_flips):
        family = i % 3
        if family == 2:
            pkl = bytearray(members["archive/data.pkl"])
            for _ in range(rng.integers(1, 4)):
                pkl[rng.integers(len(pkl))] = rng.integers(256)
            with zipfile.ZipFile(target, "w") as zf:
                for n, d in members.items():
                    zf.writestr(n, bytes(pkl) if n == "archive/data.pkl" else d)
        else:
            data = bytearray(bases[family == 1])
            if rng.random() < 0.1:
                data = data[:rng.integers(len(data))]
            else:
                for _ in range(rng.integers(1, 9)):
                    data[rng.integers(len(data))] = rng.integers(256)
            target.write_bytes(bytes(data))
        size = target.stat().st_size
        kind, _ = check_outcome(target, budget=tp.MAX_EXPANSION * size + tp.SLACK_BYTES)
        counts[f"flip_{kind}"] += 1

    # 2. crafted views: random offset / sizes / strides over random storages, zip and legacy
    dtypes = list(_STORAGE)
    for i in range(n_views):
        dt = dtypes[rng.integers(len(dtypes))]
        length = int(rng.integers(1, 40))
        base = (rng.normal(size=length) * 10).astype(dt)
        ndim = int(rng.choice([0, 1, 2, 3, 4, 70], p=[0.1, 0.3, 0.3, 0.15, 0.1, 0.05]))
        shape = [int(rng.choice([0, 1, 2, 3, 5, 7, 1000, 1 << 31], p=[.05, .2, .2, .2, .15, .1, .05, .05]))
                 for _ in range(ndim)]
        stride = [int(rng.choice([-3, -1, 0, 1, 2, 5, 1 << 62], p=[.05, .05, .15, .35, .2, .15, .05]))
                  for _ in range(ndim)]
        offset = int(rng.choice([-2, 0, 1, 3, 10, 39, 1 << 62], p=[.05, .4, .2, .1, .1, .1, .05]))
        legacy = bool(i % 2)
        view = None
        if legacy and rng.random() < 0.3:
            view = (int(rng.integers(-1, length)), int(rng.integers(-1, length + 2)))
        st = Storage(base, "0")
        write(target, {"t": Tensor(st, offset, shape, stride)}, legacy=legacy,
              views={"0": ("v", view[0], view[1])} if view else None)
        budget = tp.MAX_EXPANSION * base.nbytes + tp.SLACK_BYTES
        ref = reference_view(base, offset, shape, stride, view, budget)
        kind, got = check_outcome(target)
        if (ref is None) != (kind == "error"):
            raise Failure(f"view offset={offset} shape={shape} stride={stride} view={view} len={length}: "
                          f"reader gave {kind}, reference {'refuses' if ref is None else 'accepts'}")
        if ref is not None:
            t = got["t"]
            if t.shape != ref.shape or t.dtype != ref.dtype or not np.array_equal(t, ref, equal_nan=True):
                raise Failure(f"view offset={offset} shape={shape} stride={stride}: wrong values")
        counts[f"view_{kind}"] += 1
    print(json.dumps(dict(counts)))


if __name__ == "__main__":
    try:
        main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    except Failure as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)
