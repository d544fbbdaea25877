"""Lemma resolution and sense ranking: which WordNet noun synset does a class name mean?

**Lemma resolution** (:func:`noun_senses`).  A trailing parenthetical qualifier is set aside ("kite (bird of
prey)" -> lemma "kite", the whole name still ranks the senses); case, spaces, hyphens and underscores are
normalised ("T-shirt", "t shirt", "ankle_boot") and plurals are reduced with WordNet's own morphology (nltk
``wn.morphy``: "mice" -> "mouse", "sports cars" -> "sports car").  A name with noun senses is a *lemma*; the other
names ("aquarium fish") are matched by their text alone (:mod:`mll_jax.text.match`).

**Sense ranking** (:func:`score_senses`).  Every noun sense ``s`` of class ``c`` gets

    score = w_emb * similarity(c, s) + w_freq * log p(s | lemma) + w_phys * [s is a physical entity]
            + w_domain * D(s) / 10

* ``similarity``: cosine of the class text (name, or "name: description") and the sense's text (all lemmas +
  definition, :func:`mll_jax.text.nodes.synset_lemma_text`);
* ``p(s | lemma)``: WordNet's sense frequency counts (``cntlist``; nltk ``Lemma.count()``), add-one smoothed
  over the lemma's senses;
* ``[physical]``: the sense is under ``physical_entity.n.01`` (image classes are things, not ideas);
* ``D(s)``: what the task's other classes say about the domain: the mean, over the other lemma classes, of the
  depth of the deepest hypernym ``s`` shares with that class's current best sense (two passes: the first without
  ``D``).  "boxer" among dog breeds shares *dog* (depth 13) with them; the boxer (person) sense only *organism*.

Frequency alone picks the fur of "raccoon" and the person "Boxer"; the embedding alone picks "bicycling" for
"bicycle".  The weights (:data:`DEFAULT_SENSE_WEIGHTS`) were set once, then each term was measured by leaving it
out (``benchmarks/match_bench.py``, ``results/match_bench.md``, top-1 against all 82,115 nouns): frequency lifts
the 30 basic-level names from 46.7% to 86.7% and ImageNet-1k from 82.3% to 82.8%; the physical-entity term adds
3.3 points on the basic names and 0.8 on ImageNet; the domain term takes the basic names to 100% and ImageNet to
83.9%, at the cost of one COCO name (86.2% -> 85.0%).
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple, Sequence

import numpy as np

from mll_jax.wordnet import ancestors, depth, is_physical, sense_count

__all__ = ["SenseWeights", "DEFAULT_SENSE_WEIGHTS", "split_qualifier", "lemma_forms", "noun_senses", "head_noun",
           "Compound", "compound_senses", "sense_prior", "domain_scores", "score_senses"]

_QUALIFIER = re.compile(r"^(.*?)\s*\(([^()]*)\)\s*$")


class SenseWeights(NamedTuple):
    """Weights of the sense-ranking terms."""

    embedding: float = 1.0
    frequency: float = 0.1
    physical: float = 0.1
    domain: float = 0.3


#: The measured default (see ``results/match_bench.md``).
DEFAULT_SENSE_WEIGHTS = SenseWeights()


def split_qualifier(name: str) -> tuple[str, str | None]:
    """``"kite (bird of prey)"`` -> ``("kite", "bird of prey")``; other names -> ``(name, None)``."""
    m = _QUALIFIER.match(name.strip())
    if m and m.group(1):
        return m.group(1), m.group(2).strip() or None
    return name.strip(), None


def lemma_forms(name: str) -> list[str]:
    """Spellings of a class name to look up in WordNet (lower case, words joined by ``_``), most literal first:
    ``"T-shirt"`` -> ``["t-shirt", "t_shirt", "tshirt"]``."""
    base = " ".join(split_qualifier(name)[0].replace("_", " ").split()).lower()
    out = [base.replace(" ", "_")]
    if "-" in base:
        out += [base.replace("-", " ").replace(" ", "_"), base.replace("-", "").replace(" ", "_")]
    if "'" in base:
        out.append(base.replace("'", "").replace(" ", "_"))
    return list(dict.fromkeys(f for f in out if f.strip("_")))


def noun_senses(name: str, wn) -> tuple[str | None, list]:
    """``(lemma, senses)``: the first spelling of ``name`` (:func:`lemma_forms`, plurals reduced by
    ``wn.morphy``) that has WordNet noun senses, in WordNet's sense order; ``(None, [])`` if none has."""
    for form in lemma_forms(name):
        senses = wn.synsets(form, pos="n")
        if senses:
            base = wn.morphy(form, "n") or form
            return base, senses
    return None, []


def head_noun(name: str, wn) -> tuple[str | None, list]:
    """The head (last word) of a multi-word name that is not a lemma, with its noun senses:
    ``"aquarium fish"`` -> ``("fish", [fish.n.01, ...])``; ``(None, [])`` for one-word names or unknown heads."""
    words = split_qualifier(name)[0].replace("-", " ").replace("_", " ").split()
    if len(words) < 2:
        return None, []
    return noun_senses(words[-1], wn)


#: Words that make a name a phrase rather than a compound ("tights for gymnastics", "red wolf or maned wolf").
_PHRASE_WORDS = frozenset("a an the of for or and with in on at to by from as having".split())


