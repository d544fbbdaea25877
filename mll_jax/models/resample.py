"""PIL's antialiased float resampling, re-implemented as a jit-able JAX function (images resized on the device).

The experts' preprocessing resizes with PIL in float mode (``Image.fromarray(channel, "F").resize(size,
resample)``, one call per channel: :func:`mll_jax.models.resize_images`).  On a CPU host that resize runs on the
same cores as the XLA forward; :func:`resize_on_device` computes the same function inside the jitted forward.

**What PIL computes** (Pillow ``src/libImaging/Resample.c``: ``precompute_coeffs``, ``ImagingResampleInner``,
``ImagingResample{Horizontal,Vertical}_32bpc``), per axis from ``in_size`` to ``out_size`` pixels::

    scale = in_size / out_size;  filterscale = max(scale, 1);  support = filter_support * filterscale
    for output pixel i:  center = (i + 0.5) * scale
        taps x in [int(center - support + 0.5), int(center + support + 0.5)), clipped to [0, in_size)
        weight(x) = filter((x - center + 0.5) / filterscale), normalised to sum 1 over the taps
        out[i] = sum_x in[x] * weight(x)        (accumulated in double, stored as float32)

first along the width (skipped when the width does not change), the float32 result then along the height
(skipped likewise).  :func:`resample_coeffs` builds exactly these tap tables in NumPy float64 (cached per
``(in_size, out_size, method)``); on the device each axis is a ``K``-tap weighted sum of gathered rows/columns
(``K`` = the widest window, unused taps have weight 0), loop-free, which XLA fuses into one elementwise loop per
axis.  Both passes in ONE jitted function are slower than they need to be: XLA fuses the width pass into the
height pass's gathers and recomputes it for every height tap (measured 0.70 ms of CPU per 196 -> 224 px image
against 0.25 ms for two executables; ``docs/FORWARD_NOTES.md``), so :func:`resize_on_device_2pass` runs each pass
as its own cached jitted executable (the intermediate materialised in between).  The only differences to PIL are float32 weights and a float32 accumulation of at most ``K`` products (PIL:
double): a few float32 ulp of the pixel values (tested against PIL on photos: ``tests/test_resample.py``).

Filters (``bicubic`` a = -0.5, ``bilinear``, ``lanczos`` (3 lobes), ``hamming``, ``box``) as in Pillow.  PIL's
``nearest`` is a different code path (no weights) and is not provided here.  One more filter is not PIL's:
``linear`` is the triangle filter *without* antialiasing (``filterscale`` fixed at 1, so two taps per output pixel
whatever the scale): ``cv2.resize(..., INTER_LINEAR)`` and ``tf.image.resize(..., "bilinear")`` (half-pixel centres,
edge pixels repeated), which some packages feed their models; :func:`resize_numpy` is its host version.
"""

from __future__ import annotations

import functools

import numpy as np
from mll_jax.errors import ResampleError  # noqa: F401  (re-exported)

__all__ = ["DEVICE_FILTERS", "NO_ANTIALIAS", "ResampleError", "resample_coeffs", "resize_numpy", "resize_on_device",
           "resize_on_device_2pass"]


def _bicubic(x):
    a = -0.5
    x = np.abs(x)
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
                    np.where(x < 2.0, (((x - 5.0) * x + 8.0) * x - 4.0) * a, 0.0))


def _bilinear(x):
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _box(x):
    return np.where((x > -0.5) & (x <= 0.5), 1.0, 0.0)


