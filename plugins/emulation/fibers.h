// CPU emulation (see cuda_emulation.h): CUDA threads as fibers, blocks run one after another,
// barriers and warp exchanges between the fibers of the running block. Needs the runtime types
// (dim3, uint3, cudaError_t) declared first; include through cuda_emulation.h only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CUDA_EMU_ASAN 1
#else
#define CUDA_EMU_ASAN 0
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

// --- fibers, blocks, launches -----------------------------------------------------------------
#if defined(__x86_64__)
// cuda_emu_switch(save, load): pushes the callee-saved registers, MXCSR and the x87 control
// word, stores rsp in *save, switches to `load` and pops the same from there.
// cuda_emu_fiber_start: first frame of a fiber; calls the entry function left in r13.
extern "C" void cuda_emu_switch(void** save, void* load);
extern "C" void cuda_emu_fiber_start();
asm(R"(
    .pushsection .text
    .globl cuda_emu_switch
    .hidden cuda_emu_switch
    .type cuda_emu_switch, @function
cuda_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cuda_emu_switch, .-cuda_emu_switch

    .globl cuda_emu_fiber_start
    .hidden cuda_emu_fiber_start
    .type cuda_emu_fiber_start, @function
cuda_emu_fiber_start:
    callq *%r13
    ud2
    .size cuda_emu_fiber_start, .-cuda_emu_fiber_start
    .popsection
)");
#endif

