// GGUF reader/writer/deepseek2 mapping against gguf-py's view of the committed fixtures
// (scripts/make_gguf_fixtures.py -> tests/data/gguf/expected.json), plus broken files made
// from the good ones in a temp dir.
#include "core/error.hpp"
#include "formats/gguf.hpp"
#include "formats/gguf_deepseek2.hpp"
#include "formats/gguf_writer.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace sluice;
using namespace sluice::gguf;

namespace {

fs::path data_dir() {
    const char* data = std::getenv("SLUICE_TEST_DATA");
    REQUIRE_MESSAGE(data != nullptr, "SLUICE_TEST_DATA is not set");
    return fs::path(data) / "gguf";
}

nlohmann::json expected() {
    std::ifstream in(data_dir() / "expected.json");
    REQUIRE(in.good());
    return nlohmann::json::parse(in);
}

std::vector<uint8_t> read_all(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    REQUIRE(in.good());
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_all(const fs::path& p, const std::vector<uint8_t>& bytes) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

struct TempDir {
    fs::path path;
    TempDir() {
        std::string tmpl = (fs::temp_directory_path() / "sluice-gguf-XXXXXX").string();
        REQUIRE(mkdtemp(tmpl.data()) != nullptr);
        path = tmpl;
    }
    ~TempDir() { fs::remove_all(path); }
};

GgufFile parse_file(const fs::path& p) {
    FileByteSource src(p.string());
    GgufFile f = parse(src, p.string());
    validate(f);
    return f;
}

std::string error_of(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const Error& e) {
        return e.what();
    }
    return "(no error)";
}

// The byte position of a tensor info's type field (offset field follows it).
size_t type_field_position(const std::vector<uint8_t>& bytes, const TensorInfo& t) {
    std::vector<uint8_t> needle(8);
    const uint64_t len = t.name.size();
    std::memcpy(needle.data(), &len, 8);
    needle.insert(needle.end(), t.name.begin(), t.name.end());
    auto it = std::search(bytes.begin(), bytes.end(), needle.begin(), needle.end());
    REQUIRE(it != bytes.end());
    return static_cast<size_t>(it - bytes.begin()) + needle.size() + 4 + 8 * t.n_dims;
}

template <typename T>
void poke(std::vector<uint8_t>& bytes, size_t at, T v) {
    std::memcpy(bytes.data() + at, &v, sizeof(T));
}

// Rewrites `src` through our writer: metadata passed through `edit`, tensors kept by `keep`.
void rewrite(const fs::path& src, const fs::path& dst, uint64_t alignment,
             const std::function<void(std::vector<KeyValue>&)>& edit = {},
             const std::function<bool(const TensorInfo&)>& keep = {}) {
    GgufFile in = parse_file(src);
    const auto bytes = read_all(src);
    std::vector<KeyValue> meta = in.metadata;
    std::erase_if(meta, [](const KeyValue& kv) { return kv.key == "general.alignment"; });
    if (edit) edit(meta);
    GgufWriter w(dst.string(), alignment);
    for (auto& kv : meta) w.add_metadata(kv.key, kv.value);
    std::vector<const TensorInfo*> kept;
    for (const auto& t : in.tensors) {
        if (keep && !keep(t)) continue;
        w.add_tensor(t.name, t.type, std::span<const int64_t>(t.ne.data(), t.n_dims));
        kept.push_back(&t);
    }
    w.write_header();
    for (const TensorInfo* t : kept)
        w.write_tensor_data(std::span<const uint8_t>(bytes.data() + t->extent.offset, t->size_bytes));
    w.finish();
}

void set_u32(std::vector<KeyValue>& meta, std::string_view key, uint32_t v) {
    for (auto& kv : meta)
        if (kv.key == key) kv.value = Value::of_u32(v);
}

}  // namespace

TEST_CASE("reader agrees with gguf-py on tensors, offsets and alignment of every fixture") {
    const auto exp = expected();
    for (const auto& [name, e] : exp.items()) {
        CAPTURE(name);
        GgufFile f = parse_file(data_dir() / name);
        CHECK(f.version == 3);
        CHECK(f.alignment == e["alignment"].get<uint64_t>());
        CHECK(f.data_offset == e["data_offset"].get<uint64_t>());
        REQUIRE(f.tensors.size() == e["tensors"].size());
        for (size_t k = 0; k < f.tensors.size(); ++k) {
            const auto& et = e["tensors"][k];
            const TensorInfo& t = f.tensors[k];
            CAPTURE(t.name);
            CHECK(t.name == et["name"].get<std::string>());
            CHECK(static_cast<uint32_t>(t.type) == et["type"].get<uint32_t>());
            REQUIRE(t.n_dims == et["ne"].size());
            for (uint32_t d = 0; d < t.n_dims; ++d) CHECK(t.ne[d] == et["ne"][d].get<int64_t>());
            CHECK(t.extent.offset == et["offset"].get<uint64_t>());
            CHECK(t.extent.length == et["n_bytes"].get<uint64_t>());
        }
        CHECK(f.metadata.size() == e["metadata"].size());
    }
}

