// C ABI of the trtkv kernels (libtrtkv_kernels.so): raw device pointers + a CUDA stream, so the
// kernels can be exercised from Python (ctypes over torch CUDA tensors or cuda-python) on any
// CUDA machine, without TensorRT.
//
// dtype codes: 0 fp32, 1 fp16, 2 bf16, 3 fp8 e4m3, 4 int8 (trtkv::DType).
// Return codes: 0 ok, 1 invalid argument, 2 CUDA error, 3 workspace too small, 4 invalid input
// (trtkv::Status; 4 comes from trtkv_status_from_error_flags, never from a launch).
//
// Bounds checks: the *_checked launchers take `error_flags`, a device uint32 the caller zeroes;
// the kernels OR kError* bits into it when they refuse an out-of-range index (1 slot_mapping,
// 2 block_tables entry, 4 context_lens, 8 query_start_loc; trtkv_kernels.h). Read it back after
// synchronizing the stream. The unsuffixed launchers are the same with error_flags = NULL
// (bad indices are still refused, just not reported). ABI version 1: the *_checked functions and
// trtkv_status_from_error_flags were added; no existing signature changed. ABI version 2: the
// *_grouped_checked functions take scale_groups (dynamic int8 KV scales, G exponents per row
// after its head_dim codes; 0 = static scales, what every other function passes).
#include "../kernels/trtkv_kernels.h"

#define TRTKV_API extern "C" __attribute__((visibility("default")))

namespace {

trtkv::DType to_dtype(int32_t code) { return static_cast<trtkv::DType>(code); }

trtkv::PagedAttentionParams attention_params(void const* query, void const* key, void const* value,
    void const* kv_cache, int32_t const* query_start_loc, int32_t const* context_lens,
    int32_t const* block_tables, float const* k_scale, float const* v_scale, void* output,
    int64_t num_tokens, int32_t num_seqs, int32_t num_heads, int32_t num_kv_heads, int32_t head_dim,
    int64_t num_blocks, int32_t block_size, int32_t max_blocks_per_seq, int32_t k_scale_numel,
    int32_t v_scale_numel, float scale, int32_t sliding_window, float softcap, int32_t num_splits,
    int32_t compute_dtype, int32_t kv_dtype) {
    trtkv::PagedAttentionParams p;
    p.query = query;
    p.key = key;
    p.value = value;
    p.kv_cache = kv_cache;
    p.query_start_loc = query_start_loc;
    p.context_lens = context_lens;
    p.block_tables = block_tables;
    p.k_scale = k_scale;
    p.v_scale = v_scale;
    p.output = output;
    p.num_tokens = num_tokens;
    p.num_seqs = num_seqs;
    p.num_heads = num_heads;
    p.num_kv_heads = num_kv_heads;
    p.head_dim = head_dim;
    p.num_blocks = num_blocks;
    p.block_size = block_size;
    p.max_blocks_per_seq = max_blocks_per_seq;
    p.k_scale_numel = k_scale_numel;
    p.v_scale_numel = v_scale_numel;
    p.scale = scale;
    p.sliding_window = sliding_window;
    p.softcap = softcap;
    p.num_splits = num_splits;
    p.compute_dtype = to_dtype(compute_dtype);
    p.kv_dtype = to_dtype(kv_dtype);
    return p;
}

} // namespace

//! ABI version; bump when a signature below changes.
TRTKV_API int32_t trtkv_abi_version() { return 2; }

TRTKV_API char const* trtkv_status_string(int32_t status) {
    return trtkv::status_string(static_cast<trtkv::Status>(status));
}

//! 0 (ok) for a zero error word, else 4 (invalid input).
TRTKV_API int32_t trtkv_status_from_error_flags(uint32_t error_flags) {
    return static_cast<int32_t>(trtkv::status_from_error_flags(error_flags));
}

