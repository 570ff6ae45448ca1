// Native CPU kernels of the trtkv ops for ONNX Runtime: a custom-op library (domain "trtkv")
// that ONNX Runtime prefers over the models' local function bodies once it is registered
// (SessionOptions.register_custom_ops_library; trtkv/runtime/backends/native_ops.py builds it).
//
// The contract is trtkv/ops/schema.py; the oracle is trtkv/ops/reference.py (tests compare
// the two: tests/ops/test_native_ops.py).
//
// PagedAttention: one fused pass per (sequence, KV head, tile of new tokens): the tile's query
// heads of that KV head read each key / value row once, straight from the pool through the
// block table (no gathered copies), decode it to float32 (fp16, bf16, fp8 E4M3, int8 with
// static or dynamic scales) and fold it into an online softmax (float32 accumulation).
// Work items run on ONNX Runtime's intra-op thread pool.
// KVAppend: the stored codes of the step's K/V (quantize-on-write, bit-exact with the
// reference); with the node attribute write_pool = 1 it also writes them into the pool at
// slot_mapping (the ONNX Runtime backend binds the pool zero-copy and then skips its own
// scatter).
//
// Every index is checked before use; a bad input fails the run with one line, never reads or
// writes outside a tensor.

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__F16C__) || defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "amx_matmul.h"

// Round-to-nearest-even encoders (float -> fp16 / bf16 / fp8 E4M3) shared with the CUDA kernels'
// host emulation: one definition of the rounding rules on the host.
#include "../emulation/emulated_floats.h"
// The op contract's constants and the dynamic-scale tables, generated from trtkv/ops/schema.py.
#include "../generated/trtkv_ops.h"

namespace {

// ---- KV dtypes ------------------------------------------------------------------------------

enum class Kv { kF32, kF16, kBF16, kFP8, kINT8, kINT8Dynamic };

constexpr int kExponentMin = trtkv::ops::kDynamicExponentMin;
constexpr float kInt8Max = trtkv::ops::kInt8Max;
constexpr float kFp8Max = trtkv::ops::kFp8E4M3Max;
constexpr uint32_t kScaleBits[256] = {TRTKV_DYNAMIC_SCALE_BITS};
constexpr uint32_t kThresholdBits[255] = {TRTKV_DYNAMIC_THRESHOLD_BITS};

struct Tables {
    float dyn_scale[256];      // 2^(e / 8), e = index - 128
    float dyn_threshold[255];  // 127 * dyn_scale[i]
    float fp8[256];            // E4M3 code -> float
    Tables() {
        std::memcpy(dyn_scale, kScaleBits, sizeof(dyn_scale));
        std::memcpy(dyn_threshold, kThresholdBits, sizeof(dyn_threshold));
        for (int i = 0; i < 256; ++i) {
            __nv_fp8_e4m3 c;
            c.__x = static_cast<__nv_fp8_storage_t>(i);
            fp8[i] = static_cast<float>(c);
        }
    }
};

const Tables& tables() {
    static const Tables t;
    return t;
}

size_t elem_size(ONNXTensorElementDataType t) {
    switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return 4;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return 2;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT8E4M3FN: return 1;
    default: return 0;
    }
}

// The KV dtype of a pool / stored-codes tensor (fp8 pools are bound as their uint8 codes).
Kv kv_of(ONNXTensorElementDataType t, bool dynamic) {
    switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return Kv::kF32;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return Kv::kF16;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return Kv::kBF16;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT8E4M3FN: return Kv::kFP8;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return dynamic ? Kv::kINT8Dynamic : Kv::kINT8;
    default: throw std::invalid_argument("unsupported KV dtype (element type " + std::to_string(t) + ")");
    }
}

inline float half_to_float(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    __half x{h};
    return __half2float(x);
#endif
}

