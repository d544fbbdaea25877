import json

import numpy as np
import pytest
from PIL import Image

from mll_jax.sdag import SDAG, ImageDecodeError
from mll_jax.wordnet import wnid

FOOTWEAR = "n03380867"
DIGIT = "n05566097"
DOG, TOY_DOG, CHIHUAHUA, CANINE, TENCH = "n02084071", "n02085374", "n02085620", "n02083346", "n01440764"


def assert_topological(g: SDAG):
    pos = {w: i for i, w in enumerate(g.nodes)}
    assert len(pos) == len(g)
    for p, c in g.edges():
        assert pos[p] < pos[c], (p, c)
    for w in g.nodes:  # parents/children views agree
        for c in g.children(w):
            assert w in g.parents(c)


def test_footwear_subtree_matches_wordnet(wn):
    g = SDAG.from_roots([FOOTWEAR], wn=wn)
    root = wn.synset("footwear.n.02")
    below = set(root.closure(lambda s: s.hyponyms()))
    assert set(g.nodes) == {FOOTWEAR} | {wnid(s) for s in below}
    assert len(g) == 55 and g.roots() == [FOOTWEAR] and g.nodes[0] == FOOTWEAR
    assert set(g.children(FOOTWEAR)) == {wnid(s) for s in root.hyponyms()}
    assert {g.name(c) for c in g.children(FOOTWEAR)} == {"boot", "overshoe", "shoe", "flats", "clog", "slipper"}
    for w in g.nodes[1:]:  # closed subtree: parents are exactly the WordNet hypernyms
        s = wn.synset_from_pos_and_offset("n", int(w[1:]))
        assert set(g.parents(w)) == {wnid(h) for h in s.hypernyms()}
    assert g.text(FOOTWEAR) == "Name: footwear\nDescription: covering for a person's feet"
    # name = first lemma name with _ -> space
    assert g.text("n04120489") == "Name: running shoe\nDescription: a light comfortable shoe designed for running"
    assert_topological(g)

    shallow = SDAG.from_roots([FOOTWEAR], max_depth=1, wn=wn)
    assert len(shallow) == 7 and set(shallow.nodes) == {FOOTWEAR, *g.children(FOOTWEAR)}
    assert SDAG.from_roots([FOOTWEAR], max_depth=0, wn=wn).nodes == (FOOTWEAR,)


def test_multiple_inheritance_and_order(wn):
    g = SDAG.from_roots([DIGIT], wn=wn)
    little_finger, finger, minimus = (wnid(wn.synset(n)) for n in ("little_finger.n.01", "finger.n.01",
                                                                   "minimus.n.01"))
    assert set(g.parents(little_finger)) == {finger, minimus}
    assert g.index(little_finger) > max(g.index(finger), g.index(minimus))
    assert len(g) == 12 and g.num_edges() == 13
    assert_topological(g)
    assert set(g.descendants(minimus)) == {little_finger, wnid(wn.synset("little_toe.n.01"))}


def test_from_wnids_closest_ancestor_and_closure(wn):
    g = SDAG.from_wnids([CHIHUAHUA, DOG], wn=wn)
    assert g.nodes == (DOG, CHIHUAHUA)  # hypernym first although listed second
    assert g.parents(CHIHUAHUA) == [DOG] and g.roots() == [DOG]
    closed = SDAG.from_wnids([CHIHUAHUA], close_hypernyms=True, wn=wn)
    assert closed.parents(CHIHUAHUA) == [TOY_DOG] and closed.parents(TOY_DOG) == [DOG]
    assert set(closed.parents(DOG)) == {CANINE, "n01317541"}  # canine, domestic animal
    assert closed.roots() == ["n00001740"]  # entity
    assert_topological(closed)


