"""Flag definitions of the ``mll-jax`` commands (absl flags, defined by the command that parses them, never when a
module is imported)."""

from __future__ import annotations

import importlib

from absl import flags

from mll_jax.config import DEFAULT_BETA, DEFAULT_K, SCORERS
from mll_jax.errors import MLLError

FLAGS = flags.FLAGS

__all__ = ["FLAGS", "definer", "define_root", "define_sdag_build_flags", "define_hub_add_flags", "define_hub_list_flags",
           "define_hub_remove_flags", "define_label_flags", "define_classify_flags", "define_bench_flags",
           "lab_main_command"]


def definer(fv: flags.FlagValues, module_name: str):
    """``d(kind, name, default, help, **kw)`` defining a flag in ``fv`` once (re-running a command in one process
    re-uses the definition)."""

    def d(kind: str, name: str, default, help: str, **kw):
        if name in fv:
            return
        getattr(flags, f"DEFINE_{kind}")(name, default, help=help, flag_values=fv, module_name=module_name, **kw)

    return d


def define_root(d) -> None:
    d("string", "root", None, "the system directory (SDAG, hub, labels, config), created by `mll-jax sdag build`")
    d("bool", "progress", True, "show progress bars (on stderr)")
    d("bool", "traceback", False, "on an unexpected failure, print the full Python traceback")
    d("string", "compile_cache", "auto", "keep compiled XLA programs here for later runs (JAX's persistent "
      "compilation cache): 'auto' = $MLL_JAX_HOME/jax_cache (default ~/.cache/mll_jax/jax_cache), 'none' = off, or a "
      "directory")
    d("string", "lock_wait", "forever", "when another process is writing to --root (commands that change it hold "
      "its writer lock): wait 'forever', 'no' (stop at once with an error) or SECONDS")


def define_sdag_build_flags(fv: flags.FlagValues = FLAGS, module_name: str | None = None) -> None:
    d = definer(fv, module_name or __name__)
    define_root(d)
    d("list", "roots", [], "WordNet root wnids: the SDAG is their hyponym subtrees (e.g. n02084071 = dog)")
    d("integer", "max_depth", None, "with --roots: cut the subtrees at this depth below the roots", lower_bound=0)
    d("list", "wnids", [], "exactly these WordNet nodes (wnids, e.g. n02123045,n02099601)")
    d("bool", "close_hypernyms", False, "with --wnids: add every hypernym of the wnids up to the WordNet root")
    d("string", "images", None, "ImageNet-style folder (nXXXXXXXX/ sub-folders of image files): node images")
    d("integer", "per_node", 50, "with --images: images per node (a seeded sample of the folder's files)",
      lower_bound=1)
    d("integer", "image_size", 224, "with --images: shorter side resized to this, centre crop (bicubic)",
      lower_bound=8)
    d("bool", "add_missing", False, "with --images: add the folder's wnids that are not SDAG nodes yet")


def define_hub_add_flags(fv: flags.FlagValues = FLAGS, module_name: str | None = None) -> None:
    d = definer(fv, module_name or __name__)
    define_root(d)
    d("string", "model_id", None, "id of the model in the hub (default: derived from MODEL)")
    d("integer", "resolution", None, "EfficientNet-Lite experts: input resolution in pixels (default: native)",
      lower_bound=32)
    d("integer", "batch_size", 32, "images per forward pass of this model", lower_bound=1)
    d("bool", "overwrite", False, "replace a model already registered under the same id")


def define_hub_list_flags(fv: flags.FlagValues = FLAGS, module_name: str | None = None) -> None:
    d = definer(fv, module_name or __name__)
    define_root(d)
    d("bool", "json", False, "print the list as JSON")


