// Planner and per-layer orchestration of the FlashInfer-based PagedAttention.
//
// Owns: validation of every index at the API boundary, the workspace layout, the page table
// (kv_indptr / kv_last_page_len on the host, kv_indices by a bounds-checking kernel), the two
// FlashInfer schedules (PrefillPlan), and per layer: the two FA2 launches and their LSE merge.
// Includes FlashInfer's scheduler and cascade headers only; the FA2 kernels are instantiated in
// fi_prefill_hd<D>_<dtype>.cu and reached through fi_launch.h.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <flashinfer/attention/cascade.cuh>
#include <flashinfer/attention/scheduler.cuh>

#include "fi_launch.h"

namespace trtkv {
namespace flashinfer_attn {

using detail::PartArgs;

char const* status_string(Status status) noexcept {
    switch (status) {
    case Status::kOK: return "ok";
    case Status::kINVALID_ARGUMENT: return "invalid argument (shapes, pointers or indices outside the op contract)";
    case Status::kCUDA_ERROR: return "CUDA error";
    case Status::kWORKSPACE_TOO_SMALL: return "workspace too small: size it with workspace_size(shape, max_tokens, max_seqs)";
    case Status::kUNSUPPORTED: return "unsupported: head_dim must be 64 or 128, query fp16/bf16, KV = query dtype or fp8 e4m3";
    case Status::kINTERNAL_ERROR: return "internal error in FlashInfer's planner or dispatcher";
    }
    return "unknown status";
}

namespace {

constexpr int64_t kPlanMagic = 0x74726b7666693031LL;  // "trkvfi01"
constexpr size_t kAlign = 256;

size_t align_up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

size_t dtype_bytes(DType d) { return d == DType::kFP8E4M3 ? 1 : 2; }

//! Byte offsets into the device and host workspaces; a pure function of the sizing inputs.
struct Layout {
    // device
    size_t error = 0;         //!< unsigned long long: 0 or 1 + flat block_tables index
    size_t tables = 0;        //!< int32 [S+1 qo_indptr | S+1 kv_indptr | S kv_last_page_len]
    size_t kv_indices = 0;    //!< int32 [S * M]
    size_t int_hist = 0, int_new = 0;      //!< FlashInfer int workspaces (schedules)
    size_t float_hist = 0, float_new = 0;  //!< FlashInfer float workspaces (split-KV partials)
    size_t o_hist = 0;        //!< [T, H, D] query dtype: history part's output
    size_t lse_hist = 0;      //!< float [T, H]
    size_t lse_new = 0;       //!< float [T, H]
    size_t device_total = 0;
    size_t int_bytes = 0, float_bytes = 0;
    // host
    size_t host_tables = 0, host_int_hist = 0, host_int_new = 0;
    size_t host_total = 0;
};

int current_num_sms() {
    int dev = 0;
    int num_sms = 0;
    if (cudaGetDevice(&dev) != cudaSuccess
        || cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || num_sms <= 0) {
        cudaGetLastError();
        return 1024;  // no device: a bound larger than any current GPU
    }
    return num_sms;
}

bool valid_shape(ProblemShape const& s) {
    return s.num_heads > 0 && s.num_kv_heads > 0 && s.num_heads % s.num_kv_heads == 0 && s.head_dim > 0
        && s.block_size > 0 && s.num_blocks > 0 && s.num_blocks <= std::numeric_limits<int32_t>::max()
        && s.max_blocks_per_seq >= 0
        && static_cast<int64_t>(s.max_blocks_per_seq) * s.block_size <= std::numeric_limits<int32_t>::max();
}

bool supported_shape(ProblemShape const& s) {
    bool const dims = s.head_dim == 64 || s.head_dim == 128;
    bool const q = s.query_dtype == DType::kFP16 || s.query_dtype == DType::kBF16;
    bool const kv = s.kv_dtype == s.query_dtype || s.kv_dtype == DType::kFP8E4M3;
    // MergeStateInPlace launches (D / vec) x H threads per block, vec = max(8, D / 32).
    int64_t const merge_threads = static_cast<int64_t>(s.head_dim / std::max(8, s.head_dim / 32)) * s.num_heads;
    return dims && q && kv && merge_threads <= 1024;
}

Layout make_layout(ProblemShape const& s, int64_t max_tokens, int32_t max_seqs, int num_sms) {
    Layout l;
    int64_t const group = s.num_heads / s.num_kv_heads;
    // FlashInfer's FA2 schedule: work items = query tiles (>= 16 packed rows) x KV chunks; with
    // split-KV the planner keeps them <= 2 * SMs / Hkv, without it there is one chunk per tile.
    int64_t const max_split_items = std::max<int64_t>(2LL * num_sms / s.num_kv_heads, 1);
    int64_t const max_items = std::max(max_split_items, ceil_div(max_tokens * group, 16) + max_seqs);
    l.int_bytes = align_up(sizeof(int32_t) * (3 * max_items + max_seqs + 1 + 1 + max_tokens + 1) + 8 * 16);
    int64_t const max_partial_rows = ceil_div(max_split_items * 128, group);
    l.float_bytes = align_up(sizeof(float) * static_cast<size_t>(s.num_heads) * max_partial_rows * (s.head_dim + 1) + 4 * 16);
    size_t const rows = static_cast<size_t>(max_tokens) * s.num_heads;
    size_t off = 0;
    auto take = [&off](size_t bytes) { size_t const at = off; off = align_up(off + bytes); return at; };
    l.error = take(sizeof(unsigned long long));
    l.tables = take(sizeof(int32_t) * (3 * static_cast<size_t>(max_seqs) + 2));
    l.kv_indices = take(sizeof(int32_t) * static_cast<size_t>(max_seqs) * s.max_blocks_per_seq);
    l.int_hist = take(l.int_bytes);
    l.int_new = take(l.int_bytes);
    l.float_hist = take(l.float_bytes);
    l.float_new = take(l.float_bytes);
    l.o_hist = take(rows * s.head_dim * dtype_bytes(s.query_dtype));
    l.lse_hist = take(rows * sizeof(float));
    l.lse_new = take(rows * sizeof(float));
    l.device_total = off;
    off = 0;
    l.host_tables = take(sizeof(int32_t) * (3 * static_cast<size_t>(max_seqs) + 2));
    l.host_int_hist = take(l.int_bytes);
    l.host_int_new = take(l.int_bytes);
    l.host_total = off;
    return l;
}

//! What run() needs from plan(): stored in Plan::words.
struct PlanData {
    int64_t magic;
    ProblemShape shape;
    Layout layout;
    int64_t num_tokens;
    int64_t total_rows;  //!< query_start_loc[S]
    int32_t num_seqs;
    bool has_history;    //!< some sequence has context_lens > 0 and new tokens
    bool has_new;        //!< total_rows > 0
    bool split_any;
    int64_t hist_info[15];  //!< flashinfer::PrefillPlanInfo::ToVector()
    int64_t new_info[15];
};
static_assert(sizeof(PlanData) <= sizeof(Plan), "PlanData outgrew Plan::words");

template <typename T>
T* at(void* base, size_t offset) { return reinterpret_cast<T*>(static_cast<char*>(base) + offset); }

//! kv_indices[kv_indptr[s] + j] = block_tables[s, j] for the pages sequence s uses, each
//! checked against [0, N); a bad id becomes block 0 and is recorded in *error (first writer).
__global__ void build_kv_indices_kernel(int32_t const* __restrict__ block_tables,
    int32_t const* __restrict__ kv_indptr, int32_t num_seqs, int32_t max_blocks_per_seq,
    int32_t num_blocks, int32_t* __restrict__ kv_indices, unsigned long long* error) {
    for (int32_t s = blockIdx.x; s < num_seqs; s += gridDim.x) {
        int32_t const first = kv_indptr[s];
        int32_t const pages = kv_indptr[s + 1] - first;
        for (int32_t j = threadIdx.x; j < pages && j < max_blocks_per_seq; j += blockDim.x) {
            int64_t const flat = static_cast<int64_t>(s) * max_blocks_per_seq + j;
            int32_t id = block_tables[flat];
            if (id < 0 || id >= num_blocks) {
                atomicCAS(error, 0ULL, static_cast<unsigned long long>(flat) + 1ULL);
                id = 0;
            }
            kv_indices[first + j] = id;
        }
    }
}

Status validate_step(ProblemShape const& shape, StepInputs const& step) {
    if (step.num_tokens < 0 || step.num_seqs < 0 || step.num_tokens > step.max_tokens
        || step.num_seqs > step.max_seqs || step.max_tokens > std::numeric_limits<int32_t>::max()) {
        return Status::kINVALID_ARGUMENT;
    }
    if (step.num_seqs == 0) {
        return Status::kOK;
    }
    if (step.query_start_loc_host == nullptr || step.context_lens_host == nullptr) {
        return Status::kINVALID_ARGUMENT;
    }
    int32_t const* qsl = step.query_start_loc_host;
    if (qsl[0] != 0) {
        return Status::kINVALID_ARGUMENT;
    }
    int64_t const max_ctx = static_cast<int64_t>(shape.max_blocks_per_seq) * shape.block_size;
    bool any_ctx = false;
    for (int32_t s = 0; s < step.num_seqs; ++s) {
        if (qsl[s + 1] < qsl[s] || qsl[s + 1] > step.num_tokens) {
            return Status::kINVALID_ARGUMENT;
        }
        int32_t const ctx = step.context_lens_host[s];
        if (ctx < 0 || ctx > max_ctx) {
            return Status::kINVALID_ARGUMENT;
        }
        any_ctx = any_ctx || ctx > 0;
    }
    if (any_ctx && step.block_tables == nullptr) {
        return Status::kINVALID_ARGUMENT;
    }
    if (step.block_tables_host != nullptr) {
        for (int32_t s = 0; s < step.num_seqs; ++s) {
            int64_t const pages = ceil_div(step.context_lens_host[s], shape.block_size);
            int32_t const* row = step.block_tables_host + static_cast<int64_t>(s) * shape.max_blocks_per_seq;
            for (int64_t j = 0; j < pages; ++j) {
                if (row[j] < 0 || row[j] >= shape.num_blocks) {
                    return Status::kINVALID_ARGUMENT;
                }
            }
        }
    }
    return Status::kOK;
}

//! FlashInfer's PrefillPlan for one part, after checking its exact need fits the reserved space.
Status plan_part(ProblemShape const& shape, PlanData const& d, int32_t* qo_indptr_h, int32_t* kv_indptr_h,
    uint32_t page_size, void* dev_ws, void* host_ws, size_t int_off, size_t float_off, size_t host_int_off,
    int64_t* info_out, cudaStream_t stream) {
    Layout const& l = d.layout;
    bool const disable_split = shape.has_sliding_window;
    uint32_t const kv_bytes = static_cast<uint32_t>(dtype_bytes(shape.kv_dtype));
    size_t float_need = 0;
    size_t int_need = 0;
    cudaError_t err = flashinfer::PrefillPlanWorkspaceSize<int32_t>(float_need, int_need, qo_indptr_h,
        kv_indptr_h, static_cast<uint32_t>(d.total_rows), static_cast<uint32_t>(d.num_seqs),
        shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.head_dim, page_size,
        /*enable_cuda_graph=*/false, static_cast<uint32_t>(dtype_bytes(shape.query_dtype)),
        /*window_left=*/-1, /*fixed_split_size=*/-1, disable_split, /*num_colocated_ctas=*/0,
        /*uniform_q_len=*/0, /*fixed_uniform_q_len=*/false, stream, kv_bytes);
    if (err != cudaSuccess) {
        return Status::kCUDA_ERROR;
    }
    if (float_need > l.float_bytes || int_need > l.int_bytes) {
        return Status::kWORKSPACE_TOO_SMALL;
    }
    flashinfer::PrefillPlanInfo info;
    err = flashinfer::PrefillPlan<int32_t>(at<char>(dev_ws, float_off), l.float_bytes, at<char>(dev_ws, int_off),
        at<char>(host_ws, host_int_off), l.int_bytes, info, qo_indptr_h, kv_indptr_h,
        static_cast<uint32_t>(d.total_rows), static_cast<uint32_t>(d.num_seqs), shape.num_heads,
        shape.num_kv_heads, shape.head_dim, shape.head_dim, page_size, /*enable_cuda_graph=*/false,
        static_cast<uint32_t>(dtype_bytes(shape.query_dtype)), /*window_left=*/-1,
        /*fixed_split_size=*/-1, disable_split, /*num_colocated_ctas=*/0, /*uniform_q_len=*/0,
        /*fixed_uniform_q_len=*/false, stream, kv_bytes);
    if (err != cudaSuccess) {
        return Status::kCUDA_ERROR;
    }
    std::vector<int64_t> const v = info.ToVector();
    std::copy(v.begin(), v.end(), info_out);
    return Status::kOK;
}

Status plan_impl(ProblemShape const& shape, StepInputs const& step, void* dev_ws, size_t dev_bytes,
    void* host_ws, size_t host_bytes, Plan* out, cudaStream_t stream) {
    if (out == nullptr || !valid_shape(shape)) {
        return Status::kINVALID_ARGUMENT;
    }
    if (!supported_shape(shape)) {
        return Status::kUNSUPPORTED;
    }
    Status st = validate_step(shape, step);
    if (st != Status::kOK) {
        return st;
    }
    PlanData d{};
    d.magic = kPlanMagic;
    d.shape = shape;
    d.layout = make_layout(shape, step.max_tokens, step.max_seqs, current_num_sms());
    if (dev_ws == nullptr || host_ws == nullptr || reinterpret_cast<uintptr_t>(dev_ws) % kAlign != 0) {
        return Status::kINVALID_ARGUMENT;
    }
    if (dev_bytes < d.layout.device_total || host_bytes < d.layout.host_total) {
        return Status::kWORKSPACE_TOO_SMALL;
    }
    int32_t const S = step.num_seqs;
    d.num_tokens = step.num_tokens;
    d.num_seqs = S;
    d.total_rows = S > 0 ? step.query_start_loc_host[S] : 0;
    d.has_new = d.total_rows > 0;
    Layout const& l = d.layout;

    if (cudaMemsetAsync(at<char>(dev_ws, l.error), 0, sizeof(unsigned long long), stream) != cudaSuccess) {
        return Status::kCUDA_ERROR;
    }
    if (d.has_new) {
        // Host tables: qo_indptr | kv_indptr (pages) | kv_last_page_len, uploaded in one copy.
        int32_t* qo_indptr = at<int32_t>(host_ws, l.host_tables);
        int32_t* kv_indptr = qo_indptr + (S + 1);
        int32_t* last_page_len = kv_indptr + (S + 1);
        kv_indptr[0] = 0;
        for (int32_t s = 0; s < S; ++s) {
            int32_t const ctx = step.context_lens_host[s];
            int32_t const pages = static_cast<int32_t>(ceil_div(ctx, shape.block_size));
            qo_indptr[s] = step.query_start_loc_host[s];
            kv_indptr[s + 1] = kv_indptr[s] + pages;
            // get_length = (pages - 1) * B + last; pages == 0 reads as length 0 whatever last is.
            last_page_len[s] = pages > 0 ? ctx - (pages - 1) * shape.block_size : 0;
            d.has_history = d.has_history || (ctx > 0 && qo_indptr[s] < step.query_start_loc_host[s + 1]);
        }
        qo_indptr[S] = step.query_start_loc_host[S];
        size_t const table_bytes = sizeof(int32_t) * (3 * static_cast<size_t>(S) + 2);
        if (cudaMemcpyAsync(at<char>(dev_ws, l.tables), qo_indptr, table_bytes, cudaMemcpyHostToDevice, stream)
            != cudaSuccess) {
            return Status::kCUDA_ERROR;
        }
        if (d.has_history) {
            int32_t const* kv_indptr_d = at<int32_t>(dev_ws, l.tables) + (S + 1);
            int const grid = std::min(S, 4096);
            build_kv_indices_kernel<<<grid, 128, 0, stream>>>(step.block_tables, kv_indptr_d, S,
                shape.max_blocks_per_seq, static_cast<int32_t>(shape.num_blocks),
                at<int32_t>(dev_ws, l.kv_indices), at<unsigned long long>(dev_ws, l.error));
            if (cudaGetLastError() != cudaSuccess) {
                return Status::kCUDA_ERROR;
            }
            st = plan_part(shape, d, qo_indptr, kv_indptr, static_cast<uint32_t>(shape.block_size), dev_ws,
                host_ws, l.int_hist, l.float_hist, l.host_int_hist, d.hist_info, stream);
            if (st != Status::kOK) {
                return st;
            }
        }
        // New tokens: ragged KV whose indptr is the query's (page_size 1).
        st = plan_part(shape, d, qo_indptr, qo_indptr, 1u, dev_ws, host_ws, l.int_new, l.float_new,
            l.host_int_new, d.new_info, stream);
        if (st != Status::kOK) {
            return st;
        }
        d.split_any = (d.has_history && d.hist_info[14] != 0) || d.new_info[14] != 0;
    }
    std::memset(out->words, 0, sizeof(out->words));
    std::memcpy(out->words, &d, sizeof(d));
    return Status::kOK;
}

//! PartArgs of one part from its PrefillPlanInfo vector.
void fill_schedule(PartArgs& a, int64_t const* info, void* dev_ws, size_t int_off, size_t float_off) {
    flashinfer::PrefillPlanInfo p;
    p.FromVector(std::vector<int64_t>(info, info + 15));
    char* ints = at<char>(dev_ws, int_off);
    char* floats = at<char>(dev_ws, float_off);
    a.request_indices = reinterpret_cast<int32_t*>(ints + p.request_indices_offset);
    a.qo_tile_indices = reinterpret_cast<int32_t*>(ints + p.qo_tile_indices_offset);
    a.kv_tile_indices = reinterpret_cast<int32_t*>(ints + p.kv_tile_indices_offset);
    a.o_indptr = reinterpret_cast<int32_t*>(ints + p.o_indptr_offset);
    a.kv_chunk_size_ptr = reinterpret_cast<int32_t*>(ints + p.kv_chunk_size_ptr_offset);
    a.merge_indptr = p.split_kv ? reinterpret_cast<int32_t*>(ints + p.merge_indptr_offset) : nullptr;
    a.tmp_v = p.split_kv ? static_cast<void*>(floats + p.v_offset) : nullptr;
    a.tmp_s = p.split_kv ? reinterpret_cast<float*>(floats + p.s_offset) : nullptr;
    a.padded_batch_size = p.padded_batch_size;
    a.total_num_rows = p.total_num_rows;
    a.cta_tile_q = static_cast<int32_t>(p.cta_tile_q);
}

// (head_dim, query dtype) -> instantiated launchers. Adding a head_dim: a new
// fi_prefill_hd<D>_<dtype>.cu per query dtype, a case here, and supported_shape().
template <int D>
Status launch_part(bool history, DType q, PartArgs const& a, cudaStream_t stream) {
    using namespace detail;
    if (q == DType::kFP16) {
        return history ? run_history<D, DType::kFP16>(a, stream) : run_new_tokens<D, DType::kFP16>(a, stream);
    }
    return history ? run_history<D, DType::kBF16>(a, stream) : run_new_tokens<D, DType::kBF16>(a, stream);
}

Status dispatch_part(bool history, ProblemShape const& s, PartArgs const& a, cudaStream_t stream) {
    switch (s.head_dim) {
    case 64: return launch_part<64>(history, s.query_dtype, a, stream);
    case 128: return launch_part<128>(history, s.query_dtype, a, stream);
    default: return Status::kUNSUPPORTED;
    }
}

Status run_impl(Plan const& plan, LayerInputs const& layer, void* dev_ws, cudaStream_t stream) {
    PlanData d;
    std::memcpy(&d, plan.words, sizeof(d));
    if (d.magic != kPlanMagic || dev_ws == nullptr) {
        return Status::kINVALID_ARGUMENT;
    }
    ProblemShape const& s = d.shape;
    Layout const& l = d.layout;
    bool const fp8 = s.kv_dtype == DType::kFP8E4M3;
    bool const bad_scales = fp8
        && (layer.k_scale == nullptr || layer.v_scale == nullptr
            || (layer.k_scale_numel != 1 && layer.k_scale_numel != s.num_kv_heads)
            || (layer.v_scale_numel != 1 && layer.v_scale_numel != s.num_kv_heads));
    if ((d.num_tokens > 0 && (layer.query == nullptr || layer.output == nullptr))
        || (d.has_new && (layer.key == nullptr || layer.value == nullptr))
        || (d.has_history && layer.kv_cache == nullptr) || bad_scales || !(layer.scale >= 0.f)
        || !(layer.softcap >= 0.f) || layer.sliding_window < 0
        || (layer.sliding_window > 0 && !s.has_sliding_window)) {
        return Status::kINVALID_ARGUMENT;
    }
    size_t const row_bytes = static_cast<size_t>(s.num_heads) * s.head_dim * dtype_bytes(s.query_dtype);
    if (d.num_tokens > d.total_rows
        && cudaMemsetAsync(static_cast<char*>(layer.output) + d.total_rows * row_bytes, 0,
               (d.num_tokens - d.total_rows) * row_bytes, stream) != cudaSuccess) {
        return Status::kCUDA_ERROR;
    }
    if (!d.has_new) {
        return Status::kOK;
    }
    int32_t* tables = at<int32_t>(dev_ws, l.tables);
    PartArgs a;
    a.q = layer.query;
    a.k_scale = layer.k_scale;
    a.v_scale = layer.v_scale;
    a.k_scale_numel = layer.k_scale_numel;
    a.v_scale_numel = layer.v_scale_numel;
    a.q_indptr = tables;
    a.num_seqs = d.num_seqs;
    a.num_heads = s.num_heads;
    a.num_kv_heads = s.num_kv_heads;
    a.block_size = s.block_size;
    a.sm_scale = layer.scale > 0.f ? layer.scale : 1.f / std::sqrt(static_cast<float>(s.head_dim));
    a.softcap = layer.softcap;
    a.sliding_window = layer.sliding_window;
    a.kv_dtype = s.kv_dtype;

    // (b) new tokens, causal, straight into the output.
    PartArgs b = a;
    b.k = layer.key;
    b.v = layer.value;
    b.kv_indptr = tables;
    b.o = layer.output;
    b.lse = at<float>(dev_ws, l.lse_new);
    fill_schedule(b, d.new_info, dev_ws, l.int_new, l.float_new);
    Status st = dispatch_part(false, s, b, stream);
    if (st != Status::kOK || !d.has_history) {
        return st;
    }
    // (a) history over the pool, then merge into the output by LSE.
    PartArgs h = a;
    size_t const half_page = static_cast<size_t>(s.block_size) * s.num_kv_heads * s.head_dim * dtype_bytes(s.kv_dtype);
    h.k = layer.kv_cache;
    h.v = static_cast<char const*>(layer.kv_cache) + half_page;
    h.kv_indptr = tables + (d.num_seqs + 1);
    h.kv_last_page_len = tables + 2 * (d.num_seqs + 1);
    h.kv_indices = at<int32_t>(dev_ws, l.kv_indices);
    h.o = at<char>(dev_ws, l.o_hist);
    h.lse = at<float>(dev_ws, l.lse_hist);
    fill_schedule(h, d.hist_info, dev_ws, l.int_hist, l.float_hist);
    st = dispatch_part(true, s, h, stream);
    if (st != Status::kOK) {
        return st;
    }
    uint32_t const rows = static_cast<uint32_t>(d.total_rows);
    cudaError_t err;
    if (s.query_dtype == DType::kFP16) {
        err = flashinfer::MergeStateInPlace(static_cast<half*>(layer.output), b.lse, static_cast<half*>(h.o), h.lse,
            rows, s.num_heads, s.head_dim, nullptr, stream);
    } else {
        err = flashinfer::MergeStateInPlace(static_cast<__nv_bfloat16*>(layer.output), b.lse,
            static_cast<__nv_bfloat16*>(h.o), h.lse, rows, s.num_heads, s.head_dim, nullptr, stream);
    }
    return err == cudaSuccess ? Status::kOK : Status::kCUDA_ERROR;
}

} // namespace

WorkspaceSizes workspace_size(ProblemShape const& shape, int64_t max_tokens, int32_t max_seqs) noexcept {
    WorkspaceSizes w;
    if (!valid_shape(shape) || max_tokens < 0 || max_seqs < 0) {
        return w;
    }
    Layout const l = make_layout(shape, max_tokens, max_seqs, current_num_sms());
    w.device_bytes = l.device_total;
    w.host_bytes = l.host_total;
    return w;
}

Status plan(ProblemShape const& shape, StepInputs const& step, void* device_workspace,
    size_t device_workspace_bytes, void* host_workspace, size_t host_workspace_bytes, Plan* out,
    cudaStream_t stream) noexcept {
    try {
        return plan_impl(shape, step, device_workspace, device_workspace_bytes, host_workspace,
            host_workspace_bytes, out, stream);
    } catch (std::exception const&) {
        return Status::kINTERNAL_ERROR;  // FlashInfer's planner reports through exceptions
    }
}

Status run(Plan const& plan, LayerInputs const& layer, void* device_workspace, cudaStream_t stream) noexcept {
    try {
        return run_impl(plan, layer, device_workspace, stream);
    } catch (std::exception const&) {
        return Status::kINTERNAL_ERROR;
    }
}

Status read_device_error(Plan const& plan, void const* device_workspace, int64_t* error,
    cudaStream_t stream) noexcept {
    PlanData d;
    std::memcpy(&d, plan.words, sizeof(d));
    if (d.magic != kPlanMagic || device_workspace == nullptr || error == nullptr) {
        return Status::kINVALID_ARGUMENT;
    }
    unsigned long long v = 0;
    if (cudaMemcpyAsync(&v, static_cast<char const*>(device_workspace) + d.layout.error, sizeof(v),
            cudaMemcpyDeviceToHost, stream) != cudaSuccess
        || cudaStreamSynchronize(stream) != cudaSuccess) {
        return Status::kCUDA_ERROR;
    }
    *error = static_cast<int64_t>(v);
    return Status::kOK;
}

} // namespace flashinfer_attn
} // namespace trtkv
