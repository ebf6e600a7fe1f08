#include "engine/backend.hpp"

#include "core/error.hpp"

namespace sluice {

// Host backends use weights in place: nothing is copied, so asking for a copy is a bug.
namespace {
[[noreturn]] void no_device(const Backend& b, const char* what) {
    fail(ErrorKind::internal, "the {} backend has no device memory ({} called)", b.name(), what);
}
}  // namespace

void* Backend::alloc_weight_bytes(size_t) { no_device(*this, "alloc_weight_bytes"); }
int Backend::create_event() { no_device(*this, "create_event"); }
void Backend::copy_weights_async(void*, const void*, size_t) { no_device(*this, "copy_weights_async"); }
void Backend::record_on_copy(int) { no_device(*this, "record_on_copy"); }
void Backend::record_on_compute(int) { no_device(*this, "record_on_compute"); }
void Backend::compute_waits_for(int) { no_device(*this, "compute_waits_for"); }
void Backend::copy_waits_for(int) { no_device(*this, "copy_waits_for"); }
void Backend::host_waits_for(int) { no_device(*this, "host_waits_for"); }

}  // namespace sluice
