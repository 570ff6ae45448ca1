// Host API of the FlashInfer-based PagedAttention (trtkv op "PagedAttention", version 1).
//
// Plain C++ over the CUDA runtime: no TensorRT, no torch. The attention math is FlashInfer's
// FA2 batch-prefill kernels (headers from the flashinfer-python wheel); this API owns the
// trtkv-specific parts: the page table built from trtkv's block_tables, index validation, the
// split of one trtkv step into two FlashInfer problems and their merge.
//
//   part (a) history: every new token over its sequence's paged history (pool, read-only),
//            no mask except the sliding window   -> FlashInfer batch prefill, paged KV
//   part (b) new:     causal attention among each sequence's new tokens (key/value inputs)
//                                                -> FlashInfer batch prefill, ragged KV
//   output = merge of (a) and (b) by their log-sum-exp   -> FlashInfer MergeStateInPlace
//
// Plan once per step, run once per layer:
//
//   WorkspaceSizes ws = workspace_size(shape, max_tokens, max_seqs);
//   // allocate ws.device_bytes of device memory, ws.host_bytes of (pinned) host memory
//   Plan plan;
//   plan(shape, step, dev_ws, ws.device_bytes, host_ws, ws.host_bytes, &plan, stream);
//   for (layer : layers) run(plan, layer_inputs[layer], dev_ws, stream);
//
// The plan copies its tables into the device workspace with cudaMemcpyAsync on `stream`; the
// host workspace must not be rewritten (next plan) before that copy has run — plan the next
// step after the stream passed this step's plan (e.g. after sampling synchronized), or give
// each in-flight step its own host workspace.
//
// Layouts (trtkv/ops/schema.py): pool [N, 2, B, Hkv, D] — block p's K at pool[p, 0], V at
// pool[p, 1], each [B, Hkv, D] (FlashInfer's NHD page). Scales: read = code * scale for fp8
// pools, scale float32 [1] or [Hkv]; fp16/bf16 pools ignore the scales.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

//! Exported from libtrtkv_flashinfer.so, which is built with hidden visibility so that the
//! FlashInfer template instances inside never clash with another FlashInfer in the process.
#if defined(__GNUC__)
#define TRTKV_FI_API __attribute__((visibility("default")))
#else
#define TRTKV_FI_API
#endif

