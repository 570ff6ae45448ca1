// CPU emulation of the slice of CUDA the trtkv kernels use, so the unmodified kernels
// (plugins/kernels/*.cuh) and their launchers (*.cu, which launch through cudaLaunchKernel)
// build with a host C++ compiler and run without a GPU: numerics and bounds checks in CI, under
// AddressSanitizer/UBSan too.
//
// Execution model. A launch runs its blocks one after another. Each CUDA thread of a block is a
// fiber (its own stack, cooperative switching on one host thread); a fiber runs until it
// reaches a barrier or returns. __syncthreads is a barrier over the block's live threads; the
// warp shuffles are exchanges through a per-warp buffer (double-buffered by barrier
// generation) with a barrier over the warp's live lanes. No two fibers ever run at once, so
// atomics are plain read-modify-writes and `__shared__` (a function-local `static`) is shared
// by the threads of the running block. Dynamic shared memory is a heap buffer of exactly the
// launch's size, refilled with 0xff bytes before each block, so ASan sees overruns and
// reads of never-written shared memory show up as NaN / -1.
//
// The emulator also diagnoses what real hardware would leave undefined or hang on: a barrier
// that not every live thread reaches (deadlock), a shuffle that reads a lane which has exited
// or does not exist, a partial shuffle mask. The launch then fails with
// cudaErrorLaunchFailure and cuda_emu::last_error_message() says why.
//
// Types: __half, __nv_bfloat16 and __nv_fp8_e4m3 are 16/16/8-bit storage types whose float
// conversions round to nearest even (fp8 with __NV_SATFINITE saturates to +-448). Device
// intrinsics map to their IEEE host equivalents (__expf is expf: the device version is a few
// ulp less accurate).
//
// Files: this header (qualifiers, runtime API, built-ins, barriers/shuffles/atomics),
// emulated_floats.h (storage types, device math), fibers.h (context switch and scheduler).
// Include this header in exactly one translation unit (fibers.h defines the context-switch
// routine in top-level assembly). Targets: x86-64 (hand-written switch, a few ns), anything else with
// <ucontext.h> (swapcontext, slower).
#pragma once

#include <math.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <utility>

// --- execution-space qualifiers ---------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__
#define TRTKV_DYNAMIC_SHARED_MEMORY(type, name) type* const name = ::cuda_emu::dynamic_shared<type>()

// --- runtime API types ------------------------------------------------------------------------
struct uint3 {
    unsigned x = 0, y = 0, z = 0;
};

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

struct float4 {
    float x, y, z, w;
};
struct uint4 {
    unsigned x, y, z, w;
};
struct uint2 {
    unsigned x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

struct CUstream_st;
using cudaStream_t = CUstream_st*;

enum cudaError_t : int {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorLaunchFailure = 719,
};
using cudaError = cudaError_t;

enum cudaFuncAttribute : int {
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};

constexpr int warpSize = 32;

#include "emulated_floats.h"
#include "fibers.h"

// --- built-in variables -----------------------------------------------------------------------
#define threadIdx (::cuda_emu::this_fiber().thread_idx)
#define blockIdx (::cuda_emu::tls_launch->block_idx)
#define blockDim (::cuda_emu::tls_launch->block)
#define gridDim (::cuda_emu::tls_launch->grid)

// --- synchronization, warp shuffles, atomics --------------------------------------------------
inline void __syncthreads() {
    cuda_emu::Launch& l = *cuda_emu::tls_launch;
    cuda_emu::arrive_and_wait(l.block_barrier, l.live, 0);
}
inline int __syncthreads_or(int pred) {
    cuda_emu::Launch& l = *cuda_emu::tls_launch;
    return l.block_barrier.result_or[cuda_emu::arrive_and_wait(l.block_barrier, l.live, pred)];
}
inline int __syncthreads_and(int pred) {
    cuda_emu::Launch& l = *cuda_emu::tls_launch;
    return l.block_barrier.result_and[cuda_emu::arrive_and_wait(l.block_barrier, l.live, pred)];
}
inline int __syncthreads_count(int pred) {
    cuda_emu::Launch& l = *cuda_emu::tls_launch;
    return l.block_barrier.result_count[cuda_emu::arrive_and_wait(l.block_barrier, l.live, pred)];
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    cuda_emu::shuffle(0, cuda_emu::this_lane(), mask);
}

template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    int const lane = cuda_emu::this_lane();
    return cuda_emu::shuffle(v, (lane / width) * width + src_lane % width, mask);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    int const lane = cuda_emu::this_lane();
    int const src = lane ^ lane_mask;
    return cuda_emu::shuffle(v, src / width == lane / width ? src : lane, mask);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    int const lane = cuda_emu::this_lane();
    int const src = lane - static_cast<int>(delta);
    return cuda_emu::shuffle(v, src >= (lane / width) * width ? src : lane, mask);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    int const lane = cuda_emu::this_lane();
    int const src = lane + static_cast<int>(delta);
    return cuda_emu::shuffle(v, src < (lane / width + 1) * width ? src : lane, mask);
}

// One fiber runs at a time, so plain read-modify-writes are atomic.
template <typename T>
T atomicOr(T* address, T value) {
    T const old = *address;
    *address = old | value;
    return old;
}
template <typename T>
T atomicAnd(T* address, T value) {
    T const old = *address;
    *address = old & value;
    return old;
}
template <typename T>
T atomicAdd(T* address, T value) {
    T const old = *address;
    *address = old + value;
    return old;
}
template <typename T>
T atomicMax(T* address, T value) {
    T const old = *address;
    *address = old < value ? value : old;
    return old;
}
template <typename T>
T atomicExch(T* address, T value) {
    T const old = *address;
    *address = value;
    return old;
}
template <typename T>
T atomicCAS(T* address, T compare, T value) {
    T const old = *address;
    if (old == compare) {
        *address = value;
    }
    return old;
}

// --- runtime API --------------------------------------------------------------------------------
//! Runs the kernel to completion (the emulator has no streams: every launch is synchronous).
template <typename... P>
cudaError_t cudaLaunchKernel(void (*kernel)(P...), dim3 grid, dim3 block, void** args, size_t shared_bytes = 0,
    cudaStream_t stream = nullptr) {
    (void) stream;
    // Arguments are copied at launch, as CUDA does; each thread's call copies them again into
    // its by-value parameters.
    std::tuple<P...> values = cuda_emu::copy_arguments<P...>(args, std::index_sequence_for<P...>{});
    std::function<void()> const body = [&] { std::apply(kernel, values); };
    return cuda_emu::run_grid(reinterpret_cast<void const*>(kernel), grid, block, shared_bytes, body);
}

template <typename... P>
cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || value > 227 * 1024) {
        return cudaErrorInvalidValue;
    }
    std::lock_guard<std::mutex> lock(cuda_emu::launch_mutex());
    cuda_emu::max_dynamic_shared()[reinterpret_cast<void const*>(kernel)] = value;
    return cudaSuccess;
}

inline cudaError_t cudaGetLastError() {
    cudaError_t const e = cuda_emu::sticky_error();
    cuda_emu::sticky_error() = cudaSuccess;
    return e;
}
inline cudaError_t cudaPeekAtLastError() { return cuda_emu::sticky_error(); }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline char const* cudaGetErrorString(cudaError_t e) {
    return e == cudaSuccess ? "no error" : cuda_emu::last_error_message();
}
