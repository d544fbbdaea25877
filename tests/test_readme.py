"""The README's practitioner quick start runs as written (offline: shipped experts and sample images)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    found = [b for b in blocks if b.startswith(marker)]
    assert len(found) == 1, f"README must have exactly one python block starting with {marker!r}"
    return found[0]


@pytest.mark.slow
def test_readme_quick_start_runs(tmp_path):
    pytest.importorskip("PIL")
    code = _block("# quick-start")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert "'dog' ->" in out.stdout and "'car' ->" in out.stdout
    preds = eval(lines[-1])  # the printed predicted names of the kept images
    from mll_jax.samples import sample_files

    _, y = sample_files("cifar10")
    truth = [{1: "car", 5: "dog", 9: "car"}[c] for c in y if c in (1, 5, 9)]  # automobile, dog, truck
    assert len(preds) == len(truth) == 6
    assert sum(p == t for p, t in zip(preds, truth)) >= 5  # measured: 6 of 6 (the comment in the README)
    assert (tmp_path / "dog_car.npz").is_file() and (tmp_path / "my_mll" / "config.json").is_file()
