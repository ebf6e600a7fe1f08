// The AMX path of the fused quantised GEMM (quant_dot.hpp): Intel AMX tile multiplies (TDPBUSD,
// Sapphire Rapids and later Xeons) take 16 weight rows x 64 bytes against 16 tokens x 64
// activation bytes in one instruction, 8x the multiply-adds a cycle of a 512-bit vpdpbusd.
//
// Orientation: tile A is 16 weight rows as bytes, tile B 64 elements of 16 tokens' int8
// activations in the VNNI layout (4 consecutive elements of each token side by side), tile C the
// 16 x 16 int32 dots. Q4_K's 6-bit sub-block scale s cannot ride in a byte beside its 4-bit weight
// q (s q reaches 945) and a multiply per 32-element sub-block would store a C tile per 32 elements
// (tried: the stores and the float work after them cost 4x the multiplies). So each weight row is
// packed twice, q (s & 7) and q (s >> 3) (both <= 105, one vpmullw per 64 weights), and a
// super-block's integer dot, sum_j s_j dot_j exactly, is lo + 8 hi: eight multiplies and two tile
// stores per super-block and token tile. The minimum term (sum_j min_j sums_j) is integer too
// (vpdpwssd), and the float steps after are the four-row VNNI kernel's with row sums
// (quant_dot_avx512.cpp), which takes calls of up to kFewTokens tokens (a tile costs as much for 1
// token as for 16): the two give a token the same bits, so the token count may choose, and a
// token's result never depends on the tokens beside it (sluice batch's promise; tested).
//
// Order of work: the activations are quantised and packed once per call (per 16-token tile, per
// super-block, in parallel); weight rows are packed per 16-row tile and super-block, just before
// their multiplies for up to 4 token tiles, else once per block of row tiles held in L2 while
// every pair of token tiles passes. 2048 x 7168 Q4_K, hot, 2 threads, against the VNNI kernel,
// over several runs on the dev machine: 16 tokens 1.9-2.0x, 32 2.2-2.6x, 64-256 1.9-3.2x
// (bench_quant --paths).
//
// Q6_K (the output head of every GGUF of the family, and the down projections of half the layers
// in Q4_K_M files) takes the same two byte planes another way: its weight s (q - 32), with s the
// signed 8-bit scale of 16 elements and q 6 bits, lies in [-4064, 4096], so v = s (q - 32) + 4096
// fits 14 bits and is packed as v & 255 and v >> 8; the super-block's dot is lo + 256 hi - 4096
// sum(a), exactly (the offset 32 is inside v, no minimum term). Its few-token kernel is the
// four-row VNNI kernel's Q6_K row-sums form, bit-identical again.
//
// Q4_K and Q6_K only; other types on this path go through the AVX-512 VNNI kernels (quant_dot.cpp
// decides).
#include "kernels/cpu/quant_dot_amx.hpp"

#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <vector>

#include "core/error.hpp"
#include "kernels/cpu/quant_dot.hpp"
#include "kernels/cpu/quant_dot_kernels.hpp"
#include "kernels/quant_blocks.hpp"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,gfni,avx2,fma,f16c,amx-tile,amx-int8"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,gfni,avx2,fma,f16c,amx-tile,amx-int8")
#endif

