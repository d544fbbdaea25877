#!/usr/bin/env bash
# The scale benchmark on an accelerator, in one command (at most 8 minutes, nothing downloaded):
#
#     bash benchmarks/scale_gpu.sh
#
# Same stages as benchmarks/scale_bench.py, at the paper's 50 images per node, on a smaller SDAG and hub so the
# whole run fits in 8 minutes (labelling is 50 x nodes images per expert).  Writes results/scale_bench_gpu.json,
# .md and .png; the results record the device they ran on, and the script refuses to run without a GPU so a
# CPU run can never be mistaken for a GPU one.  Override any flag by appending it, e.g. `--nodes=2000`.
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import sys
import jax
d = jax.devices()[0]
if d.platform != "gpu":
    sys.exit(f"scale_gpu.sh: no GPU visible to JAX (first device: {d.platform}); run benchmarks/scale_bench.py instead")
print("GPU:", d.device_kind, "| devices:", len(jax.devices()))
PY
exec timeout --signal=INT 480 python benchmarks/scale_bench.py \
    --device=gpu --name=scale_bench_gpu --work_dir="${TMPDIR:-/tmp}/mll_scale_bench_gpu" \
    --nodes=1000 --node_fractions=0.25,1 --models=24 --model_counts=6,12,24 \
    --images_per_node=50 --image_size=32 --lite_resolution=32 --batch_size=256 \
    --classes=20,37,101 --test_per_class=10 --full_size=true "$@"
