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

//! The pool slot a token's codes go to, after the checks every KVAppend kernel makes; -1 when
//! nothing is written: no pool, a padding token (slot < 0) or a slot past the pool (reported
//! once per token, by the caller that passes `report`, checked even without a pool).
__device__ __forceinline__ int64_t pool_slot(KVAppendParams const& p, void const* pool, int64_t token,
    int64_t num_slots, bool report) {
    if (pool == nullptr && num_slots <= 0) {
        return -1;
    }
    int64_t const slot = p.slot_mapping[token];
    if (slot < 0) {
        return -1;
    }
    if (slot >= num_slots) {
        if (report) {
            report_error(p.error_flags, kErrorSlotOutOfRange);
        }
        return -1;
    }
    return pool == nullptr ? -1 : slot;
}

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
        int64_t const slot = pool_slot(p, pool, token, num_slots, rem == 0);
        if (slot < 0) {
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

//! Encodes one group of g values (g % 8 == 0) with its dynamic scale: codes to `codes[0..g)`,
//! the exponent byte to `*exponent` (trtkv.ops.reference.quantize_dynamic, bit for bit).
template <typename TIn>
__device__ __forceinline__ void encode_dynamic_group(TIn const* x, int32_t g, int8_t* codes, int8_t* exponent) {
    float amax = 0.f;
    for (int32_t d0 = 0; d0 < g; d0 += 8) {
        float v[8];
        load8(x + d0, v);
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            amax = fmaxf(amax, fabsf(dynamic_clean(v[e])));
        }
    }
    int32_t const index = dynamic_index(amax);
    float const scale = __uint_as_float(kDynamicScaleBits[index]);
    for (int32_t d0 = 0; d0 < g; d0 += 8) {
        float v[8];
        load8(x + d0, v);
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            codes[d0 + e] = encode<int8_t>(__fdiv_rn(dynamic_clean(v[e]), scale));
        }
    }
    *exponent = static_cast<int8_t>(index + ops::kDynamicExponentMin);
}

//! KVAppend with dynamic int8 scales (p.scale_groups = G > 0): one thread per (token, KV head,
//! group); rows of head_dim + G bytes (codes, then the G exponents) in the stored outputs and
//! the pool. Byte stores: a row of D + G bytes is not 8-byte aligned.
template <typename TIn>
__global__ void kv_append_dynamic_kernel(KVAppendParams p) {
    int32_t const G = p.scale_groups;
    int32_t const g = p.head_dim / G;
    int32_t const W = p.head_dim + G;
    int64_t const per_token = static_cast<int64_t>(p.num_kv_heads) * G;
    int64_t const total = p.num_tokens * per_token;
    int64_t const num_slots = p.num_blocks * p.block_size;
    auto const* key = static_cast<TIn const*>(p.key);
    auto const* value = static_cast<TIn const*>(p.value);
    auto* pool = static_cast<int8_t*>(p.kv_cache);
    auto* key_stored = static_cast<int8_t*>(p.key_stored);
    auto* value_stored = static_cast<int8_t*>(p.value_stored);

    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        int64_t const token = i / per_token;
        int32_t const rem = static_cast<int32_t>(i - token * per_token);
        int32_t const head = rem / G;
        int32_t const grp = rem - head * G;
        int64_t const src = (token * p.num_kv_heads + head) * p.head_dim + static_cast<int64_t>(grp) * g;
        int8_t kc[kMaxHeadDim];
        int8_t vc[kMaxHeadDim];
        int8_t ke = 0;
        int8_t ve = 0;
        encode_dynamic_group(key + src, g, kc, &ke);
        encode_dynamic_group(value + src, g, vc, &ve);
        int64_t const row = (token * p.num_kv_heads + head) * W;
        if (key_stored != nullptr) {
            for (int32_t d = 0; d < g; ++d) {
                key_stored[row + grp * g + d] = kc[d];
            }
            key_stored[row + p.head_dim + grp] = ke;
        }
        if (value_stored != nullptr) {
            for (int32_t d = 0; d < g; ++d) {
                value_stored[row + grp * g + d] = vc[d];
            }
            value_stored[row + p.head_dim + grp] = ve;
        }
        int64_t const slot = pool_slot(p, pool, token, num_slots, rem == 0);
        if (slot < 0) {
            continue;
        }
        int64_t const block = slot / p.block_size;
        int64_t const offset = slot - block * p.block_size;
        int64_t const half = static_cast<int64_t>(p.block_size) * p.num_kv_heads * W; // K (or V) of a block
        int64_t const within = (offset * p.num_kv_heads + head) * W;
        int8_t* k_row = pool + (block * 2 + 0) * half + within;
        int8_t* v_row = pool + (block * 2 + 1) * half + within;
        for (int32_t d = 0; d < g; ++d) {
            k_row[grp * g + d] = kc[d];
            v_row[grp * g + d] = vc[d];
        }
        k_row[p.head_dim + grp] = ke;
        v_row[p.head_dim + grp] = ve;
    }
}

} // namespace kernels
} // namespace trtkv
