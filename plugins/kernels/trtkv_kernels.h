// Host-side API of the trtkv CUDA kernels: parameter structs and launchers.
//
// Plain C++ over the CUDA runtime; includes no TensorRT header, so the kernels are usable from
// the TensorRT plugins (plugins/tensorrt/), the C ABI (plugins/capi/) and tests alike.
// Tensor layouts and quantization follow trtkv/ops/schema.py (the op contract):
//   KV pool [num_blocks, 2, block_size, num_kv_heads, head_dim]; stored = quant(x / scale),
//   read = q * scale; scales float32 [1] (per tensor) or [num_kv_heads] (per KV head).
//
// Index inputs (slot_mapping, block_tables, context_lens, query_start_loc) live on the device,
// so the launchers cannot check them without a synchronization. The kernels check every index
// before dereferencing it, never touch memory through a bad one (the affected token is not
// written, the affected sequence or step gets zero output), and OR a kError* bit into
// `error_flags`: a device word the caller owns, zeroes and reads back when it next synchronizes
// (status_from_error_flags() turns it into kINVALID_INPUT). Launches stay asynchronous; with
// error_flags == nullptr bad indices are still refused, just not reported.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace trtkv {

//! Element types of compute tensors (fp32/fp16/bf16) and KV pools (all five).
enum class DType : int32_t {
    kFP32 = 0,
    kFP16 = 1,
    kBF16 = 2,
    kFP8E4M3 = 3,
    kINT8 = 4,
};

//! Launcher result codes (also the C ABI's return values).
enum class Status : int32_t {
    kOK = 0,
    kINVALID_ARGUMENT = 1,
    kCUDA_ERROR = 2,
    kWORKSPACE_TOO_SMALL = 3,
    kINVALID_INPUT = 4, //!< an index input was out of range (from status_from_error_flags)
};

char const* status_string(Status status) noexcept;

//! Bits the kernels OR into *error_flags (sticky until the caller zeroes the word).
//! KVAppend: a slot_mapping entry >= num_blocks * block_size (that token is not written).
constexpr uint32_t kErrorSlotOutOfRange = 1u << 0;
//! PagedAttention: a block_tables entry in use is < 0 or >= num_blocks (its sequence: zeros).
constexpr uint32_t kErrorBlockIdOutOfRange = 1u << 1;
//! PagedAttention: context_lens < 0 or > max_blocks_per_seq * block_size (its sequence: zeros).
constexpr uint32_t kErrorContextLenOutOfRange = 1u << 2;
//! PagedAttention: query_start_loc not 0 <= q[0] <= q[1] <= ... <= q[S] <= T (whole step: zeros).
constexpr uint32_t kErrorQueryStartLocInvalid = 1u << 3;

//! kOK for a zero error word, else kINVALID_INPUT.
inline Status status_from_error_flags(uint32_t flags) noexcept {
    return flags == 0 ? Status::kOK : Status::kINVALID_INPUT;
}

//! Largest supported head_dim; head_dim must also be a multiple of 8 (16-byte vector loads).
constexpr int32_t kMaxHeadDim = 256;

//! Whether scale_groups fits head_dim and the KV dtype (0, or int8 with head_dim / G % 8 == 0).
inline bool scale_groups_ok(int32_t scale_groups, int32_t head_dim, DType kv_dtype) noexcept {
    return scale_groups == 0
        || (scale_groups > 0 && kv_dtype == DType::kINT8 && head_dim % scale_groups == 0
            && (head_dim / scale_groups) % 8 == 0 && head_dim <= kMaxHeadDim);
}

