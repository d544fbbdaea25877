"""CHCO throughput benchmark.

Prints, in one run and one process:
  * models/s of ``mll_jax.chco.solve_batch`` for M models with H heads and C classes (default
    M=1000, H=1000, C=10 and 50), compilation timed separately;
  * the accuracy actually reached: relative objective error against a float64 solve (tol 1e-9) on a
    sample, and against cvxpy (Clarabel) on a smaller sample;
  * speed ratios against baselines run in the same process on a sample of the same models:
    - a per-model NumPy loop of the SAME algorithm as mll_jax's default (``np_pgd``: the same
      one-trial-step-per-iteration preconditioned projected gradient, stop rules and warm restarts,
      in the same dtype, with NumPy's natural sort-based projection): isolates what batching + XLA
      buys; it is ``mll_jax.chco.reference.np_pgd``, and tests/test_chco.py checks it takes the same steps;
    - the earlier baselines: a per-model NumPy loop of textbook FISTA (Euclidean steps, sort-based
      projection, backtracking, the same duality-gap stopping rule) and of preconditioned FISTA with
      backtracking (float64);
    - cvxpy + Clarabel per model;
  * the achieved fraction of this machine's measured matmul FLOP/s and memory read bandwidth, from an
    analytic count of the solver's work (documented in ``work_model``).

Instances mix three kinds (see ``make_instance``): 'normal' (N(0,1) logits), 'peaked' (a few heads per
class with +5..15 logits, like an ImageNet model's label on a node it knows) and 'scaled' (5x N(0,1)).

Writes results/chco_bench.json and results/chco_bench.md (``mll_lab.results.write_results``: the numbers, a table of
the speed ratios with n, C and H, and the provenance of the run).

Run:  python benchmarks/chco_bench.py                       (defaults: M=1000, H=1000, C=10,50)
      python benchmarks/chco_bench.py --models=200 --classes=10 --naive_sample=3
"""
from __future__ import annotations

import functools
import inspect
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from mll_jax import chco
from mll_jax.chco.chunks import SUBCHUNKS, as_mesh, default_round_iter, default_workers, head_bucket, models_per_chunk, padded_heads
from mll_jax.chco.reference import cvxpy_chco, make_instance as reference_instance, np_fista, np_pgd
from mll_jax.hub import ModelHub
from mll_jax.utils import atomic_save_npy, home
from mll_lab.results import markdown_table, write_results

FLAGS = flags.FLAGS
flags.DEFINE_integer("models", 1000, "number of models M")
flags.DEFINE_integer("heads", 1000, "heads per model H")
flags.DEFINE_list("classes", ["10", "50"], "class counts C to run")
flags.DEFINE_enum("method", "pgd", ["pgd", "fista", "head"], "CHCO algorithm")
flags.DEFINE_enum("dtype", "float32", ["float32", "float64"], "working precision")
flags.DEFINE_float("tol", 1e-5, "relative duality-gap tolerance")
flags.DEFINE_integer("chunk_size", 0, "models per chunk (0: automatic)")
flags.DEFINE_integer("workers", 0, "solve_batch's host threads (0: its default, one per CPU core)")
flags.DEFINE_bool("one_worker_too", True, "also time mll_jax with one host thread (same models, same process)")
flags.DEFINE_integer("accuracy_sample", 30, "models re-solved in float64 to measure the reached accuracy")
flags.DEFINE_integer("naive_sample", 6, "models solved by each per-model NumPy baseline")
flags.DEFINE_integer("old_baseline_sample", -1, "models solved by each of the two old NumPy FISTA baselines "
                     "(-1: --naive_sample); the textbook one takes up to a minute per model at C = 50")
flags.DEFINE_integer("naive_max_iter", 3000, "iteration cap of the NumPy baselines")
flags.DEFINE_integer("cvxpy_sample", 3, "models solved by cvxpy (0 to skip)")
flags.DEFINE_integer("cvxpy_max_entries", 20000,
                     "skip the cvxpy baseline above this H*C (Clarabel: ~45 s for one 120x50 instance)")
