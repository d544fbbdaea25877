"""Offline VLM benchmark (issue 8): MLL for vision-language models on a hub of small Fashion-MNIST dual encoders.

    MLL_JAX_HOME=... python experiments/vlm_offline.py --out_dir=results/vlm_offline

What it runs and writes: :mod:`mll_lab.vlm_benchmark` (this script only parses the flags; the main command
``python -m mll_lab.run`` runs the same benchmark after the expert one).  The table also goes, with provenance, to
``results/vlm_table.{json,md}`` (``$MLL_RESULTS_DIR`` overrides the folder), the figures next to it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mll_lab.vlm_benchmark import VLMBenchConfig, run  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    d = VLMBenchConfig()
    flags.DEFINE_string("home", d.home, "cache root (default $MLL_JAX_HOME or ~/.cache/mll_jax); uses <home>/vlm_offline")
    flags.DEFINE_string("out_dir", d.out_dir, "where the table, json and figures go")
    flags.DEFINE_integer("max_k", d.max_k, "largest number of VLMs per class", lower_bound=1)
    flags.DEFINE_integer("random_draws", d.random_draws, "draws of the Random baseline per task and k", lower_bound=1)
    flags.DEFINE_integer("test_per_class", d.test_per_class, "test images per task class (default: all)", lower_bound=1)
    flags.DEFINE_float("alpha", d.alpha, "weight of a class's own F1 in the selection score", lower_bound=0, upper_bound=1)
    flags.DEFINE_enum("descriptions", d.descriptions, ["none", "wordnet"],
                      "class descriptions for matching: none (plain names) or the first WordNet noun sense")
    flags.DEFINE_integer("top", d.top, "nodes matched per class (the paper: 5)", lower_bound=1)
    flags.DEFINE_list("models", list(d.models), "restrict the hub to these model ids (default: all of VLM_SPECS)")
    flags.DEFINE_bool("rebuild", d.rebuild, "retrain the VLMs")
    flags.DEFINE_bool("with_experts", d.with_experts, "also run the expert benchmark's selection and the union "
                      "experts + VLMs")
    flags.DEFINE_integer("hub_orders", d.hub_orders, "random hub orders for the accuracy-vs-hub-size curve",
                         lower_bound=1)
    flags.DEFINE_bool("chco", d.chco, "also the CHCO-style baseline (VLMs as experts over their node-text heads)")
    flags.DEFINE_float("chco_scale", d.chco_scale, "CHCO-VLM: the heads' logit scale (scale * cos)", lower_bound=0)
    flags.DEFINE_float("chco_beta", d.chco_beta, "CHCO-VLM: the CHCO loss threshold")


def main(argv):
    del argv
    run(VLMBenchConfig(home=FLAGS.home, out_dir=FLAGS.out_dir, max_k=FLAGS.max_k, random_draws=FLAGS.random_draws,
                       test_per_class=FLAGS.test_per_class, alpha=FLAGS.alpha, descriptions=FLAGS.descriptions,
                       top=FLAGS.top, models=tuple(FLAGS.models), rebuild=FLAGS.rebuild,
                       with_experts=FLAGS.with_experts, hub_orders=FLAGS.hub_orders, chco=FLAGS.chco,
                       chco_scale=FLAGS.chco_scale, chco_beta=FLAGS.chco_beta))


if __name__ == "__main__":
    define_flags()
    app.run(main)
