"""The hierarchy guard: where WordNet places a class's synset relative to the SDAG's nodes.

A node *covers* a class when it is the class's own synset or one of its hyponyms (a "working dog" node serves the
class "dog": every working dog is a dog).  A node that is a strict **hypernym** of the class does not: the experts
of "animal" fire on every animal, so matching "frog" to "animal" would predict "frog" for every animal image.
Such a match is refused with a reason ("'frog' matched 'animal', a hypernym: no labelled node at or below
'frog'").  :class:`Placement` lists, for one synset, the candidate node that is the synset itself, the candidate
nodes below it and those above it.  Nodes that are not WordNet synsets (custom SDAG nodes) are never placed:
only the text matching can reach them.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from mll_jax.wordnet import ancestors, descendants, is_wnid, synset_from_wnid, wnid

__all__ = ["Placement", "NodeIndex", "hypernym_reason", "uncovered_reason"]


class Placement(NamedTuple):
    """Candidate node indices relative to one synset: ``exact`` (the synset itself, or -1), ``below`` (its
    hyponyms, transitively) and ``above`` (its hypernyms, deepest first)."""

    exact: int
    below: tuple[int, ...]
    above: tuple[int, ...]

    @property
    def servable(self) -> bool:
        """True when a candidate node covers the synset (itself or a hyponym)."""
        return self.exact >= 0 or bool(self.below)


class NodeIndex:
    """The candidate nodes (wnids) of one matching call, with WordNet lookups memoised per synset."""

    def __init__(self, wnids: Sequence[str], wn):
        self.wnids = list(wnids)
        self.wn = wn
        self.index = {w: i for i, w in enumerate(self.wnids)}
        self._placed: dict = {}

    def synset(self, i: int):
        """The WordNet synset of node ``i``, or None for a custom node."""
        w = self.wnids[i]
        if not is_wnid(w):
            return None
        try:
            return synset_from_wnid(w, self.wn)
        except KeyError:
            return None

    def place(self, synset) -> Placement:
        """Where the candidate nodes lie relative to ``synset`` (see :class:`Placement`)."""
        p = self._placed.get(synset)
        if p is None:
            idx = self.index
            below = tuple(sorted(idx[w] for w in (wnid(d) for d in descendants(synset)) if w in idx))
            anc = sorted(ancestors(synset), key=lambda a: -len(ancestors(a)))  # deepest first
            above = tuple(idx[w] for w in (wnid(a) for a in anc) if w in idx)
            p = Placement(idx.get(wnid(synset), -1), below, above)
            self._placed[synset] = p
        return p


def _lemma(synset) -> str:
    return synset.lemmas()[0].name().replace("_", " ")


def hypernym_reason(class_name: str, node_synset, class_synset) -> str:
    """The refusal of a hypernym match, e.g. ``"'frog' matched 'animal', a hypernym: no labelled node at or below
    'frog' (frog.n.01)"``."""
    return (f"{class_name!r} matched {_lemma(node_synset)!r}, a hypernym: no labelled node at or below "
            f"{_lemma(class_synset)!r} ({class_synset.name()})")


def uncovered_reason(class_name: str, class_synset) -> str:
    """The refusal when no candidate node is at, below or above the class's synset."""
    return (f"{class_name!r} is {class_synset.name()} ({class_synset.definition()}): no labelled node at or "
            f"below it")