namespace sluice::cpu::amx {
namespace {

using namespace sluice::quant;

constexpr int kTileRows = 16;    // weight rows per A tile
constexpr int kTileTokens = 16;  // tokens per B tile
constexpr int kSubBlocks = 8;    // 32-element sub-blocks per Q4_K super-block
constexpr int kFewTokens = 6;        // up to this many tokens a call takes the four-row VNNI kernel (crossover: 7)
constexpr int kPackAsUsedTiles = 4;  // up to this many token tiles, rows are packed per super-block as used

// One super-block (256 columns) of one 16-token tile, as the AMX kernel reads it.
struct alignas(64) PackedTokens {
    int8_t qs[64][64];           // row k4: tokens 0..15 x elements 4k4..4k4+3 (TDPBUSD's B layout);
                                 // rows 16v..16v+15 are the B tile of elements 64v..64v+63
    int32_t sum_pairs[4][16];    // per token: sub-blocks 2p and 2p + 1's sums of their 32 int8, as
                                 // two int16 (|sum| <= 32 * 127), for Q4_K's minimum term
    int32_t sums[16];            // per token: the sum of its 256 int8, for Q6_K's offset
    float d[16];                 // per token: the activation scale (0 for padding tokens)
};
static_assert(sizeof(PackedTokens) == 4096 + 256 + 64 + 64);

// One super-block of one 16-row tile for the AMX kernel: each weight row as two byte rows (the
// planes), whose dots against a token combine into the super-block's integer dot, exactly: four
// TDPBUSD of 64 elements each per plane, one tile store per plane per super-block. A TDPBUSD per
// sub-block instead would store a 16 x 16 int32 tile per 32 elements (measured on Q4_K: the stores
// and the float work after them cost 4x the multiplies).
// The 256 elements are taken in the order the type's packed bits give them: chunk c, byte b is
// element Format::element_of(c, b) (the tokens are packed in the same order, so the dots are the same).
struct alignas(64) PackedRows {
    uint8_t lo[4][kTileRows][64];  // chunk c, row m: Q4_K 64 weights times (s & 7); Q6_K v & 255
    uint8_t hi[4][kTileRows][64];  // ... Q4_K times (s >> 3); Q6_K v >> 8
    float d_dmin[kTileRows][2];       // Q6_K: d only
    int32_t min_pairs[kTileRows][4];  // Q4_K: mins 2p and 2p + 1 as two int16
};

struct alignas(64) TileConfig {
    uint8_t palette = 1;
    uint8_t start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

// tmm0, tmm1: A (the lo and hi rows); tmm2, tmm3: B (two token tiles); tmm4..7: C (lo and hi of each)
const TileConfig& tile_config() {
    static const TileConfig config = [] {
        TileConfig c;
        for (int t = 0; t < 8; ++t) c.rows[t] = 16, c.colsb[t] = 64;
        return c;
    }();
    return config;
}

#include "kernels/cpu/q4k_scales_avx512.inc"

// 0, step, 2 step, ... 15 step: the byte offsets of 16 lanes' gathers, scatters and strided stores.
inline __m512i lane_multiples(int64_t step) {
    return _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(int(step)));
}

// The Q4_K side of the tile kernel: packing a tile's rows, and the float end of a super-block.
struct Q4KTiles {
    using Block = BlockQ4_K;
    // Chunk c of a super-block is the low (c even) or high nibbles of qs[64 (c / 2) ..][64]: its byte b
    // is element 64 (2 (c / 2) + b / 32) + 32 (c % 2) + b % 32, of sub-block 4 (c / 2) + 2 (b / 32) + c % 2.
    static constexpr int element_of(int c, int b) { return 64 * (2 * (c / 2) + b / 32) + 32 * (c % 2) + b % 32; }
    static constexpr int sub_block_of(int c, int b) { return element_of(c, b) / 32; }

    // vpermw indices: for row r % 2 of a pair (words 16 (r % 2) .. of the pair's widened scales),
    // chunk c: each weight pair's sub-block scale.
    struct ScaleIndex {
        __m512i at[2][4];
        ScaleIndex() {
            alignas(64) int16_t idx[32];
            for (int r = 0; r < 2; ++r)
                for (int c = 0; c < 4; ++c) {
                    for (int word = 0; word < 32; ++word) idx[word] = int16_t(16 * r + sub_block_of(c, 2 * word));
                    at[r][c] = _mm512_load_si512(idx);
                }
        }
    };

