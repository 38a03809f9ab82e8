// The emulated CUDA driver (libcuda.so.1): one device, "cactus CUDA emulator", whose memory is
// host memory (a device pointer is a host address) and whose kernels are the shared libraries
// that the emulated NVRTC (nvrtc.cpp) builds. Streams and events exist but every operation
// completes before its call returns. Only the calls cactus (through cudarc) makes are provided;
// cudarc resolves symbols on first use, so a missing one is a panic naming it.
//
// The device reports compute capability 9.0 and 132 multiprocessors, an H100's, so launch
// heuristics that depend on them take the paths they take there.
//
// Device memory is checked as a GPU's memory checker would, within what a CPU can do cheaply:
// - Each allocation ends flush (to 16 bytes, the widest vector access) against a page the
//   process may not touch, so a kernel that reads or writes past the end of a buffer faults at
//   once. The fault is reported with the kernel's name and the address, then the process ends
//   (exit status 134). Accesses far before a buffer's start, or past its end by under 16 bytes,
//   are not caught; a buffer pool that rounds sizes up (cactus's, unless
//   CACTUS_EXACT_BUFFERS is set) hides overruns within the rounding.
// - New allocations are filled with 0xFF bytes (NaN as f32, −1 as an integer), so a kernel that
//   reads memory nobody wrote sees NaN, not the zeros fresh host pages would give.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include <dlfcn.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <unordered_map>

#include "module_image.h"

