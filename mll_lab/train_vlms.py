"""An offline hub of small dual encoders (VLMs) trained on Fashion-MNIST, for the VLM benchmark.

Each :class:`~mll_jax.vlm.dual_encoder.DualEncoderSpec` is a CLIP-like dual encoder with its own *specialty* (the Fashion-MNIST classes it
is trained on, how many images per class, tower size):

* image tower: a tiny Hugging Face Flax ResNet / ViT (:class:`mll_jax.models.gray_hf.GrayHFClassifier`, config
  from :func:`mll_lab.train_experts.hf_config`) whose ``num_labels`` outputs are the ``dim``-d embedding;
* text tower: the frozen MiniLM (:class:`mll_jax.text.TextEncoder`) followed by a learned linear projection
  ``384 -> dim``;
* a learned temperature ``logit_scale = exp(s)`` (clipped to [1, 100]).

Training (optax AdamW, warm-up + cosine, random horizontal flips) is contrastive at class level: each step draws
one text per trained class from the class's WordNet texts (every lemma, ``"a photo of a <lemma>"``,
``"<lemma>: <definition>"``, the definition) and minimises the cross-entropy of ``scale * cos(image, text)`` over
the trained classes' texts plus 48 random *negative* texts (:func:`anchor_texts`: lemmas of the clothing /
footwear / bag WordNet subtrees, minus the trained classes' synonyms, hypernyms and hyponyms), plus a
text-geometry regulariser (:data:`GEO_WEIGHT`): on the step's texts the projected cosine similarities must stay
close to MiniLM's, so that unseen wordings land near their synonyms.  (Without negatives and the regulariser, a
footwear model sent ankle-boot images to the text "dress": with three training texts the contrastive objective
says nothing about other words.)  Training images come from the expert pool split only (never the SDAG or test images;
:mod:`mll_lab.fashion_mnist`).  Class names used by the tasks ("footwear", "frock", "jumper", ...) are never
training texts unless they are WordNet lemmas of the class synset, so the tasks test zero-shot wording transfer.

Saved in a :class:`mll_jax.hub.ModelHub` (the image tower as kind ``flax_module`` with the offline experts'
preprocessing; ``text_proj.npy`` and the hub entry's ``vlm`` field hold the text side), so a trained VLM is
loaded in any process with :func:`mll_jax.vlm.dual_encoder.load_dual_encoder` (the library's loader; this module
only trains).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mll_jax.models.gray_hf import GrayHFClassifier
from mll_jax.utils import atomic_save_npy
from mll_jax.vlm.dual_encoder import (MAX_LOG_SCALE, DualEncoderSpec, DualEncoderVLM, TextFeatures, l2_normalize,
                                      load_dual_encoder)
from mll_jax.wordnet import get_wordnet
from mll_lab.fashion_mnist import CLASS_SYNSETS, SUBTREE_ROOTS, FashionMNIST, Splits
from mll_lab.train_experts import FMNIST_MEAN, FMNIST_STD, ExpertSpec, hf_config, preprocess_spec

__all__ = ["DualEncoderSpec", "VLM_SPECS", "GEO_WEIGHT", "anchor_texts", "class_training_texts", "TextFeatures",
           "DualEncoderVLM", "dual_encoder_tower", "vlm_training_set", "train_dual_encoder", "is_current",
           "register_dual_encoder", "load_dual_encoder", "train_vlm_hub"]

#: Weight of the text-geometry regulariser (mean squared difference of cosine Gram matrices before/after the
#: projection, on the step's class texts plus 48 random anchor texts).
GEO_WEIGHT = 1.0


def _s(model_id, arch, classes, **kw):
    return DualEncoderSpec(model_id, arch, tuple(classes), **kw)


#: The offline VLM hub: specialists with more data on few classes, generalists with little data or small towers.
VLM_SPECS: tuple[DualEncoderSpec, ...] = (
    _s("vlm-footwear", "resnet", [5, 7, 9], per_class=600, steps=150, seed=1),
    _s("vlm-tops-vit", "vit", [0, 2, 4, 6], per_class=600, steps=200, seed=2),
    _s("vlm-bottoms-bags", "resnet", [1, 3, 8], per_class=600, steps=150, seed=3),
    _s("vlm-clothing", "resnet", [0, 1, 2, 3, 4, 6], per_class=300, steps=200, width=12, seed=4),
    _s("vlm-all-fewdata", "resnet", list(range(10)), per_class=20, steps=100, seed=5),
    _s("vlm-all-tiny", "vit", list(range(10)), per_class=150, steps=150, width=4, dim=16, seed=6),
    _s("vlm-shoes-bags-vit", "vit", [5, 7, 8, 9], per_class=300, steps=150, seed=7),
)


def anchor_texts(exclude_labels: Sequence[int] = (), wn=None) -> list[str]:
    """Unlabelled vocabulary: the lemmas of every noun synset under the offline SDAG's subtrees (clothing,
    footwear, bag), minus the synsets related to ``exclude_labels`` (each class synset with its hypernyms and
    hyponyms, so that no synonym, parent or kind of a trained class is ever a negative)."""
    if wn is None:
        wn = get_wordnet()
    excluded = set()
    for c in exclude_labels:
        s = wn.synset(CLASS_SYNSETS[c].synset)
        excluded |= {s} | set(s.closure(lambda x: x.hyponyms())) | set(s.closure(lambda x: x.hypernyms()))
    excluded_names = {n.replace("_", " ").lower() for s in excluded for n in s.lemma_names()}
    out = []
    for r in SUBTREE_ROOTS:
        for s in [wn.synset(r)] + list(wn.synset(r).closure(lambda x: x.hyponyms())):
            if s not in excluded:
                names = [n.replace("_", " ") for n in s.lemma_names()]
                out += [n for n in names if n.lower() not in excluded_names]
    return sorted(set(out))


def class_training_texts(label: int, wn=None) -> list[str]:
    """WordNet texts of a Fashion-MNIST class: every lemma, "a photo of a <lemma>", "<lemma>: <definition>", and
    the definition."""
    if wn is None:
        wn = get_wordnet()
    s = wn.synset(CLASS_SYNSETS[label].synset)
    lemmas = list(dict.fromkeys(n.replace("_", " ") for n in s.lemma_names()))
    d = s.definition()
    return [t for lem in lemmas for t in (lem, f"a photo of a {lem}", f"{lem}: {d}")] + [d]


def dual_encoder_tower(spec: DualEncoderSpec):
    """(image tower module, its HF config dict) of a spec: a :class:`GrayHFClassifier` with ``dim`` outputs."""
    cfg = hf_config(ExpertSpec(spec.model_id, spec.arch, (("a", (0,)), ("b", (1,))), width=spec.width))
    cfg.num_labels = spec.dim  # the "classification" head is the embedding projection
    cfg_dict = json.loads(cfg.to_json_string())
    return GrayHFClassifier(spec.arch, cfg_dict), cfg_dict


def vlm_training_set(spec: DualEncoderSpec, data: FashionMNIST, splits: Splits):
    """Indices (into the training set, expert pool only) and class positions of one dual encoder's images."""
    rng = np.random.default_rng(20_000 + spec.seed)
    pool_labels = data.train_labels[splits.pool]
    idx = []
    for c in spec.classes:
        cand = splits.pool[pool_labels == c]
        idx.append(rng.choice(cand, min(spec.per_class, len(cand)), replace=False))
    idx = np.sort(np.concatenate(idx))
    to_pos = {c: i for i, c in enumerate(spec.classes)}
    return idx, np.array([to_pos[int(c)] for c in data.train_labels[idx]], np.int32)