inline float bf16_to_float(uint16_t b) {
    uint32_t u = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// n values of a compute tensor (float32 / float16) -> float.
void load_compute(const void* src, bool f16, int n, float* dst) {
    if (!f16) {
        std::memcpy(dst, src, sizeof(float) * n);
        return;
    }
    const auto* h = static_cast<const uint16_t*>(src);
    for (int i = 0; i < n; ++i) dst[i] = half_to_float(h[i]);
}

// Decodes one stored row (D values; dynamic rows carry their G exponents after the codes) to
// float32. Returns the row itself for float32 pools (no copy), else `buf`.
inline const float* decode_row(const uint8_t* row, Kv kv, int d, int groups, float scale, float* buf) {
    switch (kv) {
    case Kv::kF32: return reinterpret_cast<const float*>(row);
    case Kv::kF16: {
        const auto* h = reinterpret_cast<const uint16_t*>(row);
#if defined(__F16C__)
        int i = 0;
        for (; i + 8 <= d; i += 8) {
            __m128i v;
            std::memcpy(&v, h + i, 16);
            _mm256_storeu_ps(buf + i, _mm256_cvtph_ps(v));
        }
        for (; i < d; ++i) buf[i] = half_to_float(h[i]);
#else
        for (int i = 0; i < d; ++i) buf[i] = half_to_float(h[i]);
#endif
        return buf;
    }
    case Kv::kBF16: {
        const auto* b = reinterpret_cast<const uint16_t*>(row);
        for (int i = 0; i < d; ++i) buf[i] = bf16_to_float(b[i]);
        return buf;
    }
    case Kv::kFP8: {
        const float* lut = tables().fp8;
        for (int i = 0; i < d; ++i) buf[i] = lut[row[i]] * scale;
        return buf;
    }
    case Kv::kINT8: {
        const auto* q = reinterpret_cast<const int8_t*>(row);
        for (int i = 0; i < d; ++i) buf[i] = static_cast<float>(q[i]) * scale;
        return buf;
    }
    case Kv::kINT8Dynamic: {
        const auto* q = reinterpret_cast<const int8_t*>(row);
        const int g = d / groups;
        for (int grp = 0; grp < groups; ++grp) {
            const float s = tables().dyn_scale[static_cast<int>(q[d + grp]) - kExponentMin];
            for (int i = grp * g; i < (grp + 1) * g; ++i) buf[i] = static_cast<float>(q[i]) * s;
        }
        return buf;
    }
    }
    return buf;
}

// ---- encoders (bit-exact with trtkv.ops.reference.quantize / quantize_dynamic) ---------------

inline int8_t encode_int8(float y) {
    if (std::isnan(y)) return 0;
    float r = std::nearbyint(y);  // half to even (default rounding mode)
    r = std::min(std::max(r, -kInt8Max), kInt8Max);
    return static_cast<int8_t>(r);
}

// x: D floats of one (token, KV head) row -> stored row of `kv` (W bytes-wide elements).
void encode_row(const float* x, int d, int groups, Kv kv, float scale, uint8_t* out) {
    switch (kv) {
    case Kv::kF32: std::memcpy(out, x, sizeof(float) * d); return;
    case Kv::kF16: {
        auto* h = reinterpret_cast<uint16_t*>(out);
        for (int i = 0; i < d; ++i) h[i] = __float2half_rn(x[i]).__x;
        return;
    }
    case Kv::kBF16: {
        auto* b = reinterpret_cast<uint16_t*>(out);
        for (int i = 0; i < d; ++i) b[i] = __float2bfloat16_rn(x[i]).__x;
        return;
    }
    case Kv::kFP8:
        for (int i = 0; i < d; ++i) {
            float y = x[i] / scale;
            if (!std::isnan(y)) y = std::min(std::max(y, -kFp8Max), kFp8Max);
            out[i] = __nv_cvt_float_to_fp8(y, __NV_SATFINITE, __NV_E4M3);
        }
        return;
    case Kv::kINT8: {
        auto* q = reinterpret_cast<int8_t*>(out);
        for (int i = 0; i < d; ++i) q[i] = encode_int8(x[i] / scale);  // +-inf clamp to +-127
        return;
    }
    case Kv::kINT8Dynamic: {
        const Tables& t = tables();
        auto* q = reinterpret_cast<int8_t*>(out);
        const int g = d / groups;
        const float big = std::numeric_limits<float>::max();
        for (int grp = 0; grp < groups; ++grp) {
            float amax = 0.f;
            for (int i = grp * g; i < (grp + 1) * g; ++i) {
                float v = std::isnan(x[i]) ? 0.f : std::min(std::max(x[i], -big), big);
                amax = std::max(amax, std::fabs(v));
            }
            // exponent index = number of thresholds below amax (they ascend)
            const int index = static_cast<int>(std::lower_bound(t.dyn_threshold, t.dyn_threshold + 255, amax) -
                                               t.dyn_threshold);
            const float s = t.dyn_scale[index];
            for (int i = grp * g; i < (grp + 1) * g; ++i) {
                float v = std::isnan(x[i]) ? 0.f : std::min(std::max(x[i], -big), big);
                float r = std::nearbyint(v / s);
                q[i] = static_cast<int8_t>(std::min(std::max(r, -kInt8Max), kInt8Max));
            }
            q[d + grp] = static_cast<int8_t>(index + kExponentMin);
        }
        return;
    }
    }
}

constexpr int kKeyChunk = 64;  // keys scored at once (PagedAttention)

// ---- small helpers -----------------------------------------------------------------------------

[[noreturn]] void fail(const std::string& what) { throw std::invalid_argument(what); }

std::vector<int64_t> shape_of(const Ort::ConstValue& v) { return v.GetTensorTypeAndShapeInfo().GetShape(); }

float scale_at(const float* s, int64_t n, int64_t head) { return n == 1 ? s[0] : s[head]; }

// Byte offset of a token's K row group (all KV heads) in a [N, 2, B, Hkv, W] pool; its V rows
// follow block_size * token_bytes later.
inline size_t pool_token_offset(int64_t block, int64_t within, int64_t block_size, size_t token_bytes) {
    return static_cast<size_t>(block * 2 * block_size + within) * token_bytes;
}

void check_index(const Ort::ConstValue& v, size_t rank, const char* name) {
    auto info = v.GetTensorTypeAndShapeInfo();
    if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 || info.GetShape().size() != rank) {
        fail(std::string(name) + " must be int32 of rank " + std::to_string(rank));
    }
}

void check_scales(const Ort::ConstValue& v, int64_t hkv, const char* name) {
    auto shape = shape_of(v);
    int64_t n = v.GetTensorTypeAndShapeInfo().GetElementCount();
    if (v.GetTensorTypeAndShapeInfo().GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || shape.size() != 1 ||
        (n != 1 && n != hkv)) {
        fail(std::string(name) + " must be float32 [1] or [num_kv_heads]");
    }
}

inline float dot(const float* a, const float* b, int n) {
    int i = 0;
    float s = 0.f;
#if defined(__AVX512F__)
    __m512 acc = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
    s = _mm512_reduce_add_ps(acc);
#elif defined(__AVX2__) && defined(__FMA__)
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    s = _mm_cvtss_f32(lo);
#endif
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

// exp(x) for x <= 0 (softmax weights), vectorizable: exp(x) = 2^n * exp(r), |r| <= ln2 / 2,
// exp(r) by a degree-6 polynomial (relative error ~2e-7); x below -87 gives 0.
inline float exp_nonpositive(float x) {
    const float log2e = 1.44269504088896341f, ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    const float xc = std::max(x, -87.f);
    const float n = std::nearbyint(xc * log2e);
    const float r = (xc - n * ln2_hi) - n * ln2_lo;
    float p = 1.f / 720.f;
    p = p * r + 1.f / 120.f;
    p = p * r + 1.f / 24.f;
    p = p * r + 1.f / 6.f;
    p = p * r + 0.5f;
    p = p * r + 1.f;
    p = p * r + 1.f;
    uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, 4);
    return x < -87.f ? 0.f : p * scale;
}

// a[0..d) += sum_j w[j] * v[j][0..d): each slice of `a` stays in a register across the keys.
inline void accumulate(const float* w, const float* const* v, int nk, float* a, int d) {
    int x0 = 0;
#if defined(__AVX512F__)
    for (; x0 < d; x0 += 16) {
        const __mmask16 m = d - x0 >= 16 ? static_cast<__mmask16>(0xffff)
                                         : static_cast<__mmask16>((1u << (d - x0)) - 1u);
        __m512 acc = _mm512_maskz_loadu_ps(m, a + x0);
        for (int j = 0; j < nk; ++j) {
            if (w[j] == 0.f) continue;
            acc = _mm512_fmadd_ps(_mm512_set1_ps(w[j]), _mm512_maskz_loadu_ps(m, v[j] + x0), acc);
        }
        _mm512_mask_storeu_ps(a + x0, m, acc);
    }
#endif
    for (; x0 < d; ++x0) {
        float acc = a[x0];
        for (int j = 0; j < nk; ++j) acc += w[j] * v[j][x0];
        a[x0] = acc;
    }
}

