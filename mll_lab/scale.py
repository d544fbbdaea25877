"""The paper's shape end to end, measured: a WordNet SDAG of up to ~11,000 nodes, a hub of up to 48 experts and
tasks of 20 to 101 classes (``benchmarks/scale_bench.py`` is the command line; ``tests/test_scale_bench.py`` runs
it at a tiny size).

Everything goes through the public API of ``mll_jax`` and its command line, as a user would:

* **SDAG.**  The first N noun synsets below WordNet's ``physical_entity`` in breadth-first order (ImageNet-21k's
  synsets are physical objects; darknet's 9k tree does not ship offline), closed under hypernyms
  (``SDAG.from_wnids(..., close_hypernyms=True)``).  Every node gets ``images_per_node`` images written to an
  ImageNet-style folder (``nXXXXXXXX/*.png``: the real sample photos that ship, shifted, flipped and noised per
  node; the cost is what is measured here, not accuracy) and read back with ``MLL.add_images_from_folder``.
* **Hub.**  The shipped experts (EfficientNet-Lite0/1/2 at a reduced resolution, the Keras CIFAR-10 CNN) plus
  Hugging Face Flax architectures (ViT, BEiT, DINOv2, ResNet, RegNet) built from small configurations with random
  weights and 1,000 heads, saved with ``save_pretrained`` (weights and image processor) and registered as
  ``hf:<dir>``.
* **Labelling** of the whole hub (``MLL.label``, one model at a time so each is timed), each model's throughput
  against the bare forward of the same network in the same process; and a kill test: ``mll-jax label`` of one
  model in a subprocess, SIGKILLed mid-run, then resumed, counting the nodes lost.
* **Tasks** of C classes (names of leaf nodes): matching against the whole SDAG, label reads, CHCO selection over
  all the hub's experts, and classification of a small test folder.

Per stage: wall and CPU seconds, bytes read and written by the process (``/proc/self/io`` rchar / wchar), and the
peak resident memory during the stage (sampled every 5 ms) next to the process's peak so far.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mll_jax import MLL, SDAG, Classifier, LabelStore, MLLConfig, load_images, wordnet

__all__ = ["Meter", "base_photos", "bare_forward", "perturbed", "wordnet_node_ids", "write_image_folder", "build_hf_models", "ARCHITECTURES", "pick_classes",
           "run_scale_point", "kill_and_resume", "growth_exponent", "SHIPPED"]

PHYSICAL_ENTITY = "n00001930"
SHIPPED = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "cifar10-cnn")
ARCHITECTURES = ("vit", "resnet", "beit", "regnet", "dinov2")


# ----------------------------------------------------------------------------- measuring


def _io() -> dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            k, v = line.split(":")
            out[k.strip()] = int(v)
    except (OSError, ValueError):
        pass
    return out


def _rss_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Meter:
    """``with Meter() as m: ...`` then ``m.result``: wall / CPU seconds, bytes read / written through system calls,
    peak RSS sampled during the block and the process's peak RSS (``getrusage``) at its end."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.result: dict[str, float] = {}

    def _sample(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self):
        self._io0 = _io()
        self._peak = _rss_bytes()
        self._rss0 = self._peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._t0, self._c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        wall, cpu = time.perf_counter() - self._t0, time.process_time() - self._c0
        self._stop.set()
        self._thread.join()
        io1 = _io()
        self._peak = max(self._peak, _rss_bytes())
        self.result = {
            "wall_s": wall, "cpu_s": cpu,
            "read_bytes": io1.get("rchar", 0) - self._io0.get("rchar", 0),
            "written_bytes": io1.get("wchar", 0) - self._io0.get("wchar", 0),
            "rss_start_mb": self._rss0 / 2**20, "rss_peak_mb": self._peak / 2**20,
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        return False


def growth_exponent(sizes: Sequence[float], values: Sequence[float]) -> float | None:
    """Least-squares slope of log(value) against log(size): 1 is linear, 2 quadratic."""
    pts = [(math.log(s), math.log(v)) for s, v in zip(sizes, values) if s > 0 and v and v > 0]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


# ----------------------------------------------------------------------------- SDAG and images


def wordnet_node_ids(n: int, wn=None) -> list[str]:
    """The first ``n`` noun synsets below ``physical_entity`` (itself included) in breadth-first order, hyponyms in
    offset order: a deterministic, hypernym-closed stand-in for ImageNet-21k's synsets."""
    wn = wordnet.get_wordnet() if wn is None else wn
    root = wordnet.synset_from_wnid(PHYSICAL_ENTITY, wn)
    order, seen, queue = [], {root.offset()}, deque([root])
    while queue and len(order) < n:
        s = queue.popleft()
        order.append(wordnet.wnid(s))
        for h in wordnet.hyponyms(s):
            if h.offset() not in seen:
                seen.add(h.offset())
                queue.append(h)
    return order


def base_photos(size: int) -> list[np.ndarray]:
    from PIL import Image

    spec = importlib.util.find_spec("foolbox")
    files = sorted(glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "data", "imagenet_*"))) \
        if spec else []
    photos = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BICUBIC)) for f in files]
    if not photos:  # pragma: no cover - foolbox missing: noise
        photos = list(np.random.default_rng(0).integers(0, 256, (8, size, size, 3), dtype=np.uint8))
    return photos


