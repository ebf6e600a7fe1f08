// safetensors parse/validate, the sharded-directory index, the pread loader and the streaming
// writer. Every check names the file and the tensor, because a 163-shard checkpoint with one bad
// entry is otherwise a needle in a haystack.
#include "formats/safetensors.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/page_cache.hpp"

namespace sluice {

namespace {

using nlohmann::json;

// Upper bound the reference implementation also enforces: a header is metadata, not data.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DTypeRow {
    std::string_view name;
    int64_t element_bytes;
    std::optional<DType> dtype;
};

// The dtypes safetensors defines. Those without a sluice type parse fine but are flagged.
constexpr DTypeRow kDTypes[] = {
    {"F64", 8, DType::F64},      {"F32", 4, DType::F32},       {"F16", 2, DType::F16},
    {"BF16", 2, DType::BF16},    {"F8_E4M3", 1, DType::FP8_E4M3_B128},
    {"F8_E5M2", 1, std::nullopt}, {"F8_E8M0", 1, std::nullopt},
    {"I64", 8, DType::I64},      {"I32", 4, DType::I32},       {"I16", 2, DType::I16},
    {"I8", 1, DType::I8},        {"U64", 8, std::nullopt},     {"U32", 4, std::nullopt},
    {"U16", 2, std::nullopt},    {"U8", 1, std::nullopt},      {"BOOL", 1, std::nullopt},
};

const DTypeRow* find_dtype_row(std::string_view name) {
    for (const DTypeRow& row : kDTypes)
        if (row.name == name) return &row;
    return nullptr;
}

uint64_t read_u64_le(const std::byte* p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
    return v;
}

// Counts object keys as the SAX parser meets them: the DOM keeps only the last of two equal keys,
// so fewer keys in the DOM than in the text means a duplicate.
struct KeyCounter : nlohmann::json_sax<json> {
    uint64_t n_keys = 0;
    bool null() override { return true; }
    bool boolean(bool) override { return true; }
    bool number_integer(number_integer_t) override { return true; }
    bool number_unsigned(number_unsigned_t) override { return true; }
    bool number_float(number_float_t, const string_t&) override { return true; }
    bool string(string_t&) override { return true; }
    bool binary(binary_t&) override { return true; }
    bool start_object(std::size_t) override { return true; }
    bool key(string_t&) override {
        ++n_keys;
        return true;
    }
    bool end_object() override { return true; }
    bool start_array(std::size_t) override { return true; }
    bool end_array() override { return true; }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }
};

uint64_t count_dom_keys(const json& j) {
    uint64_t n = 0;
    if (j.is_object()) {
        n += j.size();
        for (const auto& item : j.items()) n += count_dom_keys(item.value());
    } else if (j.is_array()) {
        for (const json& item : j) n += count_dom_keys(item);
    }
    return n;
}

// Names the first repeated key; slow (a callback per event), so only run once one is known to exist.
std::string find_duplicate_key(std::string_view text) {
    std::vector<std::set<std::string>> open_objects;
    std::string duplicate;
    json::parser_callback_t on_event = [&](int, json::parse_event_t event, json& parsed) {
        if (event == json::parse_event_t::object_start) {
            open_objects.emplace_back();
        } else if (event == json::parse_event_t::object_end) {
            if (!open_objects.empty()) open_objects.pop_back();
        } else if (event == json::parse_event_t::key && !open_objects.empty() && parsed.is_string()) {
            if (!open_objects.back().insert(parsed.get<std::string>()).second && duplicate.empty())
                duplicate = parsed.get<std::string>();
        }
        return true;
    };
    (void)json::parse(text.begin(), text.end(), on_event, /*allow_exceptions=*/false);
    return duplicate;
}

