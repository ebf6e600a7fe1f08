// Weights read into memory with plain reads (the resident loader, headers) live in sluice's own
// buffers from then on: the page cache's copy would only double them, and inside a memory cgroup
// it is charged to the process. Loading the 2 GB of globals and dense parts of the 5-layer V3 model
// under an 8 GiB cap left that copy charged beside a 7 GiB plan: the group hit its limit tens of
// thousands of times while the streamer's pool was first touched, and its huge pages fell back to
// 4 KiB pages (3984 of 4892 MiB huge).
#pragma once

#include <fcntl.h>

#include <cstdint>

namespace sluice {

// Drops the file's cached pages in [offset, offset + length) (advisory: a failure changes nothing).
inline void drop_cached(int fd, uint64_t offset, uint64_t length) {
    ::posix_fadvise(fd, off_t(offset), off_t(length), POSIX_FADV_DONTNEED);
}

}  // namespace sluice
