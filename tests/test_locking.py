"""One writer per system directory (issue 23, item 2): a second process waits or refuses with one clear line, a
killed holder's lock is taken over, nested calls and threads of one process do not deadlock, and the processes of
one shared run lock once for all."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from mll_jax.errors import LockedError, MLLError
from mll_jax.locking import LOCK_FILE, holds_writer_lock, lock_holder, writer_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_HOLDER = textwrap.dedent("""
    import sys, time
    from mll_jax.locking import writer_lock
    with writer_lock(sys.argv[1], what="label", wait=False):
        print("HELD", flush=True)
        sys.stdin.readline()  # hold until the test says so (or kills us)
    print("RELEASED", flush=True)
""")


@pytest.fixture
def holder(tmp_path):
    """Start another process holding the writer lock of ``tmp_path / 'sys'``; yields the Popen."""
    procs = []

    def start(root):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
        root.mkdir(parents=True, exist_ok=True)
        p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(root)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
        procs.append(p)
        assert p.stdout.readline().strip() == "HELD"
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)


def test_a_second_writer_refuses_with_one_clear_line(tmp_path, holder):
    root = tmp_path / "sys"
    p = holder(root)
    t0 = time.monotonic()
    with pytest.raises(LockedError) as err:
        with writer_lock(root, wait=False, what="add a model"):
            pytest.fail("got the lock while another process holds it")
    assert time.monotonic() - t0 < 5
    msg = str(err.value)
    assert "\n" not in msg and f"cannot add a model in {root}" in msg
    assert f"process {p.pid} on " in msg and "(label: " in msg
    assert isinstance(err.value, MLLError)
    info = lock_holder(root)
    assert info["pid"] == p.pid and info["what"] == "label"
    with pytest.raises(LockedError, match="after waiting 1 s"):
        with writer_lock(root, wait=1.0):
            pass


def test_a_second_writer_waits_with_a_message_then_writes(tmp_path, holder):
    root = tmp_path / "sys"
    p = holder(root)
    said = []
    threading.Timer(0.8, lambda: (p.stdin.write("\n"), p.stdin.flush())).start()
    with writer_lock(root, what="label", notify=said.append):  # default: wait as long as it takes
        assert holds_writer_lock(root) and lock_holder(root)["pid"] == os.getpid()
        assert p.stdout.readline().strip() == "RELEASED"
    assert len(said) == 1 and f"waiting for process {p.pid}" in said[0] and "before label" in said[0]
    assert lock_holder(root) is None and not holds_writer_lock(root)


def test_a_killed_holders_lock_is_taken_over(tmp_path, holder):
    root = tmp_path / "sys"
    p = holder(root)
    p.kill()
    p.wait(timeout=30)
    with writer_lock(root, wait=False, what="label"):
        assert lock_holder(root)["pid"] == os.getpid()


def test_a_dead_pid_in_a_held_lock_is_named(tmp_path, holder):
    root = tmp_path / "sys"
    holder(root)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (root / LOCK_FILE).write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "what": "label"}))
    with pytest.raises(LockedError, match=f"process {gone.pid} is no longer running, yet the lock is still held"):
        with writer_lock(root, wait=False):
            pass


def test_reentrant_within_a_process_threads_included(tmp_path):
    root = tmp_path / "sys"
    with pytest.raises(MLLError, match="cannot label in .*sys: no such directory"):
        with writer_lock(root, what="label"):
            pass
    assert not root.exists()
    root.mkdir()
    seen = []
    with writer_lock(root, what="label"):
        with writer_lock(root, what="commit", wait=False):  # nested: no deadlock
            seen.append("nested")

        def worker():
            with writer_lock(root, wait=False):
                seen.append("thread")

        t = threading.Thread(target=worker)
        t.start()
        t.join(10)
        assert holds_writer_lock(root) and lock_holder(root)["what"] == "label"
    assert seen == ["nested", "thread"] and not holds_writer_lock(root)
    with pytest.raises(ValueError, match="wait must be"):
        with writer_lock(root, wait="soon"):
            pass


class _FakeProcs:
    """The key-value side of mll_jax.distributed.Processes for threads standing in for processes."""

    def __init__(self, kv, cond, pid, n=2):
        self.kv, self.cond, self.process_id, self.num_processes = kv, cond, pid, n
        self.calls = 0

    multi = property(lambda self: self.num_processes > 1)

    def new_tag(self, what):
        self.calls += 1
        return f"{what}/{self.calls}"

    def publish(self, tag, value):
        with self.cond:
            self.kv[f"{tag}/0"] = value if isinstance(value, str) else "error:" + f"{type(value).__name__}: {value}"
            self.cond.notify_all()

    def wait_for(self, tag, what, timeout=None):
        with self.cond:
            assert self.cond.wait_for(lambda: f"{tag}/0" in self.kv, 20)
            v = self.kv[f"{tag}/0"]
        if v.startswith("error:"):
            raise RuntimeError(f"process 0 of 2 failed while {what}: {v[6:]}")
        return v

    def barrier(self, tag, what, *, error=None, timeout=None, progress_prefix=None):
        with self.cond:
            self.kv[f"{tag}/{self.process_id}"] = "ok" if error is None else "error"
            self.cond.notify_all()
            assert self.cond.wait_for(lambda: all(f"{tag}/{p}" in self.kv for p in range(2)), 20)
        if error is not None:
            raise error


def _run_pair(root, wait, body):
    root.mkdir(exist_ok=True)
    kv, cond, out = {}, threading.Condition(), {}

    def run(pid):
        try:
            with writer_lock(root, wait=wait, what="label", processes=_FakeProcs(kv, cond, pid)):
                out[pid] = body(pid)
        except Exception as e:
            out[pid] = e

    threads = [threading.Thread(target=run, args=(p,)) for p in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_a_shared_run_locks_once_for_all_its_processes(tmp_path, holder):
    root = tmp_path / "sys"
    out = _run_pair(root, False, lambda pid: lock_holder(root)["what"])
    assert out == {0: "label", 1: "label"} and not holds_writer_lock(root)
    p = holder(root)  # another writer holds it: both processes of the run refuse, naming it
    out = _run_pair(root, False, lambda pid: "ran")
    assert isinstance(out[0], LockedError) and f"process {p.pid}" in str(out[0])
    assert isinstance(out[1], LockedError) and f"process {p.pid}" in str(out[1])
