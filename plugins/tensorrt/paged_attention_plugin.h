// TensorRT IPluginV3 wrapper of the PagedAttention kernels (trtkv::PagedAttention, version 1).
//
// Attributes (plugin fields): scale, sliding_window, softcap (names/defaults from the generated
// schema header). The workspace holds the tile list and, for split-KV, the per-split partials;
// its size depends only on shapes, so the build-time bound holds at run time.
#pragma once

#include <NvInferRuntime.h>

#include <string>
#include <vector>

namespace trtkv {
struct PagedAttentionParams;
namespace plugin {

class PagedAttentionPlugin : public nvinfer1::IPluginV3,
                       public nvinfer1::IPluginV3OneCore,
                       public nvinfer1::IPluginV3OneBuild,
                       public nvinfer1::IPluginV3OneRuntime {
public:
    PagedAttentionPlugin(float scale, int32_t sliding_window, float softcap);
    ~PagedAttentionPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut,
        int32_t nbInputs, int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
#if defined(TRTKV_WITH_FLASHINFER)
    //! FlashInfer for the shapes/dtypes it is built for: 0 ok, 1 error, -1 not eligible.
    int32_t enqueue_flashinfer(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs,
        void* const* outputs, ::trtkv::PagedAttentionParams const& p, cudaStream_t stream) noexcept;
#endif
    float mScale;
    int32_t mSlidingWindow;
    float mSoftcap;
    int32_t mNumInputs = 9;  //!< set by onShapeChange: 10 when the engine has the plan workspace
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mSerialized{};
};

class PagedAttentionPluginCreator : public nvinfer1::IPluginCreatorV3One {
public:
    PagedAttentionPluginCreator();
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldNames{};
};

} // namespace plugin
} // namespace trtkv
