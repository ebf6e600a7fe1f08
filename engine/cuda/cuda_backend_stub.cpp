// Built without CUDA: asking for the CUDA backend is a clear error.
#include "core/error.hpp"
#include "engine/cuda/cuda_backend.hpp"

namespace sluice {

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions&) {
    fail(ErrorKind::unsupported, "--device cuda: this sluice was built without CUDA (nvcc not found at build time)");
}

}  // namespace sluice
