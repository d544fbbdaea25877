"""Acceptance test of issue 3: an SDAG over a real WordNet subtree, two real experts labelled on real images,
Eq. 1-2 checked against a hand computation from the experts' own logits."""

import importlib.util
import os

import numpy as np
import pytest
from PIL import Image

from mll_jax.labelling import LabelStore, label_models
from mll_jax.sdag import SDAG

DOG, WORKING_DOG, BULL_MASTIFF, DALMATIAN = "n02084071", "n02103406", "n02108422", "n02110341"


def _foolbox_data():
    spec = importlib.util.find_spec("foolbox")  # locate only: importing foolbox needs eagerpy
    if spec is None or spec.origin is None:
        pytest.skip("PyPI package foolbox (sample images) is not installed")
    d = os.path.join(os.path.dirname(spec.origin), "data")
    if not os.path.isfile(os.path.join(d, "imagenet_00_243.jpg")):
        pytest.skip(f"foolbox sample images not found in {d}")
    return d


def _load(d, name):
    return np.asarray(Image.open(os.path.join(d, name)).convert("RGB"), dtype=np.uint8)


def _experts(tmp_path):
    try:
        from mll_jax.hub import ModelHub
    except ImportError as e:
        pytest.skip(f"mll_jax.hub is not available yet ({e})")
    if not hasattr(ModelHub, "with_offline_experts"):
        pytest.skip("mll_jax.hub.ModelHub has no with_offline_experts() yet")
    hub = ModelHub.with_offline_experts(tmp_path / "hub", variants=("lite0",))
    want = ["efficientnet-lite0", "cifar10-cnn"]
    missing = [m for m in want if m not in hub.ids()]
    if missing:
        pytest.skip(f"offline expert weights not installed for {missing} (see scripts/setup.sh)")
    return [hub.load(m) for m in want]


@pytest.mark.slow
def test_label_two_real_experts_on_dog_subtree(tmp_path, wn):
    data = _foolbox_data()
    experts = _experts(tmp_path)
    g = SDAG.from_roots([DOG], wn=wn)
    # the hierarchy the hand computation below relies on
    assert g.parents(BULL_MASTIFF) == [WORKING_DOG] and g.parents(WORKING_DOG) == [DOG]
    assert g.parents(DALMATIAN) == [DOG] and len(g) == 190
    # node data: ImageNet val images of classes 243 (bull mastiff) and 251 (dalmatian); the dog node gets the two
    # CIFAR-10 test images of class 5 (dog)
    bm = _load(data, "imagenet_00_243.jpg")[None]
    dal = _load(data, "imagenet_16_251.jpg")[None]
    dogs = np.stack([_load(data, "cifar10_12_5.png"), _load(data, "cifar10_16_5.png")])
    g.set_images(BULL_MASTIFF, bm)
    g.set_images(DALMATIAN, dal)
    g.set_images(DOG, dogs)
    store = LabelStore(tmp_path / "labels")
    delta = 0.5
    summary = label_models(g, experts, store, delta=delta, progress=False)
    assert summary == {e.model_id: {"labelled": 4, "computed": 3, "cached": 0} for e in experts}
    assert sorted(store.model_ids()) == sorted(e.model_id for e in experts)
    for e in experts:
        # Eq. 1 by hand from the expert's logits (same batches as label_models: one per node)
        r_bm = np.asarray(e.logits(bm), np.float64).mean(0)
        r_dal = np.asarray(e.logits(dal), np.float64).mean(0)
        r_dog = np.asarray(e.logits(dogs), np.float64).mean(0)
        # Eq. 2: bull mastiff is the only labelled child of working dog, which has no own data (children mean =
        # its single child); dalmatian's hyponym has no data (own only); dog has own data and two labelled children
        s_working = r_bm
        s_dog = delta * r_dog + (1 - delta) * (s_working + r_dal) / 2
        want = np.stack([s_dog, s_working, r_bm, r_dal])
        assert set(store.nodes(e.model_id)) == {DOG, WORKING_DOG, BULL_MASTIFF, DALMATIAN}
        got = store.read(e.model_id, [DOG, WORKING_DOG, BULL_MASTIFF, DALMATIAN])
        assert got.shape == (4, e.num_heads) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    lite0, cifar = experts
    # sanity of the real experts on these real images
    assert int(np.argmax(store.read(lite0.model_id, [BULL_MASTIFF])[0])) == 243
    assert int(np.argmax(store.read(lite0.model_id, [DALMATIAN])[0])) == 251
    assert int(np.argmax(cifar.logits(dogs).mean(0))) == 5  # CIFAR-10 class 5 = dog
