#!/usr/bin/env bash
# The mission on a default that needs no download: build sluice, write a 3.7 GB model with the
# DeepSeek-V3 architecture (its attention, vocabulary and routing; 8 layers of 128 narrower
# experts), RANDOM weights and the real DeepSeek-V3 tokenizer (so its text is gibberish, honestly),
# and generate from it under a 1 GiB memory budget: the experts stream from disk as the router
# asks for them, and the run ends with the streaming figures (bytes read, overlap, cache hits).
# Arguments: prompt, tokens to generate, memory budget.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh >/dev/null
model=models/demo-v3.gguf
if [[ ! -f $model ]]; then
  mkdir -p models
  ./build/engine/sluice synth -o "$model" --preset demo --tokenizer ../shared/models/deepseek-v3-tokenizer
fi
echo "model: $model ($(du -h "$model" | cut -f1), random weights, real DeepSeek-V3 tokenizer: expect gibberish)"
exec ./build/engine/sluice run -m "$model" -p "${1:-The capital of France is}" -n "${2:-32}" --ram "${3:-1G}" \
  --temp 0.8 --top-p 0.95 --seed 1 --stats