flags.DEFINE_integer("seed", 0, "random seed")
flags.DEFINE_bool("real", False, "also solve real instances: label matrices of the offline experts "
                  "(EfficientNet-Lite0/1/2, CIFAR-10 CNN) on the foolbox sample images, one node per "
                  "(dataset, class); the first run labels them (about a minute) and caches them under "
                  "$MLL_JAX_HOME/chco_bench/")
flags.DEFINE_integer("real_draws", 100, "random draws of C target nodes per expert (--real)")
flags.DEFINE_bool("synthetic", True, "run the synthetic instances")


# ------------------------------------------------------------------------------------------------
# Instances
# ------------------------------------------------------------------------------------------------

KINDS = ("normal", "peaked", "scaled")


def make_instance(rng, H, C, kind):
    """One instance of ``kind`` as float32: the tests' generator (:func:`mll_jax.chco.reference.make_instance`), so
    the benchmark and the tests draw the same families."""
    return reference_instance(rng, H, C, kind).astype(np.float32)


def real_label_matrices():
    """``{expert_id: L}`` with ``L`` (nodes, heads) float32: mean logits of each offline expert on the
    images of each node, a node being one (dataset, class) group of the foolbox sample images
    (ImageNet, CIFAR-10, CIFAR-100, Fashion-MNIST, MNIST; grayscale images are converted to RGB).
    These are leaf-node labels (Eq. 1) on real images; no SDAG propagation. Cached as .npy files."""
    import importlib.util

    from PIL import Image


    cache = home() / "chco_bench" / "real_labels"
    spec = importlib.util.find_spec("foolbox")  # locate only (importing foolbox needs eagerpy)
    if spec is None or spec.origin is None:
        raise SystemExit("--real needs the PyPI package foolbox (its sample images)")
    data = os.path.join(os.path.dirname(spec.origin), "data")
    groups: dict = {}
    for f in sorted(os.listdir(data)):
        if f.endswith((".png", ".jpg")):
            ds, _, cls = f.rsplit(".", 1)[0].split("_")
            groups.setdefault(f"{ds}/{cls}", []).append(f)
    nodes = sorted(groups)

    hub = None
    out = {}
    for mid in ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "cifar10-cnn"):
        path = cache / f"{mid}.npy"
        if path.is_file():
            out[mid] = np.load(path)
            continue
        if hub is None:
            hub = ModelHub.with_offline_experts(home() / "chco_bench" / "hub")
        if mid not in hub.ids():
            print(f"  (expert {mid} not installed; skipped)")
            continue
        model = hub.load(mid)
        # One forward pass per image size (few compilations), then the mean over each node's images.
        by_shape: dict = {}
        for f in sorted(f for n in nodes for f in groups[n]):
            img = np.asarray(Image.open(os.path.join(data, f)).convert("RGB"), np.uint8)
            by_shape.setdefault(img.shape, []).append((f, img))
        logits = {}
        for items in by_shape.values():
            out_l = np.asarray(model.logits(np.stack([im for _, im in items])), np.float64)
            logits.update(zip([f for f, _ in items], out_l))
        out[mid] = np.asarray([np.mean([logits[f] for f in groups[n]], 0) for n in nodes], np.float32)
        atomic_save_npy(path, out[mid])
    return nodes, out


def time_one_worker(Ss, warm, kw, t_run, c_run):
    """With --one_worker_too and more than one worker: time solve_batch on ``Ss`` with one worker thread (after
    compiling its call shape on ``warm``) and print it against the run that took ``t_run`` / ``c_run``."""

    if not FLAGS.one_worker_too or kw["workers"] <= 1:
        return
    kw1 = dict(kw, workers=1)
    chco.solve_batch(warm, **kw1)
    t0, c0 = time.perf_counter(), time.process_time()
    chco.solve_batch(Ss, **kw1)
    t1, c1 = time.perf_counter() - t0, time.process_time() - c0
    print(f"  (mll_jax with 1 worker thread: {t1:.2f} s, CPU time {c1:.2f} s; the {kw['workers']} threads "
          f"are x{t1 / t_run:.2f} faster in wall time, x{c1 / c_run:.2f} in CPU time)")


