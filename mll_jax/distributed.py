"""Many cooperating processes: labelling and CHCO scoring split over JAX's multi-process runtime.

N processes (one per host, or several on one host) run the same command; ``jax.distributed`` connects them
through a coordinator (process 0 hosts it) whose key-value store is all this module uses to coordinate: no
device collective runs between processes, so it works on CPU hosts without a collectives library.

* :func:`initialize` starts the runtime from explicit arguments (``coordinator_address``, ``num_processes``,
  ``process_id``) or, with ``cluster=True``, from the environment JAX detects (SLURM ``srun``, Open MPI
  ``mpirun``, Kubernetes JobSets and Cloud TPU VMs; ``cluster_detection_method="mpi4py"`` for any MPI launcher).
  It turns on ``jax_enable_recoverability`` first, so that a process that dies does not take the others down:
  the survivors notice it at the next wait and raise :class:`ProcessFailedError` naming it (without
  recoverability JAX's coordination service aborts every process once a peer stops sending heartbeats).
* :class:`Processes` (:func:`current`): ``process_id``, ``num_processes`` and the key-value primitives the
  callers use: :meth:`Processes.barrier` (every process reports done; a process that failed, died or made no
  progress for ``timeout`` seconds is named in the error), :meth:`Processes.publish` / :meth:`Processes.wait_for`
  (process 0's result to the others) and :meth:`Processes.allgather_bytes`.
* :func:`assign` is the deterministic unit assignment: round-robin over the sorted list of units that still have
  work, the same in every process.
* :func:`solve_batch`: ``mll_jax.chco.solve_batch`` split over the processes (each solves its share of the
  models, the results are gathered through the key-value store), a drop-in ``solver`` for
  :func:`mll_jax.selection.chco_scores` (the selection layer passes it; this module does not import selection).

Process identity comes from the public JAX API (``jax.distributed.is_initialized``, ``jax.process_index``,
``jax.process_count``).  The key-value store is the coordination service's client, which the installed JAX
exports no public accessor for (``jax.distributed`` has ``initialize``, ``is_initialized`` and ``shutdown`` only):
:func:`coordination_client` is the one function that reaches it.

Labelling over processes is :func:`mll_jax.labelling.label_models` (``processes=``): see docs/DISTRIBUTED.md for
the unit scheme and the failure semantics.
"""

from __future__ import annotations

import atexit
import io
import itertools
import threading
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from mll_jax import chco
from mll_jax.errors import DistributedError, ProcessFailedError  # noqa: F401  (re-exported)

__all__ = ["DistributedError", "ProcessFailedError", "Processes", "initialize", "current", "assign",
           "solve_batch", "coordination_client", "POLL_SECONDS"]

#: seconds a wait tolerates without any process making progress (a unit done, a key published)
DEFAULT_TIMEOUT = 1800.0
#: seconds between two polls of the key-value store while waiting
POLL_SECONDS = 0.05
_PIECE = 1 << 20  # key-value values are sent in pieces of at most 1 MiB
_wait_timeout: float | None = None  # set by initialize(wait_timeout=...)
_ALIVE = "mll_jax/alive"
#: seconds without a heartbeat after which a process counts as dead (``initialize(heartbeat_timeout_seconds=...)``)
dead_after_seconds = 100.0
#: process -> (last heartbeat value, when this process saw it change)
heartbeats_seen: dict[int, tuple] = {}
_beating = False
_stop = threading.Event()  # stops the heartbeat thread (at exit)
_known_dead: set[int] = set()