namespace trtkv {
namespace flashinfer_attn {

//! Result codes. Every function is noexcept and reports through these.
enum class Status : int32_t {
    kOK = 0,
    kINVALID_ARGUMENT = 1,     //!< shapes, pointers or indices out of the contract
    kCUDA_ERROR = 2,           //!< a CUDA runtime call or kernel launch failed
    kWORKSPACE_TOO_SMALL = 3,  //!< the workspace given is smaller than workspace_size()
    kUNSUPPORTED = 4,          //!< valid for the op, but not instantiated here (head_dim, dtypes)
    kINTERNAL_ERROR = 5,       //!< FlashInfer's planner or dispatcher threw
};

TRTKV_FI_API char const* status_string(Status status) noexcept;

//! Element types; the values match trtkv::DType (plugins/kernels/trtkv_kernels.h).
enum class DType : int32_t {
    kFP16 = 1,
    kBF16 = 2,
    kFP8E4M3 = 3,
};

//! Fixed per model and engine: the same for every step and layer.
struct ProblemShape {
    int32_t num_heads = 0;           //!< H (query heads)
    int32_t num_kv_heads = 0;        //!< Hkv (H % Hkv == 0)
    int32_t head_dim = 0;            //!< D: 64 or 128 instantiated
    int32_t block_size = 0;          //!< B (tokens per pool block)
    int64_t num_blocks = 0;          //!< N (pool blocks); every block id must be < N
    int32_t max_blocks_per_seq = 0;  //!< M (block_tables columns)
    DType query_dtype = DType::kFP16;  //!< fp16 / bf16; output has the same dtype
    DType kv_dtype = DType::kFP16;     //!< == query_dtype, or kFP8E4M3
    //! True when any layer runs with sliding_window > 0. FlashInfer's split-KV partitions a
    //! sequence's keys before the window is known per layer, so such plans do not split KV.
    bool has_sliding_window = false;
};

//! Bytes the caller allocates once (for the largest step) and passes to plan() and run().
struct WorkspaceSizes {
    size_t device_bytes = 0;  //!< device memory, 256-byte aligned base
    size_t host_bytes = 0;    //!< host memory; page-locked (cudaHostAlloc) for async copies
};

//! Workspace for any step with at most max_tokens new tokens and max_seqs sequences on the
//! current device (the bound uses its SM count). Returns zeros for invalid shapes.
TRTKV_FI_API WorkspaceSizes workspace_size(ProblemShape const& shape, int64_t max_tokens, int32_t max_seqs) noexcept;

//! One step's batch. Host arrays are read during plan() only.
struct StepInputs {
    int64_t num_tokens = 0;                      //!< T (query rows, padding included)
    int32_t num_seqs = 0;                        //!< S
    int32_t const* query_start_loc_host = nullptr;  //!< host [S+1] int32: 0, monotonic, <= T
    int32_t const* context_lens_host = nullptr;  //!< host [S] int32: 0 <= ctx <= M * B
    int32_t const* block_tables = nullptr;       //!< device [S, M] int32
    //! Optional host copy of block_tables [S, M]. When given, every entry a sequence uses is
    //! checked here and plan() returns kINVALID_ARGUMENT for one outside [0, N). Without it the
    //! device-side page-table kernel checks them: a bad entry is replaced by block 0 (no read
    //! out of bounds) and recorded; read it with read_device_error().
    int32_t const* block_tables_host = nullptr;
    int64_t max_tokens = 0;  //!< the max_tokens the workspace was sized with
    int32_t max_seqs = 0;    //!< the max_seqs the workspace was sized with
};

//! The step's schedule (FlashInfer plan infos and the step's shapes). Plain host data,
//! copyable; valid for every layer of the step with the device workspace it was made in.
struct Plan {
    int64_t words[64] = {};
};

//! Validates the step, builds the page table (kv_indptr / kv_indices / kv_last_page_len) and
//! FlashInfer's schedules for both parts, and enqueues their upload on `stream`.
TRTKV_FI_API Status plan(ProblemShape const& shape, StepInputs const& step, void* device_workspace,
    size_t device_workspace_bytes, void* host_workspace, size_t host_workspace_bytes, Plan* out,
    cudaStream_t stream) noexcept;

//! One layer's tensors (device pointers) and attributes.
struct LayerInputs {
    void const* query = nullptr;     //!< [T, H, D] query dtype
    void const* key = nullptr;       //!< [T, Hkv, D] kv dtype (new tokens, as stored)
    void const* value = nullptr;     //!< [T, Hkv, D] kv dtype
    void const* kv_cache = nullptr;  //!< [N, 2, B, Hkv, D] kv dtype, read only
    float const* k_scale = nullptr;  //!< [k_scale_numel] float32 (fp8 pools)
    float const* v_scale = nullptr;  //!< [v_scale_numel] float32 (fp8 pools)
    int32_t k_scale_numel = 1;       //!< 1 or Hkv
    int32_t v_scale_numel = 1;       //!< 1 or Hkv
    void* output = nullptr;          //!< [T, H, D] query dtype; rows >= query_start_loc[S] -> 0
    float scale = 0.f;               //!< softmax scale; 0 = 1/sqrt(D)
    int32_t sliding_window = 0;      //!< 0 = off; else position p sees keys > p - W
    float softcap = 0.f;             //!< 0 = off; else c * tanh(score / c)
};

//! Attention of one layer with a plan of this step (no host synchronization).
TRTKV_FI_API Status run(Plan const& plan, LayerInputs const& layer, void* device_workspace, cudaStream_t stream) noexcept;

//! Copies the page-table kernel's error record (0 = none, else 1 + the first bad flat index
//! into one bad entry of block_tables) to *error and synchronizes `stream`. For tests and debug builds.
TRTKV_FI_API Status read_device_error(Plan const& plan, void const* device_workspace, int64_t* error,
    cudaStream_t stream) noexcept;

} // namespace flashinfer_attn
} // namespace trtkv
