// CPU emulation build of the trtkv kernels: the unmodified kernels, launchers and C ABI
// (plugins/kernels/*.cu, plugins/capi/trtkv_kernels.cu) compiled by a host C++ compiler against
// cuda_emulation.h. Exports the same extern "C" entry points as libtrtkv_kernels.so
// (trtkv_kv_append, trtkv_paged_attention, ...), with host pointers in place of device pointers,
// plus trtkv_emulation_last_error() for the emulator's own diagnostics.
//
//   g++ -std=c++17 -O2 -shared -fPIC -fvisibility=hidden -Iplugins/emulation/include
//       plugins/emulation/emulate_kernels.cpp -o libtrtkv_kernels_emulated.so
// (plugins/emulation_build.py does this, cached by source hash.)
#include "cuda_emulation.h"

#include "../kernels/kv_append.cu"
#include "../kernels/paged_attention.cu"
#include "../capi/trtkv_kernels.cu"

//! Why the emulator failed the last launch (deadlock, bad shuffle, launch configuration), or "".
TRTKV_API char const* trtkv_emulation_last_error() { return cuda_emu::last_error_message(); }
