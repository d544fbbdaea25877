"""Table 1 of the expert benchmark as a result file with provenance (``results/table1.{json,md}``).

Rows: the selection methods; columns: Acc(c), coverage, Acc(a) (percent) and the number of models used, each the
mean over the tasks (:func:`mll_lab.metrics.summarize`).  The JSON also holds every per-task row and the
benchmark's configuration.  Written by the main command (:mod:`mll_lab.run`) and ``experiments/table1.py``.
"""

from __future__ import annotations

import math
from typing import Sequence

from mll_lab.metrics import TaskResult, summarize
from mll_lab.results import markdown_table, write_results

__all__ = ["METHOD_NAMES", "fmt", "config_summary", "table1_markdown", "write_table1"]

#: How the tables name the selection methods.
METHOD_NAMES = {"chco": "MLL (CHCO)", "random": "Random", "heu": "HEU", "logme": "LogME", "leep": "LEEP"}


def fmt(v, pct: bool = True) -> str:
    """A table cell: percent with one decimal, or (``pct=False``) the number with two; "-" if undefined."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{100 * v:.1f}" if pct else f"{v:.2f}"


def config_summary(bench) -> dict:
    """The settings of a built benchmark that a table depends on."""
    c = bench.config
    return {"benchmark": type(bench).__name__, "k": c.k, "beta": c.beta, "delta": c.delta,
            "models": list(bench.model_ids), "test_per_class": c.test_per_class, "node_text": c.node_text,
            "clip_model": c.clip_model}


def table1_markdown(bench, tasks, results: Sequence[TaskResult], methods: Sequence[str]) -> tuple[str, dict]:
    """(Markdown: the mean table and the per-task table, summary per method)."""
    rows, summary = [], {}
    for m in methods:
        s = summarize([r for r in results if r.method == m])
        summary[m] = s
        rows.append([METHOD_NAMES.get(m, m), fmt(s["acc_covered"]), fmt(s["coverage"]), fmt(s["acc_all"]),
                     fmt(s["n_models"], False)])
    per = []
    for t in tasks:
        for m in methods:
            for r in results:
                if r.task == t.name and r.method == m:
                    per.append([t.name, METHOD_NAMES.get(m, m), fmt(r.acc_covered), fmt(r.coverage), fmt(r.acc_all),
                                r.n_models])
    md = [f"Benchmark {type(bench).__name__}, {len(tasks)} tasks, k={bench.config.k}, beta={bench.config.beta}, "
          f"delta={bench.config.delta}, hub of {len(bench.model_ids)} models; means over the tasks.", "",
          markdown_table(["method", "Acc(c) %", "coverage %", "Acc(a) %", "#models"], rows), "",
          "## Per task", "",
          markdown_table(["task", "method", "Acc(c) %", "coverage %", "Acc(a) %", "#models"], per)]
    return "\n".join(md), summary


def write_table1(name: str, bench, tasks, results: Sequence[TaskResult], methods: Sequence[str], *,
                 load_at_start=None, directory=None):
    """Write Table 1 as ``<results>/<name>.{json,md}`` (:func:`mll_lab.results.write_results`); returns both
    paths."""
    md, summary = table1_markdown(bench, tasks, results, methods)
    data = {"config": config_summary(bench), "methods": list(methods), "summary": summary,
            "results": [r.to_json() for r in results]}
    return write_results(name, data, md, title="Table 1: zero-shot accuracy of MLL vs selection baselines",
                         load_at_start=load_at_start, directory=directory)
