// The per-step attention plan registry and its C ABI (see attention_plan.h).
#include "attention_plan.h"

#include <mutex>
#include <unordered_map>

namespace trtkv {
namespace plugin {

#if defined(TRTKV_WITH_FLASHINFER)
namespace fi = ::trtkv::flashinfer_attn;

namespace {

std::mutex& registry_mutex() {
    static std::mutex mutex;
    return mutex;
}

std::unordered_map<void const*, fi::Plan>& registry() {
    static std::unordered_map<void const*, fi::Plan> plans;
    return plans;
}

int32_t to_c_status(fi::Status status) noexcept {
    switch (status) {
    case fi::Status::kOK: return kTrtkvPlanOK;
    case fi::Status::kINVALID_ARGUMENT:
    case fi::Status::kWORKSPACE_TOO_SMALL: return kTrtkvPlanInvalid;
    case fi::Status::kCUDA_ERROR: return kTrtkvPlanCudaError;
    case fi::Status::kUNSUPPORTED: return kTrtkvPlanUnsupported;
    default: return kTrtkvPlanInternal;
    }
}

bool to_dtype(int32_t value, fi::DType& out) noexcept {
    if (value != static_cast<int32_t>(fi::DType::kFP16) && value != static_cast<int32_t>(fi::DType::kBF16)
        && value != static_cast<int32_t>(fi::DType::kFP8E4M3)) {
        return false;
    }
    out = static_cast<fi::DType>(value);
    return true;
}

bool make_shape(int32_t num_heads, int32_t num_kv_heads, int32_t head_dim, int32_t block_size, int64_t num_blocks,
    int32_t max_blocks_per_seq, int32_t query_dtype, int32_t kv_dtype, int32_t has_sliding_window,
    fi::ProblemShape& shape) noexcept {
    shape.num_heads = num_heads;
    shape.num_kv_heads = num_kv_heads;
    shape.head_dim = head_dim;
    shape.block_size = block_size;
    shape.num_blocks = num_blocks;
    shape.max_blocks_per_seq = max_blocks_per_seq;
    shape.has_sliding_window = has_sliding_window != 0;
    return to_dtype(query_dtype, shape.query_dtype) && to_dtype(kv_dtype, shape.kv_dtype);
}

} // namespace

bool find_attention_plan(void const* device_workspace, fi::Plan* plan) noexcept {
    try {
        std::lock_guard<std::mutex> lock(registry_mutex());
        auto const it = registry().find(device_workspace);
        if (it == registry().end()) {
            return false;
        }
        *plan = it->second;
        return true;
    } catch (...) {
        return false;
    }
}
#endif

} // namespace plugin
} // namespace trtkv

extern "C" {

int32_t trtkv_attention_workspace_size(int32_t num_heads, int32_t num_kv_heads, int32_t head_dim,
    int32_t block_size, int64_t num_blocks, int32_t max_blocks_per_seq, int32_t query_dtype, int32_t kv_dtype,
    int32_t has_sliding_window, int64_t max_tokens, int32_t max_seqs, size_t* device_bytes, size_t* host_bytes) {
#if defined(TRTKV_WITH_FLASHINFER)
    namespace fi = ::trtkv::flashinfer_attn;
    fi::ProblemShape shape;
    if (device_bytes == nullptr || host_bytes == nullptr
        || !trtkv::plugin::make_shape(num_heads, num_kv_heads, head_dim, block_size, num_blocks,
            max_blocks_per_seq, query_dtype, kv_dtype, has_sliding_window, shape)) {
        return kTrtkvPlanInvalid;
    }
    fi::WorkspaceSizes const sizes = fi::workspace_size(shape, max_tokens, max_seqs);
    if (sizes.device_bytes == 0) {
        return kTrtkvPlanInvalid;
    }
    *device_bytes = sizes.device_bytes;
    *host_bytes = sizes.host_bytes;
    return kTrtkvPlanOK;
#else
    (void) num_heads, (void) num_kv_heads, (void) head_dim, (void) block_size, (void) num_blocks;
    (void) max_blocks_per_seq, (void) query_dtype, (void) kv_dtype, (void) has_sliding_window;
    (void) max_tokens, (void) max_seqs, (void) device_bytes, (void) host_bytes;
    return kTrtkvPlanUnavailable;
#endif
}

int32_t trtkv_plan_attention(int32_t num_heads, int32_t num_kv_heads, int32_t head_dim, int32_t block_size,
    int64_t num_blocks, int32_t max_blocks_per_seq, int32_t query_dtype, int32_t kv_dtype,
    int32_t has_sliding_window, int64_t num_tokens, int32_t num_seqs, int32_t const* query_start_loc_host,
    int32_t const* context_lens_host, int32_t const* block_tables_device, int32_t const* block_tables_host,
    int64_t max_tokens, int32_t max_seqs, void* device_workspace, size_t device_bytes, void* host_workspace,
    size_t host_bytes, cudaStream_t stream) {
#if defined(TRTKV_WITH_FLASHINFER)
    namespace fi = ::trtkv::flashinfer_attn;
    try {
        fi::ProblemShape shape;
        if (!trtkv::plugin::make_shape(num_heads, num_kv_heads, head_dim, block_size, num_blocks,
                max_blocks_per_seq, query_dtype, kv_dtype, has_sliding_window, shape)) {
            return kTrtkvPlanInvalid;
        }
        fi::StepInputs step;
        step.num_tokens = num_tokens;
        step.num_seqs = num_seqs;
        step.query_start_loc_host = query_start_loc_host;
        step.context_lens_host = context_lens_host;
        step.block_tables = block_tables_device;
        step.block_tables_host = block_tables_host;
        step.max_tokens = max_tokens;
        step.max_seqs = max_seqs;
        fi::Plan plan;
        fi::Status const status = fi::plan(shape, step, device_workspace, device_bytes, host_workspace, host_bytes,
            &plan, stream);
        if (status != fi::Status::kOK) {
            trtkv_release_attention_plan(device_workspace);  // never run a stale plan
            return trtkv::plugin::to_c_status(status);
        }
        std::lock_guard<std::mutex> lock(trtkv::plugin::registry_mutex());
        trtkv::plugin::registry()[device_workspace] = plan;
        return kTrtkvPlanOK;
    } catch (...) {
        return kTrtkvPlanInternal;
    }
#else
    (void) num_heads, (void) num_kv_heads, (void) head_dim, (void) block_size, (void) num_blocks;
    (void) max_blocks_per_seq, (void) query_dtype, (void) kv_dtype, (void) has_sliding_window, (void) num_tokens;
    (void) num_seqs, (void) query_start_loc_host, (void) context_lens_host, (void) block_tables_device;
    (void) block_tables_host, (void) max_tokens, (void) max_seqs, (void) device_workspace, (void) device_bytes;
    (void) host_workspace, (void) host_bytes, (void) stream;
    return kTrtkvPlanUnavailable;
#endif
}

void trtkv_release_attention_plan(void const* device_workspace) {
#if defined(TRTKV_WITH_FLASHINFER)
    try {
        std::lock_guard<std::mutex> lock(trtkv::plugin::registry_mutex());
        trtkv::plugin::registry().erase(device_workspace);
    } catch (...) {
    }
#else
    (void) device_workspace;
#endif
}

} // extern "C"
