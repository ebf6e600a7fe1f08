// The router config checks of cpu::route, done on the host before a device launch (a kernel
// cannot throw). Kept apart from the .cu files so they need not compile fmt.
#pragma once

#include "kernels/cpu/ops.hpp"

namespace sluice::cuda {

// Throws sluice::Error (invalid_input) unless the config is one cpu::route accepts and has at
// most max_experts experts.
void check_router_config(const cpu::RouterConfig& config, int max_experts);

}  // namespace sluice::cuda
