#!/usr/bin/env python3
"""Writes small GGUF fixtures with gguf-py's GGUFWriter into tests/data/gguf/ and records what
gguf-py's GGUFReader sees in expected.json (the oracle tests/formats/gguf_test.cpp compares with).

  python3 scripts/make_gguf_fixtures.py            # (re)write fixtures
  python3 scripts/make_gguf_fixtures.py --check F  # read F (e.g. one our writer made) with gguf-py
"""
import json
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "gguf"


def q_bytes(qtype, ne, rng):
    """Random raw bytes for a quantised tensor of GGUF shape ne (ne[0] fastest)."""
    blck, tsize = gguf.GGML_QUANT_SIZES[qtype]
    row = ne[0] // blck * tsize
    rows = int(np.prod(ne[1:])) if len(ne) > 1 else 1
    data = rng.integers(0, 256, size=rows * row, dtype=np.uint8)
    if qtype == T.Q8_0:  # keep the f16 scales finite
        data = data.reshape(-1, tsize)
        data[:, 0:2] = np.frombuffer(np.float16(0.01).tobytes(), dtype=np.uint8)
    # gguf-py wants the byte shape in numpy order with the last dim in bytes
    return data.reshape(tuple(reversed(ne[1:])) + (row,))


def add_all_metadata(w):
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_uint64("test.u64", 2**63 + 5)
    w.add_int64("test.i64", -(2**62))
    w.add_float32("test.f32", 0.1)
    w.add_float64("test.f64", 2.5e-300)
    w.add_bool("test.bool_true", True)
    w.add_bool("test.bool_false", False)
    w.add_string("test.string", "héllo, gguf")
    w.add_string("test.empty_string", "")
    w.add_array("test.array_i32", [1, -2, 3])
    w.add_array("test.array_str", ["a", "bc", ""])
    w.add_array("test.array_f32", [0.5, -1.25])
    w.add_array("test.array_nested", [[1, 2], [3]])


def write_tensors(w, specs, rng):
    for name, qtype, ne in specs:
        if qtype == T.F32:
            arr = rng.standard_normal(size=tuple(reversed(ne))).astype(np.float32)
            w.add_tensor(name, arr)
        elif qtype == T.F16:
            arr = rng.standard_normal(size=tuple(reversed(ne))).astype(np.float16)
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, q_bytes(qtype, ne, rng), raw_dtype=qtype)


def write_file(path, specs, rng, alignment=None, extra=None, arch="deepseek2", metadata=True):
    w = gguf.GGUFWriter(str(path), arch)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    if metadata:
        add_all_metadata(w)
    if extra:
        extra(w)
    write_tensors(w, specs, rng)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def field_value(field):
    v = field.contents()
    if isinstance(v, float):
        return v
    return v


def describe(path):
    r = gguf.GGUFReader(str(path))
    meta = {}
    types = {}
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            continue
        meta[name] = field_value(field)
        types[name] = [int(t) for t in field.types]
    tensors = [
        {
            "name": t.name,
            "type": int(t.tensor_type),
            "ne": [int(x) for x in t.shape],
            "offset": int(t.data_offset),
            "n_bytes": int(t.n_bytes),
        }
        for t in r.tensors
    ]
    return {"metadata": meta, "value_types": types, "tensors": tensors,
            "alignment": int(r.alignment), "data_offset": int(r.data_offset)}


def deepseek2_meta(w):
    p = "deepseek2."
    w.add_uint32(p + "block_count", 2)
    w.add_uint32(p + "context_length", 4096)
    w.add_uint32(p + "embedding_length", 64)
    w.add_uint32(p + "feed_forward_length", 96)
    w.add_uint32(p + "attention.head_count", 4)
    w.add_uint32(p + "attention.head_count_kv", 4)
    w.add_uint32(p + "attention.key_length", 48)
    w.add_uint32(p + "attention.value_length", 32)
    w.add_uint32(p + "attention.q_lora_rank", 32)
    w.add_uint32(p + "attention.kv_lora_rank", 32)
    w.add_float32(p + "attention.layer_norm_rms_epsilon", 1e-6)
    w.add_uint32(p + "rope.dimension_count", 16)
    w.add_float32(p + "rope.freq_base", 10000.0)
    w.add_uint32(p + "leading_dense_block_count", 1)
    w.add_uint32(p + "expert_count", 4)
    w.add_uint32(p + "expert_used_count", 2)
    w.add_uint32(p + "expert_shared_count", 1)
    w.add_uint32(p + "expert_feed_forward_length", 32)
    w.add_float32(p + "expert_weights_scale", 2.5)
    w.add_bool(p + "expert_weights_norm", True)
    w.add_uint32(p + "expert_gating_func", 2)
    w.add_uint32(p + "vocab_size", 128)


