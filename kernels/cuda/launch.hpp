// The one way kernels are launched, in the nvcc build and the emulated one (cudaemu/) alike:
// launch_kernel(kernel, grid, block, shared_bytes, stream, args...) is `kernel<<<grid, block,
// shared_bytes, stream>>>(args...)` through CUDA's typed cudaLaunchKernel, so a kernel named by a
// template with several arguments needs no parentheses and the same source builds under both.
// Also the one spelling of dynamic shared memory both builds accept.
#pragma once

#include <cuda_runtime.h>

#include <tuple>
#include <type_traits>
#include <utility>

namespace sluice::cuda {

// Arguments convert to the kernel's parameter types here, as they would in a <<<>>> launch.
// Returns the launch's status (also what cudaGetLastError reports next).
template <typename... P, typename... A>
cudaError_t launch_kernel(void (*kernel)(P...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                   A&&... args) {
    static_assert(sizeof...(P) == sizeof...(A), "launch_kernel: argument count differs from the kernel's parameters");
    std::tuple<std::remove_cvref_t<P>...> params(std::forward<A>(args)...);
    return std::apply(
        [&](auto&... p) {
            void* pointers[] = {static_cast<void*>(&p)..., nullptr};
            return cudaLaunchKernel(kernel, grid, block, pointers, shared_bytes, stream);
        },
        params);
}

}  // namespace sluice::cuda

// SLUICE_DYNAMIC_SHARED(float, q); declares q as the block's dynamic shared memory (the launch's
// shared_bytes). nvcc: `extern __shared__ float q[]`; the emulator gives each block its own
// allocation of exactly that size.
#ifdef CUDAEMU
#define SLUICE_DYNAMIC_SHARED(type, name) type* const name = static_cast<type*>(::cudaemu::detail::dynamic_shared_memory())
#else
#define SLUICE_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif
