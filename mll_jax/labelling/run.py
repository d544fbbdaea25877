"""The labelling driver: :func:`label_models` (Eq. 1 over units of work, Eq. 2, commit), over one or many processes.

The SDAG nodes with images are cut into blocks of ``flush_every`` nodes; a (model, node block) is a unit of work,
computed by the packed path (:mod:`mll_jax.labelling.packing`) and written to the store's raw cache as one chunk.
With several processes (:mod:`mll_jax.distributed`) the units still missing are assigned round-robin and process 0
smooths and commits (docs/DISTRIBUTED.md).
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from typing import Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from mll_jax import distributed
from mll_jax.config import DEFAULT_DELTA, DEFAULT_LABEL_STATISTIC
from mll_jax.errors import LabellingError, LabelStoreCorruptError, NonFiniteLogitsError
from mll_jax.expert_fingerprint import expert_fingerprint

from .layout import NO_FINGERPRINT, positive_int
from .packing import iter_node_means
from .smoothing import dag_index, smooth_labels
from .statistic import check_statistic, finish_rows, model_fingerprint, raw_cache_key
from .store import LabelStore

__all__ = ["label_models", "check_expert", "node_blocks"]


def check_expert(expert) -> tuple[str, int]:
    """``(model_id, num_heads)`` of an expert, or :class:`LabellingError` naming what it lacks."""
    mid = getattr(expert, "model_id", None)
    if not isinstance(mid, str) or not mid:
        raise LabellingError(f"expert {expert!r} has no string model_id")
    h = getattr(expert, "num_heads", None)
    if not isinstance(h, (int, np.integer)) or h < 1:
        raise LabellingError(f"model {mid!r} has invalid num_heads {h!r}")
    if not callable(getattr(expert, "logits", None)):
        raise LabellingError(f"model {mid!r} has no logits(images) method")
    fp = getattr(expert, "fingerprint", None)
    if fp is not None and not isinstance(fp, str):
        raise LabellingError(f"model {mid!r}: fingerprint must be a string or None, got {type(fp).__name__}")
    return mid, int(h)


def node_blocks(nodes: Sequence[str], size: int) -> list[list[str]]:
    """``nodes`` cut into consecutive blocks of ``size`` (the units of :func:`label_models`)."""
    return [list(nodes[i:i + size]) for i in range(0, len(nodes), size)]


def label_models(sdag, experts: Iterable, store: "LabelStore | str | os.PathLike", *, delta: float = DEFAULT_DELTA,
                 batch_size: int = 64, flush_every: int = 64, recompute: bool = False,
                 progress: bool = True, workers: int = 2, processes=None, devices=None,
                 timeout: float | None = None, statistic: str = DEFAULT_LABEL_STATISTIC) -> dict[str, dict]:
    """Label every expert on the SDAG (Eq. 1-2) and commit the labels to ``store``.

    Eq. 1 raw means are computed only for nodes whose images are not already in the store's raw cache for that
    model (new nodes, changed images, or nodes not reached by a killed run); smoothing (Eq. 2) is always
    recomputed.  A model whose logits are NaN/inf raises :class:`NonFiniteLogitsError` naming model and node; its
    committed labels (if any) are untouched and the unwritten means of that run are dropped.  ``recompute=True``
    discards the raw cache first.

    **Units.**  The SDAG nodes with images (in SDAG order) are cut into blocks of ``flush_every`` nodes; a
    (model, node block) is a unit of work.  A unit's missing nodes are computed together (no device batch mixes
    two units: :mod:`mll_jax.labelling.packing`) and written to the raw cache as ONE atomically written chunk, so a killed
    process loses at most its unfinished unit (on a Python exception the finished nodes of the current unit are
    written too), and a rerun computes only the nodes still missing.

    **Many processes** (``processes``: a :class:`mll_jax.distributed.Processes`; default
    :func:`mll_jax.distributed.current`, i.e. cooperating whenever ``jax.distributed`` is initialized with more
    than one process).  Every process calls ``label_models`` with the same arguments on the same shared store;
    per model, process 0 first clears the raw cache (``recompute``), every process reads which units still have
    work, and unit ``i`` of that list goes to process ``i mod N``.  After every process wrote its units (a
    key-value barrier; a process that failed or died is named in a :class:`mll_jax.distributed.ProcessFailedError`,
    ``timeout`` seconds without any unit finishing is an error too), process 0 smooths and commits, and the others
    wait for its outcome.  Units are computed the same way in any process, so the committed labels are bitwise
    those of a one-process run.  Within a process, batches of Flax experts are split over ``devices`` (default
    ``jax.local_devices()``).

    An expert's fingerprint (:func:`mll_jax.expert_fingerprint.expert_fingerprint`: its ``fingerprint``
    attribute, else a hash of its parameters, else of its outputs on a seeded probe batch) keys its raw cache: when it differs from the one
    the cache (or the committed labels) were made with, every node is recomputed and a warning says so.

    Images are packed into full device batches (:func:`mll_jax.labelling.packing.iter_node_means`: the expert's own fixed
    batch size for Flax experts, ``batch_size`` images per ``logits`` call otherwise), loaded and preprocessed on
    ``workers`` host threads ahead of the device; each node's mean is summed in float64 on the host and equals the
    node-by-node :func:`node_mean_logits` up to float32 round-off.

    ``statistic``: what a label row summarises over a node's images, ``"mean_logit"`` (Eq. 1) or
    ``"mean_probability"`` (:mod:`mll_jax.labelling.statistic`: mean softmax rows, smoothed, stored as their log);
    recorded in the committed labels' index (``extra["statistic"]``).  Raw rows of one statistic never serve the
    other.

    Returns {model_id: {"labelled": nodes with a label, "computed": nodes run through the expert (by all
    processes), "cached": nodes taken from the raw cache}}, plus ``"fingerprint_changed": True`` for a model whose
    fingerprint changed, and with several processes ``"processes"`` (N) and ``"computed_here"`` (this process).
    """
    if not 0.0 <= float(delta) <= 1.0:
        raise ValueError(f"delta must lie in [0, 1], got {delta}")
    check_statistic(statistic)
    positive_int(batch_size, "batch_size")
    positive_int(flush_every, "flush_every")
    procs = distributed.current() if processes is None else processes
    if not isinstance(store, LabelStore):
        store = LabelStore(store)
    experts = list(experts)
    ids = [check_expert(e)[0] for e in experts]
    dup = {m for m in ids if ids.count(m) > 1}
    if dup:
        raise ValueError(f"duplicate model ids: {sorted(dup)}")
    if procs.multi:  # process 0's fingerprints for all: a probe-based one must not differ between processes
        fp_tag = procs.new_tag("label/fingerprints")
        if procs.process_id == 0:
            try:
                fps = {m: expert_fingerprint(e) for m, e in zip(ids, experts)}
            except Exception as e:
                procs.publish(fp_tag, e)
                raise
            procs.publish(fp_tag, json.dumps(fps))
        else:
            fps = json.loads(procs.wait_for(fp_tag, "waiting for process 0's model fingerprints", timeout))
    else:
        fps = {m: expert_fingerprint(e) for m, e in zip(ids, experts)}
    nodes = sdag.nodes
    with_data = sdag.nodes_with_images()
    if not with_data:
        raise ValueError("no SDAG node has images: nothing to label with (add data to the SDAG first)")
    idx = dag_index(sdag)
    pos = {w: i for i, w in enumerate(nodes)}
    keys = {w: sdag.data_key(w) for w in with_data}
    blocks = node_blocks(with_data, int(flush_every))
    me, n_proc = procs.process_id, procs.num_processes
    who = f" [process {me + 1}/{n_proc}]" if procs.multi else ""
    summary: dict[str, dict] = {}
    for expert in experts:
        mid, h = check_expert(expert)
        fp = fps[mid]
        key = raw_cache_key(fp, statistic)  # raw chunks of this model version and statistic
        tag = procs.new_tag(f"label/{mid}") if procs.multi else ""
        if recompute and me == 0:
            store.clear_raw(mid)
        procs.barrier(f"{tag}/cleared", f"preparing the labelling of {mid!r}", timeout=timeout)
        old_fps = {model_fingerprint(k) for k in store.raw_fingerprints(mid)} - {fp or NO_FINGERPRINT}
        if mid in store:
            try:
                committed = store.fingerprint(mid)
            except LabelStoreCorruptError:
                committed = fp  # damaged labels are replaced by this commit
            if committed != fp:
                old_fps.add(committed or NO_FINGERPRINT)
        if old_fps and me == 0:
            warnings.warn(f"model {mid!r} changed since it was labelled (fingerprint "
                          f"{sorted(old_fps)[0][:12] or 'none'} -> {(fp or 'none')[:12]}): its labels are recomputed",
                          stacklevel=2)
        raw = store.load_raw(mid, key)
        stale = [w for w, (_, m) in raw.items() if m.shape != (h,)]
        for w in stale:
            del raw[w]
        todo_set = {w for w in with_data if w not in raw or raw[w][0] != keys[w]}
        units = [(b, [w for w in blk if w in todo_set]) for b, blk in enumerate(blocks)]
        units = [u for u in units if u[1]]  # units with work, in block order: the same list in every process
        # every process has read the cache before anyone writes to it (the unit list must not depend on timing)
        procs.barrier(f"{tag}/scanned", f"reading the raw cache of {mid!r}", timeout=timeout)
        mine = distributed.assign(units, n_proc, me)
        n_mine = sum(len(u[1]) for u in mine)
        done_here = 0
        pbar = tqdm(total=len(with_data) if not procs.multi else n_mine,
                    initial=len(with_data) - len(todo_set) if not procs.multi else 0,
                    desc=f"labelling {mid}{who}", unit="node", disable=not progress)
        buffer: dict[str, tuple[str, np.ndarray]] = {}
        error = None
        try:
            left = {b: len(ws) for b, ws in mine}
            block_of = {w: b for b, ws in mine for w in ws}
            items = ((w, functools.partial(sdag.images, w), b) for b, ws in mine for w in ws)
            for w, mean in iter_node_means(expert, items, logits_batch_size=batch_size, workers=workers,
                                           devices=devices, statistic=statistic):
                buffer[w] = (keys[w], mean)
                pbar.update(1)
                b = block_of[w]
                left[b] -= 1
                if left[b] == 0:  # the unit is complete: one atomic chunk
                    store.append_raw(mid, buffer, fingerprint=key)
                    raw.update(buffer)
                    done_here += 1
                    buffer = {}
                    procs.report_progress(f"{tag}/progress", done_here)
        except NonFiniteLogitsError as e:
            buffer = {}
            error = e
        except BaseException as e:
            store.append_raw(mid, buffer, fingerprint=key)  # keep the finished nodes of a crashed / interrupted run
            error = e
        finally:
            pbar.close()
        if error is not None:
            if procs.multi and not isinstance(error, Exception):
                raise error  # KeyboardInterrupt & co.: leave; the others see this process die
            procs.barrier(f"{tag}/computed", f"labelling {mid!r}", error=error, timeout=timeout)
        procs.barrier(f"{tag}/computed", f"labelling {mid!r}", timeout=timeout, progress_prefix=f"{tag}/progress")
        if me == 0:
            try:
                if procs.multi:  # the other processes' units
                    raw = {w: v for w, v in store.load_raw(mid, key).items() if v[1].shape == (h,)}
                missing = [w for w in with_data if w not in raw or raw[w][0] != keys[w]]
                if missing:
                    raise LabellingError(f"model {mid!r}: {len(missing)} nodes have no raw label after every unit "
                                         f"was reported done (first: {missing[:3]}); run label_models again")
                own = np.zeros((len(nodes), h), dtype=np.float32)
                has_own = np.zeros(len(nodes), dtype=bool)
                for w in with_data:
                    own[pos[w]] = raw[w][1]
                    has_own[pos[w]] = True
                s, has = smooth_labels(own, has_own, idx.edge_parent, idx.edge_child, np.float32(delta), idx.height)
                s, has = finish_rows(np.asarray(s), statistic), np.asarray(has)
                labelled = [w for w, ok in zip(nodes, has) if ok]
                store.commit(mid, labelled, s[has], delta=float(delta),  # process 0 alone (orbax: distributed.py)
                             head_names=getattr(expert, "head_names", None),
                             extra={"num_images": {w: sdag.num_images(w) for w in with_data},
                                    "statistic": statistic}, fingerprint=fp)
                store.compact_raw(mid, key)
            except Exception as e:
                procs.publish(f"{tag}/result", e)
                raise
            procs.publish(f"{tag}/result", str(len(labelled)))
        else:
            labelled = range(int(procs.wait_for(f"{tag}/result", f"waiting for process 0 to commit {mid!r}",
                                                timeout)))
        summary[mid] = {"labelled": len(labelled), "computed": len(todo_set),
                        "cached": len(with_data) - len(todo_set)}
        if procs.multi:
            summary[mid].update(processes=n_proc, computed_here=n_mine)
        if old_fps:
            summary[mid]["fingerprint_changed"] = True
    return summary
