#include "formats/gguf.hpp"

#include "core/error.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fcntl.h>
#include <limits>
#include <regex>
#include <sys/stat.h>
#include <unistd.h>

namespace sluice::gguf {

namespace {

// Untrusted-header limits, checked before allocating. Counts are also bounded by the bytes
// left in the source (each item needs at least a minimum number of bytes).
constexpr uint64_t kMaxStringBytes = uint64_t{256} << 20;
constexpr uint64_t kMaxArrayDepth = 8;
constexpr uint64_t kWindowBytes = uint64_t{1} << 20;

uint64_t min_encoded_bytes(ValueType type) {
    switch (type) {
    case ValueType::u8: case ValueType::i8: case ValueType::boolean: return 1;
    case ValueType::u16: case ValueType::i16: return 2;
    case ValueType::u32: case ValueType::i32: case ValueType::f32: return 4;
    case ValueType::u64: case ValueType::i64: case ValueType::f64: return 8;
    case ValueType::string: return 8;
    case ValueType::array: return 12;
    }
    return 1;
}

bool known_value_type(uint32_t id) { return id <= 12; }

// Sequential reader over a ByteSource through a window, so that a 129k-string vocabulary costs
// a few hundred preads rather than one per field.
class Cursor {
public:
    Cursor(const ByteSource& source, std::string_view path) : source_(source), path_(path) {
        // Small inputs (the fuzzer's) need no 1 MiB window.
        window_.resize(std::min<uint64_t>(kWindowBytes, source.size()));
    }
    uint64_t position() const { return pos_; }
    uint64_t remaining() const { return source_.size() - pos_; }
    std::string_view path() const { return path_; }

    void read(void* dst, uint64_t n, std::string_view what) {
        if (n > remaining())
            fail(ErrorKind::invalid_input, "{}: truncated: {} needs {} bytes at offset {}, file size {}",
                 path_, what, n, pos_, source_.size());
        auto* out = static_cast<uint8_t*>(dst);
        while (n > 0) {
            if (pos_ < window_start_ || pos_ >= window_start_ + window_len_) fill();
            const uint64_t in_window = window_start_ + window_len_ - pos_;
            const uint64_t take = std::min(n, in_window);
            std::memcpy(out, window_.data() + (pos_ - window_start_), take);
            out += take;
            pos_ += take;
            n -= take;
        }
    }
    template <typename T>
    T scalar(std::string_view what) {
        T v;
        read(&v, sizeof(T), what);
        return v;
    }
    std::string string(std::string_view what) {
        const auto len = scalar<uint64_t>(what);
        if (len > kMaxStringBytes || len > remaining())
            fail(ErrorKind::invalid_input, "{}: {}: string length {} at offset {} exceeds the {} bytes left",
                 path_, what, len, pos_ - 8, remaining());
        std::string s(len, '\0');
        read(s.data(), len, what);
        return s;
    }

private:
    void fill() {
        window_start_ = pos_;
        window_len_ = std::min<uint64_t>(window_.size(), source_.size() - pos_);
        source_.read_at(window_start_, window_.data(), window_len_);
    }
    const ByteSource& source_;
    std::string_view path_;
    std::vector<uint8_t> window_;
    uint64_t window_start_ = 0;
    uint64_t window_len_ = 0;
    uint64_t pos_ = 0;
};

Value read_value(Cursor& c, ValueType type, std::string_view key, uint32_t depth) {
    Value v;
    v.type = type;
    switch (type) {
    case ValueType::u8: v.u = c.scalar<uint8_t>(key); break;
    case ValueType::i8: v.i = c.scalar<int8_t>(key); break;
    case ValueType::u16: v.u = c.scalar<uint16_t>(key); break;
    case ValueType::i16: v.i = c.scalar<int16_t>(key); break;
    case ValueType::u32: v.u = c.scalar<uint32_t>(key); break;
    case ValueType::i32: v.i = c.scalar<int32_t>(key); break;
    case ValueType::u64: v.u = c.scalar<uint64_t>(key); break;
    case ValueType::i64: v.i = c.scalar<int64_t>(key); break;
    case ValueType::f32: v.f = c.scalar<float>(key); break;
    case ValueType::f64: v.f = c.scalar<double>(key); break;
    case ValueType::boolean: {
        const auto byte = c.scalar<uint8_t>(key);
        if (byte > 1)
            fail(ErrorKind::invalid_input, "{}: key '{}': bool byte {} is neither 0 nor 1", c.path(), key, byte);
        v.b = byte != 0;
        break;
    }
    case ValueType::string: v.s = c.string(key); break;
    case ValueType::array: {
        if (depth >= kMaxArrayDepth)
            fail(ErrorKind::invalid_input, "{}: key '{}': arrays nested deeper than {}", c.path(), key, kMaxArrayDepth);
        const auto elem_id = c.scalar<uint32_t>(key);
        if (!known_value_type(elem_id))
            fail(ErrorKind::invalid_input, "{}: key '{}': unknown array element type {}", c.path(), key, elem_id);
        const auto count = c.scalar<uint64_t>(key);
        const auto elem = static_cast<ValueType>(elem_id);
        if (count > c.remaining() / min_encoded_bytes(elem))
            fail(ErrorKind::invalid_input, "{}: key '{}': array of {} {} cannot fit in the {} bytes left",
                 c.path(), key, count, value_type_name(elem), c.remaining());
        v.array_type = elem;
        v.items.reserve(count);
        for (uint64_t k = 0; k < count; ++k) v.items.push_back(read_value(c, elem, key, depth + 1));
        break;
    }
    }
    return v;
}

bool checked_mul(uint64_t a, uint64_t b, uint64_t& out) {
    return !__builtin_mul_overflow(a, b, &out);
}

}  // namespace

std::string_view value_type_name(ValueType type) {
    static constexpr std::string_view names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32",
                                                 "bool", "string", "array", "u64", "i64", "f64"};
    const auto id = static_cast<uint32_t>(type);
    return id <= 12 ? names[id] : std::string_view("unknown");
}

