"""``python -m mll_lab.run`` (= ``python -m mll_jax.run`` = ``mll-jax bench``): build everything that is missing and
print the zero-shot results.

Default (no data flags): the offline Fashion-MNIST benchmark (:class:`mll_lab.benchmark.OfflineBenchmark`):
trains the small experts of the hub if they are not cached, registers the ImageNet EfficientNet-Lite experts,
builds the SDAG over the WordNet clothing / footwear / bag subtrees, labels every model, then for each target task
matches class names to nodes, selects experts with CHCO (``--k``, ``--beta``) and reuses them on the Fashion-MNIST
test split.  Everything is cached under ``--home`` (default ``$MLL_JAX_HOME`` or ``~/.cache/mll_jax``); a second
run only evaluates.  The mean table (Table 1: methods x Acc(c) / coverage / Acc(a) / #models, per-task rows in
the JSON) is written with provenance to ``results/table1.{json,md}`` (``$MLL_RESULTS_DIR`` overrides the folder;
the folder benchmark writes ``table1_folder``), the VLM benchmark that follows to ``results/vlm_table.*`` and the
real-photo benchmark after it (:mod:`mll_lab.real_photo_report`; ``--noreal_photos`` skips it) to
``results/real_photo_bench.*``.

With ``--imagenet_dir``, ``--test_dir`` and ``--tasks_file`` it runs the paper's setting instead
(:class:`mll_lab.benchmark.FolderBenchmark`): SDAG node data from an ImageNet-style folder, experts from
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

import inspect
import os
import sys
import time
from pathlib import Path

from absl import app
from absl import flags
from absl import flags as absl_flags
from absl import logging

from mll_jax.cli import exit_with, main as cli_main
from mll_jax.config import DEFAULT_BETA, DEFAULT_DELTA, SCORERS
from mll_jax.families.experts import SHIPPED_EXPERTS
from mll_jax.utils import atomic_write_json, home
from mll_lab.benchmark import BenchmarkConfig, FolderBenchmark, OfflineBenchmark, format_results, summarize
from mll_lab.real_photo_benchmark import RealPhotoConfig
from mll_lab.real_photo_report import run_report as run_real_photos
from mll_lab.results import markdown_table, write_results
from mll_lab.tables import write_table1
from mll_lab.train_experts import HUB_SPECS
from mll_lab.vlm_benchmark import VLMBenchConfig, run as run_vlm

__all__ = ["FLAGS", "METHODS", "define_flags", "parse_beta", "parse_methods", "parse_resolution",
           "config_from_flags", "make_benchmark", "select_tasks", "quiet_logging", "main", "write_run_time",
           "entry_point"]

FLAGS = flags.FLAGS

#: Selection methods of the benchmarks (the built-in scorers).
METHODS = SCORERS


def shipped_imagenet_variants() -> list[str]:
    """EfficientNet-Lite variants whose weights ship (``--imagenet_experts``)."""
    return sorted(v for kind, v in SHIPPED_EXPERTS.values() if kind == "efficientnet_lite")


class _OnceFlags:
    """``absl.flags``' DEFINE_* functions that skip names already defined in ``fv``."""

    def __init__(self, fv: absl_flags.FlagValues):
        self._fv, self._new = fv, set()

    def __getattr__(self, name: str):
        define = getattr(absl_flags, name)

        def once(flag_name, *args, **kwargs):
            if flag_name not in self._fv:
                define(flag_name, *args, **kwargs)
                self._new.add(flag_name)

        return once

    def defined_now(self, name: str) -> bool:
        return name in self._new


