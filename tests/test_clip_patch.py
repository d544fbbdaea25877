"""CLIP patch on a tiny random-weight CLIP saved to disk with a hand-built BPE tokenizer (no network)."""

import json
import math

import jax
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

from mll_jax.clip_patch import ClipZeroShot, default_cache_dir  # noqa: E402
from mll_jax.reuse import Reuser  # noqa: E402
from mll_jax.selection import Selection  # noqa: E402

# CLIP's published preprocessing constants (OpenAI), written out independently of transformers.
MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])
LOGIT_SCALE = 20.0
SIZE = 32


def _write_tokenizer(path):
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges = ["p h", "ph o", "t o</w>", "c a"]
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPProcessor, CLIPTokenizer, FlaxCLIPModel

    path = tmp_path_factory.mktemp("tiny_clip")
    vocab = _write_tokenizer(path)
    eos, bos = vocab["<|endoftext|>"], vocab["<|startoftext|>"]
    tok = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), pad_token="<|endoftext|>")
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=24, eos_token_id=eos, bos_token_id=bos,
                         pad_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=SIZE, patch_size=8),
        projection_dim=16,
    )
    model = FlaxCLIPModel(cfg, _do_init=False)
    # Random weights without running Flax init (slow on CPU): shapes from eval_shape, values from numpy.
    shapes = jax.eval_shape(lambda key: model.init_weights(key, model.input_shape), jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
    params["logit_scale"] = np.asarray(math.log(LOGIT_SCALE), np.float32)
    ip = CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    model.save_pretrained(str(path), params=params)
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    return ClipZeroShot.from_pretrained(str(tiny_clip_dir), batch_size=8)


def _images(n, seed=0, gray=False):
    rng = np.random.default_rng(seed)
    shape = (n, SIZE, SIZE) if gray else (n, SIZE, SIZE, 3)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


CLASSES = ["cat", "photo dog", "axolotl"]


def _hand_logits(tiny_clip_dir, images, classes):
    """Independent computation: hand preprocessing, the model's own (HF forward) embeddings, numpy cosine."""
    from transformers import CLIPTokenizer, FlaxCLIPModel

    model, params = FlaxCLIPModel.from_pretrained(str(tiny_clip_dir), _do_init=False)
    tok = CLIPTokenizer.from_pretrained(str(tiny_clip_dir))
    pix = ((images.astype(np.float64) / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2).astype(np.float32)
    enc = tok([f"a photo of a {c}" for c in classes], padding=True, return_tensors="np")
    out = jax.jit(lambda p, i, m, x: model(input_ids=i, attention_mask=m, pixel_values=x, params=p))(
        params, enc["input_ids"], enc["attention_mask"], pix
    )
    img = np.asarray(out.vision_model_output.pooler_output, np.float64) @ np.asarray(
        params["visual_projection"]["kernel"], np.float64)
    txt = np.asarray(out.text_model_output.pooler_output, np.float64) @ np.asarray(
        params["text_projection"]["kernel"], np.float64)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return LOGIT_SCALE * img @ txt.T, np.asarray(out.logits_per_image)


def test_zero_shot_logits_match_hand_computation(clip, tiny_clip_dir):
    images = _images(6)
    ours = clip.logits(images, CLASSES)
    hand, hf = _hand_logits(tiny_clip_dir, images, CLASSES)
    assert ours.shape == (6, 3)
    assert clip.logit_scale == pytest.approx(LOGIT_SCALE, rel=1e-6)
    np.testing.assert_allclose(ours, hand, atol=2e-4)
    np.testing.assert_allclose(ours, hf, atol=2e-4)
    assert np.ptp(ours) > 0.05  # random weights still separate the prompts: the check is not vacuous
    p = clip.probs(images, CLASSES)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(clip.predict(images, CLASSES), np.argmax(hand, 1))


def test_prompts_preprocessing_and_batching(clip):
    assert clip.prompts(["cat"]) == ["a photo of a cat"]
    gray = _images(5, seed=1, gray=True)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    np.testing.assert_allclose(clip.logits(gray, CLASSES), clip.logits(rgb, CLASSES), atol=1e-6)
    pix = clip.preprocess(rgb[:2])
    np.testing.assert_allclose(pix, ((rgb[:2] / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2), atol=1e-5)
    # 5 images (one batch padded to 8) equal one image at a time
    single = np.concatenate([clip.logits(rgb[i : i + 1], CLASSES) for i in range(5)])
    np.testing.assert_allclose(clip.logits(rgb, CLASSES), single, atol=1e-5)
    # other image sizes are resized by the processor
    assert clip.logits(_images(2)[:, :20, :28], CLASSES).shape == (2, 3)
    with pytest.raises(ValueError, match="uint8"):
        clip.logits(rgb.astype(np.float32), CLASSES)
    with pytest.raises(ValueError, match="images must be"):
        clip.logits(np.zeros((2, 8, 8, 2), np.uint8), CLASSES)


def test_text_embeddings_are_cached(clip, monkeypatch):
    clip.class_embeddings(["owl", "lark"])
    calls = []
    orig = clip.encode_text
    monkeypatch.setattr(clip, "encode_text", lambda texts: calls.append(texts) or orig(texts))
    clip.class_embeddings(["owl", "lark"])
    assert calls == []
    clip.class_embeddings(["owl", "emu"])
    assert calls == [["a photo of a owl", "a photo of a emu"]]


def test_clip_as_reuse_patch(clip):
    class Expert:
        model_id, num_heads = "e", 2

        def logits(self, images):
            return np.tile([[3.0, 0.0]], (len(images), 1)).astype(np.float32)

    sel = Selection(method="hand", model_ids=("e",), loss=np.zeros((1, 3)), experts=((0,), (), ()),
                    columns={"e": np.array([[1.0, 0, 0], [0, 0, 0]], np.float32)}, k=1, beta=None,
                    class_names=tuple(CLASSES), wnids=("n1", None, None))
    images = _images(3, seed=2)
    scores = Reuser(sel, {"e": Expert()}, clip, progress=False).scores(images)
    p_expert = math.exp(3) / (math.exp(3) + 1)
    np.testing.assert_allclose(scores[:, 0], p_expert, rtol=1e-5)
    np.testing.assert_allclose(scores[:, 1:], clip.probs(images, CLASSES)[:, 1:], rtol=1e-5)


def test_missing_checkpoint_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MLL_JAX_HOME", str(tmp_path))
    assert default_cache_dir() == str(tmp_path / "huggingface")
    with pytest.raises(OSError, match="could not load CLIP weights"):
        ClipZeroShot.from_pretrained(str(tmp_path / "nope"), local_files_only=True)
    with pytest.raises(ValueError, match="template"):
        ClipZeroShot(None, None, None, template="no slot")