TEST_CASE("reader agrees with gguf-py on metadata values of every scalar type, strings and arrays") {
    const auto e = expected()["mixed_align32.gguf"];
    GgufFile f = parse_file(data_dir() / "mixed_align32.gguf");
    Metadata m(f.path, &f.metadata);
    for (const auto& [key, types] : e["value_types"].items()) {
        CAPTURE(key);
        const Value* v = m.find(key);
        REQUIRE(v != nullptr);
        CHECK(static_cast<uint32_t>(v->type) == types[0].get<uint32_t>());
        const auto& ev = e["metadata"][key];
        switch (v->type) {
        case ValueType::u8: case ValueType::u16: case ValueType::u32: case ValueType::u64:
            CHECK(v->u == ev.get<uint64_t>());
            break;
        case ValueType::i8: case ValueType::i16: case ValueType::i32: case ValueType::i64:
            CHECK(v->i == ev.get<int64_t>());
            break;
        case ValueType::f32: case ValueType::f64: CHECK(v->f == ev.get<double>()); break;
        case ValueType::boolean: CHECK(v->b == ev.get<bool>()); break;
        case ValueType::string: CHECK(v->s == ev.get<std::string>()); break;
        case ValueType::array:
            if (types[1].get<uint32_t>() != 9) {  // gguf-py flattens nested arrays; checked below
                REQUIRE(v->items.size() == ev.size());
                CHECK(static_cast<uint32_t>(v->array_type) == types[1].get<uint32_t>());
            }
            break;
        }
    }
    CHECK(m.get_u32("test.u32") == 4000000000u);
    CHECK(m.get_i64("test.i8") == -100);
    CHECK(m.get_u64("test.u64") == (uint64_t{1} << 63) + 5);
    CHECK(m.get_f32("test.f32") == doctest::Approx(0.1f));
    CHECK(m.get_string("test.string") == "h\xc3\xa9llo, gguf");
    CHECK(m.get_string_array("test.array_str") == std::vector<std::string>{"a", "bc", ""});
    CHECK(m.get_i64_array("test.array_i32") == std::vector<int64_t>{1, -2, 3});
    const Value& nested = m.get_array("test.array_nested");
    REQUIRE(nested.array_type == ValueType::array);
    REQUIRE(nested.items.size() == 2);
    CHECK(nested.items[0].items.size() == 2);
    CHECK(nested.items[1].items.size() == 1);
    CHECK(nested.items[1].items[0].i == 3);
    CHECK(error_of([&] { m.get_u32("test.i32"); }).find("'test.i32'") != std::string::npos);
    CHECK(error_of([&] { m.get_u32("test.u64"); }).find("does not fit in u32") != std::string::npos);
    CHECK(error_of([&] { m.get_string("test.u8"); }).find("expected string") != std::string::npos);
    CHECK(error_of([&] { m.get_u32("no.such.key"); }).find("missing metadata key 'no.such.key'") != std::string::npos);
}

TEST_CASE("parsing from memory equals parsing from the file") {
    const auto bytes = read_all(data_dir() / "deepseek2_tiny.gguf");
    MemoryByteSource mem(bytes);
    GgufFile a = parse(mem, "mem");
    GgufFile b = parse_file(data_dir() / "deepseek2_tiny.gguf");
    REQUIRE(a.tensors.size() == b.tensors.size());
    for (size_t k = 0; k < a.tensors.size(); ++k) CHECK(a.tensors[k].extent.offset == b.tensors[k].extent.offset);
}