Value Value::of_u8(uint8_t v) { Value x; x.type = ValueType::u8; x.u = v; return x; }
Value Value::of_i8(int8_t v) { Value x; x.type = ValueType::i8; x.i = v; return x; }
Value Value::of_u16(uint16_t v) { Value x; x.type = ValueType::u16; x.u = v; return x; }
Value Value::of_i16(int16_t v) { Value x; x.type = ValueType::i16; x.i = v; return x; }
Value Value::of_u32(uint32_t v) { Value x; x.type = ValueType::u32; x.u = v; return x; }
Value Value::of_i32(int32_t v) { Value x; x.type = ValueType::i32; x.i = v; return x; }
Value Value::of_u64(uint64_t v) { Value x; x.type = ValueType::u64; x.u = v; return x; }
Value Value::of_i64(int64_t v) { Value x; x.type = ValueType::i64; x.i = v; return x; }
Value Value::of_f32(float v) { Value x; x.type = ValueType::f32; x.f = v; return x; }
Value Value::of_f64(double v) { Value x; x.type = ValueType::f64; x.f = v; return x; }
Value Value::of_bool(bool v) { Value x; x.type = ValueType::boolean; x.b = v; return x; }
Value Value::of_string(std::string v) { Value x; x.type = ValueType::string; x.s = std::move(v); return x; }
Value Value::of_array(ValueType elem_type, std::vector<Value> items) {
    Value x;
    x.type = ValueType::array;
    x.array_type = elem_type;
    x.items = std::move(items);
    return x;
}
bool Value::is_integer() const {
    switch (type) {
    case ValueType::u8: case ValueType::i8: case ValueType::u16: case ValueType::i16:
    case ValueType::u32: case ValueType::i32: case ValueType::u64: case ValueType::i64: return true;
    default: return false;
    }
}

