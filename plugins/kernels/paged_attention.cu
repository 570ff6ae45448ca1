// Launchers of the PagedAttention kernels: argument checks, split-KV choice, dtype dispatch.
#include <algorithm>
#include <cstdint>

#include "launch.h"
#include "paged_attention.cuh"

namespace trtkv {

using kernels::ceil_div;
using kernels::kRows;

namespace {

bool valid_shapes(PagedAttentionParams const& p) {
    return p.num_tokens >= 0 && p.num_seqs >= 0 && p.num_heads > 0 && p.num_kv_heads > 0
        && p.num_heads % p.num_kv_heads == 0 && p.head_dim > 0 && p.head_dim % 8 == 0
        && p.head_dim <= kMaxHeadDim && p.block_size > 0 && p.max_blocks_per_seq >= 0
        && (p.k_scale_numel == 1 || p.k_scale_numel == p.num_kv_heads)
        && (p.v_scale_numel == 1 || p.v_scale_numel == p.num_kv_heads) && p.sliding_window >= 0
        && p.num_blocks >= 0 && scale_groups_ok(p.scale_groups, p.head_dim, p.kv_dtype)
        // Key positions (< M * B + T) are int32 in the kernels.
        && static_cast<int64_t>(p.max_blocks_per_seq) * p.block_size + p.num_tokens <= INT32_MAX;
}

size_t shared_bytes(int32_t head_dim) {
    return sizeof(float)
        * (static_cast<size_t>(kRows) * head_dim + kernels::kKeys * (head_dim + 1)
            + static_cast<size_t>(kernels::kKeys) * head_dim);
}

} // namespace

int32_t paged_attention_num_splits(PagedAttentionParams const& p) noexcept {
    if (p.num_splits > 0) {
        return std::min(p.num_splits, kernels::kMaxSplits);
    }
    if (p.num_heads <= 0 || p.num_kv_heads <= 0 || p.num_tokens <= 0) {
        return 1;
    }
    // Split only when the tiles alone leave the GPU idle (decode-heavy steps with long
    // contexts). splits * T stays bounded, so the partials' workspace is small (a few MiB).
    int64_t const group = p.num_heads / p.num_kv_heads;
    int64_t const base_ctas = ceil_div(p.num_tokens * group, kRows) * p.num_kv_heads;
    int64_t const max_keys = static_cast<int64_t>(p.max_blocks_per_seq) * p.block_size + p.num_tokens;
    int64_t splits = kernels::kTargetCtas / std::max<int64_t>(base_ctas, 1);
    splits = std::min<int64_t>(splits, max_keys / kernels::kMinKeysPerSplit);
    splits = std::min<int64_t>(splits, kernels::kMaxSplits);
    return splits >= 2 ? static_cast<int32_t>(splits) : 1;
}

size_t paged_attention_workspace_size(PagedAttentionParams const& p) noexcept {
    if (p.num_heads <= 0 || p.num_kv_heads <= 0) {
        return 0;
    }
    return kernels::workspace_layout(p.num_tokens, p.num_seqs, p.num_heads, p.num_kv_heads, p.head_dim,
        paged_attention_num_splits(p))
        .total;
}

size_t paged_attention_max_workspace_size(
    PagedAttentionParams const& p, int64_t min_tokens, int64_t max_tokens) noexcept {
    size_t best = 0;
    PagedAttentionParams q = p;
    for (int64_t t = std::max<int64_t>(min_tokens, 0); t <= max_tokens; ++t) {
        q.num_tokens = t;
        best = std::max(best, paged_attention_workspace_size(q));
    }
    return best;
}

Status launch_paged_attention(PagedAttentionParams const& p, cudaStream_t stream) noexcept {
    if (!valid_shapes(p)) {
        return Status::kINVALID_ARGUMENT;
    }
    if (p.num_tokens == 0) {
        return Status::kOK;
    }
    int32_t const splits = paged_attention_num_splits(p);
    kernels::WorkspaceLayout const layout = kernels::workspace_layout(
        p.num_tokens, p.num_seqs, p.num_heads, p.num_kv_heads, p.head_dim, splits);
    if (p.workspace == nullptr || p.workspace_size < layout.total) {
        return Status::kWORKSPACE_TOO_SMALL;
    }
    auto* ws = static_cast<char*>(p.workspace);
    auto* tiles = reinterpret_cast<int32_t*>(ws + layout.tiles_offset);
    float* part_max = splits > 1 ? reinterpret_cast<float*>(ws + layout.max_offset) : nullptr;
    float* part_sum = splits > 1 ? reinterpret_cast<float*>(ws + layout.sum_offset) : nullptr;
    float* part_acc = splits > 1 ? reinterpret_cast<float*>(ws + layout.acc_offset) : nullptr;
    size_t const smem = shared_bytes(p.head_dim);

    Status const status = kernels::dispatch_compute(p.compute_dtype, [&](auto qtag) {
        using TQ = typename decltype(qtag)::type;
        return kernels::dispatch_kv(p.kv_dtype, [&](auto kvtag) {
            using TKV = typename decltype(kvtag)::type;
            cudaError_t err = kernels::launch_kernel(
                kernels::plan_tiles_kernel<TQ>, dim3(1), dim3(256), 0, stream, p, tiles, layout.max_tiles);
            auto kernel = kernels::paged_attention_kernel<TQ, TKV>;
            if (err == cudaSuccess && smem > 48 * 1024) {
                err = cudaFuncSetAttribute(
                    kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
            }
            dim3 const grid(static_cast<unsigned>(layout.max_tiles), static_cast<unsigned>(p.num_kv_heads),
                static_cast<unsigned>(splits));
            if (err == cudaSuccess) {
                err = kernels::launch_kernel(kernel, grid, dim3(kernels::kWarps * 32), smem, stream, p,
                    tiles, part_max, part_sum, part_acc, splits);
            }
            if (err == cudaSuccess && splits > 1) {
                dim3 const rgrid(static_cast<unsigned>(p.num_tokens), static_cast<unsigned>(p.num_heads));
                int const threads = std::min(128, p.head_dim);
                err = kernels::launch_kernel(kernels::paged_attention_reduce_kernel<TQ>, rgrid,
                    dim3(threads), 0, stream, p, tiles, part_max, part_sum, part_acc, splits);
            }
            if (err != cudaSuccess) {
                return Status::kCUDA_ERROR;
            }
            return Status::kOK;
        });
    });
    if (status != Status::kOK) {
        return status;
    }
    return cudaGetLastError() == cudaSuccess ? Status::kOK : Status::kCUDA_ERROR;
}

} // namespace trtkv
