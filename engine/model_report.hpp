// What `sluice inspect` prints about a model: hyperparameters, tensor types, bytes per layer
// (dense part vs routed experts), bytes one decoded token reads, MLA cache bytes per token.
// Computed from the model plan alone: nothing is read but headers.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/model_layout.hpp"
#include "engine/model_plan.hpp"

namespace sluice {

struct LayerBytes {
    int layer = 0;
    bool is_moe = false;
    uint64_t dense_bytes = 0;        // attention + norms + router + shared expert, or dense MLP
    uint64_t expert_bytes = 0;       // one routed expert (0 for dense layers)
    uint64_t all_experts_bytes = 0;  // every routed expert of the layer
};

struct ModelReport {
    std::vector<LayerBytes> layers;
    std::map<std::string, int64_t> tensors_by_type;   // type name -> count
    std::map<std::string, uint64_t> bytes_by_type;
    uint64_t total_bytes = 0;
    uint64_t global_bytes = 0;                        // embedding + head + final norm
    uint64_t bytes_per_decoded_token = 0;             // spec §4.3, no cache hits
    uint64_t mla_cache_bytes_per_token_f32 = 0;       // as sluice stores it
    uint64_t mla_cache_bytes_per_token_16bit = 0;     // spec §4.4 figure
};

ModelReport make_model_report(const ModelLayout& layout, const ModelPlan& plan);
nlohmann::json model_report_json(const ModelLayout& layout, const ModelReport& report);
std::string model_report_text(const ModelLayout& layout, const ModelReport& report);

}  // namespace sluice
