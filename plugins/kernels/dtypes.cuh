// Element conversions shared by the trtkv kernels: 8-wide vector loads to float, and the
// quantize-on-write encoders of trtkv/ops/schema.py (RNE; fp8 E4M3 saturates to +-448; int8
// clamps to +-127, NaN -> 0). No TensorRT header.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstddef>
#include <cstdint>

#include "../generated/trtkv_ops.h"
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

//! Alignment of 8 consecutive elements of T in the trtkv tensors (capped at 16 bytes, the
//! widest vector access): every 8-element group starts at a multiple of 8 elements of a
//! 256-byte aligned allocation (head_dim % 8 == 0).
template <typename T>
constexpr size_t kVec8Align = 8 * sizeof(T) < 16 ? 8 * sizeof(T) : 16;

// load8/store8 copy bytes with __builtin_memcpy between the tensor and a local T[8]: no object
// is read through an lvalue of another type (the former uint4/float4 pointer casts were
// strict-aliasing UB, which g++ -O2 turns into wrong fp16/bf16 values on the host). The
// assumed alignment lets nvcc emit one 128-bit (fp16/bf16), two 128-bit (fp32) or one 64-bit
// (fp8/int8) access, as before.

//! Loads 8 consecutive elements (aligned to kVec8Align<T>) as floats.
template <typename T>
__device__ __forceinline__ void load8(T const* ptr, float (&out)[8]) {
    T e[8];
    __builtin_memcpy(e, __builtin_assume_aligned(static_cast<void const*>(ptr), kVec8Align<T>), sizeof(e));
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        out[i] = to_float(e[i]);
    }
}

//! Stores 8 floats encoded as T (one vector store; aligned to kVec8Align<T>).
template <typename T>
__device__ __forceinline__ void store8(T* ptr, float const (&in)[8]) {
    T e[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        e[i] = encode<T>(in[i]);
    }
    __builtin_memcpy(__builtin_assume_aligned(static_cast<void*>(ptr), kVec8Align<T>), e, sizeof(e));
}

//! Records an out-of-range index: ORs `flag` (a kError* bit of trtkv_kernels.h) into the
//! caller's device word, if it gave one. The kernel has already clamped or skipped the index.
__device__ __forceinline__ void report_error(uint32_t* error_flags, uint32_t flag) {
    if (error_flags != nullptr) {
        atomicOr(error_flags, flag);
    }
}

// Dynamic shared memory of the running block. A macro so that the CPU emulation
// (plugins/emulation/) can supply the storage: `extern __shared__` has no host equivalent.
#ifndef TRTKV_DYNAMIC_SHARED_MEMORY
#define TRTKV_DYNAMIC_SHARED_MEMORY(type, name) extern __shared__ type name[]
#endif

//! Per-tensor ([1]) or per-KV-head ([Hkv]) scale of head h.
__device__ __forceinline__ float head_scale(float const* scale, int32_t numel, int32_t head) {
    return scale[numel == 1 ? 0 : head];
}

// Dynamic int8 scales: the tables of trtkv.ops.reference.dynamic_scale_table() (float32 bits,
// from the generated schema header), so every implementation picks the same exponents.
static __constant__ uint32_t kDynamicScaleBits[256] = {TRTKV_DYNAMIC_SCALE_BITS};
static __constant__ uint32_t kDynamicThresholdBits[255] = {TRTKV_DYNAMIC_THRESHOLD_BITS};

//! The scale of a stored exponent byte.
__device__ __forceinline__ float dynamic_scale(int8_t exponent) {
    return __uint_as_float(kDynamicScaleBits[static_cast<int32_t>(exponent) - ops::kDynamicExponentMin]);
}

//! The exponent index (0..255) of a group with this amax: the number of thresholds below it.
__device__ __forceinline__ int32_t dynamic_index(float amax) {
    int32_t lo = 0;
    int32_t hi = 255;
    while (lo < hi) {
        int32_t const mid = (lo + hi) / 2;
        if (__uint_as_float(kDynamicThresholdBits[mid]) < amax) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

//! A value as the dynamic encoder sees it: NaN -> 0, +-inf -> +-FLT_MAX.
__device__ __forceinline__ float dynamic_clean(float x) {
    return isnan(x) ? 0.f : fminf(fmaxf(x, -3.402823466e+38f), 3.402823466e+38f);
}

} // namespace kernels
} // namespace trtkv