// Parses JSON and rejects duplicate keys in any object (nlohmann would keep the last silently,
// which would let two tensors share a name). Costs one extra SAX pass, not a callback per event.
json parse_json_strict(std::string_view text, bool& duplicate, std::string& duplicate_key) {
    duplicate = false;
    json root = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
    if (root.is_discarded()) return root;
    KeyCounter counter;
    json::sax_parse(text.begin(), text.end(), &counter);
    if (counter.n_keys != count_dom_keys(root)) {
        duplicate = true;
        duplicate_key = find_duplicate_key(text);
    }
    return root;
}

std::string shape_string(std::span<const int64_t> shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

int64_t checked_element_count(std::span<const int64_t> shape, std::string_view file_name, std::string_view tensor) {
    int64_t n = 1;
    for (int64_t dim : shape)
        if (__builtin_mul_overflow(n, dim, &n))
            fail(ErrorKind::invalid_input, "{}: tensor '{}': shape {} overflows", file_name, tensor, shape_string(shape));
    return n;
}

uint64_t json_u64(const json& v, std::string_view file_name, std::string_view tensor, std::string_view field) {
    if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0))
        fail(ErrorKind::invalid_input, "{}: tensor '{}': {} must hold non-negative integers, found {}", file_name, tensor, field,
             v.dump());
    return v.get<uint64_t>();
}

void read_exact(int fd, std::byte* out, uint64_t length, uint64_t offset, std::string_view file, std::string_view what) {
    uint64_t done = 0;
    while (done < length) {
        ssize_t got = ::pread(fd, out + done, std::min<uint64_t>(length - done, 1ull << 30), static_cast<off_t>(offset + done));
        if (got < 0) {
            if (errno == EINTR) continue;
            fail(ErrorKind::io, "{}: {}: read of {} bytes at offset {} failed: {}", file, what, length - done, offset + done,
                 std::strerror(errno));
        }
        if (got == 0)
            fail(ErrorKind::invalid_input, "{}: {}: file ends at offset {}, {} bytes short of the {} expected at offset {}", file,
                 what, offset + done, length - done, length, offset);
        done += static_cast<uint64_t>(got);
    }
    drop_cached(fd, offset, length);
}

}  // namespace

std::optional<int64_t> safetensors_element_bytes(std::string_view dtype_name) {
    const DTypeRow* row = find_dtype_row(dtype_name);
    return row ? std::optional<int64_t>(row->element_bytes) : std::nullopt;
}

std::optional<DType> safetensors_dtype(std::string_view dtype_name) {
    const DTypeRow* row = find_dtype_row(dtype_name);
    return row ? row->dtype : std::nullopt;
}

std::string_view safetensors_dtype_name(DType type) {
    for (const DTypeRow& row : kDTypes)
        if (row.dtype == type) return row.name;
    fail(ErrorKind::unsupported, "type {} has no safetensors element dtype", dtype_name(type));
}

