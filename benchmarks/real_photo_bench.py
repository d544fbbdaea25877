"""Dogs vs cats on every real dog and cat photo (the paper's DvC test), CHCO vs the single best head (HEU).

The SDAG holds every mapped real photo (``benchmarks/data/real_photos_mapping.tsv``, drawings kept out) at its
synset's node, plus ``dog`` and ``cat``.  The hub is EfficientNet-Lite0 (1000 ImageNet heads).  The dog and cat
photos are few, so the test is leave-one-out: for each dog or cat photo, its node's images are set without it, the
model relabelled (only changed nodes are recomputed), and the classifier for ``["dog", "cat"]`` built with
``scorer="chco"`` and ``scorer="heu"`` predicts it.  Node and test images are disjoint in every fold (checked by
content hash).  Reported: n, accuracy with a 95% Wilson interval, and the number of heads each predictor column
combines (weight > 1e-3) for each class (0: the class is uncovered under the method's loss threshold and never
predicted; a fold where no class is covered counts as an error).

    PYTHONPATH=. python benchmarks/real_photo_bench.py [--root DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from mll_jax import MLL, SDAG
from mll_jax.errors import UncoveredTaskError
from mll_lab.real_photos import ancestor_wnids, disjoint_split, load_photo_set, wilson_interval
from mll_lab.results import markdown_table, write_results

DOG, CAT = "n02084071", "n02121620"
CLASSES = ["dog", "cat"]
#: (name, scorer, config overrides): each scorer with the configured loss threshold beta and without one (HEU's
#: best single head can lose more than beta on a node, and then the class is uncovered and never predicted)
METHODS = (("chco", "chco", {}), ("heu", "heu", {}), ("chco beta=None", "chco", {"beta": None}),
           ("heu beta=None", "heu", {"beta": None}))
SCORERS = tuple(m[0] for m in METHODS)


def heads_combined(clf) -> list[int]:
    """Per class: heads with weight > 1e-3 in the predictor columns of its selected experts."""
    sel = clf.selection
    out = []
    for c in range(len(CLASSES)):
        n = 0
        for m in sel.experts[c]:
            x = sel.columns.get(sel.model_ids[m])
            if x is not None:
                n += int((np.asarray(x)[:, c] > 1e-3).sum())
        out.append(n)
    return out


def run(root: str, *, model: str = "efficientnet-lite0", limit: int | None = None) -> dict:
    photos = load_photo_set()
    label = []
    for w in photos.wnids:
        anc = ancestor_wnids(w)
        label.append(0 if DOG in anc else 1 if CAT in anc else -1)
    label = np.array(label)
    test_idx = np.flatnonzero(label >= 0)
    if limit is not None:
        test_idx = test_idx[:limit]
    sdag = SDAG.from_wnids(sorted(set(photos.wnids) | {DOG, CAT}), close_hypernyms=True)
    mll = MLL.open(root, sdag=sdag)
    if model not in mll.model_ids():
        mll.add_model(model)

    def set_nodes(held_out: int | None):
        keep = np.ones(len(photos), bool)
        if held_out is not None:
            keep[held_out] = False
        node, test = disjoint_split(photos, ~keep)
        for w in sorted(set(photos.wnids)):
            idx = [i for i, e in enumerate(node.entries) if e.wnid == w]
            mll.add_images(w, node.images[idx] if idx else node.images[:0])
        return test

    preds = {s: [] for s in SCORERS}
    heads = {s: [] for s in SCORERS}
    t0 = time.time()
    for i in test_idx:
        test = set_nodes(int(i))
        mll.label()
        for s, scorer, over in METHODS:
            try:
                clf = mll.classifier(CLASSES, scorer=scorer, **over)
            except UncoveredTaskError:  # no class served: the photo counts as an error (abstention)
                preds[s].append(-1)
                heads[s].append([0, 0])
                continue
            preds[s].append(int(clf.predict(test.images)[0]))
            heads[s].append(heads_combined(clf))
    set_nodes(None)
    y = label[test_idx]
    rows, data = [], {"model": model, "n": int(len(y)), "n_dog": int((y == 0).sum()), "n_cat": int((y == 1).sum()),
                      "photos": [photos.entries[i].source + ":" + photos.entries[i].file for i in test_idx],
                      "seconds": round(time.time() - t0, 1), "methods": {}}
    for s in SCORERS:
        p = np.array(preds[s])
        k = int((p == y).sum())
        lo, hi = wilson_interval(k, len(y))
        h = np.array(heads[s])
        data["methods"][s] = {"correct": k, "accuracy": k / max(len(y), 1), "wilson95": [lo, hi],
                              "predictions": p.tolist(), "heads_dog": h[:, 0].tolist(), "heads_cat": h[:, 1].tolist()}
        rows.append([s, len(y), f"{100 * k / max(len(y), 1):.1f}", f"[{100 * lo:.1f}, {100 * hi:.1f}]",
                     f"{int(np.median(h[:, 0]))} / {int(np.median(h[:, 1]))}"])
    data["table"] = markdown_table(["method", "n", "accuracy %", "95% Wilson", "heads combined (dog / cat, median)"],
                                   rows)
    return data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=None, help="system directory (default: a temporary one)")
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--limit", type=int, default=None, help="only the first N dog/cat photos (smoke runs)")
    ap.add_argument("--no-write", action="store_true", help="print the table, write no results/ files")
    args = ap.parse_args(argv)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        data = run(args.root or os.path.join(tmp, "mll"), model=args.model, limit=args.limit)
    md = (data["table"] + f"\n\nLeave-one-out over every real dog and cat photo ({data['n_dog']} dogs, "
          f"{data['n_cat']} cats); hub: {data['model']}; node images: every other mapped real photo.")
    print(md)
    if not args.no_write:
        write_results("real_photo_bench", data, md, title="Dogs vs cats on real photos (CHCO vs HEU)",
                      load_at_start=load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
