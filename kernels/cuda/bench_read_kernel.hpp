// The bandwidth peer for the CUDA benchmarks: reads a device buffer with 16-byte loads across
// the whole GPU and folds it into a sink, the least work a kernel can do per byte read.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

namespace sluice::cuda::bench {

// Reads `bytes` (a multiple of 16) from `data`; writes one partial sum per block into sink
// (at least 1024 floats), so the reads cannot be optimised away.
void read_sum(const void* data, size_t bytes, float* sink, cudaStream_t stream);

}  // namespace sluice::cuda::bench