FileByteSource::FileByteSource(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) fail(ErrorKind::io, "{}: cannot open: {}", path, std::strerror(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
        const int err = errno;
        ::close(fd_);
        fail(ErrorKind::io, "{}: cannot stat: {}", path, std::strerror(err));
    }
    size_bytes_ = static_cast<uint64_t>(st.st_size);
}
FileByteSource::~FileByteSource() {
    if (fd_ >= 0) ::close(fd_);
}
void FileByteSource::read_at(uint64_t offset, void* dst, uint64_t n) const {
    auto* out = static_cast<uint8_t*>(dst);
    while (n > 0) {
        const ssize_t got = ::pread(fd_, out, n, static_cast<off_t>(offset));
        if (got < 0) {
            if (errno == EINTR) continue;
            fail(ErrorKind::io, "{}: read of {} bytes at offset {} failed: {}", path_, n, offset, std::strerror(errno));
        }
        if (got == 0) fail(ErrorKind::invalid_input, "{}: unexpected end of file at offset {}", path_, offset);
        out += got;
        offset += static_cast<uint64_t>(got);
        n -= static_cast<uint64_t>(got);
    }
}
void MemoryByteSource::read_at(uint64_t offset, void* dst, uint64_t n) const {
    if (offset > bytes_.size() || n > bytes_.size() - offset)
        fail(ErrorKind::invalid_input, "memory: read of {} bytes at offset {} past the end ({})", n, offset, bytes_.size());
    std::memcpy(dst, bytes_.data() + offset, n);
}

const Value* GgufFile::find(std::string_view key) const {
    for (const auto& kv : metadata)
        if (kv.key == key) return &kv.value;
    return nullptr;
}
const TensorInfo* GgufFile::find_tensor(std::string_view name) const {
    for (const auto& t : tensors)
        if (t.name == name) return &t;
    return nullptr;
}

GgufFile parse(const ByteSource& source, std::string_view path, uint32_t file_index) {
    GgufFile file;
    file.path = std::string(path);
    file.file_size_bytes = source.size();
    Cursor c(source, file.path);

    const auto magic = c.scalar<uint32_t>("magic");
    if (magic != kMagic)
        fail(ErrorKind::invalid_input, "{}: not a GGUF file (magic 0x{:08x}, expected 0x{:08x} \"GGUF\")", path, magic, kMagic);
    file.version = c.scalar<uint32_t>("version");
    if (file.version != kVersion)
        fail(ErrorKind::unsupported, "{}: GGUF version {} is not supported (only version 3)", path, file.version);
    const auto tensor_count = c.scalar<uint64_t>("tensor_count");
    const auto kv_count = c.scalar<uint64_t>("metadata_kv_count");
    // A kv needs >= 8 (key length) + 4 (type) + 1 bytes; a tensor info >= 8 + 4 + 4 + 8.
    if (kv_count > c.remaining() / 13)
        fail(ErrorKind::invalid_input, "{}: metadata_kv_count {} cannot fit in the {} bytes left", path, kv_count, c.remaining());
    if (tensor_count > c.remaining() / 24)
        fail(ErrorKind::invalid_input, "{}: tensor_count {} cannot fit in the {} bytes left", path, tensor_count, c.remaining());

    file.metadata.reserve(kv_count);
    for (uint64_t k = 0; k < kv_count; ++k) {
        KeyValue kv;
        kv.key = c.string("metadata key");
        const auto type_id = c.scalar<uint32_t>("metadata value type");
        if (!known_value_type(type_id))
            fail(ErrorKind::invalid_input, "{}: key '{}': unknown value type {}", path, kv.key, type_id);
        kv.value = read_value(c, static_cast<ValueType>(type_id), kv.key, 0);
        file.metadata.push_back(std::move(kv));
    }

    if (const Value* a = file.find("general.alignment")) {
        if (!a->is_integer() || a->type == ValueType::i8 || a->type == ValueType::i16 ||
            a->type == ValueType::i32 || a->type == ValueType::i64)
            fail(ErrorKind::invalid_input, "{}: key 'general.alignment' has type {}, expected u32", path,
                 value_type_name(a->type));
        if (a->u == 0 || a->u % 8 != 0 || a->u > (uint64_t{1} << 30))
            fail(ErrorKind::invalid_input, "{}: general.alignment {} is not a non-zero multiple of 8", path, a->u);
        file.alignment = a->u;
    }

    file.tensors.reserve(tensor_count);
    for (uint64_t k = 0; k < tensor_count; ++k) {
        TensorInfo t;
        t.name = c.string("tensor name");
        if (t.name.size() > kMaxTensorNameBytes)
            fail(ErrorKind::invalid_input, "{}: tensor '{}': name is {} bytes, longer than {}", path, t.name,
                 t.name.size(), kMaxTensorNameBytes);
        t.n_dims = c.scalar<uint32_t>("n_dims");
        if (t.n_dims == 0 || t.n_dims > kMaxDims)
            fail(ErrorKind::invalid_input, "{}: tensor '{}': n_dims {} not in 1..{}", path, t.name, t.n_dims, kMaxDims);
        for (uint32_t d = 0; d < t.n_dims; ++d) {
            const auto n = c.scalar<uint64_t>("ne");
            if (n == 0 || n > (uint64_t{1} << 40))
                fail(ErrorKind::invalid_input, "{}: tensor '{}': ne[{}] = {} out of range", path, t.name, d, n);
            t.ne[d] = static_cast<int64_t>(n);
        }
        const auto type_id = c.scalar<uint32_t>("ggml_type");
        const BlockTypeTraits* traits = find_block_type(type_id);
        if (traits == nullptr || type_id >= 1000)
            fail(ErrorKind::unsupported, "{}: tensor '{}': unknown ggml type id {}", path, t.name, type_id);
        t.type = traits->type;
        t.relative_offset = c.scalar<uint64_t>("tensor offset");
        if (t.ne[0] % traits->block_elems != 0)
            fail(ErrorKind::invalid_input, "{}: tensor '{}': ne[0] = {} is not a multiple of the {} block size {}",
                 path, t.name, t.ne[0], traits->name, traits->block_elems);
        uint64_t size = static_cast<uint64_t>(t.ne[0] / traits->block_elems) * static_cast<uint64_t>(traits->block_bytes);
        for (int d = 1; d < 4; ++d)
            if (!checked_mul(size, static_cast<uint64_t>(t.ne[d]), size))
                fail(ErrorKind::invalid_input, "{}: tensor '{}': byte size overflows", path, t.name);
        t.size_bytes = size;
        file.tensors.push_back(std::move(t));
    }

    const uint64_t end_of_infos = c.position();
    file.data_offset = (end_of_infos + file.alignment - 1) / file.alignment * file.alignment;
    for (auto& t : file.tensors) {
        t.extent.file_index = file_index;
        if (__builtin_add_overflow(file.data_offset, t.relative_offset, &t.extent.offset))
            fail(ErrorKind::invalid_input, "{}: tensor '{}': offset {} overflows", path, t.name, t.relative_offset);
        t.extent.length = t.size_bytes;
    }
    return file;
}

