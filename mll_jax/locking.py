"""One writer per system directory: an advisory lock on ``<root>/.writer.lock``.

Every command and API call that changes a system directory (labelling, adding or removing hub models, building
the SDAG, adding images) runs inside ``with writer_lock(root, what="label"):``.  Readers never take it: every
write is an atomic rename (:func:`mll_jax.utils.atomic_write`), so a reader sees the old file or the new one.

* **Exclusive between processes**: ``fcntl.flock(LOCK_EX)`` on the lock file.  The holder writes its pid, host,
  command, what it does and its start time into the file, for the messages of the others.
* **A second writer** waits (``wait=True``, the default; one message on ``notify``, stderr by default, says whom
  it waits for), waits at most ``wait`` seconds (a number), or refuses at once (``wait=False``); a writer that
  does not get the lock raises :class:`LockedError` with one line naming the holder.
* **Re-entrant within a process**, threads included: the lock belongs to the process; nested ``writer_lock``
  calls of any of its threads join it (a count), and the file lock is released when the outermost one ends.
  Coordinating threads of one process is the caller's business (the writes themselves are atomic).
* **A dead holder**: the kernel releases ``flock`` locks when their process ends, so a killed writer's lock is
  taken over at once.  A lock file that names a process that is no longer running while the lock is still held
  (a child process inherited the open file) is reported as such.
* **A shared run** (one ``jax.distributed`` labelling run of several cooperating processes on one directory):
  pass ``processes`` (:class:`mll_jax.distributed.Processes`, or any object with ``multi``, ``process_id``,
  ``new_tag``, ``publish``, ``wait_for`` and ``barrier``).  Process 0 alone takes the file lock, on behalf of the
  run, and publishes the outcome; the others wait for it (and raise the same :class:`LockedError` when it was
  refused).  On leaving, the processes meet at a barrier before process 0 releases, so no process of the run is
  still writing when another writer may start.  Every process of the run must enter and leave the block together
  (as they call the labelling together).

The lock is advisory: it guards mll-jax writers against each other, not against other programs.  ``flock`` is
local to one machine on some network file systems; the recorded host makes a lock held elsewhere visible.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from mll_jax.errors import LockedError, MLLError

__all__ = ["LOCK_FILE", "LockedError", "writer_lock", "lock_holder", "holds_writer_lock"]

#: Name of the lock file inside a system directory.
LOCK_FILE = ".writer.lock"

_POLL_S = 0.05
_registry_guard = threading.Lock()


class _Held:
    """This process's state of one lock file: a mutex serialising acquisition, the open file and a depth."""

    def __init__(self):
        self.mutex = threading.Lock()
        self.fd: int | None = None
        self.depth = 0


_held: dict[str, _Held] = {}


def _entry(path: Path) -> _Held:
    key = os.path.realpath(path)
    with _registry_guard:
        return _held.setdefault(key, _Held())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_holder(root: str | os.PathLike) -> dict | None:
    """What the lock file of ``root`` says about its holder (pid, host, command, what, started), or ``None``
    when no writer holds it.  Meant for messages: it may lag the lock itself by a moment."""
    path = Path(root) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            held = True
        else:
            held = False
            fcntl.flock(fd, fcntl.LOCK_UN)
        if not held and not holds_writer_lock(root):
            return None
        return _read_info(fd)
    finally:
        os.close(fd)


def holds_writer_lock(root: str | os.PathLike) -> bool:
    """Whether this process holds the writer lock of ``root``."""
    e = _held.get(os.path.realpath(Path(root) / LOCK_FILE))
    return e is not None and e.depth > 0


def _read_info(fd: int) -> dict:
    try:
        data = os.pread(fd, 65536, 0)
        info = json.loads(data.decode("utf-8")) if data.strip() else {}
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(info: dict) -> str:
    if not info:
        return "another process (no details recorded)"
    pid, host = info.get("pid"), info.get("host")
    text = f"process {pid} on {host}"
    if info.get("what"):
        text += f" ({info['what']}"
        text += f": {info['command']})" if info.get("command") else ")"
    if info.get("started"):
        text += f", since {info['started']}"
    if isinstance(pid, int) and host == socket.gethostname() and not _pid_alive(pid):
        text += (f"; process {pid} is no longer running, yet the lock is still held: a process it started may "
                 "have inherited the lock file (end it, or wait for it)")
    return text


def _command() -> str:
    cmd = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv or ["python"]))
    return cmd if len(cmd) <= 300 else cmd[:297] + "..."


