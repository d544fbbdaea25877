"""Memory safety of the torch-free checkpoint reader (issue 11, item 1).

The fuzzer (tests/torch_fuzz.py) runs in a subprocess so that an interpreter crash fails the test instead of
killing pytest; the targeted cases below pin the defects that were found by hand.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mll_jax.models import torch_pickle as tp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch_fuzz as fz  # noqa: E402


def test_fuzzed_checkpoints_never_crash_the_interpreter(tmp_path):
    """3,000 mutated checkpoints (2,100 byte flips / truncations / damaged pickles, 900 crafted views): each is a
    clean CheckpointError or the right tensors (views checked against a numpy fancy-indexing reference)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "torch_fuzz.py"), str(tmp_path), "2100", "900", "11"],
                       capture_output=True, text=True, timeout=300, env=env, cwd=str(ROOT))
    assert r.returncode == 0, f"fuzzer exited with {r.returncode} (negative: killed by signal)\n{r.stderr[-3000:]}"
    counts = json.loads(r.stdout.strip().splitlines()[-1])
    assert counts["flip_error"] + counts["flip_ok"] == 2100
    assert counts["view_error"] + counts["view_ok"] == 900
    # both outcomes occur: the fuzzer reaches the accept path and the refuse path
    assert min(counts.values()) > 20, counts


def _one_tensor(tmp_path, offset, shape, stride, base=None, legacy=False, name="t.pth"):
    base = np.arange(10, dtype=np.float32) if base is None else base
    p = tmp_path / name
    fz.write(p, {"t": fz.Tensor(fz.Storage(base, "0"), offset, shape, stride)}, legacy=legacy)
    return p


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("offset,shape,stride,what", [
    (9, (3,), (-1,), "negative tensor stride"),         # used to read before the storage (or SIGSEGV)
    (-4, (2,), (1,), "negative storage offset"),
    (0, (1 << 40, 1 << 40), (0, 0), "bytes"),            # zero strides: used to allocate from a tiny file
    (0, (4, 4), (1, 4), "overruns"),
    (0, (2,), (1 << 62,), "overruns"),
    (0, (2,), (1,), None),                              # a valid view for comparison
])
def test_crafted_views(tmp_path, legacy, offset, shape, stride, what):
    p = _one_tensor(tmp_path, offset, shape, stride, legacy=legacy)
    if what is None:
        np.testing.assert_array_equal(tp.load_torch_checkpoint(p)["t"], [0.0, 1.0])
        return
    with pytest.raises(tp.CheckpointError, match=what) as ei:
        tp.load_torch_checkpoint(p)
    assert isinstance(ei.value, ValueError) and str(p) in str(ei.value)


def test_zero_stride_expansion_is_bounded(tmp_path):
    # 256 x 1024 float32 from one stored float: 1 MiB, within the slack -> read; 64 MiB -> refused
    ok = tp.load_torch_checkpoint(_one_tensor(tmp_path, 0, (256, 1024), (0, 0), np.ones(1, np.float32)))["t"]
    assert ok.shape == (256, 1024) and ok.sum() == 256 * 1024
    with pytest.raises(tp.CheckpointError, match="bytes"):
        tp.load_torch_checkpoint(_one_tensor(tmp_path, 0, (4096, 4096), (0, 0), np.ones(1, np.float32), name="b"))


def test_pickle_cannot_mutate_the_allow_listed_globals(tmp_path):
    """A pickle BUILDs new state into torch.FloatStorage (used to be one shared object): that load is refused and
    every later load in the process still works."""
    good = _one_tensor(tmp_path, 0, (3,), (1,))
    # GLOBAL torch.FloatStorage; state (None, {'dtype': '<i1'}); BUILD; STOP
    evil = (b"\x80\x02ctorch\nFloatStorage\nN}X\x05\x00\x00\x00dtypeX\x03\x00\x00\x00<i1s\x86b.")
    for fn in ("_rebuild_tensor_v2",):
        evil_fn = (b"\x80\x02ctorch._utils\n" + fn.encode() + b"\nN}X\x0c\x00\x00\x00__defaults__"
                   b"X\x01\x00\x00\x00xs\x86b.")
    for payload in (evil, evil_fn):
        p = tmp_path / "evil.pth"
        p.write_bytes(payload)
        with pytest.raises(tp.CheckpointError):
            tp.load_torch_checkpoint(p)
        np.testing.assert_array_equal(tp.load_torch_checkpoint(good)["t"], [0.0, 1.0, 2.0])


def test_memo_and_buffer_opcodes_cannot_allocate(tmp_path):
    p = tmp_path / "m.pth"
    # LONG_BINPUT 2**31 - 1: the C unpickler would size its memo table to 2**32 entries (32 GiB)
    p.write_bytes(b"\x80\x02N" + b"r" + (2 ** 31 - 1).to_bytes(4, "little") + b".")
    with pytest.raises(tp.CheckpointError, match="memo index"):
        tp.load_torch_checkpoint(p)
    # BYTEARRAY8 claiming 2**40 bytes (protocol 5): refused before anything is allocated
    p.write_bytes(b"\x80\x05\x96" + (2 ** 40).to_bytes(8, "little") + b"ab.")
    with pytest.raises(tp.CheckpointError):
        tp.load_torch_checkpoint(p)


def _zipped(path, data_pkl: bytes):
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
    return path


def test_shared_and_cyclic_objects_are_bounded(tmp_path):
    # a list holding itself, and 40 levels of (x, x) sharing (2**40 leaves if expanded naively)
    p = _zipped(tmp_path / "c.pth", b"\x80\x02]q\x00h\x00a.")  # EMPTY_LIST, BINPUT 0, BINGET 0, APPEND
    out = tp.load_torch_checkpoint(p)
    assert out[0] is out
    body = b"\x80\x02N"
    for i in range(40):
        body += b"q" + bytes([i % 200]) + b"h" + bytes([i % 200]) + b"\x86"  # (x, x)
    _zipped(p, body + b".")
    out = tp.load_torch_checkpoint(p)
    assert isinstance(out, tuple) and out[0] is out[1]
    with pytest.raises(tp.CheckpointError, match="no tensors"):
        tp.load_state_dict(p)


def test_errors_stay_backward_compatible(tmp_path):
    p = _one_tensor(tmp_path, 0, (3,), (-1,))
    with pytest.raises(pickle.UnpicklingError):
        tp.load_torch_checkpoint(p)
    with pytest.raises(ValueError):
        tp.load_torch_checkpoint(p)
