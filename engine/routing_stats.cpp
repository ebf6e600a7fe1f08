#include "engine/routing_stats.hpp"

#include <cmath>
#include <fstream>
#include <sstream>

#include "core/error.hpp"

namespace sluice {

RoutingRecorder::RoutingRecorder(WeightProvider& inner, const ModelLayout& layout) : inner_(inner) {
    counts_.n_layers = layout.n_layers;
    counts_.n_experts = layout.n_experts;
    counts_.top_k = layout.router.top_k;
    counts_.needed.assign(size_t(layout.n_layers) * size_t(std::max<int64_t>(layout.n_experts, 0)), 0);
    counts_.step_widths.reserve(64);
    guessed_.assign(counts_.needed.size(), 0);
    has_guess_.assign(size_t(layout.n_layers), 0);
}

void RoutingRecorder::predict_experts(int layer, std::span<const int32_t> experts) {
    uint8_t* row = guessed_.data() + size_t(layer) * size_t(counts_.n_experts);
    for (int32_t e : experts) row[e] = 1;
    has_guess_[size_t(layer)] = 1;
    inner_.predict_experts(layer, experts);
}

void RoutingRecorder::begin_step(int64_t n_tokens) {
    step_tokens_ = n_tokens;
    ++counts_.steps;
    counts_.tokens += n_tokens;
    bool seen = false;
    for (auto& [width, steps] : counts_.step_widths)
        if (width == n_tokens) {
            ++steps;
            seen = true;
            break;
        }
    if (!seen) counts_.step_widths.emplace_back(n_tokens, 1);
    inner_.begin_step(n_tokens);
}

void RoutingRecorder::need_experts(int layer, std::span<const int32_t> experts) {
    int64_t* row = counts_.needed.data() + size_t(layer) * size_t(counts_.n_experts);
    for (int32_t e : experts) ++row[e];
    if (has_guess_[size_t(layer)]) {
        uint8_t* guessed = guessed_.data() + size_t(layer) * size_t(counts_.n_experts);
        if (step_tokens_ == 1) {
            counts_.guess_needed += int64_t(experts.size());
            for (int32_t e : experts) counts_.guess_hits += guessed[e];
        }
        std::fill(guessed, guessed + counts_.n_experts, uint8_t(0));
        has_guess_[size_t(layer)] = 0;
    }
    inner_.need_experts(layer, experts);
}

std::vector<double> RoutingCounts::token_probabilities() const {
    std::vector<double> p(needed.size(), 0.0);
    auto expected_needed = [&](double q) {
        double s = 0;
        for (const auto& [w, n] : step_widths) s += double(n) * (1.0 - std::pow(1.0 - q, double(w)));
        return s;
    };
    for (size_t i = 0; i < needed.size(); ++i) {
        if (needed[i] <= 0) continue;
        const double target = std::min(double(needed[i]), double(steps));
        // expected_needed rises with q from 0 to `steps`: bisection.
        double lo = 0, hi = 1;
        for (int it = 0; it < 60; ++it) {
            const double mid = 0.5 * (lo + hi);
            (expected_needed(mid) < target ? lo : hi) = mid;
        }
        p[i] = 0.5 * (lo + hi);
    }
    return p;
}

nlohmann::json RoutingCounts::to_json() const {
    nlohmann::json widths = nlohmann::json::array();
    for (const auto& [w, n] : step_widths) widths.push_back({w, n});
    nlohmann::json layers = nlohmann::json::array();
    for (int l = 0; l < n_layers; ++l)
        layers.push_back(std::vector<int64_t>(needed.begin() + ptrdiff_t(l * n_experts),
                                              needed.begin() + ptrdiff_t((l + 1) * n_experts)));
    return {{"layers", n_layers},         {"experts", n_experts},   {"top_k", top_k},
            {"steps", steps},             {"tokens", tokens},       {"step_widths", widths},
            {"guess_needed", guess_needed}, {"guess_hits", guess_hits}, {"needed", layers}};
}

RoutingCounts RoutingCounts::from_json(const nlohmann::json& j, const std::string& source) {
    RoutingCounts c;
    try {
        c.n_layers = j.at("layers").get<int>();
        c.n_experts = j.at("experts").get<int64_t>();
        c.top_k = j.at("top_k").get<int>();
        c.steps = j.at("steps").get<int64_t>();
        c.tokens = j.at("tokens").get<int64_t>();
        for (const auto& w : j.at("step_widths")) c.step_widths.emplace_back(w.at(0).get<int64_t>(), w.at(1).get<int64_t>());
        c.guess_needed = j.value("guess_needed", int64_t(0));
        c.guess_hits = j.value("guess_hits", int64_t(0));
        if (c.guess_hits < 0 || c.guess_hits > c.guess_needed)
            fail(ErrorKind::invalid_input, "{}: routing guess_hits {} outside 0..guess_needed ({})", source, c.guess_hits,
                 c.guess_needed);
        const auto& layers = j.at("needed");
        if (!layers.is_array() || int(layers.size()) != c.n_layers)
            fail(ErrorKind::invalid_input, "{}: routing 'needed' has {} layers, 'layers' says {}", source, layers.size(),
                 c.n_layers);
        for (const auto& row : layers) {
            if (!row.is_array() || int64_t(row.size()) != c.n_experts)
                fail(ErrorKind::invalid_input, "{}: a routing 'needed' row has {} experts, 'experts' says {}", source,
                     row.size(), c.n_experts);
            for (const auto& v : row) c.needed.push_back(v.get<int64_t>());
        }
    } catch (const nlohmann::json::exception& e) {
        fail(ErrorKind::invalid_input, "{}: routing counts: {}", source, e.what());
    }
    if (c.steps <= 0) fail(ErrorKind::invalid_input, "{}: routing counts cover no steps", source);
    for (int64_t v : c.needed)
        if (v < 0 || v > c.steps)
            fail(ErrorKind::invalid_input, "{}: a routing count of {} is outside 0..steps ({})", source, v, c.steps);
    return c;
}

RoutingCounts RoutingCounts::load(const std::string& path) {
    std::ifstream in(path);
    if (!in) fail(ErrorKind::io, "{}: cannot open", path);
    std::stringstream text;
    text << in.rdbuf();
    const std::string s = text.str();
    // One JSON document (bench --json, or the object), else JSON lines (run --stats-json).
    const auto whole = nlohmann::json::parse(s, nullptr, false);
    if (!whole.is_discarded() && whole.is_object()) {
        if (whole.contains("routing")) return from_json(whole.at("routing"), path);
        if (whole.contains("needed")) return from_json(whole, path);
    }
    std::istringstream lines(s);
    std::string line;
    int n = 0;
    while (std::getline(lines, line)) {
        ++n;
        if (line.find("\"routing\"") == std::string::npos) continue;
        const auto j = nlohmann::json::parse(line, nullptr, false);
        if (j.is_discarded()) fail(ErrorKind::invalid_input, "{}: line {} is not JSON", path, n);
        return from_json(j.at("routing"), path);
    }
    fail(ErrorKind::invalid_input, "{}: no routing counts (write them with `run --stats-json` or `bench --json`)", path);
}

}  // namespace sluice
