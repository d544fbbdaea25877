"""The ``mll-jax`` commands that build and maintain a system: ``sdag build``, ``hub add|list|remove``, ``label``,
``bench``."""

from __future__ import annotations

import json
from pathlib import Path

from mll_jax import distributed
from mll_jax.errors import UsageError
from mll_jax.families.experts import SHIPPED_EXPERTS
from mll_jax.sdag import SDAG

from .common import check_wnids, no_args, open_system, writing
from .flags import FLAGS, lab_main_command

__all__ = ["cmd_sdag_build", "cmd_hub_add", "cmd_hub_remove", "cmd_hub_list", "cmd_label", "cmd_bench", "hub_rows",
           "start_processes"]


def cmd_sdag_build(argv) -> int:
    no_args(argv)
    roots, wnids = list(FLAGS.roots), list(FLAGS.wnids)
    if roots and wnids:
        raise UsageError("give either --roots (WordNet subtrees) or --wnids (exactly these nodes), not both")
    if FLAGS.close_hypernyms and not wnids:
        raise UsageError("--close_hypernyms goes with --wnids")
    if FLAGS["max_depth"].present and not roots:
        raise UsageError("--max_depth goes with --roots")
    for name in ("per_node", "image_size", "add_missing"):
        if FLAGS[name].present and not FLAGS.images:
            raise UsageError(f"--{name} goes with --images")
    if FLAGS.images and not Path(FLAGS.images).is_dir():
        raise UsageError(f"--images={FLAGS.images} is not a folder")
    root = Path(FLAGS.root)
    exists = (root / "sdag" / "sdag.json").is_file()
    if not (roots or wnids) and not exists:
        raise UsageError(f"{root} holds no SDAG yet: give --roots=WNID,... or --wnids=WNID,...")
    if not (roots or wnids or FLAGS.images):
        raise UsageError("nothing to do: give --roots, --wnids and/or --images")
    roots = check_wnids(roots, "roots") if roots else roots  # bad wnids fail before anything is created
    wnids = check_wnids(wnids, "wnids") if wnids else wnids
    with writing("sdag build", create=True):
        graph = None
        if roots:
            graph = SDAG.from_roots(roots, max_depth=FLAGS.max_depth)
        elif wnids:
            graph = SDAG.from_wnids(wnids, close_hypernyms=FLAGS.close_hypernyms)
        if exists:
            mll = open_system()
            if graph is not None:
                added = mll.add_nodes(list(graph.nodes))
                print(f"added {len(added)} new nodes to the SDAG")
        else:
            mll = open_system(create_sdag=graph)
            print(f"created the MLL system {root}")
        if FLAGS.images:
            got = mll.add_images_from_folder(FLAGS.images, n_per_node=FLAGS.per_node, image_size=FLAGS.image_size,
                                             add_missing=FLAGS.add_missing, progress=FLAGS.progress)
            print(f"node images: {sum(got.values())} images on {len(got)} nodes from {FLAGS.images}")
        sdag = mll.sdag
        print(f"SDAG: {len(sdag)} nodes, {len(sdag.nodes_with_images())} with images ({root / 'sdag'})")
    return 0


def cmd_hub_add(argv) -> int:
    models = list(argv[1:])
    if not models:
        raise UsageError(f"hub add needs a MODEL: a shipped expert ({', '.join(sorted(SHIPPED_EXPERTS))}), vlm:<CLIP> or "
                     "hf:<name or directory>")
    if FLAGS.model_id is not None and len(models) > 1:
        raise UsageError("--model_id names one model; add the models one at a time")
    for m in models:
        if m in SHIPPED_EXPERTS:
            if FLAGS.resolution is not None and SHIPPED_EXPERTS[m][0] != "efficientnet_lite":
                raise UsageError(f"--resolution applies to the EfficientNet-Lite experts, not {m!r}")
        elif m.startswith(("hf:", "vlm:")):
            kind = m.split(":", 1)[0]
            if not m[len(kind) + 1:]:
                raise UsageError(f"{kind}: needs a model name or directory, e.g. "
                             + ("hf:google/vit-base-patch16-224" if kind == "hf" else "vlm:openai/clip-vit-base-patch32"))
            if FLAGS.resolution is not None:
                raise UsageError(f"--resolution applies to the EfficientNet-Lite experts, not {kind}: models")
        else:
            raise UsageError(f"unknown model {m!r}: give a shipped expert ({', '.join(sorted(SHIPPED_EXPERTS))}), "
                         "hf:<name or directory> (an image classifier) or vlm:<name or directory> (a CLIP model)")
    resolved = []  # (model, model_id), local directories made absolute; bad input fails before the lock
    for m in models:
        model_id = FLAGS.model_id
        if m.startswith("hf:") and Path(m[3:]).expanduser().is_dir():  # a local model directory: store it absolute
            local = Path(m[3:]).expanduser().absolute()
            if not (local / "config.json").is_file():
                raise UsageError(f"{local} is not a Hugging Face model directory (no config.json)")
            m, model_id = f"hf:{local}", model_id or local.name
        resolved.append((m, model_id))
    open_system()  # a missing or non-system --root fails before the lock too
    with writing("hub add"):
        mll = open_system()
        for m, model_id in resolved:
            had = set(mll.model_ids())
            if m.startswith("vlm:"):
                src = m[4:]
                if Path(src).expanduser().is_dir():  # a local checkpoint: stored absolute
                    src = str(Path(src).expanduser().absolute())
                mid = mll.add_vlm(src, model_id=model_id, overwrite=FLAGS.overwrite, batch_size=FLAGS.batch_size)
            else:
                mid = mll.add_model(m, model_id=model_id, resolution=FLAGS.resolution, batch_size=FLAGS.batch_size,
                                    overwrite=FLAGS.overwrite)
            what = "already in the hub" if mid in had and not FLAGS.overwrite else "added"
            print(f"{mid}: {what} (run `mll-jax label --root={FLAGS.root}` to label it)")
    return 0


