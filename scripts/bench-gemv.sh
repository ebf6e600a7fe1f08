#!/usr/bin/env bash
# GEMV GB/s per block type: sluice's CPU kernels beside llama.cpp's ggml kernels on the same tensors.
# Finds llama-cpp-python's ggml libraries (or takes SLUICE_GGML_LIB), builds bench_gemv_ggml in
# BUILD_DIR (default build/) if needed, and runs it; arguments go to the bench (--json, --types,
# --threads, --batch, --reps, --working-set-mb, --no-big, --no-repack).
# Without llama-cpp-python the bench still runs and prints sluice's and the read loop's figures.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir="${BUILD_DIR:-build}"
if [[ -z "${SLUICE_GGML_LIB:-}" ]]; then
  SLUICE_GGML_LIB="$(python3 -c 'import llama_cpp, os; print(os.path.dirname(llama_cpp.__file__) + "/lib")' 2>/dev/null || true)"
fi
export SLUICE_GGML_LIB
if [[ ! -d "$build_dir" ]]; then meson setup "$build_dir" >/dev/null; fi
ninja -C "$build_dir" bench/bench_gemv_ggml >/dev/null
exec "$build_dir/bench/bench_gemv_ggml" "$@"