SafetensorsHeader parse_safetensors_header(std::span<const std::byte> file_bytes, uint64_t file_size,
                                           std::string_view file_name) {
    if (file_size < 8 || file_bytes.size() < 8)
        fail(ErrorKind::invalid_input, "{}: {} bytes is too short for a safetensors file (8-byte header length missing)",
             file_name, file_size);
    SafetensorsHeader header;
    header.header_bytes = read_u64_le(file_bytes.data());
    if (header.header_bytes < 2 || header.header_bytes > kMaxHeaderBytes)
        fail(ErrorKind::invalid_input, "{}: header length {} is not sane (2..{} bytes)", file_name, header.header_bytes,
             kMaxHeaderBytes);
    if (header.header_bytes > file_size - 8)
        fail(ErrorKind::invalid_input, "{}: header length {} runs past the end of the {}-byte file (truncated?)", file_name,
             header.header_bytes, file_size);
    if (header.header_bytes > file_bytes.size() - 8)
        fail(ErrorKind::internal, "{}: parse_safetensors_header given {} bytes, header needs {}", file_name, file_bytes.size(),
             8 + header.header_bytes);
    header.data_offset = 8 + header.header_bytes;
    const uint64_t data_bytes = file_size - header.data_offset;

    std::string_view text(reinterpret_cast<const char*>(file_bytes.data() + 8), header.header_bytes);
    bool duplicate = false;
    std::string duplicate_key;
    json root = parse_json_strict(text, duplicate, duplicate_key);
    if (root.is_discarded()) fail(ErrorKind::invalid_input, "{}: header is not well-formed JSON", file_name);
    if (duplicate) fail(ErrorKind::invalid_input, "{}: tensor '{}': name appears twice in the header", file_name, duplicate_key);
    if (!root.is_object()) fail(ErrorKind::invalid_input, "{}: header is not a JSON object", file_name);

    header.tensors.reserve(root.size());
    for (auto it = root.begin(); it != root.end(); ++it) {
        const std::string& name = it.key();
        const json& entry = it.value();
        if (name == "__metadata__") {
            if (!entry.is_object()) fail(ErrorKind::invalid_input, "{}: __metadata__ is not an object", file_name);
            for (auto m = entry.begin(); m != entry.end(); ++m) {
                if (!m.value().is_string())
                    fail(ErrorKind::invalid_input, "{}: __metadata__ '{}': value is not a string", file_name, m.key());
                header.metadata[m.key()] = m.value().get<std::string>();
            }
            continue;
        }
        if (!entry.is_object()) fail(ErrorKind::invalid_input, "{}: tensor '{}': entry is not an object", file_name, name);
        auto dtype_it = entry.find("dtype");
        auto shape_it = entry.find("shape");
        auto offsets_it = entry.find("data_offsets");
        if (dtype_it == entry.end() || !dtype_it->is_string())
            fail(ErrorKind::invalid_input, "{}: tensor '{}': missing string 'dtype'", file_name, name);
        if (shape_it == entry.end() || !shape_it->is_array())
            fail(ErrorKind::invalid_input, "{}: tensor '{}': missing array 'shape'", file_name, name);
        if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2)
            fail(ErrorKind::invalid_input, "{}: tensor '{}': 'data_offsets' must be [begin, end]", file_name, name);

        SafetensorsHeaderTensor t;
        t.name = name;
        t.dtype_name = dtype_it->get<std::string>();
        const DTypeRow* row = find_dtype_row(t.dtype_name);
        if (row == nullptr) fail(ErrorKind::invalid_input, "{}: tensor '{}': unknown dtype '{}'", file_name, name, t.dtype_name);
        t.dtype = row->dtype;
        t.element_bytes = row->element_bytes;
        for (const json& dim : *shape_it) {
            uint64_t d = json_u64(dim, file_name, name, "shape");
            if (d > static_cast<uint64_t>(INT64_MAX))
                fail(ErrorKind::invalid_input, "{}: tensor '{}': dimension {} is too large", file_name, name, d);
            t.shape.push_back(static_cast<int64_t>(d));
        }
        t.data_begin = json_u64((*offsets_it)[0], file_name, name, "data_offsets");
        t.data_end = json_u64((*offsets_it)[1], file_name, name, "data_offsets");
        if (t.data_end < t.data_begin)
            fail(ErrorKind::invalid_input, "{}: tensor '{}': data_offsets [{}, {}] end before they begin", file_name, name,
                 t.data_begin, t.data_end);
        if (t.data_end > data_bytes)
            fail(ErrorKind::invalid_input, "{}: tensor '{}': data_offsets [{}, {}] run past the {}-byte data buffer (truncated?)",
                 file_name, name, t.data_begin, t.data_end, data_bytes);
        int64_t n_elements = checked_element_count(t.shape, file_name, name);
        int64_t expected_bytes = 0;
        if (__builtin_mul_overflow(n_elements, t.element_bytes, &expected_bytes))
            fail(ErrorKind::invalid_input, "{}: tensor '{}': shape {} overflows", file_name, name, shape_string(t.shape));
        if (t.data_end - t.data_begin != static_cast<uint64_t>(expected_bytes))
            fail(ErrorKind::invalid_input, "{}: tensor '{}': data_offsets [{}, {}] hold {} bytes, but {} {} needs {}", file_name,
                 name, t.data_begin, t.data_end, t.data_end - t.data_begin, t.dtype_name, shape_string(t.shape),
                 expected_bytes);
        header.tensors.push_back(std::move(t));
    }

    std::sort(header.tensors.begin(), header.tensors.end(), [](const auto& a, const auto& b) {
        return a.data_begin != b.data_begin ? a.data_begin < b.data_begin : a.data_end < b.data_end;
    });
    // Empty tensors occupy no bytes and cannot overlap anything.
    const SafetensorsHeaderTensor* previous = nullptr;
    for (const SafetensorsHeaderTensor& t : header.tensors) {
        if (t.data_begin == t.data_end) continue;
        if (previous != nullptr && t.data_begin < previous->data_end)
            fail(ErrorKind::invalid_input, "{}: tensor '{}': bytes [{}, {}) overlap tensor '{}' [{}, {})", file_name, t.name,
                 t.data_begin, t.data_end, previous->name, previous->data_begin, previous->data_end);
        previous = &t;
    }
    return header;
}

