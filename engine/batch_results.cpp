#include "engine/batch_results.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_map>
#include <vector>

#include "core/error.hpp"
#include "formats/openai_batch.hpp"

namespace sluice {

namespace {

void write_all(int fd, const std::string& data, const std::string& path) {
    size_t done = 0;
    while (done < data.size()) {
        const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail(ErrorKind::io, "{}: write failed: {}", path, std::strerror(errno));
        done += size_t(n);
    }
}

void sync_or_fail(int fd, const std::string& path) {
    if (::fdatasync(fd) != 0) fail(ErrorKind::io, "{}: fdatasync failed: {}", path, std::strerror(errno));
}

void sync_directory_of(const std::string& path) {
    const auto dir = std::filesystem::path(path).parent_path();
    const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
    if (fd < 0) return;
    ::fsync(fd);
    ::close(fd);
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

}  // namespace

void replace_file_durably(const std::string& path, const std::string& data) {
    const std::string tmp = path + ".tmp";
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) fail(ErrorKind::io, "{}: cannot create: {}", tmp, std::strerror(errno));
    try {
        write_all(fd, data, tmp);
        sync_or_fail(fd, tmp);
        if (::close(fd) != 0) fail(ErrorKind::io, "{}: close failed: {}", tmp, std::strerror(errno));
    } catch (...) {
        ::close(fd);
        ::unlink(tmp.c_str());
        throw;
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        const int e = errno;
        ::unlink(tmp.c_str());
        fail(ErrorKind::io, "{}: cannot rename to {}: {}", tmp, path, std::strerror(e));
    }
    sync_directory_of(path);
}

BatchResultsFile::BatchResultsFile(std::string path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) fail(ErrorKind::io, "{}: cannot open: {}", path_, std::strerror(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
        ::close(fd_);
        fail(ErrorKind::io, "{}: another process is writing this results file", path_);
    }
    const std::string text = read_file(path_);
    // Complete lines are records; a last line without its newline was cut short by a kill.
    size_t keep = 0, begin = 0;
    int64_t line = 0;
    while (begin < text.size()) {
        const size_t end = text.find('\n', begin);
        if (end == std::string::npos) break;
        ++line;
        const auto key = parse_batch_record_key(std::string_view(text).substr(begin, end - begin));
        if (!key) {
            // Garbage in the last line is a torn write too (a file system may keep a length
            // without its data); anywhere else the file is not ours to repair.
            if (end + 1 < text.size())
                fail(ErrorKind::invalid_input, "{}: line {} is not a batch output record; fix or move the file",
                     path_, line);
            break;
        }
        done_.insert(key->id);
        keep = end + 1;
        begin = end + 1;
    }
    dropped_bytes_ = text.size() - keep;
    if (dropped_bytes_ > 0) {
        if (::ftruncate(fd_, off_t(keep)) != 0) fail(ErrorKind::io, "{}: cannot truncate: {}", path_, std::strerror(errno));
        sync_or_fail(fd_, path_);
    }
    size_ = keep;
    if (::lseek(fd_, off_t(size_), SEEK_SET) < 0) fail(ErrorKind::io, "{}: seek failed: {}", path_, std::strerror(errno));
}

BatchResultsFile::~BatchResultsFile() {
    if (fd_ >= 0) ::close(fd_);
}

void BatchResultsFile::append(std::span<const std::string> lines) {
    if (lines.empty()) return;
    std::string data;
    for (const auto& l : lines) {
        data += l;
        data += '\n';
    }
    write_all(fd_, data, path_);
    sync_or_fail(fd_, path_);
    size_ += data.size();
    for (const auto& l : lines)
        if (const auto key = parse_batch_record_key(l)) done_.insert(key->id);
}

void BatchResultsFile::rewrite_in_order(std::span<const std::string> record_ids) {
    const std::string text = read_file(path_);
    std::unordered_map<std::string, std::string_view> by_id;
    for (size_t begin = 0; begin < text.size();) {
        const size_t end = text.find('\n', begin);
        const std::string_view line = std::string_view(text).substr(begin, end - begin);
        if (const auto key = parse_batch_record_key(line)) by_id.emplace(key->id, line);
        begin = end + 1;
    }
    std::string out;
    out.reserve(text.size());
    for (const auto& id : record_ids) {
        const auto it = by_id.find(id);
        if (it == by_id.end()) fail(ErrorKind::internal, "{}: record {} is missing", path_, id);
        out += it->second;
        out += '\n';
    }
    replace_file_durably(path_, out);
    // Keep holding the lock on the file now at `path_`.
    const int fresh = ::open(path_.c_str(), O_RDWR | O_CLOEXEC);
    if (fresh >= 0) {
        ::flock(fresh, LOCK_EX | LOCK_NB);
        ::close(fd_);
        fd_ = fresh;
        ::lseek(fd_, 0, SEEK_END);
    }
    size_ = out.size();
}

}  // namespace sluice
