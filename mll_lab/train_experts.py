"""The offline model hub: small Hugging Face Flax experts trained on Fashion-MNIST class subsets.

Each expert (:class:`ExpertSpec`) sees only some Fashion-MNIST classes and has its own output space; a head may
gather several classes (superclass heads such as ``footwear = sandal + sneaker + ankle boot``).  The networks are
the Flax modules of ``FlaxResNetForImageClassification`` / ``FlaxViTForImageClassification`` built from tiny
configs, wrapped in :class:`mll_jax.models.gray_hf.GrayHFClassifier` (grayscale input), trained with optax (AdamW, warm-up + cosine
schedule, cross-entropy, random horizontal flips) on images of the expert split (never the SDAG or test images).

They are registered in a :class:`mll_jax.hub.ModelHub` as kind ``flax_module`` with ``module_class =
"mll_jax.models.gray_hf:GrayHFClassifier"`` (so ``hub.load(id)`` needs nothing from the lab)::

    <hub>/manifest.json                      # entry: module class + kwargs (arch, HF config), preprocessing,
                                             #        head names, "spec" and "training" summary
    <hub>/models/<model_id>/variables/       # orbax checkpoint of {"params": ..., ["batch_stats": ...]}
    <hub>/models/<model_id>/config.json      # the Hugging Face config (to_json_string)
    <hub>/models/<model_id>/expert.json      # spec + training summary

Variables are written to a temporary directory and renamed, json files via temp file + rename, and the manifest
entry last, so a crash never leaves a registered half-written expert.  A loaded expert takes uint8 grayscale or RGB
images of any size (resized to 28x28, normalised, reduced to luma inside the jitted forward).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from mll_jax.hub import ModelHub, PreprocessSpec
from mll_jax.models import FlaxModuleExpert
from mll_jax.models.gray_hf import GrayHFClassifier, plain_config
from mll_jax.utils import atomic_write_text
from mll_lab.fashion_mnist import FMNIST_CLASSES, FashionMNIST, Splits

__all__ = [
    "ExpertSpec",
    "HUB_SPECS",
    "FMNIST_MEAN",
    "FMNIST_STD",
    "IMAGE_SIZE",
    "GrayHFClassifier",
    "hf_config",
    "make_model",
    "preprocess_spec",
    "normalise_images",
    "expert_training_set",
    "TrainResult",
    "train_expert",
    "register_expert",
    "is_current",
    "train_hub",
]

#: Normalisation of the trained experts (Fashion-MNIST pixel mean / std on [0, 1]).
FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530
#: Side of the (square) Fashion-MNIST images the experts take.
IMAGE_SIZE = 28


@dataclass(frozen=True)
class ExpertSpec:
    """What one offline expert is: architecture, heads (name -> Fashion-MNIST labels) and training budget."""

    model_id: str
    arch: str  # "resnet" | "vit"
    heads: tuple[tuple[str, tuple[int, ...]], ...]
    per_class: int = 500  # training images per Fashion-MNIST label
    steps: int = 300
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    width: int = 16  # resnet: first stage channels; vit: hidden size / 4

    def __post_init__(self):
        if self.arch not in ("resnet", "vit"):
            raise ValueError(f"{self.model_id}: arch must be 'resnet' or 'vit', got {self.arch!r}")
        if len(self.heads) < 2:
            raise ValueError(f"{self.model_id}: an expert needs at least 2 heads, got {len(self.heads)}")
        seen = set()
        for name, members in self.heads:
            if not members:
                raise ValueError(f"{self.model_id}: head {name!r} has no Fashion-MNIST labels")
            for m in members:
                if not 0 <= m < len(FMNIST_CLASSES) or m in seen:
                    raise ValueError(f"{self.model_id}: head {name!r}: label {m} is invalid or in two heads")
                seen.add(m)

    @property
    def head_names(self) -> list[str]:
        return [h for h, _ in self.heads]

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    @property
    def labels(self) -> list[int]:
        return sorted(m for _, ms in self.heads for m in ms)

    def label_to_head(self) -> np.ndarray:
        """(10,) int array: Fashion-MNIST label -> head index, -1 for labels the expert never sees."""
        t = np.full(len(FMNIST_CLASSES), -1, np.int32)
        for h, (_, ms) in enumerate(self.heads):
            t[list(ms)] = h
        return t

    def to_json(self) -> dict:
        d = asdict(self)
        d["heads"] = [[n, list(m)] for n, m in self.heads]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ExpertSpec":
        d = dict(d)
        d["heads"] = tuple((n, tuple(int(x) for x in m)) for n, m in d["heads"])
        return cls(**d)


def _spec(model_id, arch, heads, **kw):
    return ExpertSpec(model_id, arch, tuple((n, tuple(m)) for n, m in heads), **kw)


#: The offline hub: different class subsets, output spaces (incl. superclass heads), architectures and data sizes.
#: Order matters for Figure 4 (the hub grows in this order).
HUB_SPECS: tuple[ExpertSpec, ...] = (
    _spec("fm-footwear-top-trousers", "resnet",
          [("footwear", [5, 7, 9]), ("top", [0, 2, 4, 6]), ("trousers", [1])], seed=1),
    _spec("fm-shoes", "resnet", [("sandal", [5]), ("sneaker", [7]), ("ankle boot", [9])], seed=2),
    _spec("fm-tops-vit", "vit", [("t-shirt", [0]), ("pullover", [2]), ("coat", [4]), ("shirt", [6])],
          seed=3, steps=400),
    _spec("fm-4class", "resnet", [("trouser", [1]), ("dress", [3]), ("bag", [8]), ("sneaker", [7])], seed=4),
    _spec("fm-clothing-footwear-bag", "resnet",
          [("clothing", [0, 1, 2, 3, 4, 6]), ("footwear", [5, 7, 9]), ("bag", [8])], seed=5),
    _spec("fm-dress-coat", "resnet", [("dress", [3]), ("coat", [4])], seed=6, steps=200),
    _spec("fm-10class-fewdata", "resnet", [(FMNIST_CLASSES[i].lower(), [i]) for i in range(10)],
          per_class=20, steps=150, seed=7, width=8),
)


# ---------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------

def hf_config(spec: ExpertSpec):
    """The tiny Hugging Face config (ResNetConfig / ViTConfig) of an expert spec."""
    id2label = {i: n for i, n in enumerate(spec.head_names)}
    label2id = {n: i for i, n in id2label.items()}
    if spec.arch == "resnet":
        from transformers import ResNetConfig

        w = spec.width
        return ResNetConfig(num_channels=1, embedding_size=w, hidden_sizes=[w, 2 * w, 4 * w], depths=[1, 1, 1],
                            layer_type="basic", hidden_act="relu", downsample_in_first_stage=False,
                            num_labels=spec.num_heads, id2label=id2label, label2id=label2id)
    from transformers import ViTConfig

    return ViTConfig(image_size=IMAGE_SIZE, patch_size=7, num_channels=1, hidden_size=4 * spec.width,
                     num_hidden_layers=2, num_attention_heads=4, intermediate_size=8 * spec.width,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     num_labels=spec.num_heads, id2label=id2label, label2id=label2id)


def make_model(spec: ExpertSpec, seed: int | None = None):
    """(GrayHFClassifier module, initial variables {"params", ["batch_stats"]}, HF config) of an expert spec."""
    config = hf_config(spec)
    module = GrayHFClassifier(spec.arch, json.loads(config.to_json_string()))
    x = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 1), jnp.float32)
    variables = jax.jit(module.init)(jax.random.PRNGKey(spec.seed if seed is None else seed), x)
    return module, dict(variables), config


def preprocess_spec():
    """The hub preprocessing of the offline experts: resize to 28x28, scale to [0, 1], normalise."""
    return PreprocessSpec((IMAGE_SIZE, IMAGE_SIZE), mean=(FMNIST_MEAN,) * 3, std=(FMNIST_STD,) * 3,
                          scale=1.0 / 255.0, layout="NHWC", resample="bilinear")


def normalise_images(x_uint8_gray: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) gray images -> float32 (N, 28, 28, 1), scaled to [0, 1] and normalised (training input)."""
    return ((x_uint8_gray.astype(np.float32) / 255.0 - FMNIST_MEAN) / FMNIST_STD)[..., None]


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------

