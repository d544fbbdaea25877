"""A full disk or an unwritable directory during a write (issue 23, item 4): the previous state stays intact, no
temp file is left behind, and one clear StorageError names the file and the cause."""

from __future__ import annotations

import errno
import io
import os

import numpy as np
import pytest

from mll_jax import utils
from mll_jax.errors import MLLError, StorageError
from mll_jax.labelling import LabelStore
from mll_jax.utils import atomic_write, atomic_write_bytes, atomic_write_json, storage_error


class _FullDisk(io.RawIOBase):
    """A file object that accepts ``limit`` bytes, then fails like a full disk."""

    def __init__(self, inner, limit: int):
        self.inner, self.left = inner, limit

    def writable(self):
        return True

    def write(self, b):
        if len(b) > self.left:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.left -= len(b)
        return self.inner.write(b)


def _only(path):
    return sorted(p.name for p in path.parent.iterdir())


def test_enospc_mid_write_keeps_the_old_file_and_raises_one_clear_error(tmp_path):
    f = tmp_path / "state.npz"
    atomic_write(f, lambda fh: np.savez(fh, x=np.arange(10)))
    before = f.read_bytes()
    big = np.random.default_rng(0).normal(size=(200, 200))
    with pytest.raises(StorageError) as err:
        atomic_write(f, lambda fh: np.savez(_FullDisk(fh, 4096), x=big))
    e = err.value
    assert str(f) in str(e) and "ENOSPC" in str(e) and "disk is full" in str(e)
    assert "previous content is unchanged" in str(e)
    assert e.errno == errno.ENOSPC and e.filename == str(f) and e.exit_code == 1
    assert isinstance(e, OSError) and isinstance(e, MLLError)  # old `except OSError` handlers still catch it
    assert f.read_bytes() == before and _only(f) == ["state.npz"]  # no temp file left


def test_enospc_at_fsync_and_for_a_new_file(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError, match="no file was created"):
        atomic_write_json(tmp_path / "new.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_read_only_directory(tmp_path, monkeypatch):
    f = tmp_path / "cfg.json"
    atomic_write_json(f, {"v": 1})
    if os.geteuid() != 0:  # a real read-only directory (root writes anyway: then simulated below)
        os.chmod(tmp_path, 0o555)
        try:
            with pytest.raises(StorageError, match="no permission to write there"):
                atomic_write_json(f, {"v": 2})
        finally:
            os.chmod(tmp_path, 0o755)
        assert f.read_text() == atomic_write_json(tmp_path / "ref.json", {"v": 1}).read_text()
        (tmp_path / "ref.json").unlink()

    def read_only(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path))

    monkeypatch.setattr(utils.tempfile, "mkstemp", read_only)
    with pytest.raises(StorageError, match=r"cfg.json: .*\(EROFS\); the file system is mounted read-only"):
        atomic_write_json(f, {"v": 3})
    assert '"v": 1' in f.read_text() and _only(f) == ["cfg.json"]


def test_other_os_errors_pass_unchanged(tmp_path):
    def boom(fh):
        raise FileNotFoundError(errno.ENOENT, "source missing")

    with pytest.raises(FileNotFoundError) as err:
        atomic_write(tmp_path / "x", boom)
    assert not isinstance(err.value, StorageError) and list(tmp_path.iterdir()) == []
    e = OSError(errno.EBADF, "bad fd")
    assert storage_error(e, tmp_path / "x") is e


def test_full_disk_during_a_label_commit_keeps_the_committed_labels(tmp_path, monkeypatch):
    store = LabelStore(tmp_path / "labels")
    old = np.arange(12, dtype=np.float32).reshape(4, 3)
    store.commit("m", ["a", "b", "c", "d"], old, delta=0.5, fingerprint="v1")
    files = sorted(p.name for p in (tmp_path / "labels" / "models").rglob("*"))
    real_write = utils.atomic_write

    def fail_on_meta(path, fn, **kw):  # the data files are written, then the disk fills up
        if os.path.basename(path) == "meta.json":
            raise storage_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path)
        return real_write(path, fn, **kw)

    monkeypatch.setattr(utils, "atomic_write", fail_on_meta)
    with pytest.raises(StorageError, match="meta.json.*ENOSPC"):
        store.commit("m", ["a", "b"], old[:2] + 100, delta=0.5, fingerprint="v2")
    monkeypatch.undo()
    fresh = LabelStore(tmp_path / "labels")
    nodes, labels = fresh.read_all("m")
    assert nodes == ["a", "b", "c", "d"] and np.array_equal(labels, old) and fresh.fingerprint("m") == "v1"
    fresh.check("m")
    # the orphaned data files of the failed commit are removed by the next successful one
    fresh.commit("m", ["a"], old[:1], delta=0.5, fingerprint="v3")
    assert len([p for p in (tmp_path / "labels" / "models").rglob("labels-*")]) == 2  # .rows + .index.json
    assert files  # (the store had files before)


def test_enospc_writing_label_rows(tmp_path, monkeypatch):
    store = LabelStore(tmp_path / "labels")
    old = np.ones((2, 2), np.float32)
    store.commit("m", ["a", "b"], old)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError, match=r"labels-.*\.rows: .*ENOSPC"):
        store.commit("m", ["a", "b"], old * 2)
    monkeypatch.undo()
    assert np.array_equal(LabelStore(tmp_path / "labels").read_all("m")[1], old)
    assert not [p for p in (tmp_path / "labels").rglob("*.tmp")]
    assert atomic_write_bytes(tmp_path / "after", b"ok").read_bytes() == b"ok"


def test_full_disk_during_hub_registration_and_classifier_save_keeps_the_old_state(tmp_path, monkeypatch):
    """The hub manifest and a saved classifier: a full disk at fsync leaves the previous files as they were."""
    from mll_jax.hub import ModelHub
    from mll_jax.selection import Selection

    hub = ModelHub(tmp_path / "hub")
    hub.register("a", "keras_cifar10", num_heads=10, source="pypi:cifar-10-model")
    manifest = {p: p.read_bytes() for p in (tmp_path / "hub").rglob("*") if p.is_file()}
    sel = Selection(method="chco", model_ids=("a",), loss=np.zeros((1, 2)), experts=((0,), (0,)),
                    columns={"a": np.eye(10, 2, dtype=np.float32)}, k=1, beta=None, class_names=("x", "y"))
    sel.save(tmp_path / "clf.npz")
    saved = (tmp_path / "clf.npz").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError, match="ENOSPC"):
        hub.register("b", "keras_cifar10", num_heads=10, source="pypi:cifar-10-model")
    with pytest.raises(StorageError, match="clf.npz.*ENOSPC"):
        sel.save(tmp_path / "clf.npz")
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in (tmp_path / "hub").rglob("*") if p.is_file()} == manifest
    assert ModelHub(tmp_path / "hub").ids() == ["a"]
    assert (tmp_path / "clf.npz").read_bytes() == saved
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
