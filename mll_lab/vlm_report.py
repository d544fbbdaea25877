"""Files of the offline VLM benchmark (:mod:`mll_lab.vlm_benchmark`): JSON, Markdown table, two figures.

In ``out_dir``: ``vlm_offline.json`` (config, hub, per-task rows, summary, timings), ``vlm_offline.md`` (the table,
the hub, accuracy vs hub size, the selections), ``vlm_accuracy_vs_k.png`` and ``vlm_accuracy_vs_hub_size.png``.
The same table and numbers are written with provenance as ``results/vlm_table.{json,md}``
(:func:`mll_lab.results.write_results`), the figures next to them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mll_jax.utils import atomic_write_json, atomic_write_text
from mll_lab.results import results_dir, write_results

__all__ = ["FIGURES", "vlm_document", "vlm_markdown", "plot_figures", "write_report"]

#: The figure files (in ``out_dir``, copied next to the result table).
FIGURES = ("vlm_accuracy_vs_k.png", "vlm_accuracy_vs_hub_size.png")


def vlm_document(cfg, hub_info: list, results: list, summary: dict, timings: dict) -> dict:
    """The JSON document: config, hub, per-task rows, summary, timings."""
    return {"config": {"alpha": cfg.alpha, "top": cfg.top, "max_k": cfg.max_k, "random_draws": cfg.random_draws,
                       "test_per_class": cfg.test_per_class, "descriptions": cfg.descriptions,
                       "with_experts": cfg.with_experts, "hub_orders": cfg.hub_orders, "chco": cfg.chco,
                       "chco_scale": cfg.chco_scale, "chco_beta": cfg.chco_beta, "chco_delta": cfg.chco_delta},
            "hub": hub_info, "tasks": results, "summary": summary, "timings_s": timings}


def vlm_markdown(cfg, hub_info: list, results: list, summary: dict, timings: dict, *, chco: bool,
                 with_experts: bool) -> list[str]:
    """The lines of ``vlm_offline.md`` (its first line is the title)."""
    ks = sorted(results[0]["mll"])
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    head = (["task"] + [f"MLL k={k}" for k in ks] + [f"MLL-task k={k}" for k in ks] + [f"Random k={k}" for k in ks] +
            ["INB", "mean single", "oracle", "all-ensemble"] +
            ([f"CHCO-VLM k={k} (cov.)" for k in ks] + ["CHCO-VLM k=1 + MLL patch"] if chco else []) +
            (["experts (cov.)", "experts + VLMs"] if with_experts else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results + [dict(task="**mean**", mll=summary["mll"], mll_task=summary["mll_task"],
                             random=summary["random"], inb=summary["inb"],
                             mean_single=summary["mean_single"], oracle=summary["oracle"],
                             all_ensemble=summary["all_ensemble"], experts=summary.get("experts"),
                             chco=summary.get("chco"), chco_cov=summary.get("chco_cov"),
                             chco_patched=summary.get("chco_patched"),
                             union=summary.get("union"), expert_coverage=summary.get("expert_coverage"))]:
        cells = [r["task"]] + [pct(r["mll"][k]) for k in ks] + [pct(r["mll_task"][k]) for k in ks] + \
                [pct(r["random"][k]) for k in ks] + \
                [pct(r["inb"]), pct(r["mean_single"]), pct(r["oracle"]), pct(r["all_ensemble"])]
        if chco:
            cells += [f"{pct(r['chco'][k])} ({pct(r['chco_cov'][k])})" for k in ks] + [pct(r["chco_patched"][1])]
        if with_experts:
            cells += [f"{pct(r['experts'])} ({pct(r['expert_coverage'])})", pct(r["union"])]
        lines.append("| " + " | ".join(cells) + " |")
    sel_lines = [f"- **{r['task']}**: all-node scope: "
                 + "; ".join(f"{c} -> {', '.join(m)}" for c, m in r["selection"].items())
                 + ". Task scope: " + "; ".join(f"{c} -> {', '.join(m)}" for c, m in r["selection_task"].items())
                 + f". (INB: {r['inb_model']}, oracle: {r['oracle_model']})"
                 + ("" if not chco else ". CHCO-VLM: " + "; ".join(
                     f"{c} [{r['chco_match'][c][0]}] -> {', '.join(m) if m else 'uncovered'}"
                     for c, m in r["chco_selection"].items())) for r in results]
    hub_lines = ["| model | arch | trained classes | imgs/class | steps | width | dim | SDAG acc |", "|" + "---|" * 8]
    hub_lines += [f"| {h['model_id']} | {h['arch']} | {', '.join(h['classes'])} | {h['per_class']} | {h['steps']} | "
                  f"{h['width']} | {h['dim']} | {pct(h['sdag_accuracy'])} |" for h in hub_info]
    md = ["# Offline VLM benchmark (measured)", "",
          f"Top-1 accuracy (%) on the official Fashion-MNIST test images of each task; alpha={cfg.alpha}, "
          f"top-{cfg.top} nodes per class, "
          f"Random = mean of {cfg.random_draws} draws; descriptions={cfg.descriptions}. "
          + ("" if not chco else
             f"CHCO-VLM: heads {cfg.chco_scale:g} * cos over the node texts, beta={cfg.chco_beta}, "
             f"delta={cfg.chco_delta}, uncovered classes count as wrong (cov. = share of test images whose class "
             f"is covered; {timings['chco_vlm_s']:.1f} s wall, {timings['chco_vlm_cpu_s']:.1f} s CPU in all). ") +
          f"Total run time {timings['total_s']:.0f} s (train/load {timings['train_or_load_s']:.0f} s, "
          f"label {timings['label_s']:.0f} s).", "", *lines, "", "## Hub", "", *hub_lines, "",
          "## Accuracy vs hub size (MLL-VLM k=1)", "",
          f"Mean over {cfg.hub_orders} random hub orders and the {len(results)} tasks; the hub is the first n VLMs "
          "of each order.", "",
          "| n VLMs | " + " | ".join(str(n) for n in summary["hub_size"]) + " |",
          "|---|" + "---|" * len(summary["hub_size"]),
          "| MLL-VLM k=1 | " + " | ".join(pct(v["mll"]) for v in summary["hub_size"].values()) + " |",
          "| oracle single VLM of the sub-hub | " + " | ".join(pct(v["oracle"]) for v in summary["hub_size"].values())
          + " |", "",
          "## Selected VLMs (k=1)", "", *sel_lines, ""]
    return md


def plot_figures(out_dir: Path, summary: dict, n_tasks: int, cfg, *, chco: bool, with_experts: bool) -> None:
    """The two figures (accuracy vs k, accuracy vs hub size) as PNG files in ``out_dir``."""
    ks = sorted(summary["mll"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.0, 3.8))
    ax.plot(ks, [100 * summary["mll"][k] for k in ks], "o-", label="MLL-VLM (labels among all nodes)")
    ax.plot(ks, [100 * summary["mll_task"][k] for k in ks], "^-", label="MLL-VLM (task-scoped labels)")
    ax.plot(ks, [100 * summary["random"][k] for k in ks], "s--", label="Random (same k, same reuse)")
    if chco:
        ax.plot(ks, [100 * summary["chco"][k] for k in ks], "d-", color="tab:purple",
                label="CHCO-VLM (expert-style labels; uncovered wrong)")
    for name, style in (("oracle", ":"), ("inb", "-."), ("mean_single", "--"), ("all_ensemble", "-")):
        ax.axhline(100 * summary[name], ls=style, color="gray" if name != "oracle" else "k", lw=1,
                   label={"oracle": "oracle single VLM", "inb": "INB (best SDAG acc.)",
                          "mean_single": "random single VLM (expected)", "all_ensemble": "ensemble of all VLMs"}[name])
    ax.set_xlabel("k (VLMs selected per class)")
    ax.set_ylabel(f"mean top-1 accuracy over {n_tasks} tasks (%)")
    ax.set_xticks(ks)
    if with_experts:
        ax.axhline(100 * summary["union"], ls="-", color="tab:red", lw=1, label="experts + MLL-VLM patch")
        ax.axhline(100 * summary["experts"], ls="--", color="tab:red", lw=1, label="experts only (uncovered wrong)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "vlm_accuracy_vs_k.png", dpi=120)
    plt.close(fig)
    hs = sorted(summary["hub_size"])
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(hs, [100 * summary["hub_size"][n]["mll"] for n in hs], "o-", label="MLL-VLM k=1")
    ax.plot(hs, [100 * summary["hub_size"][n]["oracle"] for n in hs], "k:", label="oracle single VLM of the sub-hub")
    ax.set_xlabel("VLMs in the hub (first n of a random order)")
    ax.set_ylabel(f"mean top-1 accuracy over {n_tasks} tasks (%)")
    ax.set_title(f"mean over {cfg.hub_orders} random hub orders", fontsize=8)
    ax.set_xticks(hs)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "vlm_accuracy_vs_hub_size.png", dpi=120)
    plt.close(fig)


def write_report(out_dir: Path, cfg, hub_info: list, results: list, summary: dict, timings: dict, *, chco: bool,
                 with_experts: bool, load_at_start=None) -> None:
    """Write every file (see the module docstring)."""
    out_dir = Path(out_dir)
    doc = vlm_document(cfg, hub_info, results, summary, timings)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "vlm_offline.json", doc, default=str)
    md = vlm_markdown(cfg, hub_info, results, summary, timings, chco=chco, with_experts=with_experts)
    atomic_write_text(out_dir / "vlm_offline.md", "\n".join(md))
    plot_figures(out_dir, summary, len(results), cfg, chco=chco, with_experts=with_experts)
    res_dir = results_dir()
    write_results("vlm_table", doc, "\n".join(md[1:]), title=md[0].lstrip("# "), load_at_start=load_at_start,
                  directory=res_dir)
    if res_dir.resolve() != out_dir.resolve():
        for f in FIGURES:
            shutil.copyfile(out_dir / f, res_dir / f)
