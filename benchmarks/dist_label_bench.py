"""Wall time of ``mll-jax label`` as one process vs N cooperating processes (and one process over 2 host devices).

Builds a small real system (the ImageNet sample images at their wnids plus hypernyms, each node with ``--per_node``
images made of the samples by flips and shifts; EfficientNet-Lite0 at ``--resolution``), then labels copies of it:

* ``1 process``: ``mll-jax label`` (one subprocess),
* ``1 process, 2 devices``: the same with ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (batches split
  over the two host devices),
* ``N processes``: ``mll-jax label --num_processes=N --process_id=i --coordinator_address=127.0.0.1:PORT``.

Every run starts from an empty label store and includes process start-up, expert loading and compilation (what a
user waits for).  Prints wall seconds, the ratio to the one-process run, and checks that all label stores are
bitwise equal.  Hold the benchmark lock: ``flock /tmp/mll-bench.lock python benchmarks/dist_label_bench.py``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app, flags
from mll_lab.results import record_report

REPO = Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
flags.DEFINE_integer("per_node", 16, "images per node")
flags.DEFINE_integer("resolution", 224, "EfficientNet-Lite0 input resolution")
flags.DEFINE_integer("processes", 2, "processes of the multi-process run")
flags.DEFINE_integer("unit_nodes", 4, "nodes per unit")
flags.DEFINE_integer("repeats", 1, "runs of each configuration (the best is reported)")


def _build(root: Path) -> int:
    from mll_jax import MLL, SDAG, sample_images
    from mll_jax.models import imagenet_wnids

    imgs, y, _ = sample_images("imagenet")
    wn = [imagenet_wnids()[c] for c in y]
    sdag = SDAG.from_wnids(sorted(set(wn)), close_hypernyms=True)
    mll = MLL.open(root, sdag=sdag)
    rng = np.random.default_rng(0)
    for w in sorted(set(wn)):
        base = imgs[[x == w for x in wn]]
        out = []
        for k in range(FLAGS.per_node):
            im = base[k % len(base)]
            im = im[:, ::-1] if k % 2 else im
            dy, dx = rng.integers(-8, 9, 2)
            out.append(np.roll(np.roll(im, dy, 0), dx, 1))
        mll.add_images(w, np.stack(out))
    mll.add_model("efficientnet-lite0", resolution=FLAGS.resolution)
    return sum(mll.sdag.num_images(w) for w in mll.sdag.nodes_with_images())


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(root: Path, n: int, devices: int = 1) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    base = [sys.executable, "-m", "mll_jax.cli", "label", f"--root={root}", "--noprogress",
            f"--unit_nodes={FLAGS.unit_nodes}"]
    port = _port()
    cmds = [base] if n == 1 else [base + [f"--num_processes={n}", f"--process_id={i}",
                                          f"--coordinator_address=127.0.0.1:{port}"] for i in range(n)]
    t = time.perf_counter()
    ps = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    outs = [p.communicate(timeout=3600) for p in ps]
    dt = time.perf_counter() - t
    for p, (o, e) in zip(ps, outs):
        if p.returncode != 0:
            raise SystemExit(f"run failed ({p.returncode}):\n{o}\n{e[-3000:]}")
    return dt


def run_benchmark(argv):
    del argv
    from mll_jax.labelling import LabelStore

    tmp = Path(tempfile.mkdtemp(prefix="dist-bench-"))
    os.environ.setdefault("MLL_JAX_HOME", str(tmp / "home"))
    try:
        n_img = _build(tmp / "base")
        print(f"{n_img} images, EfficientNet-Lite0 at {FLAGS.resolution} px, units of {FLAGS.unit_nodes} nodes, "
              f"{os.cpu_count()} CPUs")
        configs = [("1 process", 1, 1), ("1 process, 2 devices", 1, 2),
                   (f"{FLAGS.processes} processes", FLAGS.processes, 1)]
        times, stores = {}, {}
        for r in range(FLAGS.repeats):
            for name, n, d in configs:
                root = tmp / f"run-{r}-{n}-{d}"
                shutil.copytree(tmp / "base", root)
                dt = _run(root, n, d)
                times[name] = min(times.get(name, float("inf")), dt)
                stores[name] = root / "labels"
        ref = times["1 process"]
        for name, _, _ in configs:
            print(f"{name:>24}: {times[name]:7.1f} s wall  ({n_img / times[name]:6.1f} images/s)  "
                  f"x{ref / times[name]:.2f} vs 1 process")
        a = LabelStore(stores["1 process"])
        for name in stores:
            b = LabelStore(stores[name])
            for m in a.model_ids():
                same = np.array_equal(a.read_all(m)[1], b.read_all(m)[1])
                print(f"labels of {name!r} bitwise equal to 1 process: {same}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv):
    """Run the benchmark, echoing its report, then write results/dist_label_bench.json and .md with provenance
    (``mll_lab.results.record_report``): the flags, the report lines (the numbers as printed) and the load."""
    flag_values = {f.name: f.value for f in FLAGS.get_flags_for_module(sys.argv[0])}
    record_report("dist_label_bench", "Labelling over processes and local devices",
                  lambda: run_benchmark(argv), flags=flag_values)


if __name__ == "__main__":
    app.run(main)
