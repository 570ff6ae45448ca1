// PagedAttention kernels for packed mixed batches (prefill chunks and decode tokens together).
//
// Work decomposition. For sequence s with n new tokens, KV head kvh and group size
// G = H / Hkv, the "rows" are the n * G (token, query head) pairs that read KV head kvh. A CTA
// owns a tile of kRows consecutive rows of one sequence and one KV head (so every K/V element
// it stages in shared memory serves up to kRows query rows: decode steps read each KV head
// once per sequence, GQA for free), and optionally one split of the key range (split-KV).
//
//   plan kernel      checks query_start_loc, then -> tile list (tile -> sequence, first row)
//                    in workspace
//   attention kernel grid (tile, kvh, split): stage kKeys keys of K/V (dequantized to fp32)
//                    in shared memory; lane j of a warp scores key j for the warp's rows;
//                    online softmax in fp32; lane owns dims lane, lane+32, ... of the output
//   reduce kernel    (split-KV only) merges the per-split (max, sum, acc) partials
//
// Key positions 0..ctx-1 come from the pool through block_tables, ctx..ctx+n-1 from the step's
// own key/value inputs (already in pool dtype). A row at position p sees keys kp <= p and,
// with a sliding window W, kp > p - W. Scores: (scale * q) . k, then c * tanh(s / c) if
// softcap c > 0.
//
// Bounds checks (see trtkv_kernels.h): the plan kernel refuses a query_start_loc that is not
// non-decreasing within [0, T] (no tiles, all T output rows zeroed); each attention CTA checks
// its sequence's context_lens against [0, M * B] and every block_tables entry the sequence uses
// against [0, num_blocks) before reading the pool, and a refused sequence reads no key (zero
// output rows). Each refusal sets a kError* bit in p.error_flags.
#pragma once

#include <cfloat>
#include <type_traits>

#include "dtypes.cuh"