void validate(const GgufFile& file) {
    const auto& path = file.path;
    if (file.tensors.empty()) return;
    if (file.data_offset > file.file_size_bytes)
        fail(ErrorKind::invalid_input, "{}: data section starts at {} past end of file (size {})", path,
             file.data_offset, file.file_size_bytes);
    std::vector<const TensorInfo*> order;
    order.reserve(file.tensors.size());
    for (const auto& t : file.tensors) {
        if (t.relative_offset % file.alignment != 0)
            fail(ErrorKind::invalid_input, "{}: tensor '{}': offset {} is not a multiple of the alignment {}", path,
                 t.name, t.relative_offset, file.alignment);
        const uint64_t begin = t.extent.offset;
        if (begin > file.file_size_bytes || t.size_bytes > file.file_size_bytes - begin)
            fail(ErrorKind::invalid_input, "{}: tensor '{}': data [{}, {}) extends past end of file (size {})", path,
                 t.name, begin, begin + t.size_bytes, file.file_size_bytes);
        order.push_back(&t);
    }
    std::sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) {
        return a->extent.offset != b->extent.offset ? a->extent.offset < b->extent.offset : a->name < b->name;
    });
    for (size_t k = 1; k < order.size(); ++k) {
        const TensorInfo& prev = *order[k - 1];
        const TensorInfo& cur = *order[k];
        if (prev.extent.offset + prev.size_bytes > cur.extent.offset && cur.size_bytes > 0 && prev.size_bytes > 0)
            fail(ErrorKind::invalid_input, "{}: tensor '{}' data [{}, {}) overlaps tensor '{}' [{}, {})", path, cur.name,
                 cur.extent.offset, cur.extent.offset + cur.size_bytes, prev.name, prev.extent.offset,
                 prev.extent.offset + prev.size_bytes);
    }
    std::vector<std::string_view> names;
    names.reserve(file.tensors.size());
    for (const auto& t : file.tensors) names.push_back(t.name);
    std::sort(names.begin(), names.end());
    if (auto dup = std::adjacent_find(names.begin(), names.end()); dup != names.end())
        fail(ErrorKind::invalid_input, "{}: tensor '{}' appears twice", path, *dup);
}

