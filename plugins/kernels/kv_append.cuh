// KVAppend kernel: each thread moves 8 elements of one token's K and V (one KV head) into the
// pool slot given by slot_mapping, quantizing on write, and writes the same codes to the
// key_stored/value_stored outputs. Work is O(T * Hkv * D), never O(pool).
//
// kv_cache == nullptr: only the stored codes are written (the runtime scatters them into the
// pool after the step). A slot >= num_blocks * block_size is never written through; it sets
// kErrorSlotOutOfRange (checked with or without a pool, unless num_blocks is 0 and there is no
// pool). Negative slots are padding and skipped silently.
#pragma once

#include "dtypes.cuh"

namespace trtkv {
namespace kernels {

template <typename TIn, typename TKV>
__global__ void kv_append_kernel(KVAppendParams p) {
    int32_t const vecs_per_head = p.head_dim / 8;
    int64_t const vecs_per_token = static_cast<int64_t>(p.num_kv_heads) * vecs_per_head;
    int64_t const total = p.num_tokens * vecs_per_token;
    int64_t const num_slots = p.num_blocks * p.block_size;
    auto const* key = static_cast<TIn const*>(p.key);
    auto const* value = static_cast<TIn const*>(p.value);
    auto* pool = static_cast<TKV*>(p.kv_cache); // null: stored codes only
    auto* key_stored = static_cast<TKV*>(p.key_stored);
    auto* value_stored = static_cast<TKV*>(p.value_stored);

    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        int64_t const token = i / vecs_per_token;
        int32_t const rem = static_cast<int32_t>(i - token * vecs_per_token);
        int32_t const head = rem / vecs_per_head;
        int32_t const d0 = (rem - head * vecs_per_head) * 8;
        int64_t const src = (token * p.num_kv_heads + head) * p.head_dim + d0;

        float const ks = head_scale(p.k_scale, p.k_scale_numel, head);
        float const vs = head_scale(p.v_scale, p.v_scale_numel, head);
        float k[8];
        float v[8];
        load8(key + src, k);
        load8(value + src, v);
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            // True division (not a reciprocal multiply) so codes match quant(x / scale).
            k[e] = __fdiv_rn(k[e], ks);
            v[e] = __fdiv_rn(v[e], vs);
        }
        if (key_stored != nullptr) {
            store8(key_stored + src, k);
        }
        if (value_stored != nullptr) {
            store8(value_stored + src, v);
        }
        bool const check_slots = pool != nullptr || num_slots > 0;
        if (!check_slots) {
            continue;
        }
        int64_t const slot = p.slot_mapping[token];
        if (slot < 0) {
            continue; // padding token
        }
        if (slot >= num_slots) {
            if (rem == 0) { // one report per token
                report_error(p.error_flags, kErrorSlotOutOfRange);
            }
            continue;
        }
        if (pool == nullptr) {
            continue;
        }
        int64_t const block = slot / p.block_size;
        int64_t const offset = slot - block * p.block_size;
        int64_t const row = static_cast<int64_t>(p.block_size) * p.num_kv_heads * p.head_dim;
        int64_t const within = (offset * p.num_kv_heads + head) * p.head_dim + d0;
        store8(pool + (block * 2 + 0) * row + within, k);
        store8(pool + (block * 2 + 1) * row + within, v);
    }
}

} // namespace kernels
} // namespace trtkv