// x[j] = exp(x[j] - m) for j < n (masked keys, -inf, weigh 0); returns their sum.
inline float softmax_weights(float* x, int n, float m) {
    int j = 0;
    float sum = 0.f;
#if defined(__AVX512F__)
    const __m512 vm = _mm512_set1_ps(m), lo = _mm512_set1_ps(-87.f), log2e = _mm512_set1_ps(1.44269504088896341f);
    const __m512 ln2_hi = _mm512_set1_ps(0.693359375f), ln2_lo = _mm512_set1_ps(-2.12194440e-4f);
    __m512 total = _mm512_setzero_ps();
    for (; j < n; j += 16) {
        const __mmask16 live = n - j >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (n - j)) - 1u);
        const __m512 v = _mm512_sub_ps(_mm512_maskz_loadu_ps(live, x + j), vm);
        const __mmask16 keep = _mm512_mask_cmp_ps_mask(live, v, lo, _CMP_GE_OQ);  // below -87 (and -inf): 0
        const __m512 xc = _mm512_max_ps(v, lo);
        const __m512 nf = _mm512_roundscale_ps(_mm512_mul_ps(xc, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m512 r = _mm512_fnmadd_ps(nf, ln2_hi, xc);
        r = _mm512_fnmadd_ps(nf, ln2_lo, r);
        __m512 p = _mm512_set1_ps(1.f / 720.f);
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120.f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24.f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6.f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
        const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(nf), _mm512_set1_epi32(127)), 23);
        const __m512 w = _mm512_maskz_mul_ps(keep, p, _mm512_castsi512_ps(e));
        total = _mm512_add_ps(total, w);
        _mm512_mask_storeu_ps(x + j, live, w);
    }
    sum = _mm512_reduce_add_ps(total);
#endif
    for (; j < n; ++j) {
        x[j] = exp_nonpositive(x[j] - m);
        sum += x[j];
    }
    return sum;
}

// Scores of nr <= 4 query rows (q: rows of d) against the KC keys of kt ([d, KC], transposed):
// out[i * KC + j], register-blocked (no horizontal sums).
inline void score_block4(const float* q, int d, const float* kt, int nr, float* out) {
#if defined(__AVX512F__)
    constexpr int kVecs = kKeyChunk / 16;
    static_assert(kKeyChunk % 16 == 0, "whole 16-wide vectors per row");
    const float* qp[4];
    for (int i = 0; i < 4; ++i) qp[i] = q + static_cast<size_t>(std::min(i, nr - 1)) * d;
    __m512 acc[4][kVecs];
    for (int i = 0; i < 4; ++i) {
        for (int v = 0; v < kVecs; ++v) acc[i][v] = _mm512_setzero_ps();
    }
    for (int x = 0; x < d; ++x) {
        __m512 c[kVecs];
        for (int v = 0; v < kVecs; ++v) c[v] = _mm512_loadu_ps(kt + static_cast<size_t>(x) * kKeyChunk + 16 * v);
        for (int i = 0; i < 4; ++i) {
            const __m512 b = _mm512_set1_ps(qp[i][x]);
            for (int v = 0; v < kVecs; ++v) acc[i][v] = _mm512_fmadd_ps(b, c[v], acc[i][v]);
        }
    }
    for (int i = 0; i < nr; ++i) {
        for (int v = 0; v < kVecs; ++v) _mm512_storeu_ps(out + i * kKeyChunk + 16 * v, acc[i][v]);
    }
#else
    for (int i = 0; i < nr; ++i) {
        float row[kKeyChunk] = {0.f};
        for (int x = 0; x < d; ++x) {
            const float qx = q[static_cast<size_t>(i) * d + x];
            const float* col = kt + static_cast<size_t>(x) * kKeyChunk;
            for (int j = 0; j < kKeyChunk; ++j) row[j] += qx * col[j];
        }
        std::memcpy(out + i * kKeyChunk, row, sizeof(row));
    }
#endif
}

// max of x[0..n).
inline float max_of(const float* x, int n) {
    int j = 0;
    float m = -std::numeric_limits<float>::infinity();
#if defined(__AVX512F__)
    __m512 vm = _mm512_set1_ps(m);
    for (; j + 16 <= n; j += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(x + j));
    m = _mm512_reduce_max_ps(vm);
#endif
    for (; j < n; ++j) m = std::max(m, x[j]);
    return m;
}

// a rows (nr <= 4, each d wide) += w rows ([nr, KC] weights) times the chunk's value rows.
inline void accumulate_block4(const float* w, const float* const* v, int nk, float* a, int nr, int d) {
#if defined(__AVX512F__)
    static const float zeros[kKeyChunk] = {0.f};
    const float* wp[4];
    float* ap[4];
    for (int i = 0; i < 4; ++i) {
        wp[i] = i < nr ? w + i * kKeyChunk : zeros;
        ap[i] = a + static_cast<size_t>(std::min(i, nr - 1)) * d;
    }
    // 64 dims at a time: 4 rows x 4 vectors of accumulators, so each value vector loaded
    // feeds 4 FMAs and each broadcast weight 4 (FMA-bound rather than load-bound).
    for (int x0 = 0; x0 < d; x0 += 64) {
        __mmask16 m[4];
        for (int u = 0; u < 4; ++u) {
            const int left = d - x0 - 16 * u;
            m[u] = left >= 16 ? static_cast<__mmask16>(0xffff)
                              : static_cast<__mmask16>(left > 0 ? (1u << left) - 1u : 0u);
        }
        __m512 acc[4][4];
        for (int i = 0; i < 4; ++i) {
            for (int u = 0; u < 4; ++u) acc[i][u] = _mm512_maskz_loadu_ps(m[u], ap[i] + x0 + 16 * u);
        }
        for (int j = 0; j < nk; ++j) {
            __m512 vj[4];
            for (int u = 0; u < 4; ++u) vj[u] = _mm512_maskz_loadu_ps(m[u], v[j] + x0 + 16 * u);
            for (int i = 0; i < 4; ++i) {
                const __m512 wij = _mm512_set1_ps(wp[i][j]);
                for (int u = 0; u < 4; ++u) acc[i][u] = _mm512_fmadd_ps(wij, vj[u], acc[i][u]);
            }
        }
        for (int i = 0; i < nr; ++i) {
            for (int u = 0; u < 4; ++u) _mm512_mask_storeu_ps(ap[i] + x0 + 16 * u, m[u], acc[i][u]);
        }
    }
#else
    for (int i = 0; i < nr; ++i) accumulate(w + i * kKeyChunk, v, nk, a + static_cast<size_t>(i) * d, d);
#endif
}

// ---- PagedAttention ------------------------------------------------------------------------------

constexpr int kQueryTile = 32;  // new tokens per work item (prefill chunks are split in tiles)
constexpr int kGemmRows = 8;    // from this many rows per item, scores go through the transposed chunk

struct AttnJob {
    // tensors
    const uint8_t* query;  // [T, H, D] compute dtype
    bool query_f16;
    const uint8_t* key;  // [T, Hkv, W] stored
    const uint8_t* value;
    const uint8_t* pool;  // [N, 2, B, Hkv, W]
    const int32_t* qsl;
    const int32_t* ctx;
    const int32_t* tables;
    const float* k_scale;
    const float* v_scale;
    int64_t n_k_scale, n_v_scale;
    uint8_t* out;  // [T, H, D] compute dtype
    // sizes
    int64_t num_blocks, block_size, width_m;
    int heads, kv_heads, head_dim, width, groups;
    size_t kv_elem;
    Kv kv;
    // attributes
    float sm_scale, softcap;
    int64_t window;
    // work items: (sequence, KV head, first new token, end new token)
    struct Item {
        int s, kh, q0, q1;
    };
    std::vector<Item> items;
};

