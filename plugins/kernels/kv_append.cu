// Launcher of the KVAppend kernel (argument checks and dtype dispatch) and status strings.
#include <algorithm>

#include "kv_append.cuh"
#include "launch.h"

namespace trtkv {

char const* status_string(Status status) noexcept {
    switch (status) {
    case Status::kOK: return "ok";
    case Status::kINVALID_ARGUMENT:
        return "invalid argument (check dtypes, head_dim % 8 == 0 and <= 256, H % Hkv == 0, "
               "scale sizes 1 or Hkv)";
    case Status::kCUDA_ERROR: return "CUDA error (see cudaGetLastError)";
    case Status::kWORKSPACE_TOO_SMALL: return "workspace too small (use *_workspace_size())";
    case Status::kINVALID_INPUT:
        return "invalid input: an index was out of range (slot_mapping >= num_blocks * block_size, "
               "block_tables entry outside [0, num_blocks), context_lens outside [0, M * block_size] "
               "or query_start_loc not non-decreasing within [0, T]); the kernels skipped those "
               "tokens and zeroed those sequences' outputs -- fix the step's metadata";
    }
    return "unknown status";
}

Status launch_kv_append(KVAppendParams const& p, cudaStream_t stream) noexcept {
    // Without a pool and without num_blocks no slot is read, so block_size may be unset.
    bool const uses_slots = p.kv_cache != nullptr || p.num_blocks > 0;
    bool const ok = p.num_tokens >= 0 && p.num_kv_heads > 0 && p.head_dim > 0 && p.head_dim % 8 == 0
        && (p.block_size > 0 || !uses_slots) && p.num_blocks >= 0
        && (p.kv_cache != nullptr || p.key_stored != nullptr || p.value_stored != nullptr)
        && (p.k_scale_numel == 1 || p.k_scale_numel == p.num_kv_heads)
        && (p.v_scale_numel == 1 || p.v_scale_numel == p.num_kv_heads)
        && scale_groups_ok(p.scale_groups, p.head_dim, p.kv_dtype);
    if (!ok) {
        return Status::kINVALID_ARGUMENT;
    }
    if (p.num_tokens == 0) {
        return Status::kOK;
    }
    int const threads = 256;
    // Work items: one per (token, KV head, scale group) with dynamic scales, else per 8 values.
    int64_t const items = p.num_tokens * p.num_kv_heads * (p.scale_groups > 0 ? p.scale_groups : p.head_dim / 8);
    dim3 const grid(static_cast<unsigned>(std::min<int64_t>((items + threads - 1) / threads, 65535)));
    auto launched = [](cudaError_t err) { return err == cudaSuccess ? Status::kOK : Status::kCUDA_ERROR; };
    Status const status = kernels::dispatch_compute(p.compute_dtype, [&](auto in_tag) {
        using TIn = typename decltype(in_tag)::type;
        if (p.scale_groups > 0) {
            return launched(kernels::launch_kernel(kernels::kv_append_dynamic_kernel<TIn>, grid, dim3(threads), 0,
                                                   stream, p));
        }
        return kernels::dispatch_kv(p.kv_dtype, [&](auto kv_tag) {
            using TKV = typename decltype(kv_tag)::type;
            return launched(kernels::launch_kernel(kernels::kv_append_kernel<TIn, TKV>, grid, dim3(threads), 0,
                                                   stream, p));
        });
    });
    if (status != Status::kOK) {
        return status;
    }
    return cudaGetLastError() == cudaSuccess ? Status::kOK : Status::kCUDA_ERROR;
}

} // namespace trtkv
