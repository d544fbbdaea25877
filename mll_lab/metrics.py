"""Metrics of the zero-shot benchmarks (paper Table 1) and their plain-text table.

* ``coverage``: fraction of test images whose true class is covered (has at least one expert);
* ``acc_covered`` (Acc(c)): accuracy on the test images of covered classes;
* ``acc_all`` (Acc(a)): accuracy on all test images; images of uncovered classes count as wrong unless a patch
  exists (then the patch's prediction counts);
* ``n_models``: number of distinct experts the task uses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["evaluate_scores", "TaskResult", "summarize", "format_percent", "format_results"]


def evaluate_scores(scores: np.ndarray, y: np.ndarray, covered: np.ndarray, *, patched: bool) -> dict:
    """Metrics of class scores ``(N, C)`` against labels ``y`` given the covered classes (paper Table 1).

    Without a patch, images of uncovered classes always count as wrong (their classes score 0 and could only win
    ties); with a patch the prediction counts as it is.
    """
    scores = np.asarray(scores)
    y = np.asarray(y)
    covered = np.asarray(covered, bool)
    pred = np.argmax(scores, axis=1) if len(scores) else np.zeros(0, int)
    correct = pred == y
    cov = covered[y] if len(y) else np.zeros(0, bool)
    n = len(y)
    C = len(covered)
    per_class = [float(np.mean(correct[y == c])) if np.any(y == c) else float("nan") for c in range(C)]
    return {
        "n_test": int(n),
        "coverage": float(cov.mean()) if n else float("nan"),
        "acc_covered": float(correct[cov].mean()) if cov.any() else float("nan"),
        "acc_all": float((correct if patched else correct & cov).mean()) if n else float("nan"),
        "per_class_accuracy": per_class,
        "predictions": pred,
    }


@dataclass
class TaskResult:
    task: str
    method: str
    k: int
    beta: float | None
    class_names: list
    wnids: list  # matched node per class (None: no node)
    node_names: list
    similarities: list
    experts: list  # per class: list of model ids (empty: uncovered)
    covered: list
    n_test: int
    coverage: float
    acc_covered: float
    acc_all: float
    n_models: int
    per_class_accuracy: list
    patched: bool = False
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        for key in ("coverage", "acc_covered", "acc_all"):
            if d[key] is not None and not np.isfinite(d[key]):
                d[key] = None
        d["per_class_accuracy"] = [None if not np.isfinite(a) else a for a in d["per_class_accuracy"]]
        return d


def summarize(results: Sequence[TaskResult]) -> dict:
    """Mean metrics over tasks (Acc(c) over the tasks where it is defined)."""
    if not results:
        return {}

    def mean(vals):
        vals = [v for v in vals if v is not None and np.isfinite(v)]
        return float(np.mean(vals)) if vals else float("nan")

    return {
        "tasks": len(results),
        "acc_covered": mean(r.acc_covered for r in results),
        "coverage": mean(r.coverage for r in results),
        "acc_all": mean(r.acc_all for r in results),
        "n_models": mean(r.n_models for r in results),
    }


def format_percent(v, pct=True):
    """A metric as printed in the tables: percent with one decimal (or the number itself), "-" if undefined."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{100 * v:.1f}" if pct else f"{v:.1f}"


def format_results(results: Sequence[TaskResult], *, details: bool = True) -> str:
    """A plain-text table: one row per (task, method) plus the mean per method."""
    lines = []
    hdr = f"{'task':<28} {'method':<7} {'Acc(c)':>7} {'cover':>7} {'Acc(a)':>7} {'#models':>8}"
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for r in results:
        lines.append(f"{r.task:<28} {r.method:<7} {format_percent(r.acc_covered):>7} {format_percent(r.coverage):>7} "
                     f"{format_percent(r.acc_all):>7} {r.n_models:>8d}")
    lines.append("-" * len(hdr))
    for m in dict.fromkeys(r.method for r in results):
        s = summarize([r for r in results if r.method == m])
        lines.append(f"{'MEAN':<28} {m:<7} {format_percent(s['acc_covered']):>7} {format_percent(s['coverage']):>7} "
                     f"{format_percent(s['acc_all']):>7} {format_percent(s['n_models'], pct=False):>8}")
    if details:
        lines.append("")
        for r in results:
            if r.method != "chco":
                continue
            parts = []
            for c, w, nm, sim, ex in zip(r.class_names, r.wnids, r.node_names, r.similarities, r.experts):
                node = f"{nm} ({w}, {sim:.2f})" if w else f"no node (best {sim:.2f})"
                parts.append(f"    {c!r} -> {node}; experts: {', '.join(ex) if ex else 'UNCOVERED'}")
            lines.append(f"{r.task}:")
            lines.extend(parts)
    return "\n".join(lines)


