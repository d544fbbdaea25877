"""Labelling and CHCO scoring over several cooperating processes (``mll_jax.distributed``, jax.distributed on CPU).

A small real system: the 20 ImageNet sample images at their wnids and the 20 CIFAR-10 sample images at the CIFAR-10
class nodes, their WordNet hypernyms, and two real experts (the CIFAR-10 CNN, EfficientNet-Lite0 at 64 px).  The
reference is a one-process ``MLL.label`` in this process.  Two processes on 127.0.0.1 (``mll-jax label
--num_processes=2 ...``, process 0 with two host devices, so its batches are also split over local devices) must
commit labels bitwise equal to it; a process killed (SIGKILL) right after writing its first unit loses only its
unfinished units, the other one fails naming it, and a rerun computes only what is missing and again gives the
same labels bitwise.  Every subprocess runs under a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "_dist_worker.py"
UNIT = 3  # nodes per unit: 27 nodes with images -> 9 units per model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path, devices: int = 1) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MLL_JAX_HOME=str(home), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _run_all(cmds, envs, timeout=240):
    """Start every command, wait for all (each under ``timeout``); returns their CompletedProcess-like triples."""
    ps = [subprocess.Popen(c, env=e, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for c, e in zip(cmds, envs)]
    out = []
    try:
        for p in ps:
            o, e = p.communicate(timeout=timeout)
            out.append((p.returncode, o, e))
    finally:
        for p in ps:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return out


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """This module's MLL_JAX_HOME: hub copies and caches of this process stay under tmp while the module
    runs (unless the variable is already set), and the variable is restored afterwards. (Leaked by an
    earlier os.environ.setdefault, it sent every later test's home caches to this tmp dir: test_text
    re-encoded all 82,115 WordNet noun texts in CI, 570 s instead of ~35 s.)"""
    home = tmp_path_factory.mktemp("dist-home") / "home"
    env = pytest.MonkeyPatch()
    if "MLL_JAX_HOME" not in os.environ:
        env.setenv("MLL_JAX_HOME", str(home))
    yield home
    env.undo()


@pytest.fixture(scope="module")
def system(tmp_path_factory, home):
    """(base root, home, reference label arrays {model: (nodes, labels)}) ."""
    from mll_jax import MLL, SDAG, sample_images
    from mll_jax.models import CIFAR10_WNIDS, imagenet_wnids

    tmp = tmp_path_factory.mktemp("dist")
    inet, y_inet, _ = sample_images("imagenet")
    cif, y_cif, _ = sample_images("cifar10")
    w_inet = [imagenet_wnids()[c] for c in y_inet]
    w_cif = [CIFAR10_WNIDS[c] for c in y_cif]
    sdag = SDAG.from_wnids(sorted(set(w_inet) | set(w_cif)), close_hypernyms=True)
    base = tmp / "base"
    mll = MLL.open(base, sdag=sdag)
    for w in sorted(set(w_inet)):
        mll.add_images(w, inet[[x == w for x in w_inet]])
    for w in sorted(set(w_cif) - set(w_inet)):
        mll.add_images(w, cif[[x == w for x in w_cif]])
    mll.add_model("cifar10-cnn", batch_size=8)
    mll.add_model("efficientnet-lite0", resolution=64, batch_size=8)
    assert len(mll.sdag.nodes_with_images()) == 27
    ref_root = tmp / "ref"
    shutil.copytree(base, ref_root)
    ref = MLL.open(ref_root).with_config(progress=False)
    summary = ref.label(unit_nodes=UNIT)
    assert {m: s["computed"] for m, s in summary.items()} == {"cifar10-cnn": 27, "efficientnet-lite0-r64": 27}
    labels = {m: ref.labels.read_all(m) for m in ref.labels.model_ids()}
    return base, home, labels


def _assert_same_labels(root: Path, ref: dict):
    from mll_jax.labelling import LabelStore

    store = LabelStore(root / "labels")
    assert store.model_ids() == sorted(ref)
    for m, (nodes, arr) in ref.items():
        n2, a2 = store.read_all(m)
        assert n2 == nodes
        assert a2.dtype == arr.dtype and np.array_equal(a2, arr), (m, np.abs(a2 - arr).max())


def test_two_processes_cli_equal_one_process(system, tmp_path):
    base, home, ref = system
    root = tmp_path / "mll"
    shutil.copytree(base, root)
    port = _free_port()
    cmd = lambda i: [sys.executable, "-m", "mll_jax.cli", "label", f"--root={root}", "--num_processes=2",  # noqa
                     f"--process_id={i}", f"--coordinator_address=127.0.0.1:{port}", f"--unit_nodes={UNIT}",
                     "--heartbeat_timeout=10", "--wait_timeout=120", "--noprogress", "--traceback"]
    # process 0 sees two host devices: its batches are also split over them (data parallel)
    res = _run_all([cmd(0), cmd(1)], [_env(home, devices=2), _env(home)])
    for i, (rc, out, err) in enumerate(res):
        assert rc == 0, f"process {i}: rc {rc}\n{out}\n{err[-3000:]}"
    # 9 units per model, round-robin: 5 units (15 nodes) to process 0, 4 (12 nodes) to process 1
    assert "(27 computed, 15 by process 0)" in res[0][1] and "(27 computed, 12 by process 1)" in res[1][1]
    assert res[0][1].count("labelled") == res[1][1].count("labelled") == 2
    _assert_same_labels(root, ref)
    # the label state is written (by process 0): nothing is stale, a rerun has nothing to do
    from mll_jax import MLL

    assert MLL.open(root).stale_models() == []


def test_killed_process_loses_only_its_unit_and_rerun_completes(system, tmp_path):
    from mll_jax import MLL
    from mll_jax.labelling import LabelStore

    base, home, ref = system
    root = tmp_path / "mll"
    shutil.copytree(base, root)
    port = _free_port()
    cmd = lambda i, *extra: [sys.executable, str(WORKER), "label", str(root), str(i), "2", str(port),  # noqa
                             str(UNIT), *extra]
    (rc0, out0, err0), (rc1, _, err1) = _run_all([cmd(0), cmd(1, "kill")], [_env(home), _env(home)])
    assert rc1 == -9, err1[-3000:]
    assert rc0 != 0 and "ProcessFailedError" in err0 and "process 1 of 2 died" in err0, err0[-3000:]
    store = LabelStore(root / "labels")
    assert store.model_ids() == []  # nothing committed: process 0 commits only when every unit is in
    first = MLL.open(root).stale_models()[0]
    raw = store.load_raw(first)
    # process 0 wrote its 5 units of the first model (15 nodes), process 1 one unit (3 nodes) before dying
    assert len(raw) == 15 + UNIT
    assert len(list((store.model_dir(first) / "raw").iterdir())) == 5 + 1  # one chunk per unit
    # the rerun (one process here) computes only the missing nodes and gives the same labels bitwise
    summary = MLL.open(root).with_config(progress=False).label(unit_nodes=UNIT)
    assert summary[first]["computed"] == 27 - 18 and summary[first]["cached"] == 18
    assert [s["computed"] for m, s in summary.items() if m != first] == [27]
    _assert_same_labels(root, ref)


def test_chco_split_over_two_processes_equals_one(tmp_path):
    """Models 0, 2, 4, 6 solved by process 0 and 1, 3, 5 by process 1, gathered: bitwise the one-process result
    (plain ``chco.solve_batch`` on all seven, run by process 0 after the split one).  Same padded head count, so
    XLA vectorises every chunk alike; across head-count groups, chunk composition can move the last float32 bit
    (docs/DISTRIBUTED.md)."""
    port = _free_port()
    out = tmp_path / "chco.npz"
    cmds = [[sys.executable, str(WORKER), "chco", str(out), str(i), "2", str(port)] for i in range(2)]
    res = _run_all(cmds, [_env(tmp_path), _env(tmp_path)], timeout=120)
    for i, (rc, o, e) in enumerate(res):
        assert rc == 0, f"process {i}: {e[-3000:]}"
    got = np.load(out)
    assert got["ref_converged"].all() and len(set(got["ref_iterations"].tolist())) > 1  # a real, varied instance
    for name in ["loss", "objective", "iterations", "converged", "gap"] + [f"X{i}" for i in range(7)]:
        assert np.array_equal(got[name], got["ref_" + name]), name


def test_label_flag_errors_are_one_line_exit_2(tmp_path):
    root = tmp_path / "none"
    for flags, msg in [(["--num_processes=2"], "--process_id, --coordinator_address missing"),
                       (["--num_processes=2", "--process_id=2", "--coordinator_address=127.0.0.1:1"],
                        "--process_id=2 must be < --num_processes=2"),
                       (["--num_processes=2", "--process_id=0", "--coordinator_address=localhost"],
                        "must be host:port"),
                       (["--cluster", "--num_processes=2"], "do not also give --num_processes"),
                       (["--cluster"], "--cluster: JAX found no usable cluster environment")]:
        env = {k: v for k, v in _env(tmp_path).items()  # no cluster environment for JAX to detect
               if not k.startswith(("SLURM_", "OMPI_", "PMI_", "TPU_", "JOBSET_", "KUBERNETES_"))}
        p = subprocess.run([sys.executable, "-m", "mll_jax.cli", "label", f"--root={root}", *flags],
                           env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, (flags, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mll-jax label: error:") and msg in lines[0], (flags, lines)


def test_raw_chunk_names_never_collide_and_old_names_stay_readable(tmp_path, monkeypatch):
    from mll_jax.labelling import LabelStore

    store = LabelStore(tmp_path / "labels")
    store.append_raw("m", {"n1": ("k1", np.ones(2, np.float32))})
    old = next((store.model_dir("m") / "raw").iterdir())
    old.rename(old.with_name("raw-00000000-0123abcd.npz"))  # the 8-hex-digit names of earlier versions
    # two processes listing the directory at the same time pick the same seq: names still differ
    files = store.raw_files("m")
    monkeypatch.setattr(store, "raw_files", lambda mid: files)
    store.append_raw("m", {"n2": ("k2", np.full(2, 2, np.float32))})
    store.append_raw("m", {"n3": ("k3", np.full(2, 3, np.float32))})
    monkeypatch.undo()
    names = sorted(p.name for p in (store.model_dir("m") / "raw").iterdir())
    assert len(names) == 3 and names[0] == "raw-00000000-0123abcd.npz"
    assert [n[:13] for n in names[1:]] == ["raw-00000001-"] * 2
    raw = store.load_raw("m")
    assert {w: (k, m.tolist()) for w, (k, m) in raw.items()} == {
        "n1": ("k1", [1, 1]), "n2": ("k2", [2, 2]), "n3": ("k3", [3, 3])}


def test_assign_is_round_robin_and_single_process_is_a_no_op():
    from mll_jax import distributed

    units = [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)]
    assert [distributed.assign(units, 2, p) for p in range(2)] == [
        [("a", 0), ("a", 2), ("b", 1)], [("a", 1), ("b", 0)]]
    assert distributed.assign(units, 1, 0) == units
    one = distributed.current()
    assert (one.process_id, one.num_processes, one.multi) == (0, 1, False)
    one.barrier("t", "nothing")  # no runtime: returns at once
    with pytest.raises(ValueError, match="num_processes must be an int >= 1"):
        distributed.initialize("127.0.0.1:1", 0, 0)
    with pytest.raises(ValueError, match="process_id=3 must be < num_processes=2"):
        distributed.initialize("127.0.0.1:1", 2, 3)
    assert distributed.initialize(num_processes=1).num_processes == 1  # one process: nothing started


def test_chco_selection_takes_the_split_solver(system):
    """The hub's CHCO scoring (``select_models`` -> ``chco_scores``) calls the ``solver`` it is given
    (``distributed.solve_batch``; ``MLLConfig.chco_options={"solver": ...}`` reaches it the same way) with every
    candidate model's label sub-matrix, and selects from what it returns.  (The split solver itself:
    test_chco_split_over_two_processes_equals_one.)"""
    from mll_jax import chco
    from mll_jax.labelling import LabelStore
    from mll_jax.selection import select_models

    base, _, ref = system
    store = LabelStore(base.parent / "ref" / "labels")
    wnids = ["n02958343", "n02084071", "n04490091"]  # car, dog, truck: CIFAR-10 nodes with images
    ids = ["cifar10-cnn", "efficientnet-lite0-r64"]
    seen = {}

    def solver(S, *, model_ids, **kw):  # no solve (no compile): losses that make model 1 best on class 0 only
        seen.update(shapes=[np.shape(x) for x in S], ids=list(model_ids), method=kw.get("method"))
        loss = np.array([[0.5, 0.1, 0.1], [0.2, 0.3, 0.3]], np.float32)
        return chco.BatchResult([np.full(np.shape(x), 1.0 / np.shape(x)[0], np.float32) for x in S], loss,
                                loss.sum(1), np.ones(2, np.int32), np.ones(2, bool), np.zeros(2, np.float32),
                                list(model_ids))

    sel = select_models(store, wnids, k=1, beta=None, model_ids=ids, solver=solver)
    assert seen == {"shapes": [(10, 3), (1000, 3)], "ids": ids, "method": chco.DEFAULT_METHOD}
    assert np.array_equal(sel.loss, np.float32([[0.5, 0.1, 0.1], [0.2, 0.3, 0.3]]))  # float64 of the float32
    assert [list(e) for e in sel.experts] == [[1], [0], [0]]


class _FakeKV:
    """The key-value part of a jax.distributed client, in memory (one process's view of the store)."""

    def __init__(self):
        self.kv = {}

    def key_value_set(self, k, v, allow_overwrite=False):
        assert allow_overwrite or k not in self.kv, k
        self.kv[k] = v

    def key_value_dir_get(self, prefix):
        return [(k, v) for k, v in self.kv.items() if k.startswith(prefix)]


def test_waits_name_the_failed_dead_or_late_process(monkeypatch):
    """Barrier semantics without a runtime: a peer's published error, a peer whose heartbeat stopped, a wait without
    progress: each raises ProcessFailedError naming the process; a complete barrier returns."""
    import time

    from mll_jax import distributed as d

    monkeypatch.setattr(d, "POLL_SECONDS", 0.01)
    monkeypatch.setattr(d, "heartbeats_seen", {})
    kv = _FakeKV()
    p0 = d.Processes(0, 3, kv)
    kv.key_value_set("t1/1", "ok")
    kv.key_value_set("t1/2", "ok")
    p0.barrier("t1", "step one", timeout=5)  # everybody there: returns
    kv.key_value_set("t2/2", "error:NonFiniteLogitsError: model 'm' produced NaN")
    with pytest.raises(d.ProcessFailedError, match=r"process 2 of 3 failed while step two: NonFiniteLogitsError"):
        p0.barrier("t2", "step two", timeout=5)
    # process 2 arrived; process 1 did not and its heartbeat key never changes: named after the heartbeat timeout
    monkeypatch.setattr(d, "dead_after_seconds", 0.2)
    kv.key_value_set("t3/2", "ok")
    t = time.monotonic()
    with pytest.raises(d.ProcessFailedError, match=r"process 1 of 3 died while step three"):
        p0.barrier("t3", "step three", timeout=30)
    assert time.monotonic() - t < 5
    # alive but stuck: no progress for `timeout` seconds -> timed out, naming whom it waited for
    monkeypatch.setattr(d, "dead_after_seconds", 1e9)
    with pytest.raises(d.ProcessFailedError, match=r"timed out after 0.3 s .*step four: waiting for processes 1, 2"):
        p0.barrier("t4", "step four", timeout=0.3)
    # a process's own failure: published for the others, re-raised here
    with pytest.raises(ValueError, match="boom"):
        p0.barrier("t5", "step five", error=ValueError("boom"))
    assert kv.kv["t5/0"] == "error:ValueError: boom"
    # process 0's outcome reaches the others; its error becomes theirs
    p1 = d.Processes(1, 3, kv)
    p0.publish("r", "38")
    assert p1.wait_for("r", "committing", timeout=5) == "38"
    p0.publish("r2", RuntimeError("disk full"))
    with pytest.raises(d.ProcessFailedError, match="process 0 of 3 failed while committing: RuntimeError: disk full"):
        p1.wait_for("r2", "committing", timeout=5)