//! KVAppend. key/value [T, Hkv, D] compute dtype; slot_mapping int64 [T]; kv_cache
//! [N, 2, B, Hkv, D + G] kv dtype (written in place; NULL = write only the stored codes);
//! key_stored/value_stored [T, Hkv, D + G] kv dtype (nullable); scale_groups G (0: static scales);
//! error_flags: device uint32 or NULL.
TRTKV_API int32_t trtkv_kv_append_grouped_checked(void const* key, void const* value,
    int64_t const* slot_mapping, void* kv_cache, float const* k_scale, float const* v_scale, void* key_stored,
    void* value_stored, int64_t num_tokens, int32_t num_kv_heads, int32_t head_dim, int64_t num_blocks,
    int32_t block_size, int32_t k_scale_numel, int32_t v_scale_numel, int32_t compute_dtype, int32_t kv_dtype,
    int32_t scale_groups, uint32_t* error_flags, void* stream) {
    trtkv::KVAppendParams p;
    p.key = key;
    p.value = value;
    p.slot_mapping = slot_mapping;
    p.kv_cache = kv_cache;
    p.k_scale = k_scale;
    p.v_scale = v_scale;
    p.key_stored = key_stored;
    p.value_stored = value_stored;
    p.num_tokens = num_tokens;
    p.num_kv_heads = num_kv_heads;
    p.head_dim = head_dim;
    p.num_blocks = num_blocks;
    p.block_size = block_size;
    p.k_scale_numel = k_scale_numel;
    p.v_scale_numel = v_scale_numel;
    p.compute_dtype = to_dtype(compute_dtype);
    p.kv_dtype = to_dtype(kv_dtype);
    p.scale_groups = scale_groups;
    p.error_flags = error_flags;
    return static_cast<int32_t>(trtkv::launch_kv_append(p, static_cast<cudaStream_t>(stream)));
}

//! trtkv_kv_append_grouped_checked with static scales (scale_groups 0).
TRTKV_API int32_t trtkv_kv_append_checked(void const* key, void const* value, int64_t const* slot_mapping,
    void* kv_cache, float const* k_scale, float const* v_scale, void* key_stored, void* value_stored,
    int64_t num_tokens, int32_t num_kv_heads, int32_t head_dim, int64_t num_blocks, int32_t block_size,
    int32_t k_scale_numel, int32_t v_scale_numel, int32_t compute_dtype, int32_t kv_dtype,
    uint32_t* error_flags, void* stream) {
    return trtkv_kv_append_grouped_checked(key, value, slot_mapping, kv_cache, k_scale, v_scale, key_stored,
        value_stored, num_tokens, num_kv_heads, head_dim, num_blocks, block_size, k_scale_numel, v_scale_numel,
        compute_dtype, kv_dtype, 0, error_flags, stream);
}

//! trtkv_kv_append_checked without error reporting.
TRTKV_API int32_t trtkv_kv_append(void const* key, void const* value, int64_t const* slot_mapping,
    void* kv_cache, float const* k_scale, float const* v_scale, void* key_stored, void* value_stored,
    int64_t num_tokens, int32_t num_kv_heads, int32_t head_dim, int64_t num_blocks, int32_t block_size,
    int32_t k_scale_numel, int32_t v_scale_numel, int32_t compute_dtype, int32_t kv_dtype, void* stream) {
    return trtkv_kv_append_checked(key, value, slot_mapping, kv_cache, k_scale, v_scale, key_stored,
        value_stored, num_tokens, num_kv_heads, head_dim, num_blocks, block_size, k_scale_numel,
        v_scale_numel, compute_dtype, kv_dtype, nullptr, stream);
}

//! Workspace bytes trtkv_paged_attention needs for these shapes (num_splits 0 = auto).
TRTKV_API size_t trtkv_paged_attention_workspace_size(int64_t num_tokens, int32_t num_seqs,
    int32_t num_heads, int32_t num_kv_heads, int32_t head_dim, int32_t block_size,
    int32_t max_blocks_per_seq, int32_t num_splits) {
    trtkv::PagedAttentionParams p = attention_params(nullptr, nullptr, nullptr, nullptr, nullptr,
        nullptr, nullptr, nullptr, nullptr, nullptr, num_tokens, num_seqs, num_heads, num_kv_heads,
        head_dim, 0, block_size, max_blocks_per_seq, 1, 1, 0.f, 0, 0.f, num_splits, 1, 1);
    return trtkv::paged_attention_workspace_size(p);
}

//! Split-KV partitions a launch with these shapes uses (num_splits 0 = auto).
TRTKV_API int32_t trtkv_paged_attention_num_splits(int64_t num_tokens, int32_t num_seqs,
    int32_t num_heads, int32_t num_kv_heads, int32_t head_dim, int32_t block_size,
    int32_t max_blocks_per_seq, int32_t num_splits) {
    trtkv::PagedAttentionParams p = attention_params(nullptr, nullptr, nullptr, nullptr, nullptr,
        nullptr, nullptr, nullptr, nullptr, nullptr, num_tokens, num_seqs, num_heads, num_kv_heads,
        head_dim, 0, block_size, max_blocks_per_seq, 1, 1, 0.f, 0, 0.f, num_splits, 1, 1);
    return trtkv::paged_attention_num_splits(p);
}