def _write_info(fd: int, what: str) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command(), "what": what,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    data = json.dumps(info).encode("utf-8")
    try:  # written in place (a rename would replace the locked file); readers tolerate a partial record
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError:
        pass  # a full disk must not stop a writer that holds the lock; messages lose their details


def _default_notify(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _deadline(wait) -> float | None:
    """Absolute monotonic deadline (None: forever)."""
    if wait is True:
        return None
    if wait is False or wait is None:
        return time.monotonic()
    if isinstance(wait, (int, float)) and wait >= 0:
        return time.monotonic() + float(wait)
    raise ValueError(f"wait must be True, False or a number of seconds >= 0, got {wait!r}")


def _refused(root: Path, what: str, waited: float) -> LockedError:
    try:
        fd = os.open(root / LOCK_FILE, os.O_RDONLY)
    except OSError:
        info = {}
    else:
        try:
            info = _read_info(fd)
        finally:
            os.close(fd)
    after = f" after waiting {waited:.0f} s" if waited >= 1 else ""
    return LockedError(f"cannot {what} in {root}{after}: {_describe(info)} is writing to it; wait for it to finish "
                       f"(or let it wait: wait=True)")


def _acquire(root: Path, what: str, deadline: float | None, notify: Callable[[str], None] | None) -> _Held:
    path = root / LOCK_FILE
    e = _entry(path)
    start = time.monotonic()
    timeout = -1 if deadline is None else max(0.0, deadline - start)
    if not e.mutex.acquire(timeout=timeout):  # another thread of this process is acquiring it from a holder
        raise _refused(root, what, time.monotonic() - start)
    try:
        if e.depth > 0:
            e.depth += 1
            return e
        if not root.is_dir():  # locking creates no directory: a failed command leaves nothing behind
            raise MLLError(f"cannot {what} in {root}: no such directory")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise LockedError(f"cannot {what} in {root}: the directory is not writable ({err.strerror})"
                                  ) from None
            raise
        told = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    pass
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise _refused(root, what, now - start)
                if not told and notify is not None:
                    notify(f"waiting for {_describe(_read_info(fd))} to finish writing to {root} before {what} "
                           "...")
                    told = True
                time.sleep(_POLL_S if deadline is None else min(_POLL_S, max(0.0, deadline - now)))
        except BaseException:
            os.close(fd)
            raise
        _write_info(fd, what)
        e.fd, e.depth = fd, 1
        return e
    finally:
        e.mutex.release()


def _release(e: _Held) -> None:
    with e.mutex:
        e.depth -= 1
        if e.depth == 0 and e.fd is not None:
            fd, e.fd = e.fd, None
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


@contextlib.contextmanager
def writer_lock(root: str | os.PathLike, *, wait: bool | float = True, what: str = "write",
                notify: Callable[[str], None] | None = _default_notify, processes=None) -> Iterator[None]:
    """Hold the writer lock of the system directory ``root`` (which must exist) for the ``with`` block (see the
    module doc).

    ``wait``: ``True`` (wait as long as it takes), ``False`` (refuse at once) or seconds; a writer that does not
    get the lock raises :class:`LockedError` naming the holder.  ``what`` names the operation in messages and in
    the lock file (``"label"``, ``"hub add"``, ...).  ``notify(message)`` is called once when the call has to
    wait (default: print to stderr; ``None``: silent).  ``processes``: the cooperating processes of a shared
    run (process 0 locks for all of them).
    """
    root = Path(root)
    deadline = _deadline(wait)
    shared = processes is not None and getattr(processes, "multi", False)
    if not shared:
        held = _acquire(root, what, deadline, notify)
        try:
            yield
        finally:
            _release(held)
        return
    tag = processes.new_tag("writer_lock")
    held = None
    if processes.process_id == 0:
        try:
            held = _acquire(root, what, deadline, notify)
        except BaseException as err:
            processes.publish(f"{tag}/taken", err if isinstance(err, Exception) else LockedError(str(err)))
            raise
        processes.publish(f"{tag}/taken", "ok")
    else:
        try:
            processes.wait_for(f"{tag}/taken", f"waiting for process 0 to take the writer lock of {root}")
        except Exception as err:  # process 0 was refused (or died): one clear line
            raise LockedError(f"cannot {what} in {root}: {err}") from None
    try:
        yield
    except BaseException as err:
        if held is not None:
            _release(held)
            held = None
        if isinstance(err, Exception):
            with contextlib.suppress(Exception):  # tell the others; the original error propagates
                processes.barrier(f"{tag}/done", f"{what} in {root}", error=err)
        raise
    else:
        try:
            processes.barrier(f"{tag}/done", f"{what} in {root}")
        finally:
            if held is not None:
                _release(held)
