// Element conversions shared by the trtkv kernels: 8-wide vector loads to float, and the
// quantize-on-write encoders of trtkv/ops/schema.py (RNE; fp8 E4M3 saturates to +-448; int8
// clamps to +-127, NaN -> 0). No TensorRT header.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "trtkv_kernels.h"

namespace trtkv {
namespace kernels {

using fp8_e4m3 = __nv_fp8_e4m3;

template <typename T>
struct TypeTag {
    using type = T;
};

//! Calls f(TypeTag<T>{}) for a compute dtype (fp32/fp16/bf16).
template <typename F>
Status dispatch_compute(DType dtype, F&& f) {
    switch (dtype) {
    case DType::kFP32: return f(TypeTag<float>{});
    case DType::kFP16: return f(TypeTag<__half>{});
    case DType::kBF16: return f(TypeTag<__nv_bfloat16>{});
    default: return Status::kINVALID_ARGUMENT;
    }
}

//! Calls f(TypeTag<T>{}) for a KV pool dtype (all five).
template <typename F>
Status dispatch_kv(DType dtype, F&& f) {
    switch (dtype) {
    case DType::kFP32: return f(TypeTag<float>{});
    case DType::kFP16: return f(TypeTag<__half>{});
    case DType::kBF16: return f(TypeTag<__nv_bfloat16>{});
    case DType::kFP8E4M3: return f(TypeTag<fp8_e4m3>{});
    case DType::kINT8: return f(TypeTag<int8_t>{});
    }
    return Status::kINVALID_ARGUMENT;
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(fp8_e4m3 x) { return static_cast<float>(x); }
__device__ __forceinline__ float to_float(int8_t x) { return static_cast<float>(x); }

//! Encodes y (already divided by the scale) as stored in a pool/output of type T.
template <typename T>
__device__ __forceinline__ T encode(float y);

template <>
__device__ __forceinline__ float encode<float>(float y) { return y; }
template <>
__device__ __forceinline__ __half encode<__half>(float y) { return __float2half_rn(y); }
template <>
__device__ __forceinline__ __nv_bfloat16 encode<__nv_bfloat16>(float y) { return __float2bfloat16_rn(y); }
template <>
__device__ __forceinline__ fp8_e4m3 encode<fp8_e4m3>(float y) {
    fp8_e4m3 out;
    // Saturating, round-to-nearest-even; NaN stays NaN.
    out.__x = __nv_cvt_float_to_fp8(y, __NV_SATFINITE, __NV_E4M3);
    return out;
}
template <>
__device__ __forceinline__ int8_t encode<int8_t>(float y) {
    if (isnan(y)) {
        return 0;
    }
    float r = rintf(y); // round half to even
    r = fminf(fmaxf(r, -127.f), 127.f);
    return static_cast<int8_t>(r);
}

//! Bytes of 8 elements of T: 32 (fp32), 16 (fp16/bf16), 8 (fp8/int8).
template <typename T>
struct Vec8 {
    static constexpr int kBytes = 8 * sizeof(T);
};

//! Loads 8 consecutive elements (16-byte aligned for 2-byte types, etc.) as floats.
template <typename T>
__device__ __forceinline__ void load8(T const* ptr, float (&out)[8]) {
    if constexpr (sizeof(T) == 4) {
        float4 const a = reinterpret_cast<float4 const*>(ptr)[0];
        float4 const b = reinterpret_cast<float4 const*>(ptr)[1];
        out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
        out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
    } else if constexpr (sizeof(T) == 2) {
        uint4 const raw = *reinterpret_cast<uint4 const*>(ptr);
        T const* e = reinterpret_cast<T const*>(&raw);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            out[i] = to_float(e[i]);
        }
    } else {
        uint2 const raw = *reinterpret_cast<uint2 const*>(ptr);
        T const* e = reinterpret_cast<T const*>(&raw);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            out[i] = to_float(e[i]);
        }
    }
}

//! Stores 8 floats encoded as T (one vector store).
template <typename T>
__device__ __forceinline__ void store8(T* ptr, float const (&in)[8]) {
    if constexpr (sizeof(T) == 4) {
        reinterpret_cast<float4*>(ptr)[0] = make_float4(in[0], in[1], in[2], in[3]);
        reinterpret_cast<float4*>(ptr)[1] = make_float4(in[4], in[5], in[6], in[7]);
    } else if constexpr (sizeof(T) == 2) {
        uint4 raw;
        T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            e[i] = encode<T>(in[i]);
        }
        *reinterpret_cast<uint4*>(ptr) = raw;
    } else {
        uint2 raw;
        T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            e[i] = encode<T>(in[i]);
        }
        *reinterpret_cast<uint2*>(ptr) = raw;
    }
}

//! Per-tensor ([1]) or per-KV-head ([Hkv]) scale of head h.
__device__ __forceinline__ float head_scale(float const* scale, int32_t numel, int32_t head) {
    return scale[numel == 1 ? 0 : head];
}

} // namespace kernels
} // namespace trtkv