def _check_int(v, what: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{what} must be an int >= {lo}, got {v!r}")
    return int(v)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, cluster: bool = False, cluster_detection_method: str | None = None,
               local_device_ids: Sequence[int] | None = None, initialization_timeout: int = 300,
               heartbeat_timeout_seconds: int = 100, wait_timeout: float | None = None) -> "Processes":
    """Start ``jax.distributed`` (once per process, before any JAX computation) and return :func:`current`.

    Give all three of ``coordinator_address`` (``host:port`` of process 0), ``num_processes`` and ``process_id``,
    or ``cluster=True`` (and none of them) to let JAX read them from the cluster environment.  ``num_processes=1``
    without an address is a plain single process (nothing is started).  Bad arguments raise ``ValueError`` naming
    the argument.  Calling it again with the same settings returns the running runtime.  ``wait_timeout``: the
    default of every wait's ``timeout`` (seconds without progress; default ``DEFAULT_TIMEOUT``).
    """
    global _wait_timeout, dead_after_seconds
    dead_after_seconds = float(_check_int(heartbeat_timeout_seconds, "heartbeat_timeout_seconds", 1))
    if wait_timeout is not None:
        if not float(wait_timeout) > 0:
            raise ValueError(f"wait_timeout must be > 0 seconds, got {wait_timeout!r}")
        _wait_timeout = float(wait_timeout)

    given = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
    if cluster:
        extra = [k for k, v in given.items() if v is not None]
        if extra:
            raise ValueError(f"cluster=True reads {', '.join(extra)} from the cluster environment; do not pass them")
    else:
        if num_processes is not None:
            _check_int(num_processes, "num_processes", 1)
        if process_id is not None:
            _check_int(process_id, "process_id", 0)
        if num_processes == 1 and coordinator_address is None and process_id in (None, 0):
            return current()
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise ValueError(f"multi-process run: {', '.join(missing)} missing (give coordinator_address, "
                             "num_processes and process_id, or cluster=True)")
        if process_id >= num_processes:
            raise ValueError(f"process_id={process_id} must be < num_processes={num_processes}")
        host, sep, port = str(coordinator_address).rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"coordinator_address must be host:port (e.g. 127.0.0.1:12345), got "
                             f"{coordinator_address!r}")
    if cluster_detection_method is not None and not cluster:
        raise ValueError("cluster_detection_method needs cluster=True")
    if jax.distributed.is_initialized():
        p = current()
        if not cluster and (p.num_processes, p.process_id) != (num_processes, process_id):
            raise ValueError(f"jax.distributed already runs as process {p.process_id} of {p.num_processes}")
        return p
    jax.config.update("jax_enable_recoverability", True)
    kw: dict[str, Any] = dict(initialization_timeout=int(initialization_timeout),
                              heartbeat_timeout_seconds=int(heartbeat_timeout_seconds))
    if local_device_ids is not None:
        kw["local_device_ids"] = list(local_device_ids)
    if cluster:
        jax.distributed.initialize(cluster_detection_method=cluster_detection_method, **kw)
    else:
        jax.distributed.initialize(str(coordinator_address), int(num_processes), int(process_id), **kw)
    atexit.register(_goodbye)  # runs before jax's own shutdown handler (registered earlier)
    return current()


def _goodbye(timeout: float = 30.0) -> None:
    """Orderly exit: process 0 hosts the coordinator, so it leaves last.

    With recoverable tasks JAX's shutdown barrier does not hold process 0 back; if it exits while another process
    is still disconnecting, that process aborts.  So every other process says goodbye (a key) and disconnects, and
    process 0 waits (at most ``timeout`` s; processes known dead are not awaited) for every goodbye, plus a second
    for the disconnects to land, before it shuts the coordinator down."""
    procs = current()
    if not procs.multi:
        return
    _stop.set()
    try:
        if procs.process_id != 0:
            procs.client.key_value_set(f"mll_jax/goodbye/{procs.process_id}", "1", allow_overwrite=True)
            jax.distributed.shutdown()
            return
        others = [p for p in range(1, procs.num_processes) if p not in _known_dead]
        end = time.monotonic() + timeout
        while others and time.monotonic() < end:
            seen = {k for k, _ in procs.client.key_value_dir_get("mll_jax/goodbye/")}
            others = [p for p in others if f"mll_jax/goodbye/{p}" not in seen and p not in procs._dead([p])]
            time.sleep(POLL_SECONDS)
        time.sleep(1.0)
        jax.distributed.shutdown()
    except Exception:  # noqa: BLE001  (exit path: never raise)
        pass


def coordination_client():
    """The key-value client of the running ``jax.distributed`` runtime (None when it is not initialized).

    The installed JAX has no public accessor for it: ``jax.distributed`` exports ``initialize``,
    ``is_initialized`` and ``shutdown`` only, and JAX's own users of the client (``multihost_utils``, array
    serialization) as well as orbax read the runtime's global state.  This function is the one place mll_jax does
    so; everything else (process index and count) uses the public API.
    """
    if not jax.distributed.is_initialized():
        return None
    from jax._src import distributed as runtime  # no public accessor (see above)

    return runtime.global_state.client


def current() -> "Processes":
    """The processes of this run: ``Processes(0, 1)`` unless ``jax.distributed`` was initialized."""
    if not jax.distributed.is_initialized():
        return Processes(0, 1, None)
    procs = Processes(jax.process_index(), jax.process_count(), coordination_client())
    if procs.multi:
        _start_heartbeat(procs)
    return procs


def _start_heartbeat(procs: "Processes") -> None:
    """A daemon thread that bumps ``mll_jax/alive/<process>`` every second: the others take a process whose key
    stops changing for the heartbeat timeout as dead (JAX's own liveness query is a barrier, unusable here)."""
    global _beating
    if _beating:
        return
    _beating = True

    def beat():
        k = 0
        while not _stop.is_set():
            try:
                procs.client.key_value_set(f"{_ALIVE}/{procs.process_id}", str(k), allow_overwrite=True)
            except Exception:  # noqa: BLE001  (runtime shut down at exit)
                return
            k += 1
            _stop.wait(1.0)

    threading.Thread(target=beat, name="mll-heartbeat", daemon=True).start()


