"""Many models: :func:`solve_batch` validates, pads, chunks and solves them (threads, devices, retries)."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mll_jax.errors import CHCOInputError
from mll_jax.utils import next_pow2

from .chunks import (SUBCHUNKS, as_mesh, default_round_iter, default_workers, group_buckets, models_per_chunk,
                     padded_heads, sharded_chunk_solver, solve_chunk)
from .problem import DEFAULT_METHOD, METHODS, check_tolerances, default_atol, working_dtype

__all__ = ["BatchResult", "validate_batch", "solve_batch"]

_IN_FLIGHT = 4  # calls dispatched ahead of the one being collected in solve_batch
# Compiled calls per worker thread and head group, where there are models enough (each call at least one chunk).
# Models are dealt to the calls round-robin: iteration counts differ by 100x between models (and come in runs,
# e.g. one architecture's experts), so few calls of consecutive models leave one thread with most of the work.
# Measured, 48 real experts, C = 101, 2 threads: 28.6 s with one call per worker of consecutive models, 23.9 s
# with four per worker dealt round-robin (same results); synthetic C = 10 / 50 instances 0.95-0.98x.
_CALLS_PER_WORKER = 4


@dataclasses.dataclass
class BatchResult:
    """Results of :func:`solve_batch`, in input order (numpy)."""

    X: list  # list of (H_m, C) arrays
    loss: np.ndarray  # (M, C)
    objective: np.ndarray  # (M,)
    iterations: np.ndarray  # (M,)
    converged: np.ndarray  # (M,) bool
    gap: np.ndarray  # (M,)
    model_ids: list

    def __len__(self):
        return len(self.X)


def validate_batch(S_list, model_ids):
    """Check :func:`solve_batch`'s models (errors name the model) and return ``(arrays, model_ids, C)``: numpy arrays,
    inputs below float32 and integers upcast to float32."""
    if S_list is None or len(S_list) == 0:
        raise CHCOInputError("solve_batch got no models (empty input)")
    if model_ids is None:
        model_ids = [f"model[{i}]" for i in range(len(S_list))]
    elif len(model_ids) != len(S_list):
        raise CHCOInputError(f"{len(model_ids)} model_ids for {len(S_list)} label matrices")
    out = []
    C = None
    for mid, S in zip(model_ids, S_list):
        try:
            A = np.asarray(S)
        except Exception as e:  # ragged nested lists etc.
            raise CHCOInputError(f"{mid}: label matrix is not an array ({e})") from e
        if A.ndim != 2:
            raise CHCOInputError(f"{mid}: label matrix must be 2-D (heads, classes), got shape {A.shape}")
        if A.shape[0] == 0:
            raise CHCOInputError(f"{mid}: label matrix has no heads (shape {A.shape})")
        if A.shape[1] < 2:
            raise CHCOInputError(f"{mid}: CHCO needs at least 2 target classes, got shape {A.shape}")
        real = (np.issubdtype(A.dtype, np.number) or jnp.issubdtype(A.dtype, jnp.floating)) and not (
            np.issubdtype(A.dtype, np.complexfloating))
        if not real:
            raise CHCOInputError(f"{mid}: label matrix must be real-valued, got dtype {A.dtype}")
        if A.dtype.itemsize < 4 or not jnp.issubdtype(A.dtype, jnp.floating):
            A = A.astype(working_dtype(A.dtype))  # float16/bfloat16/integers: upcast as solve() does
        if C is None:
            C = A.shape[1]
        elif A.shape[1] != C:
            raise CHCOInputError(f"{mid}: has {A.shape[1]} classes but the first model has {C}; all models must share C")
        bad = ~np.isfinite(A)
        if bad.any():
            h, c = np.argwhere(bad)[0]
            raise CHCOInputError(
                f"{mid}: label matrix has {int(bad.sum())} non-finite value(s) (first: {A[h, c]} at head {h}, class {c})"
            )
        out.append(A)
    return out, list(model_ids), C


def solve_batch(
    S_list: Sequence[Any],
    *,
    method: str = DEFAULT_METHOD,
    tol: float = 1e-5,
    atol: float | None = None,
    max_iter: int | None = None,
    round_iter: int | None = None,
    precondition: bool = True,
    dtype=None,
    chunk_size: int | None = None,
    max_chunk_bytes: int = 4 * 2**20,
    model_ids: Sequence[str] | None = None,
    progress: bool = True,
    devices=None,
    workers: int | None = None,
) -> BatchResult:
    """Solve CHCO for many models with different head counts.

    Models are validated (errors name the model), grouped by padded head count (see ``group_buckets``), padded
    with masked heads (which provably do not change the result: their probability is exactly 0 and their
    rows are fixed at 0) and solved in fixed-size chunks: one jit-compiled call runs up to
    ``SUBCHUNKS`` chunks one after the other (``lax.map`` over ``vmap``-ed chunks), ``workers`` host
    threads launch calls concurrently (on CPU one per core), and a few calls are kept in flight so that
    packing in Python overlaps the solves. Chunks are sized so that one (chunk, H_pad, C) working array stays under
    ``max_chunk_bytes / 24`` (about 24 such arrays are live at once), unless ``chunk_size`` is given.
    The default (4 MiB) keeps a chunk's working set in cache: every iteration is a few dozen passes
    over these arrays, and on CPU small cache-resident chunks beat large ones (measured, H = 1000,
    C = 10, 64 models, CPU time: 6.5 ms/model with 2 models per chunk, 10.1 with 4, 13.8 with 64).

    ``round_iter``: for ``"pgd"`` every ``round_iter`` iterations the step length is re-initialised by
    the ray rule (a warm restart; the stop counters carry over), inside the compiled loop, so every
    model is solved in one pass. For ``"fista"``/``"head"`` work proceeds in rounds of ``round_iter``
    iterations: after each round the models that have not converged are re-packed into fresh chunks
    and warm-started from their current ``X`` (momentum is reset). ``max_iter`` bounds the total, except
    that a model whose loop stopped on its working-precision gap while the accurate float32 gap missed
    the threshold (by at most 4x) is re-run once from its ``X`` with the loop's threshold scaled by 1/4,
    which may take up to ``max_iter`` more iterations (seen on 1 of 400 real C = 50 models).

    Args:
      S_list: sequence of (H_m, C) label sub-matrices (numpy or jax arrays, any H_m >= 1, common C >= 2).
      dtype: working precision (default float32; float64 needs ``jax.config.update("jax_enable_x64", True)``).
      progress: show a tqdm progress bar over models (a model counts when it converges or gives up).
      devices: where chunks run: ``None`` (all local devices), a sequence of devices or a 1-D
        ``jax.sharding.Mesh``. With more than one device every chunk is split evenly over them
        (``shard_map``; the chunk size is rounded up to a multiple of the device count) and each device
        iterates its own models independently; results equal those on one device.
      workers: host threads that launch compiled calls and wait for them (default: on CPU the usable
        cores divided by the device count, at most ``MAX_WORKERS``; 1 on accelerators). XLA:CPU runs calls
        launched from different threads at the same time, where the calls one thread keeps in flight run
        one after the other; each call's small operations use both cores poorly, so concurrent calls
        fill them (measured on 2 cores, H = 1000, paired in one process: C = 10 x1.7, C = 50 x1.4 in wall
        time over one thread). A model's result does not depend on ``workers``.
      Other arguments: as in :func:`solve`. Inputs below float32 (float16, bfloat16) and integer inputs
      are upcast to float32, as in :func:`solve`; ``dtype`` (the working precision) must be float32 or
      float64.
    """
    if method not in METHODS:
        raise CHCOInputError(f"unknown CHCO method {method!r}; choose one of {METHODS}")
    check_tolerances(tol, atol)
    for name, v, lo in (("max_iter", max_iter, 1), ("round_iter", round_iter, 1), ("chunk_size", chunk_size, 1),
                        ("max_chunk_bytes", max_chunk_bytes, 1), ("workers", workers, 1)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo):
            raise CHCOInputError(f"{name} must be an integer >= {lo}, got {v!r}")
    arrays, model_ids, C = validate_batch(S_list, model_ids)
    dtype = jnp.dtype(jnp.float32 if dtype is None else dtype)
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        raise CHCOInputError('float64 requested but JAX x64 is disabled: call jax.config.update("jax_enable_x64", True)')
    if dtype not in (jnp.float32, jnp.float64):
        raise CHCOInputError(f"dtype must be float32 or float64, got {dtype}")
    mesh = as_mesh(devices)
    n_dev = mesh.devices.size
    if workers is None:
        workers = default_workers(mesh)
    if max_iter is None:
        max_iter = {"head": 200, "pgd": 2000}.get(method, 500)
    if round_iter is None:
        # fista: rounds of 25 (every round resets its momentum). pgd's warm restarts, H = 1000: at C = 50
        # rounds of 100 beat 12 (fewer iterations and more models certified in float32); at C = 10 rounds
        # of 12 beat 30 and 100 (12.7 vs 16.4 and 17.9 iterations mean: the warm restart un-sticks the few
        # models that creep).
        round_iter = default_round_iter(method, C)
    round_iter = min(round_iter, max_iter)
    # pgd restarts inside its compiled loop every round_iter iterations (the ray step is re-initialised
    # as a re-packed round did; the stop counters carry over), so one pass solves every model; the
    # other methods still work in rounds of round_iter iterations with re-packing between rounds.
    in_loop = method == "pgd"
    per_pass = max_iter if in_loop else round_iter
    restart_every = round_iter if in_loop and round_iter < max_iter else None
    M = len(arrays)
    X_cur: list = [None] * M  # None: not started (the uniform start 1/C)
    loss = np.zeros((M, C), dtype)
    obj = np.zeros(M, dtype)
    iters = np.zeros(M, np.int64)
    conv = np.zeros(M, bool)
    gap = np.full(M, np.inf, dtype)
    stop_of = np.ones(M, dtype)  # per-model scale of the loops' stop threshold (< 1 on a retry)
    tol_a = jnp.asarray(tol, dtype)
    atol_v = np.asarray(default_atol(C, dtype) if atol is None else atol, dtype)
    H_of = np.array([A.shape[0] for A in arrays])

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=M, desc=f"CHCO[{method}]", unit="model", leave=False)
    pending = list(range(M))
    in_flight: list = []
    pool = None
    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(workers, thread_name_prefix="chco")
    depth = max(_IN_FLIGHT, 2 * workers)  # calls launched ahead of the one being collected

    def launch(call):
        # A worker thread launches the call and waits for its results (the launch itself has to happen
        # in the worker: calls launched from one thread run one after the other on XLA:CPU).
        if pool is None:
            return call()
        return pool.submit(lambda: jax.device_get(call()))

    def collect(part, res, still):
        res = jax.device_get(res.result() if pool is not None else res)
        n = len(part)
        part_a = np.asarray(part)
        for j, i in enumerate(part):
            X_cur[i] = np.asarray(res.X[j, : H_of[i]])
        k = np.asarray(res.iterations[:n], np.int64)
        loss[part_a] = res.loss[:n]
        obj[part_a] = res.objective[:n]
        iters[part_a] += k
        conv[part_a] = res.converged[:n]
        gap[part_a] = res.gap[:n]
        # A pass that ends early without convergence means the solver stopped the model (no
        # descent possible in this precision, or its loop's working-precision gap met the threshold
        # while the accurate gap did not): do not re-queue it -- except, once, a model whose accurate
        # gap is within 4x of the threshold: it is re-run from its X with the loop's threshold scaled
        # by 1/4 (measured: 1 of 400 real C = 50 models, loop stopped at 102 iterations with an accurate
        # gap 1.001x the threshold).
        fin = conv[part_a] | (iters[part_a] >= max_iter) | (k < per_pass) | ~np.isfinite(obj[part_a])
        thr = tol * np.abs(obj[part_a]) + atol_v
        retry = fin & ~conv[part_a] & (iters[part_a] < max_iter) & np.isfinite(obj[part_a]) & (
            gap[part_a] <= 4 * thr) & (stop_of[part_a] == 1)
        stop_of[part_a[retry]] = 0.25
        fin &= ~retry
        still.extend(part_a[~fin].tolist())
        if bar is not None and fin.any():
            bar.update(int(fin.sum()))

    # Per head bucket, the shapes of its first pass (padded heads, models per chunk, models per call): later
    # passes (pgd's retry, the rounds of fista and head) reuse them, and every call ships its starting X (1/C
    # on the first pass), so a whole solve_batch compiles one program per bucket. (A retry of one model with
    # its own shapes compiled a second program: 2.2 s of a 31-s first selection, 48 experts, C = 101.)
    shapes: dict[int, tuple[int, int, int]] = {}
    bucket_of = group_buckets(H_of)  # decided once, so that later passes keep the first pass's programs
    try:
        while pending:
            groups: dict[int, list[int]] = {}
            for i in pending:
                groups.setdefault(bucket_of[i], []).append(i)
            still: list = []
            for bucket in sorted(groups):
                idx = groups[bucket]
                if bucket not in shapes:
                    # Pad to the group's largest head count (a multiple of 8), not to the bucket's upper
                    # bound: models of equal H (the common case) then carry no padded heads (H = 1000 was
                    # padded to 1120, 12% of every iteration's work).
                    Hp = padded_heads(bucket, int(H_of[idx].max()))
                    cs = models_per_chunk(len(idx), Hp, C, dtype.itemsize, chunk_size, max_chunk_bytes)
                    cs = -(-cs // n_dev) * n_dev  # every device gets the same number of models
                    # Models per compiled call: up to SUBCHUNKS sub-chunks of cs models, run one after the
                    # other inside the call (lax.map), so Python dispatches few calls; a few calls stay in
                    # flight at once, launched by the worker threads (concurrent calls keep the cores busy).
                    # About _CALLS_PER_WORKER calls per worker where there are enough models for it, the
                    # models dealt to them round-robin (balance: see _CALLS_PER_WORKER).
                    K = cs * min(SUBCHUNKS, next_pow2(-(-len(idx) // (cs * workers * _CALLS_PER_WORKER))))
                    shapes[bucket] = (Hp, cs, K)
                Hp, cs, K = shapes[bucket]
                n_calls = -(-len(idx) // K)
                for j in range(n_calls):
                    part = idx[j::n_calls]
                    n = len(part)
                    S = np.empty((K, Hp, C), dtype)
                    mask = np.zeros((K, Hp), bool)
                    if all(H_of[i] == Hp for i in part):  # the common case: one copy, no padding
                        S[:n] = np.stack([arrays[i] for i in part])
                        mask[:n] = True
                    else:
                        S[:n] = 0
                        for j, i in enumerate(part):
                            S[j, : H_of[i]] = arrays[i]
                            mask[j, : H_of[i]] = True
                    # Filler slots repeat the first model (always well-posed) with atol = inf: certified
                    # at their first evaluation, they never iterate; results are discarded.
                    S[n:], mask[n:] = S[0], mask[0]
                    at = np.full(K, np.inf, dtype)
                    at[:n] = atol_v
                    st = np.ones(K, dtype)
                    st[:n] = stop_of[part]
                    at = (at, st)
                    # The starting X (padded heads are masked to 0 by the solver): 1/C, or where the model
                    # stopped in an earlier pass.
                    X0 = np.full((K, Hp, C), 1.0 / C, dtype)
                    for j, i in enumerate(part):
                        if X_cur[i] is not None:
                            X0[j, : H_of[i]] = X_cur[i]
                    sub = cs if cs < K else None
                    if n_dev == 1:
                        dev = mesh.devices.flat[0]
                        put = lambda x: None if x is None else jax.device_put(x, dev)  # noqa: E731
                        call = functools.partial(
                            solve_chunk, put(S), put(mask), put(X0), tol_a, put(at), method=method,
                            max_iter=per_pass, precondition=precondition, sub=sub, restart_every=restart_every)
                    else:
                        from jax.sharding import NamedSharding, PartitionSpec as Pspec

                        sh = NamedSharding(mesh, Pspec(mesh.axis_names[0]))
                        put = lambda x: None if x is None else jax.device_put(x, sh)  # noqa: E731
                        sub_d = None if sub is None else max(1, sub // n_dev)
                        run = sharded_chunk_solver(mesh, method, per_pass, precondition, sub_d, restart_every,
                                                    True)
                        call = functools.partial(run, put(S), put(mask), put(X0), tol_a, put(at))
                    # Dispatch is asynchronous: keep a few calls in flight so that packing the next
                    # call in Python overlaps the solve of the previous ones (bounded memory).
                    in_flight.append((part, launch(call)))
                    if len(in_flight) > depth:
                        collect(*in_flight.pop(0), still)
            while in_flight:
                collect(*in_flight.pop(0), still)
            pending = still
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
    X_cur = [np.full(arrays[i].shape, 1.0 / C, dtype) if x is None else x for i, x in enumerate(X_cur)]
    return BatchResult(X_cur, loss, obj, iters, conv, gap, model_ids)