def test_add_node_under_hypernym_vs_new_root(wn):
    g = SDAG.from_wnids([DOG, CHIHUAHUA], wn=wn)
    assert g.add_node(TOY_DOG) == TOY_DOG  # between dog and chihuahua: chihuahua is re-hung
    assert g.parents(TOY_DOG) == [DOG] and g.parents(CHIHUAHUA) == [TOY_DOG]
    assert g.children(DOG) == [TOY_DOG]
    g.add_node(CANINE)  # above the current root
    assert g.parents(DOG) == [CANINE] and g.roots() == [CANINE]
    g.add_node(TENCH)  # unrelated: a new root
    assert g.parents(TENCH) == [] and set(g.roots()) == {CANINE, TENCH}
    assert g.add_node(TENCH) == TENCH and len(g) == 5  # idempotent
    # custom nodes
    robo = g.add_node("Robot dog", description="a robotic pet shaped like a dog", hypernyms=[DOG])
    assert robo == "custom-robot-dog" and g.parents(robo) == [DOG] and g.is_custom(robo)
    assert g.text(robo) == "Name: Robot dog\nDescription: a robotic pet shaped like a dog"
    pap = g.add_node("papillon")  # unique WordNet lemma: hangs under its hypernym toy_spaniel's closest ancestor
    assert g.parents(pap) == [TOY_DOG]
    alone = g.add_node("zzgadget", description="not in WordNet")
    assert g.parents(alone) == [] and alone in g.roots()
    spaniel = g.add_node("n02086346")  # toy spaniel arrives: the custom papillon moves under it
    assert g.parents(spaniel) == [TOY_DOG] and g.parents(pap) == [spaniel]
    assert_topological(g)
    with pytest.raises(ValueError, match="already exists"):
        g.add_node("Robot dog")
    with pytest.raises(KeyError, match="unknown wnid"):
        g.add_node("n00000002")
    with pytest.raises(KeyError, match="neither a wnid nor a node"):
        g.add_node("thing", hypernyms=["custom-nope"])
    with pytest.raises(KeyError, match="not in the SDAG"):
        g.children("n01443537")


def _rgb(h, w, color):
    a = np.zeros((h, w, 3), np.uint8)
    a[:] = color
    return a


def _make_folder(root, wnids, n_files=5):
    for k, w in enumerate(wnids):
        d = root / w
        d.mkdir(parents=True)
        for i in range(n_files):
            Image.fromarray(_rgb(40 + i, 30 + 2 * i, (k * 50, i * 40, 7))).save(d / f"{w}_{i:04d}.png")


def test_images_from_folder(tmp_path, wn):
    g = SDAG.from_roots([FOOTWEAR], max_depth=1, wn=wn)
    boot, shoe = "n02872752", "n04199027"
    _make_folder(tmp_path / "data", [boot, shoe, TENCH])
    with pytest.warns(UserWarning, match="1 wnid directories are not SDAG nodes"):
        got = g.add_images_from_folder(tmp_path / "data", n_per_node=3, seed=0, image_size=16, progress=False)
    assert got == {boot: 3, shoe: 3} and TENCH not in g
    imgs = g.images(boot)
    assert imgs.shape == (3, 16, 16, 3) and imgs.dtype == np.uint8
    greens = sorted(int(x[0, 0, 1]) for x in imgs)  # each file has its own green level i * 40
    assert len(set(greens)) == 3 and set(greens) <= {0, 40, 80, 120, 160}
    assert np.all(imgs[..., 0] == 0) and np.all(g.images(shoe)[..., 0] == 50)
    # deterministic per node, independent of other nodes, seed-dependent
    g2 = SDAG.from_roots([FOOTWEAR], max_depth=1, wn=wn)
    (tmp_path / "only_boot").mkdir()
    (tmp_path / "only_boot" / boot).symlink_to(tmp_path / "data" / boot)
    g2.add_images_from_folder(tmp_path / "only_boot", n_per_node=3, seed=0, image_size=16, progress=False)
    np.testing.assert_array_equal(g2.images(boot), imgs)
    samples = set()
    for seed in range(6):
        g2.add_images_from_folder(tmp_path / "only_boot", n_per_node=3, seed=seed, image_size=16, progress=False)
        samples.add(tuple(sorted(int(x[0, 0, 1]) for x in g2.images(boot))))
    assert len(samples) > 1
    # add_missing brings the tench in as a new root
    g.add_images_from_folder(tmp_path / "data", n_per_node=10, image_size=8, add_missing=True, progress=False)
    assert g.parents(TENCH) == [] and g.num_images(TENCH) == 5 and g.images(TENCH).shape == (5, 8, 8, 3)