def assign(units: Sequence, num_processes: int, process_id: int) -> list:
    """The units process ``process_id`` computes: round-robin over ``units`` (already in a deterministic order)."""
    return [u for i, u in enumerate(units) if i % num_processes == process_id]


_CALLS = itertools.count()


class Processes:
    """``process_id`` of ``num_processes`` cooperating processes and the key-value waits between them."""

    def __init__(self, process_id: int, num_processes: int, client):
        self.process_id, self.num_processes, self.client = process_id, num_processes, client

    def __repr__(self) -> str:
        return f"Processes(process {self.process_id} of {self.num_processes})"

    @property
    def multi(self) -> bool:
        return self.num_processes > 1

    def new_tag(self, what: str) -> str:
        """A key prefix unique to this call; every process makes the same calls in the same order."""
        return f"mll_jax/{what}/{next(_CALLS)}"

    # ------------------------------------------------------------------ key-value primitives
    def _dir(self, prefix: str) -> dict[str, str]:
        return {k: v for k, v in self.client.key_value_dir_get(prefix)}

    def _dead(self, procs) -> list[int]:
        """The processes among ``procs`` whose heartbeat key (:func:`_start_heartbeat`) has not changed for the
        heartbeat timeout, as seen by this process's clock."""
        now = time.monotonic()
        beats = self._dir(_ALIVE + "/")
        dead = []
        for p in procs:
            v = beats.get(f"{_ALIVE}/{p}")
            last = heartbeats_seen.get(p)
            if last is None or last[0] != v:
                heartbeats_seen[p] = (v, now)
            elif now - last[1] > dead_after_seconds:
                dead.append(p)
        return dead

    def _wait(self, tag: str, need: Callable[[dict], list[int]], what: str, timeout: float | None,
              progress_prefix: str | None = None) -> dict[str, str]:
        """Poll ``tag/`` until ``need(entries)`` (the processes still awaited) is empty."""
        if timeout is None:
            timeout = DEFAULT_TIMEOUT if _wait_timeout is None else _wait_timeout
        timeout = float(timeout)
        last_change, last_seen = time.monotonic(), None
        while True:
            entries = self._dir(tag + "/")
            failed = {k.rsplit("/", 1)[1]: v[6:] for k, v in entries.items() if v.startswith("error:")}
            if failed:
                p, msg = sorted(failed.items())[0]
                raise ProcessFailedError(f"process {p} of {self.num_processes} failed while {what}: {msg}")
            awaited = need(entries)
            if not awaited:
                return entries
            seen = entries if progress_prefix is None else self._dir(progress_prefix + "/")
            seen = tuple(sorted(seen.items()))
            if seen != last_seen:
                last_seen, last_change = seen, time.monotonic()
            dead = self._dead(awaited)
            if dead:
                _known_dead.update(dead)
                raise ProcessFailedError(
                    f"process{'es' if len(dead) > 1 else ''} {', '.join(map(str, dead))} of {self.num_processes} "
                    f"died while {what} (process {self.process_id} waited); what they finished is kept: run the "
                    "same command again to complete the rest")
            if time.monotonic() - last_change > timeout:
                raise ProcessFailedError(
                    f"timed out after {timeout:g} s without progress while {what}: waiting for process"
                    f"{'es' if len(awaited) > 1 else ''} {', '.join(map(str, awaited))} of {self.num_processes}")
            time.sleep(POLL_SECONDS)

    def barrier(self, tag: str, what: str, *, error: BaseException | None = None, timeout: float | None = None,
                progress_prefix: str | None = None) -> None:
        """Report this process done (or failed with ``error``: the others then raise naming it) and wait for all.

        Raises :class:`ProcessFailedError` naming a process that failed, died or made no progress for ``timeout``
        seconds (progress: any change under ``progress_prefix``)."""
        if not self.multi:
            if error is not None:
                raise error
            return
        msg = "ok" if error is None else "error:" + " ".join(f"{type(error).__name__}: {error}".split())[:2000]
        self.client.key_value_set(f"{tag}/{self.process_id}", msg)
        if error is not None:
            raise error
        self._wait(tag, lambda e: [p for p in range(self.num_processes) if f"{tag}/{p}" not in e], what, timeout,
                   progress_prefix)

    def report_progress(self, prefix: str, count: int) -> None:
        if self.multi:
            self.client.key_value_set(f"{prefix}/{self.process_id}", str(int(count)), allow_overwrite=True)

    def publish(self, tag: str, value: str | BaseException) -> None:
        """Process 0's outcome of a step (a string, or an exception the others re-raise as their error)."""
        if self.multi:
            v = value if isinstance(value, str) else "error:" + " ".join(f"{type(value).__name__}: {value}".split())
            self.client.key_value_set(f"{tag}/0", v)

    def wait_for(self, tag: str, what: str, timeout: float | None = None) -> str:
        """The value process 0 published under ``tag`` (raises :class:`ProcessFailedError` for its error)."""
        if not self.multi:
            return ""
        e = self._wait(tag, lambda e: [] if f"{tag}/0" in e else [0], what, timeout)
        return e[f"{tag}/0"]

    def allgather_bytes(self, tag: str, data: bytes | None, what: str, timeout: float | None = None, *,
                        error: BaseException | None = None) -> list[bytes]:
        """Every process's ``data``, in process order (through the key-value store, in 1 MiB pieces).  A process
        that failed passes ``error`` instead: it is re-raised here and the others raise naming that process."""
        if error is not None:
            if self.multi:
                self.client.key_value_set(f"{tag}/n/{self.process_id}", "error:" + " ".join(
                    f"{type(error).__name__}: {error}".split())[:2000])
            raise error
        if not self.multi:
            return [bytes(data)]
        n = (len(data) + _PIECE - 1) // _PIECE
        for i in range(n):
            self.client.key_value_set_bytes(f"{tag}/data/{self.process_id}/{i}", data[i * _PIECE:(i + 1) * _PIECE])
        self.client.key_value_set(f"{tag}/n/{self.process_id}", str(n))
        ns = self._wait(f"{tag}/n", lambda e: [p for p in range(self.num_processes) if f"{tag}/n/{p}" not in e],
                        what, timeout)
        out = []
        for p in range(self.num_processes):
            k = int(ns[f"{tag}/n/{p}"])
            out.append(b"".join(self.client.blocking_key_value_get_bytes(f"{tag}/data/{p}/{i}", 60_000)
                                for i in range(k)))
        return out


