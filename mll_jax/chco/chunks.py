"""How :func:`mll_jax.chco.solve_batch` packs models: head-count buckets, chunk sizes, the compiled chunk
solver (vmap / lax.map over :func:`mll_jax.chco.single.solve_impl`), its shard_map form for several devices,
and the default host threads and round lengths."""
from __future__ import annotations

import functools

import jax
import numpy as np

from mll_jax.errors import CHCOInputError
from mll_jax.utils import next_pow2, usable_cores

from .single import solve_impl

__all__ = [
    "SUBCHUNKS", "MAX_WORKERS", "MERGE_FRACTION", "head_bucket", "group_buckets", "padded_heads", "models_per_chunk", "chunk_fn", "solve_chunk",
    "sharded_chunk_solver", "as_mesh", "default_workers", "default_round_iter",
]

SUBCHUNKS = 16  # sub-chunks (of cs models) per compiled call in solve_batch


def head_bucket(h: int) -> int:
    """Pad head counts to a few shapes: multiples of 8 up to 64, then powers of 2 with 1.5x steps."""
    if h <= 64:
        return max(8, -(-h // 8) * 8)
    k = 64
    while k < h:
        nxt = k * 3 // 2
        k = -(-nxt // 8) * 8 if nxt > k else k * 2
    return k


# A head bucket of at most this fraction of the models of the nearest larger bucket is solved padded in that
# bucket's program instead of a program of its own. Compiling a program costs seconds (measured at C = 101: 2.3 s
# alone, 4-5 s each when two compile at once on 2 cores) where solving one more model at the larger head count
# costs a fraction of a second; the fraction bounds the padded work to 1/8 of the larger bucket's.
MERGE_FRACTION = 1 / 8


def group_buckets(head_counts) -> list[int]:
    """The head bucket each model is solved in: its own (:func:`head_bucket`), unless its bucket holds at most
    ``MERGE_FRACTION`` of the models of the nearest larger bucket kept (together with the models already merged
    into that one), in which case it joins that bucket (its heads padded)."""
    own = [head_bucket(int(h)) for h in head_counts]
    count: dict[int, int] = {}
    for b in own:
        count[b] = count.get(b, 0) + 1
    target: dict[int, int] = {}
    merged: dict[int, int] = {}  # models merged into a kept bucket
    kept: list[int] = []  # descending
    for b in sorted(count, reverse=True):
        if kept and merged[kept[-1]] + count[b] <= MERGE_FRACTION * count[kept[-1]]:
            target[b] = kept[-1]
            merged[kept[-1]] += count[b]
        else:
            target[b] = b
            merged[b] = 0
            kept.append(b)
    return [target[b] for b in own]


def padded_heads(bucket: int, h_max: int) -> int:
    """Padded head count of a group: its largest head count rounded up to 8, at most the bucket."""
    return min(bucket, -(-h_max // 8) * 8)


def chunk_fn(S, mask, X0, tol, atol, *, method, max_iter, precondition, sub=None, restart_every=None):
    """Solve the K models of one call: ``S`` (K, H, C), ``mask`` (K, H), ``X0`` (K, H, C) or ``None``
    (the uniform start), ``atol`` a pair of (K,) per-model arrays: the absolute tolerance (``inf`` marks
    a filler slot: it is certified at its first evaluation and never iterates) and the stop scale of
    the loops' threshold (1, or less on a retry; see :func:`solve_impl`). With ``sub`` the models run in sub-chunks of ``sub`` models
    (``lax.map``: a scan over vmapped sub-chunks inside the one compiled call), so every sub-chunk's
    working set stays in cache and iterates only until its own slowest model is done."""
    def one(s, m, x, at):
        return solve_impl(s, m, method=method, tol=tol, atol=at[0], max_iter=max_iter, precondition=precondition,
                           X0=x, restart_every=restart_every, stop_scale=at[1])

    if X0 is None:
        f = lambda a: one(a[0], a[1], None, a[2])  # noqa: E731
        xs = (S, mask, atol)
    else:
        f = lambda a: one(*a)  # noqa: E731
        xs = (S, mask, X0, atol)
    if sub == 1 or S.shape[0] == 1:
        # One model at a time (C = 50 at the default chunk bytes): no vmap, so the while loops keep real
        # per-model predicates instead of batched ones, which vmap turns into a select on every carry.
        return jax.lax.map(f, xs)
    if sub is None or sub >= S.shape[0]:
        return jax.vmap(f)(xs)
    return jax.lax.map(f, xs, batch_size=sub)


solve_chunk = jax.jit(chunk_fn, static_argnames=("method", "max_iter", "precondition", "sub", "restart_every"))


@functools.lru_cache(maxsize=32)
def sharded_chunk_solver(mesh, method, max_iter, precondition, sub, restart_every, has_x0):
    """One jitted ``shard_map`` over the mesh's single axis: each device runs the vmapped solver on its
    slice of the call's models with its own ``while_loop`` (no cross-device synchronisation per iteration)."""
    from jax.sharding import PartitionSpec as Pspec

    try:
        from jax import shard_map
    except ImportError:  # older jax
        from jax.experimental.shard_map import shard_map
    ax = mesh.axis_names[0]
    fn = functools.partial(chunk_fn, method=method, max_iter=max_iter, precondition=precondition, sub=sub,
                           restart_every=restart_every)
    if has_x0:
        sm = shard_map(fn, mesh=mesh, in_specs=(Pspec(ax), Pspec(ax), Pspec(ax), Pspec(), Pspec(ax)),
                       out_specs=Pspec(ax))
        return jax.jit(sm)
    sm = shard_map(lambda S, m, t, at: fn(S, m, None, t, at), mesh=mesh,
                   in_specs=(Pspec(ax), Pspec(ax), Pspec(), Pspec(ax)), out_specs=Pspec(ax))
    return jax.jit(lambda S, m, X0, t, at: sm(S, m, t, at))


def as_mesh(devices):
    """``None`` -> all local devices; a ``Mesh`` with one axis; or a sequence of devices."""
    from jax.sharding import Mesh

    if devices is None:
        devices = jax.local_devices()
    if isinstance(devices, Mesh):
        if len(devices.axis_names) != 1:
            raise CHCOInputError(f"solve_batch needs a 1-D mesh, got axes {devices.axis_names}")
        return devices
    devices = list(devices)
    if not devices:
        raise CHCOInputError("solve_batch got an empty devices list")
    return Mesh(np.array(devices), ("models",))


MAX_WORKERS = 8  # default cap on solve_batch's host threads (only 2 cores were measured)


def default_workers(mesh) -> int:
    """solve_batch's default host threads: on CPU one per usable core and device (XLA:CPU overlaps calls
    launched from different threads), on accelerators 1."""
    if mesh.devices.flat[0].platform != "cpu":
        return 1
    return max(1, min(MAX_WORKERS, usable_cores() // mesh.devices.size))


def default_round_iter(method, C):
    """Iterations per round of :func:`solve_batch` (see the comment in :func:`mll_jax.chco.batch.solve_batch`)."""
    return {"head": 8, "pgd": 12 if C < 30 else 100}.get(method, 25)


def models_per_chunk(n, Hp, C, itemsize, chunk_size, max_chunk_bytes):
    """Models per chunk for ``n`` models of ``Hp`` padded heads: ``chunk_size`` if given, else as many as keep one
    (chunk, Hp, C) working array under ``max_chunk_bytes / 24``, a power of two."""
    if chunk_size is not None:
        return int(chunk_size)
    per_model = Hp * C * itemsize * 24
    cs = max(1, min(n, max_chunk_bytes // per_model))
    # Powers of two, so that repeated calls and later rounds share compilations.
    return 1 << (cs.bit_length() - 1) if cs < n else next_pow2(n)