SafetensorsHeader read_safetensors_header(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(ErrorKind::io, "{}: cannot open for reading", path.string());
    std::error_code ec;
    uint64_t file_size = std::filesystem::file_size(path, ec);
    if (ec) fail(ErrorKind::io, "{}: cannot stat: {}", path.string(), ec.message());
    std::vector<std::byte> prefix(8);
    in.read(reinterpret_cast<char*>(prefix.data()), 8);
    uint64_t header_bytes = in.gcount() == 8 ? read_u64_le(prefix.data()) : 0;
    if (in.gcount() == 8 && header_bytes <= kMaxHeaderBytes && header_bytes <= file_size - 8) {
        prefix.resize(8 + header_bytes);
        in.read(reinterpret_cast<char*>(prefix.data() + 8), static_cast<std::streamsize>(header_bytes));
        if (static_cast<uint64_t>(in.gcount()) != header_bytes)
            fail(ErrorKind::io, "{}: short read of the {}-byte header", path.string(), header_bytes);
    }
    return parse_safetensors_header(prefix, file_size, path.string());
}

// ---------------------------------------------------------------------------------------------

int64_t SafetensorsTensor::n_elements() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

DType SafetensorsTensor::require_dtype() const {
    if (!dtype) fail(ErrorKind::unsupported, "tensor '{}': dtype {} is not supported by sluice", name, dtype_name);
    return *dtype;
}

SafetensorsCheckpoint::SafetensorsCheckpoint(SafetensorsCheckpoint&& other) noexcept { *this = std::move(other); }

SafetensorsCheckpoint& SafetensorsCheckpoint::operator=(SafetensorsCheckpoint&& other) noexcept {
    if (this != &other) {
        close_all();
        path_ = std::move(other.path_);
        files_ = std::move(other.files_);
        fds_ = std::move(other.fds_);
        tensors_ = std::move(other.tensors_);
        metadata_ = std::move(other.metadata_);
        by_name_ = std::move(other.by_name_);
        other.fds_.clear();
    }
    return *this;
}

SafetensorsCheckpoint::~SafetensorsCheckpoint() { close_all(); }

void SafetensorsCheckpoint::close_all() {
    for (int fd : fds_)
        if (fd >= 0) ::close(fd);
    fds_.clear();
}

