"""Figure 4: zero-shot accuracy as the hub grows from empty to full.

The hub's models are added one at a time in ``--orders`` random orders (seeded); after each addition every task is
run with CHCO selection restricted to the models present.  With an empty hub every class is uncovered (Acc(a) = 0,
or the CLIP patch's accuracy if ``--clip_model`` is set).  Plotted: mean over orders and tasks of Acc(a) and
coverage, with the min-max band over orders.  Writes fig4.png, fig4.json and fig4.md (with provenance) to --out_dir (default: results/).
"""

from __future__ import annotations

import numpy as np
from absl import app, flags

import common  # noqa: F401
from common import FLAGS, Timer, config_summary, fmt, make_benchmark, markdown_table, mean_row, out_dir, run_grid, \
    tasks_from_flags, write_table

flags.DEFINE_integer("orders", 3, "number of random orders in which the hub grows", lower_bound=1)
flags.DEFINE_integer("order_seed", 0, "seed of the orders")


def main(argv):
    del argv
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timer = Timer()
    bench = make_benchmark()
    tasks = tasks_from_flags(bench)
    ids = list(bench.model_ids)
    rng = np.random.default_rng(FLAGS.order_seed)
    orders = [list(rng.permutation(ids)) for _ in range(FLAGS.orders)]
    sizes = list(range(len(ids) + 1))
    acc = np.zeros((len(orders), len(sizes)))
    accc = np.full((len(orders), len(sizes)), np.nan)
    cov = np.zeros((len(orders), len(sizes)))
    nmod = np.zeros((len(orders), len(sizes)))
    for o, order in enumerate(orders):
        for j in sizes:
            rs = run_grid(bench, tasks, model_ids=order[:j], progress_desc=f"order {o} size {j}")
            s = mean_row(rs)
            acc[o, j], cov[o, j], nmod[o, j] = s["acc_all"], s["coverage"], s["n_models"]
            accc[o, j] = s["acc_covered"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for arr, lab, sty in ((acc, "Acc(a)", "o-"), (cov, "coverage", "s--")):
        ax.plot(sizes, 100 * arr.mean(0), sty, label=lab)
        ax.fill_between(sizes, 100 * arr.min(0), 100 * arr.max(0), alpha=0.2)
    ax.set_xlabel("models in the hub")
    ax.set_ylabel("% (mean over tasks)")
    ax.set_xticks(sizes)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"MLL as the hub grows [{type(bench).__name__}, {len(orders)} orders, k={bench.config.k}]")
    fig.tight_layout()
    png = out_dir() / "fig4.png"
    fig.savefig(png, dpi=120)
    rows = [[j, fmt(acc[:, j].mean()), fmt(cov[:, j].mean()), fmt(np.nanmean(accc[:, j]) if np.isfinite(accc[:, j]).any()
                                                                  else float("nan")), fmt(nmod[:, j].mean(), False)]
            for j in sizes]
    md = [f"![fig4]({png.name})", "",
          "Orders: " + "; ".join(" > ".join(o) for o in orders), "",
          markdown_table(["#models in hub", "Acc(a) %", "coverage %", "Acc(c) %", "#models used"], rows)]
    write_table("fig4", {"config": config_summary(bench), "orders": orders, "sizes": sizes,
                         "acc_all": acc.tolist(), "coverage": cov.tolist(), "n_models": nmod.tolist(),
                         "acc_covered": np.where(np.isfinite(accc), accc, -1).tolist()}, "\n".join(md),
                "Figure 4: accuracy as the hub grows")
    print("\n".join(md))
    print(f"\nwritten {png} in {timer}")


if __name__ == "__main__":
    app.run(main)