void attend_item(const AttnJob& job, const AttnJob::Item& it) {
    const int d = job.head_dim, group = job.heads / job.kv_heads;
    const int nq = it.q1 - it.q0, rows = nq * group;
    const int64_t ctx = job.ctx[it.s], start = job.qsl[it.s];
    const size_t row_bytes = static_cast<size_t>(job.width) * job.kv_elem;
    const size_t pool_token_bytes = static_cast<size_t>(job.kv_heads) * row_bytes;  // one slot of K (or V)
    const float ks = scale_at(job.k_scale, job.n_k_scale, it.kh), vs = scale_at(job.v_scale, job.n_v_scale, it.kh);

    thread_local std::vector<float> scratch;
    const size_t need = static_cast<size_t>(rows) * d * 2 + static_cast<size_t>(rows) * (kKeyChunk + 2) +
                        static_cast<size_t>(kKeyChunk) * d * 3;
    if (scratch.size() < need) scratch.resize(need);
    float* q = scratch.data();                       // [rows, D] scaled queries
    float* acc = q + static_cast<size_t>(rows) * d;  // [rows, D]
    float* score = acc + static_cast<size_t>(rows) * d;  // [rows, KC]
    float* row_max = score + static_cast<size_t>(rows) * kKeyChunk;
    float* row_sum = row_max + rows;
    float* kbuf = row_sum + rows;  // [KC, D]
    float* vbuf = kbuf + static_cast<size_t>(kKeyChunk) * d;
    float* kt = vbuf + static_cast<size_t>(kKeyChunk) * d;  // [D, KC] transposed keys (many rows)

    const size_t q_elem = job.query_f16 ? 2 : 4;
    for (int i = 0; i < nq; ++i) {
        for (int g = 0; g < group; ++g) {
            const int r = i * group + g, h = it.kh * group + g;
            const uint8_t* src = job.query + ((start + it.q0 + i) * job.heads + h) * d * q_elem;
            load_compute(src, job.query_f16, d, q + static_cast<size_t>(r) * d);
            for (int x = 0; x < d; ++x) q[static_cast<size_t>(r) * d + x] *= job.sm_scale;
        }
    }
    std::fill(acc, acc + static_cast<size_t>(rows) * d, 0.f);
    std::fill(row_max, row_max + rows, -std::numeric_limits<float>::infinity());
    std::fill(row_sum, row_sum + rows, 0.f);

    const int64_t last_pos = ctx + it.q1 - 1;  // the tile's last query sees keys up to here
    int64_t first_pos = 0;
    if (job.window > 0) first_pos = std::max<int64_t>(0, ctx + it.q0 - job.window + 1);
    const float* krow[kKeyChunk];
    const float* vrow[kKeyChunk];
    for (int64_t k0 = first_pos; k0 <= last_pos; k0 += kKeyChunk) {
        const int nk = static_cast<int>(std::min<int64_t>(kKeyChunk, last_pos - k0 + 1));
        for (int j = 0; j < nk; ++j) {
            const int64_t p = k0 + j;
            const uint8_t *kr, *vr;
            if (p < ctx) {
                const int64_t blk = job.tables[it.s * job.width_m + p / job.block_size];
                const uint8_t* base = job.pool + pool_token_offset(blk, p % job.block_size, job.block_size,
                                                                   pool_token_bytes) + it.kh * row_bytes;
                kr = base;
                vr = base + job.block_size * pool_token_bytes;
            } else {
                const size_t off = ((start + (p - ctx)) * job.kv_heads + it.kh) * row_bytes;
                kr = job.key + off;
                vr = job.value + off;
            }
            krow[j] = decode_row(kr, job.kv, d, job.groups, ks, kbuf + static_cast<size_t>(j) * d);
            vrow[j] = decode_row(vr, job.kv, d, job.groups, vs, vbuf + static_cast<size_t>(j) * d);
        }
        // Many rows (prefill tiles, wide GQA groups): scores as a small GEMM over the chunk's
        // keys transposed to [D, KC], no horizontal sums. Few rows (decode): one dot per key.
        const bool gemm = rows >= kGemmRows;
        if (gemm) {
            for (int x = 0; x < d; ++x) {
                float* col = kt + static_cast<size_t>(x) * kKeyChunk;
                for (int j = 0; j < nk; ++j) col[j] = krow[j][x];
                for (int j = nk; j < kKeyChunk; ++j) col[j] = 0.f;
            }
        }
        // Scores of every row over the chunk.
        if (gemm) {
            for (int r0 = 0; r0 < rows; r0 += 4) {
                score_block4(q + static_cast<size_t>(r0) * d, d, kt, std::min(4, rows - r0),
                             score + static_cast<size_t>(r0) * kKeyChunk);
            }
        } else {
            for (int r = 0; r < rows; ++r) {
                float* sc = score + static_cast<size_t>(r) * kKeyChunk;
                for (int j = 0; j < nk; ++j) sc[j] = dot(q + static_cast<size_t>(r) * d, krow[j], d);
            }
        }
        // Per row: mask, soft-cap, online-softmax rescale; the row's scores become its weights.
        for (int r = 0; r < rows; ++r) {
            const int64_t qpos = ctx + it.q0 + r / group;
            const int64_t lo = job.window > 0 ? qpos - job.window + 1 : 0;
            float* sc = score + static_cast<size_t>(r) * kKeyChunk;
            if (job.softcap > 0.f) {
                for (int j = 0; j < nk; ++j) sc[j] = job.softcap * std::tanh(sc[j] / job.softcap);
            }
            float cmax;
            if (k0 >= lo && k0 + nk - 1 <= qpos) {
                cmax = max_of(sc, nk);  // the whole chunk is visible to this row (long histories)
            } else {
                cmax = -std::numeric_limits<float>::infinity();
                for (int j = 0; j < nk; ++j) {
                    const int64_t p = k0 + j;
                    const float s = (p > qpos || p < lo) ? -std::numeric_limits<float>::infinity() : sc[j];
                    sc[j] = s;
                    cmax = std::max(cmax, s);
                }
            }
            if (cmax == -std::numeric_limits<float>::infinity()) {
                std::fill(sc, sc + kKeyChunk, 0.f);  // no visible key here: weighs nothing
                continue;
            }
            float* a = acc + static_cast<size_t>(r) * d;
            const float m_new = std::max(row_max[r], cmax);
            if (m_new > row_max[r]) {
                const float alpha = std::exp(row_max[r] - m_new);  // 0 for the first chunk
                row_sum[r] *= alpha;
                for (int x = 0; x < d; ++x) a[x] *= alpha;
                row_max[r] = m_new;
            }
            row_sum[r] += softmax_weights(sc, nk, m_new);
        }
        // Weighted values into each row's accumulator.
        if (gemm) {
            for (int r0 = 0; r0 < rows; r0 += 4) {
                accumulate_block4(score + static_cast<size_t>(r0) * kKeyChunk, vrow, nk,
                                  acc + static_cast<size_t>(r0) * d, std::min(4, rows - r0), d);
            }
        } else {
            for (int r = 0; r < rows; ++r) {
                accumulate(score + static_cast<size_t>(r) * kKeyChunk, vrow, nk, acc + static_cast<size_t>(r) * d, d);
            }
        }
    }
    for (int i = 0; i < nq; ++i) {
        for (int g = 0; g < group; ++g) {
            const int r = i * group + g, h = it.kh * group + g;
            const float inv = row_sum[r] > 0.f ? 1.f / row_sum[r] : 0.f;
            const float* a = acc + static_cast<size_t>(r) * d;
            const size_t o = ((start + it.q0 + i) * job.heads + h) * static_cast<size_t>(d);
            if (job.query_f16) {
                auto* dst = reinterpret_cast<uint16_t*>(job.out) + o;
                for (int x = 0; x < d; ++x) dst[x] = __float2half_rn(a[x] * inv).__x;
            } else {
                auto* dst = reinterpret_cast<float*>(job.out) + o;
                for (int x = 0; x < d; ++x) dst[x] = a[x] * inv;
            }
        }
    }
}