def run_real(C, kw, rows):
    """The real instances at ``C`` classes; appends one row (see :func:`main`) to ``rows``."""
    nodes, mats = real_label_matrices()
    if C > len(nodes):
        print(f"\n=== real instances, C={C}: skipped, only {len(nodes)} labelled nodes ===")
        return
    rng = np.random.default_rng(FLAGS.seed + 7 * C)
    Ss, owner = [], []
    for mid, L in mats.items():
        for _ in range(FLAGS.real_draws):
            Ss.append(np.ascontiguousarray(L[rng.choice(len(nodes), C, replace=False)].T))
            owner.append(mid)
    owner = np.array(owner)
    M = len(Ss)
    print(f"\n=== real instances: C={C}, {FLAGS.real_draws} random draws of C of {len(nodes)} nodes "
          f"for each of {len(mats)} experts (M={M}) ===")
    chco.solve_batch(Ss, **kw)  # compilation
    t0, c0 = time.perf_counter(), time.process_time()
    res = chco.solve_batch(Ss, **kw)
    t_run, c_run = time.perf_counter() - t0, time.process_time() - c0
    print(f"mll_jax: {t_run:.2f} s (CPU time {c_run:.2f} s) for {M} models; converged {res.converged.mean() * 100:.1f}%")
    row = result_row("real", M, C, "/".join(str(L.shape[1]) for L in mats.values()), t_run, c_run, res)
    rows.append(row)
    time_one_worker(Ss, Ss, kw, t_run, c_run)
    for mid in mats:
        sel = owner == mid
        print(f"  {mid} (H={mats[mid].shape[1]}): iterations mean {res.iterations[sel].mean():.1f} / max "
              f"{res.iterations[sel].max()}, converged {res.converged[sel].mean() * 100:.0f}%, "
              f"objective median {np.median(res.objective[sel]):.3g}")
    n = min(FLAGS.naive_sample, M)
    if n:
        idx = np.linspace(0, M - 1, n).astype(int)
        same = functools.partial(np_pgd, tol=FLAGS.tol, max_iter=FLAGS.naive_max_iter, dtype=FLAGS.dtype,
                                 round_iter=default_round_iter(FLAGS.method, C))
        dt, cdt, out, blas = time_same_algorithm(same, [Ss[i] for i in idx])
        row["baselines"]["numpy_same_algorithm"] = baseline_entry(n, dt, cdt, out, t_run, c_run, M, blas)
        print(f"  baseline NumPy loop, SAME algorithm (pgd) on {n} of them ({blas}): {dt:.4f} s/model, iterations mean "
              f"{np.mean([o[1] for o in out]):.1f}, certified {np.mean([o[2] for o in out]) * 100:.0f}%; "
              f"mll_jax speed-up x{M / t_run * dt:.3g} (wall), x{M / c_run * cdt:.3g} (CPU time)")
        n = n if FLAGS.old_baseline_sample < 0 else min(n, FLAGS.old_baseline_sample)
        if n < 1:
            return
        idx = idx[:n]
        t0, c0 = time.perf_counter(), time.process_time()
        out = [np_fista(Ss[i], FLAGS.tol, FLAGS.naive_max_iter, True) for i in idx]
        dt, cdt = (time.perf_counter() - t0) / n, (time.process_time() - c0) / n
        row["baselines"]["numpy_fista_preconditioned"] = baseline_entry(n, dt, cdt, out, t_run, c_run, M)
        print(f"  baseline NumPy loop, preconditioned FISTA (old) on {n} of them: {dt:.4f} s/model, iterations mean "
              f"{np.mean([o[1] for o in out]):.0f}; mll_jax speed-up x{M / t_run * dt:.3g} (wall), "
              f"x{M / c_run * cdt:.3g} (CPU time)")


