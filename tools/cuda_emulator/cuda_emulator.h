// CUDA on the CPU, for testing src/**/*.cu without a GPU: the built-ins the kernels use
// (thread and block indices, __syncthreads, warp shuffles, atomics, the rounding intrinsics)
// and a runtime that executes a grid. The emulated NVRTC (nvrtc.cpp) compiles each kernel
// module with the host C++ compiler, this header force-included, into a shared library that the
// emulated driver (driver.cpp) loads and launches.
//
// Execution: blocks run one after another; the threads of a block are fibers on one OS thread
// (x86-64 only: the context switch is a few lines of assembly), each run until it reaches a barrier or returns. __syncthreads releases the block
// when every live thread waits at it; a warp shuffle releases the warp when every live lane of it
// has arrived. Threads that have returned count as arrived, as on the GPU. Waiting threads that
// can never be released (lanes of a warp split between a shuffle and a barrier) are reported as
// a deadlock: an error, where a GPU would hang or misbehave. A race on shared memory shows as a
// wrong result only where the run-to-the-next-barrier order exposes it (a missing barrier in a
// tiled loop does). __shared__ variables are function-local statics: one copy, shared
// by the fibers of the running block, reused by the next.
//
// Arithmetic is IEEE single precision as on the GPU (built with -ffp-contract=off, so a*b+c
// is two roundings unless the kernel calls fmaf); expf, logf and powf are the host's, within
// a few ulp of CUDA's.

#ifndef CACTUS_CUDA_EMULATOR_H
#define CACTUS_CUDA_EMULATOR_H

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>


#if !defined(__x86_64__)
#error "the CUDA emulator's context switch is written for x86-64"
#endif

#define CACTUS_EMULATED 1

// ---------------------------------------------------------------------------------------------
// Keywords
// ---------------------------------------------------------------------------------------------

// A marker the emulated NVRTC finds kernels by (in the preprocessed source).
#define __global__ __attribute__((used))
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __shared__ static
#define __constant__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __restrict__ __restrict

// ---------------------------------------------------------------------------------------------
// Vector types
// ---------------------------------------------------------------------------------------------

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
using uint3 = dim3;
struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) int2 {
    int x, y;
};
struct alignas(16) int4 {
    int x, y, z, w;
};

