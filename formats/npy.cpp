#include "formats/npy.hpp"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>

#include "core/error.hpp"

namespace sluice {

namespace {
constexpr char kMagic[] = "\x93NUMPY";
}

NpyArray read_npy_f32(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(ErrorKind::io, "{}: cannot open: {}", path, std::strerror(errno));
    char magic[8];
    in.read(magic, 8);
    if (!in || std::memcmp(magic, kMagic, 6) != 0) fail(ErrorKind::invalid_input, "{}: not a .npy file", path);
    const int major = uint8_t(magic[6]);
    uint32_t header_len = 0;
    if (major == 1) {
        uint16_t h = 0;
        in.read(reinterpret_cast<char*>(&h), 2);
        header_len = h;
    } else {
        in.read(reinterpret_cast<char*>(&header_len), 4);
    }
    if (!in || header_len > (1u << 20)) fail(ErrorKind::invalid_input, "{}: bad .npy header length", path);
    std::string header(header_len, '\0');
    in.read(header.data(), header_len);
    if (!in) fail(ErrorKind::invalid_input, "{}: truncated .npy header", path);
    if (header.find("'descr': '<f4'") == std::string::npos)
        fail(ErrorKind::invalid_input, "{}: .npy dtype is not little-endian float32: {}", path, header);
    if (header.find("'fortran_order': False") == std::string::npos)
        fail(ErrorKind::invalid_input, "{}: .npy array is not C order", path);
    const auto open = header.find("'shape': (");
    const auto close = header.find(')', open);
    if (open == std::string::npos || close == std::string::npos)
        fail(ErrorKind::invalid_input, "{}: .npy header has no shape", path);
    NpyArray a;
    int64_t count = 1;
    const std::string dims = header.substr(open + 10, close - open - 10);
    size_t pos = 0;
    while (pos < dims.size()) {
        while (pos < dims.size() && (dims[pos] == ' ' || dims[pos] == ',')) ++pos;
        if (pos >= dims.size()) break;
        size_t used = 0;
        const long long d = std::stoll(dims.substr(pos), &used);
        if (d < 0) fail(ErrorKind::invalid_input, "{}: negative .npy dimension", path);
        a.shape.push_back(d);
        count *= d;
        pos += used;
    }
    a.data.resize(size_t(count));
    in.read(reinterpret_cast<char*>(a.data.data()), std::streamsize(count * 4));
    if (!in) fail(ErrorKind::invalid_input, "{}: .npy data shorter than its shape says", path);
    return a;
}

void write_npy_f32(const std::string& path, const std::vector<int64_t>& shape, const float* data) {
    std::string dims;
    int64_t count = 1;
    for (auto d : shape) {
        dims += std::to_string(d) + ", ";
        count *= d;
    }
    if (shape.size() > 1) dims.resize(dims.size() - 1);  // "(a, b)" not "(a, b, )"
    if (shape.size() > 1) dims.resize(dims.size() - 1);
    if (shape.size() == 1) dims = std::to_string(shape[0]) + ",";
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
    // Pad so that magic + len + header + '\n' is a multiple of 64 (numpy's alignment).
    const size_t total = 10 + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');
    header += '\n';
    std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "wb"), std::fclose);
    if (!f) fail(ErrorKind::io, "{}: cannot create: {}", path, std::strerror(errno));
    const uint16_t header_len = uint16_t(header.size());
    bool ok = std::fwrite(kMagic, 1, 6, f.get()) == 6;
    const char version[2] = {1, 0};
    ok = ok && std::fwrite(version, 1, 2, f.get()) == 2;
    ok = ok && std::fwrite(&header_len, 2, 1, f.get()) == 1;
    ok = ok && std::fwrite(header.data(), 1, header.size(), f.get()) == header.size();
    ok = ok && std::fwrite(data, 4, size_t(count), f.get()) == size_t(count);
    if (!ok || std::fflush(f.get()) != 0) fail(ErrorKind::io, "{}: write failed: {}", path, std::strerror(errno));
}

}  // namespace sluice
