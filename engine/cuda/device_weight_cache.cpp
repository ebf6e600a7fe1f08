#include "engine/cuda/device_weight_cache.hpp"

#include "core/error.hpp"
#include "kernels/cuda/cuda_error.hpp"

namespace sluice::cuda {

const void* DeviceWeightCache::upload(const void* host, int64_t bytes, cudaStream_t stream) {
    if (auto it = entries_.find(host); it != entries_.end() && it->second.bytes < bytes) {
        // A wider view of the same address (an FP8 scale grid reached by a later row slice):
        // replace the shorter copy.
        used_bytes_ -= it->second.bytes;
        lru_.erase(it->second.lru);
        entries_.erase(it);
    }
    if (auto it = entries_.find(host); it != entries_.end()) {
        it->second.generation = generation_;
        lru_.splice(lru_.begin(), lru_, it->second.lru);
        return it->second.buffer.data();
    }
    make_room(bytes);
    Entry e;
    e.buffer = DeviceBuffer(size_t(bytes));
    e.bytes = bytes;
    e.generation = generation_;
    // Pageable host memory: cudaMemcpyAsync stages it, and the sync makes the copy complete
    // before the host memory can be recycled by the provider.
    SLUICE_CUDA_CHECK(cudaMemcpyAsync(e.buffer.data(), host, size_t(bytes), cudaMemcpyHostToDevice, stream));
    SLUICE_CUDA_CHECK(cudaStreamSynchronize(stream));
    lru_.push_front(host);
    e.lru = lru_.begin();
    const void* device = e.buffer.data();
    entries_.emplace(host, std::move(e));
    used_bytes_ += bytes;
    uploaded_bytes_ += bytes;
    return device;
}

void DeviceWeightCache::make_room(int64_t bytes) {
    while (used_bytes_ + bytes > budget_bytes_ && !lru_.empty()) {
        const void* victim = lru_.back();
        auto it = entries_.find(victim);
        if (it->second.generation == generation_) break;  // everything left is in use by this layer
        used_bytes_ -= it->second.bytes;
        lru_.pop_back();
        entries_.erase(it);
    }
    if (used_bytes_ + bytes > budget_bytes_)
        fail(ErrorKind::out_of_memory,
             "device weight cache: {} more bytes do not fit the budget of {} bytes ({} in use by the current layer)",
             bytes, budget_bytes_, used_bytes_);
}

Matrix DeviceWeightCache::device(const Matrix& host, cudaStream_t stream) {
    Matrix m = host;
    if (host.rows == 0 || host.data == nullptr) return m;
    m.data = upload(host.data, host.bytes(), stream);
    if (host.type == DType::FP8_E4M3_B128 && host.block_scales) {
        // The view's scale rows reach (scale_row_offset + rows - 1) / 128 of the whole grid.
        const int64_t scale_cols = (host.cols + 127) / 128;
        const int64_t scale_rows = (host.scale_row_offset + host.rows + 127) / 128;
        m.block_scales = static_cast<const float*>(upload(host.block_scales, scale_rows * scale_cols * 4, stream));
    }
    return m;
}

const float* DeviceWeightCache::device(const float* host, int64_t n, cudaStream_t stream) {
    if (!host) return nullptr;
    return static_cast<const float*>(upload(host, n * 4, stream));
}

void DeviceWeightCache::forget(const void* begin, int64_t bytes) {
    const auto* b = static_cast<const std::byte*>(begin);
    for (auto it = entries_.begin(); it != entries_.end();) {
        const auto* p = static_cast<const std::byte*>(it->first);
        if (p >= b && p < b + bytes) {
            used_bytes_ -= it->second.bytes;
            lru_.erase(it->second.lru);
            it = entries_.erase(it);
        } else {
            ++it;
        }
    }
}

}  // namespace sluice::cuda