namespace cactus_emu {

// ---------------------------------------------------------------------------------------------
// Fibers
// ---------------------------------------------------------------------------------------------

enum class Wait { None, Block, Warp, Done };

constexpr size_t STACK_BYTES = 64 * 1024;

// A context switch: save the callee-saved registers on the current stack, store its pointer in
// *save, continue on the stack `load` (as left by an earlier switch, or by `prepare`). Without
// the signal-mask system call of swapcontext, which would dominate one-element-per-thread
// kernels.
extern "C" void cactus_emu_switch(void** save, void* load);
asm(R"(
    .text
    .p2align 4
    .hidden cactus_emu_switch
    .globl cactus_emu_switch
cactus_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
)");

struct Fiber {
    void* sp = nullptr;
    char* stack = nullptr;   // from the pool while the thread has started and not returned
    Wait wait = Wait::Done;
    dim3 index;
    unsigned linear = 0;
};

struct Runtime {
    dim3 thread_idx, block_idx, block_dim, grid_dim;
    void* scheduler_sp = nullptr;
    std::vector<Fiber> fibers;
    Fiber* current = nullptr;
    // Stacks are handed out when a thread starts and taken back when it returns, so a kernel
    // without barriers runs every thread on one (cache-warm) stack.
    std::vector<std::unique_ptr<char[]>> stacks;
    std::vector<char*> free_stacks;
    // The running kernel, called by every fiber.
    void (*body)(void**) = nullptr;
    void** params = nullptr;
    // One 8-byte slot per thread for shuffles.
    std::vector<uint64_t> lanes;
    char error[512] = {0};
};

inline Runtime rt;

// Give the CPU back to the scheduler until released from `w`.
__attribute__((noinline)) inline void wait_at(Wait w) {
    Fiber* self = rt.current;
    self->wait = w;
    cactus_emu_switch(&self->sp, rt.scheduler_sp);
}

// Where a fiber starts: run the kernel, then return to the scheduler for good.
[[noreturn]] inline void fiber_start() {
    rt.body(rt.params);
    Fiber* self = rt.current;
    self->wait = Wait::Done;
    cactus_emu_switch(&self->sp, rt.scheduler_sp);
    __builtin_unreachable();
}

// Give `f` a stack whose first switch "returns" into fiber_start with the ABI's alignment.
inline void prepare(Fiber& f) {
    if (rt.free_stacks.empty()) {
        rt.stacks.emplace_back(new char[STACK_BYTES]);
        rt.free_stacks.push_back(rt.stacks.back().get());
    }
    f.stack = rt.free_stacks.back();
    rt.free_stacks.pop_back();
    auto top = reinterpret_cast<uintptr_t>(f.stack + STACK_BYTES) & ~uintptr_t(15);
    auto* sp = reinterpret_cast<void**>(top);
    *--sp = nullptr;   // fiber_start's return address: never used
    *--sp = reinterpret_cast<void*>(&fiber_start);
    for (int r = 0; r < 6; ++r) *--sp = nullptr;   // rbp, rbx, r12-r15
    f.sp = sp;
}

// Release what can be released; false when nothing can (done or deadlocked).
inline bool release(unsigned threads) {
    bool released = false;
    // A warp whose every live lane waits at a shuffle goes on.
    for (unsigned w0 = 0; w0 < threads; w0 += 32) {
        const unsigned w1 = w0 + 32 < threads ? w0 + 32 : threads;
        bool all = true, any = false;
        for (unsigned t = w0; t < w1; ++t) {
            const Wait s = rt.fibers[t].wait;
            if (s == Wait::Done) continue;
            any = true;
            if (s != Wait::Warp) all = false;
        }
        if (any && all) {
            for (unsigned t = w0; t < w1; ++t)
                if (rt.fibers[t].wait == Wait::Warp) rt.fibers[t].wait = Wait::None;
            released = true;
        }
    }
    if (released) return true;
    // The block goes on when every live thread waits at __syncthreads.
    bool all = true, any = false;
    for (unsigned t = 0; t < threads; ++t) {
        const Wait s = rt.fibers[t].wait;
        if (s == Wait::Done) continue;
        any = true;
        if (s != Wait::Block) all = false;
    }
    if (!any) return false;
    if (all) {
        for (unsigned t = 0; t < threads; ++t)
            if (rt.fibers[t].wait == Wait::Block) rt.fibers[t].wait = Wait::None;
        return true;
    }
    return false;
}

// Run one block; false (with rt.error set) on a deadlock.
inline bool run_block(unsigned threads) {
    for (unsigned t = 0; t < threads; ++t) {
        rt.fibers[t].wait = Wait::None;
        rt.fibers[t].stack = nullptr;
    }
    for (;;) {
        for (unsigned t = 0; t < threads; ++t) {
            Fiber& f = rt.fibers[t];
            if (f.wait != Wait::None) continue;
            if (!f.stack) prepare(f);
            rt.current = &f;
            rt.thread_idx = f.index;
            cactus_emu_switch(&rt.scheduler_sp, f.sp);
            if (f.wait == Wait::Done) rt.free_stacks.push_back(f.stack);
        }
        if (!release(threads)) break;
    }
    for (unsigned t = 0; t < threads; ++t) {
        const Wait s = rt.fibers[t].wait;
        if (s != Wait::Done) {
            std::snprintf(rt.error, sizeof rt.error,
                          "deadlock in block (%u, %u, %u): thread %u waits at %s while other "
                          "threads of its warp or block wait elsewhere (a shuffle or barrier in "
                          "divergent code)",
                          rt.block_idx.x, rt.block_idx.y, rt.block_idx.z, t,
                          s == Wait::Block ? "__syncthreads" : "a warp shuffle");
            // The stuck threads are abandoned; their stacks go back to the pool.
            for (unsigned u = 0; u < threads; ++u)
                if (rt.fibers[u].wait != Wait::Done) rt.free_stacks.push_back(rt.fibers[u].stack);
            return false;
        }
    }
    return true;
}

// Run the grid of `body`; 0, or 1 with the reason in rt.error.
inline int run_grid(void (*body)(void**), void** params, dim3 grid, dim3 block) {
    const unsigned threads = block.x * block.y * block.z;
    if (threads == 0 || threads > 1024) {
        std::snprintf(rt.error, sizeof rt.error, "block of %u threads (1 to 1024)", threads);
        return 1;
    }
    if (rt.fibers.size() < threads) rt.fibers.resize(threads);
    rt.lanes.assign(threads, 0);
    for (unsigned z = 0, t = 0; z < block.z; ++z)
        for (unsigned y = 0; y < block.y; ++y)
            for (unsigned x = 0; x < block.x; ++x, ++t) {
                rt.fibers[t].index = dim3{x, y, z};
                rt.fibers[t].linear = t;
            }
    rt.body = body;
    rt.params = params;
    rt.block_dim = block;
    rt.grid_dim = grid;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                rt.block_idx = dim3{bx, by, bz};
                if (!run_block(threads)) return 1;
            }
    return 0;
}

// Call a kernel with its arguments unpacked from CUDA's kernelParams (one pointer per value).
template <class... A, size_t... I>
void call_unpacked(void (*kernel)(A...), void** p, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(p[I])...);
}

template <class... A>
constexpr int arity(void (*)(A...)) {
    return sizeof...(A);
}

}   // namespace cactus_emu

// ---------------------------------------------------------------------------------------------
// Built-ins
// ---------------------------------------------------------------------------------------------