def _hamming(x):
    x = np.abs(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        px = np.pi * x
        # Pillow writes the constants as C floats (0.54f, 0.46f)
        s = np.sin(px) / np.where(x == 0.0, 1.0, px) * (float(np.float32(0.54)) + float(np.float32(0.46)) * np.cos(px))
    return np.where(x == 0.0, 1.0, np.where(x >= 1.0, 0.0, s))


def _sinc(x):
    with np.errstate(invalid="ignore", divide="ignore"):
        px = np.pi * x
        return np.where(x == 0.0, 1.0, np.sin(px) / np.where(x == 0.0, 1.0, px))


def _lanczos(x):
    return np.where((x >= -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3.0), 0.0)


#: ``method -> (support, filter)`` of Pillow's antialiased filters (``Resample.c``).
DEVICE_FILTERS = {
    "bicubic": (2.0, _bicubic),
    "bilinear": (1.0, _bilinear),
    "lanczos": (3.0, _lanczos),
    "hamming": (1.0, _hamming),
    "box": (0.5, _box),
    "linear": (1.0, _bilinear),
}

#: Filters applied without antialiasing (the filter keeps its support when shrinking): OpenCV's / TensorFlow's
#: bilinear resize.
NO_ANTIALIAS = frozenset({"linear"})


def _check_method(method: str) -> None:
    if method not in DEVICE_FILTERS:
        raise ResampleError(f"device resize: unknown filter {method!r}; use one of {sorted(DEVICE_FILTERS)} "
                            "('nearest' is only available on the host: mll_jax.models.resize_images)")


@functools.lru_cache(maxsize=256)
def _coeffs(in_size: int, out_size: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    support0, filt = DEVICE_FILTERS[method]
    scale = in_size / out_size
    filterscale = 1.0 if method in NO_ANTIALIAS else max(scale, 1.0)
    support = support0 * filterscale
    centers = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    # C's (int) truncates toward zero; the lower bound is clipped at 0 right after, so floor == trunc here
    xmin = np.maximum(np.trunc(centers - support + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(centers + support + 0.5), in_size).astype(np.int64)
    count = xmax - xmin
    k = max(int(count.max()), 1)
    taps = xmin[:, None] + np.arange(k)[None, :]
    valid = np.arange(k)[None, :] < count[:, None]
    w = np.where(valid, filt((taps - centers[:, None] + 0.5) * (1.0 / filterscale)), 0.0)  # as Pillow: * (1/fs)
    ww = w.sum(axis=1, keepdims=True)
    w = np.where(ww != 0.0, w / np.where(ww != 0.0, ww, 1.0), w)
    idx = np.where(valid, taps, np.clip(taps, 0, in_size - 1)).astype(np.int32)  # unused taps: weight 0
    idx.setflags(write=False)
    w.setflags(write=False)
    return idx, w


def resample_coeffs(in_size: int, out_size: int, method: str = "bicubic") -> tuple[np.ndarray, np.ndarray]:
    """PIL's tap table for one axis: ``(index int32 (out_size, K), weight float64 (out_size, K))``.

    ``out[i] = sum_k in[index[i, k]] * weight[i, k]``; each row's weights sum to 1 (unused taps: weight 0).
    Cached per ``(in_size, out_size, method)``; the arrays are read-only.
    """
    _check_method(method)
    for name, v in (("in_size", in_size), ("out_size", out_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ResampleError(f"device resize: {name} must be a positive int, got {v!r}")
    idx, w = _coeffs(int(in_size), int(out_size), method)
    return idx, w


def resize_numpy(x: np.ndarray, size: tuple[int, int], method: str = "linear") -> np.ndarray:
    """The function of :func:`resize_on_device` in NumPy on the host: ``(..., h, w, C)`` -> float32
    ``(..., H, W, C)`` (the host path of the filters PIL does not have, ``linear``)."""
    H, W = _check_args(x, size, method)
    x = np.asarray(x, np.float32)
    for axis, out_size in ((x.ndim - 2, W), (x.ndim - 3, H)):
        if x.shape[axis] == out_size:
            continue
        idx, w = resample_coeffs(x.shape[axis], out_size, method)
        shape = [1] * x.ndim
        shape[axis] = out_size
        x = sum(np.take(x, idx[:, k], axis=axis) * w[:, k].astype(np.float32).reshape(shape)
                for k in range(idx.shape[1])).astype(np.float32)
    return x


def _resize_axis(x, axis: int, out_size: int, method: str):
    import jax.numpy as jnp

    idx, w = resample_coeffs(x.shape[axis], out_size, method)
    shape = [1] * x.ndim
    shape[axis] = out_size
    out = None
    for k in range(idx.shape[1]):
        term = jnp.take(x, jnp.asarray(idx[:, k]), axis=axis) * jnp.asarray(w[:, k], jnp.float32).reshape(shape)
        out = term if out is None else out + term
    return out


def _check_args(x, size, method) -> tuple[int, int]:
    _check_method(method)
    try:
        H, W = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ResampleError(f"device resize: size must be (H, W), got {size!r}") from None
    if min(H, W) < 1:
        raise ResampleError(f"device resize: size must be positive, got {(H, W)}")
    if len(x.shape) < 3 or min(x.shape[-3:-1]) < 1:
        raise ResampleError(f"device resize: expected (..., h, w, C) images, got shape {tuple(x.shape)}")
    return H, W


def resize_on_device(x, size: tuple[int, int], method: str = "bicubic"):
    """Resize ``x`` (``(..., h, w, C)``, any real dtype, e.g. uint8 images) to ``size = (H, W)``: float32
    ``(..., H, W, C)``, the function of PIL's float-mode resize of every channel (see the module docstring).

    Pure and jit-able (the tap tables are compile-time constants of the input shape); vmap-able over leading axes.
    """
    import jax.numpy as jnp

    H, W = _check_args(x, size, method)
    x = jnp.asarray(x).astype(jnp.float32)
    if x.shape[-2] != W:
        x = _resize_axis(x, x.ndim - 2, W, method)  # PIL: horizontal pass first, float32 intermediate
    if x.shape[-3] != H:
        x = _resize_axis(x, x.ndim - 3, H, method)
    return x


@functools.lru_cache(maxsize=None)
def _pass_fn(axis_from_end: int, out_size: int, method: str):
    import jax
    import jax.numpy as jnp

    def one_pass(x):
        x = x.astype(jnp.float32)
        axis = x.ndim - axis_from_end
        return x if x.shape[axis] == out_size else _resize_axis(x, axis, out_size, method)

    return jax.jit(one_pass)


def resize_on_device_2pass(x, size: tuple[int, int], method: str = "bicubic"):
    """:func:`resize_on_device` as two jitted executables (width pass, then height pass): the same function and
    rounding, about 3x less CPU on XLA:CPU (see the module docstring).  Dispatched asynchronously: returns a jax
    array (on the device / with the sharding of ``x``).  Not itself traceable: call it outside ``jax.jit``."""
    H, W = _check_args(x, size, method)
    return _pass_fn(3, H, method)(_pass_fn(2, W, method)(x))
