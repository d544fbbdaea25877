"""Offline WordNet 3.0 for nltk, plus wnid helpers.

The Semantic DAG is built from WordNet 3.0 noun synsets, whose byte offsets in ``data.noun`` are the
ImageNet wnids (``"n%08d" % offset``).  nltk's WordNet reader wants a directory
``$NLTK_DATA/corpora/wordnet/`` holding the Princeton database files plus a ``lexnames`` file.
On Debian the same database ships in the packages ``wordnet-base`` and ``wordnet-sense-index``
(files in ``/usr/share/wordnet``) but without ``lexnames``; this module copies those files (nltk refuses
symlinks that leave its data path) and writes the standard 45-line ``lexnames`` file, so no network
download (``nltk.download('wordnet')``) is needed.

Command line::

    python -m mll_jax.wordnet install [--dest NLTK_DATA_DIR] [--source DIR] [--force]

``--dest`` is an nltk data root: the corpus goes to ``DEST/corpora/wordnet``.  Without ``--dest``, if nltk can
already load WordNet 3.0 (e.g. after ``nltk.download('wordnet')`` or an earlier install) nothing is done;
otherwise the corpus goes under the first writable directory of ``nltk.data.path`` (``$NLTK_DATA`` first,
then e.g. ``~/nltk_data``).

Python API: :func:`install`, :func:`get_wordnet`, :func:`wnid`, :func:`synset_from_wnid`.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Sequence
from mll_jax.errors import WordNetNotFoundError  # noqa: F401  (re-exported)

__all__ = [
    "DEBIAN_WORDNET_DIR",
    "LEXNAMES",
    "WordNetNotFoundError",
    "install",
    "find_installed",
    "get_wordnet",
    "wnid",
    "synset_from_wnid",
    "is_wnid",
    "hypernyms",
    "hyponyms",
    "is_synset_name",
    "synset_from_ref",
    "sense_count",
    "ancestors",
    "descendants",
    "is_physical",
    "depth",
    "kin",
    "main",
]

#: Where Debian's ``wordnet-base`` / ``wordnet-sense-index`` install the WordNet 3.0 database.
DEBIAN_WORDNET_DIR = "/usr/share/wordnet"

#: Files nltk's reader opens (eagerly or lazily); all are shipped by the two Debian packages.
REQUIRED_FILES = (
    "data.noun", "data.verb", "data.adj", "data.adv",
    "index.noun", "index.verb", "index.adj", "index.adv",
    "noun.exc", "verb.exc", "adj.exc", "adv.exc",
    "index.sense",
)

#: The standard WordNet 3.0 ``lexnames`` file (lexicographer file number, name, syntactic category
#: 1=noun 2=verb 3=adjective 4=adverb), as documented in lexnames(5WN).
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change",
    "verb.cognition", "verb.communication", "verb.competition", "verb.consumption", "verb.contact",
    "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social",
    "verb.stative", "verb.weather", "adj.ppl",
)
_LEX_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

_WNID_RE = re.compile(r"^n\d{8}$")
_SYNSET_NAME_RE = re.compile(r"^[^\s=,]+\.n\.\d{2}$")

_HOW_TO_INSTALL = (
    "Install it with one of:\n"
    "  * Debian/Ubuntu: `apt-get install wordnet-base wordnet-sense-index`, then "
    "`python -m mll_jax.wordnet install`;\n"
    "  * nltk (needs network): `python -c \"import nltk; nltk.download('wordnet')\"`."
)


def lexnames_text() -> str:
    """Content of the standard ``lexnames`` file: 45 lines ``NN<TAB>lexname<TAB>category``."""
    return "".join(
        f"{i:02d}\t{name}\t{_LEX_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES)
    )


# ---------------------------------------------------------------------------------------------------
# locating / installing
# ---------------------------------------------------------------------------------------------------

def _is_complete(corpus_dir: Path) -> bool:
    return corpus_dir.is_dir() and all((corpus_dir / f).is_file() for f in REQUIRED_FILES + ("lexnames",))


def find_installed() -> Path | None:
    """Directory of an nltk-loadable WordNet (``corpora/wordnet``) on ``nltk.data.path``, or None.

    Only plain directories are reported (an nltk ``wordnet.zip`` is handled by :func:`get_wordnet` itself).
    """
    import nltk

    for root in nltk.data.path:
        cand = Path(root) / "corpora" / "wordnet"
        if _is_complete(cand):
            return cand
    return None


def _nltk_can_load_default() -> bool:
    """True when ``nltk.corpus.wordnet`` finds a corpus (directory or zip) on nltk's data path."""
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
        return True
    except LookupError:
        pass
    try:
        nltk.data.find("corpora/wordnet.zip")
        return True
    except LookupError:
        return False


