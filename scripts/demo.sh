#!/usr/bin/env bash
# The main job on a default that needs no download: build sluice, write a small model with the
# DeepSeek-V3 architecture, RANDOM weights and the real DeepSeek-V3 tokenizer (so its text is
# gibberish, honestly), and generate from it, printing tokens as they come and the speed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh >/dev/null
model=models/demo-random-v3
if [[ ! -f $model/config.json ]]; then
  ./build/engine/sluice synth -o "$model" --tokenizer ../shared/models/deepseek-v3-tokenizer
fi
echo "model: $model (random weights, real DeepSeek-V3 tokenizer: expect gibberish)"
exec ./build/engine/sluice run -m "$model" -p "${1:-The capital of France is}" -n "${2:-48}" --temp 0.8 --top-p 0.95 --seed 1
