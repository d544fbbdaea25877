"""``mll-jax``: the command line of the MLL system, a thin user of :class:`mll_jax.system.MLL`.

A system lives in one directory (``--root``): its SDAG (node images), its model hub, its labels and its
configuration (see :mod:`mll_jax.system`).  The commands::

    mll-jax sdag build --root=DIR (--roots=WNID,... | --wnids=WNID,... [--close_hypernyms])
                       [--images=FOLDER --per_node=50 --image_size=224]
    mll-jax hub add    --root=DIR MODEL [--model_id=ID] [--resolution=PX]   # MODEL: a shipped expert or hf:<name|dir>
    mll-jax hub list   --root=DIR
    mll-jax hub remove --root=DIR ID...
    mll-jax label      --root=DIR [--models=ID,...] [--recompute]
                       [--num_processes=N --process_id=I --coordinator_address=HOST:PORT | --cluster]
    mll-jax classify   --root=DIR --classes="tabby cat,golden retriever" PATH... [--output=FILE.csv|.json]
                       [--explain] [--save_classifier=FILE | --classifier=FILE] [--k --beta --scorer --image_size]
    mll-jax bench      [flags]        # the built-in benchmarks (same as ``python -m mll_jax.run``)

Flags are absl flags, defined here by the command that parses them (never when a library module is imported).
Exit codes: 0 success; 2 bad usage or bad input (one line ``mll-jax <cmd>: error: ...`` on stderr); 3 damaged data
on disk (a corrupt label store or checkpoint: the message names the file and how to recover); 1 any other failure
(one line; ``--traceback`` shows the full traceback).
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from absl import app, flags, logging

from mll_jax import distributed
from mll_jax.config import DEFAULT_BETA, DEFAULT_K, SCORERS
from mll_jax.errors import DATA_EXIT, FAILURE_EXIT, USAGE_EXIT, MLLError, exit_code  # noqa: F401
from mll_jax.families.experts import SHIPPED_EXPERTS
from mll_jax.images import load_images
from mll_jax.names import check_class_names
from mll_jax.sdag import SDAG
from mll_jax.system import MLL
from mll_jax.utils import atomic_write_text
from mll_jax.wordnet import synset_from_wnid

FLAGS = flags.FLAGS

__all__ = ["COMMANDS", "main", "entry_point"]


class _Usage(Exception):
    """Bad usage or bad input: exit code 2 with a one-line message."""


# ---------------------------------------------------------------------------------------------- flag definitions

def _definer(fv: flags.FlagValues, module_name: str):
    """``d(kind, name, default, help, **kw)`` defining a flag in ``fv`` once (re-running a command in one process
    re-uses the definition)."""

    def d(kind: str, name: str, default, help: str, **kw):
        if name in fv:
            return
        getattr(flags, f"DEFINE_{kind}")(name, default, help=help, flag_values=fv, module_name=module_name, **kw)

    return d


def _define_root(d) -> None:
    d("string", "root", None, "the system directory (SDAG, hub, labels, config), created by `mll-jax sdag build`")
    d("bool", "progress", True, "show progress bars (on stderr)")
    d("bool", "traceback", False, "on an unexpected failure, print the full Python traceback")


def define_sdag_build_flags(fv: flags.FlagValues = FLAGS, module_name: str | None = None) -> None:
    d = _definer(fv, module_name or __name__)
    _define_root(d)
    d("list", "roots", [], "WordNet root wnids: the SDAG is their hyponym subtrees (e.g. n02084071 = dog)")
    d("integer", "max_depth", None, "with --roots: cut the subtrees at this depth below the roots", lower_bound=0)
    d("list", "wnids", [], "exactly these WordNet nodes (wnids, e.g. n02123045,n02099601)")
    d("bool", "close_hypernyms", False, "with --wnids: add every hypernym of the wnids up to the WordNet root")
    d("string", "images", None, "ImageNet-style folder (nXXXXXXXX/ sub-folders of image files): node images")
    d("integer", "per_node", 50, "with --images: images per node (a seeded sample of the folder's files)",
      lower_bound=1)
    d("integer", "image_size", 224, "with --images: shorter side resized to this, centre crop (bicubic)",
      lower_bound=8)
    d("bool", "add_missing", False, "with --images: add the folder's wnids that are not SDAG nodes yet")


def define_hub_add_flags(fv: flags.FlagValues = FLAGS, module_name: str | None = None) -> None:
    d = _definer(fv, module_name or __name__)
    _define_root(d)
    d("string", "model_id", None, "id of the model in the hub (default: derived from MODEL)")
    d("integer", "resolution", None, "EfficientNet-Lite experts: input resolution in pixels (default: native)",
      lower_bound=32)
    d("integer", "batch_size", 32, "images per forward pass of this model", lower_bound=1)
    d("bool", "overwrite", False, "replace a model already registered under the same id")


def define_hub_list_flags(fv: flags.FlagValues = FLAGS, module_name: str | None = None) -> None:
    d = _definer(fv, module_name or __name__)
    _define_root(d)
    d("bool", "json", False, "print the list as JSON")


def define_label_flags(fv: flags.FlagValues = FLAGS, module_name: str | None = None) -> None:
    d = _definer(fv, module_name or __name__)
    _define_root(d)
    d("list", "models", [], "model ids to label (default: every unlabelled or stale model of the hub)")
    d("bool", "recompute", False, "recompute the labels even if they are up to date")
    d("integer", "num_processes", None, "run as this many cooperating processes (jax.distributed; every process runs "
      "the same command with its own --process_id; docs/DISTRIBUTED.md)", lower_bound=1)
    d("integer", "process_id", None, "with --num_processes: this process's id, 0 .. num_processes-1 (0 hosts the "
      "coordinator and commits the labels)", lower_bound=0)
    d("string", "coordinator_address", None, "with --num_processes: host:port of process 0's coordinator, e.g. "
      "127.0.0.1:12345")
    d("bool", "cluster", False, "take the process count, id and coordinator from the cluster environment as JAX "
      "detects it (SLURM srun, Open MPI mpirun, Kubernetes, Cloud TPU)")
    d("integer", "unit_nodes", 64, "nodes per unit of work: a (model, node block) unit is computed by one process and "
      "written at once (a killed process loses at most its unfinished unit)", lower_bound=1)
    d("integer", "heartbeat_timeout", 100, "with several processes: seconds without heartbeats after which a "
      "process counts as dead", lower_bound=1)
    d("float", "wait_timeout", 1800.0, "with several processes: seconds a process waits for the others without "
      "any unit finishing before it fails", lower_bound=1.0)


def define_classify_flags(fv: flags.FlagValues = FLAGS, module_name: str | None = None) -> None:
    d = _definer(fv, module_name or __name__)
    _define_root(d)
    d("string", "classes", None, 'the task: comma-separated class names, e.g. "tabby cat,golden retriever"')
    d("string", "output", None, "also write the predictions to this file: .csv or .json")
    d("bool", "explain", False, "print which experts (models, heads, weights) serve each class")
    d("string", "save_classifier", None, "save the classifier here (.npz) to predict later without re-selection")
    d("string", "classifier", None, "use this saved classifier (no matching or selection; --classes optional)")
    d("integer", "k", None, f"reuse budget: at most k experts per class (default: the system's, {DEFAULT_K})",
      lower_bound=1)
    d("string", "beta", None, f"CHCO loss threshold, a number or 'none' (default: the system's, {DEFAULT_BETA})")
    d("enum", "scorer", None, "expert scorer (default: the system's, chco)", enum_values=list(SCORERS))
    d("enum", "models", "experts", "which models serve the task: experts, vlms (the hub's VLMs), or both (experts "
      "where they cover a class, the VLM ensemble elsewhere)", enum_values=["experts", "vlms", "both"])
    d("enum", "vlm_method", None, "how VLMs are selected (with --models=vlms or both): mll (the MLL-VLM F1 selection, "
      "the default) or chco (the CHCO-style baseline: VLMs as experts over their node-text heads; --models=vlms "
      "only)", enum_values=["mll", "chco"])
    d("integer", "image_size", 224, "images are decoded to this size (shorter side, bicubic, centre crop); "
      "0: keep their size (then all must have the same size)", lower_bound=0)


def _lab_main_command():
    """The lab's main command (``mll_lab.run``): ``mll-jax bench`` is the lab's program, found when it runs so the
    library never imports the lab."""
    try:
        return importlib.import_module("mll_lab.run")
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "mll_lab":
            raise MLLError("mll-jax bench runs the lab's benchmarks (the mll_lab package), which is not installed: "
                           "install the repository with `pip install -e .`") from None
        raise


def define_bench_flags(fv: flags.FlagValues = FLAGS, module_name: str | None = None) -> None:
    run = _lab_main_command()
    run.define_flags(fv, module_name=module_name or run.__name__)


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    args: str  # positional arguments in the usage line
    define: Callable[..., None]
    run: Callable[[Sequence[str]], int]


# ---------------------------------------------------------------------------------------------- helpers

def _open(create_sdag=None):
    """Open the system at --root with the --progress setting (not saved in its config)."""
    root = Path(FLAGS.root).expanduser().absolute()  # the label store (orbax) needs absolute paths
    if create_sdag is None:
        if not root.exists():
            raise _Usage(f"--root={root} does not exist: create the system with `mll-jax sdag build --root={root} "
                         "--wnids=...` (or --roots=...)")
        if not (root / "sdag" / "sdag.json").is_file():
            raise _Usage(f"--root={root} is not an MLL system directory (no sdag/sdag.json): create it with "
                         f"`mll-jax sdag build --root={root} ...`")
    mll = MLL.open(root, sdag=create_sdag)
    return mll.with_config(progress=bool(FLAGS.progress))


def _no_args(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise _Usage(f"unexpected arguments {list(argv[1:])} (flags are written --name=value)")


def _status(msg: str) -> None:
    """A progress line on stderr (with --progress)."""
    if FLAGS.progress:
        print(msg, file=sys.stderr, flush=True)


def _parse_beta(value):
    if value is None or str(value).strip().lower() in ("none", "inf"):
        return None
    try:
        b = float(value)
    except ValueError:
        raise _Usage(f"--beta must be a number or 'none', got {value!r}") from None
    if not math.isfinite(b):
        raise _Usage(f"--beta must be finite or 'none', got {value!r}")
    return b


def _check_wnids(wnids: Sequence[str], flag: str) -> list[str]:
    out = [w.strip() for w in wnids if w.strip()]
    if not out:
        raise _Usage(f"--{flag} is empty")
    for w in out:
        try:
            synset_from_wnid(w)
        except KeyError as e:
            raise _Usage(f"--{flag}: {e.args[0] if e.args else e}") from None
    return out


# ---------------------------------------------------------------------------------------------- commands

def cmd_sdag_build(argv) -> int:
    _no_args(argv)
    roots, wnids = list(FLAGS.roots), list(FLAGS.wnids)
    if roots and wnids:
        raise _Usage("give either --roots (WordNet subtrees) or --wnids (exactly these nodes), not both")
    if FLAGS.close_hypernyms and not wnids:
        raise _Usage("--close_hypernyms goes with --wnids")
    if FLAGS["max_depth"].present and not roots:
        raise _Usage("--max_depth goes with --roots")
    for name in ("per_node", "image_size", "add_missing"):
        if FLAGS[name].present and not FLAGS.images:
            raise _Usage(f"--{name} goes with --images")
    if FLAGS.images and not Path(FLAGS.images).is_dir():
        raise _Usage(f"--images={FLAGS.images} is not a folder")
    root = Path(FLAGS.root)
    exists = (root / "sdag" / "sdag.json").is_file()
    if not (roots or wnids) and not exists:
        raise _Usage(f"{root} holds no SDAG yet: give --roots=WNID,... or --wnids=WNID,...")
    if not (roots or wnids or FLAGS.images):
        raise _Usage("nothing to do: give --roots, --wnids and/or --images")
    graph = None
    if roots:
        graph = SDAG.from_roots(_check_wnids(roots, "roots"), max_depth=FLAGS.max_depth)
    elif wnids:
        graph = SDAG.from_wnids(_check_wnids(wnids, "wnids"), close_hypernyms=FLAGS.close_hypernyms)
    if exists:
        mll = _open()
        if graph is not None:
            added = mll.add_nodes(list(graph.nodes))
            print(f"added {len(added)} new nodes to the SDAG")
    else:
        mll = _open(create_sdag=graph)
        print(f"created the MLL system {root}")
    if FLAGS.images:
        got = mll.add_images_from_folder(FLAGS.images, n_per_node=FLAGS.per_node, image_size=FLAGS.image_size,
                                         add_missing=FLAGS.add_missing, progress=FLAGS.progress)
        print(f"node images: {sum(got.values())} images on {len(got)} nodes from {FLAGS.images}")
    sdag = mll.sdag
    print(f"SDAG: {len(sdag)} nodes, {len(sdag.nodes_with_images())} with images ({root / 'sdag'})")
    return 0


def cmd_hub_add(argv) -> int:
    models = list(argv[1:])
    if not models:
        raise _Usage(f"hub add needs a MODEL: a shipped expert ({', '.join(sorted(SHIPPED_EXPERTS))}), vlm:<CLIP> or "
                     "hf:<name or directory>")
    if FLAGS.model_id is not None and len(models) > 1:
        raise _Usage("--model_id names one model; add the models one at a time")
    for m in models:
        if m in SHIPPED_EXPERTS:
            if FLAGS.resolution is not None and SHIPPED_EXPERTS[m][0] != "efficientnet_lite":
                raise _Usage(f"--resolution applies to the EfficientNet-Lite experts, not {m!r}")
        elif m.startswith(("hf:", "vlm:")):
            kind = m.split(":", 1)[0]
            if not m[len(kind) + 1:]:
                raise _Usage(f"{kind}: needs a model name or directory, e.g. "
                             + ("hf:google/vit-base-patch16-224" if kind == "hf" else "vlm:openai/clip-vit-base-patch32"))
            if FLAGS.resolution is not None:
                raise _Usage(f"--resolution applies to the EfficientNet-Lite experts, not {kind}: models")
        else:
            raise _Usage(f"unknown model {m!r}: give a shipped expert ({', '.join(sorted(SHIPPED_EXPERTS))}), "
                         "hf:<name or directory> (an image classifier) or vlm:<name or directory> (a CLIP model)")
    mll = _open()
    for m in models:
        model_id = FLAGS.model_id
        if m.startswith("hf:") and Path(m[3:]).expanduser().is_dir():  # a local model directory: store it absolute
            local = Path(m[3:]).expanduser().absolute()
            if not (local / "config.json").is_file():
                raise _Usage(f"{local} is not a Hugging Face model directory (no config.json)")
            m, model_id = f"hf:{local}", model_id or local.name
        had = set(mll.model_ids())
        if m.startswith("vlm:"):
            src = m[4:]
            if Path(src).expanduser().is_dir():  # a local checkpoint: stored absolute
                src = str(Path(src).expanduser().absolute())
            mid = mll.add_vlm(src, model_id=model_id, overwrite=FLAGS.overwrite, batch_size=FLAGS.batch_size)
        else:
            mid = mll.add_model(m, model_id=model_id, resolution=FLAGS.resolution, batch_size=FLAGS.batch_size,
                                overwrite=FLAGS.overwrite)
        what = "already in the hub" if mid in had and not FLAGS.overwrite else "added"
        print(f"{mid}: {what} (run `mll-jax label --root={FLAGS.root}` to label it)")
    return 0


def define_hub_remove_flags(fv: flags.FlagValues = FLAGS, module_name: str | None = None) -> None:
    _define_root(_definer(fv, module_name or __name__))


def cmd_hub_remove(argv) -> int:
    ids = list(argv[1:])
    if not ids:
        raise _Usage("hub remove needs model ids (see mll-jax hub list)")
    mll = _open()
    known = set(mll.model_ids())
    unknown = [m for m in ids if m not in known]
    if unknown:  # nothing is removed
        raise _Usage(f"unknown model ids {unknown}; the hub has {sorted(known)}")
    for m in ids:
        mll.remove_model(m)
        print(f"{m}: removed (and its labels)")
    return 0


def _hub_rows(mll) -> list[dict]:
    stale = set(mll.stale_models())
    have = set(mll.labels.model_ids())
    rows = []
    for m in mll.model_ids():
        e = mll.hub.entry(m)
        status = "unlabelled" if m not in have else ("stale" if m in stale else "labelled")
        rows.append({"id": m, "kind": e.get("kind"), "heads": e.get("num_heads"), "status": status,
                     "source": e.get("source")})
    return rows


def cmd_hub_list(argv) -> int:
    _no_args(argv)
    rows = _hub_rows(_open())
    if FLAGS.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print(f"the hub of {FLAGS.root} is empty (mll-jax hub add --root={FLAGS.root} MODEL)")
        return 0
    cols = ("id", "kind", "heads", "status", "source")
    table = [cols] + [tuple("-" if r[c] is None else str(r[c]) for c in cols) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(cols))]
    for t in table:
        print("  ".join(s.ljust(w) for s, w in zip(t, widths)).rstrip())
    return 0


def _start_processes():
    """jax.distributed from the label flags (before any JAX computation); None for one process."""
    given = [f for f in ("num_processes", "process_id", "coordinator_address") if FLAGS[f].value is not None]
    if FLAGS.cluster:
        if given:
            raise _Usage(f"--cluster reads the processes from the cluster environment; do not also give --{given[0]}")
        try:
            return distributed.initialize(cluster=True, heartbeat_timeout_seconds=FLAGS.heartbeat_timeout,
                                          wait_timeout=FLAGS.wait_timeout)
        except ValueError as e:
            raise _Usage(f"--cluster: JAX found no usable cluster environment (SLURM srun, Open MPI mpirun, "
                         f"Kubernetes, Cloud TPU): {e}; give --num_processes, --process_id and "
                         "--coordinator_address instead") from None
    if not given or (FLAGS.num_processes == 1 and FLAGS.coordinator_address is None and not FLAGS.process_id):
        return None
    missing = [f"--{f}" for f in ("num_processes", "process_id", "coordinator_address") if FLAGS[f].value is None]
    if missing:
        raise _Usage(f"several processes need --num_processes, --process_id and --coordinator_address "
                     f"({', '.join(missing)} missing)")
    try:
        return distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                                      heartbeat_timeout_seconds=FLAGS.heartbeat_timeout,
                                      wait_timeout=FLAGS.wait_timeout)
    except ValueError as e:
        raise _Usage(str(e).replace("coordinator_address", "--coordinator_address").replace(
            "process_id=", "--process_id=").replace("num_processes=", "--num_processes=")) from None


def cmd_label(argv) -> int:
    _no_args(argv)
    procs = _start_processes()
    mll = _open()
    models = [m.strip() for m in FLAGS.models if m.strip()] or None  # unknown ids: UnknownModelError -> exit 2
    if not mll.model_ids():
        raise _Usage(f"the hub of {FLAGS.root} is empty: add models first (mll-jax hub add --root={FLAGS.root} MODEL)")
    if not mll.sdag.nodes_with_images():
        raise _Usage(f"the SDAG of {FLAGS.root} has no node images: add some "
                     f"(mll-jax sdag build --root={FLAGS.root} --images=FOLDER)")
    summary = mll.label(models, recompute=FLAGS.recompute, processes=procs, unit_nodes=FLAGS.unit_nodes)
    if not summary:
        print("every model is labelled and up to date")
    for m, s in summary.items():
        here = (f", {s['computed_here']} by process {procs.process_id}"
                if procs is not None and "computed_here" in s else "")
        print(f"{m}: labelled {s.get('labelled')} nodes ({s.get('computed')} computed{here})")
    return 0


def _class_names(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return check_class_names(value.split(","))


def _prediction_rows(clf, images, files) -> tuple[list[dict], list[str]]:
    names = clf.class_names
    scores = clf.scores(images)
    pred = clf.predictions(scores)  # Classifier.predict's rule on the scores computed once
    rows = []
    for f, p, s in zip(files, pred, scores):
        rows.append({"file": str(f), "class": names[p] if p >= 0 else None, "index": int(p),
                     "scores": [float(v) if math.isfinite(v) else None for v in s]})
    return rows, names


def _plain(o):
    """JSON-ready copy: numpy scalars and arrays as Python values, NaN / inf as None (strict JSON)."""
    if isinstance(o, dict):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, np.ndarray)):
        return [_plain(v) for v in (o.tolist() if isinstance(o, np.ndarray) else o)]
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, (int, np.integer)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, Path):
        return str(o)
    return o


def _write_output(path: Path, rows, names, clf, explain) -> None:
    if path.suffix.lower() == ".json":
        sel = clf.selection
        used = sel.used_model_ids if hasattr(sel, "used_model_ids") else sel.used_models
        payload = {"classes": names, "models": list(used), "predictions": rows}
        if explain:
            payload["explain"] = clf.explain()
        atomic_write_text(path, json.dumps(_plain(payload), indent=1, allow_nan=False))
    else:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["file", "class", "index"] + [f"score:{n}" for n in names])
        for r in rows:
            w.writerow([r["file"], "" if r["class"] is None else r["class"], r["index"]]
                       + ["" if v is None else repr(v) for v in r["scores"]])
        atomic_write_text(path, buf.getvalue())


def cmd_classify(argv) -> int:
    paths = list(argv[1:])
    if not paths:
        raise _Usage("classify needs image files or folders: mll-jax classify --root=DIR --classes=... PATH...")
    names = _class_names(FLAGS.classes)
    if names is None and not FLAGS.classifier:
        raise _Usage('give the task\'s classes: --classes="tabby cat,golden retriever" (or --classifier=FILE)')
    beta = _parse_beta(FLAGS.beta) if FLAGS.beta is not None else "config"
    if FLAGS.classifier:
        given = [n for n in ("k", "beta", "scorer") if FLAGS[n].present]
        if given:
            raise _Usage(f"--{', --'.join(given)} cannot change a saved classifier (--classifier): its selection is "
                         "fixed; build a new one with --classes instead")
        if not Path(FLAGS.classifier).is_file():
            raise _Usage(f"--classifier={FLAGS.classifier} does not exist")
    if FLAGS.vlm_method is not None and FLAGS.models == "experts":
        raise _Usage("--vlm_method applies to --models=vlms or --models=both")
    if FLAGS.vlm_method == "chco" and FLAGS.models != "vlms":
        raise _Usage("--vlm_method=chco serves the VLMs only: use it with --models=vlms")
    if FLAGS.output and Path(FLAGS.output).suffix.lower() not in (".csv", ".json"):
        raise _Usage(f"--output={FLAGS.output}: the file must end in .csv or .json")
    for p in paths:
        if not Path(p).exists():
            raise _Usage(f"{p} does not exist")
    images, files = load_images(paths, FLAGS.image_size or None)  # bad image files fail before any model work
    _status(f"{len(images)} images decoded")
    mll = _open()
    if FLAGS.classifier:
        clf = mll.load_classifier(FLAGS.classifier)
        clf.progress = bool(FLAGS.progress)  # this run's display setting, not the saved one
        if names is not None and [n.casefold() for n in names] != [n.casefold() for n in clf.class_names]:
            raise _Usage(f"--classes {names} differ from the saved classifier's {clf.class_names}")
    else:
        overrides = {}
        if FLAGS.k is not None:
            overrides["k"] = FLAGS.k
        if beta != "config":
            overrides["beta"] = beta
        _status(f"building the classifier: matching {len(names)} classes to SDAG nodes, selecting experts")
        if FLAGS.models == "vlms":  # --scorer selects experts; --vlm_method selects the VLMs
            clf = mll.classifier(names, models="vlms", method=FLAGS.vlm_method, **overrides)
        else:  # models=both: the VLM part is the MLL-VLM selection (--vlm_method=mll, the default)
            clf = mll.classifier(names, scorer=FLAGS.scorer, models=FLAGS.models, **overrides)
        _status(repr(clf))
    if FLAGS.save_classifier:
        clf.save(FLAGS.save_classifier)
        print(f"classifier saved to {FLAGS.save_classifier}", file=sys.stderr)
    if FLAGS.explain:
        print(clf.explain_text())
        print()
    rows, names = _prediction_rows(clf, images, files)
    for r in rows:
        print(f"{r['file']}\t{'(abstained)' if r['class'] is None else r['class']}")
    if FLAGS.output:
        _write_output(Path(FLAGS.output), rows, names, clf, FLAGS.explain)
        print(f"predictions written to {FLAGS.output}", file=sys.stderr)
    return 0


def cmd_bench(argv) -> int:
    return _lab_main_command().main(argv)


COMMANDS: dict[str, Command] = {c.name: c for c in [
    Command("sdag build", "create or extend the system's SDAG (WordNet nodes) and its node images",
            "", define_sdag_build_flags, cmd_sdag_build),
    Command("hub add", "register a model: a shipped expert, hf:<name or dir> or vlm:<CLIP name or dir>", "MODEL",
            define_hub_add_flags, cmd_hub_add),
    Command("hub list", "list the hub's models (id, kind, heads, labelled / stale / unlabelled)", "",
            define_hub_list_flags, cmd_hub_list),
    Command("hub remove", "unregister models and delete their labels", "ID...", define_hub_remove_flags,
            cmd_hub_remove),
    Command("label", "label every unlabelled or stale model (only new node data is run; resumable)", "",
            define_label_flags, cmd_label),
    Command("classify", "zero-shot classify images for a task given by class names", "PATH...",
            define_classify_flags, cmd_classify),
    Command("bench", "run the built-in benchmarks (default: the offline Fashion-MNIST one)", "",
            define_bench_flags, cmd_bench),
]}

_GROUPS = sorted({n.split()[0] for n in COMMANDS if " " in n})
_HELP = ("--help", "-h", "-?", "--helpshort", "--helpfull", "-help", "-helpfull")


# ---------------------------------------------------------------------------------------------- help and main

def _flag_lines(cmd: Command, prog: str) -> list[str]:
    fv = flags.FlagValues()
    cmd.define(fv, module_name=cmd.name)
    lines = []
    for name in sorted(fv, key=lambda n: (n != "root", n)):
        f = fv[name]
        if name != f.name or name in ("progress", "traceback"):  # short aliases; common flags (listed once)
            continue
        default = "" if f.default is None or f.default == [] else f" (default: {f.default_as_str})"
        lines.append(f"    --{name}: {f.help}{default}")
    return lines


def top_help(prog: str) -> str:
    out = [f"usage: {prog} COMMAND [flags] [args]", "",
           "MLL: turn a hub of pretrained classifiers into a zero-shot classifier for any class names.", "",
           "commands:"]
    for cmd in COMMANDS.values():
        out.append(f"  {prog} {cmd.name} [flags] {cmd.args}".rstrip())
        out.append(f"      {cmd.summary}")
        if cmd.name == "bench":
            out.append(f"      (flags: {prog} bench --help)")
        else:
            out += _flag_lines(cmd, prog)
        out.append("")
    out.append("every command but bench: --[no]progress (progress bars), --traceback (full traceback on failure)")
    out.append(f"{prog} COMMAND --help: the flags of one command.  Exit codes: 0 ok, 2 bad usage or input, "
               "1 other failure.")
    return "\n".join(out)


def command_help(cmd: Command, cprog: str, full: bool = False) -> str:
    out = [f"usage: {cprog} [flags] {cmd.args}".rstrip(), "", cmd.summary, "", "flags:"]
    fv = flags.FlagValues()
    cmd.define(fv, module_name=cmd.name)
    out += [ln for ln in fv.module_help(cmd.name).splitlines() if ln.strip() and ln.strip() != f"{cmd.name}:"]
    if full:
        cmd.define(FLAGS, module_name=cmd.name)
        out += ["", "all flags (absl included):", FLAGS.get_help()]
    return "\n".join(out)


def _error(prog: str, msg: str) -> None:
    line = " ".join(str(msg).split())
    print(f"{prog}: error: {line}", file=sys.stderr)


def _split_command(argv: Sequence[str]) -> tuple[Command | None, list[str]]:
    """``(command, rest)`` from ``argv[1:]``: the command words come first."""
    args = list(argv[1:])
    if not args or args[0].startswith("-"):
        return None, args
    word = args[0]
    if word in _GROUPS:
        if len(args) < 2 or args[1].startswith("-"):
            subs = [n.split()[1] for n in COMMANDS if n.startswith(word + " ")]
            raise _Usage(f"'{word}' needs a sub-command: {', '.join(f'{word} {s}' for s in subs)}")
        name = f"{word} {args[1]}"
        rest = args[2:]
    else:
        name, rest = word, args[1:]
    if name not in COMMANDS:
        raise _Usage(f"unknown command {name!r}; commands: {', '.join(COMMANDS)}")
    return COMMANDS[name], rest


def _format_warning(message, category, filename, lineno, line=None):
    return f"mll-jax: warning: {message}\n"


def main(argv: Sequence[str] | None = None, *, prog: str = "mll-jax", command_prog: str | None = None) -> int:
    """Run one command (``argv``: ``[program, command words..., flags and args...]``); returns the exit code
    (0 ok, 2 bad usage or input, 1 other failure).  ``command_prog``: the program name in messages and help
    (default ``"<prog> <command>"``)."""
    argv = list(sys.argv if argv is None else argv)
    try:
        cmd, rest = _split_command(argv)
    except _Usage as e:
        _error(prog, e)
        return USAGE_EXIT
    before_dashes = rest[:rest.index("--")] if "--" in rest else rest
    wants_help = [a for a in before_dashes if a in _HELP]
    if cmd is None:
        if wants_help:
            print(top_help(prog))
            return 0
        _error(prog, f"no command given; commands: {', '.join(COMMANDS)} ({prog} --help)")
        return USAGE_EXIT
    cprog = f"{prog} {cmd.name}" if command_prog is None else (command_prog or prog)
    if wants_help:
        print(command_help(cmd, cprog, full=any("full" in a for a in wants_help)))
        return 0
    cmd.define(FLAGS, module_name=cmd.name)
    if cmd.name != "bench":
        flags.mark_flag_as_required("root", flag_values=FLAGS)

    def parse(args):
        try:
            FLAGS.unparse_flags()
            return FLAGS(args)
        except flags.Error as e:
            _error(cprog, e)
            sys.exit(USAGE_EXIT)

    def run_main(args):
        old_format = warnings.formatwarning
        warnings.formatwarning = _format_warning
        try:
            if cmd.name != "bench":
                if not FLAGS["verbosity"].present:
                    logging.set_verbosity(logging.WARNING)
            return cmd.run(args) or 0
        except MLLError as e:  # bad input (2), damaged data (3), a missing install or a failed peer (1)
            if e.exit_code == FAILURE_EXIT and "traceback" in FLAGS and FLAGS.traceback:
                raise
            _error(cprog, e)
            return exit_code(e)
        except (_Usage, app.UsageError, ValueError, FileNotFoundError, NotADirectoryError) as e:
            _error(cprog, e)
            return USAGE_EXIT
        except KeyboardInterrupt:
            _error(cprog, "interrupted")
            return 130
        except Exception as e:  # noqa: BLE001  one line; --traceback shows everything
            if "traceback" in FLAGS and FLAGS.traceback:
                raise
            _error(cprog, f"{type(e).__name__}: {e}" + ("" if "traceback" not in FLAGS else
                                                        " (--traceback shows the full traceback)"))
            return FAILURE_EXIT
        finally:
            warnings.formatwarning = old_format

    try:
        app.run(run_main, argv=[cprog] + rest, flags_parser=parse)
    except SystemExit as e:
        code = e.code
        return code if isinstance(code, int) else (0 if code is None else FAILURE_EXIT)
    return 0


def exit_with(code_fn: Callable[[], int]) -> None:
    """``sys.exit(code_fn())``, quietly when stdout is a closed pipe (``mll-jax --help | head``)."""
    try:
        code = code_fn()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        code = FAILURE_EXIT
    sys.exit(code)


def entry_point() -> None:
    """Console script ``mll-jax``."""
    exit_with(lambda: main(sys.argv))


if __name__ == "__main__":
    entry_point()