    // Super-block i of the tile's rows (row_count of them; the rest zero): each row twice, q (s & 7)
    // and q (s >> 3) (a sub-block's 6-bit scale s cannot ride in a byte beside its 4-bit weight q:
    // s q reaches 945), so the dot is lo + 8 hi. Per weight pair (one int16) q_even + 256 q_odd
    // times a 3-bit multiplier is q_even s + 256 q_odd s with no carry (15 * 7 < 256): vpmullw
    // multiplies 64 weights by their sub-blocks' multipliers at once.
    static void pack_rows(const uint8_t* first_row, int64_t row_bytes, int row_count, int64_t i, PackedRows& p) {
        alignas(64) static constexpr Block kZeroBlock{};  // stands in for the rows past the end of a tile
        static const ScaleIndex index;
        const __m512i low4 = _mm512_set1_epi8(0x0f), low3 = _mm512_set1_epi16(7);
        for (int m0 = 0; m0 < kTileRows; m0 += 4) {
            const Block* b[4];
            for (int r = 0; r < 4; ++r)
                b[r] = m0 + r < row_count ? reinterpret_cast<const Block*>(first_row + (m0 + r) * row_bytes) + i : &kZeroBlock;
            __m512i head = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b[0])));
            for (int r = 1; r < 4; ++r) head = _mm512_mask_broadcast_i32x4(head, __mmask16(0xf << (4 * r)), _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[r])));
            // d, dmin of the four rows: dword 0 of each lane
            const __m512i heads = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), head);
            _mm256_store_ps(p.d_dmin[m0], _mm256_cvtph_ps(_mm512_castsi512_si128(heads)));
            const __m512i sm = q4k_lane_scales_mins(head);
            const __m512i words[2] = {_mm512_cvtepu8_epi16(_mm512_castsi512_si256(sm)), _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(sm, 1))};
            for (int r = 0; r < 4; ++r) {
                const int m = m0 + r;
                const __m512i& w = words[r / 2];
                _mm_store_si128(reinterpret_cast<__m128i*>(p.min_pairs[m]), _mm512_extracti32x4_epi32(w, r % 2 ? 3 : 1));
                const __m512i q01 = _mm512_loadu_si512(b[r]->qs), q23 = _mm512_loadu_si512(b[r]->qs + 64);
                const __m512i nibbles[4] = {_mm512_and_si512(q01, low4), _mm512_and_si512(_mm512_srli_epi16(q01, 4), low4),
                                            _mm512_and_si512(q23, low4), _mm512_and_si512(_mm512_srli_epi16(q23, 4), low4)};
                for (int c = 0; c < 4; ++c) {
                    const __m512i scale = _mm512_permutexvar_epi16(index.at[r % 2][c], w);
                    _mm512_store_si512(p.lo[c][m], _mm512_mullo_epi16(nibbles[c], _mm512_and_si512(scale, low3)));
                    _mm512_store_si512(p.hi[c][m], _mm512_mullo_epi16(nibbles[c], _mm512_srli_epi16(scale, 3)));
                }
            }
        }
    }

    // Per weight row and token: the integer dot and the integer minimum term (sum_j min_j sums_j)
    // to float, f = d * dot - dmin * offset, total += f * da: the steps of the AVX-512 four-row
    // kernel with row sums (quant_dot_avx512.cpp), which takes calls of few tokens.
    static void finish_tile(const PackedRows& w, const PackedTokens& a, const int32_t (*dots_lo)[16],
                            const int32_t (*dots_hi)[16], float (*totals)[16]) {
        __m512i sum_pairs[4];
        for (int p = 0; p < 4; ++p) sum_pairs[p] = _mm512_load_si512(a.sum_pairs[p]);
        const __m512 da = _mm512_load_ps(a.d);
        for (int m = 0; m < kTileRows; ++m) {
            const __m512i dot = _mm512_add_epi32(_mm512_load_si512(dots_lo[m]), _mm512_slli_epi32(_mm512_load_si512(dots_hi[m]), 3));
            __m512i offset = _mm512_setzero_si512();
            for (int p = 0; p < 4; ++p) offset = _mm512_dpwssd_epi32(offset, sum_pairs[p], _mm512_set1_epi32(w.min_pairs[m][p]));
            const __m512 f = _mm512_fmsub_ps(_mm512_set1_ps(w.d_dmin[m][0]), _mm512_cvtepi32_ps(dot),
                                             _mm512_mul_ps(_mm512_set1_ps(w.d_dmin[m][1]), _mm512_cvtepi32_ps(offset)));
            _mm512_store_ps(totals[m], _mm512_fmadd_ps(f, da, _mm512_load_ps(totals[m])));
        }
    }

    static quant_kernels::QuadRowGroupFn few_tokens(const quant_kernels::RowGroupTable& t) { return t.q4_k_quad_row_sums; }
};

// The Q6_K side. Elements 128g + l (l < 64) are the low nibbles of ql[64g + l], 128g + 64 + l its
// high nibbles; their bits 4-5 are bits 2 (l / 32) (+ 4 for the high nibbles) of qh[32g + l % 32].
// So chunk c = 2g + h is ql[64g ..] shifted by 4h, and byte b is element 64c + b, of sub-block
// 4c + b / 16: the elements in their own order.
struct Q6KTiles {
    using Block = BlockQ6_K;
    static constexpr int element_of(int c, int b) { return 64 * c + b; }

