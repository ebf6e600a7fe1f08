// Layouts as in kernels/quant_blocks.hpp (ggml's). Each block draws from its own splitmix64
// stream (seed + 64 * block index steps), so pieces of a tensor are independent of each other.
#include "kernels/random_blocks.hpp"

#include <cmath>
#include <cstring>

#include "core/error.hpp"
#include "core/half.hpp"
#include "kernels/quant_blocks.hpp"

namespace sluice {

namespace {

using namespace quant;

constexpr uint64_t kGamma = 0x9e3779b97f4a7c15ull;
constexpr uint64_t kDrawsPerBlock = 64;  // no block layout needs more 64-bit draws than this

inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

struct BlockRng {
    uint64_t state;
    BlockRng(uint64_t seed, uint64_t block) : state(seed + block * kDrawsPerBlock * kGamma) {}
    uint64_t next() { return mix64(state += kGamma); }
    void fill(uint8_t* dst, size_t n) {
        for (size_t i = 0; i < n; i += 8) {
            const uint64_t r = next();
            std::memcpy(dst + i, &r, n - i < 8 ? n - i : 8);
        }
    }
};

// Uniform integer in [1, k] from 16 random bits (bias below 1e-4; only scales use it).
inline int uniform_1_to(uint64_t bits16, int k) { return 1 + int(((bits16 & 0xFFFF) * uint64_t(k)) >> 16); }

// fp16 scale for a block type whose values have rms `unit_rms * d`; must be normal.
uint16_t scale_f16(DType type, double std, double unit_rms) {
    const double d = std / unit_rms;
    if (!(d >= 6.103515625e-05 && d <= 65504.0))
        fail(ErrorKind::invalid_input, "random {} blocks: std {:.3g} needs scale {:.3g}, outside the fp16 normal range",
             dtype_name(type), std, d);
    return f32_to_f16(float(d));
}
inline uint16_t negated(uint16_t h) { return uint16_t(h ^ 0x8000u); }

// The rms of value / d for each layout, given the scale draws below (E over quants and scales):
//   Q8_0: q uniform int8            -> sqrt(E[q^2]) = sqrt(5461.5)
//   Q4_0: q - 8, q uniform 0..15    -> sqrt(21.5)
//   Q3_K: (+-k, k 1..8) * (q uniform -4..3)            -> sqrt(25.5 * 5.5)
//   Q6_K: (+-k, k 1..4) * (q - 32, q uniform 0..63)    -> sqrt(7.5 * 341.5)
//   Q2_K: 2k (q - 1.5), k 1..5      -> sqrt(44 * 1.25)
//   Q4_K: 2k (q - 7.5), k 1..4      -> sqrt(30 * 21.25)
//   Q5_K: 2k (q - 15.5), k 1..2     -> sqrt(10 * 85.25)
const double kRmsQ8_0 = std::sqrt(5461.5), kRmsQ4_0 = std::sqrt(21.5), kRmsQ3_K = std::sqrt(25.5 * 5.5),
             kRmsQ6_K = std::sqrt(7.5 * 341.5), kRmsQ2_K = std::sqrt(44 * 1.25), kRmsQ4_K = std::sqrt(30 * 21.25),
             kRmsQ5_K = std::sqrt(10 * 85.25);

// Q4_K / Q5_K: eight 6-bit (scale, min) pairs into 12 bytes, the inverse of k4_scale_min.
void pack_k4_scales(const uint8_t sc[8], const uint8_t m[8], uint8_t out[12]) {
    for (int j = 0; j < 4; ++j) {
        out[j] = uint8_t((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        out[j + 4] = uint8_t((m[j] & 63) | ((m[j + 4] >> 4) << 6));
        out[j + 8] = uint8_t((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
    }
}

// Q3_K: sixteen 6-bit biased scales into 12 bytes, the inverse of q3_k_scales.
void pack_q3_k_scales(const uint8_t biased[16], uint8_t out[12]) {
    for (int i = 0; i < 8; ++i) out[i] = uint8_t((biased[i] & 0xF) | ((biased[i + 8] & 0xF) << 4));
    for (int r = 0; r < 4; ++r) {
        uint8_t b = 0;
        for (int g = 0; g < 4; ++g) b = uint8_t(b | (((biased[4 * g + r] >> 4) & 3) << (2 * g)));
        out[8 + r] = b;
    }
}

template <class Block, class Fn>
void for_blocks(void* dst, uint64_t seed, uint64_t first_block, int64_t n_blocks, Fn fn) {
    auto* blocks = static_cast<Block*>(dst);
    for (int64_t i = 0; i < n_blocks; ++i) {
        BlockRng rng(seed, first_block + uint64_t(i));
        fn(blocks[i], rng);
    }
}

}  // namespace

bool random_blocks_supported(DType type) {
    switch (type) {
    case DType::F32: case DType::F16: case DType::BF16: case DType::Q4_0: case DType::Q8_0:
    case DType::Q2_K: case DType::Q3_K: case DType::Q4_K: case DType::Q5_K: case DType::Q6_K: return true;
    default: return false;
    }
}

void fill_random_blocks(DType type, RandomFill fill, double std, uint64_t seed, uint64_t first_block, void* dst,
                        int64_t n_blocks) {
    const bool is_float = type == DType::F32 || type == DType::F16 || type == DType::BF16;
    if (!random_blocks_supported(type))
        fail(ErrorKind::unsupported, "random blocks: type {} is not supported (F32, F16, BF16, Q4_0, Q8_0, Q2_K..Q6_K)",
             dtype_name(type));
    if (fill == RandomFill::ones && !is_float)
        fail(ErrorKind::invalid_input, "random blocks: all-ones values need a float type, not {}", dtype_name(type));
    if (!(std >= 0) || !std::isfinite(std)) fail(ErrorKind::invalid_input, "random blocks: std {} is not finite", std);

    if (is_float) {
        // Uniform on [-a, a) has standard deviation a / sqrt(3); one counter-based draw per value.
        const float half_width = float(std * std::sqrt(3.0));
        for (int64_t i = 0; i < n_blocks; ++i) {
            float v = 1.0f;
            if (fill != RandomFill::ones) {
                const uint64_t r = mix64(seed + (first_block + uint64_t(i) + 1) * kGamma);
                v = (float(r >> 40) * (2.0f / 16777216.0f) - 1.0f) * half_width;
            }
            if (type == DType::F32) {
                std::memcpy(static_cast<uint8_t*>(dst) + 4 * i, &v, 4);
            } else {
                const uint16_t h = type == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v);
                std::memcpy(static_cast<uint8_t*>(dst) + 2 * i, &h, 2);
            }
        }
        return;
    }

    switch (type) {
    case DType::Q8_0: {
        const uint16_t d = scale_f16(type, std, kRmsQ8_0);
        for_blocks<BlockQ8_0>(dst, seed, first_block, n_blocks, [d](BlockQ8_0& b, BlockRng& rng) {
            rng.fill(reinterpret_cast<uint8_t*>(b.qs), sizeof b.qs);
            b.d = (rng.next() & 1) ? negated(d) : d;
        });
        break;
    }
    case DType::Q4_0: {
        const uint16_t d = scale_f16(type, std, kRmsQ4_0);
        for_blocks<BlockQ4_0>(dst, seed, first_block, n_blocks, [d](BlockQ4_0& b, BlockRng& rng) {
            rng.fill(b.qs, sizeof b.qs);
            b.d = (rng.next() & 1) ? negated(d) : d;
        });
        break;
    }
    case DType::Q3_K: {
        const uint16_t d = scale_f16(type, std, kRmsQ3_K);
        for_blocks<BlockQ3_K>(dst, seed, first_block, n_blocks, [d](BlockQ3_K& b, BlockRng& rng) {
            rng.fill(b.hmask, sizeof b.hmask);
            rng.fill(b.qs, sizeof b.qs);
            uint8_t biased[16];
            for (int i = 0; i < 16; i += 4) {
                const uint64_t r = rng.next();
                for (int k = 0; k < 4; ++k) {
                    const uint64_t bits = r >> (16 * k);
                    const int magnitude = 1 + int(bits & 7);
                    biased[i + k] = uint8_t(32 + ((bits & 8) ? -magnitude : magnitude));
                }
            }
            pack_q3_k_scales(biased, b.scales);
            b.d = d;
        });
        break;
    }
    case DType::Q6_K: {
        const uint16_t d = scale_f16(type, std, kRmsQ6_K);
        for_blocks<BlockQ6_K>(dst, seed, first_block, n_blocks, [d](BlockQ6_K& b, BlockRng& rng) {
            rng.fill(b.ql, sizeof b.ql);
            rng.fill(b.qh, sizeof b.qh);
            for (int i = 0; i < 16; i += 8) {
                const uint64_t r = rng.next();
                for (int k = 0; k < 8; ++k) {
                    const uint64_t bits = r >> (8 * k);
                    const int magnitude = 1 + int(bits & 3);
                    b.scales[i + k] = int8_t((bits & 4) ? -magnitude : magnitude);
                }
            }
            b.d = d;
        });
        break;
    }
    case DType::Q2_K: {
        const uint16_t d = scale_f16(type, std, kRmsQ2_K);
        for_blocks<BlockQ2_K>(dst, seed, first_block, n_blocks, [d](BlockQ2_K& b, BlockRng& rng) {
            rng.fill(b.qs, sizeof b.qs);
            for (int i = 0; i < 16; i += 4) {
                const uint64_t r = rng.next();
                for (int k = 0; k < 4; ++k) {
                    const int s = uniform_1_to(r >> (16 * k), 5);  // scale 2s, min 3s: centred
                    b.scales[i + k] = uint8_t((2 * s) | ((3 * s) << 4));
                }
            }
            b.d = d;
            b.dmin = d;
        });
        break;
    }
    case DType::Q4_K: {
        const uint16_t d = scale_f16(type, std, kRmsQ4_K);
        for_blocks<BlockQ4_K>(dst, seed, first_block, n_blocks, [d](BlockQ4_K& b, BlockRng& rng) {
            rng.fill(b.qs, sizeof b.qs);
            uint8_t sc[8], m[8];
            const uint64_t r = rng.next();
            for (int j = 0; j < 8; ++j) {
                const int s = 1 + int((r >> (2 * j)) & 3);  // scale 2s, min 15s: centred on 7.5
                sc[j] = uint8_t(2 * s);
                m[j] = uint8_t(15 * s);
            }
            pack_k4_scales(sc, m, b.scales);
            b.d = d;
            b.dmin = d;
        });
        break;
    }
    case DType::Q5_K: {
        const uint16_t d = scale_f16(type, std, kRmsQ5_K);
        for_blocks<BlockQ5_K>(dst, seed, first_block, n_blocks, [d](BlockQ5_K& b, BlockRng& rng) {
            rng.fill(b.qh, sizeof b.qh);
            rng.fill(b.qs, sizeof b.qs);
            uint8_t sc[8], m[8];
            const uint64_t r = rng.next();
            for (int j = 0; j < 8; ++j) {
                const int s = 1 + int((r >> j) & 1);  // scale 2s, min 31s: centred on 15.5
                sc[j] = uint8_t(2 * s);
                m[j] = uint8_t(31 * s);
            }
            pack_k4_scales(sc, m, b.scales);
            b.d = d;
            b.dmin = d;
        });
        break;
    }
    default: break;
    }
}

}  // namespace sluice