def perturbed(photos: Sequence[np.ndarray], key: int, count: int) -> np.ndarray:
    """``count`` images derived from the photos for ``key``: a photo, rolled, maybe flipped, with noise."""
    rng = np.random.default_rng(key)
    out = []
    for _ in range(count):
        im = photos[int(rng.integers(len(photos)))].astype(np.int16)
        im = np.roll(im, (int(rng.integers(-4, 5)), int(rng.integers(-4, 5))), axis=(0, 1))
        if rng.random() < 0.5:
            im = im[:, ::-1]
        im = im + rng.integers(-12, 13, im.shape, dtype=np.int16)
        out.append(np.clip(im, 0, 255).astype(np.uint8))
    return np.stack(out)


def write_image_folder(root: str | os.PathLike, node_ids: Sequence[str], per_node: int, size: int,
                       seed: int = 0) -> dict[str, Any]:
    """An ImageNet-style folder ``root/<wnid>/<k>.png`` with ``per_node`` images of ``size`` px per node."""
    from PIL import Image

    root = Path(root)
    photos = base_photos(size)
    n_bytes = 0
    for i, w in enumerate(node_ids):
        d = root / w
        d.mkdir(parents=True, exist_ok=True)
        for k, im in enumerate(perturbed(photos, seed * 1_000_003 + i, per_node)):
            p = d / f"{w}_{k}.png"
            Image.fromarray(im).save(p)
            n_bytes += p.stat().st_size
    return {"nodes": len(node_ids), "images": len(node_ids) * per_node, "bytes": n_bytes}


def pick_classes(sdag, count: int, seed: int = 0) -> list[str]:
    """``count`` class names: names of leaf nodes with images, each name used by one node only."""
    by_name: dict[str, list[str]] = {}
    for w in sdag.nodes:
        by_name.setdefault(sdag.name(w).lower(), []).append(w)
    cands = [w for w in sdag.nodes_with_images() if not sdag.children(w) and len(by_name[sdag.name(w).lower()]) == 1
             and len(sdag.name(w)) > 2]
    if len(cands) < count:
        raise ValueError(f"the SDAG has {len(cands)} usable leaf names, fewer than {count} classes")
    pick = np.random.default_rng(seed).choice(len(cands), size=count, replace=False)
    return [sdag.name(cands[i]) for i in sorted(pick)]


# ----------------------------------------------------------------------------- the hub


