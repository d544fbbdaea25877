"""Table 1: MLL (CHCO selection) vs the selection baselines Random, HEU, LogME and LEEP.

For every task and method: Acc(c) (accuracy on the test images of covered classes), coverage (fraction of test
images whose class is covered), Acc(a) (accuracy on all test images; uncovered count as wrong unless a CLIP patch is
configured) and the number of models used; then the mean over tasks.  Every method shares the matching, the budget
``--k`` and the reuse step; ``--beta`` thresholds CHCO and HEU (same loss scale), Random / LogME / LEEP rank only.

    python experiments/table1.py --out_dir=runs/experiments            # offline Fashion-MNIST benchmark
    python experiments/table1.py --imagenet_dir=... --test_dir=... --tasks_file=... --hf_models=... \\
        --clip_model=openai/clip-vit-base-patch32                       # the paper's setting

Writes table1.json and table1.md to --out_dir.
"""

from __future__ import annotations

from absl import app, flags

import common  # noqa: F401  (path set-up + shared flags)
from common import FLAGS, Timer, config_summary, fmt, make_benchmark, markdown_table, mean_row, run_grid, \
    tasks_from_flags, write_json, write_text
from mll_jax.run import parse_methods

flags.DEFINE_list("table1_methods", ["chco", "random", "heu", "logme", "leep"], "methods (rows) of Table 1")

NAMES = {"chco": "MLL (CHCO)", "random": "Random", "heu": "HEU", "logme": "LogME", "leep": "LEEP"}


def main(argv):
    del argv
    timer = Timer()
    methods = parse_methods(FLAGS.table1_methods)
    bench = make_benchmark()
    tasks = tasks_from_flags(bench)
    results = run_grid(bench, tasks, methods=methods, progress_desc="table1")
    rows, summary = [], {}
    for m in methods:
        s = mean_row([r for r in results if r.method == m])
        summary[m] = s
        rows.append([NAMES[m], fmt(s["acc_covered"]), fmt(s["coverage"]), fmt(s["acc_all"]), fmt(s["n_models"], False)])
    md = ["# Table 1: zero-shot accuracy of MLL vs selection baselines", "",
          f"Benchmark {type(bench).__name__}, {len(tasks)} tasks, k={bench.config.k}, beta={bench.config.beta}, "
          f"delta={bench.config.delta}, hub of {len(bench.model_ids)} models.", "",
          markdown_table(["method", "Acc(c) %", "coverage %", "Acc(a) %", "#models"], rows), "",
          "## Per task", ""]
    per = []
    for t in tasks:
        for m in methods:
            (r,) = [x for x in results if x.task == t.name and x.method == m]
            per.append([t.name, NAMES[m], fmt(r.acc_covered), fmt(r.coverage), fmt(r.acc_all), r.n_models])
    md.append(markdown_table(["task", "method", "Acc(c) %", "coverage %", "Acc(a) %", "#models"], per))
    p = write_text("table1.md", "\n".join(md) + "\n")
    write_json("table1.json", {"config": config_summary(bench), "summary": summary, "results": results})
    print("\n".join(md[:7]))
    print(f"\nwritten {p} (and table1.json) in {timer}")


if __name__ == "__main__":
    app.run(main)
