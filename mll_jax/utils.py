"""Small helpers shared by the whole package; each exists here once.

* :func:`home` -- the run-time cache root (``$MLL_JAX_HOME`` or ``~/.cache/mll_jax``).
* :func:`atomic_write` (bytes through a callback), :func:`atomic_write_bytes`, :func:`atomic_write_text`,
  :func:`atomic_write_json`, :func:`atomic_save_npy` -- write a file completely or not at all (temp file in
  the same directory, flush + fsync, ``os.replace``); a crash leaves the old file or none, never half of one.
* :func:`array_hash`, :func:`texts_hash`, :func:`file_hash` -- content hashes (hex digests).
* :func:`next_pow2` -- padding sizes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

__all__ = [
    "orbax_checkpointer",
    "home",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_npy",
    "array_hash",
    "texts_hash",
    "file_hash",
    "next_pow2",
]


def home(path: str | os.PathLike | None = None) -> Path:
    """The cache root: ``path`` if given, else ``$MLL_JAX_HOME``, else ``~/.cache/mll_jax``."""
    if path is None:
        path = os.environ.get("MLL_JAX_HOME") or Path.home() / ".cache" / "mll_jax"
    return Path(path).expanduser()


def atomic_write(path: str | os.PathLike, write_fn: Callable[[Any], None], *, mode: int = 0o644) -> Path:
    """Write ``path`` atomically: ``write_fn(binary_file)`` fills a temp file that then replaces ``path``.

    The parent directory is created.  On any exception the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1, sort_keys: bool = False,
                      default: Callable | None = None) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default))


def atomic_save_npy(path: str | os.PathLike, arr: np.ndarray) -> Path:
    return atomic_write(path, lambda f: np.save(f, np.asarray(arr), allow_pickle=False))


def array_hash(arr: np.ndarray, *, length: int | None = None) -> str:
    """SHA-1 of an array's shape, dtype and bytes (C order)."""
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha1()
    h.update(repr((arr.shape, arr.dtype.str)).encode())
    h.update(arr.data)
    d = h.hexdigest()
    return d if length is None else d[:length]


def texts_hash(texts: Iterable[str], *, length: int | None = None) -> str:
    """SHA-256 of a sequence of strings (length-prefixed, so ``["ab"]`` and ``["a", "b"]`` differ)."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little") + b)
    d = h.hexdigest()
    return d if length is None else d[:length]


def file_hash(paths: Sequence[str | os.PathLike] | str | os.PathLike, *, length: int | None = None,
              names: bool = True) -> str:
    """SHA-256 over files' bytes (and their base names, when ``names``), in the given order."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        if names:
            h.update(p.name.encode() + b"\0")
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    d = h.hexdigest()
    return d if length is None else d[:length]


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS reports one, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def next_pow2(n: int) -> int:
    """Smallest power of two >= ``n`` (1 for ``n <= 1``)."""
    return 1 << max(0, int(n - 1).bit_length())


def orbax_checkpointer(handler: Any = None):
    """An orbax checkpointer whose saves and restores involve only this process.

    orbax assumes every process of a ``jax.distributed`` run joins every checkpoint save/restore and syncs
    them with a device collective; mll-jax never does that (each process restores hub weights on its own;
    labels are committed by one process), so every call site takes its checkpointer from here:
    ``StandardCheckpointer`` (``handler=None``) or ``Checkpointer(handler)``, with
    ``MultiprocessingOptions(primary_host=<this process>, active_processes={<this process>})``. In a
    single-process run this is orbax's default behaviour.
    """
    import jax
    import orbax.checkpoint as ocp

    me = jax.process_index()
    mp = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    if handler is None:
        return ocp.StandardCheckpointer(multiprocessing_options=mp)
    return ocp.Checkpointer(handler, multiprocessing_options=mp)
