"""The reviewed real-photo mapping and its node/test split (mll_lab.real_photos)."""

from __future__ import annotations

import numpy as np
import pytest

from mll_lab import real_photos as rp


def test_mapping_rows_are_unique_and_well_formed():
    rows = rp.read_mapping()
    assert len(rows) > 150
    assert len({(r.source, r.file) for r in rows}) == len(rows)
    assert {r.kind for r in rows} == {"photo", "drawing"}
    assert {r.source for r in rows} <= set(rp.SOURCES)


def test_mapping_wnids_match_synsets():
    pytest.importorskip("nltk")
    from mll_jax.wordnet import get_wordnet, wnid

    wn = get_wordnet()
    for r in rp.read_mapping():
        assert wnid(wn.synset(r.synset)) == r.wnid, r


def test_dog_and_cat_photos_node_test_disjoint_by_content():
    try:
        photos = rp.load_photo_set()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    assert len(set(photos.hashes)) == len(photos)  # de-duplicated
    assert all(e.kind == "photo" for e in photos.entries)
    dog, cat = "n02084071", "n02121620"
    anc = [rp.ancestor_wnids(w) for w in photos.wnids]
    test = np.array([dog in a or cat in a for a in anc])
    assert test.sum() >= 6
    node, tst = rp.disjoint_split(photos, test)
    assert not set(node.hashes) & set(tst.hashes)
    assert len(node) + len(tst) == len(photos)
    dup = photos.subset([0, 0])
    with pytest.raises(ValueError, match="both node and test"):
        rp.disjoint_split(dup, [True, False])


def test_wilson_interval():
    lo, hi = rp.wilson_interval(98, 100)
    assert 0.929 < lo < 0.931 and 0.994 < hi < 0.996
    assert rp.wilson_interval(0, 0) == (0.0, 1.0)
