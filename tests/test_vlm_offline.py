"""Offline dual encoders: training texts / negatives, a few training steps, hub save + reload as a VLM."""

import numpy as np
import pytest

from mll_lab import fashion_mnist as fdata
from mll_lab.train_vlms import DualEncoderSpec, anchor_texts, class_training_texts


def test_training_texts_and_negatives(wn):
    t = class_training_texts(7, wn)  # gym_shoe.n.01: gym shoe, sneaker, tennis shoe
    assert "sneaker" in t and "a photo of a tennis shoe" in t and t[-1] == wn.synset("gym_shoe.n.01").definition()
    neg = set(anchor_texts([7, 9], wn))
    assert not {"sneaker", "gym shoe", "boot", "shoe", "footwear"} & neg  # synonyms and hypernyms never negatives
    assert {"sandal", "dress", "trouser"} <= neg  # other classes are
    with pytest.raises(ValueError, match="arch"):
        DualEncoderSpec("x", "cnn", (1, 2))
    with pytest.raises(ValueError, match="distinct"):
        DualEncoderSpec("x", "resnet", (1, 1))


class HashEncoder:
    """Deterministic unit vectors per text (seeded by the text), in place of the MiniLM sentence encoder."""

    dim = 384

    def encode(self, texts):
        from mll_jax.utils import texts_hash

        out = np.stack([np.random.default_rng(int(texts_hash([t], length=8), 16)).standard_normal(self.dim)
                        for t in texts]).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)




@pytest.mark.slow
def test_train_save_load_roundtrip(tmp_path, wn):
    from mll_jax.hub import ModelHub
    from mll_jax.vlm.models import VLM
    from mll_lab.train_vlms import TextFeatures, is_current, train_vlm_hub

    data = fdata.load_fashion_mnist()
    splits = fdata.make_splits(data.train_labels)
    spec = DualEncoderSpec("t-vlm", "vit", (5, 7, 9), per_class=16, steps=3, width=4, dim=8, batch_size=16)
    tf = TextFeatures(HashEncoder())  # a stand-in for MiniLM (the real one is exercised by the benchmark)
    hub = ModelHub(tmp_path / "hub")
    (v,) = train_vlm_hub(hub, data, splits, tf, [spec], progress=False)
    assert isinstance(v, VLM) and is_current(hub, spec)
    assert hub.entry("t-vlm")["options"]["module_class"] == "mll_jax.models.gray_hf:GrayHFClassifier"
    assert not is_current(hub, DualEncoderSpec("t-vlm", "vit", (5, 7, 9), per_class=16, steps=4, width=4, dim=8))
    imgs = data.test_images[:5]
    e = v.encode_images(imgs)
    t = v.encode_text(["sandal", "sneaker"])
    assert e.shape == (5, 8) and t.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    # reload in a new hub object: same embeddings and fingerprint, nothing retrained
    (v2,) = train_vlm_hub(ModelHub(tmp_path / "hub"), data, splits, tf, [spec], progress=False)
    np.testing.assert_allclose(v2.encode_images(imgs), e, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v2.encode_text(["sandal", "sneaker"]), t, rtol=1e-5, atol=1e-6)
    assert v2.fingerprint == v.fingerprint