void SafetensorsCheckpoint::add_file(const std::filesystem::path& file, const std::vector<std::string>* expected_names) {
    const std::string file_name = file.string();
    int fd = ::open(file_name.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail(ErrorKind::io, "{}: cannot open: {}", file_name, std::strerror(errno));
    fds_.push_back(fd);  // owned from here on, closed by the destructor even if parsing throws
    struct stat st {};
    if (::fstat(fd, &st) != 0) fail(ErrorKind::io, "{}: cannot stat: {}", file_name, std::strerror(errno));
    const uint64_t file_size = static_cast<uint64_t>(st.st_size);

    std::vector<std::byte> bytes(std::min<uint64_t>(8, file_size));
    if (!bytes.empty()) read_exact(fd, bytes.data(), bytes.size(), 0, file_name, "header length");
    if (bytes.size() == 8) {
        uint64_t header_bytes = read_u64_le(bytes.data());
        if (header_bytes <= kMaxHeaderBytes && header_bytes <= file_size - 8) {
            bytes.resize(8 + header_bytes);
            read_exact(fd, bytes.data() + 8, header_bytes, 8, file_name, "header");
        }
    }
    SafetensorsHeader header = parse_safetensors_header(bytes, file_size, file_name);

    const uint32_t file_index = static_cast<uint32_t>(files_.paths.size());
    files_.paths.push_back(file_name);
    metadata_.push_back(header.metadata);

    std::unordered_map<std::string_view, const SafetensorsHeaderTensor*> in_file;
    if (expected_names != nullptr)
        for (const SafetensorsHeaderTensor& t : header.tensors) in_file.emplace(t.name, &t);

    auto add = [&](const SafetensorsHeaderTensor& t) {
        auto [it, inserted] = by_name_.emplace(t.name, tensors_.size());
        if (!inserted)
            fail(ErrorKind::invalid_input, "{}: tensor '{}': also present in {}", file_name, t.name,
                 files_.paths[tensors_[it->second].extent.file_index]);
        tensors_.push_back(SafetensorsTensor{
            t.name, t.dtype_name, t.dtype, t.shape,
            Extent{file_index, header.data_offset + t.data_begin, t.data_end - t.data_begin}});
    };
    if (expected_names == nullptr) {
        for (const SafetensorsHeaderTensor& t : header.tensors) add(t);
        return;
    }
    // With an index, the weight_map decides which shard's copy of a name counts.
    for (const std::string& name : *expected_names) {
        auto found = in_file.find(name);
        if (found == in_file.end())
            fail(ErrorKind::invalid_input, "{}: tensor '{}': the index places it in this shard, but its header lacks it",
                 file_name, name);
        add(*found->second);
    }
}

SafetensorsCheckpoint SafetensorsCheckpoint::open(const std::filesystem::path& path) {
    SafetensorsCheckpoint ck;
    ck.path_ = path.string();
    std::error_code ec;
    if (!std::filesystem::is_directory(path, ec)) {
        if (!std::filesystem::exists(path, ec)) fail(ErrorKind::invalid_input, "{}: no such file or directory", ck.path_);
        ck.add_file(path, nullptr);
        return ck;
    }

    const std::filesystem::path index_path = path / "model.safetensors.index.json";
    if (std::filesystem::exists(index_path, ec)) {
        const std::string index_name = index_path.string();
        std::ifstream in(index_path, std::ios::binary);
        if (!in) fail(ErrorKind::io, "{}: cannot open for reading", index_name);
        std::ostringstream text;
        text << in.rdbuf();
        std::string s = text.str();
        bool duplicate = false;
        std::string duplicate_key;
        json index = parse_json_strict(s, duplicate, duplicate_key);
        if (index.is_discarded()) fail(ErrorKind::invalid_input, "{}: not well-formed JSON", index_name);
        if (duplicate) fail(ErrorKind::invalid_input, "{}: key '{}' appears twice", index_name, duplicate_key);
        if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
            fail(ErrorKind::invalid_input, "{}: missing object 'weight_map'", index_name);
        // Shards in name order, so file indices follow model-00001, model-00002, ...
        std::map<std::string, std::vector<std::string>> names_by_shard;
        for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
            if (!it.value().is_string())
                fail(ErrorKind::invalid_input, "{}: tensor '{}': shard name is not a string", index_name, it.key());
            std::string shard = it.value().get<std::string>();
            // A shard is a file beside the index, never a path elsewhere.
            if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos)
                fail(ErrorKind::invalid_input, "{}: tensor '{}': shard '{}' is not a file name in this directory", index_name,
                     it.key(), shard);
            names_by_shard[shard].push_back(it.key());
        }
        if (names_by_shard.empty()) fail(ErrorKind::invalid_input, "{}: weight_map is empty", index_name);
        ck.tensors_.reserve(index["weight_map"].size());
        ck.by_name_.reserve(index["weight_map"].size());
        for (const auto& [shard, names] : names_by_shard) {
            if (!std::filesystem::is_regular_file(path / shard, ec))
                fail(ErrorKind::invalid_input, "{}: tensor '{}': shard '{}' does not exist", index_name, names.front(), shard);
        }
        for (const auto& [shard, names] : names_by_shard) ck.add_file(path / shard, &names);
        return ck;
    }

    const std::filesystem::path single = path / "model.safetensors";
    if (std::filesystem::exists(single, ec)) {
        ck.add_file(single, nullptr);
        return ck;
    }
    // No index: every .safetensors file in the directory, names unique across them.
    std::vector<std::filesystem::path> files;
    for (const auto& entry : std::filesystem::directory_iterator(path, ec))
        if (entry.is_regular_file() && entry.path().extension() == ".safetensors") files.push_back(entry.path());
    if (files.empty())
        fail(ErrorKind::invalid_input, "{}: no model.safetensors, model.safetensors.index.json or *.safetensors", ck.path_);
    std::sort(files.begin(), files.end());
    for (const auto& f : files) ck.add_file(f, nullptr);
    return ck;
}