def expert_training_set(spec: ExpertSpec, data: FashionMNIST, splits: Splits) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into the training set, from the expert pool only) and head targets for one expert."""
    rng = np.random.default_rng(10_000 + spec.seed)
    pool_labels = data.train_labels[splits.pool]
    to_head = spec.label_to_head()
    idx = []
    for c in spec.labels:
        cand = splits.pool[pool_labels == c]
        if len(cand) < spec.per_class:
            raise ValueError(f"{spec.model_id}: only {len(cand)} pool images of class {c}, need {spec.per_class}")
        idx.append(rng.choice(cand, spec.per_class, replace=False))
    idx = np.sort(np.concatenate(idx))
    return idx, to_head[data.train_labels[idx]]


@dataclass
class TrainResult:
    spec: ExpertSpec
    module: Any
    config: Any
    variables: Any
    losses: list = field(default_factory=list)
    train_seconds: float = 0.0
    test_accuracy: float | None = None  # on the official test images of the expert's own classes

    def expert(self, batch_size: int = 256):
        """The trained model as an expert (same preprocessing as when loaded from the hub)."""
        return FlaxModuleExpert(self.module, self.variables, preprocess_spec(), self.spec.model_id,
                                self.spec.head_names, batch_size=batch_size, num_heads=self.spec.num_heads)


def train_expert(spec: ExpertSpec, data: FashionMNIST, splits: Splits, *, steps: int | None = None,
                 progress: bool = True) -> TrainResult:
    """Train one expert with optax AdamW (warm-up + cosine) on its training subset, random horizontal flips."""
    import optax

    module, variables, config = make_model(spec)
    idx, targets = expert_training_set(spec, data, splits)
    x_all = normalise_images(data.train_images[idx])
    steps = spec.steps if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"{spec.model_id}: steps must be >= 1, got {steps}")
    warmup = max(1, min(50, steps // 10))
    sched = optax.warmup_cosine_decay_schedule(0.0, spec.lr, warmup, max(steps, warmup + 1), spec.lr * 0.05)
    tx = optax.adamw(sched, weight_decay=spec.weight_decay)
    params = variables["params"]
    batch_stats = variables.get("batch_stats")
    opt_state = tx.init(params)

    def loss_fn(p, bs, x, y):
        if bs is not None:
            logits, upd = module.apply({"params": p, "batch_stats": bs}, x, deterministic=False,
                                       mutable=["batch_stats"])
            bs = upd["batch_stats"]
        else:
            logits = module.apply({"params": p}, x, deterministic=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), bs

    @jax.jit
    def step(p, bs, o, x, y):
        (loss, bs), g = jax.value_and_grad(loss_fn, has_aux=True)(p, bs, x, y)
        upd, o = tx.update(g, o, p)
        return optax.apply_updates(p, upd), bs, o, loss

    rng = np.random.default_rng(spec.seed)
    n = len(idx)
    bsz = min(spec.batch_size, n)
    losses = []
    it = range(steps)
    if progress:
        it = tqdm(it, desc=f"train {spec.model_id}", unit="step", leave=False)
    t0 = time.perf_counter()
    for i in it:
        b = rng.choice(n, bsz, replace=False)
        x = x_all[b]
        flip = rng.random(bsz) < 0.5
        x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state, jnp.asarray(x),
                                                    jnp.asarray(targets[b]))
        if i % 25 == 0 or i == steps - 1:
            lv = float(loss)
            losses.append((i, lv))
            if not np.isfinite(lv):
                raise FloatingPointError(f"{spec.model_id}: training diverged at step {i} (loss {lv})")
            if progress:
                it.set_postfix(loss=f"{lv:.3f}")
    out_vars = {"params": params}
    if batch_stats is not None:
        out_vars["batch_stats"] = batch_stats
    res = TrainResult(spec, module, config, jax.device_get(out_vars), losses, time.perf_counter() - t0)
    # In-domain accuracy on the official test images of the expert's own classes (reported only).
    tmask = np.isin(data.test_labels, spec.labels)
    pred = res.expert().logits(data.test_images[tmask]).argmax(1)
    res.test_accuracy = float(np.mean(pred == spec.label_to_head()[data.test_labels[tmask]]))
    return res


# ---------------------------------------------------------------------------------------------------
# The hub
# ---------------------------------------------------------------------------------------------------

def register_expert(hub, result: TrainResult, *, overwrite: bool = True) -> dict:
    """Save a trained expert into the hub (orbax variables, config.json, expert.json) and register it.

    Kind ``flax_module``: the hub re-creates :class:`GrayHFClassifier` from the manifest, so ``hub.load(id)``
    works in any process.  The manifest entry carries ``spec`` (to detect stale experts) and a ``training``
    summary.
    """
    spec = result.spec
    hub.add_flax_module(
        spec.model_id, result.module, result.variables, preprocess_spec(), head_names=spec.head_names,
        num_heads=spec.num_heads, module_kwargs={"arch": spec.arch, "config": plain_config(result.module.config)},
        batch_size=256, source=f"mll_lab.train_experts:{spec.arch}:fashion-mnist", overwrite=overwrite)
    summary = {
        "hf_class": ("FlaxResNetForImageClassification" if spec.arch == "resnet"
                     else "FlaxViTForImageClassification"),
        "train_seconds": round(result.train_seconds, 2),
        "final_loss": result.losses[-1][1] if result.losses else None,
        "test_accuracy_own_classes": result.test_accuracy,
        "head_fmnist_labels": [list(m) for _, m in spec.heads],
    }
    d = Path(hub.model_dir(spec.model_id))
    atomic_write_text(d / "config.json", result.config.to_json_string())
    atomic_write_text(d / "expert.json", json.dumps({"spec": spec.to_json(), **summary}, indent=1))
    return hub.update(spec.model_id, spec=spec.to_json(), training=summary, group="offline-fashion-mnist")


def is_current(hub, spec: ExpertSpec) -> bool:
    """True if ``spec`` is registered in ``hub`` with the same spec and its variables exist."""
    if spec.model_id not in hub:
        return False
    entry = hub.entry(spec.model_id)
    return (entry.get("spec") == spec.to_json() and entry.get("kind") == "flax_module"
            and os.path.isdir(hub.model_dir(spec.model_id, "variables")))


def train_hub(hub, data: FashionMNIST, splits: Splits, specs: Sequence[ExpertSpec] = HUB_SPECS, *,
              rebuild: bool = False, steps: int | None = None, progress: bool = True) -> list[dict]:
    """Train and register every expert of ``specs`` not already in ``hub`` (all if ``rebuild``).

    ``hub``: a :class:`mll_jax.hub.ModelHub` or its root directory.  ``steps`` overrides every spec's step count
    (e.g. a handful for tests).  Returns the manifest entries, in ``specs`` order.
    """
    if not isinstance(hub, ModelHub):
        hub = ModelHub(hub)
    entries = []
    bar = tqdm(specs, desc="offline experts", unit="expert", disable=not progress)
    for spec in bar:
        if steps is not None:
            spec = replace(spec, steps=int(steps))
        if rebuild or not is_current(hub, spec):
            bar.set_postfix_str(spec.model_id)
            register_expert(hub, train_expert(spec, data, splits, progress=progress))
        entries.append(hub.entry(spec.model_id))
    return entries
