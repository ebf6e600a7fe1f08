#include "engine/pread_segment_io.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include <fmt/format.h>

#include "core/error.hpp"

namespace sluice {

namespace {
double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }
}  // namespace

PreadSegmentIo::PreadSegmentIo(const FileSet& files, int n_threads, double rate_bytes_per_s)
    : paths_(files.paths), rate_bytes_per_s_(rate_bytes_per_s) {
    for (const auto& p : paths_) {
        const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            const int err = errno;
            for (int f : fds_) ::close(f);
            fail(ErrorKind::io, "{}: cannot open: {}", p, std::strerror(err));
        }
        fds_.push_back(fd);
    }
    for (int i = 0; i < std::max(n_threads, 1); ++i) threads_.emplace_back([this] { worker(); });
}

PreadSegmentIo::~PreadSegmentIo() {
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
    }
    work_.notify_all();
    for (auto& t : threads_) t.join();
    for (int fd : fds_) ::close(fd);
}

size_t PreadSegmentIo::buffer_bytes_for(std::span<const Extent> extents) const {
    size_t total = 0;
    for (const auto& e : extents) total += round_up(size_t(e.length), 64);
    return total;
}

uint64_t PreadSegmentIo::submit(std::span<const Extent> extents, std::byte* buffer, size_t buffer_bytes,
                                const std::byte** extent_data) {
    if (buffer_bytes_for(extents) > buffer_bytes)
        fail(ErrorKind::internal, "segment of {} bytes does not fit a buffer of {}", buffer_bytes_for(extents),
             buffer_bytes);
    std::lock_guard lock(mutex_);
    const uint64_t ticket = next_ticket_++;
    done_[ticket] = Done{};
    queue_.push_back(Job{ticket, std::vector<Extent>(extents.begin(), extents.end()), buffer, extent_data});
    work_.notify_one();
    return ticket;
}

void PreadSegmentIo::run(Job& job) {
    std::byte* cursor = job.buffer;
    for (size_t i = 0; i < job.extents.size(); ++i) {
        const Extent& e = job.extents[i];
        if (e.file_index >= fds_.size())
            fail(ErrorKind::internal, "extent names file {} of {}", e.file_index, fds_.size());
        uint64_t done = 0;
        while (done < e.length) {
            const ssize_t r = ::pread(fds_[e.file_index], cursor + done, e.length - done, off_t(e.offset + done));
            if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            if (r < 0)
                fail(ErrorKind::io, "{}: read of {} bytes at offset {} failed: {}", paths_[e.file_index], e.length,
                     e.offset, std::strerror(errno));
            if (r == 0)
                fail(ErrorKind::io, "{}: read of {} bytes at offset {}: file ends after {} bytes", paths_[e.file_index],
                     e.length, e.offset, e.offset + done);
            done += uint64_t(r);
        }
        job.extent_data[i] = cursor;
        cursor += round_up(size_t(e.length), 64);
        if (rate_bytes_per_s_ > 0) {
            // Deliver no faster than the cap, across all threads.
            double until;
            {
                std::lock_guard lock(mutex_);
                throttle_clock_s_ = std::max(throttle_clock_s_, now_s()) + double(e.length) / rate_bytes_per_s_;
                until = throttle_clock_s_;
            }
            const double wait = until - now_s();
            if (wait > 0) std::this_thread::sleep_for(std::chrono::duration<double>(wait));
        }
    }
}

void PreadSegmentIo::worker() {
    for (;;) {
        Job job;
        {
            std::unique_lock lock(mutex_);
            work_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
            if (stopping_ && queue_.empty()) return;
            job = std::move(queue_.front());
            queue_.pop_front();
        }
        std::string error;
        try {
            run(job);
        } catch (const std::exception& e) {
            error = e.what();
        }
        {
            std::lock_guard lock(mutex_);
            auto& d = done_[job.ticket];
            d.finished = true;
            d.error = std::move(error);
        }
        finished_.notify_all();
    }
}

void PreadSegmentIo::rethrow_if_failed(uint64_t ticket, Done& done) {
    if (done.error.empty()) {
        done_.erase(ticket);
        return;
    }
    std::string message = std::move(done.error);
    done_.erase(ticket);
    throw Error(ErrorKind::io, message);
}

bool PreadSegmentIo::poll(uint64_t ticket) {
    std::lock_guard lock(mutex_);
    auto it = done_.find(ticket);
    if (it == done_.end()) return true;  // already collected
    if (!it->second.finished) return false;
    rethrow_if_failed(ticket, it->second);
    return true;
}

void PreadSegmentIo::wait(uint64_t ticket) {
    std::unique_lock lock(mutex_);
    auto it = done_.find(ticket);
    if (it == done_.end()) return;
    finished_.wait(lock, [&] { return it->second.finished; });
    rethrow_if_failed(ticket, it->second);
}

size_t PreadSegmentIo::wait_any(std::span<const uint64_t> tickets) {
    std::unique_lock lock(mutex_);
    for (;;) {
        for (size_t i = 0; i < tickets.size(); ++i) {
            auto it = done_.find(tickets[i]);
            if (it == done_.end()) return i;
            if (it->second.finished) {
                rethrow_if_failed(tickets[i], it->second);
                return i;
            }
        }
        finished_.wait(lock);
    }
}

}  // namespace sluice
