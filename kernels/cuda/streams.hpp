// CUDA streams and events as RAII values, and the pair the executor runs on: weights copy in on
// `copy` while `compute` works on the previous layer; an event recorded after a copy is what the
// compute stream waits on, so neither stream blocks the host.
#pragma once

#include <cuda_runtime_api.h>

#include <utility>

#include "kernels/cuda/cuda_error.hpp"

namespace sluice::cuda {

class Stream {
public:
    Stream() { SLUICE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
    ~Stream() {
        if (stream_) cudaStreamDestroy(stream_);
    }
    Stream(Stream&& o) noexcept : stream_(std::exchange(o.stream_, nullptr)) {}
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;

    cudaStream_t get() const { return stream_; }
    operator cudaStream_t() const { return stream_; }
    void synchronize() const { SLUICE_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

private:
    cudaStream_t stream_ = nullptr;
};

class Event {
public:
    // Timing events cost more to record; plain ones are for ordering only.
    explicit Event(bool timing = false) {
        SLUICE_CUDA_CHECK(cudaEventCreateWithFlags(&event_, timing ? cudaEventDefault : cudaEventDisableTiming));
    }
    ~Event() {
        if (event_) cudaEventDestroy(event_);
    }
    Event(Event&& o) noexcept : event_(std::exchange(o.event_, nullptr)) {}
    Event(const Event&) = delete;
    Event& operator=(const Event&) = delete;

    cudaEvent_t get() const { return event_; }
    void record(cudaStream_t stream) { SLUICE_CUDA_CHECK(cudaEventRecord(event_, stream)); }
    // Makes `stream` wait (on the device) for the work before the last record().
    void wait_on(cudaStream_t stream) const { SLUICE_CUDA_CHECK(cudaStreamWaitEvent(stream, event_, 0)); }
    void synchronize() const { SLUICE_CUDA_CHECK(cudaEventSynchronize(event_)); }
    // Milliseconds between two timing events (both recorded and completed).
    static float elapsed_ms(const Event& start, const Event& stop) {
        float ms = 0.0f;
        SLUICE_CUDA_CHECK(cudaEventElapsedTime(&ms, start.event_, stop.event_));
        return ms;
    }

private:
    cudaEvent_t event_ = nullptr;
};

struct StreamPair {
    Stream copy;
    Stream compute;
};

}  // namespace sluice::cuda
