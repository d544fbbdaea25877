"""Selection as a user runs it: a fresh process opens an existing system and selects experts for tasks.

The scale benchmark (``benchmarks/scale_bench.py``) measures every stage inside the one process that also built and
labelled the system, so its peak memory includes the build.  This script opens the system that run left behind
(``<work_dir>/point_<nodes>/mll``), draws the same task classes (:func:`mll_lab.scale.pick_classes`), and per task
measures matching, the first ``select`` (with XLA's compilation) and the same call again, with the peak resident
memory of this process after each task.

    python benchmarks/select_bench.py --system=/tmp/s24_full/point_11000 --classes=20,37,101

``--compile_cache=DIR`` turns on JAX's persistent compilation cache (:func:`mll_jax.utils.compile_cache`, what the
CLI does by default): run twice, the second process's first calls load what the first compiled
(``results/select_bench_cached.md``: ``--name=select_bench_cached`` on the second run).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import resource  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

from mll_jax import MLL  # noqa: E402
from mll_jax.utils import compile_cache  # noqa: E402
from mll_lab.results import markdown_table, write_results  # noqa: E402
from mll_lab.scale import pick_classes  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("system", None, "a scale-benchmark point: the directory holding mll/ and text_cache/",
                    required=True)
flags.DEFINE_list("classes", ["20", "37", "101"], "task sizes (classes drawn as the scale benchmark draws them)")
flags.DEFINE_integer("seed", 0, "the scale benchmark's seed (task of C classes: seed + C)")
flags.DEFINE_string("name", "select_bench", "results/<name>.{json,md}")
flags.DEFINE_string("compile_cache", None, "JAX's persistent compilation cache in this directory (default: off)")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv):
    del argv
    load = os.getloadavg()
    root = os.path.join(FLAGS.system, "mll")
    if not os.path.isdir(root):
        raise app.UsageError(f"{root} does not exist: run benchmarks/scale_bench.py with --work_dir first")
    cache_entries = None
    if FLAGS.compile_cache:
        cache_entries = len(list(compile_cache(FLAGS.compile_cache).iterdir()))
    t = time.perf_counter()
    mll = MLL.open(root, text_cache=os.path.join(FLAGS.system, "text_cache"))
    open_s = time.perf_counter() - t
    models = mll.labelled_models()
    rows, data = [], {"system": FLAGS.system, "nodes": len(mll.sdag), "models": len(models),
                      "open_s": open_s, "compile_cache": FLAGS.compile_cache, "compile_cache_entries": cache_entries,
                      "tasks": {}}
    for c in (int(v) for v in FLAGS.classes):
        names = pick_classes(mll.sdag, c, FLAGS.seed + c)
        t = time.perf_counter()
        matches = mll.match(names)
        match_s = time.perf_counter() - t
        times = []
        for _ in range(2):
            t = time.perf_counter()
            sel = mll.select(names, matches=matches)
            times.append(time.perf_counter() - t)
        d = {"match_s": match_s, "select_s": times[0], "select_warm_s": times[1], "peak_rss_mb": _peak_mb(),
             "covered": int(sel.covered.sum()), "models_used": len(sel.used_model_ids)}
        data["tasks"][str(c)] = d
        rows.append([c, f"{match_s:.2f}", f"{times[0]:.2f}", f"{times[1]:.2f}", f"{d['peak_rss_mb']:.0f}",
                     f"{d['covered']}/{c}", d["models_used"]])
        print(f"C={c}: match {match_s:.2f} s, select {times[0]:.2f} s, again {times[1]:.2f} s, "
              f"peak RSS {d['peak_rss_mb']:.0f} MB", flush=True)
    md = (f"A fresh process opens the system at `{FLAGS.system}` ({data['nodes']} SDAG nodes, {data['models']} "
          f"labelled experts; open {open_s:.2f} s) and selects experts with CHCO for tasks of C classes (drawn as "
          "the scale benchmark draws them); peak RSS: of this process, after the task. "
          + ("JAX's persistent compilation cache: off." if cache_entries is None else
             f"JAX's persistent compilation cache on, holding {cache_entries} programs when the process started.")
          + "\n\n"
          + markdown_table(["C", "match s", "select s (first call)", "select s (again)", "peak RSS MB", "covered",
                            "models used"], rows))
    write_results(FLAGS.name, data, md, title="Selection in a fresh process", load_at_start=load)


if __name__ == "__main__":
    app.run(main)