def train_dual_encoder(spec: DualEncoderSpec, data: FashionMNIST, splits: Splits, text_features: TextFeatures, *,
                       steps: int | None = None, wn=None) -> dict:
    """Train one dual encoder; returns ``{"module", "variables", "config", "text_proj", "scale", "losses",
    "train_seconds"}``."""
    module, cfg = dual_encoder_tower(spec)
    steps = spec.steps if steps is None else int(steps)
    x0 = jnp.zeros((1, 28, 28, 1), jnp.float32)
    variables = dict(jax.jit(module.init)(jax.random.PRNGKey(spec.seed), x0))
    texts = [class_training_texts(c, wn) for c in spec.classes]
    kmax = max(len(t) for t in texts)
    temb = np.zeros((len(texts), kmax, text_features.encoder.dim), np.float32)
    for i, t in enumerate(texts):
        temb[i, :len(t)] = text_features(t)
    counts = np.array([len(t) for t in texts])
    anchors = text_features(anchor_texts(spec.classes, wn))
    rng = np.random.default_rng(spec.seed)
    w0 = (rng.standard_normal((temb.shape[-1], spec.dim)) / math.sqrt(temb.shape[-1])).astype(np.float32)
    params = {"image": variables["params"], "text_proj": jnp.asarray(w0), "log_scale": jnp.asarray(math.log(10.0))}
    batch_stats = variables.get("batch_stats")
    warmup = max(1, min(20, steps // 10))
    sched = optax.warmup_cosine_decay_schedule(0.0, spec.lr, warmup, max(steps, warmup + 1), spec.lr * 0.05)
    tx = optax.adamw(sched, weight_decay=1e-4)
    opt_state = tx.init(params)

    def loss_fn(p, bs, x, y, t, a):
        v = {"params": p["image"]}
        if bs is not None:
            z, upd = module.apply({**v, "batch_stats": bs}, x, deterministic=False, mutable=["batch_stats"])
            bs = upd["batch_stats"]
        else:
            z = module.apply(v, x, deterministic=False)
        scale = jnp.exp(jnp.clip(p["log_scale"], 0.0, MAX_LOG_SCALE))
        # class texts first, then the anchor texts as extra negatives
        logits = scale * l2_normalize(z) @ l2_normalize(jnp.concatenate([t, a]) @ p["text_proj"]).T
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        # keep MiniLM's geometry among texts (trained and unseen wordings), so new names land near their synonyms
        at = jnp.concatenate([a, t])
        pa = l2_normalize(at @ p["text_proj"])
        geo = jnp.mean((pa @ pa.T - at @ at.T) ** 2)
        return ce + GEO_WEIGHT * geo, bs

    @jax.jit
    def step(p, bs, o, x, y, t, a):
        (loss, bs), g = jax.value_and_grad(loss_fn, has_aux=True)(p, bs, x, y, t, a)
        upd, o = tx.update(g, o, p)
        return optax.apply_updates(p, upd), bs, o, loss

    idx, y_all = vlm_training_set(spec, data, splits)
    x_all = ((data.train_images[idx].astype(np.float32) / 255.0 - FMNIST_MEAN) / FMNIST_STD)[..., None]
    n = len(idx)
    bsz = min(spec.batch_size, n)
    losses = []
    t0 = time.perf_counter()
    for i in range(steps):
        b = rng.choice(n, bsz, replace=False)
        x = x_all[b]
        flip = rng.random(bsz) < 0.5
        x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        pick = (rng.random(len(texts)) * counts).astype(int)
        t = temb[np.arange(len(texts)), pick]
        params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state, jnp.asarray(x),
                                                    jnp.asarray(y_all[b]), jnp.asarray(t),
                                                    jnp.asarray(anchors[rng.choice(len(anchors), 48, replace=False)]))
        if i % 25 == 0 or i == steps - 1:
            lv = float(loss)
            if not np.isfinite(lv):
                raise FloatingPointError(f"{spec.model_id}: training diverged at step {i} (loss {lv})")
            losses.append((i, lv))
    out_vars = {"params": params["image"]}
    if batch_stats is not None:
        out_vars["batch_stats"] = batch_stats
    return {"module": module, "config": cfg, "variables": jax.device_get(out_vars),
            "text_proj": np.asarray(params["text_proj"], np.float32),
            "scale": float(np.exp(np.clip(np.asarray(params["log_scale"]), 0.0, MAX_LOG_SCALE))),
            "losses": losses, "train_seconds": time.perf_counter() - t0}


def is_current(hub, spec: DualEncoderSpec) -> bool:
    """True if ``spec`` is registered in ``hub`` with the same spec, its projection and its variables."""
    if spec.model_id not in hub:
        return False
    e = hub.entry(spec.model_id)
    return ((e.get("vlm") or {}).get("spec") == spec.to_json()
            and os.path.isfile(hub.model_dir(spec.model_id, "text_proj.npy"))
            and os.path.isdir(hub.model_dir(spec.model_id, "variables")))


def register_dual_encoder(hub, spec: DualEncoderSpec, res: dict) -> None:
    """Save a trained dual encoder (``res`` of :func:`train_dual_encoder`) into ``hub`` and register it."""
    atomic_save_npy(hub.model_dir(spec.model_id, "text_proj.npy"), res["text_proj"])
    hub.add_flax_module(spec.model_id, res["module"], res["variables"], preprocess_spec(), num_heads=spec.dim,
                        module_kwargs={"arch": spec.arch, "config": res["config"]}, batch_size=256,
                        source=f"mll_lab.train_vlms:{spec.arch}:fashion-mnist", overwrite=True)
    hub.update(spec.model_id, group="offline-vlm",
               vlm={"spec": spec.to_json(), "logit_scale": res["scale"], "text_proj": "text_proj.npy",
                    "text_tower": "frozen all-MiniLM-L6-v2 + linear projection",
                    "train_seconds": round(res["train_seconds"], 2),
                    "final_loss": res["losses"][-1][1] if res["losses"] else None})


def train_vlm_hub(hub, data: FashionMNIST, splits: Splits, text_features: TextFeatures,
                  specs: Sequence[DualEncoderSpec] = VLM_SPECS, *, rebuild: bool = False,
                  progress: bool = True) -> list[DualEncoderVLM]:
    """Train (or reuse, when current in ``hub``) every spec; returns the loaded VLMs in spec order."""
    out = []
    for spec in specs:
        if rebuild or not is_current(hub, spec):
            res = train_dual_encoder(spec, data, splits, text_features)
            register_dual_encoder(hub, spec, res)
            if progress:
                print(f"trained {spec.model_id}: {res['train_seconds']:.1f}s, loss {res['losses'][-1][1]:.3f}, "
                      f"scale {res['scale']:.1f}", flush=True)
        out.append(load_dual_encoder(hub, spec.model_id, text_features))
    return out
