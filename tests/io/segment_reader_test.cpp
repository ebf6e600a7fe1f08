// The segment reader against plain pread: random unaligned extents across several files through
// each backend, faults injected at the completion seam (through the real retry code), bad input.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <unordered_map>
#include <random>
#include <string>
#include <vector>

#include "../limited_child.hpp"
#include "core/aligned_buffer.hpp"
#include "core/error.hpp"
#include "io/pread_completion_source.hpp"
#include "io/segment_reader.hpp"
#include "io/staging_ring.hpp"
#include "io/uring_completion_source.hpp"

using namespace sluice;
using namespace sluice::io;
namespace fs = std::filesystem;

namespace {

struct TempDir {
    fs::path path;
    TempDir() {
        char templ[] = "/tmp/sluice_io_test_XXXXXX";
        path = mkdtemp(templ);
    }
    ~TempDir() { fs::remove_all(path); }
};

// Files of pseudo-random bytes with awkward sizes (not block multiples, one tiny, one empty).
FileSet make_files(const fs::path& dir, const std::vector<size_t>& sizes, uint32_t seed) {
    FileSet set;
    std::mt19937 rng(seed);
    for (size_t i = 0; i < sizes.size(); ++i) {
        const auto p = dir / ("file" + std::to_string(i) + ".bin");
        std::vector<char> bytes(sizes[i]);
        for (auto& b : bytes) b = char(rng());
        std::ofstream(p, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
        set.paths.push_back(p.string());
    }
    return set;
}

std::vector<char> pread_reference(const std::string& path, uint64_t offset, uint64_t length) {
    std::vector<char> out(length);
    const int fd = ::open(path.c_str(), O_RDONLY);
    REQUIRE(fd >= 0);
    REQUIRE(::pread(fd, out.data(), length, off_t(offset)) == ssize_t(length));
    ::close(fd);
    return out;
}

// Random extents: unaligned offsets and lengths, zero lengths, extents ending exactly at EOF.
std::vector<Extent> random_extents(std::mt19937& rng, const std::vector<size_t>& sizes, size_t n) {
    std::vector<Extent> out;
    for (size_t i = 0; i < n; ++i) {
        Extent e;
        e.file_index = uint32_t(rng() % sizes.size());
        const size_t size = sizes[e.file_index];
        const unsigned kind = rng() % 8;
        if (size == 0 || kind == 0) {
            e.offset = size == 0 ? 0 : rng() % (size + 1);
            e.length = 0;
        } else if (kind == 1) {  // ends at EOF
            e.length = 1 + rng() % std::min<size_t>(size, 300000);
            e.offset = size - e.length;
        } else {
            e.offset = rng() % size;
            e.length = 1 + rng() % std::min<size_t>(size - e.offset, kind == 2 ? 900000 : 20000);
        }
        out.push_back(e);
    }
    return out;
}

void check_segment_bytes(const FileSet& files, std::span<const Extent> extents, const std::byte* const* data) {
    for (size_t i = 0; i < extents.size(); ++i) {
        const auto& e = extents[i];
        if (e.length == 0) continue;
        const auto ref = pread_reference(files.paths[e.file_index], e.offset, e.length);
        REQUIRE_MESSAGE(std::memcmp(ref.data(), data[i], e.length) == 0, "extent ", i, " file ", e.file_index,
                        " offset ", e.offset, " length ", e.length);
    }
}

const std::vector<size_t> file_sizes = {3 * 1024 * 1024 + 1237, 777, 0, 1024 * 1024 + 4096, 2 * 1024 * 1024 - 5};

void random_segments_match_pread(Backend backend, bool direct) {
    TempDir dir;
    const auto files = make_files(dir.path, file_sizes, 7);
    ReaderOptions options;
    options.backend = backend;
    options.direct = direct;
    options.request_bytes = 64 * 1024;  // small, so extents split into several requests
    options.queue_depth = 6;
    SegmentReader reader(files, options);
    std::mt19937 rng(backend == Backend::pread ? 11 : 12);
    constexpr size_t n_buffers = 4;
    std::vector<AlignedBuffer> buffers;
    for (size_t i = 0; i < n_buffers; ++i) buffers.emplace_back(8 << 20, 4096);
    std::vector<std::vector<Extent>> segs(n_buffers);
    std::vector<std::vector<const std::byte*>> data(n_buffers);
    std::vector<uint64_t> tickets(n_buffers, 0);
    size_t extents_checked = 0;
    // Keep several segments in flight at once; check each as it lands, refill its buffer.
    for (int round = 0; round < 120; ++round) {
        const size_t b = size_t(round) % n_buffers;
        if (tickets[b]) {
            reader.wait(tickets[b]);
            check_segment_bytes(files, segs[b], data[b].data());
            extents_checked += segs[b].size();
        }
        segs[b] = random_extents(rng, file_sizes, 1 + rng() % 40);
        data[b].assign(segs[b].size(), nullptr);
        tickets[b] = reader.submit(segs[b], buffers[b].data(), buffers[b].size(), data[b].data());
    }
    for (size_t b = 0; b < n_buffers; ++b) {
        reader.wait(tickets[b]);
        check_segment_bytes(files, segs[b], data[b].data());
        extents_checked += segs[b].size();
    }
    CHECK(extents_checked > 2000);
    CHECK(reader.requests_outstanding() == 0);
}

// Wraps a real backend and perturbs chosen completions: the reader's real retry code sees them.
class FaultInjector final : public CompletionSource {
public:
    enum class Fault { none, short_read, eagain, eintr, eio };
    FaultInjector(std::unique_ptr<CompletionSource> inner, std::function<Fault(const ReadRequest&)> choose)
        : inner_(std::move(inner)), choose_(std::move(choose)) {}
    const char* name() const override { return "fault-injector"; }
    size_t capacity() const override { return inner_->capacity(); }
    void enqueue(const ReadRequest& r) override {
        const Fault f = choose_(r);
        faults_[r.user_data] = f;
        ++injected_[int(f)];
        lengths_[r.user_data] = r.length;
        inner_->enqueue(r);
    }
    void flush() override { inner_->flush(); }
    size_t reap(std::span<ReadCompletion> out, bool block) override {
        const size_t n = inner_->reap(out, block);
        for (size_t i = 0; i < n; ++i) {
            const Fault f = faults_[out[i].user_data];
            if (f == Fault::eagain) out[i].result = -EAGAIN;
            if (f == Fault::eintr) out[i].result = -EINTR;
            if (f == Fault::eio) out[i].result = -EIO;
            // A short read as the kernel may return one: fewer bytes, deliberately not block-aligned.
            if (f == Fault::short_read && out[i].result > 1)
                out[i].result = std::min<int64_t>(out[i].result, lengths_[out[i].user_data] / 2 + 1);
        }
        return n;
    }
    int injected(Fault f) const { return injected_[int(f)]; }

private:
    std::unique_ptr<CompletionSource> inner_;
    std::function<Fault(const ReadRequest&)> choose_;
    std::unordered_map<uint64_t, Fault> faults_;
    std::unordered_map<uint64_t, uint32_t> lengths_;
    int injected_[5] = {};
};

}  // namespace

TEST_CASE("pread backend: thousands of random extents are byte-identical to pread") {
    random_segments_match_pread(Backend::pread, true);
}

TEST_CASE("io_uring backend (O_DIRECT): thousands of random extents are byte-identical to pread") {
    int err = 0;
    if (!UringCompletionSource::create(4, &err)) {
        MESSAGE("io_uring unavailable here (" << std::strerror(err) << "); skipped");
        return;
    }
    random_segments_match_pread(Backend::uring, true);
}

TEST_CASE("io_uring backend (buffered): random extents are byte-identical to pread") {
    int err = 0;
    if (!UringCompletionSource::create(4, &err)) return;
    random_segments_match_pread(Backend::uring, false);
}

TEST_CASE("staging slots registered as fixed buffers read the same bytes (READ_FIXED)") {
    TempDir dir;
    const auto files = make_files(dir.path, file_sizes, 3);
    ReaderOptions options;
    options.request_bytes = 128 * 1024;
    SegmentReader reader(files, options);
    StagingRing ring(3, 4 << 20, 32);
    const bool registered = reader.register_buffers(ring.regions());
    MESSAGE("backend " << std::string(reader.backend_name()) << ", fixed buffers registered: " << registered);
    std::mt19937 rng(5);
    for (int i = 0; i < 30; ++i) {
        auto& slot = ring.acquire();
        const auto extents = random_extents(rng, file_sizes, 1 + rng() % 20);
        if (SegmentReader::buffer_bytes_for(extents) > slot.bytes.size()) {
            ring.release(slot);
            continue;
        }
        reader.wait(reader.submit(uint64_t(i), extents, slot));
        CHECK(slot.segment_id == uint64_t(i));
        for (size_t k = 0; k < extents.size(); ++k) {
            const auto ref = pread_reference(files.paths[extents[k].file_index], extents[k].offset, extents[k].length);
            REQUIRE(slot.extent(k).size() == extents[k].length);
            REQUIRE(std::memcmp(ref.data(), slot.extent(k).data(), ref.size()) == 0);
        }
        ring.release(slot);
    }
}

TEST_CASE("injected short reads, EAGAIN and EINTR are retried to the exact bytes") {
    for (bool direct : {true, false}) {
        TempDir dir;
        const auto files = make_files(dir.path, file_sizes, 9);
        ReaderOptions options;
        options.direct = direct;
        options.request_bytes = 32 * 1024;
        options.queue_depth = 4;
        std::mt19937 fault_rng(21);
        auto injector = std::make_unique<FaultInjector>(
            std::make_unique<PreadCompletionSource>(3, options.queue_depth), [&](const ReadRequest&) {
                const unsigned r = fault_rng() % 10;
                return r < 3 ? FaultInjector::Fault::short_read
                       : r == 3 ? FaultInjector::Fault::eagain
                       : r == 4 ? FaultInjector::Fault::eintr
                                : FaultInjector::Fault::none;
            });
        FaultInjector* faults = injector.get();
        SegmentReader reader(files, options, std::move(injector));
        AlignedBuffer buffer(16 << 20, 4096);
        std::mt19937 rng(4);
        for (int i = 0; i < 40; ++i) {
            const auto extents = random_extents(rng, file_sizes, 1 + rng() % 30);
            std::vector<const std::byte*> data(extents.size());
            reader.wait(reader.submit(extents, buffer.data(), buffer.size(), data.data()));
            check_segment_bytes(files, extents, data.data());
        }
        CHECK(faults->injected(FaultInjector::Fault::short_read) > 50);
        CHECK(faults->injected(FaultInjector::Fault::eagain) > 10);
        CHECK(faults->injected(FaultInjector::Fault::eintr) > 10);
    }
}

TEST_CASE("EIO fails only its segment, with a typed error naming file and offset; others complete") {
    TempDir dir;
    const auto files = make_files(dir.path, file_sizes, 13);
    ReaderOptions options;
    options.request_bytes = 64 * 1024;
    options.queue_depth = 4;
    AlignedBuffer a(4 << 20, 4096), b(4 << 20, 4096), c(4 << 20, 4096);
    const std::byte* bad_buffer = b.data();
    auto injector = std::make_unique<FaultInjector>(
        std::make_unique<PreadCompletionSource>(2, options.queue_depth), [bad_buffer](const ReadRequest& r) {
            // Fail the bad segment's request for file 0 at 1 MiB.
            return r.offset == (1 << 20) && r.dest >= bad_buffer && r.dest < bad_buffer + (4 << 20)
                       ? FaultInjector::Fault::eio
                       : FaultInjector::Fault::none;
        });
    SegmentReader reader(files, options, std::move(injector));
    const std::vector<Extent> good1 = {{3, 100, 500000}, {1, 0, 777}};
    const std::vector<Extent> bad = {{0, 1000, 3000}, {0, 1 << 20, 200000}, {4, 5, 70000}};
    const std::vector<Extent> good2 = {{4, 1, 1500000}};
    std::vector<const std::byte*> d1(2), db(3), d2(1);
    const auto t1 = reader.submit(good1, a.data(), a.size(), d1.data());
    const auto tb = reader.submit(bad, b.data(), b.size(), db.data());
    const auto t2 = reader.submit(good2, c.data(), c.size(), d2.data());
    reader.wait(t2);
    check_segment_bytes(files, good2, d2.data());
    try {
        reader.wait(tb);
        FAIL("the failed segment did not throw");
    } catch (const Error& e) {
        CHECK(e.kind() == ErrorKind::io);
        const std::string what = e.what();
        CHECK(what.find(files.paths[0]) != std::string::npos);
        CHECK(what.find("offset 1048576") != std::string::npos);
        CHECK(what.find(std::strerror(EIO)) != std::string::npos);
    }
    reader.wait(t1);
    check_segment_bytes(files, good1, d1.data());
    CHECK(reader.requests_outstanding() == 0);
}

TEST_CASE("an extent past the end of its file is refused at submit and nothing is queued") {
    TempDir dir;
    const auto files = make_files(dir.path, {10000}, 1);
    SegmentReader reader(files);
    AlignedBuffer buffer(1 << 20, 4096);
    const std::vector<Extent> extents = {{0, 0, 100}, {0, 9000, 1001}};
    std::vector<const std::byte*> data(2);
    CHECK_THROWS_AS(reader.submit(extents, buffer.data(), buffer.size(), data.data()), Error);
    CHECK(reader.requests_outstanding() == 0);
    const std::vector<Extent> bad_file = {{1, 0, 1}};
    CHECK_THROWS_AS(reader.submit(bad_file, buffer.data(), buffer.size(), data.data()), Error);
    const std::vector<Extent> too_big = {{0, 0, 10000}};
    CHECK_THROWS_AS(reader.submit(too_big, buffer.data(), 4096, data.data()), Error);
}

TEST_CASE("a file that shrinks after open surfaces an io error naming it, not a hang or garbage") {
    for (Backend backend : {Backend::pread, Backend::auto_select}) {
        TempDir dir;
        const auto files = make_files(dir.path, {3 << 20}, 2);
        SegmentReader reader(files, ReaderOptions{.backend = backend});
        REQUIRE(::truncate(files.paths[0].c_str(), 1 << 20) == 0);
        AlignedBuffer buffer(4 << 20, 4096);
        const std::vector<Extent> extents = {{0, 512 * 1024, 2 << 20}};
        std::vector<const std::byte*> data(1);
        const auto t = reader.submit(extents, buffer.data(), buffer.size(), data.data());
        try {
            reader.wait(t);
            FAIL("read past the shrunken end succeeded");
        } catch (const Error& e) {
            CHECK(e.kind() == ErrorKind::io);
            CHECK(std::string(e.what()).find(files.paths[0]) != std::string::npos);
            CHECK(std::string(e.what()).find("end of file") != std::string::npos);
        }
    }
}

TEST_CASE("a directory or a missing file is refused at open with its path") {
    TempDir dir;
    try {
        SegmentReader reader(FileSet{{dir.path.string()}});
        FAIL("a directory was accepted");
    } catch (const Error& e) {
        CHECK(std::string(e.what()).find(dir.path.string()) != std::string::npos);
    }
    try {
        SegmentReader reader(FileSet{{(dir.path / "missing").string()}});
        FAIL("a missing file was accepted");
    } catch (const Error& e) {
        CHECK(e.kind() == ErrorKind::io);
        CHECK(std::string(e.what()).find("missing") != std::string::npos);
    }
}

TEST_CASE("a file without read permission is refused at open (unless root, who bypasses the bits)") {
    TempDir dir;
    const auto files = make_files(dir.path, {5000}, 3);
    ::chmod(files.paths[0].c_str(), 0);
    if (::geteuid() == 0) {
        // Root reads regardless of mode bits: what is testable is that the read still works.
        MESSAGE("running as root: permission bits are bypassed; checking the read succeeds instead");
        SegmentReader reader(files);
        AlignedBuffer buffer(1 << 20, 4096);
        const std::vector<Extent> extents = {{0, 10, 4000}};
        std::vector<const std::byte*> data(1);
        reader.wait(reader.submit(extents, buffer.data(), buffer.size(), data.data()));
        check_segment_bytes(files, extents, data.data());
        return;
    }
    try {
        SegmentReader reader(files);
        FAIL("an unreadable file was accepted");
    } catch (const Error& e) {
        CHECK(e.kind() == ErrorKind::io);
        CHECK(std::string(e.what()).find(std::strerror(EACCES)) != std::string::npos);
    }
}

TEST_CASE("an unknown backend name or a request size that is not a block multiple is refused") {
    CHECK_THROWS_AS(parse_backend("spdk"), Error);
    CHECK(parse_backend("pread") == Backend::pread);
    TempDir dir;
    const auto files = make_files(dir.path, {100}, 1);
    CHECK_THROWS_AS(SegmentReader(files, ReaderOptions{.request_bytes = 5000}), Error);
    CHECK_THROWS_AS(SegmentReader(files, ReaderOptions{.queue_depth = 0}), Error);
}

namespace {
size_t open_descriptors() {
    size_t n = 0;
    for ([[maybe_unused]] const auto& entry : fs::directory_iterator("/proc/self/fd")) ++n;
    return n;
}
}  // namespace

TEST_CASE("pread threads the OS refuses end in a typed error naming the count, with no file left open") {
    if (!testing::address_space_caps_work) {
        MESSAGE("sanitizer build: an address-space cap cannot work here; skipped");
        return;
    }
    TempDir dir;
    const auto files = make_files(dir.path, {100000, 5000}, 4);
    // 4096 threads need 32 GiB of stacks; the cap leaves room for a few dozen.
    const int code = testing::run_with_address_space_cap(256 << 20, [&] {
        try {
            PreadCompletionSource source(4096, 4096);
            return 2;
        } catch (const Error& e) {
            if (e.kind() != ErrorKind::out_of_memory) return 3;
            if (std::string(e.what()).find("could not start 4096 I/O threads") == std::string::npos) return 4;
        }
        // The reader opens its files before it starts the backend: they must close again.
        const size_t before = open_descriptors();
        try {
            SegmentReader reader(files, ReaderOptions{.backend = Backend::pread, .queue_depth = 4096});
            return 5;
        } catch (const Error& e) {
            if (e.kind() != ErrorKind::out_of_memory) return 6;
        }
        if (open_descriptors() != before) return 7;
        // Threads within the cap still start and read.
        SegmentReader reader(files, ReaderOptions{.backend = Backend::pread, .queue_depth = 4});
        AlignedBuffer buffer(1 << 20, 4096);
        const std::vector<Extent> extents = {{0, 10, 90000}};
        std::vector<const std::byte*> data(1);
        reader.wait(reader.submit(extents, buffer.data(), buffer.size(), data.data()));
        return std::memcmp(data[0], pread_reference(files.paths[0], 10, 90000).data(), 90000) == 0 ? 0 : 8;
    });
    CHECK(code == 0);  // 134: std::terminate on the joinable threads of the half-built pool
}

namespace {

// The io_uring instance file descriptors this process holds.
std::vector<int> io_uring_descriptors() {
    std::vector<int> fds;
    for (const auto& entry : fs::directory_iterator("/proc/self/fd")) {
        std::error_code ec;
        if (fs::read_symlink(entry.path(), ec).string() == "anon_inode:[io_uring]")
            fds.push_back(std::stoi(entry.path().filename().string()));
    }
    return fds;
}

// Reaps without blocking until `n` completions arrived or two seconds passed (a completion that
// never comes must fail the test, not hang it).
std::vector<ReadCompletion> reap_up_to(CompletionSource& source, size_t n) {
    std::vector<ReadCompletion> got, batch(8);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (got.size() < n && std::chrono::steady_clock::now() < deadline) {
        const size_t k = source.reap(batch, false);
        got.insert(got.end(), batch.begin(), batch.begin() + ptrdiff_t(k));
    }
    return got;
}

}  // namespace

TEST_CASE("io_uring: entries the kernel left unsubmitted after a partial submit are submitted, not stranded") {
    int err = 0;
    auto source = UringCompletionSource::create(8, &err);
    if (!source) {
        MESSAGE("io_uring unavailable here (" << std::strerror(err) << "); skipped");
        return;
    }
    TempDir dir;
    const auto files = make_files(dir.path, {64 * 1024}, 8);
    const int fd = ::open(files.paths[0].c_str(), O_RDONLY);
    REQUIRE(fd >= 0);
    AlignedBuffer buffer(64 * 1024, 4096);
    // The middle request's destination is a kernel address: the kernel fails it while preparing
    // it, with its own completion, and stops submitting there (without IORING_SETUP_SUBMIT_ALL):
    // io_uring_submit returns 2 of 3 and the third stays in the submission queue. (Kernels that
    // check the address later, at issue, submit all three: then this passes either way.)
    auto* kernel_address = reinterpret_cast<std::byte*>(uintptr_t(0xffff800000000000ull));
    const std::array<ReadRequest, 3> requests{ReadRequest{fd, -1, 0, 4096, buffer.data(), 100},
                                              ReadRequest{fd, -1, 4096, 4096, kernel_address, 101},
                                              ReadRequest{fd, -1, 8192, 4096, buffer.data() + 8192, 102}};
    for (const auto& r : requests) source->enqueue(r);
    source->flush();
    auto got = reap_up_to(*source, 3);
    std::sort(got.begin(), got.end(), [](const auto& a, const auto& b) { return a.user_data < b.user_data; });
    REQUIRE(got.size() == 3);  // was 2: the third never reached the kernel and nothing would submit it
    CHECK(got[0].result == 4096);
    CHECK(got[1].result == -EFAULT);
    CHECK(got[2].result == 4096);
    ::close(fd);
}

TEST_CASE("io_uring: a submit the kernel refuses completes every queued read with the error, and the reader reports it") {
    int err = 0;
    if (!UringCompletionSource::create(4, &err)) {
        MESSAGE("io_uring unavailable here (" << std::strerror(err) << "); skipped");
        return;
    }
    TempDir dir;
    const auto files = make_files(dir.path, {3 << 20}, 6);
    // The ring's descriptor is closed under it, so io_uring_enter fails with EBADF: a hard error,
    // after the entries were queued.
    const auto break_ring = [](const std::vector<int>& before) {
        for (int fd : io_uring_descriptors())
            if (std::find(before.begin(), before.end(), fd) == before.end()) ::close(fd);
    };
    SUBCASE("the completion source") {
        const auto before = io_uring_descriptors();
        auto source = UringCompletionSource::create(4, &err);
        REQUIRE(source);
        const int fd = ::open(files.paths[0].c_str(), O_RDONLY);
        AlignedBuffer buffer(1 << 20, 4096);
        for (uint64_t i = 0; i < 3; ++i)
            source->enqueue(ReadRequest{fd, -1, i * 4096, 4096, buffer.data() + i * 4096, 200 + i});
        break_ring(before);
        source->flush();  // threw "io_uring_submit: Bad file descriptor" with the three counted as started
        auto got = reap_up_to(*source, 3);
        REQUIRE(got.size() == 3);
        for (uint64_t i = 0; i < 3; ++i) {
            CHECK(got[i].user_data == 200 + i);
            CHECK(got[i].result == -EBADF);
        }
        ::close(fd);
    }
    SUBCASE("the segment reader: a typed error naming the file and offset, and a destructor that returns") {
        const auto before = io_uring_descriptors();
        auto source = UringCompletionSource::create(4, &err);
        REQUIRE(source);
        auto reader = std::make_unique<SegmentReader>(files, ReaderOptions{.request_bytes = 1 << 20, .queue_depth = 4},
                                                      std::move(source));
        break_ring(before);
        AlignedBuffer buffer(4 << 20, 4096);
        const std::vector<Extent> extents = {{0, 1 << 20, 2 << 20}};
        std::vector<const std::byte*> data(1);
        try {
            reader->wait(reader->submit(extents, buffer.data(), buffer.size(), data.data()));
            FAIL("a read through a broken ring succeeded");
        } catch (const Error& e) {
            CHECK(e.kind() == ErrorKind::io);
            CHECK(std::string(e.what()).find(files.paths[0]) != std::string::npos);
            CHECK(std::string(e.what()).find("offset 1048576") != std::string::npos);
        }
        CHECK(reader->requests_outstanding() == 0);
        reader.reset();  // drained reads that were never started: waited forever
    }
}
