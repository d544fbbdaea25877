"""NumPy references for the resize tests (shared by test_resample and test_real_experts)."""

from __future__ import annotations

import numpy as np


def half_pixel_bilinear(x, size):
    """OpenCV's ``INTER_LINEAR`` / TensorFlow's bilinear resize written out on ``(n, h, w, c)``: source coordinate
    ``(i + 0.5) * in / out - 0.5``, two neighbours, edges clamped, no antialiasing; float64 out."""
    def axis(n_in, n_out):
        c = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        lo = np.floor(c)
        frac = np.where(lo < 0, 0.0, c - lo)
        lo = lo.astype(int)
        return np.maximum(lo, 0), np.minimum(lo + 1, n_in - 1), frac

    (ly, hy, fy), (lx, hx, fx) = axis(x.shape[1], size[0]), axis(x.shape[2], size[1])
    x = x.astype(np.float64)
    rows = x[:, ly] * (1 - fy)[None, :, None, None] + x[:, hy] * fy[None, :, None, None]
    return rows[:, :, lx] * (1 - fx)[None, None, :, None] + rows[:, :, hx] * fx[None, None, :, None]
