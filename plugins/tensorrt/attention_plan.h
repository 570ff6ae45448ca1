// The step's FlashInfer attention plan, made once per step by the runtime, read by every layer.
//
// FlashInfer splits attention into plan (host-side scheduling over the step's sequence
// lengths) and run (one launch per layer). The runtime has the step's query_start_loc and
// context_lens on the host, so it plans there, once, through the C ABI below, into a device
// workspace it owns and binds to the engine as the `attention_workspace` input of every
// PagedAttention layer. The plan is registered under that workspace's address; each layer's
// enqueue finds it by the address of its workspace input. No device-to-host copy, no stream
// synchronization inside the engine, and one plan per step however many layers.
//
// Compiled with TRTKV_WITH_FLASHINFER (the FlashInfer sources of plugins/flashinfer/ linked
// in); without it the C ABI returns kUnavailable and PagedAttention uses its own kernels.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#if defined(TRTKV_WITH_FLASHINFER)
#include "../flashinfer/trtkv_flashinfer.h"
#endif

namespace trtkv {
namespace plugin {

#if defined(TRTKV_WITH_FLASHINFER)
//! The plan registered for `device_workspace` by the last trtkv_plan_attention call, if any.
bool find_attention_plan(void const* device_workspace, flashinfer_attn::Plan* plan) noexcept;
#endif

} // namespace plugin
} // namespace trtkv

extern "C" {

//! Status codes of the C ABI (0 = ok).
enum TrtkvPlanStatus : int32_t {
    kTrtkvPlanOK = 0,
    kTrtkvPlanInvalid = 1,      //!< shapes, indices or workspace out of the contract
    kTrtkvPlanCudaError = 2,
    kTrtkvPlanUnsupported = 3,  //!< head_dim / dtypes FlashInfer is not instantiated for
    kTrtkvPlanUnavailable = 4,  //!< libtrtkv_plugins.so was built without FlashInfer
    kTrtkvPlanInternal = 5,
};

//! Device and (pinned) host workspace bytes for steps of at most max_tokens / max_seqs.
//! dtypes: 1 fp16, 2 bf16, 3 fp8 e4m3 (trtkv::DType values).
__attribute__((visibility("default"))) int32_t trtkv_attention_workspace_size(int32_t num_heads,
    int32_t num_kv_heads, int32_t head_dim, int32_t block_size, int64_t num_blocks, int32_t max_blocks_per_seq,
    int32_t query_dtype, int32_t kv_dtype, int32_t has_sliding_window, int64_t max_tokens, int32_t max_seqs,
    size_t* device_bytes, size_t* host_bytes);

//! Plans one step into device_workspace (enqueues its upload on `stream`) and registers the
//! plan under device_workspace. Host arrays: query_start_loc [S+1], context_lens [S],
//! block_tables_host [S, M] (may be null); block_tables_device [S, M] int32 on the device.
__attribute__((visibility("default"))) int32_t trtkv_plan_attention(int32_t num_heads, int32_t num_kv_heads,
    int32_t head_dim, int32_t block_size, int64_t num_blocks, int32_t max_blocks_per_seq, int32_t query_dtype,
    int32_t kv_dtype, int32_t has_sliding_window, int64_t num_tokens, int32_t num_seqs,
    int32_t const* query_start_loc_host, int32_t const* context_lens_host, int32_t const* block_tables_device,
    int32_t const* block_tables_host, int64_t max_tokens, int32_t max_seqs, void* device_workspace,
    size_t device_bytes, void* host_workspace, size_t host_bytes, cudaStream_t stream);

//! Forgets the plan registered under device_workspace (e.g. before freeing it).
__attribute__((visibility("default"))) void trtkv_release_attention_plan(void const* device_workspace);

} // extern "C"
