// Built when CUDA is not compiled in: the same query answers "not compiled".
#include "kernels/cuda/device.hpp"

namespace sluice::cuda {

DeviceQuery query_devices() {
    DeviceQuery q;
    q.reason = "this sluice was built without CUDA (nvcc not found at build time)";
    return q;
}

}  // namespace sluice::cuda
