#!/usr/bin/env bash
# Builds the threaded tests with ThreadSanitizer over every file (build-tsan/) and runs them;
# fails on any report. The emulated CUDA device's tests are among them: its stream workers are
# real threads (its fibers are announced to TSan), so a missing event wait or a buffer reused
# during an asynchronous copy is a reported race. Everything must be instrumented: with
# core/thread_pool.cpp left out, TSan cannot see the pool's atomic handshake and reports every
# buffer a pool thread touched (the pread worker's writes, ~DeepseekForward's frees) as a race.
# Not part of CI (a full TSan build takes ~5 min on 2 cores; the tests ~30 s).
#   usage: scripts/tsan-check.sh [test...]
#   (default: io engine_streamer engine_forward core cudaemu cuda_emu cuda_forward_emu)
set -euo pipefail
cd "$(dirname "$0")/.."
tests=("$@")
[[ ${#tests[@]} -gt 0 ]] || tests=(io engine_streamer engine_forward core cudaemu cuda_emu cuda_forward_emu)
build=build-tsan
if [[ ! -f $build/build.ninja ]]; then
  meson setup "$build" -Db_sanitize=thread -Dbuildtype=debugoptimized -Dcuda=disabled >/dev/null
fi
# Only what the chosen tests need (meson test would build the whole suite first).
targets=(engine/sluice)
for t in "${tests[@]}"; do
  stage=${t%%_*}
  targets+=("tests/$stage/${t}_test")
done
ninja -C "$build" "${targets[@]}"
export TSAN_OPTIONS="halt_on_error=0 second_deadlock_stack=1 exitcode=66 ${TSAN_OPTIONS:-}"
# TSan makes every fiber switch of the emulated device cost a vector-clock merge over all its
# fibers: cuda_forward_emu took 527 s there (12 s without TSan; 2 busy cores), hence 4x timeouts.
meson test -C "$build" --no-rebuild --print-errorlogs --num-processes 1 --timeout-multiplier 4 "${tests[@]}"