void attend_one(void* data, size_t i) {
    const auto* job = static_cast<const AttnJob*>(data);
    attend_item(*job, job->items[i]);
}

//! Runs f; an exception becomes an ONNX Runtime status (``prefix`` + its message, ``code``).
template <typename F>
OrtStatusPtr guarded(F&& f, const char* prefix = "", OrtErrorCode code = ORT_INVALID_ARGUMENT) {
    try {
        f();
        return nullptr;
    } catch (const std::exception& e) {
        return Ort::Status((std::string(prefix) + e.what()).c_str(), code).release();
    }
}

float attr_float(const OrtKernelInfo* info, const char* name, float fallback) {
    try {
        return Ort::ConstKernelInfo(info).GetAttribute<float>(name);
    } catch (const Ort::Exception&) {
        return fallback;
    }
}

int64_t attr_int(const OrtKernelInfo* info, const char* name, int64_t fallback) {
    try {
        return Ort::ConstKernelInfo(info).GetAttribute<int64_t>(name);
    } catch (const Ort::Exception&) {
        return fallback;
    }
}

bool is_compute(ONNXTensorElementDataType t) {
    return t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
}

struct PagedAttentionKernel {
    float scale, softcap;
    int64_t window;
    explicit PagedAttentionKernel(const OrtKernelInfo* info)
        : scale(attr_float(info, "scale", 0.f)),
          softcap(attr_float(info, "softcap", 0.f)),
          window(attr_int(info, "sliding_window", 0)) {}

    OrtStatusPtr ComputeV2(OrtKernelContext* context) {
        return guarded([&] { compute(context); }, "trtkv::PagedAttention (native): ");
    }

    void compute(OrtKernelContext* context) {
        Ort::KernelContext ctx(context);
        auto query = ctx.GetInput(0), key = ctx.GetInput(1), value = ctx.GetInput(2), pool = ctx.GetInput(3);
        auto qsl = ctx.GetInput(4), ctx_lens = ctx.GetInput(5), block_tables = ctx.GetInput(6);
        auto k_scale = ctx.GetInput(7), v_scale = ctx.GetInput(8);
        auto qs = shape_of(query), ks = shape_of(key), ps = shape_of(pool), ts = shape_of(block_tables);
        const auto qtype = query.GetTensorTypeAndShapeInfo().GetElementType();
        if (!is_compute(qtype)) fail("query must be float32 or float16");
        if (qs.size() != 3 || ks.size() != 3 || ps.size() != 5 || ts.size() != 2) fail("bad input ranks");
        const int64_t num_tokens = qs[0], heads = qs[1], d = qs[2];
        const int64_t hkv = ps[3], width = ps[4];
        if (hkv <= 0 || heads % hkv != 0) fail("num_heads must be a multiple of num_kv_heads");
        if (ks[0] != num_tokens || ks[1] != hkv || ks[2] != width || shape_of(value) != ks) {
            fail("key / value must be [T, num_kv_heads, pool width] like the pool");
        }
        if (width < d) fail("pool rows are narrower than head_dim");
        const int64_t groups = width - d;
        const auto ktype = key.GetTensorTypeAndShapeInfo().GetElementType();
        const Kv kv = kv_of(ktype, groups > 0);
        if (groups > 0 && (kv != Kv::kINT8Dynamic || d % groups != 0)) fail("pool width does not fit dynamic scales");
        if (elem_size(pool.GetTensorTypeAndShapeInfo().GetElementType()) != elem_size(ktype)) {
            fail("pool and stored keys differ in element size");
        }
        if (value.GetTensorTypeAndShapeInfo().GetElementType() != ktype) fail("key and value must have one dtype");
        check_index(qsl, 1, "query_start_loc");
        check_index(ctx_lens, 1, "context_lens");
        check_index(block_tables, 2, "block_tables");
        const int64_t num_seqs = shape_of(ctx_lens)[0];
        if (shape_of(qsl)[0] != num_seqs + 1 || ts[0] != num_seqs) fail("query_start_loc / block_tables / context_lens disagree");
        check_scales(k_scale, hkv, "k_scale");
        check_scales(v_scale, hkv, "v_scale");

        AttnJob job;
        job.query = static_cast<const uint8_t*>(query.GetTensorRawData());
        job.query_f16 = qtype == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
        job.key = static_cast<const uint8_t*>(key.GetTensorRawData());
        job.value = static_cast<const uint8_t*>(value.GetTensorRawData());
        job.pool = static_cast<const uint8_t*>(pool.GetTensorRawData());
        job.qsl = qsl.GetTensorData<int32_t>();
        job.ctx = ctx_lens.GetTensorData<int32_t>();
        job.tables = block_tables.GetTensorData<int32_t>();
        job.k_scale = k_scale.GetTensorData<float>();
        job.v_scale = v_scale.GetTensorData<float>();
        job.n_k_scale = k_scale.GetTensorTypeAndShapeInfo().GetElementCount();
        job.n_v_scale = v_scale.GetTensorTypeAndShapeInfo().GetElementCount();
        job.num_blocks = ps[0];
        job.block_size = ps[2];
        job.width_m = ts[1];
        job.heads = static_cast<int>(heads);
        job.kv_heads = static_cast<int>(hkv);
        job.head_dim = static_cast<int>(d);
        job.width = static_cast<int>(width);
        job.groups = static_cast<int>(groups);
        job.kv_elem = elem_size(ktype);
        job.kv = kv;
        job.sm_scale = scale > 0.f ? scale : 1.f / std::sqrt(static_cast<float>(d));
        job.softcap = softcap;
        job.window = window;
        if (ps[1] != 2 || job.block_size <= 0) fail("kv_cache must be [N, 2, B, Hkv, W]");

        // Validate the packing and every block id a sequence's history reads.
        if (job.qsl[0] != 0 || job.qsl[num_seqs] != num_tokens) fail("query_start_loc must run from 0 to T");
        for (int64_t s = 0; s < num_seqs; ++s) {
            const int64_t lo = job.qsl[s], hi = job.qsl[s + 1], n = hi - lo, c = job.ctx[s];  // int64: no wrap
            if (n < 0 || lo < 0 || hi > num_tokens) fail("query_start_loc must not decrease and stay within [0, T]");
            if (c < 0) fail("context_lens must be >= 0");
            const int64_t used = (c + job.block_size - 1) / job.block_size;
            if (used > job.width_m) fail("context_lens[" + std::to_string(s) + "] needs more blocks than block_tables has");
            for (int64_t b = 0; b < used; ++b) {
                const int64_t blk = job.tables[s * job.width_m + b];
                if (blk < 0 || blk >= job.num_blocks) {
                    fail("block id " + std::to_string(blk) + " of sequence " + std::to_string(s) + " is outside the pool");
                }
            }
            for (int64_t q0 = 0; q0 < n; q0 += kQueryTile) {
                for (int kh = 0; kh < job.kv_heads; ++kh) {
                    job.items.push_back({static_cast<int>(s), kh, static_cast<int>(q0),
                                         static_cast<int>(std::min<int64_t>(n, q0 + kQueryTile))});
                }
            }
        }
        auto out = ctx.GetOutput(0, qs);
        job.out = static_cast<uint8_t*>(out.GetTensorMutableRawData());
        if (job.items.size() == 1) {
            attend_item(job, job.items[0]);
        } else if (!job.items.empty()) {
            ctx.ParallelFor(attend_one, job.items.size(), 0, &job);
        }
    }
};

