#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs each for N seconds (default 60)
# from its committed corpus in fuzz/corpus/<name>/ (safetensors_header uses .../safetensors/); new inputs go to build-fuzz/corpus/<name>/ so
# the committed corpus stays small. Crashes are written to build-fuzz/crashes/ and fail the run.
#   usage: scripts/fuzz.sh [seconds_per_target] [target...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(safetensors_header config_json)
build=build-fuzz
if [[ ! -f $build/build.ninja ]]; then
  CXX=clang++ CC=clang meson setup "$build" -Dfuzz=true -Dcuda=disabled -Dtests=false -Dbuildtype=debugoptimized
fi
ninja -C "$build" $(for t in "${targets[@]}"; do echo "fuzz/${t}_fuzz"; done)
mkdir -p "$build/crashes"
status=0
for t in "${targets[@]}"; do
  name=${t%_header}  # safetensors_header -> fuzz/corpus/safetensors, fuzz/safetensors.dict
  seeds=fuzz/corpus/$name
  dict=()
  [[ -f fuzz/$name.dict ]] && dict=(-dict="fuzz/$name.dict")
  work=$build/corpus/$t
  mkdir -p "$work"
  echo "== $t: ${seconds}s from $seeds"
  if ! "$build/fuzz/${t}_fuzz" -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
       -print_final_stats=1 "${dict[@]}" -artifact_prefix="$build/crashes/${t}-" "$work" "$seeds"; then
    echo "== $t: FAILED (artifacts in $build/crashes/)"
    status=1
  fi
done
exit $status
