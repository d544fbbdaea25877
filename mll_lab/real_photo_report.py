"""Tables, ablations, figure and ``results/`` files of the real-photo benchmark (:mod:`mll_lab.real_photo_benchmark`).

:func:`run_report` runs the benchmark as configured, then CHCO and HEU again with one setting changed each
(:data:`ABLATIONS`: no loss threshold, no label smoothing, class names matched by text alone), and writes
``results/real_photo_bench.{json,md}`` and ``results/real_photo_hub_size.png`` (mean accuracy over the tasks against
the number of experts in the hub).  Used by ``benchmarks/real_photo_bench.py`` and by the main command
(``mll-jax bench``).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from mll_jax.utils import home as cache_home
from mll_lab.real_photo_benchmark import METHODS, RealPhotoBenchmark, RealPhotoConfig
from mll_lab.results import markdown_table, results_dir, write_results

__all__ = ["NAME", "FIGURE", "ABLATIONS", "results_tables", "ablations", "ablation_table", "hub_size_figure",
           "describe", "run_report"]

NAME = "real_photo_bench"
FIGURE = "real_photo_hub_size.png"
#: the settings examined one at a time: no loss threshold, no label smoothing (Eq. 2), text-only matching
ABLATIONS = (("beta=None", {"beta": None}), ("delta=0", {"delta": 0.0}),
             ("text matching only", {"match_wordnet": False}))
_ORDER = METHODS + ("chco-sparse90", "chco-meanprob")


def _pct(x) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


def results_tables(data: dict) -> str:
    """The Markdown tables of a run: per task and method at each k, the oracle, and the mean over tasks."""
    ks = data["ks"]
    rows = []
    header = ["task", "n", "method"] + [f"k={k} acc % [95% Wilson]" for k in ks] + \
        [f"coverage % / Acc(c) % (k={ks[-1]})", f"heads per class (k={ks[-1]}, median; 90%)", f"experts (k={ks[-1]})"]
    for name, d in data["tasks"].items():
        methods = sorted({key.split("@")[0] for key in d["methods"]},
                         key=_ORDER.index)
        for m in methods:
            cells = []
            for k in ks:
                s = d["methods"][f"{m}@k={k}"]
                lo, hi = s["wilson95"]
                cells.append(f"{_pct(s['accuracy'])} [{_pct(lo)}, {_pct(hi)}]")
            s = d["methods"][f"{m}@k={ks[-1]}"]
            heads = " / ".join(f"{int(a)}; {int(b)}" for a, b in zip(s["heads_median"], s["heads90_median"]))
            experts = _common_experts(s["experts"], d["classes"])
            rows.append([name, d["n"], m, *cells, f"{_pct(s['coverage'])} / {_pct(s.get('acc_covered'))}", heads,
                         experts])
        if not d["oracle"]:
            continue
        best = max(d["oracle"], key=lambda m: (d["oracle"][m]["accuracy"], m))
        o = d["oracle"][best]
        lo, hi = o["wilson95"]
        rows.append([name, d["n"], f"oracle ({best})", *([f"{_pct(o['accuracy'])} [{_pct(lo)}, {_pct(hi)}]"] +
                                                          [""] * (len(ks) - 1)), _pct(o["coverage"]), "", best])
    lines = [markdown_table(header, rows)]
    mean_rows = []
    names = list(data["tasks"])
    first = data["tasks"][names[0]]["methods"]
    for m in sorted({key.split("@")[0] for key in first}, key=_ORDER.index):
        cells = [_pct(np.mean([data["tasks"][t]["methods"][f"{m}@k={k}"]["accuracy"] for t in names])) for k in ks]
        mean_rows.append([m, *cells])
    if all(data["tasks"][t]["oracle"] for t in names):
        orc = np.mean([max(v["accuracy"] for v in data["tasks"][t]["oracle"].values()) for t in names])
        mean_rows.append(["oracle (best single expert per task)", _pct(orc)] + [""] * (len(ks) - 1))
    lines.append("Mean accuracy over the tasks (%):\n\n"
                 + markdown_table(["method"] + [f"k={k}" for k in ks], mean_rows))
    if data.get("output_scale"):
        lines.append("How confident each expert is on the photos (means over the photos):\n\n" + markdown_table(
            ["expert", "std of its logits", "largest softmax probability"],
            [[m, f"{v['logit_std']:.2f}", f"{v['max_probability']:.2f}"] for m, v in data["output_scale"].items()]))
    return "\n\n".join(lines)


def _common_experts(per_fold: list, classes: list) -> str:
    """Per class, the experts selected in most folds."""
    out = []
    for c, name in enumerate(classes):
        counts: dict[tuple, int] = {}
        for fold in per_fold:
            key = tuple(fold[c])
            counts[key] = counts.get(key, 0) + 1
        best = max(counts, key=counts.get) if counts else ()
        out.append(f"{name}: {'+'.join(best) if best else 'none'}")
    return "; ".join(out)


def ablations(cfg: RealPhotoConfig, *, photos=None, encoder=None) -> dict:
    """Mean accuracy over the tasks of CHCO, its sparser predictor, CHCO on mean-probability labels and HEU with one
    setting changed at a time."""
    out = {}
    for name, change in ABLATIONS:
        c = dataclasses.replace(cfg, methods=("chco", "heu"), oracle=False, hub_sizes=False, **change)
        d = RealPhotoBenchmark(c, photos=photos, encoder=encoder).run()
        keys = next(iter(d["tasks"].values()))["methods"]
        out[name] = {key: {"mean_accuracy": float(np.mean([t["methods"][key]["accuracy"]
                                                           for t in d["tasks"].values()])),
                           "per_task": {n: t["methods"][key]["accuracy"] for n, t in d["tasks"].items()}}
                     for key in keys}
    return out


def ablation_table(data: dict) -> str:
    ks = data["ks"]
    tasks = data["tasks"].values()
    base = {key: {"mean_accuracy": float(np.mean([t["methods"][key]["accuracy"] for t in tasks]))}
            for key in next(iter(data["tasks"].values()))["methods"]}
    rows = []
    for name, res in [("as configured", base), *data.get("ablations", {}).items()]:
        for m in ("chco", "chco-sparse90", "chco-meanprob", "heu"):
            if f"{m}@k={ks[0]}" in res:
                rows.append([name, m] + [_pct(res[f"{m}@k={k}"]["mean_accuracy"]) for k in ks])
    return "Mean accuracy over the tasks (%) with one setting changed:\n\n" + markdown_table(
        ["setting", "method"] + [f"k={k}" for k in ks], rows)


def hub_size_figure(data: dict, path) -> None:
    """Mean accuracy over the tasks against the number of experts in the hub (mean over the hub subsets; band:
    the worst and the best subset)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=120)
    x = []
    for m, style in (("chco", "o-"), ("heu", "s--")):
        sizes = sorted(data["hub_size"][m], key=int)
        x = [int(s) for s in sizes]
        acc = [np.array(data["hub_size"][m][s]["accuracy"], float) for s in sizes]
        ax.plot(x, [100 * np.nanmean(a) for a in acc], style, label={"chco": "MLL (CHCO)", "heu": "HEU"}[m])
        ax.fill_between(x, [100 * np.nanmin(a) for a in acc], [100 * np.nanmax(a) for a in acc], alpha=0.15)
    ax.set_xlabel("experts in the hub")
    ax.set_ylabel("mean accuracy over tasks (%)")
    ax.set_xticks(x)
    ax.set_title(f"Real photos, k={max(data['ks'])} (band: worst to best hub)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def describe(data: dict) -> str:
    return (f"{data['photos']} real photos in {data['folds']} folds by (synset, source) (sizes {data['fold_sizes']}); "
            "node and test photos of every fold disjoint by content hash; hub: "
            f"{', '.join(data['models'])}; beta = {data['beta']}, delta = {data['delta']}, class names matched "
            f"{'through WordNet senses first' if data['match_wordnet'] else 'by text'}.  Accuracy counts every test "
            "photo of the task (a photo of an uncovered class is an error).  Heads per class: heads with weight "
            "> 1e-3 in the class's predictor columns, summed over its experts, median over folds; after the "
            "semicolon, the heads carrying 90% of its contribution on the matched node.  chco-sparse90: the CHCO "
            "selection with each column cut to those heads.  chco-meanprob: CHCO on labels made of each node's mean "
            "softmax output instead of the softmax of its mean logits (an experiment on the label statistic).  Oracle: the best single expert on the test photos (its "
            "CHCO columns, no loss threshold).  Acc(c): accuracy on the photos whose class is covered.")


def run_report(cfg: RealPhotoConfig | None = None, *, write: bool = True, with_ablations: bool = True,
               root=None, name: str = NAME) -> tuple[dict, str]:
    """Run the benchmark (and the ablations), print nothing; write ``results/<name>.*`` (the hub-size figure:
    ``results/<name>_hub_size.png``, :data:`FIGURE` for the default name) unless ``write`` is False.
    Returns the data and the Markdown.  Compiled programs are kept in ``<home>/real_photo_bench/jax_cache`` (JAX's
    persistent compilation cache), so the ablations and later runs skip most compilation."""
    cfg = cfg or RealPhotoConfig()
    load = os.getloadavg()
    # the ablation runs compile the same CHCO / LogME / LEEP shapes again: keep compiled programs on disk
    jax.config.update("jax_compilation_cache_dir", str(cache_home(cfg.home) / "real_photo_bench" / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    bench = RealPhotoBenchmark(cfg, root=root)
    data = bench.run()
    if with_ablations:
        data["ablations"] = ablations(cfg, photos=bench.photos, encoder=bench.encoder)
    md = results_tables(data) + "\n\n" + ablation_table(data) + "\n\n" + describe(data)
    if write:
        figure = FIGURE if name == NAME else f"{name}_hub_size.png"
        if "hub_size" in data:
            md += f"\n\n![accuracy against hub size]({figure})"
        write_results(name, data, md, title="Real photos: real experts, CHCO against the baselines",
                      load_at_start=load)
        if "hub_size" in data:  # after the provenance, which records whether the tree was clean
            hub_size_figure(data, results_dir() / figure)
    return data, md
