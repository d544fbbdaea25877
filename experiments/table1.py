"""Table 1: MLL (CHCO selection) vs the selection baselines Random, HEU, LogME and LEEP.

For every task and method: Acc(c) (accuracy on the test images of covered classes), coverage (fraction of test
images whose class is covered), Acc(a) (accuracy on all test images; uncovered count as wrong unless a CLIP patch is
configured) and the number of models used; then the mean over tasks.  Every method shares the matching, the budget
``--k`` and the reuse step; ``--beta`` thresholds CHCO and HEU (same loss scale), Random / LogME / LEEP rank only.

    python experiments/table1.py --out_dir=runs/experiments            # offline Fashion-MNIST benchmark
    python experiments/table1.py --imagenet_dir=... --test_dir=... --tasks_file=... --hf_models=... \\
        --clip_model=openai/clip-vit-base-patch32                       # the paper's setting

Writes table1.json and table1.md (with provenance) to --out_dir (default: results/).
"""

from __future__ import annotations

from absl import app, flags

import common  # noqa: F401  (path set-up + shared flags)
from common import FLAGS, LOAD_AT_START, Timer, make_benchmark, out_dir, run_grid, tasks_from_flags
from mll_lab.run import parse_methods
from mll_lab.tables import table1_markdown, write_table1

flags.DEFINE_list("table1_methods", ["chco", "random", "heu", "logme", "leep"], "methods (rows) of Table 1")


def main(argv):
    del argv
    timer = Timer()
    methods = parse_methods(FLAGS.table1_methods)
    bench = make_benchmark()
    tasks = tasks_from_flags(bench)
    results = run_grid(bench, tasks, methods=methods, progress_desc="table1")
    _, p = write_table1("table1", bench, tasks, results, methods, load_at_start=LOAD_AT_START, directory=out_dir())
    md, _ = table1_markdown(bench, tasks, results, methods)
    print(md.split("## Per task")[0].rstrip())
    print(f"\nwritten {p} (and table1.json) in {timer}")


if __name__ == "__main__":
    app.run(main)