    // vpermw indices: chunk c, word k (bytes 2k, 2k + 1: one sub-block) takes scale 4c + k / 8
    struct ScaleIndex {
        __m512i at[4];
        __m512i qh_shift[2];  // per 16-bit word: bytes 0-31 of a chunk shift qh by 4h, bytes 32-63 by 4h + 2
        ScaleIndex() {
            alignas(64) int16_t idx[32];
            for (int c = 0; c < 4; ++c) {
                for (int word = 0; word < 32; ++word) idx[word] = int16_t(4 * c + word / 8);
                at[c] = _mm512_load_si512(idx);
            }
            for (int h = 0; h < 2; ++h)
                qh_shift[h] = _mm512_inserti64x4(_mm512_set1_epi16(short(4 * h)), _mm256_set1_epi16(short(4 * h + 2)), 1);
        }
    };

    // Super-block i of the tile's rows (row_count of them; the rest zero): v = s (q - 32) + 4096 per
    // weight (in [32, 8192]: 14 bits) as its low and high bytes. Per weight pair (one int16 of the
    // unpacked q bytes) the even and odd weights are widened apart, multiplied by their sub-block's
    // scale (a pair never straddles two: sub-blocks are 16 bytes) and interleaved back as bytes.
    static void pack_rows(const uint8_t* first_row, int64_t row_bytes, int row_count, int64_t i, PackedRows& p) {
        alignas(64) static constexpr Block kZeroBlock{};  // stands in for the rows past the end of a tile
        static const ScaleIndex index;
        const __m512i low4 = _mm512_set1_epi8(0x0f), low2 = _mm512_set1_epi8(0x03), low_byte = _mm512_set1_epi16(0xff);
        const __m512i bias = _mm512_set1_epi16(4096);
        constexpr __mmask64 kOddBytes = 0xAAAAAAAAAAAAAAAAull;
        for (int m = 0; m < kTileRows; ++m) {
            const Block* b = m < row_count ? reinterpret_cast<const Block*>(first_row + m * row_bytes) + i : &kZeroBlock;
            p.d_dmin[m][0] = _cvtsh_ss(b->d);
            p.d_dmin[m][1] = 0.0f;
            const __m512i scales = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b->scales))));
            for (int g = 0; g < 2; ++g) {
                const __m512i ql = _mm512_loadu_si512(b->ql + 64 * g);
                const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->qh + 32 * g)));
                for (int h = 0; h < 2; ++h) {
                    const int c = 2 * g + h;
                    const __m512i nibbles = _mm512_and_si512(h ? _mm512_srli_epi16(ql, 4) : ql, low4);
                    const __m512i high = _mm512_and_si512(_mm512_srlv_epi16(qh, index.qh_shift[h]), low2);
                    const __m512i q = _mm512_or_si512(nibbles, _mm512_slli_epi16(high, 4));
                    const __m512i s = _mm512_permutexvar_epi16(index.at[c], scales);
                    const __m512i start = _mm512_sub_epi16(bias, _mm512_slli_epi16(s, 5));  // 4096 - 32 s
                    const __m512i even = _mm512_add_epi16(_mm512_mullo_epi16(_mm512_and_si512(q, low_byte), s), start);
                    const __m512i odd = _mm512_add_epi16(_mm512_mullo_epi16(_mm512_srli_epi16(q, 8), s), start);
                    _mm512_store_si512(p.lo[c][m], _mm512_mask_blend_epi8(kOddBytes, even, _mm512_slli_epi16(odd, 8)));
                    _mm512_store_si512(p.hi[c][m], _mm512_mask_blend_epi8(kOddBytes, _mm512_srli_epi16(even, 8), odd));
                }
            }
        }
    }

    // Per weight row and token: dot = lo + 256 hi - 4096 sum(a) (= sum_j s_j (sum q a - 32 bsum_j),
    // the four-row kernel's dot - offset), f = d * dot, total += f * da: the Q6_K row-sums steps
    // of quant_dot_avx512.cpp's four-row kernel, bit for bit.
    static void finish_tile(const PackedRows& w, const PackedTokens& a, const int32_t (*dots_lo)[16],
                            const int32_t (*dots_hi)[16], float (*totals)[16]) {
        const __m512i bias = _mm512_slli_epi32(_mm512_load_si512(a.sums), 12);
        const __m512 da = _mm512_load_ps(a.d);
        for (int m = 0; m < kTileRows; ++m) {
            const __m512i dot = _mm512_sub_epi32(
                _mm512_add_epi32(_mm512_load_si512(dots_lo[m]), _mm512_slli_epi32(_mm512_load_si512(dots_hi[m]), 8)), bias);
            const __m512 f = _mm512_mul_ps(_mm512_set1_ps(w.d_dmin[m][0]), _mm512_cvtepi32_ps(dot));
            _mm512_store_ps(totals[m], _mm512_fmadd_ps(f, da, _mm512_load_ps(totals[m])));
        }
    }

    static quant_kernels::QuadRowGroupFn few_tokens(const quant_kernels::RowGroupTable& t) { return t.q6_k_quad; }  // the row-sums form (quant_dot_kernels.hpp)
};

