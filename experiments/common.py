"""Shared code of the experiments (Table 1, Table 2, Figure 3, Figure 4).

Every experiment takes the flags of the main command (``python -m mll_jax.run --helpfull``: ``--home``, ``--k``,
``--beta``, ``--delta``, ``--tasks``, the offline options and the paper-setting options ``--imagenet_dir``,
``--test_dir``, ``--tasks_file``, ``--hf_models``, ``--clip_model``) plus ``--out_dir``, builds the same benchmark
(cached under ``--home``, so after one ``python -m mll_jax.run`` the experiments only evaluate) and writes its
numbers as JSON + Markdown (and figures as PNG) to ``--out_dir``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Sequence

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run as `python experiments/table1.py` from a checkout
    sys.path.insert(0, str(_ROOT))

from absl import flags  # noqa: E402

from mll_jax import run as _run  # noqa: E402
from mll_jax.offline.benchmark import TaskResult, summarize  # noqa: E402
from mll_jax.utils import atomic_write_text, home  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The experiments' flags: the benchmark flags of ``python -m mll_jax.run`` plus ``--out_dir``, defined by the
    experiment program that imports this module (listed in its ``--help``)."""
    program = sys.argv[0]
    _run.define_flags(FLAGS, module_name=program)
    if "out_dir" not in FLAGS:
        flags.DEFINE_string("out_dir", None, "where tables (JSON, Markdown) and figures (PNG) go "
                            "(default: <home>/experiments, home = --home or $MLL_JAX_HOME or ~/.cache/mll_jax)",
                            module_name=program)


define_flags()  # this module is part of the experiment programs (experiments/*.py), not of the library

__all__ = ["FLAGS", "make_benchmark", "tasks_from_flags", "run_grid", "write_json", "write_text",
           "markdown_table", "fmt", "mean_row", "out_dir", "Timer"]


def out_dir() -> Path:
    d = Path(FLAGS.out_dir) if FLAGS.out_dir else home(FLAGS.home) / "experiments"
    d.mkdir(parents=True, exist_ok=True)
    return d


def make_benchmark():
    """The benchmark of the command-line flags, built (experts, SDAG, labels, text encoder)."""
    _run.quiet_logging()
    bench = _run.make_benchmark(_run.config_from_flags())
    t = time.perf_counter()
    bench.build()
    print(f"[{type(bench).__name__}] {len(bench.model_ids)} models, {len(bench.candidate_nodes())} labelled nodes, "
          f"built in {time.perf_counter() - t:.1f}s (home {bench.home})", flush=True)
    return bench


def tasks_from_flags(bench):
    return _run.select_tasks(bench, FLAGS.tasks)


def run_grid(bench, tasks, *, methods: Sequence[str] = ("chco",), progress_desc: str = "", **kw) -> list[TaskResult]:
    """Every task x method (matching once per task); ``kw`` go to :meth:`run_task` (k, beta, model_ids)."""
    from tqdm.auto import tqdm

    out = []
    for task in tqdm(tasks, desc=progress_desc or "tasks", unit="task", leave=False,
                     disable=not bench.config.progress):
        matches = bench.match(task.class_names)
        for m in methods:
            out.append(bench.run_task(task, method=m, matches=matches, **kw))
    return out


def write_json(name: str, obj) -> Path:
    p = out_dir() / name
    atomic_write_text(p, json.dumps(obj, indent=1, default=_json_default))
    return p


def write_text(name: str, text: str) -> Path:
    p = out_dir() / name
    atomic_write_text(p, text)
    return p


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, TaskResult):
        return o.to_json()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def fmt(v, pct: bool = True) -> str:
    import math

    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{100 * v:.1f}" if pct else f"{v:.2f}"


def mean_row(results: Sequence[TaskResult]) -> dict:
    return summarize(results)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def config_summary(bench) -> dict:
    c = bench.config
    return {"benchmark": type(bench).__name__, "k": c.k, "beta": c.beta, "delta": c.delta,
            "models": list(bench.model_ids), "test_per_class": c.test_per_class, "node_text": c.node_text,
            "clip_model": c.clip_model}


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __str__(self) -> str:
        return f"{time.perf_counter() - self.t0:.1f}s"