const SafetensorsTensor* SafetensorsCheckpoint::find(std::string_view name) const {
    auto it = by_name_.find(std::string(name));
    return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

const SafetensorsTensor& SafetensorsCheckpoint::expect_tensor(std::string_view name, std::span<const int64_t> shape) const {
    const SafetensorsTensor* t = find(name);
    if (t == nullptr) fail(ErrorKind::invalid_input, "{}: tensor '{}': missing", path_, name);
    if (!std::equal(t->shape.begin(), t->shape.end(), shape.begin(), shape.end()))
        fail(ErrorKind::invalid_input, "{}: tensor '{}': shape {}, expected {}", files_.paths[t->extent.file_index], name,
             shape_string(t->shape), shape_string(shape));
    return *t;
}

void SafetensorsCheckpoint::read_tensor(const SafetensorsTensor& tensor, std::span<std::byte> out) const {
    if (tensor.extent.file_index >= fds_.size())
        fail(ErrorKind::internal, "{}: tensor '{}': file index {} is not in this checkpoint", path_, tensor.name,
             tensor.extent.file_index);
    const std::string& file = files_.paths[tensor.extent.file_index];
    if (out.size() != tensor.extent.length)
        fail(ErrorKind::internal, "{}: tensor '{}': buffer of {} bytes for {} bytes of data", file, tensor.name, out.size(),
             tensor.extent.length);
    read_exact(fds_[tensor.extent.file_index], out.data(), tensor.extent.length, tensor.extent.offset, file,
               fmt::format("tensor '{}'", tensor.name));
}

std::vector<std::byte> SafetensorsCheckpoint::read_tensor(const SafetensorsTensor& tensor) const {
    std::vector<std::byte> bytes(tensor.extent.length);
    read_tensor(tensor, bytes);
    return bytes;
}

// ---------------------------------------------------------------------------------------------

uint64_t SafetensorsWriter::tensor_bytes(const SafetensorsTensorSpec& spec) {
    std::optional<int64_t> element = safetensors_element_bytes(spec.dtype_name);
    if (!element) fail(ErrorKind::invalid_input, "tensor '{}': unknown safetensors dtype '{}'", spec.name, spec.dtype_name);
    int64_t n = checked_element_count(spec.shape, "safetensors writer", spec.name);
    return static_cast<uint64_t>(n) * static_cast<uint64_t>(*element);
}

SafetensorsWriter::SafetensorsWriter(const std::filesystem::path& path, std::vector<SafetensorsTensorSpec> tensors,
                                     const std::map<std::string, std::string>& metadata)
    : path_(path.string()), specs_(std::move(tensors)) {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::set<std::string_view> names;
    for (const SafetensorsTensorSpec& spec : specs_) {
        if (spec.name == "__metadata__" || !names.insert(spec.name).second)
            fail(ErrorKind::invalid_input, "{}: tensor '{}': name used twice", path_, spec.name);
        uint64_t begin = data_bytes_total_;
        data_bytes_total_ += tensor_bytes(spec);
        ends_.push_back(data_bytes_total_);
        header[spec.name] = {{"dtype", spec.dtype_name}, {"shape", spec.shape}, {"data_offsets", {begin, data_bytes_total_}}};
    }
    std::string text = header.dump();
    // The reference writer pads with spaces so the data buffer starts 8-byte aligned.
    text.append((8 - text.size() % 8) % 8, ' ');

    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail(ErrorKind::io, "{}: cannot create: {}", path_, std::strerror(errno));
    std::byte length[8];
    for (int i = 0; i < 8; ++i) length[i] = static_cast<std::byte>((text.size() >> (8 * i)) & 0xff);
    write_all(length, 8);
    write_all(text.data(), text.size());
    while (current_ < specs_.size() && ends_[current_] == 0) ++current_;  // leading empty tensors
}

SafetensorsWriter::~SafetensorsWriter() {
    if (fd_ >= 0) ::close(fd_);
    // A half-written file would parse as truncated later; better that it is not there at all.
    if (!finished_) ::unlink(path_.c_str());
}

void SafetensorsWriter::write_all(const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
        ssize_t put = ::write(fd_, p, n);
        if (put < 0) {
            if (errno == EINTR) continue;
            fail(ErrorKind::io, "{}: write failed: {}", path_, std::strerror(errno));
        }
        p += put;
        n -= static_cast<size_t>(put);
    }
}