namespace trtkv {
namespace kernels {

constexpr int kWarps = 4;                     //!< warps per CTA
constexpr int kRowsPerWarp = 2;               //!< query rows each warp owns
constexpr int kRows = kWarps * kRowsPerWarp;  //!< query rows per CTA tile
constexpr int kKeys = 32;                     //!< keys staged per iteration (one per lane)
constexpr int kDimsPerLane = kMaxHeadDim / 32;
constexpr int kMaxSplits = 64;
constexpr int kTargetCtas = 1024;             //!< split-KV aims at about this many CTAs
constexpr int kMinKeysPerSplit = 128;
//! Tile list header: tile count, first and end token covered by sequences (others: zeroed).
constexpr int kTileHeader = 3;

//! Workspace layout (byte offsets), shared by host and device code.
struct WorkspaceLayout {
    size_t tiles_offset = 0;   //!< int32 [kTileHeader + 2 * max_tiles]: header, (seq, row0) pairs
    size_t max_offset = 0;     //!< float [splits, T, H] running max per split
    size_t sum_offset = 0;     //!< float [splits, T, H] softmax denominators per split
    size_t acc_offset = 0;     //!< float [splits, T, H, D] unnormalized outputs per split
    size_t total = 0;
    int64_t max_tiles = 0;
};

__host__ __device__ inline size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline WorkspaceLayout workspace_layout(
    int64_t num_tokens, int32_t num_seqs, int32_t num_heads, int32_t num_kv_heads, int32_t head_dim,
    int32_t splits) {
    WorkspaceLayout w;
    int32_t const group = num_heads / num_kv_heads;
    // Each sequence contributes ceil(n_s * G / kRows) tiles <= n_s * G / kRows + 1.
    w.max_tiles = ceil_div(num_tokens * group, kRows) + num_seqs;
    size_t off = align_up((kTileHeader + 2 * static_cast<size_t>(w.max_tiles)) * sizeof(int32_t), 256);
    if (splits > 1) {
        size_t const rows = static_cast<size_t>(splits) * num_tokens * num_heads;
        w.max_offset = off;
        off = align_up(off + rows * sizeof(float), 256);
        w.sum_offset = off;
        off = align_up(off + rows * sizeof(float), 256);
        w.acc_offset = off;
        off = align_up(off + rows * head_dim * sizeof(float), 256);
    }
    w.total = off;
    return w;
}

//! Builds the tile list: one block, a block-wide scan over per-sequence tile counts. Also zeroes
//! the output of tokens outside [query_start_loc[0], query_start_loc[S]), which no tile covers.
//! A query_start_loc that is not non-decreasing within [0, T] yields no tiles and zero output.
template <typename TQ>
__global__ void plan_tiles_kernel(PagedAttentionParams p, int32_t* tiles, int64_t max_tiles) {
    __shared__ int32_t warp_sums[32];
    __shared__ int32_t carry;
    int32_t const group = p.num_heads / p.num_kv_heads;
    int const tid = threadIdx.x;
    int const lane = tid & 31;
    int const warp = tid >> 5;
    int const num_warps = blockDim.x >> 5;
    int32_t const* qsl = p.query_start_loc;

    int bad = 0;
    for (int32_t s = tid; s < p.num_seqs; s += blockDim.x) {
        int32_t const lo = qsl[s];
        int32_t const hi = qsl[s + 1];
        bad |= lo < 0 || hi < lo || hi > p.num_tokens;
    }
    bool const valid = __syncthreads_or(bad) == 0; // block-uniform
    if (tid == 0) {
        carry = 0;
        if (!valid) {
            report_error(p.error_flags, kErrorQueryStartLocInvalid);
        }
    }
    __syncthreads();
    for (int32_t base = 0; valid && base < p.num_seqs; base += blockDim.x) {
        int32_t const s = base + tid;
        int32_t count = 0;
        if (s < p.num_seqs) {
            int32_t const n = qsl[s + 1] - qsl[s];
            count = n > 0 ? static_cast<int32_t>(ceil_div(static_cast<int64_t>(n) * group, kRows)) : 0;
        }
        // Inclusive warp scan, then scan of the warp totals.
        int32_t incl = count;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            int32_t const y = __shfl_up_sync(0xffffffffu, incl, o);
            if (lane >= o) {
                incl += y;
            }
        }
        if (lane == 31) {
            warp_sums[warp] = incl;
        }
        __syncthreads();
        if (warp == 0) {
            int32_t v = lane < num_warps ? warp_sums[lane] : 0;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                int32_t const y = __shfl_up_sync(0xffffffffu, v, o);
                if (lane >= o) {
                    v += y;
                }
            }
            warp_sums[lane] = v; // inclusive scan of warp totals
        }
        __syncthreads();
        int32_t const start = carry + (warp > 0 ? warp_sums[warp - 1] : 0) + incl - count;
        // A valid query_start_loc bounds the total by max_tiles; the check is belt and braces.
        for (int32_t j = 0; j < count && start + j < max_tiles; ++j) {
            tiles[kTileHeader + 2 * (start + j)] = s;
            tiles[kTileHeader + 1 + 2 * (start + j)] = j * kRows;
        }
        __syncthreads();
        if (tid == 0) {
            carry += warp_sums[num_warps - 1];
        }
        __syncthreads();
    }
    int64_t const first_token = valid && p.num_seqs > 0 ? qsl[0] : 0;
    int64_t const end_token = valid && p.num_seqs > 0 ? qsl[p.num_seqs] : 0;
    if (tid == 0) {
        tiles[0] = valid ? static_cast<int32_t>(min(static_cast<int64_t>(carry), max_tiles)) : 0;
        tiles[1] = static_cast<int32_t>(first_token);
        tiles[2] = static_cast<int32_t>(end_token);
    }
    // Zero the rows of tokens that belong to no sequence.
    int64_t const row = static_cast<int64_t>(p.num_heads) * p.head_dim;
    auto* out = static_cast<TQ*>(p.output);
    for (int64_t i = tid; i < first_token * row; i += blockDim.x) {
        out[i] = encode<TQ>(0.f);
    }
    for (int64_t i = end_token * row + tid; i < p.num_tokens * row; i += blockDim.x) {
        out[i] = encode<TQ>(0.f);
    }
}

