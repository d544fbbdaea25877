"""Label-store query cost: format 1 (orbax / tensorstore checkpoint per model) vs format 2 (row files), and the
effect of reduced-precision label rows on CHCO selection.

Part 1 (synthetic store, timing).  For each store format, one after the other in the same process, a synthetic
store of ``--models`` models x ``--nodes`` labelled nodes x ``--heads`` heads is committed with
``LabelStore.commit`` (the path labelling uses), then a selection-style query is timed: ``--classes`` target
classes x ``--per_class`` matched nodes (distinct random nodes) read for every model, as
``selection.label_submatrices`` does (``store.read(m, wnids)`` per model).  Per format it prints

  * cold: a new ``LabelStore`` object (``model_ids()`` scans and verifies every model's metadata, then the
    reads open each model's label file / checkpoint); the OS page cache is warm (the store was just written);
  * warm: the same query again on the same object (metadata and tensorstore handles cached);
  * bytes read by the process's read syscalls during the query (``rchar`` of /proc/self/io), bytes stored;
  * ratios against format 1 in the same run.
Formats named in ``--pack`` are timed a second time after ``LabelStore.pack()`` (the consolidated node-major copy
per family; "+pack" rows; their "stored" column is the pack's own size).  Queries go through
``LabelStore.read_many`` (what selection calls; without packs it reads model by model like ``read``).

Each store is deleted before the next is built (peak disk = one store).  Part 2 (``--real_stores``): CHCO
selection over the real experts' labels, float32 vs float16 vs bfloat16 rows (committed and read back through
``LabelStore``): how many selected experts, losses and head-combination columns change.

Timing runs hold the machine's benchmark lock:

    flock /tmp/mll-bench.lock python benchmarks/label_store_bench.py
    flock /tmp/mll-bench.lock python benchmarks/label_store_bench.py --models=50 --nodes=500 --real_stores=
"""
from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
import warnings

from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from mll_lab.results import record_report  # noqa: E402  (after the repository is on the path)

FLAGS = flags.FLAGS
flags.DEFINE_integer("models", 200, "models in the synthetic store")
flags.DEFINE_integer("nodes", 2000, "labelled nodes per model")
flags.DEFINE_integer("heads", 1000, "heads per model")
flags.DEFINE_integer("classes", 10, "target classes C of the query")
flags.DEFINE_integer("per_class", 5, "matched nodes per class (top-5 matches)")
flags.DEFINE_integer("repeats", 3, "timed repeats of the query (best and median printed)")
flags.DEFINE_list("formats", ["v1", "v2-float32", "v2-float16", "v2-bfloat16"],
                  "stores to build: v1 (orbax) and v2-<dtype>")
flags.DEFINE_list("pack", ["v2-float16", "v2-bfloat16"],
                  "formats also timed after LabelStore.pack() (the consolidated node-major copy)")
flags.DEFINE_string("dir", "/tmp/store-bench/bench", "scratch directory (removed at the end)")
flags.DEFINE_list("real_stores", ["/tmp/mllhome-main/offline/labels", "/tmp/cli-doc/mll/labels"],
                  "label stores of real experts for the selection-effect part (empty: skip)")
flags.DEFINE_integer("tasks", 60, "random tasks per class count per real store")
flags.DEFINE_list("task_classes", ["2", "5", "10"], "class counts of the random tasks")
flags.DEFINE_integer("k", 3, "reuse budget of the selection")
flags.DEFINE_float("beta", 0.8, "loss threshold of the selection")
flags.DEFINE_integer("seed", 0, "random seed")


def _load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _rchar() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    return 0