def _default_data_root() -> Path:
    """First writable directory of ``nltk.data.path`` (created if its parent is writable)."""
    import nltk

    for root in nltk.data.path:
        p = Path(root)
        try:
            if p.is_dir():
                if os.access(p, os.W_OK):
                    return p
            else:
                parent = p
                while not parent.exists():
                    parent = parent.parent
                if os.access(parent, os.W_OK):
                    return p
        except OSError:
            continue
    raise WordNetNotFoundError(
        f"no writable directory among nltk's data paths {nltk.data.path}; set NLTK_DATA to a writable "
        "directory or pass --dest."
    )


def _check_source(source: Path) -> None:
    missing = [f for f in REQUIRED_FILES if not (source / f).is_file()]
    if missing:
        raise WordNetNotFoundError(
            f"WordNet 3.0 database not found: {source} lacks {', '.join(missing)}.\n" + _HOW_TO_INSTALL
        )


def install(dest: str | os.PathLike | None = None, *, source: str | os.PathLike = DEBIAN_WORDNET_DIR,
            force: bool = False) -> Path:
    """Make WordNet 3.0 loadable by nltk; returns the corpus directory (``.../corpora/wordnet``).

    Args:
      dest: nltk data root to install into (the corpus goes to ``dest/corpora/wordnet``).  None: if nltk can
        already load WordNet, do nothing and return its directory; else install into the first writable
        directory of ``nltk.data.path``.
      source: directory with the Princeton/Debian database files (default ``/usr/share/wordnet``).
      force: reinstall even if a complete corpus already exists at the destination.

    The copy is made in a temporary sibling directory and renamed into place, so a killed install never
    leaves a half-written corpus.  Raises :class:`WordNetNotFoundError` (with install instructions) when there
    is nothing to install from.
    """
    if dest is None and not force:
        existing = find_installed()
        if existing is not None:
            return existing
        if _nltk_can_load_default():
            import nltk

            return Path(str(nltk.data.find("corpora/wordnet")))
    root = Path(dest) if dest is not None else _default_data_root()
    target = root / "corpora" / "wordnet"
    if _is_complete(target) and not force:
        return target
    source = Path(source)
    _check_source(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=target.parent))
    try:
        for f in sorted(source.iterdir()):
            if f.is_file():  # follows symlinks: copies the real content
                shutil.copyfile(f, tmp / f.name)
        (tmp / "lexnames").write_text(lexnames_text(), encoding="utf-8")
        os.chmod(tmp, 0o755)
        old = None
        if target.exists() or target.is_symlink():
            old = target.parent / f".wordnet-old-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    get_wordnet.cache_clear()
    return target


# ---------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _load_reader(corpus_dir: str):
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    # nltk (>= 3.9) only opens corpora under its data roots: make sure this corpus's root is one of them.
    data_root = str(Path(corpus_dir).parent.parent)
    if not any(Path(str(p)).expanduser().resolve() == Path(data_root) for p in nltk.data.path):
        nltk.data.path.append(data_root)

    class EnglishWordNet30Reader(WordNetCorpusReader):
        """nltk's reader without the Open Multilingual WordNet offset map.

        nltk's constructor builds ``map30`` (a WordNet-version -> 3.0 offset map, used only to read OMW
        translations) by parsing ``index.sense`` twice, which is half of the load time; without an OMW reader
        the map is never used, and for WordNet 3.0 it is the identity anyway.
        """

        def map_wn(self, version="wordnet"):
            return None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": we only need English
        reader = EnglishWordNet30Reader(corpus_dir, None)
    return reader