def test_folder_resize_center_crop_and_grayscale(tmp_path, wn):
    g = SDAG.from_wnids([TENCH], wn=wn)
    d = tmp_path / TENCH
    d.mkdir()
    wide = _rgb(32, 64, (255, 0, 0))
    wide[:, 16:48] = (0, 0, 255)  # the centre 32 columns are blue
    Image.fromarray(wide).save(d / "a.png")
    Image.fromarray(np.full((10, 10), 77, np.uint8), mode="L").save(d / "b.png")
    g.add_images_from_folder(tmp_path, image_size=32, progress=False)
    a, b = g.images(TENCH)
    assert np.all(a == np.array([0, 0, 255], np.uint8))  # shorter side kept at 32, centre crop
    assert b.shape == (32, 32, 3) and np.all(b == 77)  # grayscale -> RGB, upsampled


def test_undecodable_image_names_the_file(tmp_path, wn):
    g = SDAG.from_wnids([TENCH], wn=wn)
    (tmp_path / TENCH).mkdir()
    bad = tmp_path / TENCH / "broken.JPEG"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(ImageDecodeError, match="broken.JPEG"):
        g.add_images_from_folder(tmp_path, progress=False)
    assert g.num_images(TENCH) == 0


def test_images_from_arrays(wn):
    g = SDAG.from_wnids([DOG, CHIHUAHUA], wn=wn)
    n = 30
    images = np.arange(n, dtype=np.uint8)[:, None, None] * np.ones((1, 4, 5), np.uint8)  # image i is all i
    labels = np.arange(n) % 3  # classes: 0 dog, 1 chihuahua, 2 puppy (pooled into dog), ...
    names = ["dog", "chihuahua", "puppy"]
    got = g.add_images_from_arrays(images, labels, names, {"dog": DOG, "puppy": DOG, "chihuahua": CHIHUAHUA},
                                   n_per_node=8, seed=1)
    assert got == {DOG: 8, CHIHUAHUA: 8}
    vals = g.images(DOG)[:, 0, 0]
    assert len(set(vals.tolist())) == 8 and all(v % 3 in (0, 2) for v in vals)
    assert all(v % 3 == 1 for v in g.images(CHIHUAHUA)[:, 0, 0])
    again = SDAG.from_wnids([DOG], wn=wn)
    again.add_images_from_arrays(images, labels, names, {"dog": DOG, "puppy": DOG}, n_per_node=8, seed=1)
    np.testing.assert_array_equal(again.images(DOG), g.images(DOG))
    small = SDAG.from_wnids([CHIHUAHUA], wn=wn)  # fewer images than n_per_node: take them all
    assert small.add_images_from_arrays(images, labels, names, {"chihuahua": CHIHUAHUA}, n_per_node=50) == {
        CHIHUAHUA: 10}
    with pytest.warns(UserWarning, match="not SDAG nodes"):
        assert small.add_images_from_arrays(images, labels, names, {"dog": DOG}) == {}
    small.add_images_from_arrays(images, labels, names, {"dog": DOG}, add_missing=True)
    assert small.parents(CHIHUAHUA) == [DOG] and small.num_images(DOG) == 10
    with pytest.raises(ValueError, match="uint8"):
        g.add_images_from_arrays(images.astype(np.float32), labels, names, {"dog": DOG})
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        g.add_images_from_arrays(images, labels + 1, names, {"dog": DOG})
    with pytest.raises(KeyError, match="not in class_names"):
        g.add_images_from_arrays(images, labels, names, {"cat": DOG})


