// FlashInfer FA2 batch-prefill kernels bound to the trtkv PagedAttention semantics.
//
// Included by exactly one TU per (head_dim, query dtype) — fi_prefill_hd<D>_<dtype>.cu — which
// calls TRTKV_FI_INSTANTIATE. Everything FlashInfer-specific lives here: the Params structs the
// FA2 kernels read (FlashInfer's customization point, cf. its batch_prefill_customize_config),
// the attention variant (trtkv's scale / soft-cap / sliding window / fp8 dequant scales), and
// the dispatch over KV dtype and CTA_TILE_Q.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <exception>
#include <type_traits>

#include <flashinfer/attention/prefill.cuh>
#include <flashinfer/attention/variant_helper.cuh>
#include <flashinfer/fastdiv.cuh>
#include <flashinfer/layout.cuh>
#include <flashinfer/math.cuh>
#include <flashinfer/page.cuh>
#include <flashinfer/pos_enc.cuh>

#include "fi_launch.h"

namespace trtkv {
namespace flashinfer_attn {
namespace detail {

//! trtkv's extra per-launch fields, shared by both Params structs.
struct TrtkvFields {
    float sm_scale;
    float softcap;              //!< 0 = off
    float const* k_scale;
    float const* v_scale;
    int32_t k_scale_numel;
    int32_t v_scale_numel;
    uint32_t sliding_window;    //!< 0 = off
};

//! Part (a): paged history. Field names are the ones FlashInfer's FA2 kernels read.
template <typename TQ, typename TKV>
struct HistoryParams : TrtkvFields {
    using DTypeQ = TQ;
    using DTypeKV = TKV;
    using DTypeO = TQ;
    using IdType = int32_t;
    //! A query at index i sits after all kv_len history keys: position kv_len + i.
    static constexpr bool kQueriesFollowKV = true;

    DTypeQ* q;
    flashinfer::paged_kv_t<DTypeKV, IdType> paged_kv;
    IdType* q_indptr;
    DTypeO* o;
    float* lse;
    flashinfer::uint_fastdiv group_size;
    uint32_t num_qo_heads;
    IdType q_stride_n;
    IdType q_stride_h;
    uint32_t k_sf_stride_page, k_sf_stride_n, k_sf_stride_h;
    uint32_t v_sf_stride_page, v_sf_stride_n, v_sf_stride_h;
    int32_t window_left;
    IdType* request_indices;
    IdType* qo_tile_indices;
    IdType* kv_tile_indices;
    IdType* merge_indptr;
    IdType* o_indptr;
    bool* block_valid_mask;
    IdType* kv_chunk_size_ptr;
    uint32_t max_total_num_rows;
    uint32_t* total_num_rows;
    uint32_t padded_batch_size;
    bool partition_kv;

    __host__ __device__ __forceinline__ uint32_t get_qo_len(uint32_t b) const { return q_indptr[b + 1] - q_indptr[b]; }
    __host__ __device__ __forceinline__ uint32_t get_kv_len(uint32_t b) const { return paged_kv.get_length(b); }
};

//! Part (b): the step's own K/V, ragged by query_start_loc (kv_indptr == q_indptr).
template <typename TQ, typename TKV>
struct NewTokenParams : TrtkvFields {
    using DTypeQ = TQ;
    using DTypeKV = TKV;
    using DTypeO = TQ;
    using IdType = int32_t;
    //! Queries and keys are the same tokens: query i sits at key position i.
    static constexpr bool kQueriesFollowKV = false;

    DTypeQ* q;
    DTypeKV* k;
    DTypeKV* v;
    IdType* q_indptr;
    IdType* kv_indptr;
    DTypeO* o;
    float* lse;
    flashinfer::uint_fastdiv group_size;
    uint32_t num_qo_heads;
    uint32_t num_kv_heads;
    uint32_t q_stride_n, q_stride_h;
    uint32_t k_stride_n, k_stride_h;
    uint32_t v_stride_n, v_stride_h;
    uint32_t k_sf_stride_page, k_sf_stride_n, k_sf_stride_h;
    uint32_t v_sf_stride_page, v_sf_stride_n, v_sf_stride_h;
    int32_t window_left;
    IdType* request_indices;
    IdType* qo_tile_indices;
    IdType* kv_tile_indices;
    IdType* merge_indptr;
    IdType* o_indptr;
    IdType* kv_chunk_size_ptr;
    bool* block_valid_mask;
    uint32_t max_total_num_rows;
    uint32_t* total_num_rows;
    uint32_t padded_batch_size;
    bool partition_kv;