// 16 tokens' Q8_K blocks (token_count of them; the rest zero) into the B layout, per super-block,
// in Format's element order.
template <typename Format>
void pack_tokens(const ActivationBlockQ8K* acts, int64_t n_sb, int token_count, PackedTokens* out) {
    const __m512i token_offsets = lane_multiples(n_sb * int64_t(sizeof(ActivationBlockQ8K)));
    const __mmask16 present = __mmask16((1u << token_count) - 1);
    for (int64_t i = 0; i < n_sb; ++i) {
        PackedTokens& p = out[i];
        const auto* base = reinterpret_cast<const uint8_t*>(acts + i);
        for (int k4 = 0; k4 < 64; ++k4)  // row 16 c + r: elements element_of(c, 4 r) .. + 3
            _mm512_store_si512(p.qs[k4], _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), present, token_offsets,
                                                                      base + offsetof(ActivationBlockQ8K, qs) + Format::element_of(k4 / 16, 4 * (k4 % 16)), 1));
        for (int n = 0; n < kTileTokens; ++n) {
            const ActivationBlockQ8K* a = n < token_count ? acts + n * n_sb + i : nullptr;
            p.d[n] = a ? a->d : 0.0f;
            const auto sum = [a](int j) { return a ? int(a->bsums[2 * j]) + int(a->bsums[2 * j + 1]) : 0; };
            int total = 0;
            for (int pair = 0; pair < 4; ++pair) {
                p.sum_pairs[pair][n] = int32_t(uint32_t(uint16_t(sum(2 * pair))) | uint32_t(sum(2 * pair + 1)) << 16);
                total += sum(2 * pair) + sum(2 * pair + 1);
            }
            p.sums[n] = total;
        }
    }
}

// totals[k][m][n] = row m against token n of tile k (k < 2 when kTwo), over every super-block.
// The float steps of super-block i - 1 run while the tile unit multiplies super-block i (the C
// tiles go to alternate buffers): issued in that order, the vector work overlaps the multiplies.
// rows_at(i): the row tile's super-block i, packed (valid until rows_at(i + 2) is asked for).
template <typename Format, bool kTwo, typename RowsAt>
void amx_tiles(RowsAt rows_at, const PackedTokens* tokens0, const PackedTokens* tokens1, int64_t n_sb,
               float (*totals)[kTileRows][16]) {
    const PackedRows* rows[2] = {};  // per parity of i
    alignas(64) int32_t dots[2][4][kTileRows][16];  // per parity of i: C tiles lo, hi of tile 0, then of tile 1
    for (int k = 0; k < (kTwo ? 2 : 1); ++k)
        for (int m = 0; m < kTileRows; ++m) _mm512_store_ps(totals[k][m], _mm512_setzero_ps());
    const auto finish = [&](int64_t i) {
        auto& d = dots[i % 2];
        Format::finish_tile(*rows[i % 2], tokens0[i], d[0], d[1], totals[0]);
        if constexpr (kTwo) Format::finish_tile(*rows[i % 2], tokens1[i], d[2], d[3], totals[1]);
    };
    for (int64_t i = 0; i < n_sb; ++i) {
        const PackedRows& w = rows_at(i);
        rows[i % 2] = &w;
        _tile_zero(4);
        _tile_zero(5);
        if constexpr (kTwo) {
            _tile_zero(6);
            _tile_zero(7);
        }
        for (int v = 0; v < 4; ++v) {
            _tile_loadd(0, w.lo[v][0], 64);
            _tile_loadd(1, w.hi[v][0], 64);
            _tile_loadd(2, tokens0[i].qs[16 * v], 64);
            _tile_dpbusd(4, 0, 2);
            _tile_dpbusd(5, 1, 2);
            if constexpr (kTwo) {
                _tile_loadd(3, tokens1[i].qs[16 * v], 64);
                _tile_dpbusd(6, 0, 3);
                _tile_dpbusd(7, 1, 3);
            }
        }
        if (i > 0) finish(i - 1);
        auto& d = dots[i % 2];
        _tile_stored(4, d[0], 64);
        _tile_stored(5, d[1], 64);
        if constexpr (kTwo) {
            _tile_stored(6, d[2], 64);
            _tile_stored(7, d[3], 64);
        }
    }
    if (n_sb > 0) finish(n_sb - 1);
}