def define_flags(flag_values: flags.FlagValues = FLAGS, module_name: str | None = None) -> None:
    """Define the benchmark flags in ``flag_values`` (called by the programs that parse them: ``mll-jax bench``,
    ``python -m mll_lab.run`` / ``python -m mll_jax.run`` and ``experiments/common.py``; importing this module
    defines nothing).

    ``module_name``: the program the flags belong to (for ``--help``); default the caller's module."""
    if module_name is None:
        caller = inspect.currentframe().f_back.f_globals.get("__name__", __name__)
        module_name = sys.argv[0] if caller == "__main__" else caller
    fv = flag_values
    kw = dict(flag_values=fv, module_name=module_name)
    flags = _OnceFlags(fv)  # a flag already defined in ``fv`` (by an earlier call in this process) is kept
    flags.DEFINE_string("home", None, "cache root (default $MLL_JAX_HOME or ~/.cache/mll_jax)", **kw)
    flags.DEFINE_integer("k", 3, "reuse budget: at most k experts per class", lower_bound=1, **kw)
    flags.DEFINE_string("beta", str(DEFAULT_BETA), "CHCO loss threshold ('none': no threshold)", **kw)
    flags.DEFINE_float("delta", DEFAULT_DELTA, "label smoothing discount delta (Eq. 2), in [0, 1]",
                       lower_bound=0.0, upper_bound=1.0, **kw)
    flags.DEFINE_list("tasks", [], "tasks to run (default: all)", **kw)
    flags.DEFINE_list("methods", ["all"], f"selection methods, any of {','.join(METHODS)}, "
                      "or 'all' (the default: MLL and every baseline, as in Table 1)", **kw)
    flags.DEFINE_bool("rebuild", False, "rebuild experts, SDAG and labels even if cached", **kw)
    flags.DEFINE_float("match_threshold", None, "text similarity floor for class -> node matching",
                       lower_bound=-1.0, upper_bound=1.0, **kw)
    flags.DEFINE_enum("node_text", "lemmas", ["lemmas", "sdag"],
                      "node text for matching: all synonyms ('lemmas') or the SDAG text (first lemma)", **kw)
    flags.DEFINE_integer("per_class_sdag", 50, "SDAG images per node / Fashion-MNIST class", lower_bound=1, **kw)
    flags.DEFINE_string("test_per_class", "all",
                        "test images per class ('all': every one, i.e. the official 10k Fashion-MNIST test split)",
                        **kw)
    flags.DEFINE_integer("train_steps", None, "override the training steps of every offline expert (>= 1)",
                         lower_bound=1, **kw)
    flags.DEFINE_list("experts", [], "offline experts to train and use (default: all)", **kw)
    variants = shipped_imagenet_variants()
    flags.DEFINE_list("imagenet_experts", ["lite0"],
                      f"EfficientNet-Lite variants in the hub, any of {','.join(variants)} (empty: none)", **kw)
    if flags.defined_now("imagenet_experts"):
        absl_flags.register_validator(
            "imagenet_experts", lambda vs: all(v in variants for v in vs),
            message=f"--imagenet_experts: the shipped EfficientNet-Lite variants are {','.join(variants)}",
            flag_values=fv)
    flags.DEFINE_string("imagenet_resolution", "auto",
                        "input resolution of the EfficientNet-Lite experts: an integer, 'native' (224/240/260) or "
                        "'auto' (128 for the 28x28 Fashion-MNIST benchmark, native for the folder benchmark)", **kw)
    flags.DEFINE_bool("cifar10_expert", True, "add the PyPI CIFAR-10 CNN to the hub", **kw)
    flags.DEFINE_string("clip_model", None, "CLIP patch for uncovered classes (HF name or local dir)", **kw)
    flags.DEFINE_enum("patch_mode", "all", ["all", "uncovered"], "how the patch scores uncovered classes", **kw)
    flags.DEFINE_string("imagenet_dir", None, "ImageNet-style folder (nXXXXXXXX/ dirs) for SDAG node data", **kw)
    flags.DEFINE_string("test_dir", None, "ImageNet-style folder with the test images of the tasks", **kw)
    flags.DEFINE_string("tasks_file", None, "JSON tasks for the folder benchmark", **kw)
    flags.DEFINE_list("hf_models", [], "Hugging Face Flax image classifiers for the hub (names or dirs)", **kw)
    flags.DEFINE_integer("image_size", 224, "folder benchmark: images are resized/cropped to this size",
                         lower_bound=8, **kw)
    flags.DEFINE_bool("vlm", True, "after the offline expert benchmark, run the offline VLM benchmark (MLL for "
                      "vision-language models; tables and figures in <home>/vlm_offline/results); --novlm skips it",
                      **kw)
    flags.DEFINE_bool("real_photos", True, "after the offline benchmarks, run the real-photo benchmark (real experts "
                      "on real photos, tasks in benchmarks/data/real_tasks.json; results/real_photo_bench.*); "
                      "--noreal_photos skips it", **kw)
    flags.DEFINE_string("output_json", None, "write the results as JSON here (default: <home>/<bench>/results.json)",
                        **kw)
    flags.DEFINE_bool("progress", True, "show progress bars", **kw)
    flags.DEFINE_integer("seed", 0, "seed of the random baseline", **kw)


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