class Compound(NamedTuple):
    """How :func:`compound_senses` reads a multi-word name: ``lemma`` and ``senses`` to resolve it by, ``kind``
    (``"modifier"``, ``"head"`` or None), and its ``head`` noun with the head's senses."""

    lemma: str | None
    senses: list
    kind: str | None
    head: str | None = None
    head_senses: Sequence = ()


def compound_senses(name: str, wn) -> Compound:
    """A multi-word name that is no lemma, read as a compound (English compounds are head-final: an "X Y" is a
    kind of Y).  Returns a :class:`Compound` ``(lemma, senses, kind, head, head_senses)``:

    * ``kind="modifier"``: the modifier words form a lemma whose first (most frequent) sense is a kind of a sense
      of the head ("snoek fish" -> snoek, barracouta.n.01, a fish; "rickshaw vehicle" -> jinrikisha.n.01): the
      modifier's senses that are kinds of the head;
    * ``kind="head"``: otherwise the head noun's senses ("Alpine ibex" -> ibex.n.01): the class is that sense or
      one of its hyponyms;
    * ``(None, [], None, None, [])`` for one-word names, phrases (a function word, a comma or a slash: "tights for
      gymnastics", "cardboard box / carton") and unknown heads.
    """
    base = split_qualifier(name)[0]
    words = base.replace("_", " ").split()
    if len(words) < 2 or any(c in base for c in ",/;:") or any(w.lower() in _PHRASE_WORDS for w in words):
        return Compound(None, [], None)
    head, hs = noun_senses(words[-1], wn)
    if not hs:
        return Compound(None, [], None)
    mod, ms = noun_senses(" ".join(words[:-1]), wn)
    kinds = [m for m in ms if any(h in ancestors(m) for h in hs)]
    if ms and ms[0] in kinds:
        return Compound(mod, kinds, "modifier", head, hs)
    return Compound(head, hs, "head", head, hs)


def sense_prior(senses: Sequence, lemma: str | None) -> np.ndarray:
    """``log p(s | lemma)`` from WordNet's sense counts, add-one smoothed over the senses."""
    counts = np.array([sense_count(s, lemma) if lemma else 0 for s in senses], np.float64) + 1.0
    return np.log(counts / counts.sum())


def _closure(s) -> frozenset:
    return ancestors(s) | {s}


def domain_scores(senses: Sequence[Sequence], current: Sequence, active: Sequence[bool]) -> list[np.ndarray]:
    """``D(s)`` for every sense of every class: mean over the other active classes ``j`` of the depth of the
    deepest common hypernym of ``s`` and ``current[j]`` (see the module docstring).

    Counting form: with ``n(a)`` the number of other classes whose current sense is at or below ``a``, the
    ancestors of ``s`` are taken deepest first and each adds ``depth(a)`` for the classes it covers beyond the
    deeper ones (exact on tree-shaped hierarchies, a close bound where WordNet has several parents)."""
    counts: dict = {}
    closures = [(_closure(c) if (c is not None and a) else frozenset()) for c, a in zip(current, active)]
    for cl in closures:
        for x in cl:
            counts[x] = counts.get(x, 0) + 1
    n_active = sum(1 for c, a in zip(current, active) if a and c is not None)
    out = []
    for i, ss in enumerate(senses):
        own = closures[i]
        others = n_active - (1 if own else 0)
        row = np.zeros(len(ss))
        if others > 0:
            for k, s in enumerate(ss):
                anc = sorted(_closure(s), key=depth, reverse=True)
                covered, total = 0, 0.0
                for a in anc:
                    n = counts.get(a, 0) - (1 if a in own else 0)
                    if n > covered:
                        total += (n - covered) * depth(a)
                        covered = n
                row[k] = total / others
        out.append(row)
    return out


def score_senses(similarity: Sequence[np.ndarray], senses: Sequence[Sequence], lemmas: Sequence[str | None],
                 weights: SenseWeights = DEFAULT_SENSE_WEIGHTS, *, servable: Sequence[np.ndarray] | None = None
                 ) -> list[np.ndarray]:
    """Scores of every sense of every class (see the module docstring).

    ``similarity[i]``: the class-``i`` text's cosine similarity to each of its senses' texts; ``senses[i]`` the
    senses (``[]`` for classes that are not lemmas), ``lemmas[i]`` the lemma they were found under.  The domain
    term uses each class's best sense among the ``servable`` ones when given (what the task can really be
    about), else among all."""
    base = []
    for sim, ss, lem in zip(similarity, senses, lemmas):
        if not len(ss):
            base.append(np.zeros(0))
            continue
        b = weights.embedding * np.asarray(sim, np.float64)
        if weights.frequency:
            b += weights.frequency * sense_prior(ss, lem)
        if weights.physical:
            b += weights.physical * np.array([is_physical(s) for s in ss], np.float64)
        base.append(b)
    if not weights.domain or sum(1 for ss in senses if len(ss)) < 2:
        return base

    def best(scores):
        cur = []
        for i, (sc, ss) in enumerate(zip(scores, senses)):
            if not len(ss):
                cur.append(None)
                continue
            ok = servable[i] if servable is not None and np.any(servable[i]) else np.ones(len(ss), bool)
            cur.append(ss[int(np.argmax(np.where(ok, sc, -math.inf)))])
        return cur

    active = [len(ss) > 0 for ss in senses]
    dom = domain_scores(senses, best(base), active)
    return [b + weights.domain * d / 10.0 for b, d in zip(base, dom)]
