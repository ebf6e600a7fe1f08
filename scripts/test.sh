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
# A short libFuzzer run of every untrusted-input parser (safetensors, config.json, GGUF headers;
# sluice serve's HTTP requests and bodies) from the committed corpora; SLUICE_FUZZ_SECONDS=0 skips it.
fuzz_seconds=${SLUICE_FUZZ_SECONDS:-20}
if [[ $fuzz_seconds -gt 0 && $# -eq 0 ]]; then
  if bash scripts/fuzz.sh "$fuzz_seconds" safetensors_header config_json gguf_header openai_request > build/fuzz.log 2>&1; then
    passed=$((passed + 1)); echo "fuzz (${fuzz_seconds}s per parser): OK"
  else
    failed=$((failed + 1)); status=1; echo "fuzz: FAILED"; tail -40 build/fuzz.log
  fi
fi
echo "${passed} passed, ${failed} failed, ${skipped} skipped"
exit $status
