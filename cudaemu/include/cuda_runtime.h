// cudaemu: what nvcc makes visible to a .cu file (the runtime API, the kernel language, vector
// types), and the typed cudaLaunchKernel: the one way to launch a kernel on the emulated device
// (a `<<<grid, block, shared, stream>>>` launch is nvcc syntax; code that must build under both
// uses cudaLaunchKernel with the kernel's own address, which CUDA's runtime has as well).
#pragma once

#include <cstddef>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda_runtime_api.h"
#include "cudaemu/device_functions.h"
#include "vector_types.h"

namespace cudaemu::detail {

// A launch's kernel and its parameters, copied at launch time as CUDA copies them.
struct KernelCall {
    virtual ~KernelCall() = default;
    virtual void run() = 0;  // one thread's execution of the kernel
};

template <class F, class Params>
struct BoundKernel final : KernelCall {
    BoundKernel(F f, Params p) : kernel(f), params(std::move(p)) {}
    void run() override { std::apply(kernel, params); }  // each thread gets its own copy
    F kernel;
    Params params;
};

cudaError_t launch_kernel(std::unique_ptr<KernelCall> call, const void* func, dim3 grid, dim3 block,
                          size_t dynamic_shared_bytes, cudaStream_t stream, const char* signature);

}  // namespace cudaemu::detail

// CUDA's typed launch: args[i] points to a value of the kernel's i-th parameter type.
template <class... P>
cudaError_t cudaLaunchKernel(void (*func)(P...), dim3 grid, dim3 block, void** args, size_t shared_bytes = 0,
                             cudaStream_t stream = nullptr) {
    using Params = std::tuple<std::remove_cvref_t<P>...>;
    return [&]<size_t... I>(std::index_sequence<I...>) {
        auto call = std::make_unique<cudaemu::detail::BoundKernel<void (*)(P...), Params>>(
            func, Params(*static_cast<std::remove_cvref_t<P>*>(args[I])...));
        return cudaemu::detail::launch_kernel(std::move(call), reinterpret_cast<const void*>(func), grid, block,
                                              shared_bytes, stream, __PRETTY_FUNCTION__);
    }(std::index_sequence_for<P...>{});
}