TEST_CASE("writer output reads back identically, tensor bytes included, at alignment 4096 and 32") {
    TempDir tmp;
    for (uint64_t alignment : {uint64_t{4096}, uint64_t{32}}) {
        CAPTURE(alignment);
        const fs::path src = data_dir() / "mixed_align32.gguf";
        const fs::path dst = tmp.path / "rewritten.gguf";
        rewrite(src, dst, alignment);
        GgufFile a = parse_file(src);
        GgufFile b = parse_file(dst);
        CHECK(b.alignment == alignment);
        CHECK(b.data_offset % alignment == 0);
        const auto abytes = read_all(src), bbytes = read_all(dst);
        REQUIRE(a.tensors.size() == b.tensors.size());
        for (size_t k = 0; k < a.tensors.size(); ++k) {
            CHECK(a.tensors[k].name == b.tensors[k].name);
            CHECK(a.tensors[k].type == b.tensors[k].type);
            CHECK(a.tensors[k].ne == b.tensors[k].ne);
            CHECK(b.tensors[k].extent.offset % alignment == 0);
            CHECK(std::equal(abytes.begin() + a.tensors[k].extent.offset,
                             abytes.begin() + a.tensors[k].extent.offset + a.tensors[k].size_bytes,
                             bbytes.begin() + b.tensors[k].extent.offset));
        }
        size_t compared = 0;
        for (const auto& kv : a.metadata) {
            if (kv.key == "general.alignment") continue;
            const Value* v = b.find(kv.key);
            REQUIRE(v != nullptr);
            CHECK(v->type == kv.value.type);
            CHECK(v->u == kv.value.u);
            CHECK(v->i == kv.value.i);
            CHECK(v->s == kv.value.s);
            CHECK(v->items.size() == kv.value.items.size());
            ++compared;
        }
        CHECK(compared > 15);
    }
}

TEST_CASE("a split set opened from its first file merges tensors with per-split file indices") {
    GgufModel model = open_gguf((data_dir() / "split-00001-of-00002.gguf").string());
    GgufModel whole = open_gguf((data_dir() / "deepseek2_tiny.gguf").string());
    REQUIRE(model.files().paths.size() == 2);
    CHECK(model.tensors().size() == whole.tensors().size());
    const auto exp = expected();
    const size_t first_count = exp["split-00001-of-00002.gguf"]["tensors"].size();
    for (size_t k = 0; k < model.tensors().size(); ++k)
        CHECK(model.tensors()[k].extent.file_index == (k < first_count ? 0u : 1u));
    CHECK(model.metadata().get_string("general.architecture") == "deepseek2");
    CHECK(model.tensor("blk.1.ffn_down_exps.weight").extent.file_index == 1);
}

TEST_CASE("a split set with a wrong split.tensors.count or a missing split is refused") {
    TempDir tmp;
    rewrite(data_dir() / "split-00001-of-00002.gguf", tmp.path / "s-00001-of-00002.gguf", 32,
            [](auto& meta) { for (auto& kv : meta) if (kv.key == "split.tensors.count") kv.value = Value::of_i32(3); });
    CHECK(error_of([&] { open_gguf((tmp.path / "s-00001-of-00002.gguf").string()); }).find("cannot open") != std::string::npos);
    fs::copy_file(data_dir() / "split-00002-of-00002.gguf", tmp.path / "s-00002-of-00002.gguf");
    CHECK(error_of([&] { open_gguf((tmp.path / "s-00001-of-00002.gguf").string()); }).find("split.tensors.count = 3") !=
          std::string::npos);
}

TEST_CASE("deepseek2 hparams and tensor map come out of the tiny model, experts as slabs") {
    GgufModel model = open_gguf((data_dir() / "deepseek2_tiny.gguf").string());
    const Deepseek2Hparams h = read_deepseek2_hparams(model.metadata());
    CHECK(h.block_count == 2);
    CHECK(h.expert_count == 4);
    CHECK(h.expert_gating_func == ExpertGating::sigmoid);
    CHECK(h.expert_group_count == 1);  // absent key, not a 256-expert model
    CHECK(h.q_lora_rank == 32u);
    CHECK(h.expert_weights_norm);
    const Deepseek2Tensors t = map_deepseek2_tensors(model, h);
    REQUIRE(t.layers.size() == 2);
    CHECK_FALSE(t.layers[0].is_moe());
    CHECK(t.layers[0].ffn_gate->type == DType::Q8_0);
    CHECK(t.layers[1].is_moe());
    CHECK(t.layers[1].attn_kv_b != nullptr);
    CHECK(t.layers[1].exp_probs_b != nullptr);
    const TensorInfo& down = *t.layers[1].ffn_down_exps;
    const uint64_t slab = 64 * row_bytes(DType::F16, 32);
    for (uint32_t e = 0; e < 4; ++e) {
        const Extent x = expert_extent(down, e);
        CHECK(x.offset == down.extent.offset + e * slab);
        CHECK(x.length == slab);
    }
    CHECK(expert_extent(down, 3).offset + slab == down.extent.offset + down.size_bytes);
    CHECK_THROWS_AS(expert_extent(down, 4), Error);
}