// y[n * y_stride + m] = totals[m][n] for the real rows and tokens: one token's rows per store.
void store_transposed(const float (*totals)[16], int row_count, int token_count, float* y, int64_t y_stride) {
    const __m512i column = lane_multiples(16);
    const __mmask16 rows = __mmask16((1u << row_count) - 1);
    for (int n = 0; n < token_count; ++n)
        _mm512_mask_storeu_ps(y + n * y_stride, rows, _mm512_i32gather_ps(column, &totals[0][n], 4));
}

// Share i of n of the next row tile's bytes (rows are contiguous: a tile is one run of memory),
// prefetched into L2 while super-block i of this tile is packed. Packing reads a tile 144 bytes a
// row at a time across 16 rows, and a streamed expert's weights arrive cold from DRAM: with short
// rows the hardware prefetcher never gets going (7168x2048, 16 tokens, cold: 1,062 -> 715 us with
// this), with long ones it does better alone (2048x7168, 32 tokens: 920 against 1,025 us), so
// the caller asks for it up to kPrefetchMaxBlocks super-blocks a row.
constexpr int64_t kPrefetchMaxBlocks = 16;
inline void prefetch_share(const uint8_t* next_tile, int64_t tile_bytes, int64_t n, int64_t i) {
    if (!next_tile) return;
    const int64_t share = (tile_bytes / n + 63) / 64 * 64;
    const int64_t end = std::min(tile_bytes, (i + 1) * share);
    for (int64_t at = i * share; at < end; at += 64) _mm_prefetch(reinterpret_cast<const char*>(next_tile + at), _MM_HINT_T1);
}

// Row tiles per block: as many as keep the block's packed rows near 1 MiB (L2 is 2 MiB a core on
// Sapphire Rapids), at least 1, at most 4.
int64_t row_block_tiles(int64_t n_sb) {
    return std::clamp<int64_t>((int64_t(1) << 20) / (n_sb * int64_t(sizeof(PackedRows))), 1, 4);
}

bool request_tile_data() {
    // Linux hands out AMX tile state only to processes that ask (5.16+): ARCH_REQ_XCOMP_PERM for
    // XFEATURE_XTILEDATA. Without it the first tile instruction faults.
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

// Grown only, per thread (the pool's threads live as long as the process).
thread_local std::vector<PackedRows> t_rows;
thread_local std::vector<ActivationBlockQ8K> t_token_blocks;
// The calling thread's packed tokens: kept across calls like the other paths' activation scratch.
thread_local std::vector<PackedTokens> t_tokens;
thread_local std::vector<ActivationBlockQ8K> t_few_tokens;
thread_local std::vector<uint8_t> t_padded_rows;

using quant_kernels::grown;

constexpr size_t kLargestBlockBytes = std::max(sizeof(BlockQ4_K), sizeof(BlockQ6_K));  // of the types supports() takes

template <typename Format>
void gemm_tiles(const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens, float* y, int64_t y_stride,
                ThreadPool& pool);

}  // namespace

bool available() {
    static const bool usable = __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-int8") &&
                               __builtin_cpu_supports("avx512vnni") && request_tile_data();
    return usable;
}

bool supports(DType type) { return type == DType::Q4_K || type == DType::Q6_K; }

uint64_t scratch_bytes(int64_t n_tokens, int64_t cols) {
    const int64_t n_sb = (cols + 255) / 256, tiles = (n_tokens + kTileTokens - 1) / kTileTokens;
    return uint64_t(tiles * n_sb) * sizeof(PackedTokens) + uint64_t(n_sb * kFewTokens) * sizeof(ActivationBlockQ8K);
}
// Packed rows for a block: row_block_tiles(n) * n entries, at most max(n, what 1 MiB holds) for
// any n up to cols' super-blocks, so a narrower call after the reserve allocates nothing either.
size_t packed_rows_entries(int64_t n_sb) {
    return size_t(std::max<int64_t>(n_sb, (int64_t(1) << 20) / int64_t(sizeof(PackedRows))));
}

