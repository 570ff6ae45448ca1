// Helpers shared by the trtkv TensorRT plugins: dtype mapping against the generated schema
// masks, plugin-field parsing and logging through TensorRT's logger finder.
#pragma once

#include <NvInferRuntime.h>

// IPluginV3 (OneCore/OneBuild/OneRuntime), IPluginCreatorV3One, getCreators() loading and Dims64
// all need TensorRT 10 or newer; fail with a clear message instead of a wall of unknown names.
#if !defined(NV_TENSORRT_MAJOR) || NV_TENSORRT_MAJOR < 10
#error "trtkv TensorRT plugins need TensorRT >= 10 headers (IPluginV3)"
#endif

#include <cstdint>
#include <cstring>
#include <string>

#include "../generated/trtkv_ops.h"
#include "../kernels/trtkv_kernels.h"

namespace trtkv {
namespace plugin {

//! The generated schema's dtype bit of a TensorRT type (0 = not a schema dtype).
inline uint32_t dtype_bit(nvinfer1::DataType type) noexcept {
    switch (type) {
    case nvinfer1::DataType::kFLOAT: return ops::kDTypeFloat32;
    case nvinfer1::DataType::kHALF: return ops::kDTypeFloat16;
    case nvinfer1::DataType::kBF16: return ops::kDTypeBfloat16;
    case nvinfer1::DataType::kFP8: return ops::kDTypeFloat8e4m3fn;
    case nvinfer1::DataType::kINT8: return ops::kDTypeInt8;
    case nvinfer1::DataType::kINT32: return ops::kDTypeInt32;
    case nvinfer1::DataType::kINT64: return ops::kDTypeInt64;
    default: return 0;
    }
}

//! The kernels' dtype of a TensorRT compute/pool type.
inline bool kernel_dtype(nvinfer1::DataType type, DType& out) noexcept {
    switch (type) {
    case nvinfer1::DataType::kFLOAT: out = DType::kFP32; return true;
    case nvinfer1::DataType::kHALF: out = DType::kFP16; return true;
    case nvinfer1::DataType::kBF16: out = DType::kBF16; return true;
    case nvinfer1::DataType::kFP8: out = DType::kFP8E4M3; return true;
    case nvinfer1::DataType::kINT8: out = DType::kINT8; return true;
    default: return false;
    }
}

//! Linear layout and a dtype the schema allows for this tensor.
inline bool allowed(nvinfer1::PluginTensorDesc const& desc, uint32_t mask) noexcept {
    return desc.format == nvinfer1::TensorFormat::kLINEAR && (dtype_bit(desc.type) & mask) != 0;
}

inline int64_t volume(nvinfer1::Dims const& dims) noexcept {
    int64_t v = 1;
    for (int32_t i = 0; i < dims.nbDims; ++i) {
        v *= dims.d[i];
    }
    return v;
}

//! Reads a numeric plugin field (the ONNX parser may hand ints as INT32 or INT64, floats as
//! FLOAT32 or FLOAT64). Returns false if the field has another type or no data.
inline bool field_as_double(nvinfer1::PluginField const& field, double& out) noexcept {
    if (field.data == nullptr || field.length < 1) {
        return false;
    }
    switch (field.type) {
    case nvinfer1::PluginFieldType::kFLOAT32: out = *static_cast<float const*>(field.data); return true;
    case nvinfer1::PluginFieldType::kFLOAT64: out = *static_cast<double const*>(field.data); return true;
    case nvinfer1::PluginFieldType::kINT32: out = *static_cast<int32_t const*>(field.data); return true;
    case nvinfer1::PluginFieldType::kINT64:
        out = static_cast<double>(*static_cast<int64_t const*>(field.data));
        return true;
    default: return false;
    }
}

inline bool field_is(nvinfer1::PluginField const& field, char const* name) noexcept {
    return field.name != nullptr && std::strcmp(field.name, name) == 0;
}

//! Logs through the logger TensorRT handed to setLoggerFinder (silently drops otherwise).
void log_error(std::string const& message) noexcept;

} // namespace plugin
} // namespace trtkv
