"""Declarative preprocessing of ``flax_module`` hub models (JSON-serialisable, stored in the manifest)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mll_jax.models import PIL_FILTERS, as_uint8_rgb, center_crop_resize, resize_images

__all__ = ["RESAMPLE_METHODS", "PreprocessSpec"]

#: Resampling filters :func:`mll_jax.models.resize_images` accepts.
RESAMPLE_METHODS = tuple(PIL_FILTERS)


class PreprocessSpec:
    """Declarative preprocessing for ``flax_module`` experts (JSON-serialisable).

    ``uint8 (n, h, w, 3)`` -> centre crop (``crop_fraction`` of the shorter side, optional)
    -> resize to ``size`` (``resample``) -> ``x * scale`` -> ``(x - mean) / std`` ->
    ``layout`` ``"NHWC"`` or ``"NCHW"``; float32.
    """

    def __init__(self, size: Sequence[int], *, mean: Sequence[float] = (0.0, 0.0, 0.0),
                 std: Sequence[float] = (1.0, 1.0, 1.0), scale: float = 1.0, layout: str = "NHWC",
                 resample: str = "bilinear", crop_fraction: float | None = None):
        size = tuple(int(s) for s in (size if isinstance(size, (list, tuple)) else (size, size)))
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"preprocess size must be (H, W) positive ints, got {size}")
        if layout not in ("NHWC", "NCHW"):
            raise ValueError(f"layout must be 'NHWC' or 'NCHW', got {layout!r}")
        if len(mean) != 3 or len(std) != 3 or any(float(s) == 0 for s in std):
            raise ValueError("mean/std need 3 values each and std must be non-zero")
        if resample not in RESAMPLE_METHODS:
            raise ValueError(f"unknown resample {resample!r}; use one of {sorted(RESAMPLE_METHODS)}")
        self.size, self.layout, self.resample = size, layout, resample
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.scale = float(scale)
        self.crop_fraction = None if crop_fraction is None else float(crop_fraction)

    def to_dict(self) -> dict:
        return {"size": list(self.size), "mean": self.mean, "std": self.std, "scale": self.scale,
                "layout": self.layout, "resample": self.resample, "crop_fraction": self.crop_fraction}

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        d = dict(d)
        return cls(d.pop("size"), **d)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = as_uint8_rgb(images, "preprocess")
        if self.crop_fraction is not None:
            if self.size[0] != self.size[1]:
                raise ValueError("crop_fraction needs a square size")
            x = center_crop_resize(images, self.size[0], self.crop_fraction, self.resample)
        else:
            x = resize_images(images, self.size, self.resample)
        x = x * np.float32(self.scale)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=np.float32)