// ---- type and shape inference (the outputs' types follow the inputs) ----------------------------

struct Dims {
    std::vector<int64_t> ints;
    std::vector<const char*> syms;
    ONNXTensorElementDataType type;
};

Dims input_dims(const OrtApi& api, OrtShapeInferContext* ctx, size_t index) {
    OrtTensorTypeAndShapeInfo* info = nullptr;  // owned by the context
    Ort::ThrowOnError(api.ShapeInferContext_GetInputTypeShape(ctx, index, &info));
    Dims d;
    size_t n = 0;
    Ort::ThrowOnError(api.GetDimensionsCount(info, &n));
    d.ints.resize(n);
    d.syms.resize(n);
    if (n > 0) {
        Ort::ThrowOnError(api.GetDimensions(info, d.ints.data(), n));
        Ort::ThrowOnError(api.GetSymbolicDimensions(info, d.syms.data(), n));
    }
    Ort::ThrowOnError(api.GetTensorElementType(info, &d.type));
    return d;
}

void set_output(const OrtApi& api, OrtShapeInferContext* ctx, size_t index, const Dims& d) {
    OrtTensorTypeAndShapeInfo* info = nullptr;
    Ort::ThrowOnError(api.CreateTensorTypeAndShapeInfo(&info));
    std::unique_ptr<OrtTensorTypeAndShapeInfo, void (*)(OrtTensorTypeAndShapeInfo*)> owned(
        info, [](OrtTensorTypeAndShapeInfo* p) { Ort::GetApi().ReleaseTensorTypeAndShapeInfo(p); });
    Ort::ThrowOnError(api.SetTensorElementType(info, d.type));
    Ort::ThrowOnError(api.SetDimensions(info, d.ints.data(), d.ints.size()));
    std::vector<const char*> syms(d.syms.size());
    for (size_t i = 0; i < syms.size(); ++i) syms[i] = d.syms[i] != nullptr ? d.syms[i] : "";
    Ort::ThrowOnError(api.SetSymbolicDimensions(info, syms.data(), syms.size()));
    Ort::ThrowOnError(api.ShapeInferContext_SetOutputTypeShape(ctx, index, info));
}

// PagedAttention: output = the query's type and shape.
OrtStatusPtr infer_paged_attention(const OrtCustomOp*, OrtShapeInferContext* ctx) {
    return guarded([&] {
        const OrtApi& api = Ort::GetApi();
        set_output(api, ctx, 0, input_dims(api, ctx, 0));
    });
}

// KVAppend: stored codes [T, Hkv, W] of the pool's type (a uint8-bound fp8 pool stores E4M3).
OrtStatusPtr infer_kv_append(const OrtCustomOp*, OrtShapeInferContext* ctx) {
    return guarded([&] {
        const OrtApi& api = Ort::GetApi();
        Dims key = input_dims(api, ctx, 0), pool = input_dims(api, ctx, 3);
        if (key.ints.size() != 3 || pool.ints.size() != 5) throw std::invalid_argument("KVAppend: bad input ranks");
        Dims out;
        out.type = pool.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT8E4M3FN
                                                                    : pool.type;
        out.ints = {key.ints[0], key.ints[1], pool.ints[4]};
        out.syms = {key.syms[0], key.syms[1], pool.syms[4]};
        set_output(api, ctx, 0, out);
        set_output(api, ctx, 1, out);
    });
}

struct PagedAttentionOp : Ort::CustomOpBase<PagedAttentionOp, PagedAttentionKernel, true> {
    PagedAttentionOp() { InferOutputShapeFn = infer_paged_attention; }
    OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
        return guarded([&] { *kernel = new PagedAttentionKernel(info); }, "", ORT_FAIL);
    }
    const char* GetName() const { return "PagedAttention"; }
    size_t GetInputTypeCount() const { return 9; }
    ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED; }
    size_t GetOutputTypeCount() const { return 1; }
    ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED; }
};

// ---- KVAppend ------------------------------------------------------------------------------------

struct AppendJob {
    const uint8_t* key;
    const uint8_t* value;
    bool f16;
    uint8_t* key_out;
    uint8_t* value_out;
    const float* k_scale;
    const float* v_scale;
    int64_t n_k_scale, n_v_scale;
    int kv_heads, head_dim, width, groups;
    size_t kv_elem;
    Kv kv;
};

void append_token(void* data, size_t t) {
    const auto& job = *static_cast<const AppendJob*>(data);
    const int d = job.head_dim;
    const size_t in_elem = job.f16 ? 2 : 4, row_bytes = static_cast<size_t>(job.width) * job.kv_elem;
    thread_local std::vector<float> buf;
    buf.resize(d);
    for (int h = 0; h < job.kv_heads; ++h) {
        const size_t in_off = (t * job.kv_heads + h) * static_cast<size_t>(d) * in_elem;
        const size_t out_off = (t * job.kv_heads + h) * row_bytes;
        load_compute(job.key + in_off, job.f16, d, buf.data());
        encode_row(buf.data(), d, job.groups, job.kv, scale_at(job.k_scale, job.n_k_scale, h), job.key_out + out_off);
        load_compute(job.value + in_off, job.f16, d, buf.data());
        encode_row(buf.data(), d, job.groups, job.kv, scale_at(job.v_scale, job.n_v_scale, h), job.value_out + out_off);
    }
}