template <typename TQ, typename TKV>
__global__ void __launch_bounds__(kWarps * 32)
    paged_attention_kernel(PagedAttentionParams p, int32_t const* tiles, float* part_max,
        float* part_sum, float* part_acc, int32_t num_splits) {
    TRTKV_DYNAMIC_SHARED_MEMORY(float, smem);
    int32_t const D = p.head_dim;
    int32_t const group = p.num_heads / p.num_kv_heads;
    float* q_s = smem;                        // [kRows][D]
    float* k_s = q_s + kRows * D;             // [kKeys][D + 1] (padded: lane j reads row j)
    float* v_s = k_s + kKeys * (D + 1);       // [kKeys][D]

    int32_t const tile = blockIdx.x;
    if (tile >= tiles[0]) {
        return;
    }
    int32_t const seq = tiles[kTileHeader + 2 * tile];
    int32_t const row0 = tiles[kTileHeader + 1 + 2 * tile];
    int32_t const kvh = blockIdx.y;
    int32_t const split = blockIdx.z;
    int const tid = threadIdx.x;
    int const lane = tid & 31;
    int const warp = tid >> 5;

    int32_t const q_start = p.query_start_loc[seq];
    int32_t const n_new = p.query_start_loc[seq + 1] - q_start;
    int32_t const num_rows = min(kRows, n_new * group - row0);
    int32_t const* block_table = p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq;

    // Refuse the sequence (read no key: zero output rows) if its context length or a block id
    // it uses is out of range. Every CTA of the sequence decides alike, so split-KV partials
    // and tiles agree.
    int32_t const raw_ctx = p.context_lens[seq];
    bool const ctx_ok =
        raw_ctx >= 0 && raw_ctx <= static_cast<int64_t>(p.max_blocks_per_seq) * p.block_size;
    int32_t const ctx_blocks = ctx_ok ? static_cast<int32_t>(ceil_div(raw_ctx, p.block_size)) : 0;
    int bad_block = 0;
    for (int32_t b = tid; b < ctx_blocks; b += blockDim.x) {
        int32_t const id = block_table[b];
        bad_block |= id < 0 || id >= p.num_blocks;
    }
    bool const blocks_ok = __syncthreads_or(bad_block) == 0; // block-uniform
    bool const refused = !ctx_ok || !blocks_ok;
    if (tid == 0 && refused) {
        report_error(p.error_flags, ctx_ok ? kErrorBlockIdOutOfRange : kErrorContextLenOutOfRange);
    }
    int32_t const ctx = refused ? 0 : raw_ctx;
    float const sm_scale = p.scale > 0.f ? p.scale : rsqrtf(static_cast<float>(D));

    // Stage this tile's queries, pre-multiplied by the softmax scale.
    auto const* query = static_cast<TQ const*>(p.query);
    for (int32_t c = tid; c < kRows * (D / 8); c += blockDim.x) {
        int32_t const r = c / (D / 8);
        int32_t const d0 = (c - r * (D / 8)) * 8;
        float x[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        if (r < num_rows) {
            int32_t const i = (row0 + r) / group;
            int32_t const h = kvh * group + (row0 + r) % group;
            load8(query + (static_cast<int64_t>(q_start + i) * p.num_heads + h) * D + d0, x);
        }
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            q_s[r * D + d0 + e] = x[e] * sm_scale;
        }
    }

    // Key range of the tile: union of its rows' causal (and windowed) ranges, then this split.
    int32_t const pos_first = ctx + row0 / group;
    int32_t const pos_last = ctx + (row0 + num_rows - 1) / group;
    int32_t key_lo = p.sliding_window > 0 ? max(0, pos_first - p.sliding_window + 1) : 0;
    int32_t key_hi = pos_last + 1;
    int32_t const per_split =
        static_cast<int32_t>(ceil_div(ceil_div(key_hi - key_lo, num_splits), kKeys) * kKeys);
    int32_t const split_lo = key_lo + split * per_split;
    int32_t const split_hi = refused ? split_lo : min(key_hi, split_lo + per_split);

    // Per-row state: row r = warp + kWarps * k (so small tiles spread over all warps).
    float row_max[kRowsPerWarp];
    float row_sum[kRowsPerWarp];
    float acc[kRowsPerWarp][kDimsPerLane];
    int32_t row_pos[kRowsPerWarp];
#pragma unroll
    for (int k = 0; k < kRowsPerWarp; ++k) {
        row_max[k] = -INFINITY;
        row_sum[k] = 0.f;
        int32_t const r = warp + kWarps * k;
        row_pos[k] = r < num_rows ? ctx + (row0 + r) / group : -1;
#pragma unroll
        for (int j = 0; j < kDimsPerLane; ++j) {
            acc[k][j] = 0.f;
        }
    }

    auto const* pool = static_cast<TKV const*>(p.kv_cache);
    auto const* new_key = static_cast<TKV const*>(p.key);
    auto const* new_value = static_cast<TKV const*>(p.value);
    int32_t const W = D + p.scale_groups; // stored row width: codes (+ dynamic scale exponents)
    int32_t const group_dims = p.scale_groups > 0 ? D / p.scale_groups : D;
    int64_t const pool_row = static_cast<int64_t>(p.block_size) * p.num_kv_heads * W;
    // Dynamic scales replace the static ones (as in the reference, which ignores k_scale there).
    float const ks = p.scale_groups > 0 ? 1.f : head_scale(p.k_scale, p.k_scale_numel, kvh);
    float const vs = p.scale_groups > 0 ? 1.f : head_scale(p.v_scale, p.v_scale_numel, kvh);

    for (int32_t base = split_lo; base < split_hi; base += kKeys) {
        __syncthreads(); // previous iteration's readers are done (and q_s is staged)
        for (int32_t c = tid; c < kKeys * (D / 8); c += blockDim.x) {
            int32_t const j = c / (D / 8);
            int32_t const d0 = (c - j * (D / 8)) * 8;
            int32_t const kp = base + j;
            float kx[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
            float vx[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
            if (kp < split_hi) {
                TKV const* kptr;
                TKV const* vptr;
                if (kp < ctx) {
                    // kp / B < ctx_blocks: an entry checked above.
                    int64_t const block = block_table[kp / p.block_size];
                    int64_t const within =
                        (static_cast<int64_t>(kp % p.block_size) * p.num_kv_heads + kvh) * W + d0;
                    kptr = pool + (block * 2 + 0) * pool_row + within;
                    vptr = pool + (block * 2 + 1) * pool_row + within;
                } else {
                    int64_t const off =
                        (static_cast<int64_t>(q_start + kp - ctx) * p.num_kv_heads + kvh) * W + d0;
                    kptr = new_key + off;
                    vptr = new_value + off;
                }
                if constexpr (std::is_same<TKV, int8_t>::value) {
                    if (p.scale_groups > 0) {
                        // Codes then exponents: this chunk's exponent sits at row + D + d0 / g.
                        // Byte loads (rows of D + G bytes are not 8-byte aligned).
                        float const kscale = dynamic_scale(kptr[D - d0 + d0 / group_dims]);
                        float const vscale = dynamic_scale(vptr[D - d0 + d0 / group_dims]);
#pragma unroll
                        for (int e = 0; e < 8; ++e) {
                            kx[e] = static_cast<float>(kptr[e]) * kscale;
                            vx[e] = static_cast<float>(vptr[e]) * vscale;
                        }
                    } else {
                        load8(kptr, kx);
                        load8(vptr, vx);
                    }
                } else {
                    load8(kptr, kx);
                    load8(vptr, vx);
                }
            }
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                k_s[j * (D + 1) + d0 + e] = kx[e] * ks;
                v_s[j * D + d0 + e] = vx[e] * vs;
            }
        }
        __syncthreads();

        int32_t const kp = base + lane;
        float score[kRowsPerWarp];
#pragma unroll
        for (int k = 0; k < kRowsPerWarp; ++k) {
            score[k] = 0.f;
        }
        float const* krow = k_s + lane * (D + 1);
#pragma unroll 8
        for (int32_t d = 0; d < D; ++d) {
            float const kd = krow[d];
#pragma unroll
            for (int k = 0; k < kRowsPerWarp; ++k) {
                score[k] = fmaf(q_s[(warp + kWarps * k) * D + d], kd, score[k]);
            }
        }

#pragma unroll
        for (int k = 0; k < kRowsPerWarp; ++k) {
            int32_t const pos = row_pos[k];
            if (pos < 0) {
                continue; // warp-uniform
            }
            bool valid = kp < split_hi && kp <= pos;
            if (p.sliding_window > 0) {
                valid = valid && kp > pos - p.sliding_window;
            }
            float s = score[k];
            if (p.softcap > 0.f) {
                s = p.softcap * tanhf(s / p.softcap);
            }
            s = valid ? s : -INFINITY;
            float tile_max = s;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, o));
            }
            if (tile_max == -INFINITY) {
                continue; // no visible key for this row in this block of keys (warp-uniform)
            }
            float const new_max = fmaxf(row_max[k], tile_max);
            float const alpha = row_max[k] == -INFINITY ? 0.f : __expf(row_max[k] - new_max);
            float const prob = valid ? __expf(s - new_max) : 0.f;
            float psum = prob;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                psum += __shfl_xor_sync(0xffffffffu, psum, o);
            }
            row_sum[k] = row_sum[k] * alpha + psum;
            row_max[k] = new_max;
