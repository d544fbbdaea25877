"""Offline VLM benchmark (issue 8): MLL for vision-language models on a hub of small Fashion-MNIST dual encoders.

    MLL_JAX_HOME=... python experiments/vlm_offline.py --out_dir=docs/vlm

1. Trains (or reuses from ``<home>/vlm_offline/hub``) the dual encoders of :data:`mll_jax.vlm.offline.VLM_SPECS`
   on the expert-pool split.
2. Builds the SDAG (the ten Fashion-MNIST class synsets, 50 SDAG-split images each) and labels every VLM over it
   (:func:`mll_jax.vlm.labels.label_vlm`, resumable store ``<home>/vlm_offline/labels``).
3. For every task (``mll_jax.offline.data.TASKS`` + :data:`EXTRA_TASKS`, natural names, the official test split):
   top-1 accuracy of MLL-VLM (k = 1..max_k; selection from the labels only; with the stored labels among all
   nodes, and task-scoped: prediction among the nodes the task matched, the authors' rule), Random (k VLMs drawn
   per class,
   mean over ``--random_draws`` draws, same reuse), INB (single VLM with the best ImageNet accuracy from metadata;
   the offline hub has none, so the best zero-shot accuracy on the SDAG images), the mean single VLM (= expected
   accuracy of a uniformly random single VLM), the oracle single best VLM on the task, and the entropy-weighted
   ensemble of all VLMs.
4. With ``--with_experts`` (default): the expert benchmark (:class:`mll_jax.offline.benchmark.OfflineBenchmark`,
   its trained experts and labels; trained on first use under the same home, or reused from its cache) gives
   per task the expert selection (CHCO, its default config); "experts" is its Acc(a) (uncovered classes count as
   wrong) and "union" serves the classes the experts do not cover with the MLL-VLM k=1 ensemble as the patch
   (:func:`mll_jax.vlm.system.patch_logits`, the rule of ``MLL.classifier(models="both")``).
5. Accuracy vs hub size: MLL-VLM k=1 with the hub restricted to its first n VLMs in ``--hub_orders`` random
   orders (mean over orders and tasks), with the oracle single VLM of the same sub-hub for reference.

Writes ``vlm_offline.json``, ``vlm_offline.md``, ``vlm_accuracy_vs_k.png`` and ``vlm_accuracy_vs_hub_size.png``
to ``--out_dir``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FLAGS = flags.FLAGS


def define_flags() -> None:
    from mll_jax.vlm.benchmark import VLMBenchConfig

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


def main(argv):
    del argv
    from mll_jax.vlm.benchmark import VLMBenchConfig, run

    run(VLMBenchConfig(home=FLAGS.home, out_dir=FLAGS.out_dir, max_k=FLAGS.max_k, random_draws=FLAGS.random_draws,
                       test_per_class=FLAGS.test_per_class, alpha=FLAGS.alpha, descriptions=FLAGS.descriptions,
                       top=FLAGS.top, models=tuple(FLAGS.models), rebuild=FLAGS.rebuild,
                       with_experts=FLAGS.with_experts, hub_orders=FLAGS.hub_orders))


if __name__ == "__main__":
    define_flags()
    app.run(main)
