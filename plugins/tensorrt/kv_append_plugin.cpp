// KVAppend plugin: shapes/dtypes from the generated schema header, enqueue -> launch_kv_append.
#include "kv_append_plugin.h"

#include "plugin_common.h"

namespace trtkv {
namespace plugin {

namespace op = ::trtkv::ops::kv_append;

nvinfer1::IPluginCapability* KVAppendPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept {
    switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* KVAppendPlugin::clone() noexcept {
    try {
        return new KVAppendPlugin(*this);
    } catch (...) {
        return nullptr;
    }
}

char const* KVAppendPlugin::getPluginName() const noexcept { return op::kName; }
char const* KVAppendPlugin::getPluginVersion() const noexcept { return op::kVersion; }
char const* KVAppendPlugin::getPluginNamespace() const noexcept { return ops::kPluginNamespace; }

int32_t KVAppendPlugin::getNbOutputs() const noexcept { return op::kNumOutputs; }

int32_t KVAppendPlugin::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
    nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept {
    if (nbInputs != op::kNumInputs || nbOutputs != op::kNumOutputs) {
        return 1;
    }
    // The stored codes have the pool's dtype (strongly typed: follows the ONNX types).
    outputTypes[op::kKeyStored] = inputTypes[op::kKvCache];
    outputTypes[op::kValueStored] = inputTypes[op::kKvCache];
    return 0;
}

int32_t KVAppendPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept {
    if (nbInputs != op::kNumInputs || nbOutputs != op::kNumOutputs || inputs[op::kKey].nbDims != 3
        || inputs[op::kKvCache].nbDims != 5) {
        return 1;
    }
    // [T, Hkv, W]: W is the pool's row width, head_dim codes (+ one exponent per group with
    // dynamic int8 scales).
    for (int32_t o : {op::kKeyStored, op::kValueStored}) {
        outputs[o] = inputs[o == op::kKeyStored ? op::kKey : op::kValue];
        outputs[o].d[2] = inputs[op::kKvCache].d[4];
    }
    return 0;
}

bool KVAppendPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept {
    if (nbInputs != op::kNumInputs || nbOutputs != op::kNumOutputs || pos < 0 || pos >= nbInputs + nbOutputs) {
        return false;
    }
    nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
    if (pos < nbInputs) {
        if (!allowed(desc, op::kInputDTypeMasks[pos])) {
            return false;
        }
        if (pos == op::kValue) {
            return desc.type == inOut[op::kKey].desc.type;
        }
        return true;
    }
    int32_t const out = pos - nbInputs;
    return allowed(desc, op::kOutputDTypeMasks[out]) && desc.type == inOut[op::kKvCache].desc.type;
}

int32_t KVAppendPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept {
    if (nbInputs != op::kNumInputs || nbOutputs != op::kNumOutputs) {
        return 1;
    }
    // Dims are Dims64 since TensorRT 10: keep the extent 64-bit (-1 = dynamic at build time).
    int64_t const head_dim = in[op::kKey].desc.dims.d[2];
    int64_t const width = in[op::kKvCache].desc.dims.d[4];
    if (head_dim > 0 && head_dim % 8 != 0) {
        log_error("trtkv::KVAppend: head_dim must be a multiple of 8");
        return 1;
    }
    if (head_dim > 0 && width > 0 && width != head_dim
        && !(in[op::kKvCache].desc.type == nvinfer1::DataType::kINT8 && width > head_dim
             && head_dim % (width - head_dim) == 0)) {
        log_error("trtkv::KVAppend: the pool's last dimension must be head_dim, or head_dim + G exponent bytes "
                  "(int8 with dynamic scales, G dividing head_dim)");
        return 1;
    }
    return 0;
}

size_t KVAppendPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
    nvinfer1::DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept {
    return 0;
}

int32_t KVAppendPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* /*in*/, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept {
    return nbInputs == op::kNumInputs && nbOutputs == op::kNumOutputs ? 0 : 1;
}

int32_t KVAppendPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* outputDesc, void const* const* inputs, void* const* outputs,
    void* /*workspace*/, cudaStream_t stream) noexcept {
    nvinfer1::Dims const& key = inputDesc[op::kKey].dims;
    nvinfer1::Dims const& pool = inputDesc[op::kKvCache].dims;
    KVAppendParams p;
    if (!kernel_dtype(inputDesc[op::kKey].type, p.compute_dtype)
        || !kernel_dtype(inputDesc[op::kKvCache].type, p.kv_dtype) || key.nbDims != 3 || pool.nbDims != 5) {
        return 1;
    }
    p.key = inputs[op::kKey];
    p.value = inputs[op::kValue];
    p.slot_mapping = static_cast<int64_t const*>(inputs[op::kSlotMapping]);
    // The pool is a read-only engine input: TensorRT may copy or reformat inputs, so a write
    // through it could vanish. The kernel writes only the stored codes (nullptr pool); the
    // runtime copies them into the pool at slot_mapping after the step. The pool's shape is
    // still read for the bounds check of slot_mapping.
    p.kv_cache = nullptr;
    p.k_scale = static_cast<float const*>(inputs[op::kKScale]);
    p.v_scale = static_cast<float const*>(inputs[op::kVScale]);
    p.key_stored = outputs[op::kKeyStored];
    p.value_stored = outputs[op::kValueStored];
    p.num_tokens = key.d[0];
    p.num_kv_heads = static_cast<int32_t>(key.d[1]);
    p.head_dim = static_cast<int32_t>(key.d[2]);
    p.num_blocks = pool.d[0];
    p.block_size = static_cast<int32_t>(pool.d[2]);
    p.scale_groups = static_cast<int32_t>(pool.d[4] - key.d[2]);  // 0: static scales
    p.k_scale_numel = static_cast<int32_t>(volume(inputDesc[op::kKScale].dims));
    p.v_scale_numel = static_cast<int32_t>(volume(inputDesc[op::kVScale].dims));
    (void) outputDesc;
    Status const status = launch_kv_append(p, stream);
    if (status != Status::kOK) {
        log_error(std::string("trtkv::KVAppend: ") + status_string(status));
        return 1;
    }
    return 0;
}

nvinfer1::IPluginV3* KVAppendPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept {
    return clone();
}

nvinfer1::PluginFieldCollection const* KVAppendPlugin::getFieldsToSerialize() noexcept {
    mSerialized.nbFields = 0; // KVAppend has no attributes
    mSerialized.fields = nullptr;
    return &mSerialized;
}

KVAppendPluginCreator::KVAppendPluginCreator() {
    mFieldNames.nbFields = 0;
    mFieldNames.fields = nullptr;
}

char const* KVAppendPluginCreator::getPluginName() const noexcept { return op::kName; }
char const* KVAppendPluginCreator::getPluginVersion() const noexcept { return op::kVersion; }
char const* KVAppendPluginCreator::getPluginNamespace() const noexcept { return ops::kPluginNamespace; }

nvinfer1::PluginFieldCollection const* KVAppendPluginCreator::getFieldNames() noexcept { return &mFieldNames; }

nvinfer1::IPluginV3* KVAppendPluginCreator::createPlugin(
    char const* /*name*/, nvinfer1::PluginFieldCollection const* /*fc*/, nvinfer1::TensorRTPhase /*phase*/) noexcept {
    try {
        return new KVAppendPlugin();
    } catch (...) {
        return nullptr;
    }
}

} // namespace plugin
} // namespace trtkv
