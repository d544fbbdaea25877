"""The paper's shape end to end: a WordNet SDAG of up to ~11,000 nodes, a hub of up to 48 experts, tasks of 20, 37
and 101 classes (``mll_lab.scale``: what is built and measured; ``mll_lab.scale_report``: growth, tables, figure).

Per stage: wall and CPU seconds, bytes read and written, peak memory; labelling against the bare forward of each
model; growth exponents from the smallest to the largest node count and from 6 to 48 models; a SIGKILLed
``mll-jax label`` resumed.  Writes results/<name>.json and .md (``mll_lab.results.write_results``, with provenance)
and results/<name>.png (log-log growth).

    python benchmarks/scale_bench.py                                  # 11,000 nodes, 48 models (about an hour on 2 cores)
    python benchmarks/scale_bench.py --nodes=2000 --models=12 --node_fractions=0.5,1 --full_size=false
    bash benchmarks/scale_gpu.sh                                      # on an accelerator: 50 images per node

``--nodes`` is the largest SDAG (requested WordNet synsets below physical_entity; closing them under hypernyms
adds a few); ``--node_fractions`` the growth points as fractions of it.
"""
from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from mll_lab.results import results_dir, write_results  # noqa: E402  (after the repository is on the path)
from mll_lab.scale import SHIPPED  # noqa: E402
from mll_lab.scale_report import full_size_costs, markdown_report, plot_growth, run_scale_bench  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("nodes", 11000, "WordNet synsets of the largest SDAG (before the hypernym closure)")
flags.DEFINE_list("node_fractions", ["0.125", "0.25", "0.5", "1"], "growth points, fractions of --nodes")
flags.DEFINE_integer("models", 48, "hub experts: the shipped ones first, then small HF Flax models")
flags.DEFINE_list("model_counts", ["6", "12", "24", "48"], "growth in models: selection over the first k experts")
flags.DEFINE_list("growth_classes", ["20"], "tasks (class counts) whose selection is also timed over the first k "
                  "experts (empty: every task)")
flags.DEFINE_list("shipped", list(SHIPPED), "shipped experts in the hub (EfficientNet-Lite at --lite_resolution)")
flags.DEFINE_integer("images_per_node", 1, "images written and stored per node (the paper: up to 50)")
flags.DEFINE_integer("image_size", 32, "side of the generated node and test images, and of the HF models' input")
flags.DEFINE_integer("lite_resolution", 64, "EfficientNet-Lite input resolution")
flags.DEFINE_list("classes", ["20", "37", "101"], "class counts of the tasks")
flags.DEFINE_integer("test_per_class", 2, "test images per class")
flags.DEFINE_integer("batch_size", 32, "images per forward pass of every expert")
flags.DEFINE_integer("unit_nodes", 64, "nodes per labelling unit")
flags.DEFINE_bool("kill_test", True, "SIGKILL an `mll-jax label` run at the largest point and resume it")
flags.DEFINE_bool("full_size", True, "measure each HF architecture's full-size forward (224 px, random weights)")
flags.DEFINE_string("work_dir", "/tmp/mll_scale_bench", "scratch directory (replaced)")
flags.DEFINE_string("name", "scale_bench", "results name: results/<name>.json, .md, .png")
flags.DEFINE_string("device", "auto", "'auto', 'cpu' or 'gpu': the JAX platform (gpu: fails without one)")
flags.DEFINE_float("logit_std", 3.0, "HF models: classifier scaled to this logit spread over the heads (0: HF's "
                   "initialisation, nearly uniform head probabilities)")
flags.DEFINE_integer("seed", 0, "random seed")


def main(argv):
    del argv
    import jax

    if FLAGS.device != "auto":  # before the first use of a backend (importing the package does not start one)
        jax.config.update("jax_platforms", {"gpu": "cuda", "cpu": "cpu"}.get(FLAGS.device, FLAGS.device))

    device = f"{jax.devices()[0].platform}:{getattr(jax.devices()[0], 'device_kind', '')}"
    load = os.getloadavg()
    print(f"jax {jax.__version__} on {device}; load {load}")
    counts = sorted({max(1, round(float(f) * FLAGS.nodes)) for f in FLAGS.node_fractions})
    t0 = time.perf_counter()
    result = run_scale_bench(
        FLAGS.work_dir, node_counts=counts, models=FLAGS.models, model_counts=[int(k) for k in FLAGS.model_counts],
        images_per_node=FLAGS.images_per_node, image_size=FLAGS.image_size,
        classes=[int(c) for c in FLAGS.classes], shipped=tuple(FLAGS.shipped), lite_resolution=FLAGS.lite_resolution,
        batch_size=FLAGS.batch_size, test_per_class=FLAGS.test_per_class, unit_nodes=FLAGS.unit_nodes,
        kill_test=FLAGS.kill_test, seed=FLAGS.seed,
        growth_classes=[int(c) for c in FLAGS.growth_classes] or None, logit_std=FLAGS.logit_std or None)
    if FLAGS.full_size:
        result["full_size"] = full_size_costs(os.path.join(FLAGS.work_dir, "full_size"))
    result["total_seconds"] = time.perf_counter() - t0
    result["device"] = device
    result["flags"] = {f.name: f.value for f in FLAGS.get_flags_for_module(sys.argv[0])}
    print(json.dumps(result["summary"], indent=1, default=str))
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    png = plot_growth(result, out / f"{FLAGS.name}.png")
    text = markdown_report(result, device=device) + f"\n![growth]({png.name})\n"
    paths = write_results(FLAGS.name, result, text, title="MLL at the paper's scale, end to end",
                          load_at_start=load)
    print("wrote", *paths, png)


if __name__ == "__main__":
    app.run(main)
