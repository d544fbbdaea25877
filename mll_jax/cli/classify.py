"""``mll-jax classify``: class names (or a saved classifier) and image files in, predictions out (stdout, CSV or
JSON)."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np

from mll_jax.errors import SKIPPED_EXIT, UsageError
from mll_jax.images import load_images
from mll_jax.text import parse_class_specs, read_class_file
from mll_jax.utils import atomic_write_text

from .common import open_system, parse_beta, status
from .flags import FLAGS

#: How messages of :func:`mll_jax.images.load_images` name its arguments here: by the flags.
FLAG_NAMES = {"size": "--image_size", "on_error": "--on_error", "max_pixels": "--max_pixels"}

__all__ = ["FLAG_NAMES", "cmd_classify", "class_specs_flags", "prediction_rows", "json_ready", "write_output"]


def class_specs_flags(classes: str | None, classes_file: str | None):
    """``(names, specs)`` from ``--classes`` or ``--classes_file`` (``(None, None)`` when neither is given);
    ``specs`` is None when no class names a synset or carries a description (the names are matched as they are)."""
    if classes is not None and classes_file is not None:
        raise UsageError("give the task's classes once: --classes or --classes_file, not both")
    if classes_file is not None:
        if not Path(classes_file).is_file():
            raise UsageError(f"--classes_file={classes_file} does not exist")
        specs = read_class_file(classes_file)
    elif classes is not None:
        specs = parse_class_specs(classes)
    else:
        return None, None
    names = [s.name for s in specs]
    return names, (specs if any(s.wnid or s.description for s in specs) else None)


def prediction_rows(clf, images, files) -> tuple[list[dict], list[str]]:
    names = clf.class_names
    scores = clf.scores(images)
    pred = clf.predictions(scores)  # Classifier.predict's rule on the scores computed once
    rows = []
    for f, p, s in zip(files, pred, scores):
        rows.append({"file": str(f), "class": names[p] if p >= 0 else None, "index": int(p),
                     "scores": [float(v) if math.isfinite(v) else None for v in s]})
    return rows, names


def json_ready(o):
    """JSON-ready copy: numpy scalars and arrays as Python values, NaN / inf as None (strict JSON)."""
    if isinstance(o, dict):
        return {str(k): json_ready(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, np.ndarray)):
        return [json_ready(v) for v in (o.tolist() if isinstance(o, np.ndarray) else o)]
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, (int, np.integer)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, Path):
        return str(o)
    return o


def write_output(path: Path, rows, names, clf, explain, skipped=()) -> None:
    """The predictions as JSON (``classes``, ``models``, ``predictions``, ``explain``, and ``skipped`` files with
    their reasons when there are any) or CSV (one row per file; a skipped file has the class ``(skipped)``)."""
    if path.suffix.lower() == ".json":
        sel = clf.selection
        used = sel.used_model_ids if hasattr(sel, "used_model_ids") else sel.used_models
        payload = {"classes": names, "models": list(used), "predictions": rows}
        if explain:
            payload["explain"] = clf.explain()
        if skipped:
            payload["skipped"] = [{"file": str(sk.path), "reason": sk.reason} for sk in skipped]
        atomic_write_text(path, json.dumps(json_ready(payload), indent=1, allow_nan=False))
    else:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["file", "class", "index"] + [f"score:{n}" for n in names])
        for r in rows:
            w.writerow([r["file"], "" if r["class"] is None else r["class"], r["index"]]
                       + ["" if v is None else repr(v) for v in r["scores"]])
        for sk in skipped:
            w.writerow([str(sk.path), "(skipped)", ""] + [""] * len(names))
        atomic_write_text(path, buf.getvalue())


def cmd_classify(argv) -> int:
    paths = list(argv[1:])
    if not paths:
        raise UsageError("classify needs image files or folders: mll-jax classify --root=DIR --classes=... PATH...")
    names, specs = class_specs_flags(FLAGS.classes, FLAGS.classes_file)
    if names is None and not FLAGS.classifier:
        raise UsageError('give the task\'s classes: --classes="tabby cat,golden retriever" (or --classes_file=FILE, '
                         '--classifier=FILE)')
    if specs is not None and FLAGS.models == "vlms":
        raise UsageError("classes with synsets or descriptions serve the experts' matching; --models=vlms matches "
                         "class names by text: give plain names")
    beta = parse_beta(FLAGS.beta) if FLAGS.beta is not None else "config"
    if FLAGS.classifier:
        given = [n for n in ("k", "beta", "scorer") if FLAGS[n].present]
        if given:
            raise UsageError(f"--{', --'.join(given)} cannot change a saved classifier (--classifier): its selection is "
                         "fixed; build a new one with --classes instead")
        if not Path(FLAGS.classifier).is_file():
            raise UsageError(f"--classifier={FLAGS.classifier} does not exist")
    if FLAGS.vlm_method is not None and FLAGS.models == "experts":
        raise UsageError("--vlm_method applies to --models=vlms or --models=both")
    if FLAGS.vlm_method == "chco" and FLAGS.models != "vlms":
        raise UsageError("--vlm_method=chco serves the VLMs only: use it with --models=vlms")
    if FLAGS.output and Path(FLAGS.output).suffix.lower() not in (".csv", ".json"):
        raise UsageError(f"--output={FLAGS.output}: the file must end in .csv or .json")
    for p in paths:
        if not Path(p).exists():
            raise UsageError(f"{p} does not exist")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # skipped files are listed one by one below
        loaded = load_images(paths, FLAGS.image_size or None, on_error=FLAGS.on_error,
                             max_pixels=FLAGS.max_pixels or None, arg_names=FLAG_NAMES)  # before any model work
    images, files = loaded
    for s in loaded.skipped:
        print(f"mll-jax classify: skipped {s.path}: {s.reason}", file=sys.stderr)
    status(f"{len(images)} images decoded" + (f", {len(loaded.skipped)} files skipped" if loaded.skipped else ""))
    mll = open_system()
    if FLAGS.classifier:
        clf = mll.load_classifier(FLAGS.classifier)
        clf.progress = bool(FLAGS.progress)  # this run's display setting, not the saved one
        if names is not None and [n.casefold() for n in names] != [n.casefold() for n in clf.class_names]:
            raise UsageError(f"--classes {names} differ from the saved classifier's {clf.class_names}")
    else:
        overrides = {}
        if FLAGS.k is not None:
            overrides["k"] = FLAGS.k
        if beta != "config":
            overrides["beta"] = beta
        status(f"building the classifier: matching {len(names)} classes to SDAG nodes, selecting experts")
        if FLAGS.models == "vlms":  # --scorer selects experts; --vlm_method selects the VLMs
            clf = mll.classifier(names, models="vlms", method=FLAGS.vlm_method, **overrides)
        else:  # models=both: the VLM part is the MLL-VLM selection (--vlm_method=mll, the default)
            clf = mll.classifier(names, scorer=FLAGS.scorer, models=FLAGS.models, specs=specs, **overrides)
        status(repr(clf))
    if FLAGS.save_classifier:
        clf.save(FLAGS.save_classifier)
        print(f"classifier saved to {FLAGS.save_classifier}", file=sys.stderr)
    if FLAGS.explain:
        print(clf.explain_text())
        print()
    rows, names = prediction_rows(clf, images, files)
    for r in rows:
        print(f"{r['file']}\t{'(abstained)' if r['class'] is None else r['class']}")
    for sk in loaded.skipped:
        print(f"{sk.path}\t(skipped)")
    if FLAGS.output:
        write_output(Path(FLAGS.output), rows, names, clf, FLAGS.explain, skipped=loaded.skipped)
        print(f"predictions written to {FLAGS.output}", file=sys.stderr)
    return SKIPPED_EXIT if loaded.skipped else 0
