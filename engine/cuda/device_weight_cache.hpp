// Device copies of host weights, keyed by the host address they were handed out at. The forward
// pass asks for a layer's matrices as the WeightProvider gives them (host views: resident
// arena, staging slot or cache entry); the first ask copies them to the GPU, later asks reuse
// the copy. Under a byte budget the least recently used copies not needed by the current layer
// are dropped. A streamed provider that reuses a staging slot for other weights must call
// forget() for that slot's range, since the key is the address.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <list>
#include <unordered_map>

#include "kernels/cuda/device_memory.hpp"
#include "kernels/matrix.hpp"

namespace sluice::cuda {

class DeviceWeightCache {
public:
    explicit DeviceWeightCache(int64_t budget_bytes) : budget_bytes_(budget_bytes) {}

    // Starts a new use period (a layer): copies handed out from now on are not evicted until
    // the next begin_use().
    void begin_use() { ++generation_; }

    // The same matrix with data (and FP8 block scales) in device memory. Copies on `stream`
    // and waits for the copy, so the returned view is usable by any later stream work.
    Matrix device(const Matrix& host, cudaStream_t stream);
    // A device copy of n floats at host.
    const float* device(const float* host, int64_t n, cudaStream_t stream);

    // Drops copies whose host range starts inside [begin, begin + bytes).
    void forget(const void* begin, int64_t bytes);

    int64_t used_bytes() const { return used_bytes_; }
    int64_t uploaded_bytes() const { return uploaded_bytes_; }  // total copied, for the report

private:
    struct Entry {
        DeviceBuffer buffer;
        int64_t bytes = 0;
        uint64_t generation = 0;
        std::list<const void*>::iterator lru;
    };
    const void* upload(const void* host, int64_t bytes, cudaStream_t stream);
    void make_room(int64_t bytes);

    int64_t budget_bytes_;
    int64_t used_bytes_ = 0;
    int64_t uploaded_bytes_ = 0;
    uint64_t generation_ = 0;
    std::unordered_map<const void*, Entry> entries_;
    std::list<const void*> lru_;  // front: most recently used
};

}  // namespace sluice::cuda