    __host__ __device__ __forceinline__ uint32_t get_qo_len(uint32_t b) const { return q_indptr[b + 1] - q_indptr[b]; }
    __host__ __device__ __forceinline__ uint32_t get_kv_len(uint32_t b) const { return kv_indptr[b + 1] - kv_indptr[b]; }
};

//! trtkv's score and mask on FlashInfer's variant hooks.
//!
//! FlashInfer applies the softmax scale after LogitsTransform (through sm_scale_log2), so the
//! transform sees raw q.k: it multiplies the fp8 K scale in, then soft-caps
//! (tanh(s * scale / c), with sm_scale_log2 = c * log2 e, i.e. score c * tanh(scale*q.k / c)).
//!
//! Sliding window (key k visible from position p iff k > p - W) is LogitsMask. FlashInfer places
//! query i at key position kv_len - qo_len + i and uses window_left for tile skipping
//! (first key max(0, kv_len + q_first - qo_len - window_left)) and for choosing the iterations
//! that get the mask. New tokens (part b) sit where FlashInfer assumes: window_left = W - 1 is
//! FlashInfer's own sliding window. History queries (part a) sit qo_len later (kv_len + i), so
//! FlashInfer's masked-iteration choice would miss keys; part (a) with a window therefore runs
//! MaskMode::kCustom (this LogitsMask on every iteration) and window_left = max(W - 1 - qo_len, 0)
//! keeps the skipped tiles a subset of the invisible keys and the first key <= kv_len. Split-KV
//! chunk counts also read window_left, hence no split-KV with a window
//! (ProblemShape::has_sliding_window).
struct TrtkvAttention : flashinfer::AttentionVariantBase {
    static constexpr bool use_softmax = true;

    uint32_t qo_len, kv_len;
    uint32_t window_left;
    uint32_t q_pos_offset;  //!< key position of query 0
    uint32_t window;        //!< 0 = off
    float sm_scale_log2;
    float soft_cap_pre_tanh_scale;
    float k_scale0, v_scale0;
    bool has_softcap;

    template <typename Params>
    __device__ __forceinline__ TrtkvAttention(Params const& params, uint32_t batch_idx, uint8_t*) {
        qo_len = params.get_qo_len(batch_idx);
        kv_len = params.get_kv_len(batch_idx);
        q_pos_offset = Params::kQueriesFollowKV ? kv_len : kv_len - qo_len;
        window = params.sliding_window;
        // How much later than FlashInfer assumes our queries sit: qo_len (history) or 0 (new).
        uint32_t const shift = q_pos_offset - (kv_len - qo_len);
        window_left = window == 0 ? kv_len : (window - 1u > shift ? window - 1u - shift : 0u);
        has_softcap = params.softcap > 0.f;
        if (has_softcap) {
            soft_cap_pre_tanh_scale = params.sm_scale * flashinfer::math::ptx_rcp(params.softcap);
            sm_scale_log2 = flashinfer::math::log2e * params.softcap;
        } else {
            soft_cap_pre_tanh_scale = 1.f;
            sm_scale_log2 = params.sm_scale * flashinfer::math::log2e;
        }
        constexpr bool kQuantized = sizeof(typename Params::DTypeKV) == 1;
        k_scale0 = kQuantized ? params.k_scale[0] : 1.f;
        v_scale0 = kQuantized ? params.v_scale[0] : 1.f;
    }

    REGISTER_LOGITS_TRANSFORM(params, logits, batch_idx, qo_idx, kv_idx, qo_head_idx, kv_head_idx, {
        if constexpr (sizeof(typename Params::DTypeKV) == 1) {
            logits = logits * (params.k_scale_numel > 1 ? params.k_scale[kv_head_idx] : k_scale0);
        }
        if (has_softcap) {
            logits = float(flashinfer::math::tanh(logits * soft_cap_pre_tanh_scale));
        }
        return logits;
    })

    REGISTER_LOGITS_MASK(params, batch_idx, qo_idx, kv_idx, qo_head_idx, kv_head_idx, {
        return window == 0 || kv_idx + window > q_pos_offset + qo_idx;
    })