TEST_CASE("deepseek2 mapping refuses other architectures, inconsistent expert counts and missing tensors") {
    TempDir tmp;
    const fs::path src = data_dir() / "deepseek2_tiny.gguf";
    const fs::path arch = tmp.path / "arch.gguf", experts = tmp.path / "experts.gguf", missing = tmp.path / "missing.gguf";
    rewrite(src, arch, 32, [](auto& meta) {
        for (auto& kv : meta) if (kv.key == "general.architecture") kv.value = Value::of_string("llama");
    });
    CHECK(error_of([&] { read_deepseek2_hparams(open_gguf(arch.string()).metadata()); }).find("'llama'") != std::string::npos);
    rewrite(src, experts, 32, [](auto& meta) { set_u32(meta, "deepseek2.expert_count", 8); });
    {
        GgufModel m = open_gguf(experts.string());
        const std::string err = error_of([&] { map_deepseek2_tensors(m, read_deepseek2_hparams(m.metadata())); });
        CHECK(err.find("blk.1.ffn_gate_inp.weight") != std::string::npos);
        CHECK(err.find("expert_count") != std::string::npos);
    }
    rewrite(src, missing, 32, {}, [](const TensorInfo& t) { return t.name != "blk.1.attn_kv_a_norm.weight"; });
    {
        GgufModel m = open_gguf(missing.string());
        CHECK(error_of([&] { map_deepseek2_tensors(m, read_deepseek2_hparams(m.metadata())); })
                  .find("missing required tensor 'blk.1.attn_kv_a_norm.weight'") != std::string::npos);
    }
}

TEST_CASE("broken files are refused with errors naming the file and the problem") {
    TempDir tmp;
    const fs::path good = data_dir() / "mixed_align32.gguf";
    const auto bytes = read_all(good);
    const GgufFile f = parse_file(good);
    const fs::path bad = tmp.path / "bad.gguf";
    auto expect_error = [&](const std::vector<uint8_t>& b, std::string_view needle) {
        write_all(bad, b);
        const std::string err = error_of([&] { parse_file(bad); });
        CAPTURE(err);
        CHECK(err.find(needle) != std::string::npos);
        CHECK(err.find(bad.string()) != std::string::npos);
    };
    SUBCASE("truncated at several cut points") {
        for (size_t cut : {size_t{0}, size_t{3}, size_t{7}, size_t{20}, size_t{100}, size_t{500},
                           static_cast<size_t>(f.data_offset) - 1, bytes.size() - 1}) {
            CAPTURE(cut);
            write_all(bad, std::vector<uint8_t>(bytes.begin(), bytes.begin() + cut));
            const std::string err = error_of([&] { parse_file(bad); });
            CAPTURE(err);
            // Cut inside the header: a short read or a count that no longer fits; cut inside
            // the data: a tensor (or the data section) past the end.
            const bool named = err.find("truncated") != std::string::npos || err.find("cannot fit") != std::string::npos ||
                               err.find("past end of file") != std::string::npos;
            CHECK(named);
            CHECK(err.find(bad.string()) != std::string::npos);
            if (cut > f.data_offset) CHECK(err.find("tensor 'f.bf16'") != std::string::npos);
        }
    }
    SUBCASE("wrong magic") {
        auto b = bytes;
        b[0] = 'X';
        expect_error(b, "not a GGUF file");
    }
    SUBCASE("version 2") {
        auto b = bytes;
        poke<uint32_t>(b, 4, 2);
        expect_error(b, "GGUF version 2 is not supported");
    }
    SUBCASE("absurd tensor and kv counts") {
        auto b = bytes;
        poke<uint64_t>(b, 8, uint64_t{1} << 60);
        expect_error(b, "tensor_count 1152921504606846976 cannot fit");
        b = bytes;
        poke<uint64_t>(b, 16, ~uint64_t{0});
        expect_error(b, "metadata_kv_count");
    }
    SUBCASE("unknown type id") {
        auto b = bytes;
        poke<uint32_t>(b, type_field_position(b, f.tensors[2]), 99);
        expect_error(b, "tensor 'c.q8_0': unknown ggml type id 99");
    }
    SUBCASE("tensor offset beyond end of file") {
        auto b = bytes;
        poke<uint64_t>(b, type_field_position(b, f.tensors[5]) + 4, uint64_t{1} << 20);
        expect_error(b, "tensor 'f.bf16': data [");
    }
    SUBCASE("misaligned offset") {
        auto b = bytes;
        const size_t at = type_field_position(b, f.tensors[1]) + 4;
        poke<uint64_t>(b, at, f.tensors[1].relative_offset + 8);
        expect_error(b, "is not a multiple of the alignment 32");
    }
    SUBCASE("overlapping tensors") {
        auto b = bytes;
        poke<uint64_t>(b, type_field_position(b, f.tensors[1]) + 4, f.tensors[0].relative_offset);
        expect_error(b, "overlaps");
    }
}