def deepseek2_specs():
    d, q, kv, rope, nope, v, h, ff, eff, ne_, vocab = 64, 32, 32, 16, 32, 32, 4, 96, 32, 4, 128
    s = [("token_embd.weight", T.F32, [d, vocab]), ("output_norm.weight", T.F32, [d]),
         ("output.weight", T.Q8_0, [d, vocab])]
    for b in range(2):
        p = f"blk.{b}."
        s += [(p + "attn_norm.weight", T.F32, [d]), (p + "attn_q_a.weight", T.F16, [d, q]),
              (p + "attn_q_a_norm.weight", T.F32, [q]), (p + "attn_q_b.weight", T.F16, [q, h * (nope + rope)]),
              (p + "attn_kv_a_mqa.weight", T.F16, [d, kv + rope]), (p + "attn_kv_a_norm.weight", T.F32, [kv]),
              (p + "attn_kv_b.weight", T.F16, [kv, h * (nope + v)]), (p + "attn_output.weight", T.F16, [h * v, d]),
              (p + "ffn_norm.weight", T.F32, [d])]
        if b == 0:
            s += [(p + "ffn_gate.weight", T.Q8_0, [d, ff]), (p + "ffn_up.weight", T.Q8_0, [d, ff]),
                  (p + "ffn_down.weight", T.F16, [ff, d])]
        else:
            s += [(p + "ffn_gate_inp.weight", T.F32, [d, ne_]), (p + "exp_probs_b.bias", T.F32, [ne_]),
                  (p + "ffn_gate_exps.weight", T.Q8_0, [d, eff, ne_]), (p + "ffn_up_exps.weight", T.Q8_0, [d, eff, ne_]),
                  (p + "ffn_down_exps.weight", T.F16, [eff, d, ne_]),
                  (p + "ffn_gate_shexp.weight", T.F16, [d, eff]), (p + "ffn_up_shexp.weight", T.F16, [d, eff]),
                  (p + "ffn_down_shexp.weight", T.F16, [eff, d])]
    return s


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        print(json.dumps(describe(sys.argv[2]), indent=1, default=str))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    files = {}
    mixed = [("a.f32", T.F32, [8, 3]), ("b.f16_3d", T.F16, [16, 2, 3]), ("c.q8_0", T.Q8_0, [64, 3]),
             ("d.q4_k_3d", T.Q4_K, [256, 2, 2]), ("e.q6_k", T.Q6_K, [256, 1]), ("f.bf16", T.BF16, [32, 2])]
    write_file(OUT / "mixed_align32.gguf", mixed, rng)
    write_file(OUT / "mixed_align4096.gguf", mixed[:3], rng, alignment=4096)
    write_file(OUT / "deepseek2_tiny.gguf", deepseek2_specs(), rng, metadata=False, extra=deepseek2_meta)
    specs = deepseek2_specs()
    half = len(specs) // 2

    def split_keys(no):
        def f(w):
            w.add_uint16("split.no", no)
            w.add_uint16("split.count", 2)
            w.add_int32("split.tensors.count", len(specs))
            if no == 0:
                deepseek2_meta(w)
        return f
    write_file(OUT / "split-00001-of-00002.gguf", specs[:half], rng, metadata=False, extra=split_keys(0))
    write_file(OUT / "split-00002-of-00002.gguf", specs[half:], rng, metadata=False, extra=split_keys(1))
    for name in ["mixed_align32.gguf", "mixed_align4096.gguf", "deepseek2_tiny.gguf",
                 "split-00001-of-00002.gguf", "split-00002-of-00002.gguf"]:
        files[name] = describe(OUT / name)
    (OUT / "expected.json").write_text(json.dumps(files, indent=1, default=str))
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(files)} fixtures, {total} bytes in {OUT}")


if __name__ == "__main__":
    main()