def parse_resolution(value: str, folder: bool) -> int | None:
    """``--imagenet_resolution``: an integer >= 32, None for 'native', and for 'auto' 128 on the offline benchmark
    (28x28 images) or native on the folder benchmark."""
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
    """A :class:`~mll_lab.benchmark.BenchmarkConfig` from the parsed absl flags, validated before any work
    (bad values raise :class:`absl.app.UsageError` naming the flag)."""
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
    if FLAGS.train_steps is not None and FLAGS.train_steps < 1:
        raise app.UsageError(f"--train_steps must be >= 1, got {FLAGS.train_steps}")
    variants = shipped_imagenet_variants()
    bad = [v for v in FLAGS.imagenet_experts if v not in variants]
    if bad:
        raise app.UsageError(f"--imagenet_experts: {bad} do not ship; the shipped variants are {','.join(variants)}")
    if FLAGS.experts and not folder:
        known = [s.model_id for s in HUB_SPECS]
        bad = [m for m in FLAGS.experts if m not in known]
        if bad:
            raise app.UsageError(f"--experts: unknown {bad}; the offline experts are {','.join(known)}")
    parse_methods(FLAGS.methods)
    return BenchmarkConfig(
        home=FLAGS.home, k=FLAGS.k, beta=parse_beta(FLAGS.beta), delta=FLAGS.delta,
        match_threshold=FLAGS.match_threshold, node_text=FLAGS.node_text, per_class_sdag=FLAGS.per_class_sdag,
        test_per_class=tpc, train_steps=FLAGS.train_steps,
        expert_ids=tuple(FLAGS.experts) if FLAGS.experts else None,
        imagenet_experts=tuple(FLAGS.imagenet_experts),
        imagenet_resolution=parse_resolution(FLAGS.imagenet_resolution, folder), cifar10_expert=FLAGS.cifar10_expert,
        imagenet_dir=FLAGS.imagenet_dir, test_dir=FLAGS.test_dir, tasks_file=FLAGS.tasks_file,
        hf_models=tuple(FLAGS.hf_models), image_size=FLAGS.image_size, clip_model=FLAGS.clip_model,
        patch_mode=FLAGS.patch_mode, rebuild=FLAGS.rebuild, progress=FLAGS.progress, seed=FLAGS.seed)