# ------------------------------------------------------------------------------------------------
# Timing the NumPy same-algorithm baseline (mll_jax.chco.reference.np_pgd)
# ------------------------------------------------------------------------------------------------


def _openblas_threads():
    """(get, set) for the thread count of NumPy's bundled OpenBLAS (scipy-openblas), or None."""
    import ctypes
    import glob


    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs", "libscipy_openblas*.so*"))
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
            get, set_ = lib.scipy_openblas_get_num_threads64_, lib.scipy_openblas_set_num_threads64_
        except (OSError, AttributeError):
            continue
        get.restype = ctypes.c_int
        set_.argtypes = [ctypes.c_int]
        return get, set_
    return None


def time_same_algorithm(fn, sample):
    """Per-model wall and CPU time of the NumPy same-algorithm loop, the better of NumPy's default
    BLAS threading and one BLAS thread (on a shared 2-core machine multithreaded BLAS can collapse:
    measured 46 ms/model at C = 50 idle, 1.4-2.4 s/model at load 4). Taking the faster of the two
    keeps the baseline at its strongest whatever the load. Returns (wall, cpu, outputs, label)."""
    best = None
    ctl = _openblas_threads()
    settings = [None] + ([1] if ctl is not None and ctl[0]() > 1 else [])
    for nthreads in settings:
        old = None
        if nthreads is not None:
            old = ctl[0]()
            ctl[1](nthreads)
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            out = [fn(S) for S in sample]
            dt, cdt = (time.perf_counter() - t0) / len(sample), (time.process_time() - c0) / len(sample)
        finally:
            if old is not None:
                ctl[1](old)
        label = "default BLAS threads" if nthreads is None else f"{nthreads} BLAS thread"
        print(f"    (same-algorithm NumPy loop, {label}: {dt:.4f} s/model wall, {cdt:.4f} s CPU)")
        if best is None or dt < best[0]:
            best = (dt, cdt, out, label)
    return best


# ------------------------------------------------------------------------------------------------
# Machine peaks and the work model
# ------------------------------------------------------------------------------------------------


