"""Small helpers shared by the whole package; each exists here once.

* :func:`home` -- the run-time cache root (``$MLL_JAX_HOME`` or ``~/.cache/mll_jax``).
* :func:`atomic_write` (bytes through a callback), :func:`atomic_write_bytes`, :func:`atomic_write_text`,
  :func:`atomic_write_json`, :func:`atomic_save_npy` -- write a file completely or not at all (temp file in
  the same directory, flush + fsync, ``os.replace``); a crash leaves the old file or none, never half of one.
  A storage failure (disk full, read-only or unwritable directory, quota, I/O error) raises one
  :class:`mll_jax.errors.StorageError` naming the file and the cause; the temp file is removed and the previous
  file is intact.  :func:`storage_error` / :func:`storage_errors` give other writers (orbax checkpoints, ...) the
  same error.
* :func:`array_hash`, :func:`texts_hash`, :func:`file_hash` -- content hashes (hex digests).
* :func:`next_pow2` -- padding sizes.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from mll_jax.errors import StorageError

__all__ = [
    "orbax_checkpointer",
    "home",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_npy",
    "STORAGE_ERRNOS",
    "storage_error",
    "storage_errors",
    "array_hash",
    "texts_hash",
    "file_hash",
    "next_pow2",
    "compile_cache",
]


def home(path: str | os.PathLike | None = None) -> Path:
    """The cache root: ``path`` if given, else ``$MLL_JAX_HOME``, else ``~/.cache/mll_jax``."""
    if path is None:
        path = os.environ.get("MLL_JAX_HOME") or Path.home() / ".cache" / "mll_jax"
    return Path(path).expanduser()


#: errno values that :func:`atomic_write` reports as a :class:`StorageError` (other ``OSError`` s pass unchanged).
STORAGE_ERRNOS = frozenset(getattr(errno_codes, n) for n in (
    "ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EIO", "EFBIG") if hasattr(errno_codes, n))

_STORAGE_HINTS = {
    errno_codes.ENOSPC: "the disk is full: free space and run the command again",
    getattr(errno_codes, "EDQUOT", -1): "the disk quota is exhausted: free space and run the command again",
    errno_codes.EROFS: "the file system is mounted read-only",
    errno_codes.EACCES: "no permission to write there",
    errno_codes.EPERM: "the operation is not permitted there",
    errno_codes.EIO: "the storage reported an I/O error",
    errno_codes.EFBIG: "the file is larger than the file system allows",
}


def storage_error(error: OSError, path: str | os.PathLike) -> StorageError | OSError:
    """The :class:`StorageError` for ``error`` (an ``OSError`` raised while writing ``path``), or ``error``
    itself when its errno is not a storage failure (:data:`STORAGE_ERRNOS`) or it already is one.

    Use as ``except OSError as e: raise storage_error(e, path) from e``."""
    if isinstance(error, StorageError) or error.errno not in STORAGE_ERRNOS:
        return error
    path = Path(path)
    code = errno_codes.errorcode.get(error.errno, str(error.errno))
    state = ("its previous content is unchanged" if path.exists() else "no file was created")
    return StorageError(
        f"cannot write {path}: {error.strerror or os.strerror(error.errno)} ({code}); "
        f"{_STORAGE_HINTS.get(error.errno, 'check the storage')}; {state}", path=path, errno=error.errno)


@contextlib.contextmanager
def storage_errors(path: str | os.PathLike):
    """Context manager: an ``OSError`` of :data:`STORAGE_ERRNOS` raised inside becomes :func:`storage_error`."""
    try:
        yield
    except StorageError:
        raise
    except OSError as e:
        err = storage_error(e, path)
        if err is e:
            raise
        raise err from e


def atomic_write(path: str | os.PathLike, write_fn: Callable[[Any], None], *, mode: int = 0o644) -> Path:
    """Write ``path`` atomically: ``write_fn(binary_file)`` fills a temp file that then replaces ``path``.

    The parent directory is created.  On any exception the temp file is removed and ``path`` is untouched; a
    storage failure (disk full, read-only directory, ...: :data:`STORAGE_ERRNOS`) raises :class:`StorageError`
    naming ``path``.
    """
    path = Path(path)
    with storage_errors(path):
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
            try:
                os.unlink(tmp)
            except OSError:
                pass
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


def compile_cache(directory: str | os.PathLike | None = None, *, min_compile_secs: float = 0.5) -> Path:
    """Turn on JAX's persistent compilation cache for this process and return its directory.

    Compiled XLA programs are kept in ``directory`` (default ``<home()>/jax_cache``); a later process that
    compiles the same program (same shapes: e.g. CHCO for a task of the same size over the same head counts)
    loads it instead.  Programs compiled in less than ``min_compile_secs`` are not stored.  JAX reads a damaged
    or half-written entry as a miss and compiles again, so concurrent processes may share the directory, and
    deleting it any time only costs compile time.  The CLI turns it on (``--compile_cache``); library code never
    does on its own, since JAX's configuration is process-wide: call this once, before the first compile."""
    import jax

    path = home() / "jax_cache" if directory is None else Path(directory).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
    return path


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
