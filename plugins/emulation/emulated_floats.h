// CPU emulation (see cuda_emulation.h): __half, __nv_bfloat16 and __nv_fp8_e4m3 as storage types
// whose float conversions round to nearest even, and the device math the kernels use.
#pragma once

#include <math.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

// --- 16- and 8-bit floating-point storage types -----------------------------------------------
struct __half {
    uint16_t __x;
};
struct __nv_bfloat16 {
    uint16_t __x;
};
using __nv_fp8_storage_t = unsigned char;
enum __nv_saturation_t { __NV_NOSAT = 0, __NV_SATFINITE = 1 };
enum __nv_fp8_interpretation_t { __NV_E4M3 = 0, __NV_E5M2 = 1 };

namespace cuda_emu {

inline uint32_t float_bits(float x) {
    uint32_t u;
    std::memcpy(&u, &x, sizeof(u));
    return u;
}
inline float bits_float(uint32_t u) {
    float x;
    std::memcpy(&x, &u, sizeof(x));
    return x;
}

//! |x| (finite, >= 0) rounded to nearest even on a grid with `mant_bits` fraction bits, minimum
//! normal exponent `emin` and exponent bias `bias`; returns exponent field << mant_bits | fraction
//! (may exceed the format's largest code: the caller saturates or makes it infinite).
inline uint32_t round_minifloat(float ax, int mant_bits, int emin, int bias) {
    if (ax == 0.f) {
        return 0;
    }
    int e = 0;
    std::frexp(ax, &e);
    e -= 1; // ax = 1.f * 2^e
    if (e < emin) {
        e = emin; // subnormal: quantum 2^(emin - mant_bits)
    }
    // Scaling by a power of two is exact; nearbyint rounds to nearest even (default mode).
    auto q = static_cast<uint32_t>(std::nearbyint(std::ldexp(ax, mant_bits - e)));
    if (q >= (2u << mant_bits)) { // rounded up into the next binade
        e += 1;
        q >>= 1;
    }
    if (q < (1u << mant_bits)) {
        return q; // subnormal (exponent field 0)
    }
    return (static_cast<uint32_t>(e + bias) << mant_bits) | (q - (1u << mant_bits));
}

} // namespace cuda_emu

inline __half __float2half_rn(float x) {
    uint32_t const sign = (cuda_emu::float_bits(x) >> 16) & 0x8000u;
    if (std::isnan(x)) {
        return __half{static_cast<uint16_t>(sign | 0x7e00u)};
    }
    uint32_t code = std::isinf(x) ? 0x7c00u : cuda_emu::round_minifloat(std::fabs(x), 10, -14, 15);
    code = code > 0x7c00u ? 0x7c00u : code; // overflow -> infinity
    return __half{static_cast<uint16_t>(sign | code)};
}

inline float __half2float(__half h) {
    uint32_t const exp = (h.__x >> 10) & 31u;
    uint32_t const man = h.__x & 1023u;
    float v;
    if (exp == 0) {
        v = std::ldexp(static_cast<float>(man), -24);
    } else if (exp == 31) {
        v = man != 0 ? NAN : INFINITY;
    } else {
        v = std::ldexp(static_cast<float>(man | 1024u), static_cast<int>(exp) - 25);
    }
    return (h.__x & 0x8000u) ? -v : v;
}

inline __nv_bfloat16 __float2bfloat16_rn(float x) {
    uint32_t u = cuda_emu::float_bits(x);
    if (std::isnan(x)) {
        return __nv_bfloat16{static_cast<uint16_t>((u >> 16) | 0x40u)};
    }
    u += 0x7fffu + ((u >> 16) & 1u); // round to nearest even on the dropped 16 bits
    return __nv_bfloat16{static_cast<uint16_t>(u >> 16)};
}

inline float __bfloat162float(__nv_bfloat16 b) { return cuda_emu::bits_float(static_cast<uint32_t>(b.__x) << 16); }

inline __nv_fp8_storage_t __nv_cvt_float_to_fp8(float x, __nv_saturation_t sat, __nv_fp8_interpretation_t kind) {
    if (kind != __NV_E4M3) {
        std::fprintf(stderr, "cuda_emulation: only E4M3 fp8 is emulated\n");
        std::abort();
    }
    uint32_t const sign = (cuda_emu::float_bits(x) >> 24) & 0x80u;
    if (std::isnan(x)) {
        return static_cast<__nv_fp8_storage_t>(sign | 0x7fu);
    }
    float const ax = std::fabs(x);
    uint32_t code = ax > 448.f ? 0x7fu : cuda_emu::round_minifloat(ax, 3, -6, 7); // 448 = 0x7e
    if (code >= 0x7fu) { // beyond the largest finite value (E4M3 has no infinity)
        code = sat == __NV_SATFINITE ? 0x7eu : 0x7fu;
    }
    return static_cast<__nv_fp8_storage_t>(sign | code);
}

struct __nv_fp8_e4m3 {
    __nv_fp8_storage_t __x;
    explicit operator float() const {
        uint32_t const exp = (__x >> 3) & 15u;
        uint32_t const man = __x & 7u;
        float v;
        if (exp == 15 && man == 7) {
            v = NAN;
        } else if (exp == 0) {
            v = std::ldexp(static_cast<float>(man), -9);
        } else {
            v = std::ldexp(static_cast<float>(8u | man), static_cast<int>(exp) - 10);
        }
        return (__x & 0x80u) ? -v : v;
    }
};

// --- device math ------------------------------------------------------------------------------
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __uint_as_float(uint32_t u) { return cuda_emu::bits_float(u); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
template <typename T>
inline T min(T a, T b) {
    return b < a ? b : a;
}
template <typename T>
inline T max(T a, T b) {
    return a < b ? b : a;
}
