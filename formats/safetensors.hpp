// Hugging Face safetensors (spec §3.1): one file or a sharded directory (index.json weight_map)
// parsed into named tensors whose bytes are Extents into a FileSet — what the loader and io/ read.
// Also the writer used by `sluice synth` and by tests that need broken files.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "io/extent.hpp"
#include "kernels/block_type.hpp"

namespace sluice {

// The header of one .safetensors file, as parsed and validated against the file's size.
struct SafetensorsHeaderTensor {
    std::string name;
    std::string dtype_name;        // as written: "F32", "BF16", "F8_E4M3", "I64", ...
    std::optional<DType> dtype;    // nullopt: a valid safetensors dtype sluice does not compute in
    int64_t element_bytes = 0;     // bytes per element of dtype_name
    std::vector<int64_t> shape;    // PyTorch order, outermost first
    uint64_t data_begin = 0;       // relative to the start of the data buffer
    uint64_t data_end = 0;
};

struct SafetensorsHeader {
    uint64_t header_bytes = 0;     // N: the JSON's length
    uint64_t data_offset = 0;      // 8 + N: where the data buffer begins in the file
    std::vector<SafetensorsHeaderTensor> tensors;  // in data_begin order
    std::map<std::string, std::string> metadata;   // "__metadata__" (string values only)
};

// Bytes per element of a safetensors dtype name; nullopt for names safetensors does not define.
std::optional<int64_t> safetensors_element_bytes(std::string_view dtype_name);
// The sluice type a safetensors dtype computes as (F8_E4M3 -> FP8_E4M3_B128); nullopt otherwise.
std::optional<DType> safetensors_dtype(std::string_view dtype_name);
// The safetensors name of a sluice type that can be stored element-wise (F32, F16, BF16, FP8, ints).
std::string_view safetensors_dtype_name(DType type);

// Parses a whole file's bytes (length prefix, JSON, data). `file_bytes` may be just the prefix
// and header when `file_size` says how large the file really is. Throws Error(invalid_input)
// naming `file_name` (and the tensor) on any inconsistency. This is the fuzzed entry point.
SafetensorsHeader parse_safetensors_header(std::span<const std::byte> file_bytes, uint64_t file_size,
                                           std::string_view file_name);
// Reads and parses the header of the file at `path` (reads only the header bytes).
SafetensorsHeader read_safetensors_header(const std::filesystem::path& path);

// One tensor of a checkpoint, located in the FileSet of its SafetensorsCheckpoint.
struct SafetensorsTensor {
    std::string name;
    std::string dtype_name;
    std::optional<DType> dtype;
    std::vector<int64_t> shape;
    Extent extent;  // absolute offset in files().paths[extent.file_index]

    int64_t n_elements() const;
    // The dtype, or Error(unsupported) naming the tensor when sluice cannot compute in it.
    DType require_dtype() const;
};

// A model's safetensors: a single file, or a directory with model.safetensors or
// model.safetensors.index.json (+ shards). Open files are kept for read_tensor().
class SafetensorsCheckpoint {
public:
    // `path`: a .safetensors file, or a directory. Parses and validates every header (and the
    // index against the shards); reads no tensor data.
    static SafetensorsCheckpoint open(const std::filesystem::path& path);

    SafetensorsCheckpoint(SafetensorsCheckpoint&&) noexcept;
    SafetensorsCheckpoint& operator=(SafetensorsCheckpoint&&) noexcept;
    SafetensorsCheckpoint(const SafetensorsCheckpoint&) = delete;
    SafetensorsCheckpoint& operator=(const SafetensorsCheckpoint&) = delete;
    ~SafetensorsCheckpoint();

    const FileSet& files() const { return files_; }
    const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
    // Per-file "__metadata__" (same order as files().paths).
    const std::vector<std::map<std::string, std::string>>& metadata() const { return metadata_; }
    // nullptr when absent.
    const SafetensorsTensor* find(std::string_view name) const;
    // The tensor, after checking it exists and has exactly `shape`; otherwise Error(invalid_input)
    // "<checkpoint>: tensor '<name>': missing" / "shape [a, b], expected [c, d]".
    const SafetensorsTensor& expect_tensor(std::string_view name, std::span<const int64_t> shape) const;
    const SafetensorsTensor& expect_tensor(std::string_view name, std::initializer_list<int64_t> shape) const {
        return expect_tensor(name, std::span<const int64_t>(shape.begin(), shape.size()));
    }
    // The checkpoint path as given to open(), for messages.
    const std::string& describe() const { return path_; }

    // Reads the tensor's bytes (extent.length of them) into `out` with pread, retrying short
    // reads; an early end of file or an OS error is an Error naming file, tensor and offset.
    void read_tensor(const SafetensorsTensor& tensor, std::span<std::byte> out) const;
    std::vector<std::byte> read_tensor(const SafetensorsTensor& tensor) const;

private:
    SafetensorsCheckpoint() = default;
    void add_file(const std::filesystem::path& file, const std::vector<std::string>* expected_names);
    void close_all();

    std::string path_;
    FileSet files_;
    std::vector<int> fds_;
    std::vector<SafetensorsTensor> tensors_;
    std::vector<std::map<std::string, std::string>> metadata_;
    std::unordered_map<std::string, size_t> by_name_;
};

// Streams a .safetensors file: the header (every tensor's name, dtype and shape) is fixed up
// front, then each tensor's bytes are appended in the declared order, in as many pieces as the
// caller likes, so a model never has to be in memory whole.
struct SafetensorsTensorSpec {
    std::string name;
    std::string dtype_name;  // "F32", "BF16", "F8_E4M3", ...
    std::vector<int64_t> shape;
};

class SafetensorsWriter {
public:
    SafetensorsWriter(const std::filesystem::path& path, std::vector<SafetensorsTensorSpec> tensors,
                      const std::map<std::string, std::string>& metadata = {});
    SafetensorsWriter(const SafetensorsWriter&) = delete;
    SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;
    ~SafetensorsWriter();

    // Appends bytes of the current tensor (and moves on to the next when one is complete).
    void append(std::span<const std::byte> bytes);
    // Checks every tensor got all its bytes, flushes and closes. Throws otherwise.
    void finish();

    uint64_t data_bytes() const { return data_bytes_total_; }
    // The tensor whose bytes append() expects next (or tensors().size() when all are written).
    size_t current_tensor() const { return current_; }
    const std::vector<SafetensorsTensorSpec>& tensors() const { return specs_; }
    // Bytes of the whole data buffer for these specs (sizes fixed by dtype and shape).
    static uint64_t tensor_bytes(const SafetensorsTensorSpec& spec);

private:
    void write_all(const void* data, size_t n);

    std::string path_;
    int fd_ = -1;
    std::vector<SafetensorsTensorSpec> specs_;
    std::vector<uint64_t> ends_;  // cumulative data end per tensor
    uint64_t data_bytes_total_ = 0;
    uint64_t written_ = 0;
    size_t current_ = 0;
    bool finished_ = false;
};

// Writes a file with a header taken verbatim (tests, fuzz corpus): u64 LE length, `header_json`,
// `data`. No checks — that is the point.
void write_raw_safetensors(const std::filesystem::path& path, std::string_view header_json,
                           std::span<const std::byte> data);

}  // namespace sluice