struct KVAppendKernel {
    bool write_pool;
    explicit KVAppendKernel(const OrtKernelInfo* info) : write_pool(attr_int(info, "write_pool", 0) != 0) {}

    OrtStatusPtr ComputeV2(OrtKernelContext* context) {
        return guarded([&] { compute(context); }, "trtkv::KVAppend (native): ");
    }

    void compute(OrtKernelContext* context) {
        Ort::KernelContext ctx(context);
        auto key = ctx.GetInput(0), value = ctx.GetInput(1), slots = ctx.GetInput(2), pool = ctx.GetInput(3);
        auto k_scale = ctx.GetInput(4), v_scale = ctx.GetInput(5);
        auto ks = shape_of(key), ps = shape_of(pool);
        const auto ctype = key.GetTensorTypeAndShapeInfo().GetElementType();
        if (!is_compute(ctype) || value.GetTensorTypeAndShapeInfo().GetElementType() != ctype) {
            fail("key / value must be float32 or float16, both the same");
        }
        if (ks.size() != 3 || ps.size() != 5 || shape_of(value) != ks) fail("key / value must be [T, Hkv, D]; kv_cache [N, 2, B, Hkv, W]");
        const int64_t num_tokens = ks[0], hkv = ks[1], d = ks[2], width = ps[4];
        if (ps[1] != 2 || ps[3] != hkv || width < d || ps[2] <= 0) fail("kv_cache must be [N, 2, B, Hkv, W >= D]");
        if (shape_of(slots).size() != 1 || shape_of(slots)[0] != num_tokens ||
            slots.GetTensorTypeAndShapeInfo().GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64) {
            fail("slot_mapping must be int64 [T]");
        }
        const int64_t groups = width - d;
        const auto ptype = pool.GetTensorTypeAndShapeInfo().GetElementType();
        const Kv kv = kv_of(ptype, groups > 0);
        if (groups > 0 && (kv != Kv::kINT8Dynamic || d % groups != 0)) fail("pool width does not fit dynamic scales");
        check_scales(k_scale, hkv, "k_scale");
        check_scales(v_scale, hkv, "v_scale");
        AppendJob job;
        job.key = static_cast<const uint8_t*>(key.GetTensorRawData());
        job.value = static_cast<const uint8_t*>(value.GetTensorRawData());
        job.f16 = ctype == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
        const int64_t* slots_data = slots.GetTensorData<int64_t>();
        const int64_t block_size = ps[2];
        job.k_scale = k_scale.GetTensorData<float>();
        job.v_scale = v_scale.GetTensorData<float>();
        job.n_k_scale = k_scale.GetTensorTypeAndShapeInfo().GetElementCount();
        job.n_v_scale = v_scale.GetTensorTypeAndShapeInfo().GetElementCount();
        job.kv_heads = static_cast<int>(hkv);
        job.head_dim = static_cast<int>(d);
        job.width = static_cast<int>(width);
        job.groups = static_cast<int>(groups);
        job.kv_elem = elem_size(ptype);
        job.kv = kv;
        const int64_t num_slots = ps[0] * block_size;
        for (int64_t t = 0; t < num_tokens; ++t) {
            if (slots_data[t] >= num_slots) fail("slot " + std::to_string(slots_data[t]) + " is outside the pool");
        }
        const std::vector<int64_t> out_shape{num_tokens, hkv, width};
        job.key_out = static_cast<uint8_t*>(ctx.GetOutput(0, out_shape).GetTensorMutableRawData());
        job.value_out = static_cast<uint8_t*>(ctx.GetOutput(1, out_shape).GetTensorMutableRawData());
        // Encode (in parallel for long steps), then scatter into the pool in token order, so a
        // slot given twice ends with the later token, as the reference writes it. The pool is a
        // graph input bound zero-copy over the runtime's pool array (write_pool is set only by
        // that backend); slots address rows no sequence of this step reads.
        if (num_tokens > 64) {
            ctx.ParallelFor(append_token, static_cast<size_t>(num_tokens), 0, &job);
        } else {
            for (int64_t t = 0; t < num_tokens; ++t) append_token(&job, static_cast<size_t>(t));
        }
        if (write_pool) {
            auto* pool_bytes = const_cast<uint8_t*>(static_cast<const uint8_t*>(pool.GetTensorRawData()));
            const size_t token_bytes = static_cast<size_t>(job.kv_heads) * job.width * job.kv_elem;
            for (int64_t t = 0; t < num_tokens; ++t) {
                if (slots_data[t] < 0) continue;
                uint8_t* k_dst = pool_bytes + pool_token_offset(slots_data[t] / block_size, slots_data[t] % block_size,
                                                                block_size, token_bytes);
                std::memcpy(k_dst, job.key_out + t * token_bytes, token_bytes);
                std::memcpy(k_dst + block_size * token_bytes, job.value_out + t * token_bytes, token_bytes);
            }
        }
    }
};

struct KVAppendOp : Ort::CustomOpBase<KVAppendOp, KVAppendKernel, true> {
    KVAppendOp() { InferOutputShapeFn = infer_kv_append; }
    OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
        return guarded([&] { *kernel = new KVAppendKernel(info); }, "", ORT_FAIL);
    }
    const char* GetName() const { return "KVAppend"; }
    size_t GetInputTypeCount() const { return 6; }
    ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED; }
    size_t GetOutputTypeCount() const { return 2; }
    ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED; }
};

// ---- MatMulBf16 (domain trtkv.cpu: the backend's own op, not part of the export contract) -------

// Y[..., N] float32 = X[..., K] float32 (rounded to bf16) x W (bf16, packed for AMX:
// [ceil(N/32), ceil(K/32), 2, 16, 32], amx_matmul.h), float32 accumulation. Attributes k, n.
struct MatMulJob {
    const float* x;
    uint16_t* a;
    const uint16_t* packed;
    float* y;
    int64_t m, k, kp, n, panels, blocks;
};

// Rounds block `index` (32 rows) of X into the bf16 copy; rows past m are zero.
void convert_block(void* data, size_t index) {
#if TRTKV_HAVE_AMX_CODE
    const auto& job = *static_cast<const MatMulJob*>(data);
    const int64_t row0 = static_cast<int64_t>(index) * amx::kBlockRows;
    const int64_t rows = std::min(amx::kBlockRows, job.m - row0);
    amx::to_bf16_rows(job.x + row0 * job.k, rows, job.k, job.kp, job.a + row0 * job.kp);
    std::memset(job.a + (row0 + rows) * job.kp, 0, static_cast<size_t>((amx::kBlockRows - rows) * job.kp) * 2);
#else
    (void)data;
    (void)index;
#endif
}

