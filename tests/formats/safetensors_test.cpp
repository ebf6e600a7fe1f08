// The safetensors reader against a file the Python `safetensors` package wrote (the oracle
// fixture in tests/data/hf_tiny_v3), its own writer, and deliberately broken files: each
// error is one line naming the file and the tensor.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "formats/safetensors.hpp"

using namespace sluice;
namespace fs = std::filesystem;

namespace {

fs::path test_data() {
    const char* data = std::getenv("SLUICE_TEST_DATA");
    REQUIRE_MESSAGE(data != nullptr, "SLUICE_TEST_DATA is not set");
    return data;
}

// A fresh scratch directory per test case, removed afterwards.
struct ScratchDir {
    fs::path path;
    explicit ScratchDir(const char* tag) {
        path = fs::temp_directory_path() / ("sluice_st_" + std::string(tag) + "_" + std::to_string(::getpid()));
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~ScratchDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

std::vector<std::byte> iota_bytes(size_t n, int start = 0) {
    std::vector<std::byte> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((start + i) & 0xff);
    return v;
}

// Writes a small valid file with the writer: a [2,3] F32, a [4] BF16, a [2,2] F8_E4M3.
void write_small(const fs::path& file, int start = 0, const std::string& prefix = "") {
    SafetensorsWriter w(file,
                        {{prefix + "a", "F32", {2, 3}}, {prefix + "b", "BF16", {4}}, {prefix + "c", "F8_E4M3", {2, 2}}},
                        {{"format", "pt"}});
    auto bytes = iota_bytes(24 + 8 + 4, start);
    w.append(std::span(bytes).first(10));  // pieces need not align with tensors
    w.append(std::span(bytes).subspan(10));
    w.finish();
}

std::string open_error(const fs::path& path) {
    try {
        SafetensorsCheckpoint::open(path);
    } catch (const Error& e) {
        return e.what();
    }
    FAIL("opening ", path.string(), " did not fail");
    return {};
}

bool contains(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

void check_one_line_naming(const std::string& message, const std::string& file, const std::string& tensor) {
    CAPTURE(message);
    CHECK(contains(message, file));
    CHECK(contains(message, "'" + tensor + "'"));
    CHECK(message.find('\n') == std::string::npos);
}

std::span<const std::byte> no_data() { return {}; }

}  // namespace

TEST_CASE("the Python-written oracle fixture reads back with the values safetensors gives") {
    SafetensorsCheckpoint ck = SafetensorsCheckpoint::open(test_data() / "hf_tiny_v3");
    CHECK(ck.tensors().size() == 139);  // len(safe_open(...).keys())
    CHECK(ck.files().paths.size() == 1);
    const SafetensorsTensor& kv_a = ck.expect_tensor("model.layers.0.self_attn.kv_a_proj_with_mqa.weight", {40, 64});
    CHECK(kv_a.dtype == DType::F32);
    CHECK(kv_a.extent.length == 40 * 64 * 4);
    std::vector<float> values(40 * 64);
    ck.read_tensor(kv_a, std::as_writable_bytes(std::span(values)));
    // safe_open(...).get_tensor(name).flatten()[:3] and .sum() from the Python package.
    CHECK(values[0] == doctest::Approx(-0.17171576619148254));
    CHECK(values[1] == doctest::Approx(-0.04735821858048439));
    CHECK(values[2] == doctest::Approx(-0.04081598296761513));
    double sum = 0;
    for (float v : values) sum += v;
    CHECK(sum == doctest::Approx(8.118471145629883).epsilon(1e-5));
    CHECK(ck.metadata().at(0).at("format") == "pt");
}

TEST_CASE("every oracle fixture opens with the tensor count the Python package reports") {
    struct Fixture {
        const char* dir;
        size_t n_tensors;  // len(safe_open(dir/model.safetensors).keys())
    };
    for (Fixture f : {Fixture{"hf_tiny_v3", 139}, Fixture{"hf_tiny_v3_shared3", 127}, Fixture{"hf_tiny_v2lite", 83}}) {
        CAPTURE(f.dir);
        SafetensorsCheckpoint ck = SafetensorsCheckpoint::open(test_data() / f.dir);
        CHECK(ck.tensors().size() == f.n_tensors);
        for (const SafetensorsTensor& t : ck.tensors()) {
            CHECK(t.dtype == DType::F32);
            CHECK(t.extent.length == static_cast<uint64_t>(t.n_elements()) * 4);
        }
    }
}

TEST_CASE("writer output parses back with dtypes, shapes, aligned data and exact bytes") {
    ScratchDir dir("roundtrip");
    write_small(dir.path / "model.safetensors");
    SafetensorsHeader header = read_safetensors_header(dir.path / "model.safetensors");
    CHECK(header.data_offset % 8 == 0);
    REQUIRE(header.tensors.size() == 3);
    CHECK(header.metadata.at("format") == "pt");

    SafetensorsCheckpoint ck = SafetensorsCheckpoint::open(dir.path);
    const SafetensorsTensor& a = ck.expect_tensor("a", {2, 3});
    const SafetensorsTensor& b = ck.expect_tensor("b", {4});
    const SafetensorsTensor& c = ck.expect_tensor("c", {2, 2});
    CHECK(a.dtype == DType::F32);
    CHECK(b.dtype == DType::BF16);
    CHECK(c.dtype == DType::FP8_E4M3_B128);
    CHECK(a.extent.offset == header.data_offset);
    CHECK(b.extent.offset == a.extent.offset + 24);
    CHECK(c.extent.offset == b.extent.offset + 8);
    auto expected = iota_bytes(36);
    auto got_b = ck.read_tensor(b);
    REQUIRE(got_b.size() == 8);
    CHECK(std::memcmp(got_b.data(), expected.data() + 24, 8) == 0);
    auto got_c = ck.read_tensor(c);
    CHECK(std::memcmp(got_c.data(), expected.data() + 32, 4) == 0);
}

TEST_CASE("a dtype sluice cannot compute in is parsed but flagged") {
    ScratchDir dir("flagged");
    SafetensorsWriter w(dir.path / "m.safetensors", {{"mask", "U8", {3}}, {"ids", "I64", {1}}});
    auto bytes = iota_bytes(11);
    w.append(bytes);
    w.finish();
    SafetensorsCheckpoint ck = SafetensorsCheckpoint::open(dir.path / "m.safetensors");
    CHECK_FALSE(ck.find("mask")->dtype.has_value());
    CHECK(ck.find("ids")->dtype == DType::I64);
    CHECK_THROWS_WITH_AS(ck.find("mask")->require_dtype(), doctest::Contains("'mask'"), Error);
}

TEST_CASE("a sharded directory resolves every tensor through the index") {
    ScratchDir dir("sharded");
    write_small(dir.path / "model-00001-of-000002.safetensors", 0, "x.");
    write_small(dir.path / "model-00002-of-000002.safetensors", 100, "y.");
    std::ofstream(dir.path / "model.safetensors.index.json") << R"({"metadata": {"total_size": 72}, "weight_map": {
        "x.a": "model-00001-of-000002.safetensors", "x.b": "model-00001-of-000002.safetensors",
        "x.c": "model-00001-of-000002.safetensors", "y.a": "model-00002-of-000002.safetensors",
        "y.b": "model-00002-of-000002.safetensors", "y.c": "model-00002-of-000002.safetensors"}})";
    SafetensorsCheckpoint ck = SafetensorsCheckpoint::open(dir.path);
    CHECK(ck.tensors().size() == 6);
    REQUIRE(ck.files().paths.size() == 2);
    const SafetensorsTensor* ya = ck.find("y.a");
    REQUIRE(ya != nullptr);
    CHECK(fs::path(ck.files().paths[ya->extent.file_index]).filename() == "model-00002-of-000002.safetensors");
    auto bytes = ck.read_tensor(*ya);
    CHECK(bytes[0] == std::byte{100});
    CHECK(ck.find("x.a")->extent.file_index != ya->extent.file_index);
}