@functools.lru_cache(maxsize=None)
def get_wordnet(data_dir: str | os.PathLike | None = None):
    """The nltk WordNet 3.0 corpus reader.

    Args:
      data_dir: an nltk data root (as given to :func:`install` ``dest``) or a corpus directory itself
        (``.../corpora/wordnet``); its data root is appended to ``nltk.data.path`` (nltk only reads corpora
        under its data roots).
        None: nltk's default lookup (``nltk.corpus.wordnet``); if nltk finds nothing, WordNet is first
        installed from the Debian files (:func:`install`), or :class:`WordNetNotFoundError` is raised.
    """
    if data_dir is not None:
        p = Path(data_dir)
        corpus = p if _is_complete(p) else p / "corpora" / "wordnet"
        if not _is_complete(corpus):
            raise WordNetNotFoundError(
                f"no WordNet corpus in {p} (expected {corpus} with {', '.join(REQUIRED_FILES)} and lexnames); "
                f"run `python -m mll_jax.wordnet install --dest {p}`.\n" + _HOW_TO_INSTALL
            )
        reader = _load_reader(str(corpus.resolve()))
    else:
        corpus = find_installed()
        if corpus is not None:
            reader = _load_reader(str(corpus.resolve()))
        elif _nltk_can_load_default():
            from nltk.corpus import wordnet as reader

            reader.ensure_loaded()
        else:
            try:
                corpus = install()
            except WordNetNotFoundError as e:
                raise WordNetNotFoundError(f"nltk cannot load WordNet and it cannot be installed offline: {e}") from e
            reader = _load_reader(str(corpus.resolve()))
    version = reader.get_version()
    if version != "3.0":
        raise WordNetNotFoundError(
            f"nltk loaded WordNet {version!r}, but mll-jax needs WordNet 3.0 (wnids are 3.0 noun offsets).\n"
            + _HOW_TO_INSTALL
        )
    return reader


# ---------------------------------------------------------------------------------------------------
# wnid helpers
# ---------------------------------------------------------------------------------------------------

def is_wnid(s) -> bool:
    """True for strings of the form ``n`` + 8 digits."""
    return isinstance(s, str) and bool(_WNID_RE.match(s))


def wnid(synset) -> str:
    """``"n%08d"`` wnid of a noun synset (equal to the ImageNet wnid)."""
    if synset.pos() != "n":
        raise ValueError(f"{synset.name()} is not a noun synset (pos {synset.pos()!r}); wnids are noun offsets")
    return f"n{synset.offset():08d}"


def synset_from_wnid(w: str, wn=None):
    """The WordNet 3.0 noun synset of a wnid; ``KeyError`` for malformed or unknown wnids."""
    if not is_wnid(w):
        raise KeyError(f"malformed wnid {w!r}: expected 'n' followed by 8 digits, e.g. 'n02084071'")
    wn = get_wordnet() if wn is None else wn
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nltk warns and returns None for offsets that start no synset
        try:
            s = wn.synset_from_pos_and_offset("n", int(w[1:]))
        except Exception as e:  # offsets past EOF etc.
            s = None
            err = e
        else:
            err = None
    if s is None:
        raise KeyError(f"unknown wnid {w!r}: no WordNet 3.0 noun synset at offset {int(w[1:])}"
                       + (f" ({err})" if err else ""))
    return s


def hypernyms(synset, instances: bool = True) -> list:
    """Hypernyms (and instance hypernyms) of a synset, sorted by (pos, offset).

    nltk keeps a synset's pointers in a ``set``, so its ``hypernyms()`` / ``hyponyms()`` come in an order that
    depends on ``PYTHONHASHSEED``; everything in mll-jax that walks WordNet goes through these two helpers.
    """
    out = synset.hypernyms() + (synset.instance_hypernyms() if instances else [])
    return sorted(set(out), key=lambda s: (s.pos(), s.offset()))


def hyponyms(synset, instances: bool = False) -> list:
    """Hyponyms (and, with ``instances``, instance hyponyms) of a synset, sorted by (pos, offset)."""
    out = synset.hyponyms() + (synset.instance_hyponyms() if instances else [])
    return sorted(set(out), key=lambda s: (s.pos(), s.offset()))


