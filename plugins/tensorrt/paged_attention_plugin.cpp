// PagedAttention plugin: shapes/dtypes from the generated schema header, enqueue ->
// FlashInfer (fp16/bf16 queries, head_dim 64/128, KV in the query dtype or fp8) when the
// runtime planned the step (optional 10th input `attention_workspace`, see attention_plan.h),
// else launch_paged_attention (trtkv's own kernels: fp32, int8 KV, other head dims).
#include "paged_attention_plugin.h"

#include <algorithm>

#include "attention_plan.h"
#include "plugin_common.h"

namespace trtkv {
namespace plugin {

namespace op = ::trtkv::ops::paged_attention;

namespace {

//! Inputs of the op plus, in plugin engines built for FlashInfer, the step's plan workspace.
constexpr int32_t kWorkspaceInput = op::kNumInputs;

bool valid_io(int32_t nbInputs, int32_t nbOutputs) noexcept {
    return (nbInputs == op::kNumInputs || nbInputs == op::kNumInputs + 1) && nbOutputs == op::kNumOutputs;
}

#if defined(TRTKV_WITH_FLASHINFER)
//! The FlashInfer dtype of a TensorRT tensor type, when FlashInfer serves it.
bool flashinfer_dtype(nvinfer1::DataType type, flashinfer_attn::DType& out) noexcept {
    switch (type) {
    case nvinfer1::DataType::kHALF: out = flashinfer_attn::DType::kFP16; return true;
    case nvinfer1::DataType::kBF16: out = flashinfer_attn::DType::kBF16; return true;
    case nvinfer1::DataType::kFP8: out = flashinfer_attn::DType::kFP8E4M3; return true;
    default: return false;
    }
}
#endif

//! Shapes of a launch from the tensor dims (T, H, D from query; Hkv from key; N, B and the row
//! width D + G from the pool (G: dynamic int8 scale groups, 0 otherwise); S from context_lens; M
//! from block_tables).
PagedAttentionParams shapes_from(nvinfer1::Dims const* dims) {
    PagedAttentionParams p;
    p.num_tokens = dims[op::kQuery].d[0];
    p.num_heads = static_cast<int32_t>(dims[op::kQuery].d[1]);
    p.head_dim = static_cast<int32_t>(dims[op::kQuery].d[2]);
    p.num_kv_heads = static_cast<int32_t>(dims[op::kKey].d[1]);
    p.num_blocks = dims[op::kKvCache].d[0];
    p.block_size = static_cast<int32_t>(dims[op::kKvCache].d[2]);
    p.scale_groups = static_cast<int32_t>(dims[op::kKvCache].d[4] - dims[op::kQuery].d[2]);
    p.num_seqs = static_cast<int32_t>(dims[op::kContextLens].d[0]);
    p.max_blocks_per_seq = static_cast<int32_t>(dims[op::kBlockTables].d[1]);
    p.k_scale_numel = static_cast<int32_t>(volume(dims[op::kKScale]));
    p.v_scale_numel = static_cast<int32_t>(volume(dims[op::kVScale]));
    return p;
}

} // namespace

PagedAttentionPlugin::PagedAttentionPlugin(float scale, int32_t sliding_window, float softcap)
    : mScale(scale)
    , mSlidingWindow(sliding_window)
    , mSoftcap(softcap) {}

nvinfer1::IPluginCapability* PagedAttentionPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept {
    switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* PagedAttentionPlugin::clone() noexcept {
    try {
        return new PagedAttentionPlugin(mScale, mSlidingWindow, mSoftcap);
    } catch (...) {
        return nullptr;
    }
}

char const* PagedAttentionPlugin::getPluginName() const noexcept { return op::kName; }
char const* PagedAttentionPlugin::getPluginVersion() const noexcept { return op::kVersion; }
char const* PagedAttentionPlugin::getPluginNamespace() const noexcept { return ops::kPluginNamespace; }

int32_t PagedAttentionPlugin::getNbOutputs() const noexcept { return op::kNumOutputs; }

int32_t PagedAttentionPlugin::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
    nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept {
    if (!valid_io(nbInputs, nbOutputs)) {
        return 1;
    }
    outputTypes[op::kOutput] = inputTypes[op::kQuery];
    return 0;
}

int32_t PagedAttentionPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept {
    if (!valid_io(nbInputs, nbOutputs) || inputs[op::kQuery].nbDims != 3) {
        return 1;
    }
    outputs[op::kOutput] = inputs[op::kQuery];
    return 0;
}

bool PagedAttentionPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept {
    if (!valid_io(nbInputs, nbOutputs) || pos < 0 || pos >= nbInputs + nbOutputs) {
        return false;
    }
    nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
    if (pos == kWorkspaceInput && nbInputs > op::kNumInputs) {  // opaque plan workspace
        return desc.format == nvinfer1::TensorFormat::kLINEAR && desc.type == nvinfer1::DataType::kINT64;
    }
    if (pos >= nbInputs) {
        return allowed(desc, op::kOutputDTypeMasks[pos - nbInputs]) && desc.type == inOut[op::kQuery].desc.type;
    }
    if (!allowed(desc, op::kInputDTypeMasks[pos])) {
        return false;
    }
    // The step's K/V arrive as stored, so they share the pool's dtype.
    if (pos == op::kValue || pos == op::kKvCache) {
        return desc.type == inOut[op::kKey].desc.type;
    }
    return true;
}

int32_t PagedAttentionPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept {
    if (!valid_io(nbInputs, nbOutputs)) {
        return 1;
    }
    mNumInputs = nbInputs;
    int64_t const heads = in[op::kQuery].desc.dims.d[1];
    int64_t const kv_heads = in[op::kKey].desc.dims.d[1];
    int64_t const head_dim = in[op::kQuery].desc.dims.d[2];
    if (head_dim > 0 && (head_dim % 8 != 0 || head_dim > kMaxHeadDim)) {
        log_error("trtkv::PagedAttention: head_dim must be a multiple of 8 and at most 256");
        return 1;
    }
    if (heads > 0 && kv_heads > 0 && heads % kv_heads != 0) {
        log_error("trtkv::PagedAttention: num_heads must be a multiple of num_kv_heads");
        return 1;
    }
    return 0;
}

size_t PagedAttentionPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept {
    if (nbInputs != op::kNumInputs && nbInputs != op::kNumInputs + 1) {
        return 0;
    }
    // The FlashInfer path uses the runtime's workspace input; this is for trtkv's own kernels,
    // which serve the shapes and dtypes FlashInfer is not built for.
    nvinfer1::Dims max_dims[op::kNumInputs];
    for (int32_t i = 0; i < op::kNumInputs; ++i) {
        max_dims[i] = inputs[i].max;
    }
    // Largest S and M give the largest tile list and split count; scan the token range since
    // the split count falls as T grows.
    PagedAttentionParams const p = shapes_from(max_dims);
    return paged_attention_max_workspace_size(p, inputs[op::kQuery].min.d[0], inputs[op::kQuery].max.d[0]);
}

int32_t PagedAttentionPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* /*in*/, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept {
    mNumInputs = nbInputs;
    return valid_io(nbInputs, nbOutputs) ? 0 : 1;
}

int32_t PagedAttentionPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* /*outputDesc*/, void const* const* inputs, void* const* outputs,
    void* workspace, cudaStream_t stream) noexcept {
    nvinfer1::Dims dims[op::kNumInputs];
    for (int32_t i = 0; i < op::kNumInputs; ++i) {
        dims[i] = inputDesc[i].dims;
    }
    PagedAttentionParams p = shapes_from(dims);
#if defined(TRTKV_WITH_FLASHINFER)
    if (mNumInputs > op::kNumInputs) {
        int32_t const handled = enqueue_flashinfer(inputDesc, inputs, outputs, p, stream);
        if (handled >= 0) {
            return handled;
        }
    }
#endif
    if (!kernel_dtype(inputDesc[op::kQuery].type, p.compute_dtype)
        || !kernel_dtype(inputDesc[op::kKvCache].type, p.kv_dtype)) {
        return 1;
    }
    p.query = inputs[op::kQuery];
    p.key = inputs[op::kKey];
    p.value = inputs[op::kValue];
    p.kv_cache = inputs[op::kKvCache];
    p.query_start_loc = static_cast<int32_t const*>(inputs[op::kQueryStartLoc]);
    p.context_lens = static_cast<int32_t const*>(inputs[op::kContextLens]);
    p.block_tables = static_cast<int32_t const*>(inputs[op::kBlockTables]);
    p.k_scale = static_cast<float const*>(inputs[op::kKScale]);
    p.v_scale = static_cast<float const*>(inputs[op::kVScale]);
    p.output = outputs[op::kOutput];
    p.scale = mScale;
    p.sliding_window = mSlidingWindow;
    p.softcap = mSoftcap;
    p.workspace = workspace;
    // TensorRT allocated getWorkspaceSize() for the profile's maximum shapes, which bounds this.
    p.workspace_size = paged_attention_workspace_size(p);
    Status const status = launch_paged_attention(p, stream);
    if (status != Status::kOK) {
        log_error(std::string("trtkv::PagedAttention: ") + status_string(status));
        return 1;
    }
    return 0;
}

#if defined(TRTKV_WITH_FLASHINFER)
int32_t PagedAttentionPlugin::enqueue_flashinfer(nvinfer1::PluginTensorDesc const* inputDesc,
    void const* const* inputs, void* const* outputs, PagedAttentionParams const& p, cudaStream_t stream) noexcept {
    namespace fi = ::trtkv::flashinfer_attn;
    fi::DType query_dtype;
    fi::DType kv_dtype;
    bool const eligible = flashinfer_dtype(inputDesc[op::kQuery].type, query_dtype)
        && flashinfer_dtype(inputDesc[op::kKvCache].type, kv_dtype) && query_dtype != fi::DType::kFP8E4M3
        && (kv_dtype == query_dtype || kv_dtype == fi::DType::kFP8E4M3) && (p.head_dim == 64 || p.head_dim == 128)
        && p.scale_groups == 0;
    if (!eligible) {
        return -1;  // trtkv's own kernels
    }
    fi::Plan plan;
    if (!find_attention_plan(inputs[kWorkspaceInput], &plan)) {
        log_error("trtkv::PagedAttention: no attention plan for this step's workspace; the runtime must call "
                  "trtkv_plan_attention before running the engine");
        return 1;
    }
    fi::LayerInputs layer;
    layer.query = inputs[op::kQuery];
    layer.key = inputs[op::kKey];
    layer.value = inputs[op::kValue];
    layer.kv_cache = inputs[op::kKvCache];
    layer.k_scale = static_cast<float const*>(inputs[op::kKScale]);
    layer.v_scale = static_cast<float const*>(inputs[op::kVScale]);
    layer.k_scale_numel = p.k_scale_numel;
    layer.v_scale_numel = p.v_scale_numel;
    layer.output = outputs[op::kOutput];
    layer.scale = mScale;
    layer.sliding_window = mSlidingWindow;
    layer.softcap = mSoftcap;
    fi::Status const status = fi::run(plan, layer, const_cast<void*>(inputs[kWorkspaceInput]), stream);
    if (status != fi::Status::kOK) {
        log_error(std::string("trtkv::PagedAttention (FlashInfer): ") + fi::status_string(status));
        return 1;
    }
    return 0;
}
#endif

nvinfer1::IPluginV3* PagedAttentionPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept {
    return clone();
}

nvinfer1::PluginFieldCollection const* PagedAttentionPlugin::getFieldsToSerialize() noexcept {
    mFields.clear();
    mFields.emplace_back(op::kAttrScale, &mScale, nvinfer1::PluginFieldType::kFLOAT32, 1);
    mFields.emplace_back(op::kAttrSlidingWindow, &mSlidingWindow, nvinfer1::PluginFieldType::kINT32, 1);
    mFields.emplace_back(op::kAttrSoftcap, &mSoftcap, nvinfer1::PluginFieldType::kFLOAT32, 1);
    mSerialized.nbFields = static_cast<int32_t>(mFields.size());
    mSerialized.fields = mFields.data();
    return &mSerialized;
}

PagedAttentionPluginCreator::PagedAttentionPluginCreator() {
    mFields.emplace_back(op::kAttrScale, nullptr, nvinfer1::PluginFieldType::kFLOAT32, 1);
    mFields.emplace_back(op::kAttrSlidingWindow, nullptr, nvinfer1::PluginFieldType::kINT32, 1);
    mFields.emplace_back(op::kAttrSoftcap, nullptr, nvinfer1::PluginFieldType::kFLOAT32, 1);
    mFieldNames.nbFields = static_cast<int32_t>(mFields.size());
    mFieldNames.fields = mFields.data();
}

char const* PagedAttentionPluginCreator::getPluginName() const noexcept { return op::kName; }
char const* PagedAttentionPluginCreator::getPluginVersion() const noexcept { return op::kVersion; }
char const* PagedAttentionPluginCreator::getPluginNamespace() const noexcept { return ops::kPluginNamespace; }

nvinfer1::PluginFieldCollection const* PagedAttentionPluginCreator::getFieldNames() noexcept { return &mFieldNames; }

nvinfer1::IPluginV3* PagedAttentionPluginCreator::createPlugin(
    char const* /*name*/, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept {
    try {
        double scale = op::kDefaultScale;
        double sliding_window = op::kDefaultSlidingWindow;
        double softcap = op::kDefaultSoftcap;
        // Unknown fields (e.g. the parser's plugin_version/plugin_namespace) are ignored.
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
            nvinfer1::PluginField const& f = fc->fields[i];
            bool ok = true;
            if (field_is(f, op::kAttrScale)) {
                ok = field_as_double(f, scale);
            } else if (field_is(f, op::kAttrSlidingWindow)) {
                ok = field_as_double(f, sliding_window);
            } else if (field_is(f, op::kAttrSoftcap)) {
                ok = field_as_double(f, softcap);
            }
            if (!ok) {
                log_error(std::string("trtkv::PagedAttention: field '") + f.name + "' has an unsupported type");
                return nullptr;
            }
        }
        if (scale < 0.0 || sliding_window < 0.0 || softcap < 0.0) {
            log_error("trtkv::PagedAttention: scale, sliding_window and softcap must be >= 0");
            return nullptr;
        }
        return new PagedAttentionPlugin(
            static_cast<float>(scale), static_cast<int32_t>(sliding_window), static_cast<float>(softcap));
    } catch (...) {
        return nullptr;
    }
}

} // namespace plugin
} // namespace trtkv