def define_label_flags(fv: flags.FlagValues = FLAGS, module_name: str | None = None) -> None:
    d = definer(fv, module_name or __name__)
    define_root(d)
    d("list", "models", [], "model ids to label (default: every unlabelled or stale model of the hub)")
    d("bool", "recompute", False, "recompute the labels even if they are up to date")
    d("integer", "num_processes", None, "run as this many cooperating processes (jax.distributed; every process runs "
      "the same command with its own --process_id; docs/DISTRIBUTED.md)", lower_bound=1)
    d("integer", "process_id", None, "with --num_processes: this process's id, 0 .. num_processes-1 (0 hosts the "
      "coordinator and commits the labels)", lower_bound=0)
    d("string", "coordinator_address", None, "with --num_processes: host:port of process 0's coordinator, e.g. "
      "127.0.0.1:12345")
    d("bool", "cluster", False, "take the process count, id and coordinator from the cluster environment as JAX "
      "detects it (SLURM srun, Open MPI mpirun, Kubernetes, Cloud TPU)")
    d("integer", "unit_nodes", 64, "nodes per unit of work: a (model, node block) unit is computed by one process and "
      "written at once (a killed process loses at most its unfinished unit)", lower_bound=1)
    d("integer", "heartbeat_timeout", 100, "with several processes: seconds without heartbeats after which a "
      "process counts as dead", lower_bound=1)
    d("float", "wait_timeout", 1800.0, "with several processes: seconds a process waits for the others without "
      "any unit finishing before it fails", lower_bound=1.0)


def define_classify_flags(fv: flags.FlagValues = FLAGS, module_name: str | None = None) -> None:
    d = definer(fv, module_name or __name__)
    define_root(d)
    d("string", "classes", None, 'the task: comma-separated class names, e.g. "tabby cat,golden retriever"; a class '
      'may name its WordNet synset ("kitty=n02121620", "kitty=cat.n.01", or a bare "n02084071" / "dog.n.01") or '
      'carry a description ("jaguar: the big cat")')
    d("string", "classes_file", None, "the task from a file instead of --classes: JSON (a list of names or of "
      '{"name", "wnid", "description"} objects), CSV with a header (name[,wnid][,description]) or text (one class '
      "per line, as in --classes)")
    d("string", "output", None, "also write the predictions to this file: .csv or .json")
    d("bool", "explain", False, "print which experts (models, heads, weights) serve each class")
    d("string", "save_classifier", None, "save the classifier here (.npz) to predict later without re-selection")
    d("string", "classifier", None, "use this saved classifier (no matching or selection; --classes optional)")
    d("integer", "k", None, f"reuse budget: at most k experts per class (default: the system's, {DEFAULT_K})",
      lower_bound=1)
    d("string", "beta", None, f"CHCO loss threshold, a number or 'none' (default: the system's, {DEFAULT_BETA})")
    d("enum", "scorer", None, "expert scorer (default: the system's, chco)", enum_values=list(SCORERS))
    d("enum", "models", "experts", "which models serve the task: experts, vlms (the hub's VLMs), or both (experts "
      "where they cover a class, the VLM ensemble elsewhere)", enum_values=["experts", "vlms", "both"])
    d("enum", "vlm_method", None, "how VLMs are selected (with --models=vlms or both): mll (the MLL-VLM F1 selection, "
      "the default) or chco (the CHCO-style baseline: VLMs as experts over their node-text heads; --models=vlms "
      "only)", enum_values=["mll", "chco"])
    d("integer", "image_size", 224, "images are decoded to this size (shorter side, bicubic, centre crop); "
      "0: keep their size (then all must have the same size)", lower_bound=0)
    d("enum", "on_error", "skip", "an image file that cannot be read or decoded: skip it (listed on stderr, marked in "
      "--output, exit code 4) or stop (exit code 2 before any model work)", enum_values=["skip", "stop"])
    d("integer", "max_pixels", 89_478_485, "refuse image files with more pixels than this (a decompression-bomb "
      "guard); 0: no limit", lower_bound=0)


def lab_main_command():
    """The lab's main command (``mll_lab.run``): ``mll-jax bench`` is the lab's program, found when it runs so the
    library never imports the lab."""
    try:
        return importlib.import_module("mll_lab.run")
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "mll_lab":
            raise MLLError("mll-jax bench runs the lab's benchmarks (the mll_lab package), which is not installed: "
                           "install the repository with `pip install -e .`") from None
        raise


def define_bench_flags(fv: flags.FlagValues = FLAGS, module_name: str | None = None) -> None:
    run = lab_main_command()
    run.define_flags(fv, module_name=module_name or run.__name__)


def define_hub_remove_flags(fv: flags.FlagValues = FLAGS, module_name: str | None = None) -> None:
    define_root(definer(fv, module_name or __name__))