def is_synset_name(s) -> bool:
    """True for noun synset names such as ``"dog.n.01"`` (no spaces)."""
    return isinstance(s, str) and bool(_SYNSET_NAME_RE.match(s))


def synset_from_ref(ref: str, wn=None):
    """The noun synset of a wnid (``"n02084071"``) or a noun synset name (``"dog.n.01"``, case-insensitive).

    ``KeyError`` (with the reason) when ``ref`` is neither, or names no WordNet 3.0 noun synset."""
    wn = get_wordnet() if wn is None else wn
    if is_wnid(ref):
        return synset_from_wnid(ref, wn)
    if is_synset_name(ref.lower()):
        try:
            return wn.synset(ref.lower())
        except Exception:  # nltk raises WordNetError or ValueError for unknown lemmas / sense numbers
            raise KeyError(f"unknown synset {ref!r}: WordNet 3.0 has no such noun sense") from None
    raise KeyError(f"{ref!r} is neither a wnid ('n' + 8 digits) nor a noun synset name (e.g. 'dog.n.01')")


def sense_count(synset, word: str | None = None) -> int:
    """WordNet's sense frequency count (``cntlist``, nltk ``Lemma.count()``) of ``synset`` for ``word``
    (a lemma, compared case-insensitively with spaces as underscores); None sums over all its lemmas."""
    key = None if word is None else word.replace(" ", "_").lower()
    return sum(lem.count() for lem in synset.lemmas() if key is None or lem.name().lower() == key)


@functools.lru_cache(maxsize=1 << 16)
def ancestors(synset) -> frozenset:
    """Every hypernym and instance hypernym of ``synset``, transitively (the synset itself excluded)."""
    out = set()
    for h in hypernyms(synset):
        out.add(h)
        out |= ancestors(h)
    return frozenset(out)


@functools.lru_cache(maxsize=1 << 12)
def descendants(synset) -> frozenset:
    """Every hyponym and instance hyponym of ``synset``, transitively (the synset itself excluded)."""
    out = set()
    stack = hyponyms(synset, instances=True)
    while stack:
        s = stack.pop()
        if s not in out:
            out.add(s)
            stack.extend(hyponyms(s, instances=True))
    return frozenset(out)


@functools.lru_cache(maxsize=1 << 16)
def depth(synset) -> int:
    """Length of the longest hypernym path from ``synset`` up to ``entity.n.01`` (entity: 0)."""
    hs = hypernyms(synset)
    return 1 + max(depth(h) for h in hs) if hs else 0


def kin(synset, other, levels: int = 2) -> bool:
    """True when ``other`` is ``synset``, below it, or a near relative: their deepest common hypernym is at most
    ``levels`` levels above ``synset`` (a sibling for 1, a cousin for 2) and ``other`` is not itself a hypernym of
    ``synset``."""
    if other == synset or synset in ancestors(other):
        return True
    up = ancestors(synset)
    if other in up:
        return False
    common = (ancestors(other) | {other}) & up
    return bool(common) and max(depth(c) for c in common) >= depth(synset) - levels


def is_physical(synset) -> bool:
    """True when ``synset`` is a physical entity (``physical_entity.n.01`` or below): things images can show."""
    return synset.name() == "physical_entity.n.01" or any(a.name() == "physical_entity.n.01"
                                                          for a in ancestors(synset))


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mll_jax.wordnet", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_inst = sub.add_parser("install", help="make WordNet 3.0 loadable by nltk, offline")
    p_inst.add_argument("--dest", default=None, help="nltk data root (corpus goes to DEST/corpora/wordnet)")
    p_inst.add_argument("--source", default=DEBIAN_WORDNET_DIR, help="directory with the WordNet 3.0 files")
    p_inst.add_argument("--force", action="store_true", help="reinstall even if already present")
    sub.add_parser("check", help="print where nltk loads WordNet from and test it")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "install":
            corpus = install(args.dest, source=args.source, force=args.force)
            wn = get_wordnet(corpus if args.dest is not None else None)
        else:
            wn = get_wordnet()
            corpus = Path(str(wn.root))
        dog = synset_from_wnid("n02084071", wn)
    except WordNetNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"WordNet {wn.get_version()} ready at {corpus} (n02084071 = {dog.name()}, {dog.lexname()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
