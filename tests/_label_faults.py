"""Worker for tests/test_label_faults.py (fault injection: SIGKILL during labelling, then resume).

    python tests/_label_faults.py WORK K N

Process K (its own PYTHONHASHSEED, set by the test):

1. (K > 0) resumes run K-1 -- killed by process K-1 -- to completion and writes ``result-{K-1}.json``: the
   digest of the resumed store and whether it equals the digest of the uninterrupted reference of run K-1;
2. (K < N) labels config K uninterrupted into a scratch store (the reference: its digest and the number of
   fault-injection points it passed), then labels config K again into ``run-K`` and SIGKILLs itself at a random
   point (expert batches, every atomic file write before and after it, commits, raw-cache compaction).

Config K (seeded by K) varies the nodes with images, their images, the experts (tiny Flax models with random
weights, 3 to 5 heads) and their order, ``flush_every``, ``batch_size`` and ``delta``.  The SDAG is read from
``WORK/sdag`` (built by the test).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np

import flax.linen as nn

from mll_jax.labelling import layout
from mll_jax.labelling import LabelStore, label_models
from mll_jax.models import FlaxModuleExpert
from mll_jax.sdag import SDAG

_EVENTS = {"n": 0, "kill_at": None}


def tick() -> None:
    _EVENTS["n"] += 1
    if _EVENTS["kill_at"] is not None and _EVENTS["n"] == _EVENTS["kill_at"]:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup code runs


_real_write = layout.atomic_write_bytes


def _write(path, data):
    tick()
    out = _real_write(path, data)
    tick()
    return out


layout.atomic_write_bytes = _write  # every write of the label store goes through layout.write_file
for _name in ("commit", "compact_raw"):
    _orig = getattr(LabelStore, _name)

    def _wrapped(self, *a, _orig=_orig, **k):
        tick()
        return _orig(self, *a, **k)

    setattr(LabelStore, _name, _wrapped)


class Dense(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.features)(x.reshape((x.shape[0], -1)))


def _preprocess(images):
    tick()
    return images.astype(np.float32) / 255.0


def expert_pool():
    pool = []
    for j, h in enumerate((3, 5, 4)):
        rng = np.random.default_rng(100 + j)
        params = {"params": {"Dense_0": {"kernel": rng.normal(scale=0.2, size=(8 * 8 * 3, h)).astype(np.float32),
                                         "bias": rng.normal(size=h).astype(np.float32)}}}
        e = FlaxModuleExpert(Dense(h), params, _preprocess, f"m{j}", [f"h{i}" for i in range(h)], batch_size=4,
                             num_heads=h)
        e.fingerprint = f"pool-{j}-v1"
        pool.append(e)
    return pool


def config(k: int, g: SDAG, pool):
    rng = np.random.default_rng(1000 + k)
    nodes = list(g.nodes)
    n_with = int(rng.integers(3, len(nodes) + 1))
    with_data = sorted(rng.choice(len(nodes), size=n_with, replace=False).tolist())
    for w in nodes:
        g.set_images(w, np.zeros((0, 8, 8, 3), np.uint8))
    for i in with_data:
        g.set_images(nodes[i], rng.integers(0, 256, (int(rng.integers(1, 6)), 8, 8, 3), dtype=np.uint8))
    m = int(rng.integers(1, len(pool) + 1))
    experts = [pool[i] for i in rng.permutation(len(pool))[:m]]
    kw = dict(flush_every=int(rng.integers(1, 4)), batch_size=int(rng.choice([2, 3, 5])),
              delta=float(rng.choice([0.3, 0.5, 0.7])), progress=False)
    return experts, kw, rng


def digest(path) -> str:
    store = LabelStore(path)
    assert store.damaged_models() == {}, store.damaged_models()
    h = hashlib.sha256()
    for m in store.model_ids():
        info = {k: v for k, v in store.info(m).items() if k not in ("checkpoint", "index", "index_sha256")}
        nodes, labels = store.read_all(m)
        h.update(json.dumps([m, info, nodes], sort_keys=True).encode())
        h.update(labels.tobytes())
        for w, (key, mean) in sorted(store.load_raw(m).items()):
            h.update(f"{w}:{key}:".encode() + mean.tobytes())
    return h.hexdigest()


def main(work: Path, k: int, n: int) -> None:
    g = SDAG.load(work / "sdag")
    pool = expert_pool()
    if k > 0:
        experts, kw, _ = config(k - 1, g, pool)
        _EVENTS["kill_at"] = None
        summary = label_models(g, experts, LabelStore(work / f"run-{k - 1}"), **kw)
        ref = json.loads((work / f"ref-{k - 1}.json").read_text())
        got = digest(work / f"run-{k - 1}")
        (work / f"result-{k - 1}.json").write_text(json.dumps(
            {"match": got == ref["digest"], "resumed": got, "reference": ref["digest"], "kill_at": ref["kill_at"],
             "events": ref["events"], "summary": summary, "hashseed": os.environ.get("PYTHONHASHSEED")}))
    if k < n:
        experts, kw, rng = config(k, g, pool)
        scratch = work / f"refstore-{k}"
        _EVENTS.update(n=0, kill_at=None)
        label_models(g, experts, LabelStore(scratch), **kw)
        events = _EVENTS["n"]
        ref = digest(scratch)
        shutil.rmtree(scratch)
        kill_at = int(rng.integers(1, events + 1))
        (work / f"ref-{k}.json").write_text(json.dumps({"digest": ref, "events": events, "kill_at": kill_at}))
        _EVENTS.update(n=0, kill_at=kill_at)
        label_models(g, experts, LabelStore(work / f"run-{k}"), **kw)
        print(f"NOT KILLED: {events} events, kill_at {kill_at}")  # pragma: no cover - the test fails on this
        sys.exit(3)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