#pragma unroll
            for (int j = 0; j < kDimsPerLane; ++j) {
                acc[k][j] *= alpha;
            }
            for (int jj = 0; jj < kKeys; ++jj) {
                float const pj = __shfl_sync(0xffffffffu, prob, jj);
                float const* vrow = v_s + jj * D;
#pragma unroll
                for (int j = 0; j < kDimsPerLane; ++j) {
                    int32_t const d = lane + 32 * j;
                    if (d < D) {
                        acc[k][j] = fmaf(pj, vrow[d], acc[k][j]);
                    }
                }
            }
        }
    }

    // Write the rows: final output, or this split's partial state.
    auto* out = static_cast<TQ*>(p.output);
#pragma unroll
    for (int k = 0; k < kRowsPerWarp; ++k) {
        int32_t const r = warp + kWarps * k;
        if (r >= num_rows) {
            continue;
        }
        int64_t const token = q_start + (row0 + r) / group;
        int32_t const h = kvh * group + (row0 + r) % group;
        int64_t const o = token * p.num_heads + h;
        if (num_splits == 1) {
            float const inv = row_sum[k] > 0.f ? 1.f / row_sum[k] : 0.f;
#pragma unroll
            for (int j = 0; j < kDimsPerLane; ++j) {
                int32_t const d = lane + 32 * j;
                if (d < D) {
                    out[o * D + d] = encode<TQ>(acc[k][j] * inv);
                }
            }
        } else {
            int64_t const po = static_cast<int64_t>(split) * p.num_tokens * p.num_heads + o;
            if (lane == 0) {
                part_max[po] = row_max[k];
                part_sum[po] = row_sum[k];
            }
#pragma unroll
            for (int j = 0; j < kDimsPerLane; ++j) {
                int32_t const d = lane + 32 * j;
                if (d < D) {
                    part_acc[po * D + d] = acc[k][j];
                }
            }
        }
    }
}

