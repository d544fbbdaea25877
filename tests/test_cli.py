"""The ``mll-jax`` command line, run as a user runs it (``python -m mll_jax.cli`` in a subprocess).

The whole job on real data that ships offline: an SDAG over the ImageNet sample images' wnids (node images from an
ImageNet-style folder made of those images), the CIFAR-10 CNN and EfficientNet-Lite0 (at 64 px, for speed) in the
hub, labelling, then classifying the CIFAR-10 sample images; the CLI's predictions, scores and explanation must equal
the same job done through the Python API in this process.  Error cases: exit code 2 and one line on stderr.

The commands of ``test_cli_whole_job`` are the quick start of docs/CLI_QUICKSTART.md.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["dog", "car"]


def _env(home: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MLL_JAX_HOME=str(home))
    env.pop("PYTHONHASHSEED", None)
    return env


def _cli(*args, cwd: Path, home: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "mll_jax.cli", *map(str, args)], cwd=cwd, env=_env(home),
                       capture_output=True, text=True, timeout=timeout)
    if check:
        cmd = " ".join(map(str, args))
        assert p.returncode == 0, f"mll-jax {cmd} -> {p.returncode}\n{p.stdout}\n{p.stderr[-3000:]}"
    return p


def _imagenet_folder(dest: Path) -> list[str]:
    """The 20 ImageNet sample images as an ImageNet-style folder ``dest/<wnid>/<file>``; returns the wnids."""
    from mll_jax.models import imagenet_wnids
    from mll_jax.samples import sample_files

    files, labels = sample_files("imagenet")
    wnids = imagenet_wnids()
    for f, c in zip(files, labels):
        d = dest / wnids[c]
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, d / f.name)
    return sorted({wnids[c] for c in labels})


@pytest.mark.slow
def test_cli_whole_job(tmp_path):
    from mll_jax import MLL
    from mll_jax.images import load_images
    from mll_jax.models import CIFAR10_WNIDS
    from mll_jax.samples import sample_dir, sample_files

    home = tmp_path / "home"
    node_wnids = _imagenet_folder(tmp_path / "imagenet")
    wnids = node_wnids + [w for w in CIFAR10_WNIDS if w not in node_wnids]
    run = lambda *a: _cli(*a, cwd=tmp_path, home=home)  # noqa: E731

    # sdag build: a relative --root (the CLI resolves it), node images from the folder.
    out = run("sdag", "build", "--root=mll", f"--wnids={','.join(wnids)}", "--close_hypernyms",
              "--images=imagenet", "--per_node=50", "--image_size=224", "--noprogress").stdout
    root = tmp_path / "mll"
    assert "node images: 20 images on 19 nodes" in out and (root / "sdag" / "sdag.json").is_file()
    assert run("hub", "add", "--root=mll", "cifar10-cnn").stdout.startswith("cifar10-cnn: added")
    assert run("hub", "add", "--root=mll", "efficientnet-lite0").stdout.startswith("efficientnet-lite0: added")
    listed = json.loads(run("hub", "list", "--root=mll", "--json").stdout)
    assert [(r["id"], r["heads"], r["status"]) for r in listed] == [
        ("cifar10-cnn", 10, "unlabelled"), ("efficientnet-lite0", 1000, "unlabelled")]
    out = run("label", "--root=mll", "--noprogress").stdout
    assert "cifar10-cnn: labelled" in out and "efficientnet-lite0: labelled" in out
    listed = json.loads(run("hub", "list", "--root=mll", "--json").stdout)
    assert [r["status"] for r in listed] == ["labelled", "labelled"]

    cifar = sorted(sample_dir().glob("cifar10_*_[159].png"))  # CIFAR-10 automobiles (1), dogs (5), trucks (9)
    all_files, all_labels = sample_files("cifar10")
    assert [Path(f) for f in cifar] == [f for f, c in zip(all_files, all_labels) if c in (1, 5, 9)]
    p = run("classify", "--root=mll", f"--classes={','.join(CLASSES)}", "--explain", "--output=pred.json",
            "--save_classifier=clf.npz", "--image_size=0", "--noprogress", *cifar)
    got = json.loads((tmp_path / "pred.json").read_text())
    assert any((home / "jax_cache").iterdir())  # --compile_cache=auto: the compiled programs are kept in the home

    # The same job through the Python API, in this process.
    mll = MLL.open(root)
    clf = mll.classifier(CLASSES)
    images, files = load_images(cifar, None)
    want_pred = clf.predict(images)
    want_scores = clf.scores(images)
    want_names = [CLASSES[i] for i in want_pred]  # every image is covered here (asserted below)
    assert (want_pred >= 0).all()
    truth = ["dog" if Path(f).stem.endswith("_5") else "car" for f in cifar]
    assert sum(a == b for a, b in zip(want_names, truth)) >= 5  # measured: 6 of 6
    assert got["classes"] == CLASSES and got["models"] == list(clf.selection.used_model_ids)
    rows = got["predictions"]
    assert [r["file"] for r in rows] == [str(f) for f in files]
    assert [r["index"] for r in rows] == want_pred.tolist()
    assert [r["class"] for r in rows] == want_names
    np.testing.assert_allclose(np.array([r["scores"] for r in rows], np.float64), want_scores, rtol=1e-5, atol=1e-6)
    from mll_jax.cli import json_ready as _plain

    assert got["explain"] == _plain(clf.explain()) and got["explain"][0]["class"] == "dog"
    # stdout: the explanation, then one "file<TAB>class" line per image.
    assert p.stdout.startswith(clf.explain_text())
    lines = [ln.split("\t") for ln in p.stdout.splitlines() if "\t" in ln]
    assert lines == [[str(f), n] for f, n in zip(files, want_names)]
    assert any(ln.startswith("    cifar10-cnn: loss") for ln in p.stdout.splitlines())
    # "dog" lands on WordNet's dog (dog.n.01), the synset itself, explained by the lemma path
    assert got["explain"][0]["node"] == "n02084071" and "node n02084071 is the synset itself" in p.stdout

    # "frog" has no labelled node at or below it: refused on its hypernym, reported (stdout, stderr), never predicted
    p = run("classify", "--root=mll", "--classes=dog,car,bird,frog", "--explain", "--image_size=0", "--noprogress",
            *cifar)
    assert ("uncovered: lemma 'frog': frog.n.01" in p.stdout
            and "'frog' matched 'vertebrate', a hypernym: no labelled node at or below 'frog' (frog.n.01)" in p.stdout)
    assert "no labelled node at or below 'frog'" in p.stderr
    preds4 = [ln.split("\t")[1] for ln in p.stdout.splitlines() if "\t" in ln]
    assert len(preds4) == 6 and "frog" not in preds4 and sum(a == b for a, b in zip(preds4, truth)) >= 5

    # User-given synsets (a class file): the same nodes as "dog" and "car", so the same predictions and scores
    (tmp_path / "task.json").write_text(json.dumps([{"name": "pooch", "wnid": "dog.n.01"},
                                                    {"name": "auto", "wnid": "n02958343"}]))
    run("classify", "--root=mll", "--classes_file=task.json", "--output=pred2.json", "--explain", "--image_size=0",
        "--noprogress", *cifar)
    got2 = json.loads((tmp_path / "pred2.json").read_text())
    assert got2["classes"] == ["pooch", "auto"] and [r["node"] for r in got2["explain"]] == ["n02084071", "n02958343"]
    assert got2["explain"][0]["match"]["method"] == "wnid"
    assert [r["index"] for r in got2["predictions"]] == want_pred.tolist()
    np.testing.assert_allclose(np.array([r["scores"] for r in got2["predictions"]], np.float64), want_scores,
                               rtol=1e-5, atol=1e-6)

    # A saved classifier predicts the same without re-selection; CSV output.
    run("classify", "--root=mll", "--classifier=clf.npz", "--output=pred.csv", "--image_size=0", "--noprogress",
        *cifar)
    with open(tmp_path / "pred.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["file", "class", "index"] + [f"score:{c}" for c in CLASSES]
    assert [(r[0], r[1], int(r[2])) for r in table[1:]] == [(r["file"], r["class"], r["index"]) for r in rows]
    np.testing.assert_allclose(np.array([[float(v) for v in r[3:]] for r in table[1:]]), want_scores, rtol=1e-5,
                               atol=1e-6)

    # sdag build on an existing system adds nodes (keeping the node images); the labels are then stale.
    out = run("sdag", "build", "--root=mll", "--wnids=n02123045", "--noprogress").stdout
    assert "added 1 new nodes" in out and "SDAG: 113 nodes, 19 with images" in out
    listed = json.loads(run("hub", "list", "--root=mll", "--json").stdout)
    assert [r["status"] for r in listed] == ["stale", "stale"]


def _expect_usage_error(p: subprocess.CompletedProcess, *fragments: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith(("mll-jax", "python -m mll_jax.run")) and ": error: " in lines[0], lines[0]
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


def test_cli_errors_and_help(tmp_path):
    """Bad usage and bad input: exit code 2 and a one-line message naming the problem, before any work."""
    from mll_jax.sdag import SDAG
    from mll_jax.system import MLL

    MLL.open(tmp_path / "sys", sdag=SDAG.from_wnids(["n02084071"]))  # an empty system (no models)
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(img)
    home = tmp_path / "home"
    cases = {
        "unknown model": (["hub", "add", "--root=sys", "resnet-9000"], ["unknown model 'resnet-9000'",
                                                                         "cifar10-cnn"]),
        "empty classes": (["classify", "--root=sys", "--classes=", img], ["class name 0 is empty"]),
        "empty class name": (["classify", "--root=sys", "--classes=cat,,dog", img], ["class name 1 is empty"]),
        "duplicate classes": (["classify", "--root=sys", "--classes=cat, Cat ,dog", img], ["duplicate class names"]),
        "unknown class wnid": (["classify", "--root=sys", "--classes=dog,kitty=n99999999", img],
                               ["class 'kitty'", "n99999999"]),
        "unknown synset name": (["classify", "--root=sys", "--classes=dog.n.99,cat", img], ["dog.n.99"]),
        "classes twice": (["classify", "--root=sys", "--classes=a,b", "--classes_file=c.json", img],
                          ["--classes or --classes_file"]),
        "missing classes file": (["classify", "--root=sys", "--classes_file=c.json", img],
                                 ["--classes_file=c.json does not exist"]),
        "missing root": (["label", "--root=nowhere"], ["--root=", "nowhere", "does not exist", "sdag build"]),
        "root not given": (["hub", "list"], ["--root"]),
        "bad flag value": (["classify", "--root=sys", "--classes=a,b", "--k=0", img], ["--k"]),
        "unknown flag": (["label", "--root=sys", "--bogus"], ["bogus"]),
        "unknown command": (["frobnicate"], ["unknown command 'frobnicate'", "classify"]),
        "no command": ([], ["no command given"]),
        "bare group": (["hub"], ["hub add", "hub list"]),
        "unknown wnid": (["sdag", "build", "--root=new", "--wnids=n02084071,n00000001"], ["--wnids",
                                                                                         "n00000001"]),
        "roots and wnids": (["sdag", "build", "--root=new", "--wnids=n02084071", "--roots=n02084071"],
                            ["--roots", "--wnids"]),
        "remove unknown": (["hub", "remove", "--root=sys", "nope"], ["unknown model ids ['nope']"]),
        "hf dir without config": (["hub", "add", "--root=sys", "hf:."], ["not a Hugging Face model directory"]),
        "missing image": (["classify", "--root=sys", "--classes=cat,dog", "missing.png"], ["missing.png",
                                                                                          "does not exist"]),
        "resolution on cifar": (["hub", "add", "--root=sys", "cifar10-cnn", "--resolution=64"], ["--resolution"]),
        "bench lite9": (["bench", "--imagenet_experts=lite0,lite9", "--progress=false"],
                        ["--imagenet_experts", "lite0,lite1,lite2"]),
        "bench train_steps": (["bench", "--train_steps=0"], ["train_steps"]),
    }
    procs = {name: subprocess.Popen([sys.executable, "-m", "mll_jax.cli", *map(str, args)], cwd=tmp_path,
                                    env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, (args, _) in cases.items()}
    helps = {
        "top": subprocess.Popen([sys.executable, "-m", "mll_jax.cli", "--help"], env=_env(home), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE),
        "classify": subprocess.Popen([sys.executable, "-m", "mll_jax.cli", "classify", "--help"], env=_env(home),
                                     text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE),
        "run": subprocess.Popen([sys.executable, "-m", "mll_jax.run", "--help"], env=_env(home), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE),
        "run_bad": subprocess.Popen([sys.executable, "-m", "mll_jax.run", "--train_steps=0"], env=_env(home),
                                    text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE),
    }
    for name, proc in {**procs, **helps}.items():
        out, err = proc.communicate(timeout=300)
        proc.result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    for name, (_, fragments) in cases.items():
        _expect_usage_error(procs[name].result, *fragments)
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "new").exists()  # failed commands create nothing

    top = helps["top"].result
    assert top.returncode == 0, top.stderr
    for cmd in ("sdag build", "hub add", "hub list", "hub remove", "label", "classify", "bench"):
        assert f"mll-jax {cmd}" in top.stdout
    for flag in ("--root", "--wnids", "--roots", "--close_hypernyms", "--images", "--per_node", "--model_id",
                 "--resolution", "--models", "--recompute", "--classes", "--output", "--explain", "--classifier",
                 "--save_classifier", "--k:", "--beta", "--scorer", "--image_size"):
        assert flag in top.stdout, flag
    cls = helps["classify"].result
    assert cls.returncode == 0 and cls.stdout.startswith("usage: mll-jax classify [flags] PATH...")
    assert "--classes" in cls.stdout and "--[no]explain" in cls.stdout and "--wnids" not in cls.stdout
    run_help = helps["run"].result
    assert run_help.returncode == 0 and "--imagenet_experts" in run_help.stdout and "--train_steps" in run_help.stdout
    assert "lite0,lite1,lite2" in run_help.stdout
    _expect_usage_error(helps["run_bad"].result, "train_steps")


def test_importing_defines_no_flags():
    """Flags are defined by the programs that parse them, not by importing the library (issue 7)."""
    code = ("import mll_jax.run, mll_jax.cli, mll_jax.system\n"
            "from absl import flags\n"
            "mine = [n for n in ('k', 'beta', 'root', 'classes', 'imagenet_experts') if n in flags.FLAGS]\n"
            "assert not mine, mine\n"
            "for c in mll_jax.cli.COMMANDS.values():\n"
            "    fv = flags.FlagValues()\n"
            "    c.define(fv, module_name=c.name)\n"
            "    print(c.name, len(list(fv)))\n")
    p = subprocess.run([sys.executable, "-c", code], env=_env(Path("/nonexistent")), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    counts = {ln.rsplit(" ", 1)[0]: int(ln.rsplit(" ", 1)[1]) for ln in p.stdout.splitlines()}
    assert counts["bench"] >= 25 and counts["classify"] >= 12 and counts["sdag build"] >= 10, counts


def test_compile_cache_is_reused_by_a_later_process(tmp_path):
    """``mll_jax.utils.compile_cache``: a program compiled in one process is stored, and a later process that
    compiles the same program loads it (JAX logs the hit) and computes the same result."""
    code = ("import logging, sys, jax, jax.numpy as jnp; from mll_jax.utils import compile_cache; "
            "logging.basicConfig(); logging.getLogger('jax._src.compiler').setLevel(logging.DEBUG); "
            "compile_cache(sys.argv[1], min_compile_secs=0); "
            "f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(axis=1) * 3); print(f(jnp.arange(12.).reshape(4, 3)))")
    runs = []
    for _ in range(2):
        runs.append(subprocess.run([sys.executable, "-c", code, str(tmp_path / "cache")],
                                   env=_env(tmp_path / "home"), capture_output=True, text=True, timeout=300))
        assert runs[-1].returncode == 0, runs[-1].stderr[-2000:]
    hit = "Persistent compilation cache hit"
    assert hit not in runs[0].stderr and hit in runs[1].stderr
    assert runs[0].stdout == runs[1].stdout
    assert any((tmp_path / "cache").iterdir()) and not (tmp_path / "home" / "jax_cache").exists()