def make_benchmark(config):
    """The folder benchmark if any of its data flags is given, else the offline benchmark."""
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
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def main(argv) -> int:
    """The main command on parsed flags (``argv``: the program name and no other argument, as ``sys.argv`` after
    absl parsing); returns 0, raises :class:`absl.app.UsageError` on bad usage."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    load_at_start = os.getloadavg()
    t0 = time.perf_counter()
    quiet_logging()
    config = config_from_flags()
    cache = home(config.home)
    cache_at_start = sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []
    stages: dict[str, float] = {}
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
    stages["fashion_mnist"] = total
    print()
    print(format_results(results))
    print()
    print("timings (s): " + ", ".join(f"{k}={v:.1f}" for k, v in timings.items()) + f", total={total:.1f}")
    out = Path(FLAGS.output_json) if FLAGS.output_json else bench.home / "results.json"
    payload = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
               "methods": methods, "timings": timings, "total_seconds": total,
               "summary": {m: summarize([r for r in results if r.method == m]) for m in methods},
               "results": [r.to_json() for r in results]}
    atomic_write_json(out, payload)
    print(f"results written to {out}")
    name = "table1" if isinstance(bench, OfflineBenchmark) else "table1_folder"
    _, md_path = write_table1(name, bench, tasks, results, methods, load_at_start=load_at_start)
    print(f"table written to {md_path}")
    if FLAGS.vlm and isinstance(bench, OfflineBenchmark):
        print("\nMLL for vision-language models (offline VLM benchmark; --novlm skips it)", flush=True)
        t2 = time.perf_counter()
        vdir = home(config.home) / "vlm_offline" / "results"
        run_vlm(VLMBenchConfig(home=config.home, out_dir=str(vdir), test_per_class=config.test_per_class,
                               rebuild=config.rebuild))
        stages["vlm"] = time.perf_counter() - t2
        print(f"VLM benchmark: {stages['vlm']:.1f}s, results in {vdir}; total {time.perf_counter() - t0:.1f}s")
    if FLAGS.real_photos and isinstance(bench, OfflineBenchmark):
        print("\nReal experts on real photos (--noreal_photos skips it)", flush=True)
        t3 = time.perf_counter()
        try:
            # the flax_module experts of the hub above (the Fashion-MNIST experts, EfficientNet-Lite0 at 128 px) join
            _, md = run_real_photos(RealPhotoConfig(home=config.home, seed=config.seed,
                                                    trained_hub=str(bench.hub.root)))
        except FileNotFoundError as e:  # photos or experts not fetched (scripts/fetch_real_assets.sh)
            print(f"real-photo benchmark skipped: {e}")
        else:
            stages["real_photos"] = time.perf_counter() - t3
            print(md)
            print(f"real-photo benchmark: {stages['real_photos']:.1f}s; total {time.perf_counter() - t0:.1f}s")
    if isinstance(bench, OfflineBenchmark):
        write_run_time(stages, time.perf_counter() - t0, timings, cache, cache_at_start, load_at_start)
    return 0


def write_run_time(stages: dict, total: float, build: dict, cache: Path, cache_at_start: list, load_at_start) -> None:
    """``results/bench_run.{json,md}``: the main command's wall time per benchmark, and what the cache held when it
    started (an empty list: everything was built, the one-off WordNet text embeddings included)."""
    rows = [[k.replace("_", " "), f"{v:.0f}"] for k, v in stages.items()] + [["total", f"{total:.0f}"]]
    state = "empty" if not cache_at_start else "holding " + ", ".join(cache_at_start)
    md = (f"`mll-jax bench` with the cache `{cache}` {state} at the start (Fashion-MNIST: building the hub, SDAG, "
          "labels and text embeddings that are missing, then the tasks; then the VLM and real-photo benchmarks):\n\n"
          + markdown_table(["stage", "wall s"], rows))
    write_results("bench_run", {"stages": stages, "total_seconds": total, "fashion_mnist_build": build,
                                "cache": str(cache), "cache_at_start": cache_at_start}, md,
                  title="The main command's run time", load_at_start=load_at_start)


def entry_point(prog: str = "python -m mll_lab.run") -> None:
    """``python -m mll_lab.run``: the same as ``mll-jax bench`` (flags, help and exit codes of :mod:`mll_jax.cli`);
    ``prog`` names the program in messages and help."""
    if Path(sys.argv[0]).name == "mll-jax":  # a console script installed before mll-jax became mll_jax.cli
        exit_with(lambda: cli_main(sys.argv))
    exit_with(lambda: cli_main(["mll-jax", "bench"] + sys.argv[1:], prog=prog, command_prog=""))


if __name__ == "__main__":
    # ``python -m mll_jax.run`` runs this module with RUN_AS = "python -m mll_jax.run" in its globals
    entry_point(globals().get("RUN_AS", "python -m mll_lab.run"))
