"""An offline hub of small dual encoders (VLMs) trained on Fashion-MNIST, for the VLM benchmark.

Each :class:`DualEncoderSpec` is a CLIP-like dual encoder with its own *specialty* (the Fashion-MNIST classes it
is trained on, how many images per class, tower size):

* image tower: a tiny Hugging Face Flax ResNet / ViT (:class:`mll_jax.offline.train.GrayHFClassifier`, config
  from :func:`mll_jax.offline.train.hf_config`) whose ``num_labels`` outputs are the ``dim``-d embedding;
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
:mod:`mll_jax.offline.data`).  Class names used by the tasks ("footwear", "frock", "jumper", ...) are never
training texts unless they are WordNet lemmas of the class synset, so the tasks test zero-shot wording transfer.

Saved in a :class:`mll_jax.hub.ModelHub` (the image tower as kind ``flax_module`` with the offline experts'
preprocessing; ``text_proj.npy`` and the hub entry's ``vlm`` field hold the text side), so a trained VLM is
loaded in any process with :func:`load_dual_encoder`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mll_jax.images import as_image_batch
from mll_jax.offline.data import CLASS_SYNSETS, FMNIST_CLASSES, FashionMNIST, Splits
from mll_jax.utils import array_hash, atomic_save_npy, texts_hash

__all__ = ["DualEncoderSpec", "VLM_SPECS", "class_training_texts", "TextFeatures", "DualEncoderVLM",
           "train_dual_encoder", "is_current", "load_dual_encoder", "train_vlm_hub"]

MAX_LOG_SCALE = math.log(100.0)
#: Weight of the text-geometry regulariser (mean squared difference of cosine Gram matrices before/after the
#: projection, on the step's class texts plus 48 random anchor texts).
GEO_WEIGHT = 1.0


@dataclass(frozen=True)
class DualEncoderSpec:
    model_id: str
    arch: str  # "resnet" | "vit"
    classes: tuple[int, ...]  # Fashion-MNIST labels it is trained on
    per_class: int = 200
    steps: int = 150
    width: int = 8
    dim: int = 32
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self):
        if self.arch not in ("resnet", "vit"):
            raise ValueError(f"{self.model_id}: arch must be 'resnet' or 'vit', got {self.arch!r}")
        if len(set(self.classes)) < 2 or any(not 0 <= c < len(FMNIST_CLASSES) for c in self.classes):
            raise ValueError(f"{self.model_id}: needs >= 2 distinct Fashion-MNIST labels, got {self.classes}")

    def to_json(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d


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
    from mll_jax.offline.data import SUBTREE_ROOTS

    if wn is None:
        from mll_jax.wordnet import get_wordnet

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
        from mll_jax.wordnet import get_wordnet

        wn = get_wordnet()
    s = wn.synset(CLASS_SYNSETS[label].synset)
    lemmas = list(dict.fromkeys(n.replace("_", " ") for n in s.lemma_names()))
    d = s.definition()
    return [t for lem in lemmas for t in (lem, f"a photo of a {lem}", f"{lem}: {d}")] + [d]


class TextFeatures:
    """Frozen MiniLM sentence embeddings with an in-memory cache, shared by all offline dual encoders."""

    def __init__(self, encoder=None):
        if encoder is None:
            from mll_jax.text import TextEncoder

            encoder = TextEncoder.load()
        self.encoder = encoder
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            for t, e in zip(todo, self.encoder.encode(todo)):
                self._cache[t] = e
        return np.stack([self._cache[t] for t in texts]).astype(np.float32)


def _tower(spec: DualEncoderSpec):
    from mll_jax.offline.train import ExpertSpec, GrayHFClassifier, hf_config

    cfg = hf_config(ExpertSpec(spec.model_id, spec.arch, (("a", (0,)), ("b", (1,))), width=spec.width))
    cfg.num_labels = spec.dim  # the "classification" head is the embedding projection
    cfg_dict = json.loads(cfg.to_json_string())
    return GrayHFClassifier(spec.arch, cfg_dict), cfg_dict


def _l2n(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass
class DualEncoderVLM:
    """A trained offline dual encoder as a :class:`mll_jax.vlm.models.VLM`."""

    model_id: str
    image_expert: object  # FlaxModuleExpert: uint8 images -> (N, dim) unnormalised embeddings
    text_proj: np.ndarray  # (384, dim)
    scale: float
    text_features: TextFeatures
    spec: DualEncoderSpec
    _fingerprint: str = ""

    @property
    def fingerprint(self) -> str:
        if not self._fingerprint:
            self._fingerprint = texts_hash([json.dumps(self.spec.to_json(), sort_keys=True), array_hash(self.text_proj),
                                            repr(self.scale)], length=20)
        return self._fingerprint

    @property
    def logit_scale(self) -> float:
        return float(self.scale)

    def prompt(self, class_name: str) -> str:
        return class_name

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        z = np.asarray(self.image_expert.logits(as_image_batch(images)), np.float32)
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        z = self.text_features(list(texts)) @ self.text_proj
        return (z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _training_set(spec: DualEncoderSpec, data: FashionMNIST, splits: Splits):
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
    import optax

    from mll_jax.offline.train import FMNIST_MEAN, FMNIST_STD

    module, cfg = _tower(spec)
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
        logits = scale * _l2n(z) @ _l2n(jnp.concatenate([t, a]) @ p["text_proj"]).T
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        # keep MiniLM's geometry among texts (trained and unseen wordings), so new names land near their synonyms
        at = jnp.concatenate([a, t])
        pa = _l2n(at @ p["text_proj"])
        geo = jnp.mean((pa @ pa.T - at @ at.T) ** 2)
        return ce + GEO_WEIGHT * geo, bs

    @jax.jit
    def step(p, bs, o, x, y, t, a):
        (loss, bs), g = jax.value_and_grad(loss_fn, has_aux=True)(p, bs, x, y, t, a)
        upd, o = tx.update(g, o, p)
        return optax.apply_updates(p, upd), bs, o, loss

    idx, y_all = _training_set(spec, data, splits)
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
    import os

    if spec.model_id not in hub:
        return False
    e = hub.entry(spec.model_id)
    return ((e.get("vlm") or {}).get("spec") == spec.to_json()
            and os.path.isfile(hub.model_dir(spec.model_id, "text_proj.npy"))
            and os.path.isdir(hub.model_dir(spec.model_id, "variables")))


def _register(hub, spec: DualEncoderSpec, res: dict) -> None:
    from mll_jax.offline.train import preprocess_spec

    atomic_save_npy(hub.model_dir(spec.model_id, "text_proj.npy"), res["text_proj"])
    hub.add_flax_module(spec.model_id, res["module"], res["variables"], preprocess_spec(), num_heads=spec.dim,
                        module_kwargs={"arch": spec.arch, "config": res["config"]}, batch_size=256,
                        source=f"mll_jax.vlm.offline:{spec.arch}:fashion-mnist", overwrite=True)
    hub.update(spec.model_id, group="offline-vlm",
               vlm={"spec": spec.to_json(), "logit_scale": res["scale"], "text_proj": "text_proj.npy",
                    "text_tower": "frozen all-MiniLM-L6-v2 + linear projection",
                    "train_seconds": round(res["train_seconds"], 2),
                    "final_loss": res["losses"][-1][1] if res["losses"] else None})


def load_dual_encoder(hub, model_id: str, text_features: TextFeatures) -> DualEncoderVLM:
    e = hub.entry(model_id)
    v = e.get("vlm")
    if not v:
        raise KeyError(f"hub model {model_id!r} is not a dual-encoder VLM (no 'vlm' entry)")
    w = np.load(hub.model_dir(model_id, v["text_proj"]))
    return DualEncoderVLM(model_id, hub.load(model_id), w, float(v["logit_scale"]), text_features,
                          DualEncoderSpec(**{**v["spec"], "classes": tuple(v["spec"]["classes"])}))


def train_vlm_hub(hub, data: FashionMNIST, splits: Splits, text_features: TextFeatures,
                  specs: Sequence[DualEncoderSpec] = VLM_SPECS, *, rebuild: bool = False,
                  progress: bool = True) -> list[DualEncoderVLM]:
    """Train (or reuse, when current in ``hub``) every spec; returns the loaded VLMs in spec order."""
    out = []
    for spec in specs:
        if rebuild or not is_current(hub, spec):
            res = train_dual_encoder(spec, data, splits, text_features)
            _register(hub, spec, res)
            if progress:
                print(f"trained {spec.model_id}: {res['train_seconds']:.1f}s, loss {res['losses'][-1][1]:.3f}, "
                      f"scale {res['scale']:.1f}", flush=True)
        out.append(load_dual_encoder(hub, spec.model_id, text_features))
    return out
