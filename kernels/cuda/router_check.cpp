#include "kernels/cuda/router_check.hpp"

#include "core/error.hpp"

namespace sluice::cuda {

void check_router_config(const cpu::RouterConfig& c, int max_experts) {
    const int n = c.n_experts;
    if (n <= 0 || n > max_experts || c.n_group <= 0 || n % c.n_group != 0 || c.topk_group <= 0 ||
        c.topk_group > c.n_group || c.top_k <= 0 || c.top_k > c.topk_group * (n / c.n_group))
        fail(ErrorKind::invalid_input,
             "cuda router: inconsistent config (experts {} of at most {}, groups {}, keep {}, top_k {})", n,
             max_experts, c.n_group, c.topk_group, c.top_k);
}

}  // namespace sluice::cuda