def measure_peaks():
    """Best-of-5 float32 matmul FLOP/s (2048^3) and read bandwidth (sum over 256 MiB)."""

    n = 2048
    a = jnp.ones((n, n), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    mm(a).block_until_ready()
    best = min(_timed(lambda: mm(a).block_until_ready()) for _ in range(5))
    flops = 2 * n**3 / best
    # Read bandwidth: a reduction over 256 MiB (an elementwise copy would mostly time the page
    # faults of its freshly allocated output).
    v = jnp.ones((64 * 2**20,), jnp.float32)
    rd = jax.jit(lambda x: jnp.sum(x))
    rd(v).block_until_ready()
    best = min(_timed(lambda: rd(v).block_until_ready()) for _ in range(5))
    bw = v.size * 4 / best
    return flops, bw


def _default_chunk_bytes(chco):
    return inspect.signature(chco.solve_batch).parameters["max_chunk_bytes"].default


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def work_model(iterations, H, C, itemsize):
    """Analytic work of mll_jax's pgd per iteration and model (its matrix products only, a lower bound):
    the trial's ``dX^T P`` and ``G = P W``, 2 H C^2 flops each; memory: about 20 passes over (H, C)
    arrays (P, X, G, the metric, the projection's 3-5 passes, the trial, the gap)."""
    flops = 4.0 * H * C * C * iterations
    bytes_ = 20.0 * H * C * itemsize * iterations
    return flops, bytes_


# ------------------------------------------------------------------------------------------------
# Result rows and files
# ------------------------------------------------------------------------------------------------


def result_row(instances, M, C, H, t_run, c_run, res):
    """One row of the results: mll_jax's time and outcome on ``M`` models (baselines are added to it)."""
    return dict(instances=instances, n=M, C=C, H=H, wall_s=round(t_run, 3), cpu_s=round(c_run, 3),
                models_per_s=round(M / t_run, 2), certified=float(res.converged.mean()),
                iterations_mean=round(float(res.iterations.mean()), 2), iterations_max=int(res.iterations.max()),
                baselines={})


def baseline_entry(n, dt, cdt, out, t_run, c_run, M, blas=None):
    """A per-model baseline timed on ``n`` of the ``M`` models: its time per model and mll_jax's speed ratios
    (wall and CPU time) against it, measured in the same process."""
    its = np.array([o[1] for o in out], float)
    entry = dict(models=n, s_per_model=round(dt, 5), cpu_s_per_model=round(cdt, 5),
                 iterations_mean=round(float(its.mean()), 2), speedup_wall=round(M / t_run * dt, 3),
                 speedup_cpu=round(M / c_run * cdt, 3))
    if len(out[0]) > 2:
        entry["certified"] = float(np.mean([o[2] for o in out]))
    if blas is not None:
        entry["blas"] = blas
    return entry


def write_files(rows, peaks, load0):
    """results/chco_bench.json and .md: one table row per (instances, C)."""
    def ratio(r, key):
        b = r["baselines"].get(key)
        return f"x{b['speedup_wall']:.3g} / x{b['speedup_cpu']:.3g}" if b else "-"

    def same_s(r):
        b = r["baselines"].get("numpy_same_algorithm")
        return f"{b['s_per_model'] * 1e3:.1f} ({b['models']})" if b else "-"

    table = markdown_table(
        ["instances", "n", "C", "H", "mll_jax wall s", "models/s", "certified", "iterations mean / max",
         "NumPy same-algorithm ms/model (models)", "ratio vs same algorithm (wall / CPU)",
         "vs preconditioned FISTA", "vs textbook FISTA", "max rel. error vs float64"],
        [[r["instances"], r["n"], r["C"], r["H"], f"{r['wall_s']:.2f}", f"{r['models_per_s']:.1f}",
          f"{r['certified'] * 100:.1f}%", f"{r['iterations_mean']:.1f} / {r['iterations_max']}", same_s(r),
          ratio(r, "numpy_same_algorithm"), ratio(r, "numpy_fista_preconditioned"), ratio(r, "numpy_fista_textbook"),
          f"{r['accuracy_max_rel_error']:.1e}" if "accuracy_max_rel_error" in r else "-"] for r in rows])
    text = (f"`mll_jax.chco.solve_batch` (method {FLAGS.method}, {FLAGS.dtype}, tol {FLAGS.tol}) against per-model NumPy "
            "loops run in the same process on a sample of the same models. Ratios are mll_jax's speed-up in wall and in "
            "CPU time; the same-algorithm loop is `mll_jax.chco.reference.np_pgd` (the steps of the default `pgd`). "
            "Accuracy: the objective of the returned X, evaluated in float64, against a float64 solve at tol 1e-9.\n\n"
            + table)
    data = dict(flags={k: FLAGS[k].value for k in (
        "models", "heads", "classes", "method", "dtype", "tol", "chunk_size", "workers", "accuracy_sample",
        "naive_sample", "old_baseline_sample", "naive_max_iter", "cvxpy_sample", "seed", "real", "real_draws",
        "synthetic")}, machine_peaks=peaks, rows=rows)
    paths = write_results("chco_bench", data, text, title="CHCO solve_batch against per-model NumPy baselines",
                          load_at_start=load0)
    print("\nwrote " + ", ".join(str(p) for p in paths))


def main(argv):
    del argv
    load0 = os.getloadavg()
    if FLAGS.dtype == "float64" or FLAGS.accuracy_sample:
        jax.config.update("jax_enable_x64", True)
    rows: list = []
    dtype = jnp.float32 if FLAGS.dtype == "float32" else jnp.float64
    workers = FLAGS.workers or default_workers(as_mesh(None))
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} CPU cores); "
          f"method={FLAGS.method} dtype={FLAGS.dtype} tol={FLAGS.tol}; solve_batch workers={workers}")
    peak_flops, peak_bw = measure_peaks()
    print(f"machine: matmul {peak_flops / 1e9:.1f} GFLOP/s (f32 2048^3), read bandwidth {peak_bw / 1e9:.1f} GB/s")
    peaks = dict(matmul_gflops=round(peak_flops / 1e9, 2), read_gb_per_s=round(peak_bw / 1e9, 2))

    for C in [int(c) for c in FLAGS.classes]:
        if FLAGS.real:
            run_real(C, dict(method=FLAGS.method, tol=FLAGS.tol, dtype=dtype, progress=False,
                             chunk_size=FLAGS.chunk_size or None, workers=workers), rows)
        if not FLAGS.synthetic:
            continue
        M, H = FLAGS.models, FLAGS.heads
        rng = np.random.default_rng(FLAGS.seed + C)
        Ss = [make_instance(rng, H, C, KINDS[i % 3]) for i in range(M)]
        kw = dict(method=FLAGS.method, tol=FLAGS.tol, dtype=dtype, progress=False,
                  chunk_size=FLAGS.chunk_size or None, workers=workers)
        print(f"\n=== M={M} H={H} C={C} ===")
        cs = FLAGS.chunk_size or models_per_chunk(M, padded_heads(head_bucket(H), H), C, np.dtype(dtype).itemsize, None, _default_chunk_bytes(chco))
        # The compiled call shape of the timed run is compiled here (pgd solves every model in one
        # pass of calls of cs * _SUBCHUNKS models when there are enough models for every worker; the
        # last call is filled up to that shape), so the timed run measures solving, not compiling.
        t0 = time.perf_counter()
        chco.solve_batch(Ss[: min(M, cs * SUBCHUNKS * workers)], **kw)
        t_first = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        res = chco.solve_batch(Ss, **kw)
        t_run, c_run = time.perf_counter() - t0, time.process_time() - c0
        rate, c_rate = M / t_run, M / c_run
        print(f"mll_jax: {t_run:.2f} s for {M} models = {rate:.1f} models/s "
              f"(CPU time {c_run:.2f} s; warm-up chunk incl. compilation {t_first:.1f} s); converged {res.converged.mean() * 100:.1f}%; "
              f"iterations mean {res.iterations.mean():.1f} / max {res.iterations.max()}")
        row = result_row("synthetic", M, C, H, t_run, c_run, res)
        rows.append(row)
        time_one_worker(Ss, Ss[: min(M, cs * SUBCHUNKS)], kw, t_run, c_run)
        flops, bytes_ = work_model(res.iterations.sum(), H, C, np.dtype(dtype).itemsize)
        print(f"  achieved {flops / t_run / 1e9:.2f} GFLOP/s = {flops / t_run / peak_flops * 100:.1f}% of matmul peak; "
              f"{bytes_ / t_run / 1e9:.2f} GB/s = {bytes_ / t_run / peak_bw * 100:.1f}% of read bandwidth (work model)")

        # Accuracy actually reached, against float64 solves of the same models.
        n_acc = min(FLAGS.accuracy_sample, M)
        if n_acc:
            idx = np.linspace(0, M - 1, n_acc).astype(int)
            ref = chco.solve_batch([Ss[i].astype(np.float64) for i in idx], method="fista", tol=1e-9,
                                   dtype=jnp.float64, progress=False)
            got = np.array([float(chco.objective(jnp.asarray(Ss[i], jnp.float64),
                                                 jnp.asarray(res.X[i], jnp.float64))) for i in idx])
            rel = (got - ref.objective) / np.abs(ref.objective)
            row["accuracy_max_rel_error"] = float(rel.max())
            print(f"  accuracy on {n_acc} models vs float64 (tol 1e-9): max rel error {rel.max():.2e}, "
                  f"within 1e-5: {(rel <= 1e-5).mean() * 100:.0f}%, within 1e-4: {(rel <= 1e-4).mean() * 100:.0f}%")

        # Per-model baselines on a sample (same models, same process).
        n_naive = min(FLAGS.naive_sample, M)
        if n_naive:
            sample = [Ss[i] for i in np.linspace(0, M - 1, n_naive).astype(int)]
            same = functools.partial(np_pgd, tol=FLAGS.tol, max_iter=FLAGS.naive_max_iter, dtype=FLAGS.dtype,
                                     round_iter=default_round_iter(FLAGS.method, C))
            n_old = n_naive if FLAGS.old_baseline_sample < 0 else min(FLAGS.old_baseline_sample, n_naive)
            for key, label, fn, n_b in (
                    ("numpy_same_algorithm", "NumPy loop, SAME algorithm (pgd, one trial step/iteration)", same, n_naive),
                    ("numpy_fista_textbook", "NumPy loop, textbook FISTA (old)",
                     lambda S: np_fista(S, FLAGS.tol, FLAGS.naive_max_iter, False), n_old),
                    ("numpy_fista_preconditioned", "NumPy loop, preconditioned FISTA (old)",
                     lambda S: np_fista(S, FLAGS.tol, FLAGS.naive_max_iter, True), n_old)):
                if n_b < 1:
                    continue
                blas = None
                if fn is same:
                    dt, cdt, out, blas = time_same_algorithm(fn, sample[:n_b])
                    label += f", {blas}"
                else:
                    t0, c0 = time.perf_counter(), time.process_time()
                    out = [fn(S) for S in sample[:n_b]]
                    dt = (time.perf_counter() - t0) / n_b
                    cdt = (time.process_time() - c0) / n_b
                row["baselines"][key] = baseline_entry(n_b, dt, cdt, out, t_run, c_run, M, blas)
                its = np.array([o[1] for o in out])
                capped = int((its >= FLAGS.naive_max_iter).sum())
                conv_s = f", certified {np.mean([o[2] for o in out]) * 100:.0f}%" if len(out[0]) > 2 else ""
                print(f"  baseline {label} ({n_b} models): {dt:.4f} s/model ({1 / dt:.2f} models/s), iterations mean "
                      f"{its.mean():.1f}{f', {capped} hit the cap' if capped else ''}{conv_s}; "
                      f"mll_jax speed-up x{rate * dt:.3g} (wall), x{c_rate * cdt:.3g} (CPU time)")
        n_cvx = min(FLAGS.cvxpy_sample, M)
        if n_cvx and H * C > FLAGS.cvxpy_max_entries:
            print(f"  baseline cvxpy+Clarabel: skipped, H*C = {H * C} > --cvxpy_max_entries="
                  f"{FLAGS.cvxpy_max_entries} (every entry of Q couples all H heads; at H=120, C=50 one "
                  f"solve already takes about 45 s here)")
        elif n_cvx:
            idx = np.linspace(0, M - 1, n_cvx).astype(int)
            t0 = time.perf_counter()
            vals = [cvxpy_chco(Ss[i].astype(np.float64))[0] for i in idx]
            dt = (time.perf_counter() - t0) / n_cvx
            got = np.array([float(chco.objective(jnp.asarray(Ss[i], jnp.float64),
                                                 jnp.asarray(res.X[i], jnp.float64))) for i in idx])
            rel = (got - np.array(vals)) / np.abs(vals)
            row["baselines"]["cvxpy_clarabel"] = dict(models=n_cvx, s_per_model=round(dt, 3),
                                                      speedup_wall=round(rate * dt, 3), max_rel_error=float(rel.max()))
            print(f"  baseline cvxpy+Clarabel: {dt:.2f} s/model; mll_jax speed-up x{rate * dt:.3g}; "
                  f"mll_jax rel. objective vs cvxpy: max {rel.max():.1e}")
    write_files(rows, peaks, load0)


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore", message=".*too many subexpressions.*")
    app.run(main)
