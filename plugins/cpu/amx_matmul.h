// bf16 matrix products on Intel AMX (AMX-BF16 tiles), for the ONNX Runtime backend's bf16
// compute: Y[M, N] (float32) = X[M, K] (float32, rounded to bf16 on the way in) x W[K, N]
// (bf16), accumulated in float32. Part of trtkv_ort_ops.cpp's translation unit.
//
// ONNX Runtime's x86 CPU kernels have no bf16 MatMul and oneDNN's PyPI build is a SYCL/TBB
// one whose threads would fight ONNX Runtime's pool, so this is a small kernel of our own
// that runs on ONNX Runtime's intra-op threads (KernelContext::ParallelFor).
//
// The weight comes pre-packed (trtkv/runtime/backends/cpu_matmul.py) in the layout AMX's
// B operand reads: panels of 32 output columns; in each, K in steps of 32, two 16x32 tiles
// (columns 0-15 and 16-31 of the panel), row r of a tile holding the pairs
// (W[k0 + 2r][n], W[k0 + 2r + 1][n]) for its 16 columns n. K and N are zero-padded to
// multiples of 32, so a product never reads past the weight; rows past M are zero in the
// bf16 copy of X and never stored.
//
// Functions that use AMX / AVX-512 carry a target attribute and run only after
// `amx_available()` said yes (cpuid + the Linux permission for the tile state), so the
// portable (-march=x86-64) build compiles the same code.

#pragma once

// AMX intrinsics need GCC 11 / clang 12 or newer; older compilers build the rest of the library.
#if defined(__x86_64__) && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define TRTKV_HAVE_AMX_CODE 1
#define TRTKV_AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512bf16")))
#else
#define TRTKV_HAVE_AMX_CODE 0
#endif

#include <cstdint>
#include <cstring>

namespace amx {

constexpr int64_t kStep = 32;                // K per tile row: 32 bf16 = 64 bytes
constexpr int64_t kPanel = 32;               // output columns per panel (two 16-column tiles)
constexpr int64_t kTileElems = 16 * kStep;   // bf16 in one A or B tile
constexpr int64_t kBlockRows = 32;           // rows of X per block (two 16-row tiles)
constexpr int64_t kChunkBlocks = 8;          // blocks per work item: 256 rows of X stay in L2

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

//! Whether this CPU and kernel let the process use AMX-BF16 (asks Linux for the tile state once).
inline bool amx_available() {
#if TRTKV_HAVE_AMX_CODE
    static const bool ok = [] {
        unsigned a = 0, b = 0, c = 0, d = 0;
        if (__get_cpuid_max(0, nullptr) < 7) return false;
        __cpuid_count(7, 0, a, b, c, d);
        const bool avx512 = (b >> 16) & 1u, avx512bw = (b >> 30) & 1u;
        const bool amx_bf16 = (d >> 22) & 1u, amx_tile = (d >> 24) & 1u;
        __cpuid_count(7, 1, a, b, c, d);
        const bool avx512_bf16 = (a >> 5) & 1u;
        if (!(avx512 && avx512bw && amx_bf16 && amx_tile && avx512_bf16)) return false;
        constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
        return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
    }();
    return ok;
#else
    return false;
#endif
}

#if TRTKV_HAVE_AMX_CODE

struct alignas(64) TileConfig {
    uint8_t palette = 1;
    uint8_t start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

//! Every tile this kernel uses is 16 rows of 64 bytes: C tiles 0-3, A tiles 4-5, B tiles 6-7.
TRTKV_AMX_TARGET inline void configure_tiles() {
    TileConfig cfg;
    for (int t = 0; t < 8; ++t) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    _tile_loadconfig(&cfg);
}

//! X rows [row0, row0 + rows) (float32, row stride k) to bf16 rows of kp (round to nearest
//! even; zero past k), into out[0 .. rows * kp).
TRTKV_AMX_TARGET inline void to_bf16_rows(const float* x, int64_t rows, int64_t k, int64_t kp, uint16_t* out) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* src = x + r * k;
        uint16_t* dst = out + r * kp;
        for (int64_t c = 0; c < kp; c += 32) {
            const int64_t left = k - c;
            const __mmask16 lo = left >= 16 ? __mmask16(0xFFFF) : left > 0 ? __mmask16((1u << left) - 1) : 0;
            const __mmask16 hi = left >= 32 ? __mmask16(0xFFFF) : left > 16 ? __mmask16((1u << (left - 16)) - 1) : 0;
            const __m512 a = _mm512_maskz_loadu_ps(lo, src + c);
            const __m512 b = _mm512_maskz_loadu_ps(hi, src + c + 16);
            _mm512_storeu_si512(dst + c, (__m512i)_mm512_cvtne2ps_pbh(b, a));
        }
    }
}

//! Stores a 16x16 float tile's valid part (rows x cols) into y (row stride ldy).
inline void store_part(const float* tile, float* y, int64_t ldy, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; ++r) std::memcpy(y + r * ldy, tile + r * 16, static_cast<size_t>(cols) * sizeof(float));
}

