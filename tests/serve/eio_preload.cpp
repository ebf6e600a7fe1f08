// LD_PRELOAD into `sluice serve` (tests/serve/engine_error_test.py): while the file named by
// $SLUICE_EIO_TRIGGER exists, pread on a file whose path contains $SLUICE_EIO_MATCH fails with
// EIO, as a read from a failing disk does. Only the pread reader is covered (--io pread): reads
// through io_uring do not pass through libc. sluice is built with 64-bit file offsets, so its
// pread calls are pread64.
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

namespace {

bool failing(int fd) {
    const char* trigger = getenv("SLUICE_EIO_TRIGGER");
    const char* match = getenv("SLUICE_EIO_MATCH");
    if (!trigger || !match || access(trigger, F_OK) != 0) return false;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    const ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return false;
    path[n] = 0;
    return strstr(path, match) != nullptr;
}

using pread_fn = ssize_t (*)(int, void*, size_t, off_t);

}  // namespace

extern "C" ssize_t pread64(int fd, void* buf, size_t count, off_t offset) {
    static const pread_fn real = reinterpret_cast<pread_fn>(dlsym(RTLD_NEXT, "pread64"));
    if (failing(fd)) {
        errno = EIO;
        return -1;
    }
    return real(fd, buf, count, offset);
}
