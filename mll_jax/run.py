"""``python -m mll_jax.run`` / ``mll-jax``: build everything that is missing and print the zero-shot results.

Default (no data flags): the offline Fashion-MNIST benchmark (:class:`mll_jax.offline.benchmark.OfflineBenchmark`):
trains the small experts of the hub if they are not cached, registers the ImageNet EfficientNet-Lite experts,
builds the SDAG over the WordNet clothing / footwear / bag subtrees, labels every model, then for each target task
matches class names to nodes, selects experts with CHCO (``--k``, ``--beta``) and reuses them on the Fashion-MNIST
test split.  Everything is cached under ``--home`` (default ``$MLL_JAX_HOME`` or ``~/.cache/mll_jax``); a second
run only evaluates.

With ``--imagenet_dir``, ``--test_dir`` and ``--tasks_file`` it runs the paper's setting instead
(:class:`mll_jax.offline.benchmark.FolderBenchmark`): SDAG node data from an ImageNet-style folder, experts from
``--hf_models`` (Hugging Face Flax classifiers) and ``--imagenet_experts``, uncovered classes patched with
``--clip_model``.

Examples::

    python -m mll_jax.run                                  # offline benchmark, MLL + all baselines, k=3
    python -m mll_jax.run --methods=chco,heu,random --k=2 --tasks=shoes,fashion10
    python -m mll_jax.run --imagenet_dir=/data/imagenet/train --test_dir=/data/imagenet/val \\
        --tasks_file=tasks.json --hf_models=google/vit-base-patch16-224,microsoft/resnet-50 \\
        --clip_model=openai/clip-vit-base-patch32
"""

from __future__ import annotations

import time
from pathlib import Path

from absl import app, flags

from mll_jax.offline.benchmark import DEFAULT_BETA, METHODS, BenchmarkConfig

FLAGS = flags.FLAGS


def _define_flags() -> None:
    if "k" in FLAGS:  # already defined (module imported twice, e.g. by the experiments)
        return
    flags.DEFINE_string("home", None, "cache root (default $MLL_JAX_HOME or ~/.cache/mll_jax)")
    flags.DEFINE_integer("k", 3, "reuse budget: at most k experts per class", lower_bound=1)
    flags.DEFINE_string("beta", str(DEFAULT_BETA), "CHCO loss threshold ('none': no threshold)")
    flags.DEFINE_float("delta", 0.5, "label smoothing discount delta (Eq. 2), in [0, 1]")
    flags.DEFINE_list("tasks", [], "tasks to run (default: all)")
    flags.DEFINE_list("methods", ["all"], f"selection methods, any of {','.join(METHODS)}, "
                      "or 'all' (the default: MLL and every baseline, as in Table 1)")
    flags.DEFINE_bool("rebuild", False, "rebuild experts, SDAG and labels even if cached")
    flags.DEFINE_float("match_threshold", None, "text similarity floor for class -> node matching")
    flags.DEFINE_enum("node_text", "lemmas", ["lemmas", "sdag"],
                      "node text for matching: all synonyms ('lemmas') or the SDAG text (first lemma)")
    flags.DEFINE_integer("per_class_sdag", 50, "SDAG images per node / Fashion-MNIST class", lower_bound=1)
    flags.DEFINE_string("test_per_class", "all",
                        "test images per class ('all': every one, i.e. the official 10k Fashion-MNIST test split)")
    flags.DEFINE_integer("train_steps", None, "override the training steps of every offline expert")
    flags.DEFINE_list("experts", [], "offline experts to train and use (default: all)")
    flags.DEFINE_list("imagenet_experts", ["lite0"], "EfficientNet-Lite variants in the hub (lite0,lite1,lite2)")
    flags.DEFINE_string("imagenet_resolution", "auto",
                        "input resolution of the EfficientNet-Lite experts: an integer, 'native' (224/240/260) or "
                        "'auto' (128 for the 28x28 Fashion-MNIST benchmark, native for the folder benchmark)")
    flags.DEFINE_bool("cifar10_expert", True, "add the PyPI CIFAR-10 CNN to the hub")
    flags.DEFINE_string("clip_model", None, "CLIP patch for uncovered classes (HF name or local dir)")
    flags.DEFINE_enum("patch_mode", "all", ["all", "uncovered"], "how the patch scores uncovered classes")
    flags.DEFINE_string("imagenet_dir", None, "ImageNet-style folder (nXXXXXXXX/ dirs) for SDAG node data")
    flags.DEFINE_string("test_dir", None, "ImageNet-style folder with the test images of the tasks")
    flags.DEFINE_string("tasks_file", None, "JSON tasks for the folder benchmark")
    flags.DEFINE_list("hf_models", [], "Hugging Face Flax image classifiers for the hub (names or dirs)")
    flags.DEFINE_integer("image_size", 224, "folder benchmark: images are resized/cropped to this size")
    flags.DEFINE_string("output_json", None, "write the results as JSON here (default: <home>/<bench>/results.json)")
    flags.DEFINE_bool("progress", True, "show progress bars")
    flags.DEFINE_integer("seed", 0, "seed of the random baseline")


_define_flags()


def parse_beta(value) -> float | None:
    if value is None or str(value).strip().lower() in ("none", "", "inf"):
        return None
    try:
        return float(value)
    except ValueError:
        raise app.UsageError(f"--beta must be a number or 'none', got {value!r}") from None


