// GGUF v3 container (spec §3.6): header, metadata and tensor infos parsed from an untrusted
// byte source (a file read with pread, or a memory buffer for the fuzzer); tensor data is never
// read here. parse() only decodes; validate() checks every tensor against the file (inside it,
// aligned, sized by its type, no overlaps). open_gguf() opens a split set from its first file.
#pragma once

#include "io/extent.hpp"
#include "kernels/block_type.hpp"

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::gguf {

inline constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
inline constexpr uint32_t kVersion = 3;
inline constexpr uint64_t kDefaultAlignment = 32;
inline constexpr uint64_t kMaxTensorNameBytes = 64;  // GGML_MAX_NAME
inline constexpr uint32_t kMaxDims = 4;

enum class ValueType : uint32_t {
    u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7,
    string = 8, array = 9, u64 = 10, i64 = 11, f64 = 12,
};
std::string_view value_type_name(ValueType type);

// One metadata value. Scalars keep their declared type; integers are held widened (signed in
// `i`, unsigned in `u`), floats in `f`. Arrays hold their element type and items (nested
// arrays allowed).
struct Value {
    ValueType type = ValueType::u8;
    uint64_t u = 0;
    int64_t i = 0;
    double f = 0;
    bool b = false;
    std::string s;
    ValueType array_type = ValueType::u8;
    std::vector<Value> items;

    static Value of_u8(uint8_t v);
    static Value of_i8(int8_t v);
    static Value of_u16(uint16_t v);
    static Value of_i16(int16_t v);
    static Value of_u32(uint32_t v);
    static Value of_i32(int32_t v);
    static Value of_u64(uint64_t v);
    static Value of_i64(int64_t v);
    static Value of_f32(float v);
    static Value of_f64(double v);
    static Value of_bool(bool v);
    static Value of_string(std::string v);
    static Value of_array(ValueType elem_type, std::vector<Value> items);
    bool is_integer() const;
    bool is_float() const { return type == ValueType::f32 || type == ValueType::f64; }
};

struct KeyValue {
    std::string key;
    Value value;
};

struct TensorInfo {
    std::string name;
    DType type = DType::F32;
    uint32_t n_dims = 0;
    std::array<int64_t, 4> ne{1, 1, 1, 1};  // ne[0] fastest; unused dims are 1
    uint64_t relative_offset = 0;          // from the start of the file's data section
    uint64_t size_bytes = 0;               // row_bytes(type, ne0) * ne1 * ne2 * ne3
    Extent extent;                         // file_index, absolute offset, length
    int64_t element_count() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
};

// Random-access bytes: a file (pread) or memory. The parser asks only for the header bytes.
class ByteSource {
public:
    virtual ~ByteSource() = default;
    virtual uint64_t size() const = 0;
    // Reads exactly n bytes at offset or throws (ErrorKind::io / invalid_input for EOF).
    virtual void read_at(uint64_t offset, void* dst, uint64_t n) const = 0;
};

class FileByteSource final : public ByteSource {
public:
    explicit FileByteSource(const std::string& path);
    ~FileByteSource() override;
    FileByteSource(const FileByteSource&) = delete;
    FileByteSource& operator=(const FileByteSource&) = delete;
    uint64_t size() const override { return size_bytes_; }
    void read_at(uint64_t offset, void* dst, uint64_t n) const override;

private:
    std::string path_;
    int fd_ = -1;
    uint64_t size_bytes_ = 0;
};

class MemoryByteSource final : public ByteSource {
public:
    explicit MemoryByteSource(std::span<const uint8_t> bytes) : bytes_(bytes) {}
    uint64_t size() const override { return bytes_.size(); }
    void read_at(uint64_t offset, void* dst, uint64_t n) const override;

private:
    std::span<const uint8_t> bytes_;
};

// One parsed GGUF file.
struct GgufFile {
    std::string path;  // used in error messages
    uint32_t version = 0;
    uint64_t file_size_bytes = 0;
    uint64_t alignment = kDefaultAlignment;
    uint64_t data_offset = 0;  // absolute start of the tensor-data section
    std::vector<KeyValue> metadata;
    std::vector<TensorInfo> tensors;

    const Value* find(std::string_view key) const;
    const TensorInfo* find_tensor(std::string_view name) const;
};

// Decodes the header, metadata and tensor infos. Counts and lengths are checked against the
// bytes left in the source before anything is allocated. Tensor types must be known
// (find_block_type) and ne0 must fit whole blocks, since sizes derive from them.
GgufFile parse(const ByteSource& source, std::string_view path, uint32_t file_index = 0);
// Checks the tensors against the file: offsets aligned, data inside the file, no overlaps,
// unique names.
void validate(const GgufFile& file);

// Typed getters over a metadata list; integer widths convert where the value fits, otherwise
// (and for a missing key or wrong type) they throw naming the file and key.
class Metadata {
public:
    Metadata() = default;
    Metadata(std::string path, const std::vector<KeyValue>* kvs) : path_(std::move(path)), kvs_(kvs) {}
    const Value* find(std::string_view key) const;
    bool has(std::string_view key) const { return find(key) != nullptr; }
    const Value& get(std::string_view key) const;
    uint32_t get_u32(std::string_view key) const;
    uint64_t get_u64(std::string_view key) const;
    int64_t get_i64(std::string_view key) const;
    float get_f32(std::string_view key) const;
    double get_f64(std::string_view key) const;
    bool get_bool(std::string_view key) const;
    const std::string& get_string(std::string_view key) const;
    const Value& get_array(std::string_view key) const;
    std::vector<std::string> get_string_array(std::string_view key) const;
    std::vector<int64_t> get_i64_array(std::string_view key) const;

private:
    std::string path_;
    const std::vector<KeyValue>* kvs_ = nullptr;
};

// A model: one GGUF or a split set merged (metadata from split 0, tensors from all).
class GgufModel {
public:
    const FileSet& files() const { return files_; }
    const std::vector<GgufFile>& splits() const { return splits_; }
    Metadata metadata() const { return Metadata(splits_.front().path, &splits_.front().metadata); }
    const std::vector<TensorInfo>& tensors() const { return tensors_; }
    const TensorInfo* find_tensor(std::string_view name) const;
    const TensorInfo& tensor(std::string_view name) const;  // throws naming the tensor

    // Builds a model from already parsed+validated splits (index order = split.no).
    static GgufModel from_splits(std::vector<GgufFile> splits);

private:
    FileSet files_;
    std::vector<GgufFile> splits_;
    std::vector<TensorInfo> tensors_;
};

// Opens `path`; when its name is `<prefix>-00001-of-0000N.gguf` (or it carries split.count > 1)
// opens all N splits and checks split.no / split.count / split.tensors.count.
GgufModel open_gguf(const std::string& path);

}  // namespace sluice::gguf
