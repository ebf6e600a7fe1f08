#!/usr/bin/env bash
# Run HERE (the development machine) before a device check: copies the header-only libraries the
# CUDA test and bench need into .device-deps/include (git-ignored), because the borrowed GPU
# machine has nvcc, g++, cmake and ninja but no fmt, doctest, nlohmann-json or CLI11 and no
# package registry. fmt is used header-only there (-DFMT_HEADER_ONLY). Name .device-deps in the
# device run's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.device-deps/include
rm -rf .device-deps
mkdir -p "$dest"
for lib in fmt doctest nlohmann CLI; do
  if [[ ! -d /usr/include/$lib ]]; then
    echo "prepare-device-deps: /usr/include/$lib is missing (run scripts/install-deps.sh)" >&2
    exit 1
  fi
  cp -r "/usr/include/$lib" "$dest/"
done
# fmt header-only needs its implementation headers (format-inl.h, os.cc is not needed).
[[ -f $dest/fmt/format-inl.h ]] || { echo "prepare-device-deps: fmt/format-inl.h missing" >&2; exit 1; }
# Optional: the CUDA forward test, built here (the engine needs libraries the GPU machine lacks)
# for sm_90, with the shared libraries it needs beyond glibc/libstdc++ and CUDA's own.
#   SLUICE_CARRY_BUILD=build-cuda bash scripts/prepare-device-deps.sh
# With it, sluice itself (device-check's streaming steps) and the tokenizer its synth needs.
if [[ -n ${SLUICE_CARRY_BUILD:-} ]]; then
  mkdir -p .device-deps/bin .device-deps/lib
  for bin in $SLUICE_CARRY_BUILD/tests/cuda/cuda_forward_test $SLUICE_CARRY_BUILD/engine/sluice; do
    [[ -x $bin ]] || { echo "prepare-device-deps: $bin not built (ninja -C $SLUICE_CARRY_BUILD)" >&2; exit 1; }
    cp "$bin" .device-deps/bin/
    ldd "$bin" | awk '/=> \// {print $3}' | grep -E 'lib(fmt|uring|pcre2|CLI)' | while read -r lib; do cp -L "$lib" .device-deps/lib/; done
  done
  cp -r ../shared/models/deepseek-v3-tokenizer .device-deps/tokenizer
  ls .device-deps/bin .device-deps/lib
fi
du -sh .device-deps
