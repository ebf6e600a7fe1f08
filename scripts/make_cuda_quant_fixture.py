#!/usr/bin/env python3
"""Fixture for tests/cuda/codec_test.cu: random Q8_0 / Q4_K / Q6_K rows and their values as the
gguf package (gguf-py, llama.cpp's reference numpy dequantiser) decodes them, so the CUDA block
decoders are checked against an outside oracle on machines without a GPU.

Writes tests/data/cuda_quant/<type>.blocks (raw row bytes) and <type>.f32 (little-endian floats).
"""
import pathlib

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGML_QUANT_SIZES
from gguf.quants import dequantize

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "cuda_quant"
N_WEIGHTS = 2048  # 8 K-quant blocks, 64 Q8_0 blocks


def f16_bytes(values):
    return np.asarray(values, dtype=np.float16).view(np.uint8).reshape(-1, 2)


def make(qtype, rng):
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    n_blocks = N_WEIGHTS // block_elems
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    # Scale fields get finite, modest f16 values (random bytes would include inf / NaN).
    if qtype == Q.Q8_0:
        raw[:, 0:2] = f16_bytes(rng.uniform(0.001, 0.02, n_blocks))
    elif qtype == Q.Q4_K:
        raw[:, 0:2] = f16_bytes(rng.uniform(0.001, 0.02, n_blocks))
        raw[:, 2:4] = f16_bytes(rng.uniform(0.001, 0.02, n_blocks))
    elif qtype == Q.Q6_K:
        raw[:, 208:210] = f16_bytes(rng.uniform(0.0001, 0.002, n_blocks))
    values = dequantize(raw.reshape(1, -1), qtype).astype(np.float32).reshape(-1)
    assert values.size == N_WEIGHTS and np.isfinite(values).all()
    name = qtype.name.lower()
    (OUT / f"{name}.blocks").write_bytes(raw.tobytes())
    (OUT / f"{name}.f32").write_bytes(values.astype("<f4").tobytes())
    print(f"{name}: {n_blocks} blocks, |y| max {np.abs(values).max():.4g}")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261129)
    for qtype in (Q.Q8_0, Q.Q4_K, Q.Q6_K):
        make(qtype, rng)


if __name__ == "__main__":
    main()
