// Streaming GGUF v3 writer: declare metadata and tensor infos, write the header, then the
// tensor data one tensor at a time in declaration order (zero padding between them to the
// alignment). Used by tests (good and deliberately bad files) and by converters.
#pragma once

#include "formats/gguf.hpp"

#include <cstdio>
#include <span>
#include <string>
#include <vector>

namespace sluice::gguf {

class GgufWriter {
public:
    // alignment: a non-zero multiple of 8 (e.g. 32, 4096); written as general.alignment when
    // it differs from the default 32.
    GgufWriter(std::string path, uint64_t alignment = kDefaultAlignment);
    ~GgufWriter();
    GgufWriter(const GgufWriter&) = delete;
    GgufWriter& operator=(const GgufWriter&) = delete;

    void add_metadata(std::string key, Value value);
    // ne[0] fastest (GGUF order); 1..4 dims; ne[0] must fit whole blocks of `type`.
    void add_tensor(std::string name, DType type, std::span<const int64_t> ne);
    // Writes header, metadata and tensor infos; no more adds afterwards.
    void write_header();
    // Data of the next declared tensor; size must equal its byte size.
    void write_tensor_data(std::span<const uint8_t> bytes);
    // For callers that write the data section themselves (large sequential or O_DIRECT
    // writes): after write_header(), the absolute offset of the data section and of each
    // declared tensor (data_offset() + its relative offset, aligned), and the file size once
    // every tensor and its padding is written. close_after_header() closes the file; the
    // caller then owns the data section and finish() must not be called.
    uint64_t data_offset() const;
    uint64_t tensor_offset(size_t index) const;
    uint64_t file_size_bytes() const;
    void close_after_header();
    // Checks every declared tensor was written and closes the file.
    void finish();

private:
    struct Pending {
        std::string name;
        DType type;
        std::vector<int64_t> ne;
        uint64_t size_bytes;
        uint64_t relative_offset;
    };
    void write_bytes(const void* p, size_t n);
    void write_string(const std::string& s);
    void write_value(const Value& v);
    void pad_to_alignment();

    std::string path_;
    uint64_t alignment_;
    std::FILE* out_ = nullptr;
    uint64_t position_ = 0;
    std::vector<KeyValue> metadata_;
    std::vector<Pending> tensors_;
    uint64_t next_relative_offset_ = 0;
    size_t next_to_write_ = 0;
    uint64_t data_start_ = 0;
    bool header_written_ = false;
};

}  // namespace sluice::gguf
