// The results file of a batch job, crash-safe: a record counts as done only once its line is on
// disk (appended, then fdatasync). Opening an existing file resumes it: the ids of its complete
// records are done; a last line cut short by a kill (no newline, or not a record) is detected and
// cut off. One writer at a time (flock). When the job is complete, the records are rewritten in
// input order through a temporary file and a rename, so the finished file is the same bytes
// however often the job was interrupted.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <unordered_set>

namespace sluice {

// Replaces `path` with `data` atomically and durably: written to `path`.tmp, synced, renamed over
// `path`, the directory synced. On any failure the temporary file is removed (a full disk keeps
// no half-written copy eating what space is left) and `path` is as it was. Throws io naming the
// file and the reason.
void replace_file_durably(const std::string& path, const std::string& data);

class BatchResultsFile {
public:
    // Opens or creates `path`. Throws invalid_input naming the line for a record other than the
    // last that does not parse, io when another process holds the file.
    explicit BatchResultsFile(std::string path);
    ~BatchResultsFile();
    BatchResultsFile(const BatchResultsFile&) = delete;
    BatchResultsFile& operator=(const BatchResultsFile&) = delete;

    bool done(const std::string& record_id) const { return done_.count(record_id) > 0; }
    size_t n_done() const { return done_.size(); }
    // Bytes of a torn last line removed when the file was opened (0 when none).
    uint64_t dropped_bytes() const { return dropped_bytes_; }

    // Appends the lines (each without its newline) and returns once they are durable.
    void append(std::span<const std::string> lines);
    // Rewrites the file with its records in the order of `record_ids` (each present exactly once),
    // atomically.
    void rewrite_in_order(std::span<const std::string> record_ids);

    const std::string& path() const { return path_; }

private:
    std::string path_;
    int fd_ = -1;
    uint64_t size_ = 0;
    uint64_t dropped_bytes_ = 0;
    std::unordered_set<std::string> done_;
};

}  // namespace sluice
