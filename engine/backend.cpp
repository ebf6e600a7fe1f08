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
void Backend::copy_weights_async(void*, const void*, size_t, int, int) { no_device(*this, "copy_weights_async"); }

void Backend::set_trace(Trace* trace) {
    trace_ = trace;
    on_trace_set();
}

// Host backends run each op as it is called: a span is the host time between begin and end.
void Backend::begin_span(const char* name, int layer, int expert) {
    if (!trace_) return;
    span_name_ = name;
    span_layer_ = layer;
    span_expert_ = expert;
    span_start_us_ = trace_->now_us();
}

void Backend::end_span() {
    if (!trace_ || !span_name_) return;
    nlohmann::json args = {{"layer", span_layer_}};
    if (span_expert_ >= 0) args["expert"] = span_expert_;
    trace_->add(Trace::Track::compute, span_name_, span_start_us_, trace_->now_us(), std::move(args));
    span_name_ = nullptr;
}
void Backend::record_on_copy(int) { no_device(*this, "record_on_copy"); }
void Backend::record_on_compute(int) { no_device(*this, "record_on_compute"); }
void Backend::compute_waits_for(int) { no_device(*this, "compute_waits_for"); }
void Backend::copy_waits_for(int) { no_device(*this, "copy_waits_for"); }
void Backend::host_waits_for(int) { no_device(*this, "host_waits_for"); }

}  // namespace sluice