namespace {

enum Result {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
};

struct Module {
    void* library;
};

using Entry = int (*)(const unsigned*, const unsigned*, void**, const char**);

struct Function {
    Entry entry;
    int params;
    std::string name;
};

// Every launch runs under this lock: a module's emulator state (fibers, shared memory) is global.
std::mutex launch_lock;

int context_token, stream_token;

uint64_t to_device(void* p) { return (uint64_t)(uintptr_t)p; }
void* to_host(uint64_t p) { return (void*)(uintptr_t)p; }

// The kernel running now (for the fault report), or null between launches.
const char* volatile running_kernel = nullptr;

void report_fault(int sig, siginfo_t* info, void*) {
    const char* kernel = running_kernel;
    if (!kernel) {
        // Not a kernel's access: the default action (a crash, as without the emulator).
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    char message[512];
    int n = std::snprintf(message, sizeof message,
                          "cactus CUDA emulator: kernel %s accessed address %p, outside every "
                          "device allocation (past the end of a buffer, or a wild pointer)\n",
                          kernel, info->si_addr);
    if (n > 0) (void)!write(2, message, (size_t)n);
    _exit(134);
}

// The fault handler, and an alternate signal stack for the launching thread (a kernel's threads
// run on fiber stacks the handler should not grow).
void watch_faults() {
    static std::once_flag installed;
    std::call_once(installed, [] {
        struct sigaction action;
        std::memset(&action, 0, sizeof action);
        action.sa_sigaction = report_fault;
        action.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&action.sa_mask);
        sigaction(SIGSEGV, &action, nullptr);
        sigaction(SIGBUS, &action, nullptr);
    });
    thread_local bool has_stack = false;
    if (!has_stack) {
        stack_t stack;
        stack.ss_size = 64 * 1024;
        stack.ss_sp = std::malloc(stack.ss_size);
        stack.ss_flags = 0;
        if (stack.ss_sp && sigaltstack(&stack, nullptr) == 0) has_stack = true;
    }
}

struct Mapping {
    void* base;
    size_t length;
};
std::mutex mappings_lock;
std::unordered_map<uint64_t, Mapping> mappings;

size_t page_size() {
    static const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    return page;
}

Result allocate(uint64_t* out, size_t bytes) {
    // The buffer's pages, then one inaccessible page; the buffer ends at the guard page
    // (16-byte aligned; never null, even for 0 bytes).
    const size_t page = page_size();
    const size_t body = bytes == 0 ? 16 : (bytes + 15) / 16 * 16;
    const size_t body_pages = (body + page - 1) / page * page;
    const size_t length = body_pages + page;
    void* base = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
    char* guard = static_cast<char*>(base) + body_pages;
    if (mprotect(guard, page, PROT_NONE) != 0) {
        munmap(base, length);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    char* p = guard - body;
    std::memset(p, 0xff, body);
    *out = to_device(p);
    std::lock_guard<std::mutex> hold(mappings_lock);
    mappings[*out] = Mapping{base, length};
    return CUDA_SUCCESS;
}

Result release(uint64_t p) {
    Mapping m;
    {
        std::lock_guard<std::mutex> hold(mappings_lock);
        auto it = mappings.find(p);
        if (it == mappings.end()) return CUDA_ERROR_INVALID_VALUE;
        m = it->second;
        mappings.erase(it);
    }
    munmap(m.base, m.length);
    return CUDA_SUCCESS;
}

}   // namespace

extern "C" {

typedef int CUdevice;
typedef void* CUcontext;
typedef void* CUstream;
typedef void* CUevent;
typedef Module* CUmodule;
typedef Function* CUfunction;
typedef uint64_t CUdeviceptr;

int cuGetErrorString(int error, const char** out) {
    switch (error) {
        case CUDA_SUCCESS: *out = "no error"; break;
        case CUDA_ERROR_INVALID_VALUE: *out = "invalid argument"; break;
        case CUDA_ERROR_OUT_OF_MEMORY: *out = "out of memory"; break;
        case CUDA_ERROR_INVALID_IMAGE: *out = "not a module built by the emulated NVRTC"; break;
        case CUDA_ERROR_NOT_FOUND: *out = "named symbol not found"; break;
        case CUDA_ERROR_LAUNCH_FAILED: *out = "kernel failed in the emulator (see stderr)"; break;
        default: *out = "emulated driver error"; break;
    }
    return CUDA_SUCCESS;
}

int cuGetErrorName(int error, const char** out) {
    switch (error) {
        case CUDA_SUCCESS: *out = "CUDA_SUCCESS"; break;
        case CUDA_ERROR_INVALID_VALUE: *out = "CUDA_ERROR_INVALID_VALUE"; break;
        case CUDA_ERROR_OUT_OF_MEMORY: *out = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case CUDA_ERROR_INVALID_IMAGE: *out = "CUDA_ERROR_INVALID_IMAGE"; break;
        case CUDA_ERROR_NOT_FOUND: *out = "CUDA_ERROR_NOT_FOUND"; break;
        case CUDA_ERROR_LAUNCH_FAILED: *out = "CUDA_ERROR_LAUNCH_FAILED"; break;
        default: *out = "CUDA_ERROR_UNKNOWN"; break;
    }
    return CUDA_SUCCESS;
}

// --- Device and context -----------------------------------------------------------------------

int cuInit(unsigned) { return CUDA_SUCCESS; }
int cuDriverGetVersion(int* v) {
    *v = 13000;
    return CUDA_SUCCESS;
}
int cuDeviceGetCount(int* count) {
    *count = 1;
    return CUDA_SUCCESS;
}
int cuDeviceGet(CUdevice* device, int ordinal) {
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *device = 0;
    return CUDA_SUCCESS;
}
int cuDeviceGetName(char* name, int len, CUdevice) {
    std::snprintf(name, (size_t)len, "cactus CUDA emulator (CPU)");
    return CUDA_SUCCESS;
}
int cuDeviceTotalMem_v2(size_t* bytes, CUdevice) {
    *bytes = (size_t)16 << 30;
    return CUDA_SUCCESS;
}
int cuDeviceGetAttribute(int* value, int attribute, CUdevice) {
    switch (attribute) {
        case 1: *value = 1024; break;          // max threads per block
        case 8: *value = 48 * 1024; break;     // shared memory per block
        case 10: *value = 32; break;           // warp size
        case 16: *value = 132; break;          // multiprocessors
        case 75: *value = 9; break;            // compute capability
        case 76: *value = 0; break;
        case 115: *value = 0; break;           // memory pools: plain allocations
        default: *value = 0; break;
    }
    return CUDA_SUCCESS;
}
int cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice) {
    *ctx = &context_token;
    return CUDA_SUCCESS;
}
int cuDevicePrimaryCtxRelease_v2(CUdevice) { return CUDA_SUCCESS; }
int cuCtxSetCurrent(CUcontext) { return CUDA_SUCCESS; }
int cuCtxGetCurrent(CUcontext* ctx) {
    *ctx = &context_token;
    return CUDA_SUCCESS;
}
int cuCtxGetDevice(CUdevice* device) {
    *device = 0;
    return CUDA_SUCCESS;
}
int cuCtxSynchronize() { return CUDA_SUCCESS; }
int cuCtxPushCurrent_v2(CUcontext) { return CUDA_SUCCESS; }
int cuCtxPopCurrent_v2(CUcontext* ctx) {
    if (ctx) *ctx = &context_token;
    return CUDA_SUCCESS;
}
int cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    *free_bytes = (size_t)16 << 30;
    *total = (size_t)16 << 30;
    return CUDA_SUCCESS;
}

// --- Streams and events: everything is already complete --------------------------------------

int cuStreamCreate(CUstream* s, unsigned) {
    *s = &stream_token;
    return CUDA_SUCCESS;
}
int cuStreamDestroy_v2(CUstream) { return CUDA_SUCCESS; }
int cuStreamSynchronize(CUstream) { return CUDA_SUCCESS; }
int cuStreamQuery(CUstream) { return CUDA_SUCCESS; }
int cuStreamWaitEvent(CUstream, CUevent, unsigned) { return CUDA_SUCCESS; }
int cuEventCreate(CUevent* e, unsigned) {
    *e = new int(0);
    return CUDA_SUCCESS;
}
int cuEventDestroy_v2(CUevent e) {
    delete static_cast<int*>(e);
    return CUDA_SUCCESS;
}
int cuEventRecord(CUevent, CUstream) { return CUDA_SUCCESS; }
int cuEventSynchronize(CUevent) { return CUDA_SUCCESS; }
int cuEventQuery(CUevent) { return CUDA_SUCCESS; }
int cuEventElapsedTime(float* ms, CUevent, CUevent) {
    *ms = 0.0f;
    return CUDA_SUCCESS;
}
int cuEventElapsedTime_v2(float* ms, CUevent a, CUevent b) { return cuEventElapsedTime(ms, a, b); }

