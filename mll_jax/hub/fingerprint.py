"""Fingerprints of hub models: SHA-256 of kind, source, options, head count and weight bytes."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

from mll_jax import utils
from mll_jax.models.ccexam import ccexam_weight_files
from mll_jax.models.cifar_cnn import find_cifar10_weights
from mll_jax.models.efficientnet_lite import find_pretrained_weights
from mll_jax.models.keras_h5_experts import keras_h5_weight_files
from mll_jax.models.keras_mobilenet import package_weight_files

__all__ = ["files_under", "weight_files", "stat_signature", "fingerprint"]


def files_under(d: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames.sort()
        out += [os.path.join(dirpath, f) for f in sorted(filenames)]
    return out


def weight_files(hub, entry: dict) -> list[str]:
    """The files an entry's weights (and preprocessing config) are read from, sorted; [] when not local."""
    kind, opts = entry.get("kind"), entry.get("options") or {}
    if kind == "flax_module":
        return files_under(hub.model_dir(entry["model_id"], "variables"))
    if opts.get("weights_path"):
        return [os.path.abspath(opts["weights_path"])]
    if kind == "efficientnet_lite":
        return [find_pretrained_weights(opts.get("variant", "lite0"))]
    if kind == "keras_cifar10":
        return [find_cifar10_weights()]
    if kind == "keras_mobilenet_v2":
        return package_weight_files(opts.get("variant", "dogcat"))
    if kind == "keras_h5":
        return keras_h5_weight_files(opts.get("variant", "catsordogs"))
    if kind == "ccexam":
        return ccexam_weight_files(opts.get("variant", "mnist"))
    src = entry.get("source")
    if kind == "hf_flax" and src and os.path.exists(src):
        if os.path.isfile(src):
            d = os.path.dirname(os.path.abspath(src))
            return [src] + [os.path.join(d, f) for f in ("config.json", "preprocessor_config.json")
                            if os.path.isfile(os.path.join(d, f))]
        return [os.path.join(src, f) for f in sorted(os.listdir(src))
                if not f.startswith(".") and os.path.isfile(os.path.join(src, f))]
    return []


def stat_signature(files: Sequence[str]) -> list:
    out = []
    for f in files:
        st = os.stat(f)
        out.append([f, st.st_size, st.st_mtime_ns])
    return out


def fingerprint(entry: dict, files: Sequence[str], root: str) -> str:
    """SHA-256 over what decides an expert's outputs: kind, source, options (preprocessing, variant, ...),
    head count and the bytes of its weight files (by path relative to the hub when inside it)."""
    h = hashlib.sha256()
    h.update(json.dumps({k: entry.get(k) for k in ("kind", "source", "options", "num_heads")},
                        sort_keys=True).encode())
    for f in files:
        rel = os.path.relpath(f, root) if os.path.abspath(f).startswith(root + os.sep) else f
        h.update(rel.encode() + b"\0" + utils.file_hash(f, names=False).encode())
    return h.hexdigest()
