"""The user's own workflow through ``mll-jax``: one writer at a time, bad image files skipped and reported.

A small real system (the shipped CIFAR-10 CNN, three WordNet nodes with CIFAR sample images) is built once; each
command runs in a subprocess as a user runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mll_jax.config import MLLConfig
from mll_jax.locking import writer_lock
from mll_jax.samples import sample_images
from mll_jax.sdag import SDAG
from mll_jax.system import MLL

REPO = Path(__file__).resolve().parents[1]
CAR, DOG, TRUCK = "n02958343", "n02084071", "n04490091"  # CIFAR-10 automobile, dog, truck


def _env(home: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MLL_JAX_HOME=str(home))
    env.pop("PYTHONHASHSEED", None)
    return env


def _cli(*args, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mll_jax.cli", *map(str, args), "--noprogress"], cwd=cwd,
                          env=_env(home), capture_output=True, text=True, timeout=600)


def _popen(*args, home: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mll_jax.cli", *map(str, args), "--noprogress"], cwd=cwd,
                            env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class _Stderr:
    """Collects a subprocess's stderr lines in a thread (so the test can wait for its 'waiting' message)."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(iter(proc.stderr.readline, "")), daemon=True)
        self.thread.start()

    def wait_for(self, word: str, timeout: float = 300.0) -> None:
        end = time.monotonic() + timeout
        while not any(word in ln for ln in self.lines):
            assert time.monotonic() < end, f"no {word!r} on stderr: {self.lines}"
            time.sleep(0.2)

    def text(self) -> str:
        self.thread.join(timeout=60)
        return "".join(self.lines)


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    """A system with node images and the CIFAR-10 CNN registered (not labelled)."""
    tmp = tmp_path_factory.mktemp("cli_rel")
    images, labels, _ = sample_images("cifar10")
    mll = MLL.open(tmp / "mll", sdag=SDAG.from_wnids([CAR, DOG, TRUCK]), config=MLLConfig(progress=False))
    for w, c in ((CAR, 1), (DOG, 5), (TRUCK, 9)):
        mll.add_images(w, images[labels == c])
    mll.add_model("cifar10-cnn")
    return tmp


def test_a_second_writer_refuses_or_waits_and_the_labels_equal_one_run(system, tmp_path):
    root, home = system / "mll", tmp_path / "home"
    with writer_lock(root, what="another job", notify=None):
        refused = _cli("label", f"--root={root}", "--lock_wait=no", home=home, cwd=tmp_path)
        assert refused.returncode == 1, (refused.returncode, refused.stderr)
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and "another job" in lines[0] and "Traceback" not in refused.stderr, refused.stderr
        assert "cifar10-cnn" not in MLL.open(root).labels.model_ids()  # nothing was labelled
        waiting = _popen("label", f"--root={root}", home=home, cwd=tmp_path)
        err = _Stderr(waiting)
        err.wait_for("waiting")  # it says so, and waits for the lock
        assert waiting.poll() is None
    out = waiting.stdout.read()
    assert waiting.wait(timeout=600) == 0, err.text()
    assert "cifar10-cnn: labelled" in out
    mll = MLL.open(root)
    nodes, got = mll.labels.read_all("cifar10-cnn")
    one = MLL.open(tmp_path / "one", sdag=SDAG.load(root / "sdag"), config=MLLConfig(progress=False))
    one.add_model("cifar10-cnn")
    one.label()
    nodes1, want = one.labels.read_all("cifar10-cnn")
    assert nodes == nodes1
    np.testing.assert_array_equal(got, want)  # bitwise the labels of one uninterrupted process
    again = _cli("label", f"--root={root}", home=home, cwd=tmp_path)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_hub_add_and_add_images_wait_for_a_labelling_writer_and_nothing_is_lost(system, tmp_path):
    root, home = system / "mll", tmp_path / "home"
    script = ("import sys, numpy as np\nfrom mll_jax.system import MLL\n"
              "mll = MLL.open(sys.argv[1])\nimgs = mll.sdag.images(sys.argv[2])\n"
              "mll.add_images(sys.argv[2], np.concatenate([imgs, imgs[:1]]))\nprint('added')\n")
    before = MLL.open(root).sdag.num_images(CAR)
    with writer_lock(root, what="label", notify=None):
        adding = _popen("hub", "add", f"--root={root}", "efficientnet-lite0", "--resolution=32", home=home,
                        cwd=tmp_path)
        images = subprocess.Popen([sys.executable, "-c", script, str(root), CAR], env=_env(home), cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        aerr, ierr = _Stderr(adding), _Stderr(images)
        aerr.wait_for("waiting")
        ierr.wait_for("waiting")
        assert adding.poll() is None and images.poll() is None  # both wait for the writer
        MLL.open(root).add_model("cifar10-cnn")  # the holder's own writes go on (re-entrant)
    adding.stdout.read()
    assert adding.wait(timeout=600) == 0, aerr.text()
    iout = images.stdout.read()
    assert images.wait(timeout=600) == 0 and "added" in iout, ierr.text()
    mll = MLL.open(root)
    assert {"cifar10-cnn", "efficientnet-lite0-r32"} <= set(mll.model_ids())
    assert mll.sdag.num_images(CAR) == before + 1


def test_classify_skips_bad_files_reports_them_and_exits_4(system, tmp_path):
    from PIL import Image

    root, home = system / "mll", tmp_path / "home"
    if "cifar10-cnn" not in MLL.open(root).labels.model_ids():
        assert _cli("label", f"--root={root}", "--models=cifar10-cnn", home=home, cwd=tmp_path).returncode == 0
    folder = tmp_path / "photos"
    folder.mkdir()
    images, labels, _ = sample_images("cifar10")
    good = [i for i, c in enumerate(labels) if c in (1, 5)][:3]
    for i in good:
        Image.fromarray(images[i]).save(folder / f"good{i}.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    data = (folder / f"good{good[0]}.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    out_json = tmp_path / "pred.json"
    p = _cli("classify", f"--root={root}", "--classes=car,dog", "--models=experts", "--image_size=0",
             f"--output={out_json}", folder, home=home, cwd=tmp_path)
    assert p.returncode == 4, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    for bad in ("empty.png", "notes.jpg", "truncated.png"):
        assert f"skipped {folder / bad}" in p.stderr, p.stderr
        assert f"{folder / bad}\t(skipped)" in p.stdout
    doc = json.loads(out_json.read_text())
    assert len(doc["predictions"]) == 3 and {Path(s["file"]).name for s in doc["skipped"]} == {
        "empty.png", "notes.jpg", "truncated.png"}
    stop = _cli("classify", f"--root={root}", "--classes=car,dog", "--image_size=0", "--on_error=stop", folder,
                home=home, cwd=tmp_path)
    assert stop.returncode == 2 and len(stop.stderr.strip().splitlines()) == 1, stop.stderr