// --- Memory -----------------------------------------------------------------------------------

int cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) { return allocate(p, bytes); }
int cuMemAllocAsync(CUdeviceptr* p, size_t bytes, CUstream) { return allocate(p, bytes); }
int cuMemFree_v2(CUdeviceptr p) { return release(p); }
int cuMemFreeAsync(CUdeviceptr p, CUstream) { return cuMemFree_v2(p); }
int cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) {
    std::memset(to_host(p), v, n);
    return CUDA_SUCCESS;
}
int cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, CUstream) {
    return cuMemsetD8_v2(p, v, n);
}
int cuMemsetD32_v2(CUdeviceptr p, unsigned v, size_t n) {
    auto* q = static_cast<unsigned*>(to_host(p));
    for (size_t i = 0; i < n; ++i) q[i] = v;
    return CUDA_SUCCESS;
}
int cuMemsetD32Async(CUdeviceptr p, unsigned v, size_t n, CUstream) {
    return cuMemsetD32_v2(p, v, n);
}
int cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    std::memcpy(to_host(dst), src, n);
    return CUDA_SUCCESS;
}
int cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream) {
    return cuMemcpyHtoD_v2(dst, src, n);
}
int cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    std::memcpy(dst, to_host(src), n);
    return CUDA_SUCCESS;
}
int cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream) {
    return cuMemcpyDtoH_v2(dst, src, n);
}
int cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    std::memmove(to_host(dst), to_host(src), n);
    return CUDA_SUCCESS;
}
int cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream) {
    return cuMemcpyDtoD_v2(dst, src, n);
}
int cuMemHostAlloc(void** p, size_t bytes, unsigned) {
    *p = std::malloc(bytes ? bytes : 1);
    return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
int cuMemFreeHost(void* p) {
    std::free(p);
    return CUDA_SUCCESS;
}

// --- Modules and launches ---------------------------------------------------------------------

int cuModuleLoadData(CUmodule* module, const void* image) {
    const char* text = static_cast<const char*>(image);
    const char* const marker = cactus_emu::MODULE_IMAGE_MARKER;
    const size_t magic = std::strlen(marker);
    if (std::strncmp(text, marker, magic) != 0) return CUDA_ERROR_INVALID_IMAGE;
    void* lib = dlopen(text + magic, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        std::fprintf(stderr, "cactus CUDA emulator: %s\n", dlerror());
        return CUDA_ERROR_INVALID_IMAGE;
    }
    *module = new Module{lib};
    return CUDA_SUCCESS;
}
int cuModuleUnload(CUmodule module) {
    // Kept loaded: functions may outlive it in caches.
    delete module;
    return CUDA_SUCCESS;
}
int cuModuleGetFunction(CUfunction* function, CUmodule module, const char* name) {
    const std::string n = name;
    auto entry = reinterpret_cast<Entry>(dlsym(module->library, ("cactus_emu_" + n).c_str()));
    auto params =
        reinterpret_cast<int (*)()>(dlsym(module->library, ("cactus_emu_params_" + n).c_str()));
    if (!entry || !params) return CUDA_ERROR_NOT_FOUND;
    *function = new Function{entry, params(), n};
    return CUDA_SUCCESS;
}
int cuFuncGetParamInfo(CUfunction f, size_t index, size_t* offset, size_t* size) {
    if (!f || index >= (size_t)f->params) return CUDA_ERROR_INVALID_VALUE;
    *offset = index * 8;
    *size = 8;
    return CUDA_SUCCESS;
}
int cuFuncSetAttribute(CUfunction, int, int) { return CUDA_SUCCESS; }
int cuFuncGetAttribute(int* value, int, CUfunction) {
    *value = 0;
    return CUDA_SUCCESS;
}
int cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                   unsigned bz, unsigned shared_bytes, CUstream, void** params, void** extra) {
    if (!f || extra) return CUDA_ERROR_INVALID_VALUE;
    if (shared_bytes != 0) {
        std::fprintf(stderr, "cactus CUDA emulator: %s: dynamic shared memory is not emulated\n",
                     f->name.c_str());
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    if (gx == 0 || gy == 0 || gz == 0 || gy > 65535 || gz > 65535) return CUDA_ERROR_INVALID_VALUE;
    const unsigned grid[3] = {gx, gy, gz}, block[3] = {bx, by, bz};
    std::lock_guard<std::mutex> guard(launch_lock);
    watch_faults();
    const char* error = nullptr;
    running_kernel = f->name.c_str();
    const int status = f->entry(grid, block, params, &error);
    running_kernel = nullptr;
    if (status != 0) {
        std::fprintf(stderr, "cactus CUDA emulator: kernel %s: %s\n", f->name.c_str(),
                     error ? error : "failed");
        return CUDA_ERROR_LAUNCH_FAILED;
    }
    return CUDA_SUCCESS;
}

}   // extern "C"
