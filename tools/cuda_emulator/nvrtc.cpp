// The emulated NVRTC (libnvrtc.so.13): "compiles" a kernel module by building it with the host
// C++ compiler, cuda_emulator.h force-included, into a shared library, and hands back as its
// "CUBIN" a small record naming that library, which the emulated driver (driver.cpp) loads.
// Only the calls cactus makes are provided.
//
// Each `extern "C" __global__ void name(` of the preprocessed source (so entry points that
// macros define count) gets entry points for the driver (CACTUS_EMU_EXPORT).
// Libraries are cached by a hash of the source and the compiler command, in
// $CACTUS_EMU_CACHE (default: $TMPDIR/cactus-cuda-emulator), so test processes share them.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include <sys/stat.h>
#include <unistd.h>

#include "module_image.h"

#ifndef CACTUS_EMU_DIR
#error "build with -DCACTUS_EMU_DIR=\"<folder of cuda_emulator.h>\""
#endif

namespace {

enum Result {
    NVRTC_SUCCESS = 0,
    NVRTC_ERROR_OUT_OF_MEMORY = 1,
    NVRTC_ERROR_INVALID_INPUT = 3,
    NVRTC_ERROR_INVALID_PROGRAM = 4,
    NVRTC_ERROR_COMPILATION = 6,
};

struct Program {
    std::string source, name, log, image;
};

uint64_t fnv1a(const std::string& s, uint64_t h = 1469598103934665603ull) {
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
    return h;
}

std::string cache_dir() {
    if (const char* d = std::getenv("CACTUS_EMU_CACHE")) return d;
    const char* tmp = std::getenv("TMPDIR");
    return std::string(tmp && *tmp ? tmp : "/tmp") + "/cactus-cuda-emulator-" +
           std::to_string(getuid());
}

bool exists(const std::string& path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0;
}

std::string read_all(const std::string& path) {
    std::ifstream f(path);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

std::mutex compile_lock;

// Run `cmd`, its output to `log`; the log's text on failure.
bool run(const std::string& cmd, const std::string& log, std::string& text) {
    const int rc = std::system((cmd + " > " + log + " 2>&1").c_str());
    text = read_all(log);
    if (rc != 0) text = "emulated NVRTC: `" + cmd + "` failed:\n" + text;
    return rc == 0;
}

Result compile(Program& p) {
    std::lock_guard<std::mutex> guard(compile_lock);
    const char* cxx_env = std::getenv("CXX");
    const std::string cxx = cxx_env && *cxx_env ? cxx_env : "c++";
    const std::string common = " -std=c++17 -include " CACTUS_EMU_DIR "/cuda_emulator.h";
    const std::string flags = common +
                              " -O2 -g -fPIC -shared -fvisibility=hidden -ffp-contract=off"
                              " -Wno-unused-function -Wno-unused-variable";
    const std::string header = read_all(CACTUS_EMU_DIR "/cuda_emulator.h");
    char hash[32];
    std::snprintf(hash, sizeof hash, "%016llx",
                  (unsigned long long)fnv1a(cxx + flags + header, fnv1a(p.source)));
    const std::string dir = cache_dir();
    mkdir(dir.c_str(), 0700);
    const std::string stem = dir + "/" + (p.name.empty() ? "module" : p.name) + "-" + hash;
    const std::string lib = stem + ".so", names_file = stem + ".kernels";
    if (!exists(lib)) {
        const std::string tmp = stem + "." + std::to_string(getpid());
        const std::string src = tmp + ".cu", pre = tmp + ".i", unit = tmp + ".cpp";
        {
            std::ofstream out(src);
            out << "#line 1 \"" << p.name << "\"\n" << p.source << "\n";
        }
        // The kernels, from the preprocessed source (entry points may come from macros):
        // cuda_emulator.h turns __global__ into __attribute__((used)).
        if (!run(cxx + common + " -E -P -x c++ " + src + " -o " + pre, tmp + ".log", p.log))
            return NVRTC_ERROR_COMPILATION;
        const std::string expanded = read_all(pre);
        std::set<std::string> names;
        const std::regex kernel(R"(extern\s+"C"\s+__attribute__\s*\(\(used\)\)\s+void\s+(\w+)\s*\()");
        for (auto it = std::sregex_iterator(expanded.begin(), expanded.end(), kernel);
             it != std::sregex_iterator(); ++it)
            names.insert((*it)[1]);
        {
            std::ofstream out(unit);
            // Beside it: quoted includes resolve from the including file's folder.
            out << "#include \"" << src.substr(src.rfind('/') + 1) << "\"\n";
            for (const auto& n : names) out << "CACTUS_EMU_EXPORT(" << n << ")\n";
        }
        if (!run(cxx + flags + " -x c++ " + unit + " -o " + tmp + ".so", tmp + ".log", p.log))
            return NVRTC_ERROR_COMPILATION;
        {
            std::ofstream out(names_file);
            for (const auto& n : names) out << n << "\n";
        }
        if (std::rename((tmp + ".so").c_str(), lib.c_str()) != 0) {
            p.log = "emulated NVRTC: cannot move " + tmp + ".so to " + lib;
            return NVRTC_ERROR_COMPILATION;
        }
        p.log.clear();
    }
    // The record: magic, library path, then each entry point as "\0name\0", as a CUBIN's
    // string table holds them.
    p.image = std::string(cactus_emu::MODULE_IMAGE_MARKER) + lib;
    std::istringstream names(read_all(names_file));
    for (std::string n; std::getline(names, n);) {
        p.image.push_back('\0');
        p.image += n;
    }
    p.image.push_back('\0');
    return NVRTC_SUCCESS;
}

}   // namespace

extern "C" {

typedef Program* nvrtcProgram;

const char* nvrtcGetErrorString(int result) {
    switch (result) {
        case NVRTC_SUCCESS: return "NVRTC_SUCCESS";
        case NVRTC_ERROR_COMPILATION: return "NVRTC_ERROR_COMPILATION (emulated)";
        case NVRTC_ERROR_INVALID_PROGRAM: return "NVRTC_ERROR_INVALID_PROGRAM (emulated)";
        default: return "NVRTC_ERROR (emulated)";
    }
}

int nvrtcVersion(int* major, int* minor) {
    *major = 13;
    *minor = 0;
    return NVRTC_SUCCESS;
}

int nvrtcCreateProgram(nvrtcProgram* prog, const char* src, const char* name, int num_headers,
                       const char* const* /*headers*/, const char* const* /*include_names*/) {
    if (!prog || !src || num_headers != 0) return NVRTC_ERROR_INVALID_INPUT;
    auto* p = new Program;
    p->source = src;
    p->name = name ? name : "module.cu";
    *prog = p;
    return NVRTC_SUCCESS;
}

int nvrtcDestroyProgram(nvrtcProgram* prog) {
    if (!prog || !*prog) return NVRTC_ERROR_INVALID_PROGRAM;
    delete *prog;
    *prog = nullptr;
    return NVRTC_SUCCESS;
}

int nvrtcCompileProgram(nvrtcProgram prog, int /*num_options*/, const char* const* /*options*/) {
    if (!prog) return NVRTC_ERROR_INVALID_PROGRAM;
    return compile(*prog);
}

int nvrtcGetProgramLogSize(nvrtcProgram prog, size_t* size) {
    if (!prog) return NVRTC_ERROR_INVALID_PROGRAM;
    *size = prog->log.size() + 1;
    return NVRTC_SUCCESS;
}

int nvrtcGetProgramLog(nvrtcProgram prog, char* log) {
    if (!prog) return NVRTC_ERROR_INVALID_PROGRAM;
    std::memcpy(log, prog->log.c_str(), prog->log.size() + 1);
    return NVRTC_SUCCESS;
}

int nvrtcGetCUBINSize(nvrtcProgram prog, size_t* size) {
    if (!prog || prog->image.empty()) return NVRTC_ERROR_INVALID_PROGRAM;
    *size = prog->image.size();
    return NVRTC_SUCCESS;
}

int nvrtcGetCUBIN(nvrtcProgram prog, char* cubin) {
    if (!prog || prog->image.empty()) return NVRTC_ERROR_INVALID_PROGRAM;
    std::memcpy(cubin, prog->image.data(), prog->image.size());
    return NVRTC_SUCCESS;
}

int nvrtcGetPTXSize(nvrtcProgram prog, size_t* size) { return nvrtcGetCUBINSize(prog, size); }
int nvrtcGetPTX(nvrtcProgram prog, char* ptx) { return nvrtcGetCUBIN(prog, ptx); }

}   // extern "C"