//! KVAppend: scatter the step's K/V into the pool at slot_mapping (slot < 0: skip), O(T).
//! kv_cache == nullptr: write only key_stored/value_stored (the runtime scatters them later);
//! slots are then still checked when num_blocks > 0.
struct KVAppendParams {
    void const* key = nullptr;           //!< [T, Hkv, D] compute dtype
    void const* value = nullptr;         //!< [T, Hkv, D] compute dtype
    int64_t const* slot_mapping = nullptr; //!< [T] int64
    void* kv_cache = nullptr;            //!< [N, 2, B, Hkv, D] kv dtype, written in place; may be null
    float const* k_scale = nullptr;      //!< [k_scale_numel] float32 (1 or Hkv)
    float const* v_scale = nullptr;      //!< [v_scale_numel] float32 (1 or Hkv)
    void* key_stored = nullptr;          //!< [T, Hkv, D] kv dtype; may be null
    void* value_stored = nullptr;        //!< [T, Hkv, D] kv dtype; may be null
    int64_t num_tokens = 0;
    int64_t num_blocks = 0;
    int32_t num_kv_heads = 0;
    int32_t head_dim = 0;
    int32_t block_size = 0;
    int32_t k_scale_numel = 1;
    int32_t v_scale_numel = 1;
    DType compute_dtype = DType::kFP16;
    DType kv_dtype = DType::kFP16;
    //! Dynamic int8 scales (trtkv/ops/schema.py DYNAMIC_*): 0 = static scales (k_scale/v_scale);
    //! G > 0 = every (token, KV head) row is stored as its head_dim int8 codes then the G scale
    //! exponents of its groups of head_dim / G values (pool and stored rows head_dim + G wide),
    //! computed on write; kv_dtype must be kINT8, head_dim / G a multiple of 8.
    int32_t scale_groups = 0;
    uint32_t* error_flags = nullptr;     //!< device word for kError* bits; may be null
};

Status launch_kv_append(KVAppendParams const& p, cudaStream_t stream) noexcept;

//! PagedAttention over a packed mixed batch (prefill chunks + decode tokens).
struct PagedAttentionParams {
    void const* query = nullptr;             //!< [T, H, D] compute dtype
    void const* key = nullptr;               //!< [T, Hkv, D] kv dtype (as stored)
    void const* value = nullptr;             //!< [T, Hkv, D] kv dtype (as stored)
    void const* kv_cache = nullptr;          //!< [N, 2, B, Hkv, D] kv dtype
    int32_t const* query_start_loc = nullptr; //!< [S+1] int32
    int32_t const* context_lens = nullptr;   //!< [S] int32
    int32_t const* block_tables = nullptr;   //!< [S, M] int32
    float const* k_scale = nullptr;          //!< [k_scale_numel] float32
    float const* v_scale = nullptr;          //!< [v_scale_numel] float32
    void* output = nullptr;                  //!< [T, H, D] compute dtype
    void* workspace = nullptr;               //!< device scratch, >= paged_attention_workspace_size()
    size_t workspace_size = 0;
    int64_t num_tokens = 0;                  //!< T
    int64_t num_blocks = 0;                  //!< N
    int32_t num_seqs = 0;                    //!< S
    int32_t num_heads = 0;                   //!< H
    int32_t num_kv_heads = 0;                //!< Hkv (H % Hkv == 0)
    int32_t head_dim = 0;                    //!< D (multiple of 8, <= 256)
    int32_t block_size = 0;                  //!< B
    int32_t max_blocks_per_seq = 0;          //!< M
    int32_t k_scale_numel = 1;
    int32_t v_scale_numel = 1;
    float scale = 0.f;                       //!< softmax scale; 0 = 1/sqrt(D)
    int32_t sliding_window = 0;              //!< 0 = unlimited
    float softcap = 0.f;                     //!< 0 = off
    int32_t num_splits = 0;                  //!< split-KV partitions; 0 = choose from the shapes
    DType compute_dtype = DType::kFP16;
    DType kv_dtype = DType::kFP16;
    int32_t scale_groups = 0;                //!< dynamic int8 scales (see KVAppendParams); 0 = static
    uint32_t* error_flags = nullptr;         //!< device word for kError* bits; may be null
};

//! Split-KV partitions used for these shapes (resolves num_splits == 0). Depends only on the
//! shapes, so a workspace sized at build time stays valid at run time.
int32_t paged_attention_num_splits(PagedAttentionParams const& p) noexcept;

//! Bytes of workspace the launch needs for these shapes.
size_t paged_attention_workspace_size(PagedAttentionParams const& p) noexcept;

//! Largest workspace over num_tokens in [min_tokens, max_tokens] with the other shapes of p
//! (for TensorRT's getWorkspaceSize, which sees a range of token counts).
size_t paged_attention_max_workspace_size(
    PagedAttentionParams const& p, int64_t min_tokens, int64_t max_tokens) noexcept;

Status launch_paged_attention(PagedAttentionParams const& p, cudaStream_t stream) noexcept;

} // namespace trtkv
