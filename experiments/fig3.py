"""Figure 3: accuracy and number of models used vs the reuse budget k = 1..5 (CHCO selection).

Mean over tasks of Acc(c), Acc(a) (left axis) and the number of models used (right panel).
Writes fig3.png, fig3.json and fig3.md (with provenance) to --out_dir (default: results/).
"""

from __future__ import annotations

from absl import app, flags

import common  # noqa: F401
from common import FLAGS, Timer, config_summary, fmt, make_benchmark, markdown_table, mean_row, out_dir, run_grid, \
    tasks_from_flags, write_table

flags.DEFINE_list("k_values", ["1", "2", "3", "4", "5"], "reuse budgets to sweep")


def main(argv):
    del argv
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timer = Timer()
    bench = make_benchmark()
    tasks = tasks_from_flags(bench)
    ks = [int(k) for k in FLAGS.k_values]
    rows, points = [], []
    for k in ks:
        rs = run_grid(bench, tasks, k=k, progress_desc=f"k={k}")
        s = mean_row(rs)
        points.append({"k": k, **s, "per_task": {r.task: r.to_json() for r in rs}})
        rows.append([k, fmt(s["acc_covered"]), fmt(s["coverage"]), fmt(s["acc_all"]), fmt(s["n_models"], False)])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax1.plot(ks, [100 * p["acc_covered"] for p in points], "o-", label="Acc(c)")
    ax1.plot(ks, [100 * p["acc_all"] for p in points], "s--", label="Acc(a)")
    ax1.set_xlabel("reuse budget k")
    ax1.set_ylabel("accuracy (%)")
    ax1.set_xticks(ks)
    ax1.grid(alpha=0.3)
    ax1.legend()
    ax2.plot(ks, [p["n_models"] for p in points], "d-", color="tab:green")
    ax2.set_xlabel("reuse budget k")
    ax2.set_ylabel("models used per task (mean)")
    ax2.set_xticks(ks)
    ax2.grid(alpha=0.3)
    fig.suptitle(f"MLL (CHCO) vs k  [{type(bench).__name__}, {len(tasks)} tasks, beta={bench.config.beta}]")
    fig.tight_layout()
    png = out_dir() / "fig3.png"
    fig.savefig(png, dpi=120)
    md = [f"![fig3]({png.name})", "",
          markdown_table(["k", "Acc(c) %", "coverage %", "Acc(a) %", "#models"], rows)]
    write_table("fig3", {"config": config_summary(bench), "points": points}, "\n".join(md),
                "Figure 3: accuracy and #models vs k")
    print("\n".join(md))
    print(f"\nwritten {png} in {timer}")


if __name__ == "__main__":
    app.run(main)