def _du(path: str) -> int:
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def _build(root: str, spec: str, nodes: list[str], seed: int) -> float:
    import numpy as np

    from mll_jax.labelling import LabelStore

    fmt, dtype = (1, "float32") if spec == "v1" else (2, spec.split("-", 1)[1])
    store = LabelStore(root, dtype=dtype, format=fmt)
    rng = np.random.default_rng(seed)
    heads = [f"head {i}" for i in range(FLAGS.heads)]
    extra = {"num_images": {w: 50 for w in nodes}}
    t = time.perf_counter()
    for m in range(FLAGS.models):
        labels = rng.standard_normal((len(nodes), FLAGS.heads), dtype=np.float32) * 3.0
        store.commit(f"family-a/model-{m:05d}", nodes, labels, delta=0.5, head_names=heads, extra=extra,
                     fingerprint=f"fp{m}")
    return time.perf_counter() - t


def _query(root: str, wnids: list[str]) -> dict:
    from mll_jax.labelling import LabelStore

    out = {}
    r0, c0, t0 = _rchar(), time.process_time(), time.perf_counter()
    store = LabelStore(root)
    ids = store.model_ids()
    t1 = time.perf_counter()
    rows = store.read_many(ids, wnids)  # what selection.label_submatrices calls
    t2, c2, r2 = time.perf_counter(), time.process_time(), _rchar()
    out.update(scan=t1 - t0, cold_read=t2 - t1, cold=t2 - t0, cold_cpu=c2 - c0, cold_bytes=r2 - r0)
    r0, t0 = _rchar(), time.perf_counter()
    rows2 = store.read_many(ids, wnids)
    out.update(warm=time.perf_counter() - t0, warm_bytes=_rchar() - r0, models=len(ids))
    assert all((a == b).all() for a, b in zip(rows, rows2))
    out["sample"] = rows[0]
    return out


def part1() -> None:
    import numpy as np

    rng = np.random.default_rng(FLAGS.seed)
    nodes = [f"n{10000000 + 7 * i:08d}" for i in range(FLAGS.nodes)]
    q = [nodes[i] for i in rng.choice(len(nodes), FLAGS.classes * FLAGS.per_class, replace=False)]
    print(f"\n== part 1: query of C={FLAGS.classes} classes x {FLAGS.per_class} nodes = {len(q)} rows over "
          f"M={FLAGS.models} models (H={FLAGS.heads}, N={FLAGS.nodes} labelled nodes)")
    results = {}
    for spec in FLAGS.formats:
        root = os.path.join(FLAGS.dir, spec)
        shutil.rmtree(root, ignore_errors=True)
        build_s = _build(root, spec, nodes, FLAGS.seed)
        stored = _du(root)
        runs = [_query(root, q) for _ in range(FLAGS.repeats)]
        variants = [(spec, runs, stored, build_s)]
        if spec in FLAGS.pack:
            from mll_jax.labelling import LabelStore

            t = time.perf_counter()
            LabelStore(root).pack()
            pack_s = time.perf_counter() - t
            print(f"  {spec}: packed in {pack_s:.1f} s", flush=True)
            variants.append((spec + "+pack", [_query(root, q) for _ in range(FLAGS.repeats)], _du(root) - stored,
                             pack_s))
        shutil.rmtree(root, ignore_errors=True)
        for v in variants:
            _summarise(results, *v)
    _table(results)


def _summarise(results, spec, runs, stored, build_s):
    results[spec + ":sample"] = runs[0]["sample"]
    best = {k: min(r[k] for r in runs) for k in ("scan", "cold_read", "cold", "cold_cpu", "warm")}
    med = {k: statistics.median(r[k] for r in runs) for k in ("cold", "warm")}
    results[spec] = dict(best=best, med=med, stored=stored, build=build_s, cold_bytes=runs[-1]["cold_bytes"],
                         warm_bytes=runs[-1]["warm_bytes"])
    print(f"  {spec}: built in {build_s:.1f} s, stored {stored / 1e6:.1f} MB (a pack: its own size); "
          f"load {_load_average()}", flush=True)