# ---------------------------------------------------------------------------------------------------
# CHCO scoring over the processes
# ---------------------------------------------------------------------------------------------------

def _pack_result(ids: list[int], res) -> bytes:
    bio = io.BytesIO()
    arrays = {"ids": np.asarray(ids, np.int64), "loss": np.asarray(res.loss), "objective": np.asarray(res.objective),
              "iterations": np.asarray(res.iterations), "converged": np.asarray(res.converged)}
    for j, x in enumerate(res.X):
        arrays[f"X{j}"] = np.asarray(x)
    arrays["gap"] = np.asarray(res.gap)
    np.savez(bio, **arrays)
    return bio.getvalue()


def solve_batch(S_list: Sequence[np.ndarray], *, processes: "Processes | None" = None, timeout: float | None = None,
                model_ids: Sequence[str] | None = None, progress: bool = True, **kw):
    """:func:`mll_jax.chco.solve_batch` with the models split over the cooperating processes.

    Every process calls it with the same ``S_list``; process ``p`` solves the models ``i`` with
    ``i % num_processes == p`` (one ``chco.solve_batch`` call), the results are gathered through the runtime's
    key-value store, and every process returns the whole :class:`mll_jax.chco.BatchResult`, models in input order.
    Per model it is the result ``chco.solve_batch`` gives for that model (tests/test_distributed.py compares it
    with one process).  With one process it is ``chco.solve_batch``.
    """
    procs = current() if processes is None else processes
    S_list = list(S_list)
    ids = [f"model[{i}]" for i in range(len(S_list))] if model_ids is None else list(model_ids)
    if not procs.multi:
        return chco.solve_batch(S_list, model_ids=ids, progress=progress, **kw)
    tag = procs.new_tag("chco")
    mine = assign(list(range(len(S_list))), procs.num_processes, procs.process_id)
    payload = b""
    if mine:
        try:
            res = chco.solve_batch([S_list[i] for i in mine], model_ids=[ids[i] for i in mine], progress=progress, **kw)
        except Exception as e:
            procs.allgather_bytes(tag, None, "solving CHCO", error=e)
        payload = _pack_result(mine, res)
    parts = procs.allgather_bytes(tag, payload, "gathering CHCO results", timeout)
    m = len(S_list)
    X: list = [None] * m
    fields: dict[str, np.ndarray] = {}
    for part in parts:
        if not part:
            continue
        with np.load(io.BytesIO(part), allow_pickle=False) as z:
            got = z["ids"].tolist()
            for name in ("loss", "objective", "iterations", "converged", "gap"):
                if name in z.files:
                    a = z[name]
                    if name not in fields:
                        fields[name] = np.zeros((m,) + a.shape[1:], a.dtype)
                    fields[name][got] = a
            for j, i in enumerate(got):
                X[i] = z[f"X{j}"]
    return chco.BatchResult(X=X, loss=fields["loss"], objective=fields["objective"],
                            iterations=fields["iterations"], converged=fields["converged"], gap=fields["gap"],
                            model_ids=ids)
