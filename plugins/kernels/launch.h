// Typed kernel launch through cudaLaunchKernel (no `<<<...>>>`): the arguments are converted to
// the kernel's exact parameter types before their addresses are handed over, so a mismatch is a
// compile error rather than a misread argument. Plain C++ over the CUDA runtime, so the
// launchers also build with a host compiler against the CPU emulation (plugins/emulation/).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <tuple>

namespace trtkv {
namespace kernels {

//! Enqueues kernel<<<grid, block, shared_bytes, stream>>>(args...) asynchronously.
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
    cudaStream_t stream, Args const&... args) {
    static_assert(sizeof...(Params) == sizeof...(Args), "wrong number of kernel arguments");
    std::tuple<Params...> values(static_cast<Params>(args)...);
    return std::apply(
        [&](Params&... v) {
            void* argv[] = {static_cast<void*>(&v)...};
            return cudaLaunchKernel(kernel, grid, block, argv, shared_bytes, stream);
        },
        values);
}

} // namespace kernels
} // namespace trtkv
