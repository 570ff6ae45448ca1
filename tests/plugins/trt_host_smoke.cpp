// Host-side smoke test of the TensorRT plugin wrappers, run without TensorRT's libraries or a GPU.
//
// Built by tests/plugins/test_schema_header.py together with plugins/tensorrt/*.cpp against
// TensorRT's public headers (the wrappers only implement TensorRT's pure-virtual interfaces, so
// no libnvinfer is needed). The kernel launchers are replaced by recording stubs, so enqueue()
// is checked for the parameters it hands the kernels, not for numerics (tests/plugins/
// test_kernels_gpu.py covers those). Exits 0 on success; prints the failed check otherwise.
#include <NvInferRuntime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../../plugins/generated/trtkv_ops.h"
#include "../../plugins/kernels/trtkv_kernels.h"
#include "../../plugins/flashinfer/trtkv_flashinfer.h"
#include "../../plugins/tensorrt/attention_plan.h"

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder* finder);

namespace {

int gFailures = 0;

#define CHECK(cond)                                                                                  \
    do {                                                                                             \
        if (!(cond)) {                                                                               \
            std::printf("FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);                            \
            ++gFailures;                                                                             \
        }                                                                                            \
    } while (0)

// --- recording stubs of the kernel host API ---------------------------------------------------
trtkv::KVAppendParams gLastAppend;
trtkv::PagedAttentionParams gLastAttention;
int gAppendCalls = 0;
int gAttentionCalls = 0;

} // namespace

namespace trtkv {
char const* status_string(Status status) noexcept { return status == Status::kOK ? "ok" : "error"; }
Status launch_kv_append(KVAppendParams const& p, cudaStream_t) noexcept {
    gLastAppend = p;
    ++gAppendCalls;
    return Status::kOK;
}
Status launch_paged_attention(PagedAttentionParams const& p, cudaStream_t) noexcept {
    gLastAttention = p;
    ++gAttentionCalls;
    return Status::kOK;
}
int32_t paged_attention_num_splits(PagedAttentionParams const&) noexcept { return 1; }
size_t paged_attention_workspace_size(PagedAttentionParams const& p) noexcept {
    return static_cast<size_t>(p.num_tokens) * 1000u + static_cast<size_t>(p.num_seqs);
}
size_t paged_attention_max_workspace_size(PagedAttentionParams const& p, int64_t, int64_t max_tokens) noexcept {
    return static_cast<size_t>(max_tokens) * 1000u + static_cast<size_t>(p.num_seqs);
}
} // namespace trtkv

// --- recording stubs of the FlashInfer host API (plugins/flashinfer/trtkv_flashinfer.h) --------
namespace {
trtkv::flashinfer_attn::LayerInputs gLastFiLayer;
trtkv::flashinfer_attn::Plan gLastFiPlan;
void* gLastFiWorkspace = nullptr;
int gFiRunCalls = 0;
} // namespace

namespace trtkv {
namespace flashinfer_attn {
char const* status_string(Status status) noexcept { return status == Status::kOK ? "ok" : "fi error"; }
WorkspaceSizes workspace_size(ProblemShape const& shape, int64_t max_tokens, int32_t max_seqs) noexcept {
    return WorkspaceSizes{static_cast<size_t>(max_tokens) * 64u + static_cast<size_t>(shape.num_heads), static_cast<size_t>(max_seqs)};
}
Status plan(ProblemShape const& shape, StepInputs const& step, void*, size_t, void*, size_t, Plan* out,
    cudaStream_t) noexcept {
    if (step.num_seqs < 1) {
        return Status::kINVALID_ARGUMENT;
    }
    out->words[0] = step.num_tokens;
    out->words[1] = shape.head_dim;
    return Status::kOK;
}
Status run(Plan const& plan, LayerInputs const& layer, void* device_workspace, cudaStream_t) noexcept {
    gLastFiPlan = plan;
    gLastFiLayer = layer;
    gLastFiWorkspace = device_workspace;
    ++gFiRunCalls;
    return Status::kOK;
}
Status read_device_error(Plan const&, void const*, int64_t*, cudaStream_t) noexcept { return Status::kOK; }
} // namespace flashinfer_attn
} // namespace trtkv

namespace {

class RecordingLogger : public nvinfer1::ILogger {
public:
    void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override {
        if (severity == Severity::kERROR) {
            errors.emplace_back(msg);
        }
    }
    std::vector<std::string> errors;
};

class Finder : public nvinfer1::ILoggerFinder {
public:
    explicit Finder(nvinfer1::ILogger* logger) : mLogger(logger) {}
    nvinfer1::ILogger* findLogger() override { return mLogger; }

private:
    nvinfer1::ILogger* mLogger;
};

bool same(char const* a, char const* b) { return a != nullptr && b != nullptr && std::strcmp(a, b) == 0; }

nvinfer1::Dims dims(std::initializer_list<int64_t> extents) {
    nvinfer1::Dims d{};
    d.nbDims = static_cast<int32_t>(extents.size());
    int32_t i = 0;
    for (int64_t e : extents) {
        d.d[i++] = e;
    }
    return d;
}

nvinfer1::PluginTensorDesc desc(nvinfer1::Dims const& d, nvinfer1::DataType type) {
    nvinfer1::PluginTensorDesc t{};
    t.dims = d;
    t.type = type;
    t.format = nvinfer1::TensorFormat::kLINEAR;
    t.scale = -1.0f;
    return t;
}

nvinfer1::DynamicPluginTensorDesc dyn(nvinfer1::PluginTensorDesc const& t) {
    nvinfer1::DynamicPluginTensorDesc d{};
    d.desc = t;
    d.min = t.dims;
    d.opt = t.dims;
    d.max = t.dims;
    return d;
}

nvinfer1::IPluginCreatorV3One* creator(char const* name) {
    int32_t n = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = getCreators(n);
    for (int32_t i = 0; creators != nullptr && i < n; ++i) {
        if (!same(creators[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE")) {
            continue;
        }
        auto* c = static_cast<nvinfer1::IPluginCreatorV3One*>(creators[i]);
        if (same(c->getPluginName(), name)) {
            return c;
        }
    }
    return nullptr;
}

void check_capabilities(nvinfer1::IPluginV3* plugin, char const* name) {
    auto* core = static_cast<nvinfer1::IPluginV3OneCore*>(
        plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kCORE));
    auto* build = plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD);
    auto* runtime = plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME);
    CHECK(core != nullptr && build != nullptr && runtime != nullptr);
    if (core == nullptr || build == nullptr || runtime == nullptr) {
        return;
    }
    CHECK(same(core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE"));
    CHECK(same(build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD"));
    CHECK(same(runtime->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME"));
    CHECK(same(core->getPluginName(), name));
    CHECK(same(core->getPluginVersion(), "1"));
    CHECK(same(core->getPluginNamespace(), trtkv::ops::kPluginNamespace));
}

void test_registration() {
    int32_t n = -1;
    nvinfer1::IPluginCreatorInterface* const* creators = getCreators(n);
    CHECK(creators != nullptr && n == 2);
    for (char const* name : {trtkv::ops::kv_append::kName, trtkv::ops::paged_attention::kName}) {
        nvinfer1::IPluginCreatorV3One* c = creator(name);
        CHECK(c != nullptr);
        if (c != nullptr) {
            CHECK(same(c->getPluginVersion(), "1"));
            CHECK(same(c->getPluginNamespace(), trtkv::ops::kPluginNamespace));
            CHECK(c->getFieldNames() != nullptr);
        }
    }
    CHECK(creator(trtkv::ops::kv_append::kName)->getFieldNames()->nbFields == 0);
    CHECK(creator(trtkv::ops::paged_attention::kName)->getFieldNames()->nbFields == 3);
}

void test_kv_append(RecordingLogger& logger) {
    namespace op = trtkv::ops::kv_append;
    using nvinfer1::DataType;
    nvinfer1::IPluginV3* plugin = creator(op::kName)->createPlugin("kv", nullptr, nvinfer1::TensorRTPhase::kBUILD);
    CHECK(plugin != nullptr);
    if (plugin == nullptr) {
        return;
    }
    check_capabilities(plugin, op::kName);
    auto* build = static_cast<nvinfer1::IPluginV3OneBuild*>(
        plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<nvinfer1::IPluginV3OneRuntime*>(
        plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));

    CHECK(build->getNbOutputs() == 2);
    DataType in_types[op::kNumInputs] = {DataType::kHALF, DataType::kHALF, DataType::kINT64, DataType::kFP8,
        DataType::kFLOAT, DataType::kFLOAT};
    DataType out_types[op::kNumOutputs] = {DataType::kFLOAT, DataType::kFLOAT};
    CHECK(build->getOutputDataTypes(out_types, op::kNumOutputs, in_types, op::kNumInputs) == 0);
    CHECK(out_types[0] == DataType::kFP8 && out_types[1] == DataType::kFP8); // the pool's dtype

    // T=5 tokens, Hkv=2, D=64, pool N=7 blocks of B=16, per-KV-head scales.
    nvinfer1::PluginTensorDesc in[op::kNumInputs] = {
        desc(dims({5, 2, 64}), DataType::kHALF), desc(dims({5, 2, 64}), DataType::kHALF),
        desc(dims({5}), DataType::kINT64), desc(dims({7, 2, 16, 2, 64}), DataType::kFP8),
        desc(dims({2}), DataType::kFLOAT), desc(dims({2}), DataType::kFLOAT)};
    nvinfer1::PluginTensorDesc out[op::kNumOutputs] = {
        desc(dims({5, 2, 64}), DataType::kFP8), desc(dims({5, 2, 64}), DataType::kFP8)};
    nvinfer1::DynamicPluginTensorDesc io[op::kNumInputs + op::kNumOutputs];
    for (int32_t i = 0; i < op::kNumInputs; ++i) {
        io[i] = dyn(in[i]);
    }
    for (int32_t i = 0; i < op::kNumOutputs; ++i) {
        io[op::kNumInputs + i] = dyn(out[i]);
    }
    for (int32_t pos = 0; pos < op::kNumInputs + op::kNumOutputs; ++pos) {
        CHECK(build->supportsFormatCombination(pos, io, op::kNumInputs, op::kNumOutputs));
    }
    io[op::kValue].desc.type = DataType::kBF16; // value must match key
    CHECK(!build->supportsFormatCombination(op::kValue, io, op::kNumInputs, op::kNumOutputs));
    io[op::kValue].desc.type = DataType::kHALF;
    io[op::kNumInputs].desc.type = DataType::kHALF; // stored codes must be in the pool dtype
    CHECK(!build->supportsFormatCombination(op::kNumInputs, io, op::kNumInputs, op::kNumOutputs));
    io[op::kNumInputs].desc.type = DataType::kFP8;
    io[op::kSlotMapping].desc.type = DataType::kINT32; // slot_mapping is int64 only
    CHECK(!build->supportsFormatCombination(op::kSlotMapping, io, op::kNumInputs, op::kNumOutputs));
    io[op::kSlotMapping].desc.type = DataType::kINT64;
    io[op::kKey].desc.format = nvinfer1::TensorFormat::kHWC8;
    CHECK(!build->supportsFormatCombination(op::kKey, io, op::kNumInputs, op::kNumOutputs));
    io[op::kKey].desc.format = nvinfer1::TensorFormat::kLINEAR;

    CHECK(build->configurePlugin(io, op::kNumInputs, io + op::kNumInputs, op::kNumOutputs) == 0);
    CHECK(build->getWorkspaceSize(io, op::kNumInputs, io + op::kNumInputs, op::kNumOutputs) == 0);
    size_t const errors_before = logger.errors.size();
    nvinfer1::DynamicPluginTensorDesc bad[op::kNumInputs];
    for (int32_t i = 0; i < op::kNumInputs; ++i) {
        bad[i] = io[i];
    }
    bad[op::kKey].desc.dims = dims({5, 2, 12}); // head_dim not a multiple of 8
    CHECK(build->configurePlugin(bad, op::kNumInputs, io + op::kNumInputs, op::kNumOutputs) != 0);
    CHECK(logger.errors.size() == errors_before + 1); // reported through the logger finder
    bad[op::kKey].desc.dims = dims({-1, 2, -1}); // dynamic at build time: accepted
    CHECK(build->configurePlugin(bad, op::kNumInputs, io + op::kNumInputs, op::kNumOutputs) == 0);

    CHECK(runtime->onShapeChange(in, op::kNumInputs, out, op::kNumOutputs) == 0);
    alignas(16) static unsigned char key[16], value[16], slots[16], pool[16], ks[16], vs[16], ko[16], vo[16];
    void const* inputs[op::kNumInputs] = {key, value, slots, pool, ks, vs};
    void* outputs[op::kNumOutputs] = {ko, vo};
    gAppendCalls = 0;
    CHECK(runtime->enqueue(in, out, inputs, outputs, nullptr, nullptr) == 0);
    CHECK(gAppendCalls == 1);
    trtkv::KVAppendParams const& p = gLastAppend;
    CHECK(p.key == key && p.value == value && p.kv_cache == nullptr); // the engine never writes the pool
    CHECK(static_cast<void const*>(p.slot_mapping) == slots);
    CHECK(static_cast<void const*>(p.k_scale) == ks && static_cast<void const*>(p.v_scale) == vs);
    CHECK(p.key_stored == ko && p.value_stored == vo);
    CHECK(p.num_tokens == 5 && p.num_kv_heads == 2 && p.head_dim == 64);
    CHECK(p.num_blocks == 7 && p.block_size == 16);
    CHECK(p.k_scale_numel == 2 && p.v_scale_numel == 2);
    CHECK(p.compute_dtype == trtkv::DType::kFP16 && p.kv_dtype == trtkv::DType::kFP8E4M3);
    CHECK(p.scale_groups == 0); // pool rows of head_dim: static scales

    // Dynamic int8 scales: pool rows of D + G (64 codes + 2 exponents); the stored codes take
    // the pool's width and the kernels get G.
    nvinfer1::PluginTensorDesc dyn_in[op::kNumInputs] = {in[0], in[1], in[2],
        desc(dims({7, 2, 16, 2, 66}), DataType::kINT8), in[4], in[5]};
    nvinfer1::PluginTensorDesc dyn_out[op::kNumOutputs] = {
        desc(dims({5, 2, 66}), DataType::kINT8), desc(dims({5, 2, 66}), DataType::kINT8)};
    nvinfer1::DynamicPluginTensorDesc dyn_io[op::kNumInputs + op::kNumOutputs];
    for (int32_t i = 0; i < op::kNumInputs; ++i) {
        dyn_io[i] = dyn(dyn_in[i]);
    }
    for (int32_t i = 0; i < op::kNumOutputs; ++i) {
        dyn_io[op::kNumInputs + i] = dyn(dyn_out[i]);
    }
    CHECK(build->configurePlugin(dyn_io, op::kNumInputs, dyn_io + op::kNumInputs, op::kNumOutputs) == 0);
    CHECK(runtime->enqueue(dyn_in, dyn_out, inputs, outputs, nullptr, nullptr) == 0);
    CHECK(gLastAppend.scale_groups == 2 && gLastAppend.head_dim == 64 && gLastAppend.kv_dtype == trtkv::DType::kINT8);
    size_t const errors_dyn = logger.errors.size();
    dyn_io[op::kKvCache].desc.dims = dims({7, 2, 16, 2, 67}); // G = 3 does not divide 64
    CHECK(build->configurePlugin(dyn_io, op::kNumInputs, dyn_io + op::kNumInputs, op::kNumOutputs) != 0);
    dyn_io[op::kKvCache].desc.dims = dims({7, 2, 16, 2, 66});
    dyn_io[op::kKvCache].desc.type = DataType::kHALF; // exponent bytes only in an int8 pool
    CHECK(build->configurePlugin(dyn_io, op::kNumInputs, dyn_io + op::kNumInputs, op::kNumOutputs) != 0);
    CHECK(logger.errors.size() == errors_dyn + 2);
    // getOutputShapes: [T, Hkv, the pool's last extent] (the expressions are only copied).
    nvinfer1::IDimensionExpr const* tags[5 * op::kNumInputs];
    alignas(8) static unsigned char tag_storage[5 * op::kNumInputs];
    nvinfer1::DimsExprs exprs[op::kNumInputs];
    for (int32_t i = 0; i < op::kNumInputs; ++i) {
        exprs[i].nbDims = i == op::kKvCache ? 5 : (i == op::kKey || i == op::kValue ? 3 : 1);
        for (int32_t j = 0; j < exprs[i].nbDims; ++j) {
            tags[5 * i + j] = reinterpret_cast<nvinfer1::IDimensionExpr const*>(&tag_storage[5 * i + j]);
            exprs[i].d[j] = tags[5 * i + j];
        }
    }
    nvinfer1::DimsExprs shapes[op::kNumOutputs];
    struct UnusedBuilder : nvinfer1::IExprBuilder {} builder; // KVAppend builds no expression
    CHECK(build->getOutputShapes(exprs, op::kNumInputs, nullptr, 0, shapes, op::kNumOutputs, builder) == 0);
    for (int32_t o = 0; o < op::kNumOutputs; ++o) {
        int32_t const src = o == op::kKeyStored ? op::kKey : op::kValue;
        CHECK(shapes[o].nbDims == 3 && shapes[o].d[0] == exprs[src].d[0] && shapes[o].d[1] == exprs[src].d[1]);
        CHECK(shapes[o].d[2] == exprs[op::kKvCache].d[4]);
    }

    nvinfer1::PluginFieldCollection const* fields = runtime->getFieldsToSerialize();
    CHECK(fields != nullptr && fields->nbFields == 0);
    nvinfer1::IPluginV3* attached = runtime->attachToContext(nullptr);
    CHECK(attached != nullptr);
    if (attached != nullptr) {
        check_capabilities(attached, op::kName);
        delete attached;
    }
    nvinfer1::IPluginV3* copy = plugin->clone();
    CHECK(copy != nullptr);
    delete copy;
    delete plugin;
}

void test_paged_attention(RecordingLogger& logger) {
    namespace op = trtkv::ops::paged_attention;
    using nvinfer1::DataType;
    using nvinfer1::PluginField;
    using nvinfer1::PluginFieldType;
    nvinfer1::IPluginCreatorV3One* c = creator(op::kName);

    // The ONNX parser may hand numbers as FLOAT64 / INT64 and adds fields of its own.
    double const scale = 0.125;
    int64_t const window = 4096;
    float const softcap = 30.0f;
    char const version[] = "1";
    PluginField parsed[] = {PluginField(op::kAttrScale, &scale, PluginFieldType::kFLOAT64, 1),
        PluginField(op::kAttrSlidingWindow, &window, PluginFieldType::kINT64, 1),
        PluginField(op::kAttrSoftcap, &softcap, PluginFieldType::kFLOAT32, 1),
        PluginField("plugin_version", version, PluginFieldType::kCHAR, 2)};
    nvinfer1::PluginFieldCollection fc{4, parsed};
    nvinfer1::IPluginV3* plugin = c->createPlugin("pa", &fc, nvinfer1::TensorRTPhase::kBUILD);
    CHECK(plugin != nullptr);
    if (plugin == nullptr) {
        return;
    }
    check_capabilities(plugin, op::kName);
    auto* build = static_cast<nvinfer1::IPluginV3OneBuild*>(
        plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<nvinfer1::IPluginV3OneRuntime*>(
        plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));

    // Serialized fields round-trip through createPlugin(kRUNTIME).
    nvinfer1::PluginFieldCollection const* saved = runtime->getFieldsToSerialize();
    CHECK(saved != nullptr && saved->nbFields == 3);
    nvinfer1::IPluginV3* restored = c->createPlugin("pa", saved, nvinfer1::TensorRTPhase::kRUNTIME);
    CHECK(restored != nullptr);

    // Wrong field type and negative values are rejected (logged, nullptr).
    size_t const errors_before = logger.errors.size();
    PluginField wrong[] = {PluginField(op::kAttrScale, version, PluginFieldType::kCHAR, 2)};
    nvinfer1::PluginFieldCollection wrong_fc{1, wrong};
    CHECK(c->createPlugin("pa", &wrong_fc, nvinfer1::TensorRTPhase::kBUILD) == nullptr);
    float const negative = -1.0f;
    PluginField neg[] = {PluginField(op::kAttrSoftcap, &negative, PluginFieldType::kFLOAT32, 1)};
    nvinfer1::PluginFieldCollection neg_fc{1, neg};
    CHECK(c->createPlugin("pa", &neg_fc, nvinfer1::TensorRTPhase::kBUILD) == nullptr);
    CHECK(logger.errors.size() == errors_before + 2);
    nvinfer1::IPluginV3* defaults = c->createPlugin("pa", nullptr, nvinfer1::TensorRTPhase::kBUILD);
    CHECK(defaults != nullptr);
    delete defaults;

    // T=6 tokens, H=8, Hkv=2, D=128, int8 pool N=9 x B=16, S=2 sequences, M=4 blocks each.
    nvinfer1::PluginTensorDesc in[op::kNumInputs] = {desc(dims({6, 8, 128}), DataType::kBF16),
        desc(dims({6, 2, 128}), DataType::kINT8), desc(dims({6, 2, 128}), DataType::kINT8),
        desc(dims({9, 2, 16, 2, 128}), DataType::kINT8), desc(dims({3}), DataType::kINT32),
        desc(dims({2}), DataType::kINT32), desc(dims({2, 4}), DataType::kINT32), desc(dims({1}), DataType::kFLOAT),
        desc(dims({2}), DataType::kFLOAT)};
    nvinfer1::PluginTensorDesc out[op::kNumOutputs] = {desc(dims({6, 8, 128}), DataType::kBF16)};
    DataType in_types[op::kNumInputs];
    for (int32_t i = 0; i < op::kNumInputs; ++i) {
        in_types[i] = in[i].type;
    }
    DataType out_type = DataType::kFLOAT;
    CHECK(build->getOutputDataTypes(&out_type, 1, in_types, op::kNumInputs) == 0 && out_type == DataType::kBF16);
    nvinfer1::DynamicPluginTensorDesc io[op::kNumInputs + op::kNumOutputs];
    for (int32_t i = 0; i < op::kNumInputs; ++i) {
        io[i] = dyn(in[i]);
    }
    io[op::kNumInputs] = dyn(out[0]);
    for (int32_t pos = 0; pos < op::kNumInputs + op::kNumOutputs; ++pos) {
        CHECK(build->supportsFormatCombination(pos, io, op::kNumInputs, op::kNumOutputs));
    }
    io[op::kKvCache].desc.type = DataType::kFP8; // pool must match the stored K/V
    CHECK(!build->supportsFormatCombination(op::kKvCache, io, op::kNumInputs, op::kNumOutputs));
    io[op::kKvCache].desc.type = DataType::kINT8;
    io[op::kNumInputs].desc.type = DataType::kHALF; // output follows the query
    CHECK(!build->supportsFormatCombination(op::kNumInputs, io, op::kNumInputs, op::kNumOutputs));
    io[op::kNumInputs].desc.type = DataType::kBF16;

    CHECK(build->configurePlugin(io, op::kNumInputs, io + op::kNumInputs, op::kNumOutputs) == 0);
    io[op::kQuery].min = dims({1, 8, 128});
    io[op::kQuery].max = dims({64, 8, 128});
    CHECK(build->getWorkspaceSize(io, op::kNumInputs, io + op::kNumInputs, op::kNumOutputs) == 64u * 1000u + 2u);
    nvinfer1::DynamicPluginTensorDesc bad[op::kNumInputs];
    for (int32_t i = 0; i < op::kNumInputs; ++i) {
        bad[i] = io[i];
    }
    bad[op::kKey].desc.dims = dims({6, 3, 128}); // H % Hkv != 0
    CHECK(build->configurePlugin(bad, op::kNumInputs, io + op::kNumInputs, op::kNumOutputs) != 0);
    bad[op::kKey].desc.dims = dims({6, 2, 128});
    bad[op::kQuery].desc.dims = dims({6, 8, 264}); // D > 256
    CHECK(build->configurePlugin(bad, op::kNumInputs, io + op::kNumInputs, op::kNumOutputs) != 0);

    for (nvinfer1::IPluginV3* instance : {plugin, restored}) {
        if (instance == nullptr) {
            continue;
        }
        auto* rt = static_cast<nvinfer1::IPluginV3OneRuntime*>(
            instance->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
        CHECK(rt->onShapeChange(in, op::kNumInputs, out, op::kNumOutputs) == 0);
        alignas(16) static unsigned char buffers[op::kNumInputs][16], output[16], workspace[16];
        void const* inputs[op::kNumInputs];
        for (int32_t i = 0; i < op::kNumInputs; ++i) {
            inputs[i] = buffers[i];
        }
        void* outputs[op::kNumOutputs] = {output};
        gAttentionCalls = 0;
        CHECK(rt->enqueue(in, out, inputs, outputs, workspace, nullptr) == 0);
        CHECK(gAttentionCalls == 1);
        trtkv::PagedAttentionParams const& p = gLastAttention;
        CHECK(p.query == buffers[op::kQuery] && p.kv_cache == buffers[op::kKvCache]);
        CHECK(static_cast<void const*>(p.block_tables) == buffers[op::kBlockTables]);
        CHECK(p.output == output && p.workspace == workspace && p.workspace_size == 6u * 1000u + 2u);
        CHECK(p.num_tokens == 6 && p.num_heads == 8 && p.num_kv_heads == 2 && p.head_dim == 128);
        CHECK(p.num_blocks == 9 && p.block_size == 16 && p.num_seqs == 2 && p.max_blocks_per_seq == 4);
        CHECK(p.k_scale_numel == 1 && p.v_scale_numel == 2);
        CHECK(p.compute_dtype == trtkv::DType::kBF16 && p.kv_dtype == trtkv::DType::kINT8);
        CHECK(p.scale == 0.125f && p.sliding_window == 4096 && p.softcap == 30.0f);
        CHECK(p.scale_groups == 0);
        nvinfer1::PluginTensorDesc dyn_in[op::kNumInputs];
        for (int32_t i = 0; i < op::kNumInputs; ++i) {
            dyn_in[i] = in[i];
        }
        dyn_in[op::kKvCache].dims.d[4] = 132; // dynamic int8 scales: 128 codes + 4 exponents
        dyn_in[op::kKey].dims.d[2] = dyn_in[op::kValue].dims.d[2] = 132;
        CHECK(rt->enqueue(dyn_in, out, inputs, outputs, workspace, nullptr) == 0);
        CHECK(gLastAttention.scale_groups == 4 && gLastAttention.head_dim == 128);
    }
    delete restored;
    delete plugin;
}

//! The FlashInfer route: a 10th input (the runtime's plan workspace) sends fp16/bf16 steps with
//! head_dim 64/128 to FlashInfer's run() with the plan registered for that workspace; other
//! dtypes keep trtkv's kernels; no plan registered is an error, never a stale plan.
void test_paged_attention_flashinfer(RecordingLogger& logger) {
    namespace op = trtkv::ops::paged_attention;
    using nvinfer1::DataType;
    nvinfer1::IPluginV3* plugin = creator(op::kName)->createPlugin("pa", nullptr, nvinfer1::TensorRTPhase::kBUILD);
    CHECK(plugin != nullptr);
    if (plugin == nullptr) {
        return;
    }
    auto* build = static_cast<nvinfer1::IPluginV3OneBuild*>(
        plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD));
    auto* rt = static_cast<nvinfer1::IPluginV3OneRuntime*>(
        plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
    constexpr int32_t kIn = op::kNumInputs + 1;
    nvinfer1::PluginTensorDesc in[kIn] = {desc(dims({6, 8, 64}), DataType::kHALF),
        desc(dims({6, 2, 64}), DataType::kHALF), desc(dims({6, 2, 64}), DataType::kHALF),
        desc(dims({9, 2, 16, 2, 64}), DataType::kHALF), desc(dims({3}), DataType::kINT32),
        desc(dims({2}), DataType::kINT32), desc(dims({2, 4}), DataType::kINT32), desc(dims({1}), DataType::kFLOAT),
        desc(dims({1}), DataType::kFLOAT), desc(dims({4096}), DataType::kINT64)};
    nvinfer1::PluginTensorDesc out[op::kNumOutputs] = {desc(dims({6, 8, 64}), DataType::kHALF)};
    nvinfer1::DynamicPluginTensorDesc io[kIn + op::kNumOutputs];
    for (int32_t i = 0; i < kIn; ++i) {
        io[i] = dyn(in[i]);
    }
    io[kIn] = dyn(out[0]);
    for (int32_t pos = 0; pos < kIn + op::kNumOutputs; ++pos) {
        CHECK(build->supportsFormatCombination(pos, io, kIn, op::kNumOutputs));
    }
    io[op::kNumInputs].desc.type = DataType::kFLOAT; // the plan workspace is int64 words
    CHECK(!build->supportsFormatCombination(op::kNumInputs, io, kIn, op::kNumOutputs));
    io[op::kNumInputs].desc.type = DataType::kINT64;
    CHECK(build->configurePlugin(io, kIn, io + kIn, op::kNumOutputs) == 0);
    CHECK(rt->onShapeChange(in, kIn, out, op::kNumOutputs) == 0);

    alignas(16) static unsigned char buffers[kIn][16], output[16], workspace[16];
    void const* inputs[kIn];
    for (int32_t i = 0; i < kIn; ++i) {
        inputs[i] = buffers[i];
    }
    void* outputs[op::kNumOutputs] = {output};
    // No plan registered for this workspace: refused (logged), nothing launched.
    gFiRunCalls = gAttentionCalls = 0;
    size_t const errors_before = logger.errors.size();
    CHECK(rt->enqueue(in, out, inputs, outputs, workspace, nullptr) != 0);
    CHECK(gFiRunCalls == 0 && gAttentionCalls == 0 && logger.errors.size() == errors_before + 1);

    int32_t const qsl[3] = {0, 5, 6};
    int32_t const ctx[2] = {0, 33};
    size_t device_bytes = 0, host_bytes = 0;
    CHECK(trtkv_attention_workspace_size(8, 2, 64, 16, 9, 4, 1, 1, 0, 64, 8, &device_bytes, &host_bytes) == 0);
    CHECK(device_bytes == 64u * 64u + 8u && host_bytes == 8u);
    CHECK(trtkv_attention_workspace_size(8, 2, 64, 16, 9, 4, 7, 1, 0, 64, 8, &device_bytes, &host_bytes) != 0);
    void* plan_ws = const_cast<void*>(inputs[op::kNumInputs]);
    CHECK(trtkv_plan_attention(8, 2, 64, 16, 9, 4, 1, 1, 0, 6, 2, qsl, ctx, nullptr, nullptr, 64, 8, plan_ws,
              4096 * 8, nullptr, 0, nullptr) == 0);
    CHECK(rt->enqueue(in, out, inputs, outputs, workspace, nullptr) == 0);
    CHECK(gFiRunCalls == 1 && gAttentionCalls == 0);
    CHECK(gLastFiPlan.words[0] == 6 && gLastFiPlan.words[1] == 64 && gLastFiWorkspace == plan_ws);
    CHECK(gLastFiLayer.query == buffers[op::kQuery] && gLastFiLayer.kv_cache == buffers[op::kKvCache]);
    CHECK(gLastFiLayer.key == buffers[op::kKey] && gLastFiLayer.output == output);
    CHECK(gLastFiLayer.k_scale_numel == 1 && gLastFiLayer.scale == 0.0f && gLastFiLayer.sliding_window == 0);

    // A failed plan forgets the old one: the next step is refused rather than run stale.
    CHECK(trtkv_plan_attention(8, 2, 64, 16, 9, 4, 1, 1, 0, 6, 0, qsl, ctx, nullptr, nullptr, 64, 8, plan_ws,
              4096 * 8, nullptr, 0, nullptr) != 0);
    CHECK(rt->enqueue(in, out, inputs, outputs, workspace, nullptr) != 0);
    CHECK(gFiRunCalls == 1);

    // fp32 queries (or int8 pools, other head dims) stay on trtkv's kernels, workspace or not.
    nvinfer1::PluginTensorDesc in32[kIn];
    for (int32_t i = 0; i < kIn; ++i) {
        in32[i] = in[i];
    }
    for (int32_t i : {op::kQuery, op::kKey, op::kValue, op::kKvCache}) {
        in32[i].type = DataType::kFLOAT;
    }
    CHECK(rt->enqueue(in32, out, inputs, outputs, workspace, nullptr) == 0);
    CHECK(gAttentionCalls == 1 && gFiRunCalls == 1);
    trtkv_release_attention_plan(plan_ws);
    delete plugin;
}

} // namespace

int main() {
    RecordingLogger logger;
    Finder finder(&logger);
    setLoggerFinder(&finder);
    test_registration();
    test_kv_append(logger);
    test_paged_attention(logger);
    test_paged_attention_flashinfer(logger);
    setLoggerFinder(nullptr);
    if (gFailures != 0) {
        std::printf("%d check(s) failed\n", gFailures);
        return 1;
    }
    std::printf("trtkv TensorRT plugin host smoke test: OK (TensorRT %d.%d headers)\n", NV_TENSORRT_MAJOR,
        NV_TENSORRT_MINOR);
    return 0;
}