//! One block: rows [0, 16 * (1 + kTwo)) of the bf16 X copy `a` (row stride kp) times one
//! packed panel `b` (ksteps steps) into y (row stride ldy), valid rows / cols only.
template <bool kTwo>
TRTKV_AMX_TARGET void block(const uint16_t* a, int64_t kp, const uint16_t* b, int64_t ksteps, float* y, int64_t ldy,
                            int64_t rows, int64_t cols) {
    _tile_zero(0);
    _tile_zero(1);
    if (kTwo) {
        _tile_zero(2);
        _tile_zero(3);
    }
    const int64_t a_stride = kp * static_cast<int64_t>(sizeof(uint16_t));
    for (int64_t s = 0; s < ksteps; ++s) {
        const uint16_t* bs = b + s * 2 * kTileElems;
        _tile_loadd(6, bs, 64);
        _tile_loadd(7, bs + kTileElems, 64);
        _tile_loadd(4, a + s * kStep, a_stride);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        if (kTwo) {
            _tile_loadd(5, a + 16 * kp + s * kStep, a_stride);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
    }
    const int64_t y_stride = ldy * static_cast<int64_t>(sizeof(float));
    if (cols == kPanel && rows >= 16 * (1 + kTwo)) {
        _tile_stored(0, y, y_stride);
        _tile_stored(1, y + 16, y_stride);
        if (kTwo) {
            _tile_stored(2, y + 16 * ldy, y_stride);
            _tile_stored(3, y + 16 * ldy + 16, y_stride);
        }
        return;
    }
    alignas(64) float tile[16 * 16];
    const int64_t top = rows < 16 ? rows : 16, bottom = rows - top;
    const int64_t left = cols < 16 ? cols : 16, right = cols - left;
    _tile_stored(0, tile, 64);
    store_part(tile, y, ldy, top, left);
    if (right > 0) {
        _tile_stored(1, tile, 64);
        store_part(tile, y + 16, ldy, top, right);
    }
    if (kTwo && bottom > 0) {
        _tile_stored(2, tile, 64);
        store_part(tile, y + 16 * ldy, ldy, bottom, left);
        if (right > 0) {
            _tile_stored(3, tile, 64);
            store_part(tile, y + 16 * ldy + 16, ldy, bottom, right);
        }
    }
}

constexpr int64_t kSmallRows = 4;  // up to this many rows of X: AVX512-BF16 dot products, not tiles

//! Rows [0, m) (m <= kSmallRows) of the bf16 X copy times panel p with AVX512-BF16: each
//! 64-byte weight row (16 columns x one K pair) is loaded once and used by every row of X.
template <int kRows>
TRTKV_AMX_TARGET void small_panel(const uint16_t* a, int64_t kp, const uint16_t* b, int64_t ksteps, float* y,
                                  int64_t ldy, int64_t cols) {
    // Two accumulators per 16 columns (even / odd K pairs): independent FMA chains.
    __m512 acc[kRows][2][2];
    for (int r = 0; r < kRows; ++r) acc[r][0][0] = acc[r][0][1] = acc[r][1][0] = acc[r][1][1] = _mm512_setzero_ps();
    for (int64_t s = 0; s < ksteps; ++s) {
        const uint16_t* bs = b + s * 2 * kTileElems;
        for (int pair = 0; pair < 16; pair += 2) {
            for (int odd = 0; odd < 2; ++odd) {
                const __m512i w0 = _mm512_loadu_si512(bs + (pair + odd) * kStep);
                const __m512i w1 = _mm512_loadu_si512(bs + kTileElems + (pair + odd) * kStep);
                for (int r = 0; r < kRows; ++r) {
                    int32_t xp;
                    std::memcpy(&xp, a + r * kp + s * kStep + 2 * (pair + odd), sizeof(xp));
                    const __m512i x = _mm512_set1_epi32(xp);
                    acc[r][0][odd] = _mm512_dpbf16_ps(acc[r][0][odd], (__m512bh)x, (__m512bh)w0);
                    acc[r][1][odd] = _mm512_dpbf16_ps(acc[r][1][odd], (__m512bh)x, (__m512bh)w1);
                }
            }
        }
    }
    const __mmask16 m0 = cols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1);
    const __mmask16 m1 = cols >= 32 ? __mmask16(0xFFFF) : cols > 16 ? __mmask16((1u << (cols - 16)) - 1) : 0;
    for (int r = 0; r < kRows; ++r) {
        _mm512_mask_storeu_ps(y + r * ldy, m0, _mm512_add_ps(acc[r][0][0], acc[r][0][1]));
        _mm512_mask_storeu_ps(y + r * ldy + 16, m1, _mm512_add_ps(acc[r][1][0], acc[r][1][1]));
    }
}

//! One work item: blocks [blk0, blk1) of 32 rows times panel p.
TRTKV_AMX_TARGET inline void run_item(const uint16_t* a, int64_t m, int64_t kp, const uint16_t* packed, int64_t n,
                                      int64_t p, int64_t blk0, int64_t blk1, float* y) {
    const int64_t ksteps = kp / kStep;
    const uint16_t* b = packed + p * ksteps * 2 * kTileElems;
    const int64_t col0 = p * kPanel, cols = n - col0 < kPanel ? n - col0 : kPanel;
    if (m <= kSmallRows) {
        switch (m) {
            case 1: small_panel<1>(a, kp, b, ksteps, y + col0, n, cols); break;
            case 2: small_panel<2>(a, kp, b, ksteps, y + col0, n, cols); break;
            case 3: small_panel<3>(a, kp, b, ksteps, y + col0, n, cols); break;
            default: small_panel<4>(a, kp, b, ksteps, y + col0, n, cols); break;
        }
        return;
    }
    configure_tiles();
    for (int64_t blk = blk0; blk < blk1; ++blk) {
        const int64_t row0 = blk * kBlockRows, rows = m - row0 < kBlockRows ? m - row0 : kBlockRows;
        float* out = y + row0 * n + col0;
        if (rows > 16) {
            block<true>(a + row0 * kp, kp, b, ksteps, out, n, rows, cols);
        } else {
            block<false>(a + row0 * kp, kp, b, ksteps, out, n, rows, cols);
        }
    }
    _tile_release();
}

#endif  // TRTKV_HAVE_AMX_CODE

}  // namespace amx