uint64_t thread_scratch_bytes(int64_t cols) {
    const int64_t n_sb = (cols + 255) / 256;
    return packed_rows_entries(n_sb) * sizeof(PackedRows) +
           uint64_t(n_sb) * (kTileTokens * sizeof(ActivationBlockQ8K) + 4 * kLargestBlockBytes);
}
void reserve_scratch(int64_t n_tokens, int64_t cols) {
    const int64_t n_sb = (cols + 255) / 256, tiles = (n_tokens + kTileTokens - 1) / kTileTokens;
    grown(t_tokens, size_t(tiles * n_sb));
    grown(t_few_tokens, size_t(n_sb * kFewTokens));
}
void reserve_thread_scratch(int64_t cols) {
    const int64_t n_sb = (cols + 255) / 256;
    grown(t_rows, packed_rows_entries(n_sb));
    grown(t_token_blocks, size_t(n_sb * kTileTokens));
    grown(t_padded_rows, size_t(4 * n_sb) * kLargestBlockBytes);
}

void gemm(const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens, float* y, int64_t y_stride,
          ThreadPool& pool) {
    if (!supports(w.type)) fail(ErrorKind::unsupported, "amx gemm: no AMX kernel for {}", dtype_name(w.type));
    if (w.type == DType::Q6_K) return gemm_tiles<Q6KTiles>(w, x, x_stride, n_tokens, y, y_stride, pool);
    gemm_tiles<Q4KTiles>(w, x, x_stride, n_tokens, y, y_stride, pool);
}