def test_save_load_roundtrip(tmp_path, wn):
    g = SDAG.from_roots([DIGIT], wn=wn)
    rng = np.random.default_rng(0)
    for w in g.nodes[:5]:
        g.set_images(w, rng.integers(0, 256, (3, 6, 6, 3), dtype=np.uint8))
    g.set_images(g.nodes[5], rng.integers(0, 256, (2, 5, 5), dtype=np.uint8))
    custom = g.add_node("six-fingered hand digit", description="an extra finger", hypernyms=[DIGIT],
                        images=np.ones((1, 2, 2), np.uint8))
    ref = {w: g.images(w).copy() for w in g.nodes}
    keys = {w: g.data_key(w) for w in g.nodes}
    g.save(tmp_path / "sdag")
    h = SDAG.load(tmp_path / "sdag", wn=wn)
    assert h.nodes == g.nodes
    for w in g.nodes:
        assert h.parents(w) == g.parents(w) and h.children(w) == g.children(w)
        assert h.text(w) == g.text(w) and h.data_key(w) == keys[w] and h.num_images(w) == len(ref[w])
        np.testing.assert_array_equal(h.images(w), ref[w])
    assert h.is_custom(custom) and not h.is_custom(DIGIT)
    # incremental re-save in place: changed node gets a new file, the old one is removed, others kept
    files_before = {p.name for p in (tmp_path / "sdag" / "images").iterdir()}
    h.set_images(DIGIT, np.zeros((1, 3, 5), np.uint8))
    h.add_node(TENCH, images=np.full((2, 3, 5), 9, np.uint8))
    h.save(tmp_path / "sdag")
    files_after = {p.name for p in (tmp_path / "sdag" / "images").iterdir()}
    assert len(files_after) == len(files_before) + 1
    new_digit = [f for f in files_after if f.startswith(DIGIT)]
    assert len(new_digit) == 1 and new_digit[0] not in files_before
    assert {f for f in files_before if not f.startswith(DIGIT)} <= files_after
    k = SDAG.load(tmp_path / "sdag", wn=wn)
    assert k.nodes[-1] == TENCH and np.all(k.images(TENCH) == 9) and k.images(DIGIT).shape == (1, 3, 5)
    doc = json.loads((tmp_path / "sdag" / "sdag.json").read_text())
    assert [e["id"] for e in doc["nodes"]] == list(k.nodes)
    assert not [p for p in (tmp_path / "sdag").rglob("*.tmp")]


def test_load_rejects_broken_directories(tmp_path, wn):
    with pytest.raises(FileNotFoundError, match="no sdag.json"):
        SDAG.load(tmp_path)
    g = SDAG.from_wnids([DOG, CHIHUAHUA], wn=wn)
    g.set_images(DOG, np.zeros((1, 2, 2), np.uint8))
    g.save(tmp_path / "s")
    doc = json.loads((tmp_path / "s" / "sdag.json").read_text())
    doc["nodes"].reverse()
    (tmp_path / "s" / "sdag.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="not topological"):
        SDAG.load(tmp_path / "s")
    doc["nodes"].reverse()
    (tmp_path / "s" / "sdag.json").write_text(json.dumps(doc))
    for p in (tmp_path / "s" / "images").iterdir():
        p.unlink()
    with pytest.raises(FileNotFoundError, match="image file .* of node 'n02084071' is missing"):
        SDAG.load(tmp_path / "s")


def test_set_images_validation_and_key(wn):
    g = SDAG.from_wnids([DOG], wn=wn)
    with pytest.raises(ValueError, match="uint8"):
        g.set_images(DOG, np.zeros((1, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"RGBA"):
        g.set_images(DOG, np.zeros((1, 2, 2, 4), np.uint8))
    with pytest.raises(ValueError, match=r"\(N, h, w\) grayscale or \(N, h, w, 3\)"):
        g.set_images(DOG, np.zeros((1, 2, 2, 2), np.uint8))
    a = np.zeros((2, 2, 2), np.uint8)
    g.set_images(DOG, a)
    k0 = g.data_key(DOG)
    a[0, 0, 0] = 1  # the SDAG kept its own copy
    assert g.data_key(DOG) == k0 and g.images(DOG)[0, 0, 0] == 0
    g.set_images(DOG, a)
    assert g.data_key(DOG) != k0