def parse_methods(methods) -> list[str]:
    methods = [m.strip().lower() for m in methods if m.strip()]
    if methods == ["all"]:
        return list(METHODS)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise app.UsageError(f"--methods: unknown {bad}; choose from {', '.join(METHODS)} or 'all'")
    return methods


def _resolution(value: str, folder: bool) -> int | None:
    v = str(value).strip().lower()
    if v == "auto":
        return None if folder else 128
    if v in ("native", "0", "none"):
        return None
    try:
        r = int(v)
    except ValueError:
        raise app.UsageError(f"--imagenet_resolution must be an integer, 'native' or 'auto', got {value!r}") from None
    if r < 32:
        raise app.UsageError(f"--imagenet_resolution must be >= 32, got {r}")
    return r


def config_from_flags() -> BenchmarkConfig:
    """A :class:`BenchmarkConfig` from the parsed absl flags."""
    tpc = FLAGS.test_per_class
    if str(tpc).lower() == "all":
        tpc = None
    else:
        try:
            tpc = int(tpc)
        except ValueError:
            raise app.UsageError(f"--test_per_class must be an integer or 'all', got {tpc!r}") from None
        if tpc < 1:
            raise app.UsageError("--test_per_class must be >= 1")
    folder = bool(FLAGS.imagenet_dir or FLAGS.test_dir or FLAGS.tasks_file)
    if not 0.0 <= FLAGS.delta <= 1.0:
        raise app.UsageError(f"--delta must lie in [0, 1], got {FLAGS.delta}")
    return BenchmarkConfig(
        home=FLAGS.home, k=FLAGS.k, beta=parse_beta(FLAGS.beta), delta=FLAGS.delta,
        match_threshold=FLAGS.match_threshold, node_text=FLAGS.node_text, per_class_sdag=FLAGS.per_class_sdag,
        test_per_class=tpc, train_steps=FLAGS.train_steps,
        expert_ids=tuple(FLAGS.experts) if FLAGS.experts else None,
        imagenet_experts=tuple(FLAGS.imagenet_experts),
        imagenet_resolution=_resolution(FLAGS.imagenet_resolution, folder), cifar10_expert=FLAGS.cifar10_expert,
        imagenet_dir=FLAGS.imagenet_dir, test_dir=FLAGS.test_dir, tasks_file=FLAGS.tasks_file,
        hf_models=tuple(FLAGS.hf_models), image_size=FLAGS.image_size, clip_model=FLAGS.clip_model,
        patch_mode=FLAGS.patch_mode, rebuild=FLAGS.rebuild, progress=FLAGS.progress, seed=FLAGS.seed)


def make_benchmark(config: BenchmarkConfig):
    """The folder benchmark if any of its data flags is given, else the offline benchmark."""
    from mll_jax.offline.benchmark import FolderBenchmark, OfflineBenchmark

    if config.imagenet_dir or config.test_dir or config.tasks_file:
        return FolderBenchmark(config)
    return OfflineBenchmark(config)


def select_tasks(bench, names):
    tasks = bench.tasks()
    if not names:
        return tasks
    by = {t.name: t for t in tasks}
    bad = [n for n in names if n not in by]
    if bad:
        raise app.UsageError(f"--tasks: unknown {bad}; known: {', '.join(by)}")
    return [by[n] for n in names]


def quiet_logging() -> None:
    """Silence orbax's INFO lines (absl logging) unless --verbosity was given."""
    from absl import logging

    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from mll_jax.offline.benchmark import format_results, summarize

    t0 = time.perf_counter()
    quiet_logging()
    config = config_from_flags()
    methods = parse_methods(FLAGS.methods)
    bench = make_benchmark(config)
    tasks = select_tasks(bench, FLAGS.tasks)
    print(f"mll-jax {type(bench).__name__}: home {bench.home}, k={config.k}, beta={config.beta}, "
          f"delta={config.delta}, methods={','.join(methods)}", flush=True)
    timings = bench.build()
    print(f"hub: {len(bench.model_ids)} models ({', '.join(bench.model_ids)}); SDAG: {len(bench.sdag)} nodes, "
          f"{len(bench.sdag.nodes_with_images())} with images, {len(bench.candidate_nodes())} labelled", flush=True)
    t1 = time.perf_counter()
    results = bench.run(tasks, methods)
    timings["tasks"] = time.perf_counter() - t1
    total = time.perf_counter() - t0
    print()
    print(format_results(results))
    print()
    print("timings (s): " + ", ".join(f"{k}={v:.1f}" for k, v in timings.items()) + f", total={total:.1f}")
    out = Path(FLAGS.output_json) if FLAGS.output_json else bench.home / "results.json"
    payload = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
               "methods": methods, "timings": timings, "total_seconds": total,
               "summary": {m: summarize([r for r in results if r.method == m]) for m in methods},
               "results": [r.to_json() for r in results]}
    from mll_jax.utils import atomic_write_json

    atomic_write_json(out, payload)
    print(f"results written to {out}")
    return 0


def entry_point() -> None:
    """Console script ``mll-jax``."""
    app.run(main)


if __name__ == "__main__":
    entry_point()
