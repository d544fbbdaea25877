"""WordNet-aware matching: lemma path, sense ranking, hierarchy guard, user-given synsets, class specs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mll_jax import text as T
from mll_jax.errors import ClassNamesError, MLLError
from mll_jax.wordnet import depth, get_wordnet, is_physical, kin, sense_count, synset_from_ref


@pytest.fixture(scope="module")
def wn():
    return get_wordnet()


@pytest.fixture(scope="module")
def encoder():
    return T.TextEncoder.load()


def ids(wn, *names):
    return ["n%08d" % wn.synset(n).offset() for n in names]


def match(names, nodes, encoder, wn, **kw):
    return T.match_classes(names, nodes, [T.lemma_node_text(w, wn) for w in nodes], encoder, wn=wn, **kw)


# ---------------------------------------------------------------------------------------------
# WordNet helpers
# ---------------------------------------------------------------------------------------------
def test_wordnet_additions(wn):
    dog = wn.synset("dog.n.01")
    assert synset_from_ref("n02084071", wn) == dog == synset_from_ref("Dog.n.01", wn)
    assert sense_count(dog, "dog") == 42 and sense_count(wn.synset("plant.n.01"), "plant") == 63
    assert depth(wn.synset("entity.n.01")) == 0 and depth(dog) == 13
    assert is_physical(wn.synset("table.n.02")) and not is_physical(wn.synset("table.n.01"))
    # kin: sibling yes, hypernym no, the synset and its hyponyms yes
    assert kin(wn.synset("gym_shoe.n.01"), wn.synset("running_shoe.n.01"), 1)
    assert not kin(wn.synset("frog.n.01"), wn.synset("animal.n.01"), 2)
    assert not kin(wn.synset("frog.n.01"), wn.synset("bird.n.01"), 1)
    assert kin(dog, dog) and kin(dog, wn.synset("working_dog.n.01"), 0)
    with pytest.raises(KeyError, match="unknown synset 'dog.n.99'"):
        synset_from_ref("dog.n.99", wn)
    with pytest.raises(KeyError, match="neither a wnid"):
        synset_from_ref("doggy dog", wn)


# ---------------------------------------------------------------------------------------------
# Lemma resolution and sense ranking
# ---------------------------------------------------------------------------------------------
def test_lemma_forms_and_noun_senses(wn):
    assert T.lemma_forms("T-shirt") == ["t-shirt", "t_shirt", "tshirt"]
    assert T.split_qualifier("kite (bird of prey)") == ("kite", "bird of prey")
    assert T.noun_senses("kite (bird of prey)", wn)[1][3].name() == "kite.n.04"
    lemma, senses = T.noun_senses("mice", wn)
    assert lemma == "mouse" and senses[0].name() == "mouse.n.01"
    assert T.noun_senses("Sports Cars", wn)[1] == [wn.synset("sports_car.n.01")]
    assert T.noun_senses("T-shirt", wn)[1] == [wn.synset("jersey.n.03")]
    assert T.noun_senses("aquarium fish", wn) == (None, [])
    assert T.head_noun("aquarium fish", wn)[0] == "fish"


def test_sense_ranking_frequency_alone_is_not_enough(wn):
    # raccoon: both senses have count 0, WordNet lists the fur first; boxer: the person sense is the frequent one.
    names = ["raccoon", "boxer", "beagle", "giraffe"]
    senses = [T.noun_senses(n, wn)[1] for n in names]
    lemmas = [T.noun_senses(n, wn)[0] for n in names]
    freq_only = T.SenseWeights(embedding=0.0, frequency=1.0, physical=0.0, domain=0.0)
    zero_sim = [np.zeros(len(s)) for s in senses]
    pick = lambda sc: [s[int(np.argmax(x))].name() for s, x in zip(senses, sc)]  # noqa: E731
    assert pick(T.score_senses(zero_sim, senses, lemmas, freq_only))[:2] == ["raccoon.n.01", "boxer.n.01"]
    # the domain term alone (what the other classes are about: animals) picks the animal senses
    domain_only = T.SenseWeights(embedding=0.0, frequency=0.0, physical=0.0, domain=1.0)
    assert pick(T.score_senses(zero_sim, senses, lemmas, domain_only))[:2] == ["raccoon.n.02", "boxer.n.04"]


def test_basic_names_land_on_their_everyday_senses(encoder, wn):
    # Against every noun sense of these names (the exact synsets are nodes), the ranking picks the picturable one.
    names = ["dog", "bird", "fish", "plant", "bicycle", "giraffe", "raccoon", "table", "frog"]
    truth = ["dog.n.01", "bird.n.01", "fish.n.01", "plant.n.02", "bicycle.n.01", "giraffe.n.01", "raccoon.n.02",
             "table.n.02", "frog.n.01"]
    nodes = sorted({"n%08d" % s.offset() for n in names for s in T.noun_senses(n, wn)[1]}
                   | set(ids(wn, "bicycling.n.01", "giraffa.n.01", "working_dog.n.01")))
    ms = match(names, nodes, encoder, wn)
    assert [synset_from_ref(m.wnid, wn).name() for m in ms] == truth
    assert all(m.method == "lemma" and "the synset itself" in m.reason for m in ms)
    assert ms[0].candidates[0][0] == "n02084071" and len(ms[0].candidates) == 5


# ---------------------------------------------------------------------------------------------
# The cases and the hierarchy guard
# ---------------------------------------------------------------------------------------------
def test_dog_lands_on_dog_not_working_dog(encoder, wn):
    nodes = ids(wn, "working_dog.n.01", "hunting_dog.n.01", "dog.n.01", "car.n.01", "motor_vehicle.n.01")
    text_only = T.match_classes(["dog", "car"], nodes, [T.lemma_node_text(w, wn) for w in nodes], encoder)
    # the text-only rule: a dog breed group (hunting dog here, working dog over the reported SDAG): the bug
    assert text_only[0].wnid == "n02087122"
    ms = match(["dog", "car"], nodes, encoder, wn)
    assert [m.wnid for m in ms] == ["n02084071", "n02958343"]
    assert ms[0].synset == "n02084071" and ms[0].refused is None


def test_guard_refuses_hypernym_accepts_synset_and_hyponym(encoder, wn):
    nodes = ids(wn, "dog.n.01", "car.n.01", "bird.n.01", "animal.n.01", "vehicle.n.01", "working_dog.n.01")
    ms = match(["dog", "car", "bird", "frog"], nodes, encoder, wn)
    assert [m.wnid for m in ms[:3]] == ids(wn, "dog.n.01", "car.n.01", "bird.n.01")
    frog = ms[3]
    assert frog.wnid is None and frog.refused == "n00015388" and frog.synset == "n01639765"
    assert "'frog' matched 'animal', a hypernym: no labelled node at or below 'frog' (frog.n.01)" in frog.reason
    # a hyponym node covers the class ("working dog" serves "dog")
    ms = match(["dog", "car"], ids(wn, "working_dog.n.01", "car.n.01", "animal.n.01"), encoder, wn)
    assert ms[0].wnid == "n02103406" and "a hyponym (working dog) of 'dog'" in ms[0].reason
    # a name that WordNet knows but the SDAG cannot serve at all is uncovered, with its reason
    ms = match(["photosynthesis", "dog"], ids(wn, "dog.n.01", "car.n.01"), encoder, wn)
    assert ms[0].wnid is None and "no labelled node at or below it" in ms[0].reason


def test_synonyms_share_no_node_and_hypernym_classes_are_both_kept(encoder, wn):
    nodes = ids(wn, "car.n.01", "dog.n.01", "terrier.n.01", "animal.n.01")
    ms = match(["automobile", "car", "dog", "terrier"], nodes, encoder, wn)
    got = {m.class_name: m.wnid for m in ms}
    assert sorted([got["automobile"], got["car"]], key=str) == sorted([None, "n02958343"], key=str)
    loser = next(m for m in ms[:2] if m.wnid is None)
    assert "(one node per class)" in loser.reason
    assert got["dog"] == "n02084071" and got["terrier"] == "n02092468"
    assert "'dog' is a hypernym of 'terrier' in this task (both kept)" in ms[2].reason


def test_text_path_for_non_lemmas_and_unrelated_concepts(encoder, wn):
    nodes = ids(wn, "goldfish.n.01", "fish.n.01", "dog.n.01", "car.n.01", "animal.n.01")
    ms = match(["aquarium fish", "electricity bill", "jazz music"], nodes, encoder, wn)
    assert ms[0].method == "text" and ms[0].wnid in ids(wn, "goldfish.n.01", "fish.n.01")
    assert ms[1].wnid is None and ms[2].wnid is None
    assert "threshold 0.40" in ms[1].reason


def test_compound_names_through_their_modifier_or_head(encoder, wn):
    cs = lambda n: (lambda r: (r[0], [x.name() for x in r[1]], r[2]))(T.compound_senses(n, wn))
    assert cs("snoek fish") == ("snoek", ["barracouta.n.01"], "modifier")  # snoek's first sense is a fish
    assert cs("Alpine ibex") == ("ibex", ["ibex.n.01"], "head")
    assert cs("stop sign")[2] == "head"  # stop's first sense is no sign (only stop.n.07, a full stop, is)
    for phrase in ("tights for gymnastics", "cardboard box / carton", "red wolf or maned wolf", "dog"):
        assert cs(phrase) == (None, [], None)
    nodes = ids(wn, "barracouta.n.01", "scorpaenoid.n.01", "fish.n.01", "ibex.n.01", "goat.n.01", "dog.n.01",
                "car.n.01", "match.n.01")
    on = match(["snoek fish", "Alpine ibex", "football match"], nodes, encoder, wn)
    off = match(["snoek fish", "Alpine ibex", "football match"], nodes, encoder, wn, compounds=False)
    assert on[0].wnid == ids(wn, "barracouta.n.01")[0] and on[0].method == "lemma"
    assert "modifier 'snoek': barracouta.n.01" in on[0].reason and "a kind of its head noun" in on[0].reason
    # no node reaches the text floor for "Alpine ibex"; its head noun's only sense has a node
    assert off[1].wnid is None and off[1].similarity < T.match.TEXT_THRESHOLD
    assert on[1].wnid == ids(wn, "ibex.n.01")[0] and on[1].method == "head"
    assert "head noun 'ibex': ibex.n.01" in on[1].reason and "no node was similar enough" in on[1].reason
    # "football match": the contest sense of "match" wins and no node serves it, so the matchstick node is no rescue
    assert on[2].wnid is None and off[2].wnid is None
    # a text match to a strict hypernym of the head noun ("footwear" over "shoe") gives way to the head's hyponym
    nodes = ids(wn, "footwear.n.02", "dog.n.01", "car.n.01", "loafer.n.02")
    on = match(["slip-on shoe", "dog"], nodes, encoder, wn)
    off = match(["slip-on shoe", "dog"], nodes, encoder, wn, compounds=False)
    assert off[0].wnid == ids(wn, "footwear.n.02")[0]
    assert on[0].wnid == ids(wn, "loafer.n.02")[0] and on[0].method == "head"
    assert "is a hypernym of its head noun 'shoe'" in on[0].reason


# ---------------------------------------------------------------------------------------------
# User-given synsets and class specs
# ---------------------------------------------------------------------------------------------
def test_user_given_wnids_and_synset_names(encoder, wn):
    nodes = ids(wn, "domestic_cat.n.01", "dog.n.01", "car.n.01", "animal.n.01")
    specs = T.parse_class_specs("kitty=n02121620, dog.n.01, auto=car.n.01", wn)
    assert specs == [T.ClassSpec("kitty", "n02121620"), T.ClassSpec("dog", "n02084071"),
                     T.ClassSpec("auto", "n02958343")]
    ms = T.match_classes([s.name for s in specs], nodes, None, encoder, wn=wn, specs=specs)
    assert [m.wnid for m in ms] == ["n02121808", "n02084071", "n02958343"]  # kitty: cat.n.01 -> its hyponym
    assert all(m.method == "wnid" for m in ms) and "given by the user as cat.n.01" in ms[0].reason
    # a class written as a wnid is resolved without specs
    ms = match(["n02084071", "car"], nodes, encoder, wn)
    assert ms[0].wnid == "n02084071" and ms[0].class_name == "n02084071" and ms[0].method == "wnid"


def test_class_spec_parsing_and_files(tmp_path, wn):
    assert T.parse_class_spec("jaguar: the big cat of the Americas", wn) == T.ClassSpec(
        "jaguar", None, "the big cat of the Americas")
    assert T.ClassSpec("jaguar", None, "big cat").query() == "jaguar: big cat"
    assert T.parse_class_spec("n02084071", wn) == T.ClassSpec("dog", "n02084071")
    (tmp_path / "c.json").write_text(json.dumps(
        ["dog", {"name": "kitty", "wnid": "n02121620"}, {"name": "jaguar", "description": "a big cat"}]))
    assert T.read_class_file(tmp_path / "c.json", wn) == [
        T.ClassSpec("dog"), T.ClassSpec("kitty", "n02121620"), T.ClassSpec("jaguar", None, "a big cat")]
    (tmp_path / "c.csv").write_text("name,wnid,description\ndog,,\nkitty,cat.n.01,\njaguar,,a big cat\n")
    assert T.read_class_file(tmp_path / "c.csv", wn) == [
        T.ClassSpec("dog"), T.ClassSpec("kitty", "n02121620"), T.ClassSpec("jaguar", None, "a big cat")]
    (tmp_path / "c.txt").write_text("# my task\ndog\nkitty=n02121620  # a cat\n")
    assert T.read_class_file(tmp_path / "c.txt", wn) == [T.ClassSpec("dog"), T.ClassSpec("kitty", "n02121620")]


def test_clear_errors_for_unknown_synsets(encoder, wn, tmp_path):
    with pytest.raises(ClassNamesError, match="class 'kitty': unknown wnid 'n99999999'"):
        T.parse_class_specs("kitty=n99999999", wn)
    with pytest.raises(ClassNamesError, match="unknown synset 'dog.n.42'"):
        T.parse_class_specs("dog, dog.n.42", wn)
    with pytest.raises(ClassNamesError, match="neither a wnid"):
        T.parse_class_specs("kitty=cat", wn)
    with pytest.raises(ClassNamesError, match="duplicate class names"):
        T.parse_class_specs("dog, Dog=n02084071", wn)
    with pytest.raises(ClassNamesError, match="cannot read class file"):
        T.read_class_file(tmp_path / "missing.json", wn)
    with pytest.raises(ClassNamesError, match="not valid JSON"):
        T.parse_class_specs("[1, 2", wn)
    with pytest.raises(ClassNamesError, match="unknown wnid 'n00000001'"):
        match(["n00000001"], ids(wn, "dog.n.01"), encoder, wn)
    with pytest.raises(ClassNamesError, match="do not belong"):
        T.match_classes(["dog"], ids(wn, "dog.n.01"), None, encoder, wn=wn, specs=[T.ClassSpec("cat")])
    assert issubclass(ClassNamesError, MLLError)
    with pytest.raises(ValueError, match="need WordNet"):
        T.match_classes(["dog"], ids(wn, "dog.n.01"), None, encoder, specs=[T.ClassSpec("dog")])


def test_a_class_whose_best_sense_node_is_taken_moves_to_its_next_servable_sense(encoder, wn):
    # "automobile" has one noun sense (its only choice, so it ranks first); "car" also names the railway car
    # (car.n.02, the ImageNet "missile"/"projectile, missile" situation): with that node present, "car" moves there
    # and says why; without it, "car" is reported (one node per class), never put on a hypernym.
    nodes = ids(wn, "car.n.01", "car.n.02", "dog.n.01", "vehicle.n.01")
    auto, car = match(["automobile", "car"], nodes, encoder, wn)
    assert auto.wnid == "n02958343" and car.wnid == "n02959942" and car.synset == "n02959942"
    assert "went to 'automobile' (one node per class): its next sense car.n.02" in car.reason
    auto, car = match(["automobile", "car"], ids(wn, "car.n.01", "dog.n.01", "vehicle.n.01"), encoder, wn)
    assert auto.wnid == "n02958343" and car.wnid is None and "(one node per class)" in car.reason
