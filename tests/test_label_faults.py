"""Fault injection (issue 11, item 7): labelling is SIGKILLed at a random point in 20 runs (experts, nodes, images,
flush and batch sizes varied per run; every process has its own PYTHONHASHSEED) and each store, once resumed, is
bitwise identical to an uninterrupted run.  The worker is tests/_label_faults.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mll_jax.sdag import SDAG

ROOT = Path(__file__).resolve().parents[1]
RUNS = 20


@pytest.mark.slow
def test_killed_labelling_resumes_to_identical_stores(tmp_path, wn):
    g = SDAG.from_roots(["n02085374"], max_depth=2, wn=wn)  # toy dog and its hyponyms
    g.add_node("robo pup", description="toy robot dog", hypernyms=["n02085374", "n02085272"])
    g.save(tmp_path / "sdag")
    assert len(g) >= 8
    worker = str(ROOT / "tests" / "_label_faults.py")
    for k in range(RUNS + 1):
        env = {**os.environ, "PYTHONHASHSEED": str(17 * k + 3), "JAX_PLATFORMS": "cpu",
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        r = subprocess.run([sys.executable, worker, str(tmp_path), str(k), str(RUNS)], env=env, capture_output=True,
                           text=True, timeout=300, cwd=str(ROOT))
        want = 0 if k == RUNS else -9  # every run but the last resume ends in SIGKILL
        assert r.returncode == want, f"process {k}: rc {r.returncode}\n{r.stdout[-1000:]}\n{r.stderr[-3000:]}"
    results = [json.loads((tmp_path / f"result-{k}.json").read_text()) for k in range(RUNS)]
    bad = [(k, r) for k, r in enumerate(results) if not r["match"]]
    assert not bad, bad[:3]
    # the kills hit different places, and resumed runs really reused the work done before the kill
    assert len({r["kill_at"] for r in results}) >= 10
    assert any(sum(s["cached"] for s in r["summary"].values()) > 0 for r in results)
    assert len({r["reference"] for r in results}) == RUNS  # the configs differ