TEST_CASE("an index pointing to a missing shard names the index, tensor and shard") {
    ScratchDir dir("missing_shard");
    write_small(dir.path / "model-00001-of-000002.safetensors");
    std::ofstream(dir.path / "model.safetensors.index.json") << R"({"weight_map": {
        "a": "model-00001-of-000002.safetensors", "lm_head.weight": "model-00002-of-000002.safetensors"}})";
    std::string message = open_error(dir.path);
    check_one_line_naming(message, "model.safetensors.index.json", "lm_head.weight");
    CHECK(contains(message, "model-00002-of-000002.safetensors"));
}

TEST_CASE("an index entry whose shard lacks the tensor is an error") {
    ScratchDir dir("index_lies");
    write_small(dir.path / "model-00001-of-000001.safetensors");
    std::ofstream(dir.path / "model.safetensors.index.json")
        << R"({"weight_map": {"a": "model-00001-of-000001.safetensors", "zzz": "model-00001-of-000001.safetensors"}})";
    check_one_line_naming(open_error(dir.path), "model-00001-of-000001.safetensors", "zzz");
}

TEST_CASE("an index cannot point outside the model directory") {
    ScratchDir dir("escape");
    write_small(dir.path / "model-00001-of-000001.safetensors");
    std::ofstream(dir.path / "model.safetensors.index.json") << R"({"weight_map": {"a": "../elsewhere.safetensors"}})";
    check_one_line_naming(open_error(dir.path), "index.json", "a");
}

