#!/usr/bin/env bash
# `sluice plan` against `sluice bench` on this machine, tokens/s and bytes read, at three memory
# budgets of a DeepSeek-V3-shaped model: the timing case of tests/engine/plan_calibration_test.cpp
# (each budget predicted from rates measured just before its benchmark, retried once when a phase
# is more than 25% off), run RUNS times (default 5): each run's table, then how many runs passed.
# usage: scripts/plan-calibration.sh [RUNS]        (after a build: ninja -C build)
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
test_bin=build/tests/engine/engine_plan_calibration_test
[[ -x $test_bin && -x build/engine/sluice ]] || { echo "build first (ninja -C build)"; exit 1; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
passed=0
for ((i = 1; i <= runs; ++i)); do
  echo "== run $i of $runs, $(date -u +%H:%M:%S) UTC, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  if SLUICE_PLAN_TIMING=1 SLUICE_BIN=build/engine/sluice "$test_bin" >"$log" 2>&1; then
    passed=$((passed + 1)); verdict="within 25%"
  else
    verdict="OUTSIDE 25%"
  fi
  sed -n '/^budget /,/^$/p' "$log"
  echo "   run $i: $verdict"
done
echo "$passed of $runs runs within 25% on every phase (after at most one retry per budget)"