void SafetensorsWriter::append(std::span<const std::byte> bytes) {
    if (written_ + bytes.size() > data_bytes_total_)
        fail(ErrorKind::internal, "{}: {} more bytes than the header declares ({})", path_,
             written_ + bytes.size() - data_bytes_total_, data_bytes_total_);
    write_all(bytes.data(), bytes.size());
    written_ += bytes.size();
    while (current_ < specs_.size() && written_ >= ends_[current_]) ++current_;
}

void SafetensorsWriter::finish() {
    if (written_ != data_bytes_total_)
        fail(ErrorKind::internal, "{}: tensor '{}': {} of {} data bytes written", path_,
             current_ < specs_.size() ? specs_[current_].name : std::string("?"), written_, data_bytes_total_);
    if (::close(fd_) != 0) fail(ErrorKind::io, "{}: close failed: {}", path_, std::strerror(errno));
    fd_ = -1;
    finished_ = true;
}

void write_raw_safetensors(const std::filesystem::path& path, std::string_view header_json, std::span<const std::byte> data) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) fail(ErrorKind::io, "{}: cannot create", path.string());
    char length[8];
    for (int i = 0; i < 8; ++i) length[i] = static_cast<char>((header_json.size() >> (8 * i)) & 0xff);
    out.write(length, 8);
    out.write(header_json.data(), static_cast<std::streamsize>(header_json.size()));
    out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
    if (!out) fail(ErrorKind::io, "{}: write failed", path.string());
}

}  // namespace sluice
