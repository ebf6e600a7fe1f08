#include "engine/device_weights.hpp"

#include <algorithm>

#include "core/error.hpp"

namespace sluice {

namespace {

constexpr size_t kAlign = 256;
size_t aligned(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// FP8 block scales of a whole stored matrix: [ceil(rows/128), ceil(cols/128)] floats.
size_t scale_bytes(const Matrix& m) {
    if (m.type != DType::FP8_E4M3_B128 || !m.block_scales) return 0;
    return size_t((m.rows + 127) / 128) * size_t((m.cols + 127) / 128) * 4;
}

// A view whose bytes moved from the host range `from` to device memory at `to`.
Matrix rebase(const Matrix& m, const SegmentBytes& from, std::byte* to) {
    if (m.rows == 0) return m;
    Matrix r = m;
    if (!from.contains(m.data)) fail(ErrorKind::internal, "a {} view lies outside its segment's bytes", dtype_name(m.type));
    r.data = to + (static_cast<const std::byte*>(m.data) - from.data);
    if (m.block_scales) {
        if (!from.contains(m.block_scales)) fail(ErrorKind::internal, "FP8 block scales lie outside their segment's bytes");
        r.block_scales = reinterpret_cast<const float*>(to + (reinterpret_cast<const std::byte*>(m.block_scales) - from.data));
    }
    return r;
}

ExpertWeights rebase(const ExpertWeights& e, const SegmentBytes& from, std::byte* to) {
    ExpertWeights r;
    r.gate = rebase(e.gate, from, to);
    r.up = rebase(e.up, from, to);
    r.down = rebase(e.down, from, to);
    r.segment = {to, from.size};
    return r;
}

// The dense segment's matrices rebased; vectors and router come from `resident` (device views).
LayerWeights rebase_dense(const LayerWeights& host, const SegmentBytes& from, std::byte* to, const LayerWeights& resident) {
    LayerWeights r = resident;
    r.q_a = rebase(host.q_a, from, to);
    r.q_b = rebase(host.q_b, from, to);
    r.q = rebase(host.q, from, to);
    r.kv_a = rebase(host.kv_a, from, to);
    r.kv_b = rebase(host.kv_b, from, to);
    r.k_b = rebase(host.k_b, from, to);
    r.v_b = rebase(host.v_b, from, to);
    r.o = rebase(host.o, from, to);
    r.dense = rebase(host.dense, from, to);
    r.shared = rebase(host.shared, from, to);
    r.dense_segment = {to, from.size};
    return r;
}

}  // namespace

uint64_t DeviceWeights::slot_bytes(const Segment& s) {
    return aligned(size_t(s.bytes()) + (s.tensors.size() * 2 + 1) * 8192);
}

uint64_t DeviceWeights::resident_segment_bytes(const Segment& s) {
    uint64_t total = 0;  // as model_plan's read_segment lays a segment out
    for (const auto& t : s.tensors) total += (t.extent.length + 63) / 64 * 64 + (t.scales.length + 63) / 64 * 64;
    return aligned(size_t(total));
}

uint64_t DeviceWeights::resident_region_bytes(const ModelLayout& d, const ModelPlan& plan) {
    // As copy_resident lays it out: f32 norms and bias per layer, the router as stored (and its
    // FP8 scales), the final norm, the head as stored.
    uint64_t total = 0;
    auto add = [&](uint64_t bytes) { total += bytes ? aligned(size_t(bytes)) : 0; };
    for (const auto& l : plan.layers)
        for (const auto& t : l.vectors.tensors) {
            if (t.role == WeightRole::router) {
                add(t.extent.length);
                add(t.scales.length);
            } else {
                add(uint64_t(t.cols) * 4);
            }
        }
    add(uint64_t(d.hidden) * 4);  // final norm
    for (const auto& t : plan.globals.tensors)
        if (t.role == WeightRole::lm_head) {
            add(t.extent.length);
            add(t.scales.length);
        }
    return std::max<uint64_t>(total, kAlign);
}

DeviceWeights::DeviceWeights(const ModelLayout& layout, const ModelPlan& plan, const TensorSource& source,
                             WeightProvider& host, Backend& device, const DeviceWeightsOptions& options)
    : layout_(layout), plan_(plan), host_(host), device_(device), options_(options) {
    if (device_.uses_host_weights())
        fail(ErrorKind::internal, "DeviceWeights in front of the {} backend, which uses host weights", device_.name());
    const int n_layers = int(plan_.layers.size());
    resident_ = options_.dense_resident;
    resident_.resize(size_t(n_layers), 0);
    copy_resident(host_.globals(), source);

    // Slots: a host buffer holds a segment with its extents rounded out to 4 KiB, so a slot takes
    // the largest segment plus the rounding of each of its extents.
    size_t dense_bytes = 0, expert_bytes = 0;
    for (int l = 0; l < n_layers; ++l) {
        if (!resident_[size_t(l)]) dense_bytes = std::max(dense_bytes, slot_bytes(plan_.layers[size_t(l)].dense));
        for (const auto& e : plan_.layers[size_t(l)].experts) expert_bytes = std::max(expert_bytes, slot_bytes(e));
    }
    auto make_slots = [&](std::vector<Slot>& slots, int n, size_t bytes) {
        slots.resize(size_t(n));
        for (auto& s : slots) {
            s.memory = static_cast<std::byte*>(device_alloc(bytes));
            s.capacity = bytes;
            s.copy_done = device_.create_event();
            s.use_done = device_.create_event();
        }
    };
    if (dense_bytes > 0) make_slots(dense_slots_, std::max(options_.dense_slots, 2), dense_bytes);
    if (expert_bytes > 0) {
        const int n = options_.expert_slots > 0 ? options_.expert_slots : 2 * std::max(layout_.router.top_k, 1);
        make_slots(expert_slots_, std::max(n, 2), expert_bytes);
    }
    expert_slot_of_.assign(size_t(n_layers), std::vector<int>(size_t(std::max<int64_t>(layout_.n_experts, 0)), -1));
    device_ready_.reserve(size_t(layout_.n_experts));
    host_needed_.reserve(size_t(layout_.n_experts));
}

void* DeviceWeights::device_alloc(size_t bytes) {
    device_bytes_ += aligned(bytes);
    return device_.alloc_weight_bytes(aligned(bytes));
}

// Routers, norms, router biases, the final norm and the head, and the resident dense segments:
// copied once into one device region each and waited for.
void DeviceWeights::copy_resident(const ModelWeights& host, const TensorSource& source) {
    const auto& d = layout_;
    const int n_layers = int(plan_.layers.size());
    struct Item {
        const void* host;
        size_t bytes;
        size_t offset;
    };
    std::vector<Item> items;
    size_t total = 0;
    auto add = [&](const void* p, size_t bytes) -> size_t {
        if (!p || bytes == 0) return SIZE_MAX;
        items.push_back({p, bytes, total});
        const size_t at = total;
        total += aligned(bytes);
        return at;
    };
    struct MatrixItems { size_t data = SIZE_MAX, scales = SIZE_MAX; };
    auto add_matrix = [&](const Matrix& m) {
        MatrixItems r;
        if (m.rows == 0) return r;
        r.data = add(m.data, size_t(m.bytes()));
        r.scales = add(m.block_scales, scale_bytes(m));
        return r;
    };
    struct LayerItems { size_t attn_norm, q_a_norm, kv_a_norm, ffn_norm, router_bias; MatrixItems router; };
    std::vector<LayerItems> layer_items(static_cast<size_t>(n_layers));
    for (int l = 0; l < n_layers; ++l) {
        const LayerWeights& w = host.layers[size_t(l)];
        auto& li = layer_items[size_t(l)];
        li.attn_norm = add(w.attn_norm, size_t(d.hidden) * 4);
        li.q_a_norm = add(w.q_a_norm, size_t(std::max<int64_t>(d.q_lora, 0)) * 4);
        li.kv_a_norm = add(w.kv_a_norm, size_t(d.kv_rank) * 4);
        li.ffn_norm = add(w.ffn_norm, size_t(d.hidden) * 4);
        li.router_bias = add(w.router_bias, size_t(d.n_experts) * 4);
        li.router = add_matrix(w.router);
    }
    const size_t final_norm = add(host.final_norm, size_t(d.hidden) * 4);
    const MatrixItems head = add_matrix(host.lm_head);

    if (std::max<size_t>(total, kAlign) != resident_region_bytes(layout_, plan_))
        fail(ErrorKind::internal, "device resident region of {} bytes, planned {}", total, resident_region_bytes(layout_, plan_));
    auto* region = static_cast<std::byte*>(device_alloc(std::max<size_t>(total, kAlign)));
    for (const auto& it : items) device_.copy_weights_async(region + it.offset, it.host, it.bytes, -2, -2);
    auto at = [&](size_t offset) -> std::byte* { return offset == SIZE_MAX ? nullptr : region + offset; };
    auto device_matrix = [&](const Matrix& m, const MatrixItems& mi) {
        Matrix r = m;
        if (m.rows == 0) return r;
        r.data = at(mi.data);
        r.block_scales = reinterpret_cast<const float*>(at(mi.scales));
        return r;
    };

    device_globals_ = ModelWeights{};
    device_globals_.embed = host.embed;  // stays a host view
    device_globals_.final_norm = reinterpret_cast<const float*>(at(final_norm));
    device_globals_.lm_head = device_matrix(host.lm_head, head);
    device_globals_.layers.resize(size_t(n_layers));
    for (int l = 0; l < n_layers; ++l) {
        const LayerWeights& w = host.layers[size_t(l)];
        const auto& li = layer_items[size_t(l)];
        LayerWeights& r = device_globals_.layers[size_t(l)];
        r.is_moe = w.is_moe;
        r.attn_norm = reinterpret_cast<const float*>(at(li.attn_norm));
        r.q_a_norm = reinterpret_cast<const float*>(at(li.q_a_norm));
        r.kv_a_norm = reinterpret_cast<const float*>(at(li.kv_a_norm));
        r.ffn_norm = reinterpret_cast<const float*>(at(li.ffn_norm));
        r.router_bias = reinterpret_cast<const float*>(at(li.router_bias));
        r.router = device_matrix(w.router, li.router);
    }

    // Dense segments the plan keeps on the device: read, copied, waited for, dropped from the host.
    resident_layers_.resize(size_t(n_layers));
    const int done = device_.create_event();
    for (int l = 0; l < n_layers; ++l) {
        if (!resident_[size_t(l)]) continue;
        ModelWeights scratch;
        scratch.layers.resize(size_t(n_layers));
        load_dense_segment(plan_, l, source, scratch);
        const SegmentBytes& from = scratch.layers[size_t(l)].dense_segment;
        if (aligned(from.size) != resident_segment_bytes(plan_.layers[size_t(l)].dense))
            fail(ErrorKind::internal, "layer {}: resident dense segment of {} bytes, planned {}", l, from.size,
                 resident_segment_bytes(plan_.layers[size_t(l)].dense));
        auto* to = static_cast<std::byte*>(device_alloc(from.size));
        device_.copy_weights_async(to, from.data, from.size, l, -1);
        resident_layers_[size_t(l)] = rebase_dense(scratch.layers[size_t(l)], from, to, device_globals_.layers[size_t(l)]);
        device_.record_on_copy(done);
        device_.host_waits_for(done);  // before `scratch` goes
    }
    device_.record_on_copy(done);
    device_.host_waits_for(done);
    device_.compute_waits_for(done);
}

DeviceWeights::Slot* DeviceWeights::find_dense(int layer) {
    for (auto& s : dense_slots_)
        if (s.layer == layer) return &s;
    return nullptr;
}

// A dense slot for `for_layer`: one not in use whose layer comes furthest after it in the cycle.
DeviceWeights::Slot* DeviceWeights::acquire_dense(int for_layer) {
    const int n = int(plan_.layers.size());
    Slot* best = nullptr;
    int best_distance = -1;
    for (auto& s : dense_slots_) {
        if (s.pins > 0) continue;
        const int distance = s.layer < 0 ? n + 1 : ((s.layer - for_layer) % n + n) % n;
        if (distance > best_distance) {
            best = &s;
            best_distance = distance;
        }
    }
    return best;
}

void DeviceWeights::copy_dense_into(Slot& s, int layer, const LayerWeights& host_layer) {
    const SegmentBytes& from = host_layer.dense_segment;
    if (from.size > s.capacity)
        fail(ErrorKind::internal, "layer {}: dense segment of {} bytes, device slot holds {}", layer, from.size, s.capacity);
    // Work queued on the slot's previous contents must finish before they are overwritten.
    if (s.layer >= 0) device_.copy_waits_for(s.use_done);
    device_.copy_weights_async(s.memory, from.data, from.size, layer, -1);
    device_.record_on_copy(s.copy_done);
    s.layer = layer;
    s.copied = true;
    s.dense = rebase_dense(host_layer, from, s.memory, device_globals_.layers[size_t(layer)]);
    ++stats_.dense_copies;
    stats_.bytes_copied += from.size;
}

// A dense copy reads a host buffer the host provider may reuse once its next layer begins.
void DeviceWeights::wait_dense_copies() {
    for (auto& s : dense_slots_)
        if (s.copied) {
            device_.host_waits_for(s.copy_done);
            s.copied = false;
        }
}

const LayerWeights& DeviceWeights::begin_layer(int layer) {
    if (resident_[size_t(layer)]) {
        // The host provider still runs its layer protocol (it may stream experts); its dense part
        // is not used.
        wait_dense_copies();
        host_.begin_layer(layer);
        current_dense_ = nullptr;
        computing_layer_ = layer;
        prefetch_next_dense();
        return resident_layers_[size_t(layer)];
    }
    Slot* s = find_dense(layer);
    const bool prefetched = s != nullptr;
    wait_dense_copies();
    const LayerWeights& host_layer = host_.begin_layer(layer);
    if (!s) {
        s = acquire_dense(layer);
        if (!s) fail(ErrorKind::internal, "no device dense slot free for layer {}", layer);
        copy_dense_into(*s, layer, host_layer);
    }
    (void)prefetched;
    ++s->pins;
    current_dense_ = s;
    device_.compute_waits_for(s->copy_done);
    computing_layer_ = layer;
    prefetch_next_dense();
    return s->dense;
}

// Layer L+1's dense part goes to the device while L computes, as soon as its read has landed:
// tried whenever the forward calls in during L (the read usually lands while L's experts run).
void DeviceWeights::prefetch_next_dense() {
    const int next = computing_layer_ + 1;
    if (computing_layer_ < 0 || next >= int(plan_.layers.size()) || resident_[size_t(next)] || find_dense(next)) return;
    if (const LayerWeights* peek = host_.peek_layer(next)) {
        if (Slot* t = acquire_dense(next)) {
            copy_dense_into(*t, next, *peek);
            ++stats_.dense_prefetches;
        }
    }
}

const LayerWeights* DeviceWeights::peek_layer(int layer) {
    if (layer < 0 || layer >= int(plan_.layers.size())) return nullptr;
    if (resident_[size_t(layer)]) return &resident_layers_[size_t(layer)];
    Slot* s = find_dense(layer);
    return s ? &s->dense : nullptr;
}

void DeviceWeights::predict_experts(int layer, std::span<const int32_t> experts) {
    host_.predict_experts(layer, experts);
}

void DeviceWeights::need_experts(int layer, std::span<const int32_t> experts) {
    device_ready_.clear();
    host_needed_.clear();
    next_ready_ = 0;
    for (int32_t e : experts) {
        const int i = expert_slot_of_[size_t(layer)][size_t(e)];
        if (i >= 0) {
            Slot& s = expert_slots_[size_t(i)];
            ++s.pins;  // kept for this layer: not evicted by the experts copied in below
            s.uses += 1;
            s.last_used = step_;
            device_ready_.push_back(i);
            ++stats_.expert_hits;
        } else {
            host_needed_.push_back(e);
        }
    }
    host_.need_experts(layer, host_needed_);
    host_done_ = host_needed_.empty();
    prefetch_next_dense();
}

// The expert handed out last: its work is queued; mark when the compute queue is past it.
void DeviceWeights::release_handed() {
    if (!handed_) return;
    device_.record_on_compute(handed_->use_done);
    --handed_->pins;
    handed_ = nullptr;
}

DeviceWeights::Slot* DeviceWeights::acquire_expert() {
    Slot* best = nullptr;
    for (auto& s : expert_slots_) {
        if (s.pins > 0 || &s == host_copy_pending_) continue;
        if (s.layer < 0) return &s;
        if (!best || s.last_used < best->last_used || (s.last_used == best->last_used && s.uses < best->uses)) best = &s;
    }
    return best;
}

int32_t DeviceWeights::next_expert(int layer, const ExpertWeights** weights) {
    release_handed();
    prefetch_next_dense();
    if (next_ready_ < device_ready_.size()) {
        Slot& s = expert_slots_[size_t(device_ready_[next_ready_++])];
        const int32_t e = s.expert;
        device_.compute_waits_for(s.copy_done);  // may still be copying (a recent copy)
        handed_ = &s;  // already pinned by need_experts
        *weights = &s.expert_weights;
        return e;
    }
    if (host_done_) return -1;
    // The host provider keeps the buffer it handed out last until this next call: its copy must
    // have left it first.
    if (host_copy_pending_) {
        device_.host_waits_for(host_copy_pending_->copy_done);
        host_copy_pending_ = nullptr;
    }
    const ExpertWeights* hw = nullptr;
    const int32_t e = host_.next_expert(layer, &hw);
    if (e < 0) {
        host_done_ = true;
        return -1;
    }
    Slot* s = acquire_expert();
    if (!s) fail(ErrorKind::internal, "no device expert slot free at layer {} ({} slots)", layer, expert_slots_.size());
    const SegmentBytes& from = hw->segment;
    if (from.size > s->capacity)
        fail(ErrorKind::internal, "layer {} expert {}: segment of {} bytes, device slot holds {}", layer, e, from.size,
             s->capacity);
    if (s->layer >= 0) {
        expert_slot_of_[size_t(s->layer)][size_t(s->expert)] = -1;
        device_.copy_waits_for(s->use_done);  // queued work on the evicted expert finishes first
    }
    device_.copy_weights_async(s->memory, from.data, from.size, layer, e);
    device_.record_on_copy(s->copy_done);
    s->layer = layer;
    s->expert = e;
    s->expert_weights = rebase(*hw, from, s->memory);
    s->uses = 1;
    s->last_used = step_;
    expert_slot_of_[size_t(layer)][size_t(e)] = int(s - expert_slots_.data());
    ++stats_.expert_copies;
    stats_.bytes_copied += from.size;
    host_copy_pending_ = s;
    device_.compute_waits_for(s->copy_done);  // the expert's GEMMs start as soon as its copy lands
    ++s->pins;
    handed_ = s;
    *weights = &s->expert_weights;
    return e;
}

void DeviceWeights::end_layer(int layer) {
    release_handed();
    prefetch_next_dense();
    // Experts found on the device were pinned for the layer; all have been handed out by now.
    for (size_t i = next_ready_; i < device_ready_.size(); ++i) --expert_slots_[size_t(device_ready_[i])].pins;
    device_ready_.clear();
    next_ready_ = 0;
    if (host_copy_pending_) {
        device_.host_waits_for(host_copy_pending_->copy_done);
        host_copy_pending_ = nullptr;
    }
    if (current_dense_) {
        device_.record_on_compute(current_dense_->use_done);
        device_.host_waits_for(current_dense_->copy_done);  // the host buffer goes back below
        --current_dense_->pins;
        current_dense_ = nullptr;
    }
    host_.end_layer(layer);
    computing_layer_ = -1;
}

void DeviceWeights::begin_step(int64_t n_tokens) {
    abandon_step();
    host_.begin_step(n_tokens);
}

// What a step an error cut short left (the host provider abandons its layer the same way at its
// begin_step, after this): copies still reading the host provider's buffers end before it may
// reuse them, and the layer's pins go, else each such step kept a slot pinned for good (three in
// a row through 2 dense slots: "no device dense slot free"). After a whole step, nothing is left.
void DeviceWeights::abandon_step() {
    if (host_copy_pending_) {
        device_.host_waits_for(host_copy_pending_->copy_done);
        host_copy_pending_ = nullptr;
    }
    wait_dense_copies();
    release_handed();
    for (size_t i = next_ready_; i < device_ready_.size(); ++i) --expert_slots_[size_t(device_ready_[i])].pins;
    device_ready_.clear();
    next_ready_ = 0;
    if (current_dense_) {
        device_.record_on_compute(current_dense_->use_done);
        --current_dense_->pins;
        current_dense_ = nullptr;
    }
    host_needed_.clear();
    host_done_ = true;
    computing_layer_ = -1;
}

void DeviceWeights::end_step() {
    host_.end_step();
    ++step_;
}

}  // namespace sluice