namespace {

template <typename Format>
void gemm_tiles(const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens, float* y, int64_t y_stride,
                ThreadPool& pool) {
    const int64_t n_sb = w.cols / 256;
    if (n_sb == 0 || w.rows <= 0 || n_tokens <= 0) return;
    const int64_t row_bytes = w.bytes_per_row();
    const auto* base = static_cast<const uint8_t*>(w.data);
    const auto quantize = quant_kernels::avx512_vnni_row_groups().quantize_q8k;
    if (n_tokens <= kFewTokens) {
        // A 16-token tile costs the tile kernel as much for 1 token as for 16: few tokens go through
        // the AVX-512 four-row kernel instead, in its row-sums form (the same bits as the tiles).
        ActivationBlockQ8K* blocks = grown(t_few_tokens, size_t(n_sb * kFewTokens));
        const void* acts[8];
        for (int64_t t = 0; t < n_tokens; ++t) {
            quantize(x + t * x_stride, blocks + t * n_sb, w.cols);
            acts[t] = blocks + t * n_sb;
        }
        const auto& table = quant_dot_uses_gfni() ? quant_kernels::avx512_vnni_gfni_row_groups()
                                                  : quant_kernels::avx512_vnni_row_groups();
        const auto four_rows = Format::few_tokens(table);
        pool.parallel_for(w.rows, [&](int64_t r0, int64_t r1, int) {
            float sums[4 * 8];
            for (int64_t r = r0; r < r1; r += 4) {
                const int row_count = int(std::min<int64_t>(4, r1 - r));
                const uint8_t* rows = base + r * row_bytes;
                if (row_count < 4) {  // the last rows, beside zero blocks (d = dmin = 0)
                    uint8_t* padded = grown(t_padded_rows, size_t(4 * row_bytes));
                    std::memset(padded, 0, size_t(4 * row_bytes));
                    std::memcpy(padded, rows, size_t(row_count * row_bytes));
                    rows = padded;
                }
                four_rows(rows, row_bytes, n_sb, acts, int(n_tokens), sums);
                for (int64_t t = 0; t < n_tokens; ++t)
                    for (int i = 0; i < row_count; ++i) y[t * y_stride + r + i] = sums[4 * t + i];
            }
        }, kTileRows);
        return;
    }
    const int64_t token_tiles = (n_tokens + kTileTokens - 1) / kTileTokens;
    PackedTokens* tokens = grown(t_tokens, size_t(token_tiles * n_sb));
    pool.parallel_for(token_tiles, [&](int64_t t0, int64_t t1, int) {
        ActivationBlockQ8K* blocks = grown(t_token_blocks, size_t(n_sb * kTileTokens));
        for (int64_t tt = t0; tt < t1; ++tt) {
            const int count = int(std::min<int64_t>(kTileTokens, n_tokens - tt * kTileTokens));
            for (int n = 0; n < count; ++n) quantize(x + (tt * kTileTokens + n) * x_stride, blocks + n * n_sb, w.cols);
            pack_tokens<Format>(blocks, n_sb, count, tokens + tt * n_sb);
        }
    });
    // Up to two token tiles (32 tokens: a routed expert's share of a large step), each super-block of
    // a row tile is packed just before its multiplies (in L1 when the tiles load it). More, and a
    // block of row tiles is packed once and meets every token tile, a pair of token tiles at a time
    // against each row tile of the block: the block's packed rows (up to ~1 MiB) and the pair's
    // packed tokens stay in L2, and the tokens come from further out once per block, not per tile.
    const bool pack_as_used = token_tiles <= kPackAsUsedTiles;
    const int64_t block_tiles = pack_as_used ? 1 : row_block_tiles(n_sb);
    pool.parallel_for(w.rows, [&](int64_t r0, int64_t r1, int) {
        PackedRows* rows = grown(t_rows, packed_rows_entries(n_sb));
        alignas(64) float totals[2][kTileRows][16];
        _tile_loadconfig(&tile_config());
        for (int64_t block = r0; block < r1; block += block_tiles * kTileRows) {
            const int64_t block_end = std::min(r1, block + block_tiles * kTileRows);
            // the rows of the tile after `tile` in this thread's range, to prefetch (none after the last)
            const auto next_tile = [&](int64_t tile) {
                return n_sb <= kPrefetchMaxBlocks && tile + kTileRows < r1 ? base + (tile + kTileRows) * row_bytes : nullptr;
            };
            const auto next_tile_bytes = [&](int64_t tile) {
                return std::clamp<int64_t>(r1 - (tile + kTileRows), 0, kTileRows) * row_bytes;
            };
            if (!pack_as_used)
                for (int64_t tile = block; tile < block_end; tile += kTileRows)
                    for (int64_t i = 0; i < n_sb; ++i) {
                        prefetch_share(next_tile(tile), next_tile_bytes(tile), n_sb, i);
                        Format::pack_rows(base + tile * row_bytes, row_bytes, int(std::min<int64_t>(kTileRows, block_end - tile)), i,
                                  rows[(tile - block) / kTileRows * n_sb + i]);
                    }
            for (int64_t tt = 0; tt < token_tiles; tt += 2) {
                const bool two = tt + 1 < token_tiles;
                for (int64_t tile = block; tile < block_end; tile += kTileRows) {
                    const int row_count = int(std::min<int64_t>(kTileRows, block_end - tile));
                    const PackedRows* packed = rows + (tile - block) / kTileRows * n_sb;
                    const auto packed_at = [packed](int64_t i) -> const PackedRows& { return packed[i]; };
                    const auto pack_at = [&, first_row = base + tile * row_bytes, next = next_tile(tile),
                                          next_bytes = next_tile_bytes(tile)](int64_t i) -> const PackedRows& {
                        prefetch_share(next, next_bytes, n_sb, i);
                        Format::pack_rows(first_row, row_bytes, row_count, i, rows[i % 2]);
                        return rows[i % 2];
                    };
                    const PackedTokens* t0 = tokens + tt * n_sb;
                    if (pack_as_used) {
                        if (two) amx_tiles<Format, true>(pack_at, t0, t0 + n_sb, n_sb, totals);
                        else amx_tiles<Format, false>(pack_at, t0, nullptr, n_sb, totals);
                    } else {
                        if (two) amx_tiles<Format, true>(packed_at, t0, t0 + n_sb, n_sb, totals);
                        else amx_tiles<Format, false>(packed_at, t0, nullptr, n_sb, totals);
                    }
                    for (int k = 0; k < (two ? 2 : 1); ++k) {
                        const int64_t first = (tt + k) * kTileTokens;
                        store_transposed(totals[k], row_count, int(std::min<int64_t>(kTileTokens, n_tokens - first)),
                                         y + first * y_stride + tile, y_stride);
                    }
                }
            }
        }
        _tile_release();
    }, kTileRows);
}

}  // namespace
}  // namespace sluice::cpu::amx

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
