"""The device resize (``mll_jax.models.resample``) against PIL's float resize, and ``DevicePreprocess``.

Reference: PIL itself (``Image.fromarray(channel, "F").resize(...)`` per channel, i.e.
``mll_jax.models.resize_images``) on the foolbox ImageNet sample photos, and one tap table by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from mll_jax.models import resize_images  # noqa: E402
from mll_jax.models.resample import resize_numpy, resize_on_device_2pass  # noqa: E402
from test_models import foolbox_samples  # noqa: E402
from np_resize import half_pixel_bilinear  # noqa: E402  (tests/: the shared NumPy reference)


@pytest.fixture(scope="module")
def photos():
    imgs, _ = foolbox_samples("imagenet")
    return np.stack([im[:203, :211] for im in imgs[:3]])  # real photos, odd sizes


def _pil(x, size, method):
    from PIL import Image

    codes = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS,
             "hamming": Image.HAMMING, "box": Image.BOX}
    H, W = size
    out = np.empty((x.shape[0], H, W, x.shape[3]), np.float32)
    for i in range(x.shape[0]):
        for c in range(x.shape[3]):
            ch = Image.fromarray(x[i, :, :, c].astype(np.float32), mode="F")
            out[i, :, :, c] = np.asarray(ch.resize((W, H), resample=codes[method]))
    return out


# (input h, w) -> (output H, W): up, down (Lite0's 196 -> 224 and 448 -> 224 kind), odd, one axis unchanged, 1 px
CASES = [((196, 196), (224, 224)), ((203, 211), (32, 32)), ((201, 173), (97, 250)), ((200, 200), (200, 100)),
         ((5, 7), (3, 11)), ((40, 40), (1, 1))]


@pytest.mark.parametrize("method", ["bicubic", "bilinear"])
@pytest.mark.parametrize("shapes", CASES)
def test_device_resize_equals_pil(photos, method, shapes):
    from mll_jax.models.resample import resize_on_device, resize_on_device_2pass

    (h, w), size = shapes
    x = photos[:, :h, :w]
    ref = _pil(x, size, method)
    fused = np.asarray(jax.jit(lambda a: resize_on_device(a, size, method))(x))
    two = np.asarray(resize_on_device_2pass(x, size, method))
    for got in (fused, two):
        assert got.dtype == np.float32 and got.shape == ref.shape
        # float32 weights and sums instead of PIL's double: a few ulp of 255 (measured <= 6.1e-5)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1.5e-4)


@pytest.mark.parametrize("method", ["lanczos", "hamming", "box"])
def test_other_pil_filters(photos, method):
    from mll_jax.models.resample import resize_on_device_2pass

    for (h, w), size in (CASES[1], CASES[2]):
        x = photos[:, :h, :w]
        np.testing.assert_allclose(np.asarray(resize_on_device_2pass(x, size, method)), _pil(x, size, method),
                                   rtol=0, atol=1.5e-4)


def test_coeffs_by_hand():
    """Bilinear 4 -> 2: scale 2, support 2; output 0: centre 1.0, taps 0..2 at (x - 1 + 0.5) / 2 ->
    triangle weights 0.75, 0.75, 0.25, normalised by 1.75; output 1: centre 3.0, taps 1..3: 0.25, 0.75, 0.75."""
    from mll_jax.models.resample import resample_coeffs

    idx, w = resample_coeffs(4, 2, "bilinear")
    assert idx.tolist() == [[0, 1, 2], [1, 2, 3]]
    np.testing.assert_allclose(w, np.array([[0.75, 0.75, 0.25], [0.25, 0.75, 0.75]]) / 1.75, rtol=1e-15)
    # bicubic (a = -0.5) 2 -> 4: output 0 has centre 0.25, taps 0 and 1 (window clipped to the 2 pixels) at
    # distances 0.25 and 1.25: 1 - 2.5 d^2 + 1.5 d^3 = 0.8671875 and -0.5 (d^3 - 5 d^2 + 8 d - 4) = -0.0703125
    idx, w = resample_coeffs(2, 4, "bicubic")
    assert idx.tolist() == [[0, 1]] * 4 and not idx.flags.writeable and not w.flags.writeable
    np.testing.assert_allclose(w[0], np.array([0.8671875, -0.0703125]) / 0.796875, rtol=1e-15)
    np.testing.assert_allclose(w[3], w[0][::-1], rtol=1e-15)


def test_vmap_and_jit(photos):
    from mll_jax.models.resample import resize_on_device

    x = photos[:, :30, :40]
    batched = jax.jit(lambda a: resize_on_device(a, (17, 23)))(x)
    per_image = jax.vmap(lambda a: resize_on_device(a, (17, 23)))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(per_image), np.asarray(batched), rtol=0, atol=1e-4)
    same = resize_on_device(x, (30, 40))  # no resize: the float32 images
    assert np.array_equal(np.asarray(same), x.astype(np.float32))


def test_resize_errors():
    from mll_jax.models.resample import ResampleError, resample_coeffs, resize_on_device, resize_on_device_2pass

    x = np.zeros((1, 8, 8, 3), np.uint8)
    with pytest.raises(ResampleError, match="unknown filter 'nearest'.*host"):
        resize_on_device(x, (4, 4), "nearest")
    with pytest.raises(ResampleError, match="size must be positive"):
        resize_on_device_2pass(x, (0, 4))
    with pytest.raises(ResampleError, match=r"size must be \(H, W\)"):
        resize_on_device(x, 4)
    with pytest.raises(ResampleError, match="expected .* images, got shape"):
        resize_on_device(np.zeros((8, 8), np.uint8), (4, 4))
    with pytest.raises(ResampleError, match="in_size must be a positive int"):
        resample_coeffs(0, 4)
    assert issubclass(ResampleError, ValueError)


def test_device_preprocess_matches_center_crop_resize(photos):
    from mll_jax.models import DevicePreprocess, center_crop_resize

    dp = DevicePreprocess(224, "bicubic", 224 / 256)
    crop = dp.host(photos)
    assert crop.dtype == np.uint8 and crop.shape == (3, 178, 178, 3)  # round(0.875 * 203)
    got = np.asarray(dp.device(np.ascontiguousarray(crop)))
    np.testing.assert_allclose(got, center_crop_resize(photos, 224, 224 / 256, "bicubic"), rtol=0, atol=1.5e-4)
    with pytest.raises(ValueError, match="no device resize for 'nearest'"):
        DevicePreprocess(32, "nearest")
    with pytest.raises(ValueError, match="crop_fraction must be in"):
        DevicePreprocess(32, "bilinear", 1.5)
    with pytest.raises(ValueError, match="size must be a positive int"):
        DevicePreprocess((32, 0))
    with pytest.raises(ValueError, match="square size"):
        DevicePreprocess((32, 16), crop_fraction=0.5)


def test_device_preprocess_refuses_non_rgb_batches():
    # A grayscale (n, h, w) batch used to be resized along the batch axis (shape (4, 4, 9) out of (2, 9, 9)).
    from mll_jax.models import DevicePreprocess
    from mll_jax.models.resample import ResampleError

    dp = DevicePreprocess(4)
    gray = np.zeros((2, 9, 9), np.uint8)
    with pytest.raises(ResampleError, match=r"RGB batch \(n, h, w, 3\).*\(2, 9, 9\)"):
        dp.host(gray)
    with pytest.raises(ResampleError, match="RGB batch"):
        dp.device(gray)
    assert dp.device(dp.host(np.zeros((2, 9, 9, 3), np.uint8))).shape == (2, 4, 4, 3)


@pytest.mark.parametrize("shapes", CASES)
def test_linear_is_opencv_bilinear(photos, shapes):
    """``linear`` (not a PIL filter): two taps whatever the scale, on the device and on the host."""
    (h, w), size = shapes
    x = np.ascontiguousarray(np.resize(photos, (2, h, w, 3)))
    ref = half_pixel_bilinear(x, size)
    np.testing.assert_allclose(resize_numpy(x, size, "linear"), ref, atol=1e-3, rtol=0)
    np.testing.assert_allclose(resize_images(x, size, "linear"), ref, atol=1e-3, rtol=0)
    np.testing.assert_allclose(np.asarray(resize_on_device_2pass(x, size, "linear")), ref, atol=1e-3, rtol=0)
    if h > 2 * size[0]:  # shrinking: unlike PIL's bilinear, not an average over the whole footprint
        assert np.abs(resize_images(x, size, "bilinear") - ref).max() > 1.0