def _hf_config(arch: str, variant: int, size: int):
    """A small configuration of ``arch`` with 1,000 heads; ``variant`` changes width and depth."""
    import transformers as tf

    width = (32, 48, 64)[variant % 3]
    depth = 1 + variant % 2
    common = {"num_labels": 1000}
    if arch in ("vit", "beit", "dinov2"):
        cls = {"vit": tf.ViTConfig, "beit": tf.BeitConfig, "dinov2": tf.Dinov2Config}[arch]
        extra = {"use_mean_pooling": True} if arch == "beit" else {}
        return cls(image_size=size, patch_size=max(4, size // 4), hidden_size=width, num_hidden_layers=depth,
                   num_attention_heads=2, intermediate_size=2 * width, **extra, **common)
    if arch == "resnet":
        return tf.ResNetConfig(embedding_size=width // 2, hidden_sizes=[width // 2, width], depths=[depth, 1],
                               layer_type="basic", **common)
    if arch == "regnet":
        return tf.RegNetConfig(embedding_size=width // 2, hidden_sizes=[width // 2, width], depths=[depth, 1],
                               groups_width=8, **common)
    raise ValueError(f"unknown architecture {arch!r}; known: {ARCHITECTURES}")


def _scale_tree_at(params: dict, factor: float) -> dict:
    """``params`` with the kernel(s) under every ``classifier`` key multiplied by ``factor``."""
    def scale(tree, inside):
        if not isinstance(tree, dict):
            return tree
        return {k: (v * factor if inside and k == "kernel" else scale(v, inside or k == "classifier"))
                for k, v in tree.items()}
    return scale(dict(params), False)


def build_hf_models(directory: str | os.PathLike, count: int, size: int, seed: int = 0,
                    logit_std: float | None = 3.0) -> list[tuple[str, Path]]:
    """Save ``count`` randomly initialised HF Flax image classifiers (1,000 heads, ``size`` px input) with their
    image processors under ``directory``, cycling through :data:`ARCHITECTURES`; returns (model id, dir).

    ``logit_std``: the classifier kernel is scaled so the logits of a few probe images spread over the heads with
    this standard deviation, as a trained classifier's do (HF's initialisation, std 0.02, gives nearly equal
    logits, hence nearly uniform head probabilities: a degenerate CHCO problem that no trained model poses);
    ``None`` keeps the initialisation."""
    import jax
    import transformers as tf

    classes = {"vit": tf.FlaxViTForImageClassification, "beit": tf.FlaxBeitForImageClassification,
               "dinov2": tf.FlaxDinov2ForImageClassification, "resnet": tf.FlaxResNetForImageClassification,
               "regnet": tf.FlaxRegNetForImageClassification}
    out = []
    for i in range(count):
        arch = ARCHITECTURES[i % len(ARCHITECTURES)]
        mid = f"{arch}-{i:02d}"
        d = Path(directory) / mid
        if not (d / "config.json").is_file():
            config = _hf_config(arch, i // len(ARCHITECTURES), size)
            model = classes[arch](config, input_shape=(1, size, size, 3), seed=seed + i)
            if logit_std is not None:
                x = perturbed(base_photos(size), seed + i, 8).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
                x = (x - 0.45) / 0.225
                std = float(np.asarray(model(x, params=model.params).logits).std(axis=1).mean())
                model.params = jax.tree_util.tree_map(np.asarray, _scale_tree_at(model.params, logit_std / std))
            model.save_pretrained(d)
            tf.ViTImageProcessor(size={"height": size, "width": size}, do_resize=True, do_normalize=True,
                                 image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(d)
        out.append((mid, d))
    return out


# ----------------------------------------------------------------------------- one scale point


def bare_forward(expert, images: np.ndarray, seconds: float) -> float:
    """Images/s of the expert's jitted network alone on a preprocessed, device-resident full batch."""
    import jax

    b = expert.batch_size
    reps = -(-b // images.shape[0])
    batch = np.concatenate([images] * reps)[:b]
    x = jax.device_put(np.asarray(expert.preprocess(batch)))
    expert.forward(expert.params, x).block_until_ready()
    n, t0 = 0, time.perf_counter()
    while True:
        expert.forward(expert.params, x).block_until_ready()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n * b / dt


def kill_and_resume(root: Path, model_id: str, unit_nodes: int, *, after_nodes: int, timeout: float = 900.0
                    ) -> dict[str, Any]:
    """``mll-jax label --models=<model_id>`` in a subprocess, SIGKILLed once its progress bar passed
    ``after_nodes`` nodes; returns the last progress count it printed (a lower bound of what it computed)."""
    cmd = [sys.executable, "-m", "mll_jax.cli", "label", f"--root={root}", f"--models={model_id}",
           f"--unit_nodes={unit_nodes}"]
    err_path = root.parent / f"kill_{model_id}.stderr"
    pattern = re.compile(r"labelling " + re.escape(model_id) + r"\S*: .*?\|\s*(\d+)/(\d+)")
    last = 0
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        t0 = time.perf_counter()
        killed = False
        while proc.poll() is None and time.perf_counter() - t0 < timeout:
            text = err_path.read_bytes().decode("utf-8", "replace")
            counts = [int(m.group(1)) for m in pattern.finditer(text)]
            last = max(counts) if counts else 0
            if last >= after_nodes:
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.02)
        proc.wait()
    text = err_path.read_bytes().decode("utf-8", "replace")
    counts = [int(m.group(1)) for m in pattern.finditer(text)]
    return {"killed": killed, "returncode": proc.returncode, "printed_progress": max(counts) if counts else 0,
            "seconds": time.perf_counter() - t0, "stderr_tail": text[-300:] if not killed else ""}


def run_scale_point(work: str | os.PathLike, *, nodes: int, models: int, images_per_node: int = 1,
                    image_size: int = 32, classes: Sequence[int] = (20, 37, 101),
                    shipped: Sequence[str] = SHIPPED, lite_resolution: int = 64, batch_size: int = 32,
                    test_per_class: int = 1, unit_nodes: int = 64, kill_test: bool = False,
                    model_counts: Sequence[int] = (), bare_seconds: float = 0.3, seed: int = 0,
                    hf_dir: str | os.PathLike | None = None, logit_std: float | None = 3.0,
                    growth_classes: Sequence[int] | None = None, kill_after: float = 0.5, log=print) -> dict[str, Any]:
    """Build, label and query one system of ``nodes`` WordNet nodes and ``models`` experts under ``work``;
    returns the measurements (see the module docstring).  ``model_counts``: also select every task over the first
    k hub experts for each k (growth in models), for the tasks of ``growth_classes`` classes (default: all).
    ``kill_after``: the kill test's SIGKILL comes once this fraction of the nodes was reported done.  ``hf_dir``: where the HF models are saved (default under
    ``work``; models already there are reused)."""
    work = Path(work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    out: dict[str, Any] = {"nodes_requested": nodes, "models_requested": models, "images_per_node": images_per_node,
                           "image_size": image_size, "stages": {}, "models": {}, "tasks": {}}
    st = out["stages"]

    def stage(name, m):
        st[name] = m.result
        log(f"  {name:28s} {m.result['wall_s']:8.2f} s  rss peak {m.result['rss_peak_mb']:7.0f} MB  "
            f"read {m.result['read_bytes'] / 2**20:8.1f} MB  written {m.result['written_bytes'] / 2**20:8.1f} MB")

    with Meter() as m:
        wnids = wordnet_node_ids(nodes)
        sdag = SDAG.from_wnids(wnids, close_hypernyms=True)
    stage("sdag_build", m)
    out.update(nodes=len(sdag), edges=sdag.num_edges())
    with Meter() as m:
        folder = write_image_folder(work / "imagenet_style", list(sdag.nodes), images_per_node, image_size, seed)
    stage("image_folder_write", m)
    out["image_folder_bytes"] = folder["bytes"]
    config = MLLConfig(progress=False, beta=None)  # random experts: no loss threshold, so every class gets k
    with Meter() as m:
        mll = MLL.open(work / "mll", sdag=sdag, config=config, text_cache=work / "text_cache")
        mll.add_images_from_folder(work / "imagenet_style", n_per_node=images_per_node, image_size=image_size,
                                   progress=False)
    stage("sdag_images_ingest", m)
    out["nodes_with_images"] = len(mll.sdag.nodes_with_images())

    n_hf = max(0, models - len(shipped))
    with Meter() as m:
        hf = build_hf_models(work / "hf_models" if hf_dir is None else hf_dir, n_hf, image_size, seed, logit_std)
    stage("hf_models_create", m)
    with Meter() as m:
        ids = []
        for name in list(shipped)[:models]:
            res = lite_resolution if name.startswith("efficientnet") else None
            ids.append(mll.add_model(name, resolution=res, batch_size=batch_size))
        for mid, d in hf:
            ids.append(mll.add_model(f"hf:{d}", model_id=mid, batch_size=batch_size))
    stage("hub_register", m)
    out["hub"] = list(ids)

    if kill_test:
        victim = ids[-1]
        n_img = out["nodes_with_images"]
        after = max(unit_nodes, int(kill_after * n_img))
        log(f"  kill test: mll-jax label --models={victim} killed after {after} of {n_img} nodes")
        out["kill"] = kill_and_resume(work / "mll", victim, unit_nodes, after_nodes=after)

    # labelling, one model at a time (the system's own loop does the same), each against its bare forward
    probe = perturbed(base_photos(image_size), seed + 7, 4)
    with Meter() as m_all:
        for mid in ids:
            with Meter() as m:
                summary = mll.label([mid], unit_nodes=unit_nodes)
            row = dict(m.result)
            s = summary.get(mid, {})
            computed = int(s.get("computed", 0))
            row.update(computed_nodes=computed, cached_nodes=int(s.get("cached", 0)),
                       labelled_nodes=int(s.get("labelled", 0)), images=computed * images_per_node)
            ex = mll.expert(mid)
            row["label_images_per_s"] = row["images"] / row["wall_s"] if row["wall_s"] else None
            row["bare_images_per_s"] = bare_forward(ex, probe, bare_seconds)
            row["ratio_to_bare"] = (row["label_images_per_s"] / row["bare_images_per_s"]
                                    if row["label_images_per_s"] else None)
            out["models"][mid] = row
            log(f"    label {mid:22s} {row['wall_s']:7.2f} s  {computed:6d} nodes  "
                f"{row['label_images_per_s'] or 0:8.1f} img/s  bare {row['bare_images_per_s']:8.1f} img/s  "
                f"({100 * (row['ratio_to_bare'] or 0):.0f}%)")
    stage("labelling_all", m_all)
    if kill_test:
        k = out["kill"]
        cached = out["models"][ids[-1]]["cached_nodes"]
        k.update(persisted_nodes=cached, lost_nodes=max(0, k["printed_progress"] - cached), unit_nodes=unit_nodes)
        log(f"  kill test: printed {k['printed_progress']} nodes, persisted {cached}, lost {k['lost_nodes']} "
            f"(unit: {unit_nodes} nodes)")

    # tasks
    store_bytes = sum(p.stat().st_size for p in (work / "mll" / "labels").rglob("*") if p.is_file())
    out["label_store_bytes"] = store_bytes
    first = True
    for c in classes:
        names = pick_classes(mll.sdag, c, seed + c)
        t: dict[str, Any] = {"classes": c}
        with Meter() as m:
            matches = mll.match(names)
        t["match_cold" if first else "match"] = m.result
        if first:
            with Meter() as m:
                matches = mll.match(names)
            t["match"] = m.result
            first = False
        wn_matched = [mm.wnid for mm in matches if mm.wnid is not None]
        t["matched"] = len(wn_matched)
        with Meter() as m:
            rows = LabelStore(mll.labels.root).read_many(ids, wn_matched)
        t["label_reads"] = m.result
        t["label_read_values"] = int(sum(np.asarray(r).size for r in rows))
        with Meter() as m:
            sel = mll.select(names, matches=matches)
        t["select"] = m.result
        it, conv = np.asarray(sel.info.get("iterations", [])), np.asarray(sel.info.get("converged", []))
        if it.size:
            t["chco"] = {"iterations_mean": float(it.mean()), "iterations_max": int(it.max()),
                         "not_converged": int((~conv.astype(bool)).sum())}
        with Meter() as m:  # again: the first call includes XLA's compilation for this task's shapes
            sel = mll.select(names, matches=matches)
        t["select_warm"] = m.result
        t["covered"] = int(np.sum(sel.covered))
        t["models_used"] = len(sel.used_model_ids)
        t["classes_with_models"] = int(sum(1 for e in sel.experts if len(e) > 0))
        with Meter() as m:
            clf = Classifier(sel, mll, None, mll.config)
            tests, truth = [], []
            tdir = work / f"test_{c}"
            for i, mm in enumerate(matches):
                if mm.wnid is None:
                    continue
                imgs = perturbed(base_photos(image_size), 10_000 + i, test_per_class)
                tdir.mkdir(exist_ok=True)
                for k, im in enumerate(imgs):
                    p = tdir / f"{i:03d}_{k}.png"
                    from_array(im, p)
                    tests.append(p)
                    truth.append(i)
            x, _ = load_images(tests, size=image_size)
            pred = clf.predict(x)
        t["classify"] = m.result
        t["test_images"] = len(tests)
        t["classify_images_per_s"] = len(tests) / m.result["wall_s"]
        t["predicted"] = int(np.sum(np.asarray(pred) >= 0))
        for k in model_counts if growth_classes is None or c in growth_classes else ():
            if k >= len(ids) or k < 1:
                continue
            mll.select(names, matches=matches, model_ids=ids[:k])  # compiles this subset's shapes
            with Meter() as m:
                mll.select(names, matches=matches, model_ids=ids[:k])
            t[f"select_{k}_models"] = m.result
        out["tasks"][str(c)] = t
        log(f"  task C={c:3d}: match {t['match']['wall_s']:.2f} s, reads {t['label_reads']['wall_s']:.3f} s, "
            f"select {t['select']['wall_s']:.2f} s, warm {t['select_warm']['wall_s']:.2f} s (rss peak {t['select']['rss_peak_mb']:.0f} MB, "
            f"{t['covered']}/{c} covered, {t['models_used']} models, CHCO {t.get('chco')}), classify {t['test_images']} images "
            f"{t['classify']['wall_s']:.2f} s")
    return out


def from_array(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image).save(path)
