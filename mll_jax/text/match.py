"""Class names -> SDAG nodes: :func:`match_classes`.

**Text only** (``wn=None``, the original rule): every class takes a node by cosine similarity of text embeddings
with the one-to-one mutual-best rule and the coverage threshold (:func:`mll_jax.text.core.match_embeddings`).

**WordNet-aware** (``wn=`` a WordNet reader; what the system uses).  Per class, in this order:

1. *The user's synset* (a :class:`~mll_jax.text.specs.ClassSpec` with a wnid, or a class written as a wnid /
   synset name): the class is that synset.
2. *Lemma path*: a name with WordNet noun senses (:func:`mll_jax.text.senses.noun_senses`) is the sense that
   scores best (:func:`mll_jax.text.senses.score_senses`: text similarity, sense frequency, physical entity, the
   task's domain) among the senses some candidate node covers.
   A compound that is no lemma but whose modifier is ("snoek fish", "rickshaw vehicle": the modifier's first
   sense is a kind of the head noun, :func:`mll_jax.text.senses.compound_senses`) takes this path under the
   modifier's lemma, when a node serves it.
3. *Text path*: other names ("aquarium fish") take the most similar node at or above the threshold (with
   ``head_nouns=True``, only nodes that are kinds or near relatives of a sense of the name's head noun).
4. *Head path* (``compounds=True``): a compound the text path left uncovered ("Alpine ibex": no node reaches
   the threshold) or matched to a strict hypernym of its head noun ("slip-on shoe" -> *footwear*) takes a node
   at or below the head noun's best sense (scored as in 2, without the domain term), most similar hyponym
   first, if a node serves that sense; "electricity bill" (a bill to pay, no node) stays uncovered.

A class with a synset (1, 2) lands on the synset's own node, else on its most similar hyponym node.  The
**hierarchy guard** (:mod:`mll_jax.text.guard`) refuses a node that is a strict hypernym of the class (of its
synset, or for the text path of every sense of its head noun): "frog" over {dog, car, bird, animal} is refused
with "'frog' matched 'animal', a hypernym: no labelled node at or below 'frog' (frog.n.01)".  A lemma whose
senses no candidate node covers is uncovered with its reason.  Refused and uncovered classes get
``Match.wnid = None`` (reuse serves them with the zero-shot patch) and the reason in ``Match.reason``.

**One node per class.**  Two classes never share a node (they would get identical labels): classes are served
in order -- user synsets and exact synset nodes first, then hyponym nodes by similarity, then text matches by
decreasing similarity -- and a class whose nodes are all taken is uncovered with the reason ("'car' and
'automobile' both mean car.n.01; its node went to 'car'").  Synonyms are thus reported, not merged.  When one
class is a hypernym of another ("dog" and "terrier" in one task), both keep their own nodes; the broader class's
node also shows the narrower one's images, which the reason notes ("'dog' is a hypernym of 'terrier' in this
task").
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

from mll_jax.names import check_class_names
from mll_jax.text.cache import encode_cached
from mll_jax.text.core import DEFAULT_THRESHOLD, match_embeddings
from mll_jax.text.encoder import TextEncoder
from mll_jax.text.guard import NodeIndex, hypernym_reason, uncovered_reason
from mll_jax.text.nodes import DEFAULT_QUERY_FORMAT, query_texts, synset_lemma_text, wordnet_node_texts
from mll_jax.text.senses import (DEFAULT_SENSE_WEIGHTS, SenseWeights, compound_senses, head_noun, noun_senses,
                                 score_senses)
from mll_jax.text.specs import ClassSpec, resolve_specs
from mll_jax.wordnet import ancestors, hypernyms, kin, synset_from_wnid, wnid as synset_wnid

__all__ = ["Match", "MATCH_FIELDS", "match_classes", "NUM_REPORTED_CANDIDATES", "HEAD_KIN_LEVELS", "SIBLING_LEVELS", "TEXT_THRESHOLD"]

#: How many scored candidates (senses or nodes) a :class:`Match` reports.
NUM_REPORTED_CANDIDATES = 5
#: In WordNet-aware matching, the similarity floor of a text match (a name that is no WordNet lemma) is the larger
#: of ``threshold`` and this: such names have no WordNet sense to vouch for them ("jazz music", "bitcoin").  Set
#: from the similarities of the unrelated list 'a' of ``benchmarks/data/unrelated.json`` and of the ImageNet-1k
#: names that are no lemmas (4 of 148 fall below it); checked on the held-out list 'b' (0 of 20 accepted).
TEXT_THRESHOLD = 0.40
#: A text match must be at most this many levels from a sense of the name's head noun (1: a sibling).
HEAD_KIN_LEVELS = 1
#: A lemma with no node at or below its sense may take a node this many levels up (1: below the sense's
#: parents; 0: never) if the text similarity reaches the threshold.
SIBLING_LEVELS = 1


class Match(NamedTuple):
    """One class's match: ``wnid`` is None when the SDAG does not cover the class.

    ``similarity`` is the cosine similarity of the assigned node (of the best, or of the refused, node if
    uncovered).  WordNet-aware matching also fills: ``synset`` (the class's own synset as a wnid, when known),
    ``method`` ("wnid": given by the user, "lemma", "text", "head": a compound placed by its head noun, with
    ``synset`` None), ``candidates`` (the scored senses of a lemma or the
    nearest nodes of a text match: ``((wnid, score), ...)``, best first), ``reason`` (why the winner won, or why
    the class is uncovered) and ``refused`` (the node the hierarchy guard refused, or None).
    """

    class_name: str
    wnid: str | None
    similarity: float
    synset: str | None = None
    method: str = "text"
    candidates: tuple = ()
    reason: str = ""
    refused: str | None = None

    def updated(self, **changes) -> "Match":
        """A copy with some fields changed (``Match.updated(wnid=None)``)."""
        return Match(*(changes.get(f, v) for f, v in zip(MATCH_FIELDS, self)))

    def record(self) -> dict:
        """How the class was matched, JSON-able (kept in a :class:`mll_jax.selection.Selection` as ``matching``):
        ``method``, ``synset``, ``candidates`` (``[[wnid, score], ...]``), ``reason``, ``refused``."""
        return {"method": self.method, "synset": self.synset,
                "candidates": [[str(w), float(s)] for w, s in self.candidates],
                "reason": self.reason, "refused": self.refused}


#: The field names of :class:`Match`, in order.
MATCH_FIELDS = ("class_name", "wnid", "similarity", "synset", "method", "candidates", "reason", "refused")


def match_classes(class_names: Sequence[str], wnids: Sequence[str], node_texts: Sequence[str] | None,
                  encoder: TextEncoder | None = None, threshold: float = DEFAULT_THRESHOLD,
                  cache_dir: str | os.PathLike | None = None, *, mutual: bool = True,
                  query_format: str = DEFAULT_QUERY_FORMAT, wn=None, specs: Sequence[ClassSpec] | None = None,
                  sense_weights: SenseWeights = DEFAULT_SENSE_WEIGHTS, head_nouns: bool = False,
                  siblings: bool = True, text_threshold: float | None = TEXT_THRESHOLD,
                  compounds: bool = True) -> list[Match]:
    """Match task class names to SDAG nodes (see the module docstring for the rules).

    ``node_texts``: one text per wnid (``SDAG.text``); None builds them from WordNet.
    ``encoder``: a :class:`TextEncoder` (None: the default all-MiniLM-L6-v2).
    ``cache_dir``: where node embeddings are cached (None: not cached).
    ``wn``: a WordNet reader (:func:`mll_jax.wordnet.get_wordnet`) turns on the lemma path and the hierarchy
    guard; ``specs`` (one :class:`ClassSpec` per class name, same names) carries user-given synsets and
    descriptions.  ``sense_weights``, ``head_nouns`` (a text match must be a kind of the name's head noun),
    ``siblings`` (a lemma without a node at or below it may take a near relative) and ``compounds`` (modifier
    lemmas and the head path, steps 2 and 4 of the module docstring) are the measured rules,
    adjustable for experiments; ``text_threshold`` (None: ``threshold``) is the floor of text matches in this
    mode (:data:`TEXT_THRESHOLD`).
    """
    if not isinstance(class_names, str) and len(class_names) == 0:
        return []
    class_names = check_class_names(class_names)  # a bare string, empty or duplicate names raise ClassNamesError
    wnids = list(wnids)
    if len(set(wnids)) != len(wnids):
        raise ValueError("wnids contain duplicates")
    if node_texts is None:
        node_texts = wordnet_node_texts(wnids, wn)
    node_texts = list(node_texts)
    if len(node_texts) != len(wnids):
        raise ValueError(f"got {len(wnids)} wnids but {len(node_texts)} node texts")
    if wn is not None:
        specs = resolve_specs(class_names, specs, wn)
    elif specs is not None:
        raise ValueError("class specs need WordNet: pass wn= (mll_jax.wordnet.get_wordnet())")
    if not wnids:
        return [Match(c, None, float("nan"), reason="no candidate nodes") for c in class_names]
    encoder = encoder or TextEncoder.load()
    node_emb = encode_cached(encoder, node_texts, cache_dir)
    if wn is None:
        class_emb = encoder.encode(query_texts(class_names, query_format), progress=False)
        res = match_embeddings(jnp.asarray(class_emb), jnp.asarray(node_emb), float(threshold), mutual=mutual)
        node = np.asarray(res.node)
        sim = np.asarray(res.similarity)
        return [Match(c, wnids[k] if k >= 0 else None, float(s)) for c, k, s in zip(class_names, node, sim)]
    class_emb = encoder.encode(query_texts([s.query() for s in specs], query_format), progress=False)
    return _WordNetMatcher(specs, wnids, node_texts, node_emb, class_emb, encoder, wn, float(threshold),
                           sense_weights, head_nouns, siblings,
                           max(float(threshold), float(text_threshold if text_threshold is not None else threshold)),
                           compounds).run()


def _name(synset) -> str:
    return synset.lemmas()[0].name().replace("_", " ")


class _WordNetMatcher:
    """One WordNet-aware matching call (state shared by its steps)."""

    def __init__(self, specs, wnids, node_texts, node_emb, class_emb, encoder, wn, threshold, weights, head_nouns,
                 siblings, text_threshold, compounds=True):
        self.siblings_on, self.text_threshold, self.compounds = siblings, text_threshold, compounds
        self.specs, self.wnids, self.wn = specs, wnids, wn
        self.node_emb, self.class_emb = node_emb, class_emb
        self.nodes = NodeIndex(wnids, wn)
        self.threshold, self.weights, self.head_nouns = threshold, weights, head_nouns
        self.text_rows = {t: i for i, t in enumerate(node_texts)}
        self.encoder = encoder
        C = len(specs)
        self.senses: list[list] = [[] for _ in range(C)]
        self.lemma: list[str | None] = [None] * C
        self.method = ["text"] * C
        self.compound: list[str | None] = [None] * C  # "modifier": a compound resolved through its modifier
        self.head: list[tuple] = [(None, [])] * C  # a compound's head noun and its senses

    # -- similarities ----------------------------------------------------------------------------------------
    def node_sim(self, i: int, idx) -> np.ndarray:
        return self.node_emb[np.asarray(idx, np.int64)] @ self.class_emb[i]

    def sense_embeddings(self, synsets) -> dict:
        """Embeddings of the senses' texts (all lemmas + definition), reusing equal node texts."""
        texts = {s: synset_lemma_text(s) for s in synsets}
        missing = sorted({t for t in texts.values() if t not in self.text_rows})
        enc = dict(zip(missing, self.encoder.encode(missing, progress=False))) if missing else {}
        return {s: (self.node_emb[self.text_rows[t]] if t in self.text_rows else enc[t]) for s, t in texts.items()}

    # -- steps -----------------------------------------------------------------------------------------------
    def resolve(self) -> None:
        for i, sp in enumerate(self.specs):
            if sp.wnid is not None:
                self.senses[i], self.method[i] = [synset_from_wnid(sp.wnid, self.wn)], "wnid"
            else:
                lemma, ss = noun_senses(sp.name, self.wn)
                if ss:
                    self.senses[i], self.lemma[i], self.method[i] = ss, lemma, "lemma"
                elif self.compounds:
                    c = compound_senses(sp.name, self.wn)
                    self.head[i] = (c.head, list(c.head_senses))
                    if c.kind == "modifier":
                        self.senses[i], self.lemma[i], self.method[i] = c.senses, c.lemma, "lemma"
                        self.compound[i] = c.kind

    def run(self) -> list[Match]:
        self.resolve()
        C = len(self.specs)
        emb = self.sense_embeddings({s for ss in self.senses for s in ss})
        sims = [np.array([float(emb[s] @ self.class_emb[i]) for s in ss]) for i, ss in enumerate(self.senses)]
        servable = [np.array([self.nodes.place(s).servable for s in ss], bool) for ss in self.senses]
        for i in range(C):  # a compound whose modifier's senses no node serves is matched by its text
            if self.compound[i] == "modifier" and not servable[i].any():
                self.senses[i], self.lemma[i], self.method[i], self.compound[i] = [], None, "text", None
                sims[i], servable[i] = np.zeros(0), np.zeros(0, bool)
        scores = score_senses(sims, self.senses, self.lemma, self.weights, servable=servable)
        out: list[Match | None] = [None] * C
        chosen: list = [None] * C
        requests = []  # (priority key, class, [node options best first])
        for i in range(C):
            if self.method[i] == "text":
                continue
            ss, sc = self.senses[i], scores[i]
            ok = servable[i] if servable[i].any() else np.ones(len(ss), bool)
            k = int(np.argmax(np.where(ok, sc, -math.inf)))
            s = chosen[i] = ss[k]
            cands = tuple((synset_wnid(ss[j]), round(float(sc[j]), 4)) for j in np.argsort(-sc, kind="stable"))
            out[i] = Match(self.specs[i].name, None, float("nan"), synset_wnid(s), self.method[i],
                           cands[:NUM_REPORTED_CANDIDATES], self.sense_reason(i, s, ss, sc))
            opts = self.node_options(i, s)
            if opts is not None:
                key, nodes_ = opts
                if key[0] == 0:  # exact synset nodes: the surest senses first
                    key = (0, -float(sc[k]))
                # the other servable senses, best first, follow: when another class holds the best sense's node
                # (two classes of one task naming one synset), the class takes its next sense that has a node
                more = []
                for j in np.argsort(-sc, kind="stable"):
                    if ss[j] != s and ok[j] and servable[i][j]:
                        o = self.node_options(i, ss[j], siblings=False)
                        if o is not None:
                            more += [(n, ss[j]) for n in o[1]]
                requests.append((key, i, [(n, s) for n in nodes_] + more))
                continue
            out[i] = self.refuse(i, out[i], s, self.nodes.place(s).above)
        taken: dict[int, int] = {}
        for _, i, options in sorted(requests, key=lambda r: r[0]):
            free = [(n, sense) for n, sense in options if n not in taken]
            if not free:
                n0 = options[0][0]
                other = self.specs[taken[n0]].name
                out[i] = out[i].updated(similarity=float(self.node_sim(i, [n0])[0]),
                                         reason=out[i].reason + f"; its node {self.wnids[n0]} went to "
                                                                f"{other!r} (one node per class)")
                continue
            n, sense = free[0]
            taken[n] = i
            note = ""
            if sense != chosen[i]:
                n0 = options[0][0]
                note = (f"; the node of {chosen[i].name()} went to {self.specs[taken[n0]].name!r} (one node per "
                        f"class): its next sense {sense.name()} ({sense.definition()})")
                chosen[i] = sense
            p = self.nodes.place(chosen[i])
            ns = self.nodes.synset(n)
            rel = ("the synset itself" if n == p.exact else
                   f"a hyponym ({_name(ns)}) of {_name(chosen[i])!r}" if n in p.below else
                   f"a near relative ({_name(ns)}, {ns.name()}): no node at or below {_name(chosen[i])!r}")
            out[i] = out[i].updated(wnid=self.wnids[n], similarity=float(self.node_sim(i, [n])[0]),
                                     synset=synset_wnid(chosen[i]),
                                     reason=out[i].reason + note + f"; node {self.wnids[n]} is {rel}")
        self.match_text(out, taken)
        if self.compounds:
            self.match_heads(out)
        self.note_hypernym_classes(out, chosen)
        return out

    def node_options(self, i: int, s, siblings: bool = True):
        """``(priority key, node indices best first)`` that can serve class ``i`` as sense ``s`` -- the synset's own
        node, else its hyponym nodes by similarity, else (``siblings``) near relatives at or above the threshold
        -- or None."""
        p = self.nodes.place(s)
        if p.exact >= 0:
            return (0, -1.0), [p.exact]
        if p.below:
            below = np.asarray(p.below)
            ns = self.node_sim(i, below)
            return (1, -float(ns.max())), [int(n) for n in below[np.argsort(-ns, kind="stable")]]
        sib = self.siblings(s) if (siblings and self.siblings_on) else []
        if sib:
            ns = self.node_sim(i, sib)
            keep = ns >= self.threshold
            if keep.any():
                sib, ns = np.asarray(sib)[keep], ns[keep]
                return (2, -float(ns.max())), [int(n) for n in sib[np.argsort(-ns, kind="stable")]]
        return None

    def siblings(self, s) -> list[int]:
        """Candidate nodes below the parents of ``s`` (``SIBLING_LEVELS`` up) that are not its hypernyms."""
        ups = {s}
        for _ in range(SIBLING_LEVELS):
            ups = {h for u in ups for h in hypernyms(u)}
        anc = self.nodes.place(s).above
        out = set()
        for u in ups:
            out.update(self.nodes.place(u).below)
        return sorted(out - set(anc))

    def sense_reason(self, i: int, s, ss, sc) -> str:
        if self.method[i] == "wnid":
            return f"given by the user as {s.name()}"
        what = "modifier" if self.compound[i] == "modifier" else "lemma"
        head = f"{what} {self.lemma[i]!r}: {s.name()} ({s.definition()})"
        if self.compound[i] == "modifier":
            head += ", a kind of its head noun"
        if len(ss) == 1:
            return head + ", its only noun sense"
        runner = [ss[j].name() for j in np.argsort(-sc, kind="stable") if ss[j] != s][:2]
        return head + f", score {float(sc[list(ss).index(s)]):.3f} over {', '.join(runner)}"

    def refuse(self, i: int, m: Match, s, above) -> Match:
        name = self.specs[i].name
        if above:
            n = above[0]
            return m.updated(similarity=float(self.node_sim(i, [n])[0]), refused=self.wnids[n],
                              reason=m.reason + "; " + hypernym_reason(name, self.nodes.synset(n), s))
        best = int(np.argmax(self.node_emb @ self.class_emb[i]))
        return m.updated(similarity=float(self.node_sim(i, [best])[0]),
                          reason=m.reason + "; " + uncovered_reason(name, s))

    def match_text(self, out: list, taken: dict) -> None:
        """Text path for the classes that are not lemmas: greedy by decreasing similarity (= mutual best)."""
        todo = [i for i, m in enumerate(out) if m is None]
        if not todo:
            return
        N = len(self.wnids)
        free = np.ones(N, bool)
        free[list(taken)] = False
        sim = self.class_emb[todo] @ self.node_emb.T
        heads, pairs = {}, []
        for r, i in enumerate(todo):
            row = np.where(free, sim[r], -np.inf)
            head, hs = head_noun(self.specs[i].name, self.wn) if self.head_nouns else (None, [])
            heads[i] = (head, hs)
            k = min(N, len(todo) + 1)
            top = np.argpartition(-row, k - 1)[:k] if k < N else np.arange(N)
            pairs += [(float(row[n]), r, int(n)) for n in top if row[n] >= self.text_threshold]
        pairs.sort(key=lambda t: (-t[0], t[1], t[2]))
        assigned: dict[int, int] = {}
        used = set()
        for s_, r, n in pairs:
            if r in assigned or n in used:
                continue
            i = todo[r]
            if self.text_guard(i, n, heads[i]) is not None:
                continue
            assigned[r] = n
            used.add(n)
        for r, i in enumerate(todo):
            name = self.specs[i].name
            order = np.argsort(-sim[r], kind="stable")[:NUM_REPORTED_CANDIDATES]
            cands = tuple((self.wnids[n], round(float(sim[r, n]), 4)) for n in order)
            head, hs = heads[i]
            if r in assigned:
                n = assigned[r]
                why = f"text match, similarity {sim[r, n]:.3f}" + (
                    f", at or below a sense of its head noun {head!r}" if hs and self.under_head(n, hs) else "")
                out[i] = Match(name, self.wnids[n], float(sim[r, n]), None, "text", cands, why)
                continue
            best = int(order[0])
            why = self.text_guard(i, best, heads[i])
            refused = self.wnids[best] if why is not None else None
            if why is None and sim[r, best] < self.text_threshold:
                why = (f"no node is similar enough (best {self.wnids[best]}, similarity {sim[r, best]:.3f} < "
                       f"threshold {self.text_threshold:.2f})")
            elif why is None:
                why = (f"its nearest node {self.wnids[best]} went to another class, and no other node is both "
                       f"similar enough and a kind of {head!r}" if hs else
                       f"its nearest node {self.wnids[best]} went to another class and no other free node reaches "
                       f"the threshold {self.text_threshold:.2f}")
            out[i] = Match(name, None, float(sim[r, best]), None, "text", cands, why, refused)

    def match_heads(self, out: list) -> None:
        """Compounds the text path left uncovered, or matched to a strict hypernym of their head noun ("slip-on
        shoe" -> footwear), take a node at or below the head's best sense (the sense ranking without the domain
        term): its hyponym nodes most similar to the name first, then its own node.  A head whose best sense no
        node serves ("electricity bill": a bill to pay) leaves the class as the text path left it."""
        used = {m.wnid for m in out if m.wnid is not None}
        for i, m in enumerate(out):
            word, hs = self.head[i]
            if self.method[i] != "text" or not hs:
                continue
            emb = self.sense_embeddings(hs)
            sim = np.array([float(emb[h] @ self.class_emb[i]) for h in hs])
            sc = score_senses([sim], [hs], [word], self.weights._replace(domain=0.0))[0]
            best = hs[int(np.argmax(sc))]
            node = self.nodes.synset(self.nodes.index[m.wnid]) if m.wnid is not None else None
            if node is not None and node not in ancestors(best):
                continue
            p = self.nodes.place(best)
            below = np.asarray(p.below, np.int64)
            ns = self.node_sim(i, below) if len(below) else np.zeros(0)
            order = np.argsort(-ns, kind="stable")
            near = [int(below[j]) for j in order if ns[j] >= self.text_threshold]
            far = [int(below[j]) for j in order if ns[j] < self.text_threshold]
            opts = near + ([p.exact] if p.exact >= 0 else []) + far
            free = [n for n in opts if self.wnids[n] not in used]
            if not free:
                continue
            n = free[0]
            used.add(self.wnids[n])
            ns_ = self.nodes.synset(n)
            rel = ("the synset of its head noun" if n == p.exact else f"a hyponym ({_name(ns_)}) of {_name(best)!r}")
            why = ("no node was similar enough to its text" if m.wnid is None else
                   f"its text match {m.wnid} is a hypernym of its head noun {word!r}")
            cands = tuple((synset_wnid(hs[j]), round(float(sc[j]), 4)) for j in np.argsort(-sc, kind="stable"))
            out[i] = Match(m.class_name, self.wnids[n], float(self.node_sim(i, [n])[0]), None, "head",
                           cands[:NUM_REPORTED_CANDIDATES],
                           f"head noun {word!r}: {best.name()} ({best.definition()}); {why}; node {self.wnids[n]} "
                           f"is {rel}")

    def under_head(self, n: int, hs) -> bool:
        s = self.nodes.synset(n)
        return s is not None and any(s == h or h in ancestors(s) for h in hs)

    def text_guard(self, i: int, n: int, head) -> str | None:
        """The refusal of text match ``i -> n`` (None: accepted).  A multi-word name is a kind of its head noun
        ("aquarium fish" is a fish): node ``n`` must be at or below a sense of the head, or a near relative
        (:func:`mll_jax.wordnet.kin`, ``HEAD_KIN_LEVELS``); a strict hypernym of the head is refused like any
        hypernym, and so is a node unrelated to every sense of the head."""
        word, hs = head
        s = self.nodes.synset(n)
        if s is None or not hs:
            return None
        if any(kin(h, s, HEAD_KIN_LEVELS) for h in hs):
            return None
        above = [h for h in hs if s in ancestors(h)]
        if above:
            return hypernym_reason(self.specs[i].name, s, above[0])
        return (f"{self.specs[i].name!r} matched {_name(s)!r} ({s.name()}), which is no kind of its head noun "
                f"{word!r}")

    def note_hypernym_classes(self, out: list, chosen: list) -> None:
        """Note classes whose synsets are hypernyms of other classes' synsets (both are kept)."""
        by_synset = {s: i for i, s in enumerate(chosen) if s is not None and out[i].wnid is not None}
        for i, s in enumerate(chosen):
            if s is None or out[i].wnid is None:
                continue
            for a in ancestors(s):
                j = by_synset.get(a)
                if j is not None:
                    out[j] = out[j].updated(reason=out[j].reason + f"; {self.specs[j].name!r} is a hypernym of "
                                                                    f"{self.specs[i].name!r} in this task (both kept)")
