"""A fingerprint for every expert, so labels are never silently stale.

Labelling keys an expert's cached and committed labels by a *fingerprint*: a string that changes when the model
changes.  :func:`expert_fingerprint` gives one for any expert (an object with ``model_id``, ``num_heads`` and
``logits(images)``):

1. the expert's own ``fingerprint`` attribute, when it has one (hub experts: SHA-256 of kind, options and
   weight files);
2. else a SHA-256 of its **parameters**, when they are reachable: the first of the attributes ``params``,
   ``variables`` (:data:`PARAM_ATTRIBUTES`) that is a pytree holding at least one array (every leaf's path,
   dtype, shape and bytes), with the expert's class name, the class of its ``module`` attribute if any, and its
   number of heads;
3. else a SHA-256 of its **outputs** on a fixed probe batch: :data:`PROBE_IMAGES` seeded random uint8 RGB images
   of the expert's input size (its ``input_size``, ``image_size`` or ``resolution`` attribute, or its
   ``device_preprocess.size``; else :data:`DEFAULT_PROBE_SIZE`).  The logits are projected on
   :data:`PROBE_PROJECTIONS` fixed random directions per image and rounded on a grid of 1/64 to 1/128 of the
   largest logit's magnitude (a power of two, also hashed), so the float round-off of another run, batch or
   device (about 1e-6 relative) changes the fingerprint only in the rare case that a value lies that close to a
   rounding boundary (then the model is relabelled once, needlessly), while new weights that move the logits by
   more than about one percent of their scale change it.

Fingerprints are 64 hexadecimal digits.  The function never changes the expert.
"""

from __future__ import annotations

import hashlib
import math

import jax
import numpy as np

from mll_jax.errors import LabellingError

__all__ = ["expert_fingerprint", "tree_fingerprint", "PARAM_ATTRIBUTES", "PROBE_IMAGES", "PROBE_PROJECTIONS",
           "DEFAULT_PROBE_SIZE", "PROBE_SEED"]

#: Attributes searched, in order, for an expert's parameters (a pytree of arrays).
PARAM_ATTRIBUTES = ("params", "variables")
#: Images in the probe batch.
PROBE_IMAGES = 4
#: Random directions each probe image's logits are projected on before rounding.
PROBE_PROJECTIONS = 16
#: Probe image side when the expert declares no input size.
DEFAULT_PROBE_SIZE = 64
#: Seed of the probe images and projections.
PROBE_SEED = 20_230_921
#: Rounding grid: 2 ** (exponent of the largest logit - _GRID_BITS).
_GRID_BITS = 6


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, type)


def tree_fingerprint(tree) -> str | None:
    """SHA-256 of a pytree of arrays (each leaf's path, dtype, shape and bytes; other leaves by ``repr``), or
    ``None`` when it holds no array."""
    try:
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    except Exception:  # not a pytree jax understands
        return None
    if not any(_is_array(v) for _, v in leaves):
        return None
    h = hashlib.sha256(b"mll_jax.tree/1\0")
    for path, v in leaves:
        h.update(jax.tree_util.keystr(path).encode("utf-8") + b"\0")
        if _is_array(v):
            a = np.ascontiguousarray(np.asarray(v))
            h.update(repr((a.dtype.str, a.shape)).encode() + b"\0")
            h.update(a.tobytes())
        else:
            h.update(repr(v).encode("utf-8", "backslashreplace") + b"\0")
    return h.hexdigest()


def _model_id(expert) -> str:
    mid = getattr(expert, "model_id", None)
    return mid if isinstance(mid, str) else repr(type(expert).__name__)


def _heads(expert) -> int:
    h = getattr(expert, "num_heads", None)
    if isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1:
        raise LabellingError(f"model {_model_id(expert)!r} has invalid num_heads {h!r}")
    return int(h)


def _qualname(obj) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def _probe_size(expert, probe_size) -> tuple[int, int]:
    cands = [probe_size] + [getattr(expert, a, None) for a in ("input_size", "image_size", "resolution")]
    cands.append(getattr(getattr(expert, "device_preprocess", None), "size", None))
    for c in cands:
        if c is None:
            continue
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 1:
            return int(c), int(c)
        if (isinstance(c, (tuple, list)) and len(c) == 2
                and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in c)):
            return int(c[0]), int(c[1])
    return DEFAULT_PROBE_SIZE, DEFAULT_PROBE_SIZE


def _probe_fingerprint(expert, heads: int, probe_size) -> str:
    mid = _model_id(expert)
    hh, ww = _probe_size(expert, probe_size)
    x = np.random.default_rng(PROBE_SEED).integers(0, 256, (PROBE_IMAGES, hh, ww, 3), dtype=np.uint8)
    try:
        out = np.asarray(expert.logits(x), dtype=np.float64)
    except Exception as e:
        raise LabellingError(
            f"model {mid!r} has no fingerprint and its parameters are not reachable, and computing one from its "
            f"outputs failed: logits of a ({PROBE_IMAGES}, {hh}, {ww}, 3) probe batch raised {type(e).__name__}: "
            f"{e}. Give the expert a `fingerprint` string attribute (it must change with the weights), a "
            "`params` attribute, or its `input_size`") from e
    if out.shape != (PROBE_IMAGES, heads):
        raise LabellingError(f"model {mid!r}: logits of {PROBE_IMAGES} probe images have shape {out.shape}, "
                             f"expected ({PROBE_IMAGES}, {heads})")
    if not np.all(np.isfinite(out)):
        raise LabellingError(f"model {mid!r}: non-finite logits on the fingerprint probe batch")
    proj = np.random.default_rng(PROBE_SEED + 1).standard_normal((heads, PROBE_PROJECTIONS)) / math.sqrt(heads)
    y = out @ proj
    big = float(np.abs(out).max())
    exp = math.frexp(big)[1] if big > 0 else -1074
    q = np.rint(np.ldexp(y, _GRID_BITS - exp)).astype(np.int64)
    h = hashlib.sha256(b"mll_jax.expert.probe/1\0")
    h.update(repr((_qualname(expert), heads, hh, ww, exp)).encode("utf-8") + b"\0")
    h.update(q.tobytes())
    return h.hexdigest()


def expert_fingerprint(expert, *, probe_size: int | tuple[int, int] | None = None) -> str:
    """The expert's fingerprint (see the module doc): its ``fingerprint`` attribute, else a hash of its
    parameters, else of its rounded outputs on a seeded probe batch (``probe_size`` overrides the probe images'
    size).  Raises :class:`LabellingError` naming the model when it has none and cannot be probed."""
    fp = getattr(expert, "fingerprint", None)
    if fp is not None:
        if not isinstance(fp, str) or not fp:
            raise LabellingError(f"model {_model_id(expert)!r}: fingerprint must be a non-empty string or None, "
                                 f"got {fp!r}")
        return fp
    heads = _heads(expert)
    for attr in PARAM_ATTRIBUTES:
        tree = getattr(expert, attr, None)
        if tree is None or callable(tree) and not isinstance(tree, dict):
            continue
        digest = tree_fingerprint(tree)
        if digest is not None:
            module = getattr(expert, "module", None)
            h = hashlib.sha256(b"mll_jax.expert.params/1\0")
            h.update(repr((_qualname(expert), None if module is None else _qualname(module), heads, attr)).encode())
            h.update(digest.encode())
            return h.hexdigest()
    return _probe_fingerprint(expert, heads, probe_size)
