"""Packed labelling batches: Eq. 1 node means with every device batch full.

Labelling an expert on the SDAG means one mean logit vector per node over the node's images (paper Eq. 1)::

    r_c = 1/|D_c| * sum_{x in D_c} f(x)

Run node by node, a node with 20 images fills 20 of the expert's (say) 32 batch slots and the other 12 are
zero padding that the device computes anyway.  :func:`iter_node_means` packs the images of consecutive nodes
into full fixed-size batches instead, so only the very last batch of a whole labelling run is padded, and it
overlaps the host work with the device work:

* **host threads** (a small ``ThreadPoolExecutor``) load each node's images (an array, or a zero-argument
  callable such as ``functools.partial(sdag.images, node)`` that reads them from disk) and run the expert's
  preprocessing (crop, resize) a few nodes ahead of the device;
* **the device** runs the expert's jitted forward on full batches; up to ``in_flight`` batches are dispatched
  before the oldest result is read back (JAX dispatch is asynchronous), so the device never waits for Python;
* **the host** adds each batch's logit rows into per-node float64 sums and yields ``(node, mean)`` as soon as
  the last image of a node has been run.

Two expert interfaces are supported:

* the fast path, for experts with a host ``preprocess(uint8 (n, h, w, 3)) -> (n, ...)``, a jitted
  ``forward(params, x)``, ``params`` and a fixed ``batch_size`` (every :class:`mll_jax.models.FlaxModuleExpert`):
  preprocessing runs on the host threads, the device sees exactly ``batch_size`` preprocessed images per call,
  so nodes of any image size share batches.  An expert with a ``device_preprocess``
  (:class:`mll_jax.models.DevicePreprocess`: EfficientNet-Lite, the CIFAR-10 CNN) only has its images cropped on
  the host threads (uint8 slicing); the uint8 crops are packed, one batch stream per crop shape (nodes stored at
  one size, as the SDAG stores them, all share one), and each batch is resized on the device right before the
  forward.  On a CPU host this takes the float PIL resize (about 0.9 ms per 224 px image, on the same cores
  as XLA) off the host; the device resize costs about 0.25 ms of CPU per image (docs/FORWARD_NOTES.md);
* any other expert with ``logits(images)`` (the contract of ``docs/INTERFACES.md``): images of the same shape
  from consecutive nodes are packed into ``batch_size``-image calls of ``expert.logits``.

**Units** (:func:`mll_jax.labelling.label_models` over many processes): an item may be a triple ``(node, images,
group)``; when ``group`` changes between consecutive items, the batches of the previous group are flushed (the last
one zero-padded), so no device batch mixes images of two groups.  A group's logit rows then sit at the same batch
positions whatever ran before it, in whichever process computes it: the means of a (model, node block) unit are
bitwise the same in a one-process and an N-process run.

**Local devices** (``devices``, default ``jax.local_devices()``): on the fast path with D > 1 devices every device
call carries ``D * batch_size`` images, sharded over the devices along the batch axis (the parameters replicated),
so each device runs the expert's compiled ``batch_size`` forward on its slice.  Image ``i`` of a group lands at
position ``i mod batch_size`` of its device's slice, the position it has on one device: the per-image rows are
the ones a one-device run computes (measured bitwise equal for the shipped experts on 2 host devices,
``tests/test_distributed.py``).  With one device this is a no-op.

**Exactness.**  The per-node means equal the node-by-node path (:func:`mll_jax.labelling.means.node_mean_logits`) up
to float32 round-off: each image's logit row is the same forward pass; what can differ is (a) the float32
round-off of a row when XLA computes it at another position in a batch (different vectorisation remainder; a
few ulp at most; measured: bitwise equal means for the CIFAR-10 CNN and for EfficientNet-Lite0 on real photos)
and (b) the float64 summation order of the rows, which is below float32 resolution.  Rows are summed in float64 on the host and the mean is cast to float32
once, exactly as ``node_mean_logits`` does.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
from typing import Any, Callable, Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mll_jax.config import DEFAULT_LABEL_STATISTIC
from mll_jax.errors import LabellingError, NonFiniteLogitsError, PackingError
from mll_jax.images import as_image_batch
from mll_jax.models import as_uint8_rgb

from .statistic import check_statistic, summed_rows

__all__ = ["iter_node_means", "packed_node_means", "PackingError"]


def _has_fast_path(expert) -> bool:
    return (callable(getattr(expert, "preprocess", None)) and callable(getattr(expert, "forward", None))
            and hasattr(expert, "params") and isinstance(getattr(expert, "batch_size", None), int))


def _load(node, images) -> np.ndarray:
    if callable(images):
        images = images()
    return as_image_batch(images, f"images of node {node!r}")


class _Packer:
    """Fills fixed-size batches with rows of consecutive nodes and tracks which rows belong to which node."""

    def __init__(self, batch_size: int, row_shape: tuple, dtype):
        self.batch_size, self.row_shape, self.dtype = batch_size, row_shape, dtype
        self._new()

    def _new(self):
        # a fresh buffer per batch: the previous one may still be read by an asynchronous device call
        self.buf = np.zeros((self.batch_size,) + self.row_shape, self.dtype)
        self.fill = 0
        self.segments: list[tuple[Any, int, int]] = []  # (node, row in batch, count)

    def add(self, node, rows: np.ndarray) -> Iterator[tuple[np.ndarray, list, int]]:
        """Copy ``rows`` in; yields each batch that becomes full as (buffer, segments, used rows)."""
        i = 0
        while i < rows.shape[0]:
            k = min(self.batch_size - self.fill, rows.shape[0] - i)
            self.buf[self.fill:self.fill + k] = rows[i:i + k]
            self.segments.append((node, self.fill, k))
            self.fill += k
            i += k
            if self.fill == self.batch_size:
                yield self.buf, self.segments, self.fill
                self._new()

    def flush(self) -> Iterator[tuple[np.ndarray, list, int]]:
        if self.fill:
            yield self.buf, self.segments, self.fill  # rows past `fill` stay zero (padding)
            self._new()


def _local_mesh(devices):
    """``(mesh, batch sharding, replicated sharding)`` over ``devices`` (None: ``jax.local_devices()``), or None for
    one device."""
    devs = list(jax.local_devices() if devices is None else devices)
    if len(devs) <= 1:
        return None
    mesh = Mesh(np.asarray(devs, dtype=object), ("batch",))
    return mesh, NamedSharding(mesh, PartitionSpec("batch")), NamedSharding(mesh, PartitionSpec())


def iter_node_means(expert, items: Iterable[tuple[Any, Any]], *, logits_batch_size: int = 64,
                    workers: int = 2, prefetch: int = 4, in_flight: int = 2,
                    devices: Any = None, statistic: str = DEFAULT_LABEL_STATISTIC) -> Iterator[tuple[Any, np.ndarray]]:
    """Yield ``(node, mean logits float32 (H,))`` for every ``(node, images)`` item, packing nodes into full batches
    (``statistic="mean_probability"``: the mean of each image's softmax output instead,
    :mod:`mll_jax.labelling.statistic`).

    Args:
        expert: a :class:`mll_jax.models.FlaxModuleExpert` (fast path) or any expert with ``model_id``,
            ``num_heads`` and ``logits(images)``.
        items: ``(node, images)`` pairs or ``(node, images, group)`` triples; ``images`` is a uint8 image batch
            (``docs/INTERFACES.md``) or a zero-argument callable returning one (called on a host thread).  Node
            ids must be unique.  No device batch mixes two groups (see "Units" above).
        logits_batch_size: images per ``expert.logits`` call on the generic path.  On the fast path every
            device call has the expert's own ``batch_size`` (its forward is compiled for that size).
        workers: host threads that load and preprocess images.
        prefetch: nodes loaded/preprocessed ahead of the device.
        in_flight: device batches dispatched before the oldest result is read back.
        devices: the local devices a fast-path batch is sharded over (default: ``jax.local_devices()``; one
            device: no sharding).

    Nodes are yielded in the order of ``items``.  Raises :class:`PackingError` for an empty or duplicate node,
    :class:`mll_jax.labelling.LabellingError` for logits of the wrong shape and
    :class:`mll_jax.labelling.NonFiniteLogitsError` for NaN/inf logits (naming model and node).
    """
    mid = getattr(expert, "model_id", "?")
    h = int(expert.num_heads)
    check_statistic(statistic)
    fast = _has_fast_path(expert)
    bs = int(expert.batch_size) if fast else int(logits_batch_size)
    if bs < 1 or workers < 1 or prefetch < 1 or in_flight < 1:
        raise PackingError("logits_batch_size, workers, prefetch and in_flight must be >= 1")
    shard = _local_mesh(devices) if fast else None
    params = expert.params if fast else None
    if shard is not None:
        params = jax.device_put(expert.params, shard[2])  # replicated on every local device
        device_batch = bs * len(shard[0].devices.flat)
    else:
        device_batch = bs
    dp = getattr(expert, "device_preprocess", None) if fast else None

    def prepare(node, images):
        arr = _load(node, images)
        if arr.shape[0] == 0:
            raise PackingError(f"node {node!r} has no images to label model {mid!r} with")
        if not fast:
            return node, arr
        rgb = as_uint8_rgb(arr, mid)
        if dp is not None:  # the host only crops (uint8 slicing); the resize runs on the device in run()
            return node, dp.host(rgb)
        parts = [np.asarray(expert.preprocess(rgb[s:s + bs])) for s in range(0, rgb.shape[0], bs)]
        x = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        if x.shape[0] != rgb.shape[0]:
            raise LabellingError(f"model {mid!r}: preprocess returned {x.shape[0]} images for {rgb.shape[0]}")
        return node, x

    def run(x: np.ndarray, used: int):
        if fast:
            if shard is not None:
                x = jax.device_put(x, shard[1])  # batch axis split over the local devices
            if dp is not None:
                x = dp.device(x)  # the resize: small jitted executables, dispatched asynchronously
            return expert.forward(params, x)  # asynchronous: a jax array
        return expert.logits(x[:used])

    sums: dict[Any, np.ndarray] = {}
    left: dict[Any, int] = {}  # rows of a node not yet read back from the device
    total: dict[Any, int] = {}
    order: collections.deque = collections.deque()  # nodes whose rows are all dispatched, oldest first
    pending: collections.deque = collections.deque()  # (device result, segments, used)
    packers: dict[tuple, _Packer] = {}

    def collect_one():
        out, segments, used = pending.popleft()
        y = np.asarray(out)
        if y.ndim != 2 or y.shape[1] != h or y.shape[0] < used:
            raise LabellingError(f"model {mid!r} returned logits of shape {y.shape} for a batch of {used} images "
                                 f"(nodes {[s[0] for s in segments][:5]}); expected ({used}, {h})")
        for node, start, k in segments:
            rows = y[start:start + k]
            if not np.all(np.isfinite(rows)):
                bad = int(np.sum(~np.isfinite(rows).all(axis=1)))
                raise NonFiniteLogitsError(f"model {mid!r} produced non-finite logits (NaN/inf) on node {node!r} "
                                           f"({bad} of {k} images in a batch); nothing was committed for this model")
            sums[node] += summed_rows(rows, statistic)
            left[node] -= k

    def ready() -> Iterator[tuple[Any, np.ndarray]]:
        while order and left[order[0]] == 0:
            node = order.popleft()
            yield node, (sums.pop(node) / total.pop(node)).astype(np.float32)
            del left[node]

    def dispatch(batches):
        for buf, segments, used in batches:
            pending.append((run(buf, used), segments, used))
            while len(pending) >= (in_flight if fast else 1):  # generic experts return host arrays
                collect_one()

    seen: set = set()
    current_group = None
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mll-pack") as pool:
        futures: collections.deque = collections.deque()
        it = iter(items)
        exhausted = False
        try:
            while True:
                while not exhausted and len(futures) < prefetch:
                    try:
                        item = next(it)
                    except StopIteration:
                        exhausted = True
                        break
                    try:
                        node, images, *grp = item
                        if len(grp) > 1:
                            raise ValueError
                    except (TypeError, ValueError):
                        raise PackingError("items must be (node, images) pairs or (node, images, group) triples, "
                                           f"got {type(item).__name__}") from None
                    if node in seen:
                        raise PackingError(f"node {node!r} appears twice in the items")
                    seen.add(node)
                    futures.append((grp[0] if grp else None, pool.submit(prepare, node, images)))
                if not futures:
                    break
                group, fut = futures.popleft()
                node, x = fut.result()
                if group != current_group:  # a new unit: no batch mixes two groups
                    for packer in packers.values():
                        dispatch(packer.flush())
                    current_group = group
                sums[node] = np.zeros(h, np.float64)
                left[node] = total[node] = int(x.shape[0])
                order.append(node)
                key = x.shape[1:] if (not fast or dp is not None) else ()  # device resize: one batch per crop shape
                packer = packers.get(key)
                if packer is None:
                    packer = packers[key] = _Packer(device_batch, tuple(x.shape[1:]), x.dtype)
                dispatch(packer.add(node, x))
                yield from ready()
            for packer in packers.values():
                dispatch(packer.flush())
            while pending:
                collect_one()
            yield from ready()
        finally:
            for _, f in futures:
                f.cancel()
    if order:  # pragma: no cover - bookkeeping invariant
        raise AssertionError(f"packer lost rows of nodes {list(order)[:5]}")


def packed_node_means(expert, items: Iterable[tuple[Any, Any]], **kw) -> dict[Any, np.ndarray]:
    """``{node: mean logits float32 (H,)}`` of :func:`iter_node_means` (all nodes at once)."""
    return dict(iter_node_means(expert, items, **kw))
