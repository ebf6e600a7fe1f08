#!/usr/bin/env python3
"""Writes the small seed corpora in fuzz/corpus/: safetensors files made by the `safetensors`
package itself (so the seeds are the real format) plus a few hand-broken ones, and config.json
seeds copied from tests/data/configs. Run once; the outputs are committed."""
import json
import os
import shutil
import struct

import numpy as np
from safetensors.numpy import save

root = os.path.join(os.path.dirname(__file__), "..")
st_dir = os.path.join(root, "fuzz", "corpus", "safetensors")
cfg_dir = os.path.join(root, "fuzz", "corpus", "config_json")
os.makedirs(st_dir, exist_ok=True)
os.makedirs(cfg_dir, exist_ok=True)


def put(name, data):
    with open(os.path.join(st_dir, name), "wb") as f:
        f.write(data)


put("f32_bf16.safetensors", save({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, dtype=np.float16)},
                                 metadata={"format": "pt"}))
put("ints.safetensors", save({"i64": np.array([1, 2], dtype=np.int64), "u8": np.zeros((2, 2), dtype=np.uint8),
                              "empty": np.zeros((0, 3), dtype=np.float32)}))
put("scalar.safetensors", save({"s": np.array(3.0, dtype=np.float64)}))


def raw(header, data=b""):
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


put("fp8.safetensors", raw({"w": {"dtype": "F8_E4M3", "shape": [2, 2], "data_offsets": [0, 4]},
                            "w_scale_inv": {"dtype": "F32", "shape": [1, 1], "data_offsets": [4, 8]}}, bytes(8)))
put("overlap.safetensors", raw({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)))
put("past_end.safetensors", raw({"x": {"dtype": "BF16", "shape": [8], "data_offsets": [0, 16]}}, bytes(4)))
put("length_lies.safetensors", struct.pack("<Q", 1 << 40) + b'{"x": 1}')
put("dup.safetensors", b'\x3c\x00\x00\x00\x00\x00\x00\x00{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{}}  \x00')

for name in ("deepseek_v3.json", "deepseek_v3_1.json", "deepseek_v2_lite.json", "kimi_k2.json", "minimal_v3.json",
             "bad_topk_group.json", "bad_quant.json"):
    shutil.copy(os.path.join(root, "tests", "data", "configs", name), os.path.join(cfg_dir, name))
