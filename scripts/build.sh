#!/usr/bin/env bash
# Configures (once) and builds sluice into build/ (CUDA too when nvcc is found).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
if [[ ! -f build/build.ninja ]]; then
  [[ -d /usr/local/cuda/bin ]] && export PATH="/usr/local/cuda/bin:$PATH"
  meson setup build --buildtype=release "$@" >/dev/null
fi
ninja -C build