    REGISTER_OUTPUT_TRANSFORM(params, output, batch_idx, qo_idx, qo_head_idx, m, d, scale, {
        float const d_rcp = (m != -flashinfer::math::inf) ? flashinfer::math::ptx_rcp(d) : 0.f;
        float vs = 1.f;
        if constexpr (sizeof(typename Params::DTypeKV) == 1) {
            vs = params.v_scale_numel > 1 ? params.v_scale[qo_head_idx / params.group_size] : v_scale0;
        }
        return output * d_rcp * vs;
    })
};

template <DType D> struct CudaType;
template <> struct CudaType<DType::kFP16> { using type = half; };
template <> struct CudaType<DType::kBF16> { using type = __nv_bfloat16; };
template <> struct CudaType<DType::kFP8E4M3> { using type = __nv_fp8_e4m3; };

template <typename P>
void fill_common(P& p, PartArgs const& a) {
    p.sm_scale = a.sm_scale;
    p.softcap = a.softcap;
    p.k_scale = a.k_scale;
    p.v_scale = a.v_scale;
    p.k_scale_numel = a.k_scale_numel;
    p.v_scale_numel = a.v_scale_numel;
    p.sliding_window = static_cast<uint32_t>(a.sliding_window);
    p.q = static_cast<typename P::DTypeQ*>(const_cast<void*>(a.q));
    p.q_indptr = a.q_indptr;
    p.o = static_cast<typename P::DTypeO*>(a.o);
    p.lse = a.lse;
    p.group_size = flashinfer::uint_fastdiv(static_cast<uint32_t>(a.num_heads / a.num_kv_heads));
    p.num_qo_heads = static_cast<uint32_t>(a.num_heads);
    p.k_sf_stride_page = p.k_sf_stride_n = p.k_sf_stride_h = 0;
    p.v_sf_stride_page = p.v_sf_stride_n = p.v_sf_stride_h = 0;
    p.window_left = -1;
    p.request_indices = a.request_indices;
    p.qo_tile_indices = a.qo_tile_indices;
    p.kv_tile_indices = a.kv_tile_indices;
    p.merge_indptr = a.merge_indptr;
    p.o_indptr = a.o_indptr;
    p.kv_chunk_size_ptr = a.kv_chunk_size_ptr;
    p.block_valid_mask = nullptr;
    p.max_total_num_rows = static_cast<uint32_t>(a.total_num_rows);
    p.total_num_rows = nullptr;
    p.padded_batch_size = static_cast<uint32_t>(a.padded_batch_size);
    p.partition_kv = false;
}

// CTA_TILE_Q values FlashInfer's FA2 planner picks for head_dim < 256 (FA2DetermineCtaTileQ).
#define TRTKV_FI_DISPATCH_CTA_TILE_Q(cta_tile_q, CTA_TILE_Q, ...) \
    switch (cta_tile_q) {                                         \
    case 128: { constexpr uint32_t CTA_TILE_Q = 128; __VA_ARGS__ break; } \
    case 64: { constexpr uint32_t CTA_TILE_Q = 64; __VA_ARGS__ break; }   \
    case 16: { constexpr uint32_t CTA_TILE_Q = 16; __VA_ARGS__ break; }   \
    default: return Status::kINTERNAL_ERROR;                      \
    }

template <int HEAD_DIM, typename TQ, typename TKV, flashinfer::MaskMode MASK>
Status history_typed(PartArgs const& a, cudaStream_t stream) {
    using P = HistoryParams<TQ, TKV>;
    P p;
    fill_common(p, a);
    int64_t const page_stride = 2LL * a.block_size * a.num_kv_heads * HEAD_DIM;  // [N, 2, B, Hkv, D]
    int64_t const strides[3] = {page_stride, int64_t(a.num_kv_heads) * HEAD_DIM, HEAD_DIM};
    p.paged_kv = flashinfer::paged_kv_t<TKV, int32_t>(static_cast<uint32_t>(a.num_kv_heads),
        static_cast<uint32_t>(a.block_size), HEAD_DIM, static_cast<uint32_t>(a.num_seqs),
        flashinfer::QKVLayout::kNHD, static_cast<TKV*>(const_cast<void*>(a.k)),
        static_cast<TKV*>(const_cast<void*>(a.v)), strides, strides, a.kv_indices, a.kv_indptr,
        a.kv_last_page_len);
    p.q_stride_n = a.num_heads * HEAD_DIM;
    p.q_stride_h = HEAD_DIM;
    cudaError_t err = cudaSuccess;
    TRTKV_FI_DISPATCH_CTA_TILE_Q(a.cta_tile_q, CTA_TILE_Q, {
        err = flashinfer::BatchPrefillWithPagedKVCacheDispatched</*SAME_KV_STRIDES=*/true, CTA_TILE_Q,
            HEAD_DIM, HEAD_DIM, flashinfer::PosEncodingMode::kNone, /*USE_FP16_QK_REDUCTION=*/false,
            MASK, /*USE_TOKEN_HEAD_SF=*/false, TrtkvAttention, P>(
            p, static_cast<TQ*>(a.tmp_v), a.tmp_s, /*enable_pdl=*/false, stream);
    })
    return err == cudaSuccess ? Status::kOK : Status::kCUDA_ERROR;
}

template <int HEAD_DIM, typename TQ, typename TKV>
Status new_tokens_typed(PartArgs const& a, cudaStream_t stream) {
    using P = NewTokenParams<TQ, TKV>;
    P p;
    fill_common(p, a);
    p.k = static_cast<TKV*>(const_cast<void*>(a.k));
    p.v = static_cast<TKV*>(const_cast<void*>(a.v));
    p.kv_indptr = a.kv_indptr;
    p.num_kv_heads = static_cast<uint32_t>(a.num_kv_heads);
    p.q_stride_n = a.num_heads * HEAD_DIM;
    p.q_stride_h = HEAD_DIM;
    p.k_stride_n = p.v_stride_n = a.num_kv_heads * HEAD_DIM;
    p.k_stride_h = p.v_stride_h = HEAD_DIM;
    cudaError_t err = cudaSuccess;
    TRTKV_FI_DISPATCH_CTA_TILE_Q(a.cta_tile_q, CTA_TILE_Q, {
        err = flashinfer::BatchPrefillWithRaggedKVCacheDispatched<CTA_TILE_Q, HEAD_DIM, HEAD_DIM,
            flashinfer::PosEncodingMode::kNone, /*USE_FP16_QK_REDUCTION=*/false,
            flashinfer::MaskMode::kCausal, /*USE_TOKEN_HEAD_SF=*/false, TrtkvAttention, P>(
            p, static_cast<TQ*>(a.tmp_v), a.tmp_s, /*enable_pdl=*/false, stream);
    })
    return err == cudaSuccess ? Status::kOK : Status::kCUDA_ERROR;
}

// KV dtype dispatch: the pool holds the query dtype or fp8 e4m3 (TRTKV_FI_NO_FP8 drops fp8).
#ifdef TRTKV_FI_NO_FP8
#define TRTKV_FI_FP8_CASE(fn)
#else
#define TRTKV_FI_FP8_CASE(fn) \
    if (a.kv_dtype == DType::kFP8E4M3) return fn<HEAD_DIM, TQ, __nv_fp8_e4m3>(a, stream);
#endif

//! kNone without a window; kCustom (LogitsMask on every KV iteration) with one, see above.
template <int HEAD_DIM, typename TQ, typename TKV>
Status history_masked(PartArgs const& a, cudaStream_t stream) {
    return a.sliding_window > 0 ? history_typed<HEAD_DIM, TQ, TKV, flashinfer::MaskMode::kCustom>(a, stream)
                                : history_typed<HEAD_DIM, TQ, TKV, flashinfer::MaskMode::kNone>(a, stream);
}

template <int HEAD_DIM, DType QDTYPE>
Status run_history(PartArgs const& a, cudaStream_t stream) noexcept {
    using TQ = typename CudaType<QDTYPE>::type;
    try {
        if (a.kv_dtype == QDTYPE) return history_masked<HEAD_DIM, TQ, TQ>(a, stream);
        TRTKV_FI_FP8_CASE(history_masked)
        return Status::kUNSUPPORTED;
    } catch (std::exception const&) {
        return Status::kINTERNAL_ERROR;
    }
}

template <int HEAD_DIM, DType QDTYPE>
Status run_new_tokens(PartArgs const& a, cudaStream_t stream) noexcept {
    using TQ = typename CudaType<QDTYPE>::type;
    try {
        if (a.kv_dtype == QDTYPE) return new_tokens_typed<HEAD_DIM, TQ, TQ>(a, stream);
        TRTKV_FI_FP8_CASE(new_tokens_typed)
        return Status::kUNSUPPORTED;
    } catch (std::exception const&) {
        return Status::kINTERNAL_ERROR;
    }
}

} // namespace detail
} // namespace flashinfer_attn
} // namespace trtkv

//! Explicit instantiation for one (head_dim, query dtype); see README "Adding a head_dim".
#define TRTKV_FI_INSTANTIATE(HEAD_DIM, QDTYPE)                                                   \
    template trtkv::flashinfer_attn::Status                                                      \
    trtkv::flashinfer_attn::detail::run_history<HEAD_DIM, trtkv::flashinfer_attn::DType::QDTYPE>( \
        trtkv::flashinfer_attn::detail::PartArgs const&, cudaStream_t) noexcept;                 \
    template trtkv::flashinfer_attn::Status                                                      \
    trtkv::flashinfer_attn::detail::run_new_tokens<HEAD_DIM, trtkv::flashinfer_attn::DType::QDTYPE>( \
        trtkv::flashinfer_attn::detail::PartArgs const&, cudaStream_t) noexcept;
