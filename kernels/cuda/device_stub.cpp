// Built when CUDA is not compiled in: the same query answers "not compiled".
#include "kernels/cuda/device.hpp"

namespace sluice::cuda {

DeviceQuery query_devices() {
    DeviceQuery q;
    q.reason = "this sluice was built without CUDA (nvcc not found at build time)";
    return q;
}

bool pin_host_memory(void*, size_t) { return false; }
size_t allocator_peak_bytes() { return 0; }
void unpin_host_memory(void*) {}

}  // namespace sluice::cuda
