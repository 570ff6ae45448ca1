// Internal interface between the planner/orchestrator (fi_plan.cu) and the per-(head_dim,
// query dtype) FlashInfer instantiations (fi_prefill_*.cu). No FlashInfer header here, so the
// planner compiles in seconds and each kernel TU compiles on its own (parallel, cacheable).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "trtkv_flashinfer.h"

namespace trtkv {
namespace flashinfer_attn {
namespace detail {

//! The device pointers and schedule FlashInfer's FA2 batch-prefill kernels need for one part.
struct PartArgs {
    // Tensors.
    void const* q = nullptr;          //!< [T, H, D]
    void const* k = nullptr;          //!< ragged: [T, Hkv, D]; paged: pool K base (pool[0, 0])
    void const* v = nullptr;          //!< ragged: [T, Hkv, D]; paged: pool V base (pool[0, 1])
    void* o = nullptr;                //!< [T, H, D]
    float* lse = nullptr;             //!< [T, H] base-2 log-sum-exp
    float const* k_scale = nullptr;
    float const* v_scale = nullptr;
    int32_t k_scale_numel = 1;
    int32_t v_scale_numel = 1;
    // Indices (device, int32).
    int32_t* q_indptr = nullptr;       //!< [S+1]
    int32_t* kv_indptr = nullptr;      //!< ragged: [S+1] token offsets; paged: [S+1] page offsets
    int32_t* kv_indices = nullptr;     //!< paged: pool block ids
    int32_t* kv_last_page_len = nullptr; //!< paged: [S]
    // FlashInfer schedule (PrefillPlanInfo resolved to device pointers).
    int32_t* request_indices = nullptr;
    int32_t* qo_tile_indices = nullptr;
    int32_t* kv_tile_indices = nullptr;
    int32_t* merge_indptr = nullptr;
    int32_t* o_indptr = nullptr;
    int32_t* kv_chunk_size_ptr = nullptr;
    void* tmp_v = nullptr;             //!< split-KV partial outputs; null = no split
    float* tmp_s = nullptr;
    int64_t padded_batch_size = 0;
    int64_t total_num_rows = 0;
    int32_t cta_tile_q = 0;
    // Shapes and attributes.
    int32_t num_seqs = 0;
    int32_t num_heads = 0;
    int32_t num_kv_heads = 0;
    int32_t block_size = 0;
    float sm_scale = 0.f;
    float softcap = 0.f;
    int32_t sliding_window = 0;
    DType kv_dtype = DType::kFP16;
};

//! Part (a): queries over the paged history (MaskMode::kNone; kCustom with a sliding window).
template <int HEAD_DIM, DType QDTYPE>
Status run_history(PartArgs const& a, cudaStream_t stream) noexcept;

//! Part (b): causal attention among the new tokens (ragged KV, MaskMode::kCausal).
template <int HEAD_DIM, DType QDTYPE>
Status run_new_tokens(PartArgs const& a, cudaStream_t stream) noexcept;

} // namespace detail
} // namespace flashinfer_attn
} // namespace trtkv
