"""One process of a multi-process run for tests/test_distributed.py (run as a script, never collected).

    python tests/_dist_worker.py label ROOT PROCESS_ID NUM_PROCESSES PORT UNIT_NODES [kill]
        MLL.open(ROOT).label(unit_nodes=UNIT_NODES) as process PROCESS_ID; with ``kill`` this process SIGKILLs
        itself right after its first unit is written to the raw cache.  Prints ``SUMMARY <json>``.
    python tests/_dist_worker.py chco OUT PROCESS_ID NUM_PROCESSES PORT
        mll_jax.distributed.solve_batch on tests' random CHCO instances; process 0 saves the gathered result and a
        plain one-process chco.solve_batch of the same instances to OUT (.npz).
"""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np


def chco_instances():
    """7 random models, 5-8 heads (one padded shape: one compile), 4 classes."""
    rng = np.random.default_rng(7)
    return [(rng.normal(size=(h, 4)) * s).astype(np.float32) for h, s in
            [(5, 1.0), (6, 3.0), (7, 0.5), (8, 2.0), (5, 1.0), (8, 4.0), (6, 8.0)]]


def main(argv):
    from mll_jax import distributed

    mode, path, pid, n, port = argv[1], argv[2], int(argv[3]), int(argv[4]), int(argv[5])
    procs = distributed.initialize(f"127.0.0.1:{port}", n, pid, heartbeat_timeout_seconds=5, wait_timeout=120,
                                   initialization_timeout=60)
    if mode == "chco":
        res = distributed.solve_batch(chco_instances(), model_ids=[f"m{i}" for i in range(7)], progress=False)
        if pid == 0:  # the gathered result, and the one-process reference (plain chco.solve_batch on every model)
            from mll_jax import chco

            ref = chco.solve_batch(chco_instances(), model_ids=[f"m{i}" for i in range(7)], progress=False)
            out = {}
            for pre, r in (("", res), ("ref_", ref)):
                out.update({pre + k: getattr(r, k) for k in ("loss", "objective", "iterations", "converged", "gap")})
                out.update({f"{pre}X{i}": x for i, x in enumerate(r.X)})
            np.savez(path, **out)
        print("DONE", procs)
        return 0
    from mll_jax import MLL
    from mll_jax.labelling import LabelStore

    if len(argv) > 7 and argv[7] == "kill":
        append = LabelStore.append_raw

        def append_then_die(self, model_id, entries, **kw):
            append(self, model_id, entries, **kw)
            if entries:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup code runs

        LabelStore.append_raw = append_then_die
    mll = MLL.open(path).with_config(progress=False)
    summary = mll.label(unit_nodes=int(argv[6]))
    print("SUMMARY", json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