//! Merges split-KV partials: out = sum_z acc_z e^(m_z - M) / sum_z l_z e^(m_z - M).
//! Grid (T, H); splits that saw no visible key (sum 0) are skipped.
template <typename TQ>
__global__ void paged_attention_reduce_kernel(PagedAttentionParams p, int32_t const* tiles,
    float const* part_max, float const* part_sum, float const* part_acc, int32_t num_splits) {
    int64_t const token = blockIdx.x;
    int32_t const h = blockIdx.y;
    if (tiles[0] == 0 || token < tiles[1] || token >= tiles[2]) {
        return; // no tile wrote partials for this token; the plan kernel zeroed its output
    }
    int64_t const o = token * p.num_heads + h;
    int64_t const stride = p.num_tokens * p.num_heads;
    float global_max = -INFINITY;
    for (int32_t z = 0; z < num_splits; ++z) {
        if (part_sum[z * stride + o] > 0.f) {
            global_max = fmaxf(global_max, part_max[z * stride + o]);
        }
    }
    float total = 0.f;
    for (int32_t z = 0; z < num_splits; ++z) {
        float const l = part_sum[z * stride + o];
        if (l > 0.f) {
            total += l * __expf(part_max[z * stride + o] - global_max);
        }
    }
    float const inv = total > 0.f ? 1.f / total : 0.f;
    auto* out = static_cast<TQ*>(p.output);
    for (int32_t d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
        float y = 0.f;
        for (int32_t z = 0; z < num_splits; ++z) {
            float const l = part_sum[z * stride + o];
            if (l > 0.f) {
                y += part_acc[(z * stride + o) * p.head_dim + d] * __expf(part_max[z * stride + o] - global_max);
            }
        }
        out[o * p.head_dim + d] = encode<TQ>(y * inv);
    }
}

} // namespace kernels
} // namespace trtkv