// ---- Metadata getters ----

const Value* Metadata::find(std::string_view key) const {
    if (kvs_ == nullptr) return nullptr;
    for (const auto& kv : *kvs_)
        if (kv.key == key) return &kv.value;
    return nullptr;
}
const Value& Metadata::get(std::string_view key) const {
    const Value* v = find(key);
    if (v == nullptr) fail(ErrorKind::invalid_input, "{}: missing metadata key '{}'", path_, key);
    return *v;
}
int64_t Metadata::get_i64(std::string_view key) const {
    const Value& v = get(key);
    if (!v.is_integer())
        fail(ErrorKind::invalid_input, "{}: key '{}' is {}, expected an integer", path_, key, value_type_name(v.type));
    if (v.type == ValueType::u8 || v.type == ValueType::u16 || v.type == ValueType::u32 || v.type == ValueType::u64) {
        if (v.u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
            fail(ErrorKind::invalid_input, "{}: key '{}' = {} does not fit in i64", path_, key, v.u);
        return static_cast<int64_t>(v.u);
    }
    return v.i;
}
uint64_t Metadata::get_u64(std::string_view key) const {
    const Value& v = get(key);
    if (!v.is_integer())
        fail(ErrorKind::invalid_input, "{}: key '{}' is {}, expected an integer", path_, key, value_type_name(v.type));
    if (v.type == ValueType::i8 || v.type == ValueType::i16 || v.type == ValueType::i32 || v.type == ValueType::i64) {
        if (v.i < 0) fail(ErrorKind::invalid_input, "{}: key '{}' = {} is negative, expected unsigned", path_, key, v.i);
        return static_cast<uint64_t>(v.i);
    }
    return v.u;
}
uint32_t Metadata::get_u32(std::string_view key) const {
    const uint64_t v = get_u64(key);
    if (v > std::numeric_limits<uint32_t>::max())
        fail(ErrorKind::invalid_input, "{}: key '{}' = {} does not fit in u32", path_, key, v);
    return static_cast<uint32_t>(v);
}
double Metadata::get_f64(std::string_view key) const {
    const Value& v = get(key);
    if (v.is_float()) return v.f;
    if (v.is_integer()) return static_cast<double>(get_i64(key));
    fail(ErrorKind::invalid_input, "{}: key '{}' is {}, expected a number", path_, key, value_type_name(v.type));
}
float Metadata::get_f32(std::string_view key) const { return static_cast<float>(get_f64(key)); }
bool Metadata::get_bool(std::string_view key) const {
    const Value& v = get(key);
    if (v.type != ValueType::boolean)
        fail(ErrorKind::invalid_input, "{}: key '{}' is {}, expected bool", path_, key, value_type_name(v.type));
    return v.b;
}
const std::string& Metadata::get_string(std::string_view key) const {
    const Value& v = get(key);
    if (v.type != ValueType::string)
        fail(ErrorKind::invalid_input, "{}: key '{}' is {}, expected string", path_, key, value_type_name(v.type));
    return v.s;
}
const Value& Metadata::get_array(std::string_view key) const {
    const Value& v = get(key);
    if (v.type != ValueType::array)
        fail(ErrorKind::invalid_input, "{}: key '{}' is {}, expected array", path_, key, value_type_name(v.type));
    return v;
}
std::vector<std::string> Metadata::get_string_array(std::string_view key) const {
    const Value& a = get_array(key);
    if (a.array_type != ValueType::string)
        fail(ErrorKind::invalid_input, "{}: key '{}' is an array of {}, expected strings", path_, key,
             value_type_name(a.array_type));
    std::vector<std::string> out;
    out.reserve(a.items.size());
    for (const auto& item : a.items) out.push_back(item.s);
    return out;
}
std::vector<int64_t> Metadata::get_i64_array(std::string_view key) const {
    const Value& a = get_array(key);
    std::vector<int64_t> out;
    out.reserve(a.items.size());
    for (const auto& item : a.items) {
        if (!item.is_integer())
            fail(ErrorKind::invalid_input, "{}: key '{}' is an array of {}, expected integers", path_, key,
                 value_type_name(a.array_type));
        if (item.type == ValueType::u64 && item.u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
            fail(ErrorKind::invalid_input, "{}: key '{}': element {} does not fit in i64", path_, key, item.u);
        out.push_back(item.is_integer() && (item.type == ValueType::i8 || item.type == ValueType::i16 ||
                                            item.type == ValueType::i32 || item.type == ValueType::i64)
                          ? item.i
                          : static_cast<int64_t>(item.u));
    }
    return out;
}

// ---- Model / splits ----

const TensorInfo* GgufModel::find_tensor(std::string_view name) const {
    for (const auto& t : tensors_)
        if (t.name == name) return &t;
    return nullptr;
}
const TensorInfo& GgufModel::tensor(std::string_view name) const {
    const TensorInfo* t = find_tensor(name);
    if (t == nullptr) fail(ErrorKind::invalid_input, "{}: missing tensor '{}'", splits_.front().path, name);
    return *t;
}

GgufModel GgufModel::from_splits(std::vector<GgufFile> splits) {
    if (splits.empty()) fail(ErrorKind::internal, "GgufModel::from_splits: no files");
    GgufModel model;
    std::vector<std::string_view> names;
    for (const auto& s : splits) {
        model.files_.paths.push_back(s.path);
        for (const auto& t : s.tensors) {
            model.tensors_.push_back(t);
            names.push_back(t.name);
        }
    }
    std::sort(names.begin(), names.end());
    if (auto dup = std::adjacent_find(names.begin(), names.end()); dup != names.end())
        fail(ErrorKind::invalid_input, "{}: tensor '{}' appears in more than one split", splits.front().path, *dup);
    model.splits_ = std::move(splits);
    return model;
}

namespace {
GgufFile parse_and_validate(const std::string& path, uint32_t index) {
    FileByteSource source(path);
    GgufFile f = parse(source, path, index);
    validate(f);
    return f;
}
}  // namespace

GgufModel open_gguf(const std::string& path) {
    GgufFile first = parse_and_validate(path, 0);
    Metadata meta(path, &first.metadata);
    static const std::regex split_name(R"((.*)-(\d{5})-of-(\d{5})\.gguf$)");
    std::smatch m;
    const bool named_split = std::regex_match(path, m, split_name);
    const uint64_t count = meta.has("split.count") ? meta.get_u64("split.count") : (named_split ? std::stoull(m[3]) : 1);
    if (count <= 1) {
        std::vector<GgufFile> one;
        one.push_back(std::move(first));
        return GgufModel::from_splits(std::move(one));
    }
    if (!named_split)
        fail(ErrorKind::invalid_input, "{}: split.count = {} but the name is not <prefix>-00001-of-{:05}.gguf", path, count,
             count);
    if (std::stoull(m[2]) != 1 || std::stoull(m[3]) != count)
        fail(ErrorKind::invalid_input, "{}: open the first split (-00001-of-{:05}.gguf); split.count is {}", path, count, count);
    if (count > 9999) fail(ErrorKind::invalid_input, "{}: split.count {} is absurd", path, count);
    const int64_t total_tensors = meta.get_i64("split.tensors.count");
    std::vector<GgufFile> splits;
    splits.push_back(std::move(first));
    for (uint64_t k = 1; k < count; ++k)
        splits.push_back(parse_and_validate(fmt::format("{}-{:05}-of-{:05}.gguf", m[1].str(), k + 1, count),
                                            static_cast<uint32_t>(k)));
    uint64_t seen = 0;
    for (uint64_t k = 0; k < count; ++k) {
        Metadata sm(splits[k].path, &splits[k].metadata);
        if (sm.get_u64("split.no") != k)
            fail(ErrorKind::invalid_input, "{}: split.no = {}, expected {}", splits[k].path, sm.get_u64("split.no"), k);
        if (sm.get_u64("split.count") != count)
            fail(ErrorKind::invalid_input, "{}: split.count = {}, but {} says {}", splits[k].path, sm.get_u64("split.count"),
                 path, count);
        seen += splits[k].tensors.size();
    }
    if (total_tensors < 0 || static_cast<uint64_t>(total_tensors) != seen)
        fail(ErrorKind::invalid_input, "{}: split.tensors.count = {} but the {} splits hold {} tensors", path,
             total_tensors, count, seen);
    return GgufModel::from_splits(std::move(splits));
}

}  // namespace sluice::gguf
