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
      buys; tests/test_chco.py checks it takes the same steps;
    - the earlier baselines: a per-model NumPy loop of textbook FISTA (Euclidean steps, sort-based
      projection, backtracking, the same duality-gap stopping rule) and of preconditioned FISTA with
      backtracking (float64);
    - cvxpy + Clarabel per model;
  * the achieved fraction of this machine's measured matmul FLOP/s and memory read bandwidth, from an
    analytic count of the solver's work (documented in ``work_model``).

Instances mix three kinds (see ``make_instance``): 'normal' (N(0,1) logits), 'peaked' (a few heads per
class with +5..15 logits, like an ImageNet model's label on a node it knows) and 'scaled' (5x N(0,1)).

Run:  python benchmarks/chco_bench.py                       (defaults: M=1000, H=1000, C=10,50)
      python benchmarks/chco_bench.py --models=200 --classes=10 --naive_sample=3
"""
from __future__ import annotations

import functools
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

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
    """One instance of ``kind`` as float32: the test suite's generator (``tests/chco_reference.py``), so the
    benchmark and the tests draw the same families."""
    import numpy as np

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from chco_reference import make_instance as _make

    return _make(rng, H, C, kind).astype(np.float32)


def real_label_matrices():
    """``{expert_id: L}`` with ``L`` (nodes, heads) float32: mean logits of each offline expert on the
    images of each node, a node being one (dataset, class) group of the foolbox sample images
    (ImageNet, CIFAR-10, CIFAR-100, Fashion-MNIST, MNIST; grayscale images are converted to RGB).
    These are leaf-node labels (Eq. 1) on real images; no SDAG propagation. Cached as .npy files."""
    import importlib.util

    import numpy as np
    from PIL import Image

    from mll_jax.utils import atomic_save_npy, home

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
    from mll_jax.hub import ModelHub

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
    from mll_jax import chco

    if not FLAGS.one_worker_too or kw["workers"] <= 1:
        return
    kw1 = dict(kw, workers=1)
    chco.solve_batch(warm, **kw1)
    t0, c0 = time.perf_counter(), time.process_time()
    chco.solve_batch(Ss, **kw1)
    t1, c1 = time.perf_counter() - t0, time.process_time() - c0
    print(f"  (mll_jax with 1 worker thread: {t1:.2f} s, CPU time {c1:.2f} s; the {kw['workers']} threads "
          f"are x{t1 / t_run:.2f} faster in wall time, x{c1 / c_run:.2f} in CPU time)")


def run_real(C, kw):
    import numpy as np

    from mll_jax import chco

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
                                 round_iter=chco._default_round_iter(FLAGS.method, C))
        dt, cdt, out, blas = time_same_algorithm(same, [Ss[i] for i in idx])
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
        print(f"  baseline NumPy loop, preconditioned FISTA (old) on {n} of them: {dt:.4f} s/model, iterations mean "
              f"{np.mean([o[1] for o in out]):.0f}; mll_jax speed-up x{M / t_run * dt:.3g} (wall), "
              f"x{M / c_run * cdt:.3g} (CPU time)")


# ------------------------------------------------------------------------------------------------
# NumPy baselines (per model)
# ------------------------------------------------------------------------------------------------


def np_objective_parts(P, X):
    import numpy as np

    C = P.shape[1]
    Q = P.T @ X
    R = P.T @ (1 - X)
    tiny = np.finfo(P.dtype).tiny
    off = ~np.eye(C, dtype=bool)
    loss = -np.log(np.maximum(np.diag(Q), tiny)) - (np.log(np.maximum(R, tiny)) * off).sum(0) / (C - 1)
    with np.errstate(divide="ignore", over="ignore"):  # np.where evaluates both branches; R's diagonal is unused
        W = np.where(off, 1 / ((C - 1) * np.maximum(R, tiny)), -1 / np.maximum(np.diag(Q), tiny)[None, :])
        W2 = np.where(off, 1 / ((C - 1) * np.maximum(R, tiny) ** 2), 1 / np.maximum(np.diag(Q), tiny)[None, :] ** 2)
    return Q, R, loss.sum(), P @ W, (P * P) @ W2


def np_project_sort(Y):
    """Row-wise Euclidean projection onto the capped simplex (sort-based)."""
    import numpy as np

    clipped = np.maximum(Y, 0)
    inside = clipped.sum(1) <= 1
    U = -np.sort(-Y, axis=1)
    css = np.cumsum(U, axis=1) - 1
    k = np.arange(1, Y.shape[1] + 1)
    rho = (U - css / k > 0).sum(1)
    tau = css[np.arange(Y.shape[0]), rho - 1] / rho
    return np.where(inside[:, None], clipped, np.maximum(Y - tau[:, None], 0))


def np_project_weighted(Y, w):
    """Row-wise projection in the metric sum (x - y)^2 / w (Newton on the multiplier)."""
    import numpy as np

    lam = np.zeros(Y.shape[0], Y.dtype)
    for _ in range(Y.shape[1] + 1):
        act = Y - lam[:, None] * w > 0
        num = np.where(act, Y, 0).sum(1) - 1
        den = np.where(act, w, 0).sum(1)
        new = np.maximum(lam, np.maximum(np.where(den > 0, num / np.where(den > 0, den, 1), 0), 0))
        if np.array_equal(new, lam):
            break
        lam = new
    return np.clip(Y - lam[:, None] * w, 0, 1)


def np_project_weighted_sort(Y, w):
    """Row-wise projection onto the capped simplex in the metric sum (x - y)^2 / w, sort-based:
    breakpoints t = y / w sorted descending, lam_k = (cumsum y - 1) / cumsum w, the active set is
    the longest prefix with t_k > lam_k; lam clamped at 0 (inside case)."""
    import numpy as np

    t = Y / w
    order = np.argsort(-t, axis=1)
    ys, ws, ts = (np.take_along_axis(a, order, axis=1) for a in (Y, w, t))
    lam_k = (np.cumsum(ys, axis=1) - 1) / np.cumsum(ws, axis=1)
    k = (ts > lam_k).sum(1)
    lam = np.maximum(lam_k[np.arange(Y.shape[0]), k - 1], 0)
    return np.clip(Y - lam[:, None] * w, 0, 1)


def _np_log_acc(A, B):
    """log A for A = 1 - B, as mll_jax.chco._log_acc (log1p(-B) where A > 1/2)."""
    import numpy as np

    tiny = np.finfo(A.dtype).tiny
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(A > 0.5, np.log1p(-np.minimum(B, 0.5)), np.log(np.maximum(A, tiny)))


def np_pgd(S, tol, max_iter, round_iter=12, dtype="float32", atol=None):
    """Per-model NumPy loop of the SAME algorithm as mll_jax's default ``pgd``: a bound of the Hessian's
    diagonal as the metric (chco._metric_diag), one trial step per iteration (accepted on sufficient
    decrease computed with log1p from dQ = P^T dX; then Q += dQ, R -= dQ, both recomputed from X at
    every restart after the first; otherwise X is kept and a halves), a <- min(2a, 1) on acceptance after an acceptance, the duality-gap
    stop (gap <= tol |f| + atol, atol 1e-7 in float32 and 0 in float64), 30 consecutive rejections
    or chco._PGD_FLAT_STOP (100) round-off-level full steps (a = 1) stop, and the step length re-initialised by the quadratic-model ray
    every ``round_iter`` iterations (solve_batch's warm restart, done inside its compiled loop; the stop
    counters carry across restarts). The projection is
    the natural NumPy one (sort-based, weighted). Returns (objective, iterations, converged)."""
    import numpy as np

    from mll_jax import chco

    dt = np.dtype(dtype)
    S = np.asarray(S, dt)
    Z = np.exp(S - S.max(0))
    P = Z / Z.sum(0)
    P2 = P * P
    H, C = P.shape
    eps, tiny = np.finfo(dt).eps, np.finfo(dt).tiny
    atol = (0.0 if dt == np.float64 else 1e-7) if atol is None else atol
    off = ~np.eye(C, dtype=bool)
    eye = ~off

    rs2 = P2.sum(1, keepdims=True)  # (H, 1)

    def weights(Q, R):
        qd = np.maximum(np.diag(Q), tiny)[None, :]
        Rc = np.maximum(R, tiny)
        W = np.where(eye, -1 / qd, 1 / ((C - 1) * Rc))
        W2 = np.where(eye, 1 / (qd * qd), 1 / ((C - 1) * Rc * Rc))
        return W, W2

    def loss_of(Q, R):
        return (-_np_log_acc(np.diag(Q), np.diag(R)) - np.where(off, _np_log_acc(R, Q), 0).sum(0) / (C - 1)).sum()

    def evaluate(Q, R):
        # G = P W and the metric: the bound of the Hessian's diagonal of chco._metric_diag,
        # P^2 diag(W2) + max_{c' != c} W2[c', c] (row sum of P^2 - P^2), floored at its first term.
        W, W2 = weights(Q, R)
        first = P2 * np.diag(W2)[None, :]
        D = np.maximum(first + np.where(off, W2, 0).max(0)[None, :] * (rs2 - P2), first)
        return loss_of(Q, R), P @ W, D

    def gap_of(G, X):
        m = np.minimum(G.min(1), 0)
        return ((X * (G - m[:, None])).sum(1) + m * (X.sum(1) - 1)).sum()

    def metric(D):
        return 1 / np.maximum(D, max(D.max(), 1) * dt.type(1e-12))

    def nlog1p(v):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(v > -1, -np.log1p(np.maximum(v, -1 + np.finfo(dt).epsneg)), np.inf)

    X = np.full((H, C), 1.0 / C, dt)
    Q, R = P.T @ X, P.T @ (1 - X)
    f, G, D = evaluate(Q, R)
    gap = gap_of(G, X)
    flat = rej = 0
    k = 0
    while k < max_iter and not gap <= tol * abs(f) + atol:
        if k % round_iter == 0:  # (re)start: the quadratic model's minimiser along the scaled ray
            if k > 0:  # Q and R, updated by dQ in between, recomputed from X
                Q, R = P.T @ X, P.T @ (1 - X)
                f = loss_of(Q, R)
            W2 = weights(Q, R)[1]
            d = -metric(D) * G
            curv = (W2 * np.square(P.T @ d)).sum()
            ray = -(G * d).sum() / max(curv, tiny)
            a = float(np.clip(ray, eps, 1.0)) if np.isfinite(ray) else 1.0
        scale = metric(D)
        step = a * scale
        Xn = np_project_weighted_sort(X - step * G, step)
        Dx = Xn - X
        dQ = P.T @ Dx
        dl = (nlog1p(np.diag(dQ) / np.maximum(np.diag(Q), tiny))
              + np.where(off, nlog1p(-dQ / np.maximum(R, tiny)), 0).sum(0) / (C - 1)).sum()
        ok = dl <= (G * Dx).sum() + 0.5 / a * (Dx * Dx / scale).sum()
        flat = flat + 1 if ok and -dl <= 4 * eps * abs(f) and a >= 1 else 0
        grow = ok and rej == 0
        rej = 0 if ok else rej + 1
        k += 1
        if ok:
            X = Xn
            Q, R = Q + dQ, R - dQ
            f, G, D = evaluate(Q, R)
            gap = gap_of(G, X)
            a = min(2 * a, 1.0) if grow else a
        else:
            a = a / 2
        if rej >= 30 or flat >= chco._PGD_FLAT_STOP:
            break
    return f, k, bool(gap <= tol * abs(f) + atol)


def np_fista(S, tol, max_iter, precondition):
    """Per-model FISTA in NumPy: backtracking, function-value restart, duality-gap stop."""
    import numpy as np

    S = np.asarray(S, np.float64)
    Z = np.exp(S - S.max(0))
    P = Z / Z.sum(0)
    H, C = P.shape
    X = np.full((H, C), 1.0 / C)
    _, _, f, G, D = np_objective_parts(P, X)
    Y, fY, GY, DY = X, f, G, D
    a, t = (1.0 if precondition else 1.0 / max(np.abs(G).max(), 1.0)), 1.0
    for k in range(1, max_iter + 1):
        scale = 1 / np.maximum(DY, max(DY.max(), 1) * 1e-12) if precondition else 1.0
        a *= 2
        for _ in range(60):
            a /= 2
            if a == 0.0:  # the step underflowed (a stuck model, seen on a real C = 50 instance): give up
                return f, k
            step = a * scale
            Xn = np_project_weighted(Y - step * GY, step * np.ones_like(Y)) if precondition else np_project_sort(Y - step * GY)
            _, _, fn, Gn, Dn = np_objective_parts(P, Xn)
            Dx = Xn - Y
            quad = (Dx * Dx / scale).sum() if precondition else (Dx * Dx).sum()
            if fn <= fY + (GY * Dx).sum() + 0.5 / a * quad:
                break
        m = np.minimum(Gn.min(1, keepdims=True), 0)
        gap = (Xn * (Gn - m)).sum() + (m[:, 0] * (Xn.sum(1) - 1)).sum()
        if gap <= tol * abs(fn):
            return fn, k
        t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
        if fn > f:
            Y, t_next = Xn, 1.0
        else:
            Y = Xn + (t - 1) / t_next * (Xn - X)
        X, f, t = Xn, fn, t_next
        _, _, fY, GY, DY = np_objective_parts(P, Y)
        if not np.isfinite(fY):
            Y, fY, GY, DY, t = Xn, fn, Gn, Dn, 1.0
        a = min(a * 2, 1.0) if precondition else a * 1.25
    return f, max_iter


def _openblas_threads():
    """(get, set) for the thread count of NumPy's bundled OpenBLAS (scipy-openblas), or None."""
    import ctypes
    import glob

    import numpy as np

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
    import jax
    import jax.numpy as jnp

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
    import inspect

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


def main(argv):
    del argv
    import jax
    import numpy as np

    if FLAGS.dtype == "float64" or FLAGS.accuracy_sample:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from mll_jax import chco

    dtype = jnp.float32 if FLAGS.dtype == "float32" else jnp.float64
    workers = FLAGS.workers or chco._default_workers(chco._as_mesh(None))
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} CPU cores); "
          f"method={FLAGS.method} dtype={FLAGS.dtype} tol={FLAGS.tol}; solve_batch workers={workers}")
    peak_flops, peak_bw = measure_peaks()
    print(f"machine: matmul {peak_flops / 1e9:.1f} GFLOP/s (f32 2048^3), read bandwidth {peak_bw / 1e9:.1f} GB/s")

    for C in [int(c) for c in FLAGS.classes]:
        if FLAGS.real:
            run_real(C, dict(method=FLAGS.method, tol=FLAGS.tol, dtype=dtype, progress=False,
                             chunk_size=FLAGS.chunk_size or None, workers=workers))
        if not FLAGS.synthetic:
            continue
        M, H = FLAGS.models, FLAGS.heads
        rng = np.random.default_rng(FLAGS.seed + C)
        Ss = [make_instance(rng, H, C, KINDS[i % 3]) for i in range(M)]
        kw = dict(method=FLAGS.method, tol=FLAGS.tol, dtype=dtype, progress=False,
                  chunk_size=FLAGS.chunk_size or None, workers=workers)
        print(f"\n=== M={M} H={H} C={C} ===")
        cs = FLAGS.chunk_size or chco._chunk_size(M, chco._padded_heads(chco._bucket(H), H), C, np.dtype(dtype).itemsize, None, _default_chunk_bytes(chco))
        # The compiled call shape of the timed run is compiled here (pgd solves every model in one
        # pass of calls of cs * _SUBCHUNKS models when there are enough models for every worker; the
        # last call is filled up to that shape), so the timed run measures solving, not compiling.
        t0 = time.perf_counter()
        chco.solve_batch(Ss[: min(M, cs * chco._SUBCHUNKS * workers)], **kw)
        t_first = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        res = chco.solve_batch(Ss, **kw)
        t_run, c_run = time.perf_counter() - t0, time.process_time() - c0
        rate, c_rate = M / t_run, M / c_run
        print(f"mll_jax: {t_run:.2f} s for {M} models = {rate:.1f} models/s "
              f"(CPU time {c_run:.2f} s; warm-up chunk incl. compilation {t_first:.1f} s); converged {res.converged.mean() * 100:.1f}%; "
              f"iterations mean {res.iterations.mean():.1f} / max {res.iterations.max()}")
        time_one_worker(Ss, Ss[: min(M, cs * chco._SUBCHUNKS)], kw, t_run, c_run)
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
            print(f"  accuracy on {n_acc} models vs float64 (tol 1e-9): max rel error {rel.max():.2e}, "
                  f"within 1e-5: {(rel <= 1e-5).mean() * 100:.0f}%, within 1e-4: {(rel <= 1e-4).mean() * 100:.0f}%")

        # Per-model baselines on a sample (same models, same process).
        n_naive = min(FLAGS.naive_sample, M)
        if n_naive:
            sample = [Ss[i] for i in np.linspace(0, M - 1, n_naive).astype(int)]
            same = functools.partial(np_pgd, tol=FLAGS.tol, max_iter=FLAGS.naive_max_iter, dtype=FLAGS.dtype,
                                     round_iter=chco._default_round_iter(FLAGS.method, C))
            n_old = n_naive if FLAGS.old_baseline_sample < 0 else min(FLAGS.old_baseline_sample, n_naive)
            for label, fn, n_b in (
                    ("NumPy loop, SAME algorithm (pgd, one trial step/iteration)", same, n_naive),
                    ("NumPy loop, textbook FISTA (old)", lambda S: np_fista(S, FLAGS.tol, FLAGS.naive_max_iter, False), n_old),
                    ("NumPy loop, preconditioned FISTA (old)", lambda S: np_fista(S, FLAGS.tol, FLAGS.naive_max_iter, True), n_old)):
                if n_b < 1:
                    continue
                if fn is same:
                    dt, cdt, out, blas = time_same_algorithm(fn, sample[:n_b])
                    label += f", {blas}"
                else:
                    t0, c0 = time.perf_counter(), time.process_time()
                    out = [fn(S) for S in sample[:n_b]]
                    dt = (time.perf_counter() - t0) / n_b
                    cdt = (time.process_time() - c0) / n_b
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
            sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
            from chco_reference import cvxpy_chco

            idx = np.linspace(0, M - 1, n_cvx).astype(int)
            t0 = time.perf_counter()
            vals = [cvxpy_chco(Ss[i].astype(np.float64))[0] for i in idx]
            dt = (time.perf_counter() - t0) / n_cvx
            got = np.array([float(chco.objective(jnp.asarray(Ss[i], jnp.float64),
                                                 jnp.asarray(res.X[i], jnp.float64))) for i in idx])
            rel = (got - np.array(vals)) / np.abs(vals)
            print(f"  baseline cvxpy+Clarabel: {dt:.2f} s/model; mll_jax speed-up x{rate * dt:.3g}; "
                  f"mll_jax rel. objective vs cvxpy: max {rel.max():.1e}")


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore", message=".*too many subexpressions.*")
    app.run(main)
