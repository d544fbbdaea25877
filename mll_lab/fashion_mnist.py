"""Fashion-MNIST data, its WordNet 3.0 class map, deterministic splits and the zero-shot target tasks.

The offline benchmarks (:mod:`mll_lab.benchmark`, :mod:`mll_lab.vlm_benchmark`) need no download: Fashion-MNIST comes from Debian's ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist/*.gz``, the original idx files: 60k train + 10k test, 28x28 uint8).

Splits (all deterministic, disjoint):

- ``sdag``: ``per_class_sdag`` training images per class (default 50) become the data of the SDAG node of that
  class (the class's WordNet synset), used only to compute model labels.
- ``pool``: the other training images; experts of the offline hub are trained on subsets of it.
- ``test``: the official 10k test split; target tasks are evaluated on it.

Target tasks use natural class names (not node names); a task class may gather several Fashion-MNIST classes
(``"footwear"`` = sandal + sneaker + ankle boot).  Their test labels are derived from the official test labels.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from mll_jax.errors import MLLError
from mll_jax.names import check_class_names
from mll_jax.wordnet import get_wordnet

__all__ = [
    "FMNIST_DIR",
    "FMNIST_FILES",
    "SUBTREE_ROOTS",
    "FMNIST_CLASSES",
    "CLASS_SYNSETS",
    "ClassSynset",
    "FashionMNIST",
    "FashionMNISTNotFoundError",
    "Splits",
    "Task",
    "TaskClass",
    "TASKS",
    "read_idx",
    "load_fashion_mnist",
    "make_splits",
    "node_data",
    "task_test_set",
    "get_tasks",
    "load_tasks_file",
    "verify_class_synsets",
]

#: Where Debian's ``dataset-fashion-mnist`` installs the idx files (override: ``$MLL_JAX_FMNIST_DIR``).
FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
#: The four idx files of Fashion-MNIST.
FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

#: The official Fashion-MNIST class names, label order 0..9.
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@dataclass(frozen=True)
class ClassSynset:
    """One Fashion-MNIST class and the WordNet 3.0 noun synset whose SDAG node holds its images."""

    label: int
    fmnist_name: str
    synset: str  # nltk name, e.g. "trouser.n.01"
    wnid: str  # "n" + 8-digit noun offset (WordNet 3.0)


#: Class -> synset map (checked against WordNet 3.0 by :func:`verify_class_synsets` and the tests).
#: All synsets lie in the clothing (clothing.n.01), footwear (footwear.n.02) and bag (bag.n.04) subtrees.
CLASS_SYNSETS: tuple[ClassSynset, ...] = (
    ClassSynset(0, "T-shirt/top", "jersey.n.03", "n03595614"),  # jersey, T-shirt, tee shirt < shirt
    ClassSynset(1, "Trouser", "trouser.n.01", "n04489008"),  # trouser, pant < garment
    ClassSynset(2, "Pullover", "pullover.n.01", "n04021028"),  # pullover, slipover < sweater
    ClassSynset(3, "Dress", "dress.n.01", "n03236735"),  # dress, frock < woman's clothing
    ClassSynset(4, "Coat", "coat.n.01", "n03057021"),  # coat < overgarment
    ClassSynset(5, "Sandal", "sandal.n.01", "n04133789"),  # sandal < shoe
    ClassSynset(6, "Shirt", "shirt.n.01", "n04197391"),  # shirt < garment
    ClassSynset(7, "Sneaker", "gym_shoe.n.01", "n03472535"),  # gym shoe, sneaker, tennis shoe < shoe
    ClassSynset(8, "Bag", "bag.n.04", "n02774152"),  # bag, handbag, pocketbook, purse < container
    ClassSynset(9, "Ankle boot", "boot.n.01", "n02872752"),  # boot < footwear
)

#: Roots of the WordNet subtrees the offline SDAG covers.
SUBTREE_ROOTS = ("clothing.n.01", "footwear.n.02", "bag.n.04")


class FashionMNISTNotFoundError(MLLError, FileNotFoundError):
    """The Fashion-MNIST idx files are not installed (``apt-get install dataset-fashion-mnist``)."""


def _fmnist_dir(root: str | os.PathLike | None) -> Path:
    if root is None:
        root = os.environ.get("MLL_JAX_FMNIST_DIR", FMNIST_DIR)
    return Path(root)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (optionally gzip-compressed) into a numpy array.

    Format: 2 zero bytes, a type byte (0x08 = uint8), a byte with the number of dimensions, the dimensions as
    big-endian uint32, then the data.  Only uint8 data (all MNIST-style files) is supported.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an idx file (bad magic {data[:4]!r})")
    if data[2] != 0x08:
        raise ValueError(f"{path}: idx data type 0x{data[2]:02x} is not uint8 (0x08)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(data) - header != expected:
        raise ValueError(f"{path}: idx header says shape {shape} ({expected} bytes) but the file holds "
                         f"{len(data) - header} data bytes (truncated or corrupt)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


@dataclass(frozen=True)
class FashionMNIST:
    train_images: np.ndarray  # (60000, 28, 28) uint8
    train_labels: np.ndarray  # (60000,) uint8
    test_images: np.ndarray  # (10000, 28, 28) uint8
    test_labels: np.ndarray  # (10000,) uint8


def load_fashion_mnist(root: str | os.PathLike | None = None) -> FashionMNIST:
    """The Fashion-MNIST idx files from ``root`` (default ``$MLL_JAX_FMNIST_DIR`` or Debian's directory)."""
    d = _fmnist_dir(root)
    missing = [n for n in FMNIST_FILES.values() if not (d / n).is_file()]
    if missing:
        raise FashionMNISTNotFoundError(
            f"Fashion-MNIST not found in {d} (missing {', '.join(missing)}). Install it with "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or point $MLL_JAX_FMNIST_DIR at a directory "
            "holding the four original *-idx?-ubyte.gz files.")
    arrays = {k: read_idx(d / n) for k, n in FMNIST_FILES.items()}
    for split in ("train", "test"):
        im, lab = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if im.ndim != 3 or lab.ndim != 1 or im.shape[0] != lab.shape[0]:
            raise ValueError(f"Fashion-MNIST {split} files in {d} disagree: images {im.shape}, labels {lab.shape}")
        if lab.size and lab.max() >= len(FMNIST_CLASSES):
            raise ValueError(f"Fashion-MNIST {split} labels in {d} go up to {lab.max()} (expected 0..9)")
    return FashionMNIST(**arrays)


# ---------------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Splits:
    """Indices into the official training set (the test split is the official test set)."""

    sdag: np.ndarray  # (10 * per_class_sdag,) sorted by class then position
    pool: np.ndarray  # the rest, sorted
    per_class_sdag: int
    seed: int

    def sdag_of_class(self, labels: np.ndarray, c: int) -> np.ndarray:
        return self.sdag[labels[self.sdag] == c]


def make_splits(train_labels: np.ndarray, per_class_sdag: int = 50, seed: int = 0) -> Splits:
    """Deterministic class-stratified split of the training set into SDAG node data and the expert pool."""
    train_labels = np.asarray(train_labels)
    rng = np.random.default_rng(seed)
    sdag = []
    for c in range(len(FMNIST_CLASSES)):
        idx = np.flatnonzero(train_labels == c)
        if len(idx) <= per_class_sdag:
            raise ValueError(f"class {c} ({FMNIST_CLASSES[c]}) has only {len(idx)} training images; "
                             f"cannot reserve {per_class_sdag} for the SDAG")
        sdag.append(np.sort(rng.permutation(idx)[:per_class_sdag]))
    sdag = np.concatenate(sdag)
    mask = np.ones(len(train_labels), bool)
    mask[sdag] = False
    return Splits(sdag=sdag, pool=np.flatnonzero(mask), per_class_sdag=per_class_sdag, seed=seed)


def node_data(data: FashionMNIST, splits: Splits) -> dict[str, np.ndarray]:
    """wnid -> uint8 (n, 28, 28) SDAG node images, one entry per Fashion-MNIST class."""
    return {cs.wnid: data.train_images[splits.sdag_of_class(data.train_labels, cs.label)] for cs in CLASS_SYNSETS}


# ---------------------------------------------------------------------------------------------------
# Class map verification
# ---------------------------------------------------------------------------------------------------

def verify_class_synsets(wn=None) -> dict[str, list[str]]:
    """Check :data:`CLASS_SYNSETS` against WordNet 3.0; returns wnid -> the subtree roots it lies under.

    Raises ValueError if a synset is unknown, has another offset, or lies outside :data:`SUBTREE_ROOTS`.
    """
    if wn is None:
        wn = get_wordnet()
    roots = {r: wn.synset(r) for r in SUBTREE_ROOTS}
    out = {}
    for cs in CLASS_SYNSETS:
        s = wn.synset(cs.synset)
        w = f"n{s.offset():08d}"
        if w != cs.wnid:
            raise ValueError(f"{cs.fmnist_name}: {cs.synset} has wnid {w} in this WordNet, table says {cs.wnid}")
        ancestors = {a for path in s.hypernym_paths() for a in path}
        under = [r for r, rs in roots.items() if rs in ancestors]
        if not under:
            raise ValueError(f"{cs.fmnist_name}: {cs.synset} is outside the subtrees {SUBTREE_ROOTS}")
        out[w] = under
    return out


# ---------------------------------------------------------------------------------------------------
# Target tasks
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskClass:
    """A target class: a natural name and the Fashion-MNIST labels whose test images belong to it."""

    name: str
    members: tuple[int, ...]


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[TaskClass, ...]
    description: str = ""

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def __post_init__(self):
        seen = set()
        for c in self.classes:
            if not c.members:
                raise ValueError(f"task {self.name!r}: class {c.name!r} has no Fashion-MNIST members")
            for m in c.members:
                if not 0 <= m < len(FMNIST_CLASSES):
                    raise ValueError(f"task {self.name!r}: class {c.name!r} member {m} is not a label 0..9")
                if m in seen:
                    raise ValueError(f"task {self.name!r}: Fashion-MNIST label {m} is in two task classes")
                seen.add(m)
        if len(self.classes) < 2:
            raise ValueError(f"task {self.name!r} needs at least 2 classes")


def _t(name, description, *classes):
    return Task(name, tuple(TaskClass(n, tuple(m)) for n, m in classes), description)


#: The offline zero-shot target tasks. Class names are how a user would say them, not SDAG node names.
TASKS: tuple[Task, ...] = (
    _t("shoes", "sneaker vs sandal vs boot", ("sneaker", [7]), ("sandal", [5]), ("boot", [9])),
    _t("footwear-clothing", "footwear vs clothing (superclasses)",
       ("footwear", [5, 7, 9]), ("clothing", [0, 1, 2, 3, 4, 6])),
    _t("dress-coat-shirt", "dress vs coat vs shirt", ("dress", [3]), ("coat", [4]), ("shirt", [6])),
    _t("trousers-pullover-handbag", "trousers vs pullover vs handbag",
       ("trousers", [1]), ("pullover", [2]), ("handbag", [8])),
    _t("footwear-clothing-bag", "footwear vs clothing vs bag (superclasses)",
       ("footwear", [5, 7, 9]), ("clothing", [0, 1, 2, 3, 4, 6]), ("bag", [8])),
    _t("shoe-boot", "shoe (sandal, sneaker) vs boot", ("shoe", [5, 7]), ("boot", [9])),
    _t("tshirt-shirt", "T-shirt vs shirt (fine-grained)", ("T-shirt", [0]), ("shirt", [6])),
    _t("sweater-coat-trousers", "sweater vs coat vs trousers", ("sweater", [2]), ("coat", [4]), ("trousers", [1])),
    _t("fashion10", "all ten classes, natural names",
       ("T-shirt", [0]), ("trousers", [1]), ("pullover", [2]), ("dress", [3]), ("coat", [4]), ("sandal", [5]),
       ("shirt", [6]), ("sneaker", [7]), ("handbag", [8]), ("ankle boot", [9])),
)


def get_tasks(names: Sequence[str] | None = None, tasks: Sequence[Task] = TASKS) -> list[Task]:
    """The tasks with these names (all if None/empty), in the given order."""
    by_name = {t.name: t for t in tasks}
    if not names:
        return list(tasks)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise KeyError(f"unknown task(s) {unknown}; known: {sorted(by_name)}")
    return [by_name[n] for n in names]


def task_test_set(task: Task, images: np.ndarray, labels: np.ndarray, *, max_per_class: int | None = None,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the test images belonging to the task, and their task labels (0..len(classes)-1).

    Returns (idx, y): ``images[idx]`` are the task's test images. ``max_per_class`` subsamples each task class
    deterministically (None: all).
    """
    labels = np.asarray(labels)
    idx, y = [], []
    rng = np.random.default_rng(seed)
    for j, c in enumerate(task.classes):
        ii = np.flatnonzero(np.isin(labels, c.members))
        if max_per_class is not None and len(ii) > max_per_class:
            ii = np.sort(rng.choice(ii, max_per_class, replace=False))
        idx.append(ii)
        y.append(np.full(len(ii), j, np.int32))
    idx, y = np.concatenate(idx), np.concatenate(y)
    order = np.argsort(idx, kind="stable")
    return idx[order], y[order]


def load_tasks_file(path: str | os.PathLike) -> list[dict]:
    """Tasks for a user-supplied benchmark (JSON): ``[{"name": ..., "classes": [{"name": ..., "folders": [...]}]}]``.

    ``folders`` are the sub-folders (e.g. ImageNet wnids) of an image-folder test set whose images belong to the
    class. Returned as validated plain dicts.  A malformed file raises :class:`~mll_jax.errors.MLLError` naming the
    file and the line (JSON syntax) or the task and class (content).
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise MLLError(f"cannot read the tasks file {path}: {e}") from None
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as e:
        raise MLLError(f"{path}: line {e.lineno}, column {e.colno}: not valid JSON ({e.msg})") from None
    if isinstance(tasks, dict) and "tasks" in tasks:
        tasks = tasks["tasks"]
    if not isinstance(tasks, list) or not tasks:
        raise MLLError(f"{path}: expected a non-empty JSON list of tasks (or {{'tasks': [...]}})")
    for i, t in enumerate(tasks):
        if not isinstance(t, dict) or "classes" not in t:
            raise MLLError(f"{path}: task #{i} must be an object with 'name' and 'classes'")
        t.setdefault("name", f"task{i}")
        if not isinstance(t["name"], str) or not t["name"].strip():
            raise MLLError(f"{path}: task #{i}: 'name' must be a non-empty string")
        if not isinstance(t["classes"], list) or len(t["classes"]) < 2:
            raise MLLError(f"{path}: task {t['name']!r} needs a list of at least 2 classes")
        for j, c in enumerate(t["classes"]):
            if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c.get("name", "").strip():
                raise MLLError(f"{path}: task {t['name']!r}, class #{j}: needs a 'name' string")
            folders = c.get("folders")
            if not isinstance(folders, list) or not folders or not all(isinstance(x, str) and x for x in folders):
                raise MLLError(f"{path}: task {t['name']!r}, class {c['name']!r}: 'folders' must be a non-empty "
                               "list of folder names")
        try:
            check_class_names([c["name"] for c in t["classes"]])
        except MLLError as e:
            raise MLLError(f"{path}: task {t['name']!r}: {e}") from None
    return tasks