#define threadIdx (cactus_emu::rt.thread_idx)
#define blockIdx (cactus_emu::rt.block_idx)
#define blockDim (cactus_emu::rt.block_dim)
#define gridDim (cactus_emu::rt.grid_dim)
#define warpSize 32

inline void __syncthreads() { cactus_emu::wait_at(cactus_emu::Wait::Block); }

namespace cactus_emu {
// The value of `v` held by lane `src` of this thread's warp, every lane taking part; its own
// value when `src` lies outside its group of `width` lanes or past the block.
template <class T>
T shuffle(T v, unsigned src, int width) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    const unsigned me = rt.current->linear;
    std::memcpy(&rt.lanes[me], &v, sizeof(T));
    wait_at(Wait::Warp);
    const unsigned lane = me & 31, base = me - lane;
    T out = v;
    if (src / (unsigned)width == lane / (unsigned)width && base + src < rt.lanes.size())
        std::memcpy(&out, &rt.lanes[base + src], sizeof(T));
    wait_at(Wait::Warp);   // nobody overwrites a slot before every lane has read
    return out;
}
}   // namespace cactus_emu

template <class T>
T __shfl_xor_sync(unsigned /*mask*/, T v, int lane_mask, int width = 32) {
    return cactus_emu::shuffle(v, (cactus_emu::rt.current->linear & 31) ^ (unsigned)lane_mask,
                               width);
}

template <class T>
T __shfl_down_sync(unsigned /*mask*/, T v, unsigned delta, int width = 32) {
    return cactus_emu::shuffle(v, (cactus_emu::rt.current->linear & 31) + delta, width);
}

// Fibers of one OS thread never interleave inside a statement: plain read-modify-writes are atomic.
template <class T>
T atomicAdd(T* p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}
template <class T>
T atomicMax(T* p, T v) {
    T old = *p;
    if (v > old) *p = v;
    return old;
}
template <class T>
T atomicMin(T* p, T v) {
    T old = *p;
    if (v < old) *p = v;
    return old;
}
template <class T>
T atomicCAS(T* p, T compare, T v) {
    T old = *p;
    if (old == compare) *p = v;
    return old;
}
template <class T>
T atomicExch(T* p, T v) {
    T old = *p;
    *p = v;
    return old;
}

template <class T>
T __ldg(const T* p) {
    return *p;
}

// The bits of `v` read as a `To` of the same size.
template <class To, class From>
inline To bits_as(From v) {
    static_assert(sizeof(To) == sizeof(From), "a bit cast keeps the size");
    To out;
    std::memcpy(&out, &v, sizeof out);
    return out;
}
inline float __int_as_float(int v) { return bits_as<float>(v); }
inline float __uint_as_float(unsigned v) { return bits_as<float>(v); }
inline int __float_as_int(float v) { return bits_as<int>(v); }
inline unsigned __float_as_uint(float v) { return bits_as<unsigned>(v); }

// Correctly rounded single-precision operations: IEEE arithmetic on the host.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
// In double, then rounded once: equal to the correctly rounded result but in rare ties.
inline float __frsqrt_rn(float a) { return (float)(1.0 / std::sqrt((double)a)); }
inline float rsqrtf(float a) { return __frsqrt_rn(a); }
inline float __expf(float a) { return std::exp(a); }
inline float __logf(float a) { return std::log(a); }
inline float __saturatef(float a) { return a < 0.0f ? 0.0f : (a > 1.0f ? 1.0f : a); }

inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz((unsigned)v); }
inline int __ffs(int v) { return __builtin_ffs(v); }

// CUDA's integer min/max overloads (float ones come from <cmath> as fminf/fmaxf).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }

// A kernel module's entry points for the emulated driver: `cactus_emu_<kernel>` runs a grid,
// `cactus_emu_params_<kernel>` tells its parameter count (cuFuncGetParamInfo).
#define CACTUS_EMU_EXPORT(name)                                                              \
    static void cactus_emu_body_##name(void** p) {                                           \
        cactus_emu::call_unpacked(name, p, std::make_index_sequence<cactus_emu::arity(name)>{}); \
    }                                                                                        \
    extern "C" __attribute__((visibility("default"))) int cactus_emu_params_##name() {       \
        return cactus_emu::arity(name);                                                      \
    }                                                                                        \
    extern "C" __attribute__((visibility("default"))) int cactus_emu_##name(                 \
        const unsigned* grid, const unsigned* block, void** params, const char** error) {    \
        const int rc = cactus_emu::run_grid(cactus_emu_body_##name, params,                  \
                                            dim3{grid[0], grid[1], grid[2]},                 \
                                            dim3{block[0], block[1], block[2]});             \
        *error = cactus_emu::rt.error;                                                       \
        return rc;                                                                           \
    }

#endif   // CACTUS_CUDA_EMULATOR_H