TEST_CASE("the same tensor name in two shards is an error naming both") {
    ScratchDir dir("dup_shards");
    write_small(dir.path / "part1.safetensors");
    write_small(dir.path / "part2.safetensors");
    std::string message = open_error(dir.path);
    check_one_line_naming(message, "part2.safetensors", "a");
    CHECK(contains(message, "part1.safetensors"));
}

TEST_CASE("a truncated file is an error naming the file and the tensor past the end") {
    ScratchDir dir("truncated");
    fs::path file = dir.path / "model.safetensors";
    write_small(file);
    fs::resize_file(file, fs::file_size(file) - 3);  // cuts into tensor c
    std::string message = open_error(file);
    check_one_line_naming(message, "model.safetensors", "c");
    CHECK(contains(message, "truncated"));
}

TEST_CASE("a header length beyond the file size is rejected") {
    ScratchDir dir("header_len");
    fs::path file = dir.path / "m.safetensors";
    write_small(file);
    fs::resize_file(file, 20);
    std::string message = open_error(file);
    CHECK(contains(message, "m.safetensors"));
    CHECK(contains(message, "header length"));
}

TEST_CASE("a file shorter than 8 bytes is rejected") {
    ScratchDir dir("tiny");
    std::ofstream(dir.path / "m.safetensors") << "abc";
    CHECK(contains(open_error(dir.path / "m.safetensors"), "too short"));
}

TEST_CASE("a header lying about offsets is rejected") {
    ScratchDir dir("lying");
    auto data = iota_bytes(16);
    SUBCASE("offsets past the data buffer") {
        write_raw_safetensors(dir.path / "m.safetensors", R"({"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}})",
                              data);
        check_one_line_naming(open_error(dir.path / "m.safetensors"), "m.safetensors", "w");
    }
    SUBCASE("byte length disagrees with shape") {
        write_raw_safetensors(dir.path / "m.safetensors", R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}})",
                              data);
        std::string message = open_error(dir.path / "m.safetensors");
        check_one_line_naming(message, "m.safetensors", "w");
        CHECK(contains(message, "needs 12"));
    }
    SUBCASE("end before begin") {
        write_raw_safetensors(dir.path / "m.safetensors", R"({"w": {"dtype": "U8", "shape": [0], "data_offsets": [8, 4]}})",
                              data);
        check_one_line_naming(open_error(dir.path / "m.safetensors"), "m.safetensors", "w");
    }
    SUBCASE("negative dimension") {
        write_raw_safetensors(dir.path / "m.safetensors", R"({"w": {"dtype": "U8", "shape": [-4], "data_offsets": [0, 4]}})",
                              data);
        check_one_line_naming(open_error(dir.path / "m.safetensors"), "m.safetensors", "w");
    }
    SUBCASE("unknown dtype") {
        write_raw_safetensors(dir.path / "m.safetensors", R"({"w": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 4]}})",
                              data);
        check_one_line_naming(open_error(dir.path / "m.safetensors"), "m.safetensors", "w");
    }
    SUBCASE("a shape whose element count overflows") {
        write_raw_safetensors(dir.path / "m.safetensors",
                              R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]}})", data);
        check_one_line_naming(open_error(dir.path / "m.safetensors"), "m.safetensors", "w");
    }
}

