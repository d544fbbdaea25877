"""Shared code of the experiments (Table 1, Table 2, Figure 3, Figure 4).

Every experiment takes the flags of the main command (``python -m mll_lab.run --helpfull``: ``--home``, ``--k``,
``--beta``, ``--delta``, ``--tasks``, the offline options and the paper-setting options ``--imagenet_dir``,
``--test_dir``, ``--tasks_file``, ``--hf_models``, ``--clip_model``) plus ``--out_dir``, builds the same benchmark
(cached under ``--home``, so after one ``python -m mll_lab.run`` the experiments only evaluate) and writes its
table with provenance (:func:`mll_lab.results.write_results`: ``<name>.json`` + ``<name>.md``, figures as PNG next
to them) to ``--out_dir`` (default: the repository's ``results/`` or ``$MLL_RESULTS_DIR``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Sequence

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run as `python experiments/table1.py` from a checkout
    sys.path.insert(0, str(_ROOT))

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from mll_lab import run as lab_run  # noqa: E402
from mll_lab.benchmark import TaskResult, summarize  # noqa: E402
from mll_lab.results import markdown_table, results_dir, write_results  # noqa: E402
from mll_lab.tables import config_summary, fmt  # noqa: E402

FLAGS = flags.FLAGS
#: Load averages when the experiment started (recorded in the result files).
LOAD_AT_START = os.getloadavg()


def define_flags() -> None:
    """The experiments' flags: the benchmark flags of the main command plus ``--out_dir``, defined by the
    experiment program that imports this module (listed in its ``--help``)."""
    program = sys.argv[0]
    lab_run.define_flags(FLAGS, module_name=program)
    if "out_dir" not in FLAGS:
        flags.DEFINE_string("out_dir", None, "where tables (JSON, Markdown) and figures (PNG) go "
                            "(default: the repository's results/ folder, or $MLL_RESULTS_DIR)", module_name=program)


define_flags()  # this module is part of the experiment programs (experiments/*.py), not of the library

__all__ = ["FLAGS", "make_benchmark", "tasks_from_flags", "run_grid", "write_table", "jsonable", "markdown_table",
           "fmt", "mean_row", "out_dir", "config_summary", "Timer"]


def out_dir() -> Path:
    d = Path(FLAGS.out_dir) if FLAGS.out_dir else results_dir()
    d.mkdir(parents=True, exist_ok=True)
    return d


def make_benchmark():
    """The benchmark of the command-line flags, built (experts, SDAG, labels, text encoder)."""
    lab_run.quiet_logging()
    bench = lab_run.make_benchmark(lab_run.config_from_flags())
    t = time.perf_counter()
    bench.build()
    print(f"[{type(bench).__name__}] {len(bench.model_ids)} models, {len(bench.candidate_nodes())} labelled nodes, "
          f"built in {time.perf_counter() - t:.1f}s (home {bench.home})", flush=True)
    return bench


def tasks_from_flags(bench):
    return lab_run.select_tasks(bench, FLAGS.tasks)


def run_grid(bench, tasks, *, methods: Sequence[str] = ("chco",), progress_desc: str = "", **kw) -> list[TaskResult]:
    """Every task x method (matching once per task); ``kw`` go to :meth:`run_task` (k, beta, model_ids)."""
    out = []
    for task in tqdm(tasks, desc=progress_desc or "tasks", unit="task", leave=False,
                     disable=not bench.config.progress):
        matches = bench.match(task.class_names)
        for m in methods:
            out.append(bench.run_task(task, method=m, matches=matches, **kw))
    return out


def jsonable(o):
    """``o`` with numpy scalars / arrays and :class:`TaskResult` s turned into JSON values (NaN -> None)."""
    if isinstance(o, TaskResult):
        return o.to_json()
    if isinstance(o, dict):
        return {k: jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return jsonable(o.tolist())
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return None if not np.isfinite(o) else float(o)
    return o


def write_table(name: str, data: dict, markdown: str, title: str) -> Path:
    """Write ``<out_dir>/<name>.json`` and ``<name>.md`` with provenance; returns the Markdown path."""
    _, md = write_results(name, jsonable(data), markdown, title=title, load_at_start=LOAD_AT_START,
                          directory=out_dir())
    return md


def mean_row(results: Sequence[TaskResult]) -> dict:
    return summarize(results)


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __str__(self) -> str:
        return f"{time.perf_counter() - self.t0:.1f}s"
