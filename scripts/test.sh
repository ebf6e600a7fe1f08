#!/usr/bin/env bash
# The whole test suite: installs what is needed, builds, runs every test, and ends with the
# line "N passed, N failed" (the count of test programs, each a doctest suite).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh || { echo "0 passed, 1 failed"; exit 1; }
meson test -C build --print-errorlogs --num-processes "$(nproc)" "$@"
status=$?
log=build/meson-logs/testlog.json
passed=$(grep -c '"result": "OK"' "$log" || true)
skipped=$(grep -c '"result": "SKIP"' "$log" || true)
failed=$(grep -cE '"result": "(FAIL|TIMEOUT|ERROR|UNEXPECTEDPASS)"' "$log" || true)
echo "${passed} passed, ${failed} failed, ${skipped} skipped"
exit $status
