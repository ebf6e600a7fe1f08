#include "formats/gguf_writer.hpp"

#include "core/error.hpp"

#include <cerrno>
#include <cstring>

namespace sluice::gguf {

GgufWriter::GgufWriter(std::string path, uint64_t alignment) : path_(std::move(path)), alignment_(alignment) {
    if (alignment_ == 0 || alignment_ % 8 != 0)
        fail(ErrorKind::invalid_input, "{}: alignment {} is not a non-zero multiple of 8", path_, alignment_);
    out_ = std::fopen(path_.c_str(), "wb");
    if (out_ == nullptr) fail(ErrorKind::io, "{}: cannot create: {}", path_, std::strerror(errno));
    if (alignment_ != kDefaultAlignment)
        metadata_.push_back({"general.alignment", Value::of_u32(static_cast<uint32_t>(alignment_))});
}

GgufWriter::~GgufWriter() {
    if (out_ != nullptr) std::fclose(out_);
}

void GgufWriter::add_metadata(std::string key, Value value) {
    if (header_written_) fail(ErrorKind::internal, "{}: metadata '{}' added after the header", path_, key);
    metadata_.push_back({std::move(key), std::move(value)});
}

void GgufWriter::add_tensor(std::string name, DType type, std::span<const int64_t> ne) {
    if (header_written_) fail(ErrorKind::internal, "{}: tensor '{}' added after the header", path_, name);
    if (ne.empty() || ne.size() > kMaxDims)
        fail(ErrorKind::invalid_input, "{}: tensor '{}': {} dims, expected 1..4", path_, name, ne.size());
    if (!row_fits_blocks(type, ne[0]))
        fail(ErrorKind::invalid_input, "{}: tensor '{}': ne[0] = {} does not fit whole {} blocks", path_, name, ne[0],
             dtype_name(type));
    uint64_t size = static_cast<uint64_t>(row_bytes(type, ne[0]));
    for (size_t d = 1; d < ne.size(); ++d) size *= static_cast<uint64_t>(ne[d]);
    tensors_.push_back({std::move(name), type, {ne.begin(), ne.end()}, size, next_relative_offset_});
    next_relative_offset_ += (size + alignment_ - 1) / alignment_ * alignment_;
}

void GgufWriter::write_bytes(const void* p, size_t n) {
    if (n != 0 && std::fwrite(p, 1, n, out_) != n)
        fail(ErrorKind::io, "{}: write of {} bytes at offset {} failed: {}", path_, n, position_, std::strerror(errno));
    position_ += n;
}
void GgufWriter::write_string(const std::string& s) {
    const uint64_t len = s.size();
    write_bytes(&len, 8);
    write_bytes(s.data(), s.size());
}
void GgufWriter::write_value(const Value& v) {
    auto put = [this](auto x) { write_bytes(&x, sizeof(x)); };
    switch (v.type) {
    case ValueType::u8: put(static_cast<uint8_t>(v.u)); break;
    case ValueType::i8: put(static_cast<int8_t>(v.i)); break;
    case ValueType::u16: put(static_cast<uint16_t>(v.u)); break;
    case ValueType::i16: put(static_cast<int16_t>(v.i)); break;
    case ValueType::u32: put(static_cast<uint32_t>(v.u)); break;
    case ValueType::i32: put(static_cast<int32_t>(v.i)); break;
    case ValueType::u64: put(static_cast<uint64_t>(v.u)); break;
    case ValueType::i64: put(static_cast<int64_t>(v.i)); break;
    case ValueType::f32: put(static_cast<float>(v.f)); break;
    case ValueType::f64: put(static_cast<double>(v.f)); break;
    case ValueType::boolean: put(static_cast<uint8_t>(v.b ? 1 : 0)); break;
    case ValueType::string: write_string(v.s); break;
    case ValueType::array:
        put(static_cast<uint32_t>(v.array_type));
        put(static_cast<uint64_t>(v.items.size()));
        for (const auto& item : v.items) {
            if (item.type != v.array_type)
                fail(ErrorKind::invalid_input, "{}: array of {} holds a {}", path_, value_type_name(v.array_type),
                     value_type_name(item.type));
            write_value(item);
        }
        break;
    }
}
void GgufWriter::pad_to_alignment() {
    static constexpr uint8_t zeros[64] = {};
    uint64_t pad = (alignment_ - position_ % alignment_) % alignment_;
    while (pad > 0) {
        const uint64_t n = std::min<uint64_t>(pad, sizeof(zeros));
        write_bytes(zeros, n);
        pad -= n;
    }
}

void GgufWriter::write_header() {
    if (header_written_) fail(ErrorKind::internal, "{}: header written twice", path_);
    header_written_ = true;
    const uint32_t magic = kMagic, version = kVersion;
    const uint64_t n_tensors = tensors_.size(), n_kv = metadata_.size();
    write_bytes(&magic, 4);
    write_bytes(&version, 4);
    write_bytes(&n_tensors, 8);
    write_bytes(&n_kv, 8);
    for (const auto& kv : metadata_) {
        write_string(kv.key);
        const uint32_t type = static_cast<uint32_t>(kv.value.type);
        write_bytes(&type, 4);
        write_value(kv.value);
    }
    for (const auto& t : tensors_) {
        write_string(t.name);
        const uint32_t n_dims = static_cast<uint32_t>(t.ne.size());
        write_bytes(&n_dims, 4);
        for (int64_t n : t.ne) {
            const uint64_t u = static_cast<uint64_t>(n);
            write_bytes(&u, 8);
        }
        const uint32_t type = static_cast<uint32_t>(t.type);
        write_bytes(&type, 4);
        write_bytes(&t.relative_offset, 8);
    }
    pad_to_alignment();
    data_start_ = position_;
}

void GgufWriter::write_tensor_data(std::span<const uint8_t> bytes) {
    if (!header_written_) fail(ErrorKind::internal, "{}: tensor data before the header", path_);
    if (next_to_write_ >= tensors_.size()) fail(ErrorKind::internal, "{}: more tensor data than tensors", path_);
    const Pending& t = tensors_[next_to_write_];
    if (bytes.size() != t.size_bytes)
        fail(ErrorKind::invalid_input, "{}: tensor '{}': {} bytes given, {} expected", path_, t.name, bytes.size(),
             t.size_bytes);
    if (position_ != data_start_ + t.relative_offset)
        fail(ErrorKind::internal, "{}: tensor '{}' would land at {} not {}", path_, t.name, position_,
             data_start_ + t.relative_offset);
    write_bytes(bytes.data(), bytes.size());
    pad_to_alignment();
    ++next_to_write_;
}

uint64_t GgufWriter::data_offset() const {
    if (!header_written_) fail(ErrorKind::internal, "{}: data offset asked before the header", path_);
    return data_start_;
}
uint64_t GgufWriter::tensor_offset(size_t index) const {
    if (index >= tensors_.size()) fail(ErrorKind::internal, "{}: tensor {} of {}", path_, index, tensors_.size());
    return data_offset() + tensors_[index].relative_offset;
}
uint64_t GgufWriter::file_size_bytes() const { return data_offset() + next_relative_offset_; }

void GgufWriter::close_after_header() {
    if (!header_written_) fail(ErrorKind::internal, "{}: closed before the header", path_);
    if (std::fclose(out_) != 0) {
        out_ = nullptr;
        fail(ErrorKind::io, "{}: close failed: {}", path_, std::strerror(errno));
    }
    out_ = nullptr;
}

void GgufWriter::finish() {
    if (out_ == nullptr) fail(ErrorKind::internal, "{}: finish after close_after_header", path_);
    if (!header_written_) write_header();
    if (next_to_write_ != tensors_.size())
        fail(ErrorKind::invalid_input, "{}: {} of {} tensors written", path_, next_to_write_, tensors_.size());
    if (std::fclose(out_) != 0) {
        out_ = nullptr;
        fail(ErrorKind::io, "{}: close failed: {}", path_, std::strerror(errno));
    }
    out_ = nullptr;
}

}  // namespace sluice::gguf
