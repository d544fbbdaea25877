"""The fast EfficientNet-Lite forward (batch norm folded, depthwise as shifted taps) and packed labelling.

References: the original Flax formulation (``fast=False``: grouped depthwise convolution, unfolded batch
norm) on the foolbox ImageNet sample photos; ``lax.conv_general_dilated`` with ``feature_group_count`` for the
depthwise taps; ``mll_jax.labelling.node_mean_logits`` (node by node, float64 sums) for the packer.
No timing here: speed is measured by ``benchmarks/forward_bench.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from test_models import foolbox_samples  # noqa: E402


@pytest.mark.parametrize("k,stride,h,w", [(3, 1, 7, 6), (3, 2, 8, 8), (5, 2, 9, 7), (5, 1, 5, 5), (3, 2, 1, 2)])
def test_depthwise_taps_equal_grouped_conv(k, stride, h, w):
    from jax import lax

    from mll_jax.models.efficientnet_lite import depthwise_conv_taps

    rng = np.random.default_rng(k * 100 + stride * 10 + h)
    c = 5
    x = rng.normal(size=(2, h, w, c)).astype(np.float32)
    kern = rng.normal(size=(k, k, c)).astype(np.float32)
    ref = lax.conv_general_dilated(x, kern[:, :, None, :], (stride, stride), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c,
                                   precision=lax.Precision.HIGHEST)
    got = jax.jit(depthwise_conv_taps, static_argnums=2)(x, kern, stride)
    assert got.shape == ref.shape == (2, -(-h // stride), -(-w // stride), c)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_fold_batch_norm_is_exact_on_one_layer():
    """conv + BN(scale, bias, mean, var, eps 1e-3) == conv with folded kernel + bias, computed by hand."""
    from mll_jax.models.efficientnet_lite import fold_conv_bn

    rng = np.random.default_rng(0)
    kern = rng.normal(size=(1, 1, 4, 3))
    bn_p = {"scale": rng.normal(size=3), "bias": rng.normal(size=3)}
    bn_s = {"mean": rng.normal(size=3), "var": rng.uniform(0.1, 2, size=3)}
    x = rng.normal(size=(6, 4))
    y = x @ kern[0, 0]
    ref = (y - bn_s["mean"]) / np.sqrt(bn_s["var"] + 1e-3) * bn_p["scale"] + bn_p["bias"]
    w, b = fold_conv_bn(kern, bn_p, bn_s)
    np.testing.assert_allclose(x @ w[0, 0].astype(np.float64) + b, ref, rtol=1e-6, atol=1e-6)


def test_fold_batch_norm_rejects_wrong_variables():
    from mll_jax.models.efficientnet_lite import fold_batch_norm

    with pytest.raises(ValueError, match="efficientnet-lite0.*lack"):
        fold_batch_norm({"params": {}, "batch_stats": {}}, "lite0")
    with pytest.raises(ValueError, match="efficientnet-lite1.*lack 'batch_stats'"):
        fold_batch_norm({"params": {}}, "lite1")
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant"):
        fold_batch_norm({"params": {}, "batch_stats": {}}, "lite9")


def _experts(variant, batch_size=10):
    from mll_jax.models.efficientnet_lite import load_efficientnet_lite

    try:
        return (load_efficientnet_lite(variant, batch_size=batch_size, fast=True),
                load_efficientnet_lite(variant, batch_size=batch_size, fast=False))
    except FileNotFoundError:
        pytest.skip(f"efficientnet-{variant} weights not installed")


def test_fast_lite0_equals_original_on_foolbox_images():
    fast, orig = _experts("lite0")
    assert fast.num_heads == orig.num_heads == 1000 and fast.head_wnids == orig.head_wnids
    imgs, labels = foolbox_samples("imagenet")
    a, b = fast.logits(imgs), orig.logits(imgs)
    assert a.dtype == np.float32 and a.shape == (20, 1000)
    # float32 round-off of a 60-layer network: measured max |diff| 1.4e-5 on logits up to 13.8
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max() * 10)
    assert (a.argmax(1) == b.argmax(1)).all()
    correct = int((a.argmax(1) == labels).sum())
    assert correct >= 17  # 17/20, as the original formulation


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_fast_lite12_equal_original(variant):
    fast, orig = _experts(variant, batch_size=4)
    imgs, labels = foolbox_samples("imagenet")
    imgs = imgs[:4]
    a, b = fast.logits(imgs), orig.logits(imgs)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * np.abs(b).max())
    assert (a.argmax(1) == b.argmax(1)).all()


# ------------------------------------------------------------------------------------------ packing


@pytest.fixture(scope="module")
def cifar_expert():
    from mll_jax.models.cifar_cnn import load_cifar10_cnn

    try:
        return load_cifar10_cnn(batch_size=8)
    except FileNotFoundError:
        pytest.skip("cifar-10-model not installed")


def _nodes(seed=0):
    imgs, _ = foolbox_samples("cifar10")
    photos = np.stack(imgs)
    rng = np.random.default_rng(seed)
    nodes = []
    for i, n in enumerate([3, 1, 17, 8, 5, 9, 2, 16, 1]):
        x = photos[rng.integers(0, 20, n)]
        nodes.append((f"n{i}", x[:, ::-1].copy() if i % 2 else x))
    # a grayscale node of another size (resized by the expert), and one given lazily as a callable
    nodes.append(("gray", np.ascontiguousarray(np.repeat(np.repeat(photos[:6, ..., 1], 2, 1), 2, 2))))
    lazy = photos[7:11]
    nodes.append(("lazy", lambda: lazy))
    return nodes


def test_packed_means_equal_node_by_node(cifar_expert):
    from mll_jax.labelling import node_mean_logits
    from mll_jax.packing import iter_node_means

    nodes = _nodes()
    got = list(iter_node_means(cifar_expert, nodes, prefetch=3))
    assert [w for w, _ in got] == [w for w, _ in nodes]  # in item order
    for (w, mean), (_, imgs) in zip(got, nodes):
        imgs = imgs() if callable(imgs) else imgs
        ref = node_mean_logits(cifar_expert, imgs, node=w)
        # hand-computed Eq. 1 as a second reference: the mean of the per-image logits
        by_hand = cifar_expert.logits(imgs).astype(np.float64).mean(0)
        assert mean.dtype == np.float32 and mean.shape == (10,)
        np.testing.assert_allclose(mean, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
        np.testing.assert_allclose(mean, by_hand, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


def test_packed_generic_expert_path(cifar_expert):
    """An expert with only logits(): same-shape images of consecutive nodes share calls of batch_size."""
    from mll_jax.packing import packed_node_means

    calls = []

    class Plain:
        model_id, num_heads = "plain", 10

        def logits(self, x):
            calls.append(x.shape[0])
            return cifar_expert.logits(x)

    nodes = _nodes(1)
    got = packed_node_means(Plain(), nodes, logits_batch_size=7)
    ref = packed_node_means(cifar_expert, nodes)
    assert set(got) == set(ref)
    for w in ref:
        np.testing.assert_allclose(got[w], ref[w], rtol=1e-6, atol=1e-5)
    n_same = sum((x() if callable(x) else x).shape[0] for w, x in nodes if w != "gray")
    assert calls.count(7) >= n_same // 7  # full batches across node boundaries


def test_packing_errors(cifar_expert):
    from mll_jax.labelling import LabellingError, NonFiniteLogitsError
    from mll_jax.packing import PackingError, packed_node_means

    ok = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(PackingError, match="node 'e' has no images"):
        packed_node_means(cifar_expert, [("a", ok), ("e", np.zeros((0, 32, 32, 3), np.uint8))])
    with pytest.raises(PackingError, match="'a' appears twice"):
        packed_node_means(cifar_expert, [("a", ok), ("a", ok)])
    with pytest.raises(PackingError, match="must be >= 1"):
        packed_node_means(cifar_expert, [("a", ok)], workers=0)
    with pytest.raises(ValueError, match="node 'f'.*uint8"):
        packed_node_means(cifar_expert, [("f", np.zeros((2, 32, 32, 3), np.float32))])

    class Bad:
        model_id, num_heads = "bad", 3

        def __init__(self, fill, cols=3):
            self.fill, self.cols = fill, cols

        def logits(self, x):
            return np.full((x.shape[0], self.cols), self.fill, np.float32)

    with pytest.raises(NonFiniteLogitsError, match="'bad'.*node 'b'"):
        packed_node_means(Bad(np.nan), [("b", ok)])
    with pytest.raises(LabellingError, match="'bad' returned logits of shape"):
        packed_node_means(Bad(0.0, cols=4), [("b", ok)])
    out = packed_node_means(Bad(2.5), [("b", ok), ("c", ok[:1])], logits_batch_size=2)
    assert out["b"].tolist() == [2.5] * 3 and out["c"].tolist() == [2.5] * 3


def test_fast_forward_micro_batching_does_not_change_the_function():
    """early_blocks / micro_batch only change the schedule: equal outputs for any setting and batch size."""
    import functools

    from mll_jax.models.efficientnet_lite import block_specs, fast_forward, fold_batch_norm, load_variables

    try:
        folded = fold_batch_norm(load_variables("lite0"), "lite0")
    except FileNotFoundError:
        pytest.skip("efficientnet-lite0 weights not installed")
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32))
    specs = block_specs(1.0, 1.0)
    ref = jax.jit(functools.partial(fast_forward, specs=specs, early_blocks=0, micro_batch=1))(folded, x)
    for early, micro in [(5, 2), (5, 3)]:  # micro 3 does not divide 4: whole batch
        got = jax.jit(functools.partial(fast_forward, specs=specs, early_blocks=early, micro_batch=micro))(folded, x)
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=0, atol=2e-5 * float(jnp.abs(ref).max()))
    with pytest.raises(ValueError, match="folded blocks"):
        fast_forward(folded, x, specs=specs[:3])


# ------------------------------------------------------------------------------ device resize (DevicePreprocess)


def _forward_host_path(expert, imgs):
    """The old path: PIL crop + resize on the host (``expert.preprocess``), then the network (zero-padded batch)."""
    out = []
    for s in range(0, imgs.shape[0], expert.batch_size):
        x = np.asarray(expert.preprocess(imgs[s:s + expert.batch_size]))
        k = x.shape[0]
        x = np.concatenate([x, np.zeros((expert.batch_size - k,) + x.shape[1:], x.dtype)])
        out.append(np.asarray(expert.forward(expert.params, x))[:k])
    return np.concatenate(out)


def test_lite0_device_resize_equals_pil_path():
    """logits() crops on the host and resizes on the device; same logits as the PIL path to float32 round-off,
    on both foolbox image sizes (512 px: crop 448 -> 224, downsampling; 683x1024: crop 598 -> 224)."""
    from mll_jax.models.efficientnet_lite import load_efficientnet_lite

    try:
        ex = load_efficientnet_lite("lite0", batch_size=8)
    except FileNotFoundError:
        pytest.skip("efficientnet-lite0 weights not installed")
    assert ex.device_preprocess is not None
    imgs, labels = foolbox_samples("imagenet")
    for shape in sorted({im.shape for im in imgs}):
        x = np.stack([im for im in imgs if im.shape == shape])
        # and an upsampling case: the SDAG's 224 px images, crop 196 -> 224
        for xs in (x, x[:, :224, :224]):
            dev, host = ex.logits(xs), _forward_host_path(ex, xs)
            # measured max |diff| 1.7e-5 on logits up to 13.6 (the forward's own round-off is 1.4e-5)
            np.testing.assert_allclose(dev, host, rtol=0, atol=1e-5 * np.abs(host).max())
            assert (dev.argmax(1) == host.argmax(1)).all()


def test_packer_uses_the_device_resize(cifar_expert, monkeypatch):
    """With a device_preprocess the packer never calls the host resize; its means equal the host-path packer's
    (same packing, PIL resize on the host) to float32 round-off."""
    import copy

    from mll_jax.packing import packed_node_means

    nodes = _nodes(2)
    host_expert = copy.copy(cifar_expert)
    host_expert.device_preprocess = None
    ref = packed_node_means(host_expert, nodes)

    def no_host_resize(images):
        raise AssertionError("the packer resized on the host")

    monkeypatch.setattr(cifar_expert, "preprocess", no_host_resize)
    got = packed_node_means(cifar_expert, nodes)
    assert list(got) == list(ref)
    for w in ref:
        np.testing.assert_allclose(got[w], ref[w], rtol=0, atol=1e-5 * np.abs(ref[w]).max())