def _table(results):
    import numpy as np

    samples = {k[:-7]: results.pop(k) for k in list(results) if k.endswith(":sample")}
    ref = samples.get("v1", samples.get("v2-float32"))
    for spec, r in results.items():
        r["err"] = float(np.abs(samples[spec] - ref).max()) if ref is not None else float("nan")
    m = FLAGS.models
    print(f"\n  {'store':17s} {'stored MB':>10s} {'cold s':>8s} {'(scan':>7s} {'+reads)':>8s} {'cold ms/model':>13s} "
          f"{'warm s':>8s} {'warm ms/model':>13s} {'cold MB read':>12s} {'warm MB read':>12s} {'max |err|':>10s}")
    for spec, r in results.items():
        b = r["best"]
        print(f"  {spec:17s} {r['stored'] / 1e6:10.1f} {b['cold']:8.3f} {b['scan']:7.3f} {b['cold_read']:8.3f} "
              f"{1e3 * b['cold'] / m:13.3f} {b['warm']:8.3f} {1e3 * b['warm'] / m:13.3f} "
              f"{r['cold_bytes'] / 1e6:12.2f} {r['warm_bytes'] / 1e6:12.2f} {r['err']:10.2e}")
    print(f"  (best of {FLAGS.repeats}; medians cold/warm: "
          + ", ".join(f"{s} {r['med']['cold']:.3f}/{r['med']['warm']:.3f} s" for s, r in results.items()) + ")")
    if "v1" in results:
        base = results["v1"]
        for spec, r in results.items():
            if spec == "v1":
                continue
            print(f"  {spec} vs v1: cold x{base['best']['cold'] / r['best']['cold']:.1f} faster, "
                  f"warm x{base['best']['warm'] / r['best']['warm']:.1f} faster, "
                  f"stored x{base['stored'] / r['stored']:.2f} smaller, "
                  f"cold bytes read x{base['cold_bytes'] / max(r['cold_bytes'], 1):.2f} fewer")
    print(f"  load average after part 1: {_load_average()}")