def cmd_hub_remove(argv) -> int:
    ids = list(argv[1:])
    if not ids:
        raise UsageError("hub remove needs model ids (see mll-jax hub list)")
    known = set(open_system().model_ids())
    unknown = [m for m in ids if m not in known]
    if unknown:  # nothing is removed (checked before taking the writer lock)
        raise UsageError(f"unknown model ids {unknown}; the hub has {sorted(known)}")
    with writing("hub remove"):
        mll = open_system()
        for m in ids:
            mll.remove_model(m)
            print(f"{m}: removed (and its labels)")
    return 0


def hub_rows(mll) -> list[dict]:
    stale = set(mll.stale_models())
    have = set(mll.labels.model_ids())
    rows = []
    for m in mll.model_ids():
        e = mll.hub.entry(m)
        status = "unlabelled" if m not in have else ("stale" if m in stale else "labelled")
        rows.append({"id": m, "kind": e.get("kind"), "heads": e.get("num_heads"), "status": status,
                     "source": e.get("source")})
    return rows


def cmd_hub_list(argv) -> int:
    no_args(argv)
    rows = hub_rows(open_system())
    if FLAGS.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print(f"the hub of {FLAGS.root} is empty (mll-jax hub add --root={FLAGS.root} MODEL)")
        return 0
    cols = ("id", "kind", "heads", "status", "source")
    table = [cols] + [tuple("-" if r[c] is None else str(r[c]) for c in cols) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(cols))]
    for t in table:
        print("  ".join(s.ljust(w) for s, w in zip(t, widths)).rstrip())
    return 0


def start_processes():
    """jax.distributed from the label flags (before any JAX computation); None for one process."""
    given = [f for f in ("num_processes", "process_id", "coordinator_address") if FLAGS[f].value is not None]
    if FLAGS.cluster:
        if given:
            raise UsageError(f"--cluster reads the processes from the cluster environment; do not also give --{given[0]}")
        try:
            return distributed.initialize(cluster=True, heartbeat_timeout_seconds=FLAGS.heartbeat_timeout,
                                          wait_timeout=FLAGS.wait_timeout)
        except ValueError as e:
            raise UsageError(f"--cluster: JAX found no usable cluster environment (SLURM srun, Open MPI mpirun, "
                         f"Kubernetes, Cloud TPU): {e}; give --num_processes, --process_id and "
                         "--coordinator_address instead") from None
    if not given or (FLAGS.num_processes == 1 and FLAGS.coordinator_address is None and not FLAGS.process_id):
        return None
    missing = [f"--{f}" for f in ("num_processes", "process_id", "coordinator_address") if FLAGS[f].value is None]
    if missing:
        raise UsageError(f"several processes need --num_processes, --process_id and --coordinator_address "
                     f"({', '.join(missing)} missing)")
    try:
        return distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                                      heartbeat_timeout_seconds=FLAGS.heartbeat_timeout,
                                      wait_timeout=FLAGS.wait_timeout)
    except ValueError as e:
        raise UsageError(str(e).replace("coordinator_address", "--coordinator_address").replace(
            "process_id=", "--process_id=").replace("num_processes=", "--num_processes=")) from None


def cmd_label(argv) -> int:
    no_args(argv)
    procs = start_processes()
    mll = open_system()
    models = [m.strip() for m in FLAGS.models if m.strip()] or None  # unknown ids: UnknownModelError -> exit 2
    if not mll.model_ids():
        raise UsageError(f"the hub of {FLAGS.root} is empty: add models first (mll-jax hub add --root={FLAGS.root} MODEL)")
    if not mll.sdag.nodes_with_images():
        raise UsageError(f"the SDAG of {FLAGS.root} has no node images: add some "
                     f"(mll-jax sdag build --root={FLAGS.root} --images=FOLDER)")
    with writing("label", processes=procs):
        summary = mll.label(models, recompute=FLAGS.recompute, processes=procs, unit_nodes=FLAGS.unit_nodes)
    if not summary:
        print("every model is labelled and up to date")
    for m, s in summary.items():
        here = (f", {s['computed_here']} by process {procs.process_id}"
                if procs is not None and "computed_here" in s else "")
        print(f"{m}: labelled {s.get('labelled')} nodes ({s.get('computed')} computed{here})")
    return 0


def cmd_bench(argv) -> int:
    return lab_main_command().main(argv)