TEST_CASE("overlapping tensors are rejected naming both") {
    ScratchDir dir("overlap");
    auto data = iota_bytes(16);
    write_raw_safetensors(dir.path / "m.safetensors",
                          R"({"first": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                              "second": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                          data);
    std::string message = open_error(dir.path / "m.safetensors");
    check_one_line_naming(message, "m.safetensors", "second");
    CHECK(contains(message, "'first'"));
}

TEST_CASE("a tensor name repeated inside one header is rejected") {
    ScratchDir dir("dup_key");
    auto data = iota_bytes(8);
    write_raw_safetensors(dir.path / "m.safetensors",
                          R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                              "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                          data);
    check_one_line_naming(open_error(dir.path / "m.safetensors"), "m.safetensors", "w");
}

TEST_CASE("malformed JSON headers are rejected") {
    ScratchDir dir("badjson");
    write_raw_safetensors(dir.path / "m.safetensors", R"({"w": {"dtype": "F32", )", no_data());
    CHECK(contains(open_error(dir.path / "m.safetensors"), "not well-formed JSON"));
    write_raw_safetensors(dir.path / "m.safetensors", R"([1, 2, 3])", no_data());
    CHECK(contains(open_error(dir.path / "m.safetensors"), "not a JSON object"));
    write_raw_safetensors(dir.path / "m.safetensors", R"({"w": {"dtype": "F32", "shape": [1]}})", no_data());
    check_one_line_naming(open_error(dir.path / "m.safetensors"), "m.safetensors", "w");
}

TEST_CASE("expect_tensor names the tensor when it is missing or has the wrong shape") {
    ScratchDir dir("expect");
    write_small(dir.path / "model.safetensors");
    SafetensorsCheckpoint ck = SafetensorsCheckpoint::open(dir.path);
    std::string missing, wrong;
    try {
        ck.expect_tensor("model.norm.weight", {64});
    } catch (const Error& e) {
        missing = e.what();
    }
    try {
        ck.expect_tensor("a", {3, 2});
    } catch (const Error& e) {
        wrong = e.what();
    }
    check_one_line_naming(missing, dir.path.string(), "model.norm.weight");
    CHECK(contains(missing, "missing"));
    check_one_line_naming(wrong, "model.safetensors", "a");
    CHECK(contains(wrong, "shape [2, 3], expected [3, 2]"));
}

TEST_CASE("reading a tensor from a file truncated after opening reports the short read") {
    ScratchDir dir("short_read");
    fs::path file = dir.path / "model.safetensors";
    write_small(file);
    SafetensorsCheckpoint ck = SafetensorsCheckpoint::open(file);
    fs::resize_file(file, fs::file_size(file) - 2);
    std::string message;
    try {
        ck.read_tensor(*ck.find("c"));
    } catch (const Error& e) {
        message = e.what();
    }
    check_one_line_naming(message, "model.safetensors", "c");
    CHECK(contains(message, "short"));
}

TEST_CASE("the writer refuses more bytes than declared and removes an unfinished file") {
    ScratchDir dir("writer");
    fs::path file = dir.path / "m.safetensors";
    {
        SafetensorsWriter w(file, {{"w", "F32", {2}}});
        auto bytes = iota_bytes(12);
        CHECK_THROWS_AS(w.append(bytes), Error);
        CHECK_THROWS_AS(w.finish(), Error);
    }
    CHECK_FALSE(fs::exists(file));
}

TEST_CASE("an empty directory says what it looked for") {
    ScratchDir dir("empty");
    CHECK(contains(open_error(dir.path), "model.safetensors"));
    CHECK(contains(open_error(dir.path / "nope"), "no such file"));
}

TEST_CASE("the fuzz seed corpus: files the safetensors package wrote parse, hand-broken ones throw") {
    const fs::path corpus = test_data() / ".." / ".." / "fuzz" / "corpus" / "safetensors";
    REQUIRE(fs::is_directory(corpus));
    for (const char* good : {"f32_bf16.safetensors", "ints.safetensors", "scalar.safetensors", "fp8.safetensors"}) {
        CAPTURE(good);
        CHECK_NOTHROW(read_safetensors_header(corpus / good));
    }
    SafetensorsHeader ints = read_safetensors_header(corpus / "ints.safetensors");
    REQUIRE(ints.tensors.size() == 3);
    // The package puts the empty [0, 3] tensor at offset 16 with no bytes, between i64 and u8.
    CHECK(ints.tensors[1].name == "empty");
    CHECK(ints.tensors[1].data_begin == ints.tensors[1].data_end);
    CHECK(ints.tensors[1].shape == std::vector<int64_t>{0, 3});
    SafetensorsHeader scalar = read_safetensors_header(corpus / "scalar.safetensors");
    REQUIRE(scalar.tensors.size() == 1);
    CHECK(scalar.tensors[0].shape.empty());  // a 0-d tensor holds one element
    CHECK(scalar.tensors[0].data_end - scalar.tensors[0].data_begin == 8);
    for (const char* bad : {"overlap.safetensors", "past_end.safetensors", "length_lies.safetensors", "dup.safetensors"}) {
        CAPTURE(bad);
        CHECK_THROWS_AS(read_safetensors_header(corpus / bad), Error);
    }
}