def _softmax0(a):
    import numpy as np

    e = np.exp(a - a.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def _min_gap(loss):
    """Smallest difference between two models' finite losses on the same class (how close a swap is)."""
    import numpy as np

    gaps = [np.diff(np.sort(col[np.isfinite(col)])) for col in np.asarray(loss).T]
    gaps = [g.min() for g in gaps if g.size]
    return float(min(gaps)) if gaps else float("inf")


def part2() -> None:
    import numpy as np

    from mll_jax.labelling import LabelStore
    from mll_jax.selection import chco_scores, label_submatrices, select_top_k

    print(f"\n== part 2: CHCO selection (k={FLAGS.k}, beta={FLAGS.beta}) with float32 vs reduced-precision label rows")
    rng = np.random.default_rng(FLAGS.seed + 1)
    for src in FLAGS.real_stores:
        if not os.path.isdir(src):
            print(f"  {src}: missing, skipped")
            continue
        s32 = LabelStore(src)
        ids = s32.model_ids()
        full = {m: s32.read_all(m) for m in ids}
        common = sorted(set.intersection(*(set(n) for n, _ in full.values())))
        heads = {m: a.shape[1] for m, (_, a) in full.items()}
        amax = max(float(np.abs(a).max()) for _, a in full.values())
        print(f"  store {src}: {len(ids)} models (heads {sorted(set(heads.values()))}), {len(common)} common "
              f"nodes, max |label| {amax:.2f}")
        stores = {"float32": s32}
        for dt in ("float32+1ulp", "float16", "bfloat16"):
            root = os.path.join(FLAGS.dir, f"real-{dt}")
            shutil.rmtree(root, ignore_errors=True)
            st = LabelStore(root, dtype=dt.split("+")[0])
            for m, (nodes, a) in full.items():
                if dt == "float32+1ulp":  # control: every label moved by one float32 ulp, up or down at random
                    to = np.where(rng.random(a.shape) < 0.5, -np.inf, np.inf).astype(np.float32)
                    a = np.nextafter(a, to)
                    assert a.dtype == np.float32
                st.commit(m, nodes, a)
            stores[dt] = st
            err = max(float(np.abs(st.read_all(m)[1] - a).max()) for m, (_, a) in full.items())
            rel = max(float((np.abs(st.read_all(m)[1] - a) / np.maximum(np.abs(a), 1e-30)).max())
                      for m, (_, a) in full.items())
            print(f"    {dt}: max |label error| {err:.3e}, max relative {rel:.3e}")
        for c in [int(x) for x in FLAGS.task_classes]:
            if c > len(common):
                continue
            tasks = [[common[i] for i in rng.choice(len(common), c, replace=False)] for _ in range(FLAGS.tasks)]
            res = {}
            unconv = {}
            for dt, st in stores.items():
                out = []
                unconv[dt] = 0
                for wnids in tasks:
                    S = label_submatrices(st, ids, wnids)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        sc = chco_scores(S, ids, progress=False)
                    unconv[dt] += int((~np.asarray(sc.info["converged"])).sum())
                    idx, valid = select_top_k(sc.loss, FLAGS.k, FLAGS.beta)
                    # Q = P^T X: each model's one-vs-rest predictor on the matched nodes (P = softmax over heads
                    # of the float32 labels, the same for every precision, so only X's effect is measured)
                    S32 = label_submatrices(stores["float32"], ids, wnids)
                    q = [_softmax0(a).T @ x for a, x in zip(S32, sc.columns)]
                    out.append((sc.loss, np.asarray(idx), q))
                res[dt] = out
            print(f"    C={c:2d}: CHCO models not converged (of {FLAGS.tasks * len(ids)}): "
                  + ", ".join(f"{dt} {n}" for dt, n in unconv.items()))
            for dt in ("float32+1ulp", "float16", "bfloat16"):
                n_sel = n_slot = n_task = 0
                dloss = dcol = 0.0
                n_top1 = 0
                margin = np.inf
                for (l32, i32, x32), (lq, iq, xq) in zip(res["float32"], res[dt]):
                    n_slot += int((i32 != iq).sum())
                    # idx is (C, k): row c = the experts of class c, best first, -1 = empty slot
                    n_sel += int(sum(set(i32[j]) != set(iq[j]) for j in range(i32.shape[0])))
                    n_top1 += int((i32[:, 0] != iq[:, 0]).sum())
                    n_task += int((i32 != iq).any())
                    dloss = max(dloss, float(np.abs(l32 - lq).max()))
                    dcol = max(dcol, max(float(np.abs(a - b).max()) for a, b in zip(x32, xq)))
                    margin = min(margin, _min_gap(l32))
                print(f"    C={c:2d}, {FLAGS.tasks} tasks, {dt}: tasks with any change {n_task}, classes whose "
                      f"selected set changed {n_sel} of {FLAGS.tasks * c} (top-1 changed {n_top1}; ranked slots "
                      f"changed {n_slot} of {FLAGS.tasks * c * FLAGS.k}); max |loss diff| {dloss:.2e} (smallest "
                      f"float32 loss gap between models {margin:.2e}); max |Q diff| (predictor on the nodes) "
                      f"{dcol:.2e}")
        for dt in ("float32+1ulp", "float16", "bfloat16"):
            shutil.rmtree(os.path.join(FLAGS.dir, f"real-{dt}"), ignore_errors=True)


def run_benchmark(argv):
    del argv
    print(f"label_store_bench: load average at start {_load_average()}")
    os.makedirs(FLAGS.dir, exist_ok=True)
    try:
        if FLAGS.models > 0 and FLAGS.formats:
            part1()
        if FLAGS.real_stores:
            part2()
    finally:
        shutil.rmtree(FLAGS.dir, ignore_errors=True)
    print(f"\nload average at end {_load_average()}")


def main(argv):
    """Run the benchmark, echoing its report, then write results/label_store_bench.json and .md with provenance
    (``mll_lab.results.record_report``): the flags, the report lines (the numbers as printed) and the load."""
    flag_values = {f.name: f.value for f in FLAGS.get_flags_for_module(sys.argv[0])}
    record_report("label_store_bench", "Label store: query cost by format and pack; selection with reduced-precision labels",
                  lambda: run_benchmark(argv), flags=flag_values)


if __name__ == "__main__":
    app.run(main)