namespace cuda_emu {

#if defined(__x86_64__)
struct Context {
    void* sp = nullptr;
};
inline void context_init(Context& c, char* stack, size_t size, void (*entry)()) {
    uintptr_t const top = (reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t{15};
    auto* frame = reinterpret_cast<uint64_t*>(top - 64);
    frame[0] = 0x1f80u | (uint64_t{0x037f} << 32); // default MXCSR, x87 control word
    for (int i = 1; i < 7; ++i) {
        frame[i] = 0; // r15 r14 r13 r12 rbx rbp
    }
    frame[3] = reinterpret_cast<uint64_t>(entry); // r13
    frame[7] = reinterpret_cast<uint64_t>(&cuda_emu_fiber_start);
    c.sp = frame;
}
inline void context_switch(Context& from, Context& to) { cuda_emu_switch(&from.sp, to.sp); }
#else
struct Context {
    ucontext_t uc;
};
inline void context_init(Context& c, char* stack, size_t size, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
inline void context_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

//! A barrier episode closes when `arrived` reaches the group's live count; results of the
//! episode of generation g stay readable in slot g & 1 until generation g + 2.
struct Barrier {
    int arrived = 0;
    uint64_t generation = 0;
    int acc_or = 0;
    int acc_and = 1;
    int acc_count = 0;
    int result_or[2] = {0, 0};
    int result_and[2] = {1, 1};
    int result_count[2] = {0, 0};
};

struct Fiber {
    Context context;
    char* stack = nullptr; //!< usable stack (above the guard page)
    size_t stack_size = 0;
    uint3 thread_idx;
    int linear = 0;
    int warp = 0;
    int lane = 0;
    bool done = false;
    Barrier* waiting_on = nullptr;
    void* fake_stack = nullptr; //!< ASan fiber-switch bookkeeping
};

struct Warp {
    Barrier barrier;
    int size = 0; //!< lanes that exist (the last warp of a block may be partial)
    int live = 0;
    uint64_t exchange[2][32] = {};
    uint64_t written[2][32] = {}; //!< generation + 1 of the episode each value was written in
};

struct Launch {
    dim3 grid;
    dim3 block;
    uint3 block_idx;
    unsigned char* shared = nullptr;
    size_t shared_bytes = 0;
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    Barrier block_barrier;
    int live = 0;
    Context scheduler;
    std::function<void()> const* body = nullptr;
    std::string error;
    void const* main_stack_bottom = nullptr;
    size_t main_stack_size = 0;
    void* scheduler_fake_stack = nullptr;
};

inline thread_local Launch* tls_launch = nullptr;
inline thread_local Fiber* tls_fiber = nullptr;

inline std::mutex& launch_mutex() {
    static std::mutex m;
    return m;
}

inline std::string& last_error_storage() {
    static std::string s;
    return s;
}

//! Why the last failed launch failed (empty if it did not).
inline char const* last_error_message() { return last_error_storage().c_str(); }

inline Fiber& this_fiber() {
    if (tls_fiber == nullptr) {
        std::fprintf(stderr, "cuda_emulation: device code called outside a kernel launch\n");
        std::abort();
    }
    return *tls_fiber;
}

inline void fail(Launch& l, std::string const& what) {
    if (l.error.empty()) {
        l.error = what;
    }
}

template <typename T>
T* dynamic_shared() {
    return reinterpret_cast<T*>(tls_launch->shared);
}

inline void asan_start_switch(void** fake_stack_save, void const* bottom, size_t size) {
#if CUDA_EMU_ASAN
    __sanitizer_start_switch_fiber(fake_stack_save, bottom, size);
#else
    (void) fake_stack_save;
    (void) bottom;
    (void) size;
#endif
}

inline void asan_finish_switch(void* fake_stack_save, void const** bottom_old, size_t* size_old) {
#if CUDA_EMU_ASAN
    __sanitizer_finish_switch_fiber(fake_stack_save, bottom_old, size_old);
#else
    (void) fake_stack_save;
    (void) bottom_old;
    (void) size_old;
#endif
}

//! Suspends the running fiber until the scheduler resumes it.
inline void yield() {
    Launch& l = *tls_launch;
    Fiber& f = *tls_fiber;
    asan_start_switch(&f.fake_stack, l.main_stack_bottom, l.main_stack_size);
    context_switch(f.context, l.scheduler);
    asan_finish_switch(f.fake_stack, &l.main_stack_bottom, &l.main_stack_size);
}

inline void complete(Launch& l, Barrier& b) {
    int const slot = static_cast<int>(b.generation & 1);
    b.result_or[slot] = b.acc_or;
    b.result_and[slot] = b.acc_and;
    b.result_count[slot] = b.acc_count;
    b.acc_or = 0;
    b.acc_and = 1;
    b.acc_count = 0;
    b.arrived = 0;
    ++b.generation;
    for (Fiber& f : l.fibers) {
        if (f.waiting_on == &b) {
            f.waiting_on = nullptr;
        }
    }
}

//! Arrives at b (a group of `live` threads) with predicate `pred`; returns the slot holding the
//! episode's results once every live member has arrived.
inline int arrive_and_wait(Barrier& b, int const& live, int pred) {
    Launch& l = *tls_launch;
    Fiber& f = this_fiber();
    int const slot = static_cast<int>(b.generation & 1);
    b.acc_or |= pred != 0;
    b.acc_and &= pred != 0;
    b.acc_count += pred != 0;
    if (++b.arrived >= live) {
        complete(l, b);
    } else {
        f.waiting_on = &b;
        yield();
    }
    return slot;
}

inline void fiber_exit(Launch& l, Fiber& f) {
    f.done = true;
    --l.live;
    Warp& w = l.warps[f.warp];
    --w.live;
    // Exited threads no longer count at barriers.
    if (l.block_barrier.arrived > 0 && l.block_barrier.arrived >= l.live) {
        complete(l, l.block_barrier);
    }
    if (w.barrier.arrived > 0 && w.barrier.arrived >= w.live) {
        complete(l, w.barrier);
    }
}

inline void fiber_main() {
    Launch& l = *tls_launch;
    asan_finish_switch(nullptr, &l.main_stack_bottom, &l.main_stack_size);
    (*l.body)();
    Fiber& f = *tls_fiber;
    fiber_exit(l, f);
    asan_start_switch(nullptr, l.main_stack_bottom, l.main_stack_size); // never resumed
    context_switch(f.context, l.scheduler);
    std::abort();
}

//! Fiber stacks, reused across launches: [guard page][stack].
struct StackPool {
    static constexpr size_t kStackBytes = 256 * 1024;
    std::vector<char*> stacks;
    ~StackPool() {
        size_t const page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
        for (char* s : stacks) {
            munmap(s - page, kStackBytes + page);
        }
    }
    char* get(size_t i) {
        while (stacks.size() <= i) {
            size_t const page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
            void* m = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (m == MAP_FAILED) {
                return nullptr;
            }
            mprotect(m, page, PROT_NONE); // overflow -> SIGSEGV, not silent corruption
            stacks.push_back(static_cast<char*>(m) + page);
        }
        return stacks[i];
    }
};

inline StackPool& stack_pool() {
    static StackPool pool;
    return pool;
}

inline std::map<void const*, int>& max_dynamic_shared() {
    static std::map<void const*, int> m;
    return m;
}

inline cudaError_t& sticky_error() {
    static cudaError_t e = cudaSuccess;
    return e;
}

inline cudaError_t launch_error(cudaError_t e, std::string const& why) {
    last_error_storage() = why;
    sticky_error() = e;
    return e;
}

//! Runs `body` (one kernel invocation per call) for every thread of every block.
inline cudaError_t run_grid(void const* kernel, dim3 grid, dim3 block, size_t shared_bytes,
    std::function<void()> const& body) {
    std::lock_guard<std::mutex> lock(launch_mutex());
    uint64_t const threads = uint64_t{block.x} * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 || threads == 0
        || threads > 1024 || block.z > 64) {
        return launch_error(cudaErrorInvalidConfiguration, "invalid grid or block dimensions");
    }
    int limit = 48 * 1024;
    auto const it = max_dynamic_shared().find(kernel);
    if (it != max_dynamic_shared().end()) {
        limit = it->second;
    }
    if (shared_bytes > static_cast<size_t>(limit)) {
        return launch_error(cudaErrorInvalidValue,
            "dynamic shared memory above the kernel's limit (cudaFuncAttributeMaxDynamicSharedMemorySize)");
    }
    Launch l;
    l.grid = grid;
    l.block = block;
    l.body = &body;
    l.shared_bytes = shared_bytes;
    l.fibers.resize(threads);
    l.warps.resize((threads + 31) / 32);
    for (uint64_t i = 0; i < threads; ++i) {
        Fiber& f = l.fibers[i];
        f.linear = static_cast<int>(i);
        f.warp = static_cast<int>(i / 32);
        f.lane = static_cast<int>(i % 32);
        f.thread_idx.x = static_cast<unsigned>(i % block.x);
        f.thread_idx.y = static_cast<unsigned>(i / block.x % block.y);
        f.thread_idx.z = static_cast<unsigned>(i / (uint64_t{block.x} * block.y));
        f.stack = stack_pool().get(i);
        f.stack_size = StackPool::kStackBytes;
        if (f.stack == nullptr) {
            return launch_error(cudaErrorLaunchFailure, "cannot map fiber stacks");
        }
        ++l.warps[f.warp].size;
    }
    if (shared_bytes > 0) {
        l.shared = static_cast<unsigned char*>(::operator new(shared_bytes, std::align_val_t{16}));
    }
    Launch* const outer_launch = tls_launch;
    tls_launch = &l;
    for (unsigned bz = 0; bz < grid.z && l.error.empty(); ++bz) {
        for (unsigned by = 0; by < grid.y && l.error.empty(); ++by) {
            for (unsigned bx = 0; bx < grid.x && l.error.empty(); ++bx) {
                l.block_idx.x = bx;
                l.block_idx.y = by;
                l.block_idx.z = bz;
                if (l.shared != nullptr) {
                    std::memset(l.shared, 0xff, shared_bytes);
                }
                l.block_barrier = Barrier{};
                l.live = static_cast<int>(threads);
                for (Warp& w : l.warps) {
                    w.barrier = Barrier{};
                    w.live = w.size;
                    std::memset(w.written, 0, sizeof(w.written));
                }
                for (Fiber& f : l.fibers) {
                    f.done = false;
                    f.waiting_on = nullptr;
                    f.fake_stack = nullptr;
                    context_init(f.context, f.stack, f.stack_size, &fiber_main);
                }
                while (l.live > 0) {
                    bool ran = false;
                    for (Fiber& f : l.fibers) {
                        if (f.done || f.waiting_on != nullptr) {
                            continue;
                        }
                        ran = true;
                        tls_fiber = &f;
                        asan_start_switch(&l.scheduler_fake_stack, f.stack, f.stack_size);
                        context_switch(l.scheduler, f.context);
                        asan_finish_switch(l.scheduler_fake_stack, nullptr, nullptr);
                        tls_fiber = nullptr;
                    }
                    if (!ran) {
                        fail(l, "deadlock: live threads wait at a barrier that not all of them reach");
                        break;
                    }
                }
            }
        }
    }
    tls_launch = outer_launch;
    bool const abandoned = l.live > 0;
#if CUDA_EMU_ASAN
    if (abandoned) { // frames of abandoned fibers stay poisoned otherwise
        for (Fiber& f : l.fibers) {
            ASAN_UNPOISON_MEMORY_REGION(f.stack, f.stack_size);
        }
    }
#endif
    (void) abandoned;
    if (l.shared != nullptr) {
        ::operator delete(l.shared, std::align_val_t{16});
    }
    if (!l.error.empty()) {
        return launch_error(cudaErrorLaunchFailure, l.error);
    }
    return cudaSuccess;
}

template <typename... P, size_t... I>
std::tuple<P...> copy_arguments(void** args, std::index_sequence<I...>) {
    return std::tuple<P...>(*static_cast<P*>(args[I])...);
}

//! Barrier + exchange of one 64-bit value per lane of the calling warp.
inline uint64_t warp_exchange(uint64_t value, int src_lane, unsigned mask) {
    Launch& l = *tls_launch;
    Fiber& f = this_fiber();
    Warp& w = l.warps[f.warp];
    if (mask != 0xffffffffu >> (32 - w.size)) {
        fail(l, "warp shuffle with a partial mask (only full-warp masks are emulated)");
    }
    uint64_t const generation = w.barrier.generation;
    int const slot = static_cast<int>(generation & 1);
    w.exchange[slot][f.lane] = value;
    w.written[slot][f.lane] = generation + 1;
    arrive_and_wait(w.barrier, w.live, 0);
    if (src_lane < 0 || src_lane >= w.size) {
        return value; // CUDA: out-of-range lanes of shfl_up/down/xor read their own value
    }
    if (w.written[slot][src_lane] != generation + 1) {
        fail(l, "warp shuffle reads a lane that did not take part (exited or diverged)");
        return value;
    }
    return w.exchange[slot][src_lane];
}

template <typename T>
T shuffle(T v, int src_lane, unsigned mask) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 64 bits");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    uint64_t const got = warp_exchange(bits, src_lane, mask);
    T out;
    std::memcpy(&out, &got, sizeof(T));
    return out;
}

inline int this_lane() { return this_fiber().lane; }

} // namespace cuda_emu
