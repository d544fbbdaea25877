"""Table 2: HEU (the single best head per class, read from the labels) vs CHCO (optimal head combination).

Both score models from the labels alone and share the loss scale, the threshold ``--beta``, the budget ``--k`` and
the reuse step, so the difference is the predictor: HEU's one-hot head vs CHCO's convex head combination.  Also
a sweep over ``--beta_sweep`` (coverage / accuracy trade-off of the threshold) for both.

Writes table2.json and table2.md (with provenance) to --out_dir (default: results/).
"""

from __future__ import annotations

from absl import app, flags

import common  # noqa: F401
from common import FLAGS, Timer, config_summary, fmt, make_benchmark, markdown_table, mean_row, run_grid, \
    tasks_from_flags, write_table
from mll_lab.run import parse_beta

flags.DEFINE_list("beta_sweep", ["none", "1.0", "0.8", "0.6", "0.4"], "beta values of the threshold sweep")


def main(argv):
    del argv
    timer = Timer()
    bench = make_benchmark()
    tasks = tasks_from_flags(bench)
    results = run_grid(bench, tasks, methods=("heu", "chco"), progress_desc="table2")
    per = []
    for t in tasks:
        rh = next(r for r in results if r.task == t.name and r.method == "heu")
        rc = next(r for r in results if r.task == t.name and r.method == "chco")
        per.append([t.name, fmt(rh.acc_covered), fmt(rh.coverage), fmt(rh.acc_all), rh.n_models,
                    fmt(rc.acc_covered), fmt(rc.coverage), fmt(rc.acc_all), rc.n_models])
    sh = mean_row([r for r in results if r.method == "heu"])
    sc = mean_row([r for r in results if r.method == "chco"])
    per.append(["**mean**", fmt(sh["acc_covered"]), fmt(sh["coverage"]), fmt(sh["acc_all"]), fmt(sh["n_models"], False),
                fmt(sc["acc_covered"]), fmt(sc["coverage"]), fmt(sc["acc_all"]), fmt(sc["n_models"], False)])
    hdr = ["task", "HEU Acc(c)", "HEU cov", "HEU Acc(a)", "HEU #m", "CHCO Acc(c)", "CHCO cov", "CHCO Acc(a)", "CHCO #m"]
    sweep, sweep_rows = {}, []
    for b in FLAGS.beta_sweep:
        beta = parse_beta(b)
        rs = run_grid(bench, tasks, methods=("heu", "chco"), beta=beta, progress_desc=f"beta={beta}")
        for m in ("heu", "chco"):
            s = mean_row([r for r in rs if r.method == m])
            sweep[f"{m}@{beta}"] = s
            sweep_rows.append([m.upper(), "none" if beta is None else beta, fmt(s["acc_covered"]), fmt(s["coverage"]),
                               fmt(s["acc_all"]), fmt(s["n_models"], False)])
    md = [f"Benchmark {type(bench).__name__}, k={bench.config.k}, beta={bench.config.beta}, delta={bench.config.delta} "
          "(percentages).", "", markdown_table(hdr, per), "", "## Threshold sweep (means over tasks)", "",
          markdown_table(["method", "beta", "Acc(c) %", "coverage %", "Acc(a) %", "#models"], sweep_rows)]
    p = write_table("table2", {"config": config_summary(bench), "summary": {"heu": sh, "chco": sc},
                               "beta_sweep": sweep, "results": results}, "\n".join(md), "Table 2: HEU vs CHCO")
    print("\n".join(md))
    print(f"\nwritten {p} (and table2.json) in {timer}")


if __name__ == "__main__":
    app.run(main)