//! PagedAttention. query [T, H, D] compute dtype; key/value [T, Hkv, D + G] kv dtype; kv_cache
//! [N, 2, B, Hkv, D + G]; query_start_loc int32 [S+1]; context_lens int32 [S]; block_tables int32
//! [S, M]; output [T, H, D] compute dtype; workspace of trtkv_paged_attention_workspace_size();
//! scale_groups G (0: static scales); error_flags: device uint32 or NULL.
TRTKV_API int32_t trtkv_paged_attention_grouped_checked(void const* query, void const* key, void const* value,
    void const* kv_cache, int32_t const* query_start_loc, int32_t const* context_lens,
    int32_t const* block_tables, float const* k_scale, float const* v_scale, void* output,
    void* workspace, size_t workspace_size, int64_t num_tokens, int32_t num_seqs, int32_t num_heads,
    int32_t num_kv_heads, int32_t head_dim, int64_t num_blocks, int32_t block_size,
    int32_t max_blocks_per_seq, int32_t k_scale_numel, int32_t v_scale_numel, float scale,
    int32_t sliding_window, float softcap, int32_t num_splits, int32_t compute_dtype, int32_t kv_dtype,
    int32_t scale_groups, uint32_t* error_flags, void* stream) {
    trtkv::PagedAttentionParams p = attention_params(query, key, value, kv_cache, query_start_loc,
        context_lens, block_tables, k_scale, v_scale, output, num_tokens, num_seqs, num_heads,
        num_kv_heads, head_dim, num_blocks, block_size, max_blocks_per_seq, k_scale_numel,
        v_scale_numel, scale, sliding_window, softcap, num_splits, compute_dtype, kv_dtype);
    p.workspace = workspace;
    p.workspace_size = workspace_size;
    p.scale_groups = scale_groups;
    p.error_flags = error_flags;
    return static_cast<int32_t>(trtkv::launch_paged_attention(p, static_cast<cudaStream_t>(stream)));
}

//! trtkv_paged_attention_grouped_checked with static scales (scale_groups 0).
TRTKV_API int32_t trtkv_paged_attention_checked(void const* query, void const* key, void const* value,
    void const* kv_cache, int32_t const* query_start_loc, int32_t const* context_lens,
    int32_t const* block_tables, float const* k_scale, float const* v_scale, void* output,
    void* workspace, size_t workspace_size, int64_t num_tokens, int32_t num_seqs, int32_t num_heads,
    int32_t num_kv_heads, int32_t head_dim, int64_t num_blocks, int32_t block_size,
    int32_t max_blocks_per_seq, int32_t k_scale_numel, int32_t v_scale_numel, float scale,
    int32_t sliding_window, float softcap, int32_t num_splits, int32_t compute_dtype, int32_t kv_dtype,
    uint32_t* error_flags, void* stream) {
    return trtkv_paged_attention_grouped_checked(query, key, value, kv_cache, query_start_loc, context_lens,
        block_tables, k_scale, v_scale, output, workspace, workspace_size, num_tokens, num_seqs, num_heads,
        num_kv_heads, head_dim, num_blocks, block_size, max_blocks_per_seq, k_scale_numel, v_scale_numel,
        scale, sliding_window, softcap, num_splits, compute_dtype, kv_dtype, 0, error_flags, stream);
}

//! trtkv_paged_attention_checked without error reporting.
TRTKV_API int32_t trtkv_paged_attention(void const* query, void const* key, void const* value,
    void const* kv_cache, int32_t const* query_start_loc, int32_t const* context_lens,
    int32_t const* block_tables, float const* k_scale, float const* v_scale, void* output,
    void* workspace, size_t workspace_size, int64_t num_tokens, int32_t num_seqs, int32_t num_heads,
    int32_t num_kv_heads, int32_t head_dim, int64_t num_blocks, int32_t block_size,
    int32_t max_blocks_per_seq, int32_t k_scale_numel, int32_t v_scale_numel, float scale,
    int32_t sliding_window, float softcap, int32_t num_splits, int32_t compute_dtype, int32_t kv_dtype,
    void* stream) {
    return trtkv_paged_attention_checked(query, key, value, kv_cache, query_start_loc, context_lens,
        block_tables, k_scale, v_scale, output, workspace, workspace_size, num_tokens, num_seqs,
        num_heads, num_kv_heads, head_dim, num_blocks, block_size, max_blocks_per_seq, k_scale_numel,
        v_scale_numel, scale, sliding_window, softcap, num_splits, compute_dtype, kv_dtype, nullptr,
        stream);
}
