#include "engine/streamer.hpp"

#include <algorithm>
#include <cmath>
#include <system_error>
#include <thread>

#include <fmt/format.h>

#include "core/error.hpp"
#include "kernels/cuda/device.hpp"

namespace sluice {

namespace {
using Clock = std::chrono::steady_clock;
double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// data[i] / scales[i] per planned tensor, from the flattened extent pointers.
void split_pointers(const Segment& s, const std::vector<const std::byte*>& flat, std::vector<const std::byte*>& data,
                    std::vector<const std::byte*>& scales) {
    data.clear();
    scales.clear();
    size_t k = 0;
    for (const auto& t : s.tensors) {
        data.push_back(flat[k++]);
        scales.push_back(t.scales.length ? flat[k++] : nullptr);
    }
}
}  // namespace

double StepStats::overlap_efficiency() const {
    return step_seconds > 0 ? std::max(read_seconds, compute_seconds) / step_seconds : 0;
}

nlohmann::json StepStats::to_json() const {
    return {{"step", step},
            {"tokens", n_tokens},
            {"bytes_read", bytes_read},
            {"step_s", step_seconds},
            {"read_s", read_seconds},
            {"compute_s", compute_seconds},
            {"wait_s", wait_seconds},
            {"overlap_efficiency", overlap_efficiency()},
            {"read_gb_per_s", read_seconds > 0 ? double(bytes_read) / read_seconds / 1e9 : 0.0},
            {"experts_needed", experts_needed},
            {"cache_hits", cache_hits},
            {"prefetch_hits", prefetch_hits},
            {"predicted", predicted},
            {"guesses_evicted", guesses_evicted},
            {"dense_reads", dense_reads},
            {"expert_reads", expert_reads}};
}

Streamer::Streamer(const ModelLayout& layout, const ModelPlan& plan, const TensorSource& source, SegmentIo& io,
                   const StreamerOptions& options)
    : layout_(layout), plan_(plan), source_(source), io_(io), options_(options) {
    // Always resident: embedding, output head, norms, every layer's router and its bias.
    load_vectors(plan_, source_, globals_);
    load_globals(plan_, source_, globals_);
    allocated_bytes_ += uint64_t(globals_.resident_bytes);

    const int n_layers = int(plan_.layers.size());
    dense_resident_ = options_.resident == ResidentMode::dense || options_.resident == ResidentMode::all;
    if (options_.resident == ResidentMode::all || options_.resident == ResidentMode::automatic)
        fail(ErrorKind::internal, "the streamer takes --resident none or dense; the planner resolves the others");
    if (dense_resident_) {
        const int64_t before = globals_.resident_bytes;
        load_dense_resident(plan_, source_, globals_);
        allocated_bytes_ += uint64_t(globals_.resident_bytes - before);
    } else {
        size_t largest = 0;
        for (size_t i = 0; i < plan_.layers.size(); ++i) {
            if (dense_elsewhere(int(i))) continue;
            plan_.layers[i].dense.extents(extent_scratch_);
            largest = std::max(largest, io_.buffer_bytes_for(extent_scratch_));
        }
        if (largest > 0)
            make_pool(dense_pool_, dense_arena_,
                      staging_pool(largest, dense_buffer_count(options_.prefetch_layers, n_layers), io_.buffer_alignment()));
    }
    size_t largest_expert = 0;
    for (const auto& l : plan_.layers)
        for (const auto& e : l.experts) {
            e.extents(extent_scratch_);
            largest_expert = std::max(largest_expert, io_.buffer_bytes_for(extent_scratch_));
        }
    if (largest_expert > 0) {
        const int n = options_.expert_buffers > 0 ? options_.expert_buffers : 2 * std::max(layout_.router.top_k, 1);
        make_pool(expert_pool_, expert_arena_, staging_pool(largest_expert, std::max(n, 1), io_.buffer_alignment()));
    }
    zero_buffers();
    // Registered once, so io_uring can use READ_FIXED into them.
    std::vector<std::span<std::byte>> regions;
    for (auto* pool : {&dense_pool_, &expert_pool_})
        for (auto& b : *pool) regions.emplace_back(b.data, b.capacity);
    if (!regions.empty()) io_.register_buffers(regions);
    // With a CUDA device, page-lock them too, so device copies come straight from here (a pool at
    // once: its buffers share pages).
    for (auto* arena : {&dense_arena_, &expert_arena_})
        if (arena->held() > 0 && cuda::pin_host_memory(arena->data(), arena->held())) pinned_.push_back(arena->data());
    expert_buffer_.assign(size_t(n_layers), std::vector<int>(size_t(layout_.n_experts), -1));
    for (size_t l = 0; l < plan_.layers.size(); ++l) {
        if (plan_.layers[l].experts.empty()) continue;
        if (n_moe_layers_++ == 0) first_moe_layer_ = int(l);
        last_moe_layer_ = int(l);
    }
    frequency_.assign(size_t(n_layers) * size_t(std::max<int64_t>(layout_.n_experts, 1)), 0.0f);
    last_step_.assign(frequency_.size(), 0);
    needed_.reserve(size_t(layout_.n_experts));
    handed_.reserve(size_t(layout_.n_experts));
    deferred_.reserve(size_t(layout_.n_experts));
    guesses_.reserve(2 * size_t(layout_.n_experts));
    wait_tickets_.reserve(expert_pool_.size() + dense_pool_.size());
    wait_index_.reserve(wait_tickets_.capacity());
}

// `pool.count` buffers of pool.slot_bytes, end to end in one huge-page mapping (2 MiB aligned,
// so every buffer is aligned for the reader): what the planner counts for the pool.
void Streamer::make_pool(std::vector<Buffer>& buffers, AlignedBuffer& arena, const StagingPool& pool) {
    arena.allocate(size_t(pool.slot_bytes) * size_t(pool.count), AlignedBuffer::kHugePageBytes, true, false);
    buffers.resize(size_t(pool.count));
    for (size_t i = 0; i < buffers.size(); ++i) {
        buffers[i].data = arena.data() + i * pool.slot_bytes;
        buffers[i].capacity = pool.slot_bytes;
    }
    allocated_bytes_ += arena.held();
}

// The first touch of the pool's memory is most of a start (4.6 GB on the 5-layer V3 model under
// 8 GiB), so it is spread over the cores: a 2 GiB first touch took 0.26 s on one core and 0.14 s
// on two. (On the dev VM the host's own first touch of guest memory can dominate instead, ~10 s
// for the pool after dropping caches, and that does not spread.)
void Streamer::zero_buffers() {
    std::vector<AlignedBuffer*> buffers;
    size_t total = 0;
    for (auto* arena : {&dense_arena_, &expert_arena_})
        if (arena->size() > 0) {
            buffers.push_back(arena);
            total += arena->size();
        }
    if (buffers.empty()) return;
    const size_t n_threads = std::clamp<size_t>(std::thread::hardware_concurrency(), 1, 16);
    const size_t share = (total + n_threads - 1) / n_threads;
    auto zero_share = [&](size_t t) {
        // Bytes [t * share, (t + 1) * share) of the buffers laid end to end.
        size_t offset = 0;
        const size_t begin = t * share, end = std::min(total, begin + share);
        for (auto* m : buffers) {
            const size_t lo = std::max(begin, offset), hi = std::min(end, offset + m->size());
            if (lo < hi) m->zero_range(lo - offset, hi - offset);
            offset += m->size();
        }
    };
    std::vector<std::thread> threads;
    threads.reserve(n_threads);
    for (size_t t = 1; t < n_threads; ++t) {
        try {
            threads.emplace_back(zero_share, t);
        } catch (const std::system_error&) {
            zero_share(t);  // the OS refused a helper thread: this share is done here instead
        }
    }
    zero_share(0);
    for (auto& th : threads) th.join();
}

Streamer::~Streamer() {
    for (void* p : pinned_) cuda::unpin_host_memory(p);
    // Reads still in flight write into our buffers: let them land before the memory goes.
    for (auto* pool : {&dense_pool_, &expert_pool_})
        for (auto& b : *pool)
            if (b.state == BufferState::reading) {
                try {
                    io_.wait(b.ticket);
                } catch (...) {
                }
            }
}

// read_seconds is the time with at least one read in flight: a count of reads between submit and
// the moment the streamer sees them land. (Adding each read's [submit, land] interval past the
// latest end seen so far under-counted reads that landed out of submit order.)
void Streamer::read_started() {
    if (reads_in_flight_++ == 0) busy_since_ = Clock::now();
}

void Streamer::read_landed() {
    if (reads_in_flight_ > 0 && --reads_in_flight_ == 0) current_.read_seconds += seconds(Clock::now() - busy_since_);
}

void Streamer::submit(Buffer& b, int layer, int expert, const Segment& segment, bool on_demand) {
    if (b.state == BufferState::reading) wait_for(b);  // cannot reuse memory a read still targets
    if (b.state == BufferState::reading) fail(ErrorKind::internal, "a buffer still being read was given a new read");
    if (b.layer >= 0 && b.expert >= 0) expert_buffer_[size_t(b.layer)][size_t(b.expert)] = -1;
    if (b.predicted && b.layer > computing_layer_) ++current_.guesses_evicted;
    // Empty until the read is under way: if the reader refuses it, no buffer claims to hold the
    // segment (find() would hand out the previous segment's bytes under the new name).
    b.layer = b.expert = -1;
    b.state = BufferState::empty;
    b.bound = false;
    b.predicted = false;
    segment.extents(extent_scratch_);
    b.extent_data.assign(extent_scratch_.size(), nullptr);
    const size_t need = io_.buffer_bytes_for(extent_scratch_);
    if (need > b.capacity)
        fail(ErrorKind::internal, "segment of layer {} needs {} bytes, buffer holds {}", layer, need, b.capacity);
    b.ticket = io_.submit(extent_scratch_, b.data, b.capacity, b.extent_data.data());
    read_started();
    b.submitted = Clock::now();
    b.used_bytes = need;
    b.layer = layer;
    b.expert = expert;
    b.state = BufferState::reading;
    b.demand_step = on_demand ? step_serial_ : -1;
    current_.bytes_read += segment.bytes();
    if (expert >= 0) {
        ++current_.expert_reads;
        expert_buffer_[size_t(layer)][size_t(expert)] = int(&b - expert_pool_.data());
    } else {
        ++current_.dense_reads;
    }
}

void Streamer::finish_read(Buffer& b) {
    b.state = BufferState::ready;
    read_landed();
    if (trace_) {
        nlohmann::json args = {{"layer", b.layer}, {"bytes", b.used_bytes}, {"host", fmt::format("{}", static_cast<const void*>(b.data))}};
        if (b.expert >= 0) args["expert"] = b.expert;
        if (b.predicted) args["predicted"] = true;
        trace_->add(Trace::Track::reads, b.expert >= 0 ? "read expert" : "read dense", trace_->to_us(b.submitted),
                    trace_->now_us(), std::move(args));
    }
}

void Streamer::trace_wait(Clock::time_point start, int layer) {
    if (trace_) trace_->add(Trace::Track::waits, "wait for data", trace_->to_us(start), trace_->now_us(), {{"layer", layer}});
}

// A read made on demand in this step for bytes the computation waits for now: the pinned dense
// segment of the layer computing, or an expert that layer still needs.
bool Streamer::wanted_now(const Buffer& b) const {
    if (b.demand_step != step_serial_) return false;
    if (b.expert < 0) return b.pins > 0;
    return b.layer == computing_layer_ && still_needed(b.expert);
}

// Takes a read's outcome from the reader (waiting for it if `block`): true once it landed. The
// reader forgets a ticket once it has reported its outcome, error included, so a failed read's
// buffer is emptied here, the one place outcomes are taken: it claims neither the segment nor the
// ticket, and its pool has it back (a later poll of that ticket was "unknown read ticket", a
// step later). The error goes on when the read was made on demand, in this step, for bytes
// the computation waits for now; any other read (a prefetch, a guess, a read of a step an error
// cut short) just leaves its segment to be read again, on demand, when it is wanted, and then
// that read's error, if the disk still fails, is the one reported.
bool Streamer::collect(Buffer& b, bool block) {
    try {
        if (block) io_.wait(b.ticket);
        else if (!io_.poll(b.ticket)) return false;
    } catch (const Error& e) {
        const bool wanted = wanted_now(b);
        drop_failed_read(b);
        if (wanted || e.kind() != ErrorKind::io) throw;
        return false;
    } catch (...) {
        drop_failed_read(b);
        throw;
    }
    finish_read(b);
    return true;
}

void Streamer::drop_failed_read(Buffer& b) {
    if (b.layer >= 0 && b.expert >= 0) expert_buffer_[size_t(b.layer)][size_t(b.expert)] = -1;
    if (trace_)
        trace_->add(Trace::Track::reads, "read failed", trace_->to_us(b.submitted), trace_->now_us(),
                    {{"layer", b.layer}, {"expert", b.expert}});
    b.layer = b.expert = -1;
    b.state = BufferState::empty;
    b.bound = false;
    b.predicted = false;
    b.ticket = 0;
    read_landed();
}

void Streamer::wait_for(Buffer& b) {
    if (b.state != BufferState::reading) return;
    if (collect(b, false)) return;
    if (b.state != BufferState::reading) return;  // failed, and not wanted now
    const auto t0 = Clock::now();
    const int layer = b.layer;
    collect(b, true);
    current_.wait_seconds += seconds(Clock::now() - t0);
    trace_wait(t0, layer);
}

void Streamer::poll_all() {
    for (auto* pool : {&dense_pool_, &expert_pool_})
        for (auto& b : *pool)
            if (b.state == BufferState::reading) collect(b, false);
}

int Streamer::buffers_pinned() const {
    int n = 0;
    for (const auto* pool : {&dense_pool_, &expert_pool_})
        for (const auto& b : *pool) n += b.pins > 0;
    return n;
}

int Streamer::reads_outstanding() const {
    int n = 0;
    for (const auto* pool : {&dense_pool_, &expert_pool_})
        for (const auto& b : *pool) n += b.state == BufferState::reading;
    return n;
}

void Streamer::bind(Buffer& b) {
    if (b.bound) return;
    std::vector<const std::byte*> data, scales;
    if (b.expert < 0) {
        const Segment& seg = plan_.layers[size_t(b.layer)].dense;
        split_pointers(seg, b.extent_data, data, scales);
        b.dense = globals_.layers[size_t(b.layer)];  // vectors and router from the resident set
        bind_dense(seg, data.data(), scales.data(), b.dense);
        b.dense.dense_segment = {b.data, b.used_bytes};
    } else {
        const Segment& seg = plan_.layers[size_t(b.layer)].experts[size_t(b.expert)];
        split_pointers(seg, b.extent_data, data, scales);
        bind_expert(seg, data.data(), scales.data(), b.expert_weights);
        b.expert_weights.segment = {b.data, b.used_bytes};
    }
    b.bound = true;
}

Streamer::Buffer* Streamer::find(std::vector<Buffer>& pool, int layer, int expert) {
    if (expert >= 0) {
        const int i = expert_buffer_[size_t(layer)][size_t(expert)];
        return i >= 0 ? &pool[size_t(i)] : nullptr;
    }
    for (auto& b : pool)
        if (b.layer == layer && b.expert == expert && b.state != BufferState::empty) return &b;
    return nullptr;
}

// A dense buffer to read `for_layer` into: an empty one, else the unpinned one whose layer is next
// needed furthest from now — and only if that comes after for_layer: evicting a layer that
// computes before it would read that layer twice in one step (measured from the fetched layer, as
// this once was, --prefetch 2 evicted the very next layer: 2.04 dense reads per layer per step).
Streamer::Buffer* Streamer::acquire_dense(int for_layer) {
    const int n = int(plan_.layers.size());
    const int now = computing_layer_ >= 0 ? computing_layer_ : for_layer;
    const auto layers_until_needed = [&](int layer) { return ((layer - now) % n + n) % n; };
    const int target = layers_until_needed(for_layer);
    Buffer* best = nullptr;
    int best_distance = -1;
    for (auto& b : dense_pool_) {
        if (b.pins > 0) continue;
        if (b.state == BufferState::empty) return &b;
        const int distance = layers_until_needed(b.layer);
        if (distance <= target) continue;
        if (distance > best_distance) {
            best_distance = distance;
            best = &b;
        }
    }
    return best;
}

// Needed by the layer computing now and not yet handed out (needed_ is ascending).
bool Streamer::still_needed(int expert) const {
    const auto it = std::lower_bound(needed_.begin(), needed_.end(), expert);
    return it != needed_.end() && *it == expert && !handed_[size_t(it - needed_.begin())];
}

double Streamer::score(int layer, int expert) const {
    const size_t i = size_t(layer) * size_t(layout_.n_experts) + size_t(expert);
    return frequency_[i] * std::pow(options_.score_decay, double(step_index_ - last_step_[i]));
}

void Streamer::touch(int layer, int expert) {
    const size_t i = size_t(layer) * size_t(layout_.n_experts) + size_t(expert);
    frequency_[i] = float(score(layer, expert) + 1.0);
    last_step_[i] = step_index_;
}

// An expert buffer to read into: empty first, else the lowest-scoring one that is not pinned
// and not still needed by the layer computing now. A prediction (for layer `for_layer`, made
// while layer for_layer - 1 computes) spares both those layers' experts and only evicts an
// expert that scores below the predicted one (`prediction_score`), so guesses cannot flush
// the experts that are actually being used.
Streamer::Buffer* Streamer::acquire_expert(int for_layer, bool for_prediction, double prediction_score) {
    if (scan_step_) return acquire_expert_in_scan(for_layer, for_prediction);
    Buffer* best = nullptr;
    double best_score = 0;
    for (auto& b : expert_pool_) {
        if (b.pins > 0) continue;
        if (b.state == BufferState::empty) return &b;
        if (for_prediction) {
            // Spare the predicted layer's buffers and what the computing layer has yet to use;
            // its experts already computed may go (a long prefill needs every buffer for the next
            // layer's reads, or the disk idles through the next attention pass).
            if (b.layer == for_layer || b.state == BufferState::reading) continue;
            if (b.layer == for_layer - 1 && (b.layer != computing_layer_ || still_needed(b.expert))) continue;
        } else if (b.layer == for_layer && still_needed(b.expert)) {
            continue;
        }
        // A buffer still being read is reusable only by waiting for its read: last resort. An
        // unused guess for the next layer comes just before that: a prefill step needs more
        // experts than the pool holds, and evicting the next layer's guesses to make room for this
        // layer's experts threw those reads away (prompt 512 on the 5-layer V3 model: 213 of 1205
        // expert reads). A guess for any other layer was wrong: it goes first.
        const bool next_layer_guess = !for_prediction && b.predicted && b.layer == for_layer + 1;
        const double s = (b.state == BufferState::reading ? 1e30 : 0.0) + (next_layer_guess ? 1e20 : 0.0) +
                         score(b.layer, b.expert) + (b.predicted && !next_layer_guess ? -0.5 : 0.0);
        if (!best || s < best_score) {
            best = &b;
            best_score = s;
        }
    }
    // Ties go to the guess: an expert just used once is less likely to be needed again soon
    // than a predicted one is to be needed next (8 of 256 per token against ~half).
    if (for_prediction && best && best_score > prediction_score) return nullptr;
    return best;
}

// A step that needs more experts than the pool holds (scan_step_) reads them layer by layer: a
// scan longer than the pool, under which evicting the least recently used keeps nothing (prompt
// 512 after prompt 128 on the 5-layer V3 model found 0 of 1024 experts cached). Evict instead the
// buffer whose next use is furthest away (Belady's rule for a cyclic scan: the most recently used):
// an expert of the computing layer already used, or of a layer before it, is next needed in the
// next step; an expert of a later layer may be needed later in this one, so it stays, and the
// pool ends each step holding the last layers' experts for the next step to find. Guesses (for
// for_layer = computing layer + 1) take only buffers needed no sooner than the next step, so they
// never turn one read into two; but once more than half the pool is kept for later layers they
// may take those too, so the disk still has room to read ahead through the next attention pass.
Streamer::Buffer* Streamer::acquire_expert_in_scan(int for_layer, bool for_prediction) {
    const int n_layers = int(plan_.layers.size());
    const int computing = computing_layer_ >= 0 ? computing_layer_ : for_layer - (for_prediction ? 1 : 0);
    int kept_for_later = 0, reads_in_flight = 0;
    for (const auto& b : expert_pool_) {
        kept_for_later += b.state == BufferState::ready && b.layer > computing && b.layer != for_layer;
        reads_in_flight += b.state == BufferState::reading;
    }
    const bool guesses_may_take_kept = 2 * kept_for_later > int(expert_pool_.size());
    // A needed read waits for a buffer of the computing layer to be used rather than take a kept
    // one, while enough reads are in flight to keep the disk busy (needed_ is asked for all at once).
    const bool needed_may_take_kept = reads_in_flight < kScanReadsInFlight;
    Buffer* best = nullptr;
    int best_distance = 0;
    double best_score = 0;
    for (auto& b : expert_pool_) {
        if (b.pins > 0) continue;
        if (b.state == BufferState::empty) return &b;
        if (b.state == BufferState::reading) continue;
        if (b.layer == for_layer && (for_prediction || still_needed(b.expert))) continue;
        if (b.layer == computing && still_needed(b.expert)) continue;
        // Layers from now on until its next use (0 < distance <= n_layers).
        const int distance = b.layer > computing ? b.layer - computing : n_layers - (computing - b.layer);
        if (b.layer > computing && !(for_prediction ? guesses_may_take_kept : needed_may_take_kept)) continue;
        const double s = score(b.layer, b.expert);
        if (!best || distance > best_distance || (distance == best_distance && s < best_score)) {
            best = &b;
            best_distance = distance;
            best_score = s;
        }
    }
    if (best || for_prediction || !needed_may_take_kept) return best;
    // Nothing ready to give: a demand read may wait for a guess still being read (last resort).
    for (auto& b : expert_pool_)
        if (b.pins == 0 && b.state == BufferState::reading && !(b.layer == for_layer && still_needed(b.expert)))
            return &b;
    return nullptr;
}

void Streamer::prefetch_dense_after(int layer) {
    if (dense_resident_) return;
    const int n = int(plan_.layers.size());
    for (int k = 1; k <= std::min(options_.prefetch_layers, n - 1); ++k) {
        const int next = (layer + k) % n;
        if (dense_elsewhere(next) || find(dense_pool_, next, -1)) continue;
        Buffer* b = acquire_dense(next);
        if (!b) return;
        submit(*b, next, -1, plan_.layers[size_t(next)].dense, false);
    }
}

void Streamer::begin_step(int64_t n_tokens) {
    abandon_layer();  // a step an error cut short (its reads in flight land as usual)
    ++step_serial_;    // a step an error cut short never reached end_step
    guesses_.clear();  // made from the previous step's hidden states
    // A scan: the distinct experts the step's routes are expected to touch (uniform routing) over
    // all MoE layers exceed the pool. Decoding 16 sequences on the 5-layer V3 model (~400 experts a
    // step through 188 buffers) read 146 GB in 16 steps evicting by score, 131 GB in scan order.
    const double per_layer = expected_experts_per_layer(n_tokens);
    scan_step_ = !expert_pool_.empty() && per_layer * double(n_moe_layers_) > double(expert_pool_.size());
    current_ = StepStats{};
    current_.n_tokens = n_tokens;
    current_.step = step_index_;
    step_start_ = Clock::now();
    busy_since_ = step_start_;  // reads still in flight from the previous step count from here
    guess_first_moe_layer(n_tokens);
}

// Distinct experts a layer of a step of n_tokens is expected to need, routes uniform.
double Streamer::expected_experts_per_layer(int64_t n_tokens) const {
    const double n_experts = double(std::max<int64_t>(layout_.n_experts, 1));
    return n_experts * (1.0 - std::pow(1.0 - 1.0 / n_experts, double(n_tokens) * double(std::max(layout_.router.top_k, 1))));
}

// A step whose routes are expected to reach every expert of a layer (uniform routing: 1,000 tokens
// x top-8 over 256 experts leave each one unused with probability 3e-14) needs the first MoE
// layer's experts whatever its router says, so their reads start with the step instead of after
// the dense layers before it have computed. (Otherwise the first guesses come from the state after
// the last dense layer's attention: on the 5-layer V3 Q4_K model, in 1,000-token steps, the disk
// idled through layer 0's attention, 0.6-0.9 s a step of 11.5, before any read of the step began.)
//
// The same guesses are made for the next step once the last MoE layer of a wide step has asked for
// its experts, when the caller expects that step to be as wide (expect_next_step: sluice batch's
// scheduler says so from its queue): those reads take the buffers this layer frees as its experts
// are used, through the end of the step (the last experts, the head, sampling, the next step's
// dense layers), where the disk idled (~1.5 s of ~12.5 s wide steps in the issue's job). Without
// the caller's word they are not made: after a prompt, decode steps need few experts, and reads
// made for nothing queue ahead of theirs (sluice bench, prompt 128: 0.25 GB read against 0.20).
void Streamer::guess_first_moe_layer(int64_t n_tokens) {
    if (!options_.speculate || expert_pool_.empty() || n_tokens < kWideStepTokens) return;
    if (expected_experts_per_layer(n_tokens) < double(layout_.n_experts) - 0.5) return;
    const int layer = first_moe_layer_;
    if (layer < 0) return;
    // A dense segment the step starts with and has not got yet comes first: expert reads queued
    // ahead of it would hold up the whole step.
    for (int l = 0; l < layer; ++l) {
        if (dense_resident_ || dense_elsewhere(l)) continue;
        const Buffer* b = find(dense_pool_, l, -1);
        if (!b || b->state != BufferState::ready) return;
    }
    for (int32_t e = 0; e < int32_t(layout_.n_experts); ++e)
        if (!find(expert_pool_, layer, e)) guesses_.push_back({layer, e});
    issue_guesses();
}

void Streamer::end_step() {
    computing_layer_ = -1;
    poll_all();
    const auto now = Clock::now();
    if (reads_in_flight_ > 0) {  // the rest of their time belongs to the next step
        current_.read_seconds += seconds(now - busy_since_);
        busy_since_ = now;
    }
    current_.step_seconds = seconds(now - step_start_);
    current_.compute_seconds = std::max(0.0, current_.step_seconds - current_.wait_seconds);
    steps_.push_back(current_);
    ++step_index_;
}

const LayerWeights& Streamer::begin_layer(int layer) {
    computing_layer_ = layer;
    poll_all();
    if (dense_resident_ || dense_elsewhere(layer)) {
        prefetch_dense_after(layer);
        return globals_.layers[size_t(layer)];
    }
    Buffer* b = find(dense_pool_, layer, -1);
    if (!b) {
        b = acquire_dense(layer);
        if (!b) fail(ErrorKind::internal, "no dense buffer free for layer {}", layer);
        submit(*b, layer, -1, plan_.layers[size_t(layer)].dense, true);
    }
    ++b->pins;
    current_dense_ = b;
    // Start the next layers' reads before waiting on this one, so the disk never idles.
    prefetch_dense_after(layer);
    wait_for(*b);
    if (b->state == BufferState::empty) {  // read ahead, and that read failed: read it again now
        submit(*b, layer, -1, plan_.layers[size_t(layer)].dense, true);
        wait_for(*b);
    }
    bind(*b);
    return b->dense;
}

const LayerWeights* Streamer::peek_layer(int layer) {
    if (layer < 0 || layer >= int(plan_.layers.size())) return nullptr;
    if (dense_resident_ || dense_elsewhere(layer)) return &globals_.layers[size_t(layer)];
    Buffer* b = find(dense_pool_, layer, -1);
    if (!b) return nullptr;
    if (b->state == BufferState::reading && !collect(*b, false)) return nullptr;  // in flight, or failed
    bind(*b);
    return &b->dense;
}

void Streamer::predict_experts(int layer, std::span<const int32_t> experts) {
    if (!options_.speculate || expert_pool_.empty()) return;
    for (int32_t e : experts) {
        if (options_.force_wrong_predictions) e = int32_t((e + layout_.n_experts / 2) % layout_.n_experts);
        if (!find(expert_pool_, layer, e)) guesses_.push_back({layer, e});
    }
    issue_guesses();
}

// Reads queued guesses while the disk has nothing needed to do. Measured on the 5-layer V3 Q4_K
// model under 8 GiB: guesses issued as soon as made were half wrong and took 4.7 of 13.8 GB read
// in decode, which is read-bound (1.70 tok/s vs 2.05 with no speculation at all).
void Streamer::issue_guesses() {
    // How far guesses may go. A decode step's guesses are half wrong and a needed read queues
    // behind those in flight, so few at a time and at most half the pool (the rest stays cache).
    // A step of many tokens needs nearly every expert of each layer, so its guesses are nearly all
    // right and are the only reads that can run through the next layer's attention: they may fill
    // the pool but for 2 x top_k buffers left for the layer's remaining experts, all in flight at
    // once (16 in flight and half the pool on the 5-layer V3 model, prompt 512: the disk idled
    // through most of each attention pass, 19.0 s; the whole pool: 15.5 s).
    const bool wide_step = current_.n_tokens >= kWideStepTokens;
    const int pool = int(expert_pool_.size());
    const int max_in_flight = wide_step ? pool : 2;
    const int max_held = wide_step ? std::max(pool / 2, pool - 2 * layout_.router.top_k) : pool / 2;
    if (guesses_.empty()) return;
    if (!deferred_.empty()) return;
    poll_all();
    int guesses_in_flight = 0, held = 0;
    for (const auto& b : dense_pool_)
        if (b.state == BufferState::reading) return;
    for (const auto& b : expert_pool_) {
        held += b.predicted;
        if (b.state != BufferState::reading) continue;
        if (!b.predicted) return;
        ++guesses_in_flight;
    }
    size_t used = 0;
    for (; used < guesses_.size() && guesses_in_flight < max_in_flight; ++used) {
        const auto [layer, e] = guesses_[used];
        if (find(expert_pool_, layer, e)) continue;
        if (held >= max_held) {
            used = guesses_.size();
            break;
        }
        Buffer* b = acquire_expert(layer, true, score(layer, e) + 1.0);
        if (!b) continue;
        held -= b->predicted;  // an unused guess of another layer may be the one evicted
        submit(*b, layer, e, plan_.layers[size_t(layer)].experts[size_t(e)], false);
        b->predicted = true;
        ++held;
        ++current_.predicted;
        ++guesses_in_flight;
    }
    guesses_.erase(guesses_.begin(), guesses_.begin() + ptrdiff_t(used));
}

void Streamer::need_experts(int layer, std::span<const int32_t> experts) {
    needed_.assign(experts.begin(), experts.end());
    handed_.assign(needed_.size(), 0);
    deferred_.clear();
    // Guesses for this layer not read by now are superseded by what the router asked for.
    std::erase_if(guesses_, [&](const PendingGuess& g) { return g.layer <= layer; });
    poll_all();
    for (int32_t e : needed_) {
        ++current_.experts_needed;
        touch(layer, e);
        if (Buffer* b = find(expert_pool_, layer, e)) {
            if (b->predicted) ++current_.prefetch_hits;
            else ++current_.cache_hits;
            b->predicted = false;
            continue;
        }
        deferred_.push_back(e);
    }
    submit_deferred(layer);
    if (layer == last_moe_layer_ && current_.n_tokens >= kWideStepTokens) guess_first_moe_layer(next_step_tokens_);
    issue_guesses();
}

void Streamer::submit_deferred(int layer) {
    size_t kept = 0;
    for (size_t i = 0; i < deferred_.size(); ++i) {
        const int32_t e = deferred_[i];
        Buffer* b = acquire_expert(layer, false, 0);
        if (!b) {
            deferred_[kept++] = e;
            continue;
        }
        submit(*b, layer, e, plan_.layers[size_t(layer)].experts[size_t(e)], true);
    }
    deferred_.resize(kept);
}

int32_t Streamer::next_expert(int layer, const ExpertWeights** weights) {
    if (current_expert_) {
        --current_expert_->pins;
        current_expert_ = nullptr;
        if (!deferred_.empty()) submit_deferred(layer);
    }
    issue_guesses();
    for (;;) {
        // A needed expert already in memory goes first (lowest id among the ready ones).
        wait_tickets_.clear();
        wait_index_.clear();
        bool any_left = false;
        for (size_t i = 0; i < needed_.size(); ++i) {
            if (handed_[i]) continue;
            any_left = true;
            Buffer* b = find(expert_pool_, layer, needed_[i]);
            // A read of it that failed before it was asked for on demand (a guess, or a read of a
            // step cut short) left it nowhere: it is read again, now on demand.
            if (b && b->state == BufferState::reading && !collect(*b, false) && b->state == BufferState::empty) b = nullptr;
            if (!b) {
                if (std::find(deferred_.begin(), deferred_.end(), needed_[i]) == deferred_.end())
                    deferred_.push_back(needed_[i]);
                continue;  // deferred: no buffer yet
            }
            if (b->state == BufferState::ready) {
                handed_[i] = 1;
                ++b->pins;
                current_expert_ = b;
                bind(*b);
                *weights = &b->expert_weights;
                return needed_[i];
            }
            wait_tickets_.push_back(b->ticket);
            wait_index_.push_back(size_t(b - expert_pool_.data()));
        }
        if (!any_left) return -1;
        if (wait_tickets_.empty()) {
            // Everything left is deferred: buffers are held by reads of other layers.
            submit_deferred(layer);
            if (!deferred_.empty() && wait_tickets_.empty()) {
                bool progressed = false;
                for (auto& b : expert_pool_)
                    if (b.state == BufferState::reading) {
                        wait_for(b);
                        progressed = true;
                        break;
                    }
                if (!progressed)
                    fail(ErrorKind::internal, "expert pool of {} buffers cannot make progress at layer {}",
                         expert_pool_.size(), layer);
            }
            continue;
        }
        const auto t0 = Clock::now();
        const size_t which = io_.wait_any(wait_tickets_);
        collect(expert_pool_[wait_index_[which]], true);  // completed: at once, or its error
        current_.wait_seconds += seconds(Clock::now() - t0);
        trace_wait(t0, layer);
    }
}

void Streamer::end_layer(int layer) {
    (void)layer;
    abandon_layer();
    issue_guesses();
}

// Lets go of the computing layer's buffers and of what it still needed.
void Streamer::abandon_layer() {
    if (current_expert_) {
        --current_expert_->pins;
        current_expert_ = nullptr;
    }
    if (current_dense_) {
        --current_dense_->pins;
        current_dense_ = nullptr;
    }
    needed_.clear();
    handed_.clear();
    deferred_.clear();
}

StepStats& StepStats::operator+=(const StepStats& s) {
    step += 1;
    n_tokens += s.n_tokens;
    bytes_read += s.bytes_read;
    step_seconds += s.step_seconds;
    read_seconds += s.read_seconds;
    wait_seconds += s.wait_seconds;
    compute_seconds += s.compute_seconds;
    experts_needed += s.experts_needed;
    cache_hits += s.cache_hits;
    prefetch_hits += s.prefetch_hits;
    predicted += s.predicted;
    guesses_evicted += s.guesses_evicted;
    dense_reads += s.dense_reads;
    expert_reads += s.expert_reads;
    return *this;
}

StepStats Streamer::totals() const {
    StepStats t;
    for (const auto& s : steps_) t += s;
    return t;
}

}  // namespace sluice
