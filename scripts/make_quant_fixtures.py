#!/usr/bin/env python3
"""Fixtures for tests/kernels/quant_dequant_test.cpp: quantised blocks and gguf-py's own
dequantisation of them (the outside oracle), as raw little-endian files plus manifest.json.

For each type: blocks from gguf-py's quantiser applied to random floats where gguf-py has one,
followed by random-byte blocks whose f16 scale fields are overwritten with sane finite values
(so every bit pattern of quants/sub-scales is exercised, but no NaN/Inf)."""
import json
import pathlib

import numpy as np
from gguf import GGMLQuantizationType as T, GGML_QUANT_SIZES
from gguf import quants

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "quant"

# byte offsets of f16 scale fields inside each block
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    T.IQ4_NL: [0], T.IQ4_XS: [0],
}
RANDOM_BLOCKS = 12
QUANTISED_BLOCKS = 8


def main():
    rng = np.random.default_rng(20261129)
    OUT.mkdir(parents=True, exist_ok=True)
    manifest = []
    for qt, fields in F16_FIELDS.items():
        block_elems, block_bytes = GGML_QUANT_SIZES[qt]
        parts = []
        try:
            x = rng.standard_normal((QUANTISED_BLOCKS * block_elems,)).astype(np.float32)
            x *= rng.uniform(0.01, 3.0, x.shape).astype(np.float32)
            q = quants.quantize(x.reshape(1, -1), qt).reshape(-1)
            parts.append(np.asarray(q, dtype=np.uint8))
            quantised = True
        except (NotImplementedError, quants.QuantError, Exception) as e:  # noqa: BLE001
            quantised = False
        raw = rng.integers(0, 256, (RANDOM_BLOCKS, block_bytes), dtype=np.uint8)
        for b in range(RANDOM_BLOCKS):
            for off in fields:
                scale = np.float16(rng.uniform(-0.05, 0.05) if b % 3 else rng.uniform(1e-4, 2.0))
                raw[b, off:off + 2] = np.frombuffer(scale.tobytes(), dtype=np.uint8)
        parts.append(raw.reshape(-1))
        blocks = np.concatenate(parts)
        n_blocks = blocks.size // block_bytes
        deq = quants.dequantize(blocks.reshape(1, -1), qt).reshape(-1).astype(np.float32)
        assert deq.size == n_blocks * block_elems and np.all(np.isfinite(deq))
        name = qt.name.lower()
        (OUT / f"{name}.blocks").write_bytes(blocks.tobytes())
        (OUT / f"{name}.f32").write_bytes(deq.astype("<f4").tobytes())
        manifest.append({"type": qt.name, "blocks": n_blocks, "block_elems": block_elems,
                         "block_bytes": block_bytes, "quantised_by_gguf_py": quantised,
                         "blocks_file": f"{name}.blocks", "f32_file": f"{name}.f32"})
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