void matmul_item(void* data, size_t index) {
#if TRTKV_HAVE_AMX_CODE
    const auto& job = *static_cast<const MatMulJob*>(data);
    const int64_t chunk = static_cast<int64_t>(index) / job.panels, p = static_cast<int64_t>(index) % job.panels;
    const int64_t blk0 = chunk * amx::kChunkBlocks;
    const int64_t blk1 = std::min(job.blocks, blk0 + amx::kChunkBlocks);
    amx::run_item(job.a, job.m, job.kp, job.packed, job.n, p, blk0, blk1, job.y);
#else
    (void)data;
    (void)index;
#endif
}

struct MatMulBf16Kernel {
    int64_t k, n;
    explicit MatMulBf16Kernel(const OrtKernelInfo* info) : k(attr_int(info, "k", 0)), n(attr_int(info, "n", 0)) {
        if (k <= 0 || n <= 0) fail("attributes k and n must be positive");
        if (!amx::amx_available()) fail("this CPU (or kernel) does not allow AMX-BF16; run with --cpu-matmul fp32");
    }

    OrtStatusPtr ComputeV2(OrtKernelContext* context) {
        return guarded([&] { compute(context); }, "trtkv.cpu::MatMulBf16 (native): ");
    }

    void compute(OrtKernelContext* context) {
        Ort::KernelContext ctx(context);
        auto x = ctx.GetInput(0), w = ctx.GetInput(1);
        auto xs = shape_of(x), ws = shape_of(w);
        if (x.GetTensorTypeAndShapeInfo().GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) fail("X must be float32");
        if (w.GetTensorTypeAndShapeInfo().GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16) fail("W must be bf16");
        const int64_t kp = amx::round_up(k, amx::kStep), panels = amx::round_up(n, amx::kPanel) / amx::kPanel;
        const std::vector<int64_t> packed_shape{panels, kp / amx::kStep, 2, 16, amx::kStep};
        if (ws != packed_shape) fail("W is not packed for k = " + std::to_string(k) + ", n = " + std::to_string(n));
        if (xs.empty() || xs.back() != k) fail("X's last dimension must be k = " + std::to_string(k));
        int64_t m = 1;
        for (size_t i = 0; i + 1 < xs.size(); ++i) m *= xs[i];
        std::vector<int64_t> ys(xs);
        ys.back() = n;
        auto out = ctx.GetOutput(0, ys);
        if (m == 0) return;
#if TRTKV_HAVE_AMX_CODE
        const int64_t blocks = amx::round_up(m, amx::kBlockRows) / amx::kBlockRows;
        std::unique_ptr<uint16_t[]> a(new uint16_t[static_cast<size_t>(blocks * amx::kBlockRows * kp)]);
        MatMulJob job{x.GetTensorData<float>(), a.get(), static_cast<const uint16_t*>(w.GetTensorRawData()),
                      out.GetTensorMutableData<float>(), m, k, kp, n, panels, blocks};
        if (blocks == 1) {
            convert_block(&job, 0);
        } else {
            ctx.ParallelFor(convert_block, static_cast<size_t>(blocks), 0, &job);
        }
        const int64_t chunks = (blocks + amx::kChunkBlocks - 1) / amx::kChunkBlocks;
        ctx.ParallelFor(matmul_item, static_cast<size_t>(chunks * panels), 0, &job);
#endif
    }
};

// Y: X's shape with the last dimension n, float32.
OrtStatusPtr infer_matmul_bf16(const OrtCustomOp*, OrtShapeInferContext* ctx) {
    return guarded([&] {
        const OrtApi& api = Ort::GetApi();
        Dims y = input_dims(api, ctx, 0);
        if (y.ints.empty()) throw std::invalid_argument("MatMulBf16: X must have a rank >= 1");
        Ort::ShapeInferContext infer(&api, ctx);
        y.ints.back() = infer.GetAttrInt("n");
        y.syms.back() = nullptr;
        y.type = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
        set_output(api, ctx, 0, y);
    });
}

struct MatMulBf16Op : Ort::CustomOpBase<MatMulBf16Op, MatMulBf16Kernel, true> {
    MatMulBf16Op() { InferOutputShapeFn = infer_matmul_bf16; }
    OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
        return guarded([&] { *kernel = new MatMulBf16Kernel(info); }, "trtkv.cpu::MatMulBf16: ", ORT_FAIL);
    }
    const char* GetName() const { return "MatMulBf16"; }
    size_t GetInputTypeCount() const { return 2; }
    ONNXTensorElementDataType GetInputType(size_t i) const {
        return i == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
    }
    size_t GetOutputTypeCount() const { return 1; }
    ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

const PagedAttentionOp kPagedAttention;
const KVAppendOp kKVAppend;
const MatMulBf16Op kMatMulBf16;

}  // namespace

extern "C" {

//! ONNX Runtime's entry point (SessionOptions.register_custom_ops_library).
__attribute__((visibility("default"))) OrtStatus* RegisterCustomOps(OrtSessionOptions* options,
                                                                   const OrtApiBase* api_base) {
    const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
    if (api == nullptr) {
        // Older runtime than these headers: make the status with the oldest API there is.
        const OrtApi* oldest = api_base->GetApi(1);
        return oldest->CreateStatus(ORT_FAIL, "trtkv native ops: this ONNX Runtime is older than the headers they were built with");
    }
    Ort::InitApi(api);
    try {
        static std::mutex lock;
        static std::vector<Ort::CustomOpDomain> domains;  // must outlive every session
        const std::lock_guard<std::mutex> hold(lock);
        Ort::CustomOpDomain domain("trtkv");
        domain.Add(&kKVAppend);
        domain.Add(&kPagedAttention);
        Ort::CustomOpDomain cpu_domain("trtkv.cpu");
        cpu_domain.Add(&kMatMulBf16);
        Ort::UnownedSessionOptions(options).Add(domain);
        Ort::UnownedSessionOptions(options).Add(cpu_domain);
        domains.push_back(std::move(domain));
        domains.push_back(std::move(cpu_domain));
    } catch (const std::exception& e) {
        return api->CreateStatus(ORT_FAIL, e.what());
    }
    return nullptr;
}

//! 1 when this CPU and kernel run trtkv.cpu::MatMulBf16 (AMX-BF16), else 0.
__attribute__((visibility("default"))) int trtkv_native_amx_bf16() { return amx::amx_available() ? 1 : 0; }

//! The dynamic-scale tables this library encodes with (tests compare them with the reference).
__attribute__((visibility("default"))) void trtkv_native_dynamic_tables(float* scales, float* thresholds) {
    std::memcpy(scales, tables().dyn_scale, sizeof(tables().dyn_scale));
    std::memcpy(thresholds, tables().dyn_threshold, sizeof(tables().dyn_threshold));
}

}  // extern "C"
