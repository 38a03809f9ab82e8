// Checks of the emulator itself (block barriers, shared memory, warp shuffles, deadlock
// detection, grid and block indices), built and run by tools/cuda_emulator/build.sh: the GPU
// parity tests trust it to execute kernels as a GPU would.

#include "cuda_emulator.h"

#include <cstdlib>

namespace {

int failures = 0;

void check(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "cuda emulator selftest: FAILED: %s\n", what);
        ++failures;
    }
}

// Reverse a block's values through shared memory: wrong without the barrier.
void reverse_block(const float* in, float* out) {
    __shared__ float tile[256];
    const unsigned t = threadIdx.x, base = blockIdx.x * blockDim.x;
    tile[t] = in[base + t];
    __syncthreads();
    out[base + t] = tile[blockDim.x - 1 - t];
}

// A butterfly sum: every lane ends with its warp's total.
void warp_total(const float* in, float* out) {
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = in[i];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    out[i] = v;
}

// A shuffle in warp 0 only, after a barrier every thread passes: legal, no deadlock.
void first_warp_only(float* out) {
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = (float)threadIdx.x;
        v = __shfl_xor_sync(0xffffffffu, v, 1);
        out[threadIdx.x] = v;
    }
}

// A full-warp shuffle only half the warp reaches: the other half waits at the barrier.
void divergent_shuffle(float* out) {
    float v = 1.0f;
    if (threadIdx.x < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
    __syncthreads();
    out[threadIdx.x] = v;
}

// Indices of a 3-D grid of 3-D blocks.
void indices(unsigned* out) {
    const unsigned block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    const unsigned thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    const unsigned per_block = blockDim.x * blockDim.y * blockDim.z;
    out[block * per_block + thread] = block * 1000 + thread;
}

template <class... A>
int launch(void (*kernel)(A...), dim3 grid, dim3 block, A... args) {
    void* params[] = {&args...};
    static void (*k)(A...);
    k = kernel;
    auto body = [](void** p) {
        cactus_emu::call_unpacked(k, p, std::make_index_sequence<sizeof...(A)>{});
    };
    return cactus_emu::run_grid(body, params, grid, block);
}

}   // namespace

int main() {
    {
        std::vector<float> in(512), out(512);
        for (int i = 0; i < 512; ++i) in[i] = (float)i;
        check(launch(reverse_block, dim3{2, 1, 1}, dim3{256, 1, 1}, (const float*)in.data(),
                     out.data()) == 0,
              "reverse_block runs");
        bool ok = true;
        for (int b = 0; b < 2; ++b)
            for (int t = 0; t < 256; ++t) ok &= out[b * 256 + t] == in[b * 256 + 255 - t];
        check(ok, "__syncthreads orders shared-memory writes before reads");
    }
    {
        std::vector<float> in(96), out(96);
        for (int i = 0; i < 96; ++i) in[i] = (float)(i % 7);
        check(launch(warp_total, dim3{1, 1, 1}, dim3{96, 1, 1}, (const float*)in.data(),
                     out.data()) == 0,
              "warp_total runs");
        bool ok = true;
        for (int w = 0; w < 3; ++w) {
            float total = 0;
            for (int l = 0; l < 32; ++l) total += in[w * 32 + l];
            for (int l = 0; l < 32; ++l) ok &= out[w * 32 + l] == total;
        }
        check(ok, "__shfl_xor_sync butterfly gives every lane its warp's sum");
    }
    {
        std::vector<float> out(32, -1.0f);
        check(launch(first_warp_only, dim3{1, 1, 1}, dim3{128, 1, 1}, out.data()) == 0,
              "a shuffle in one warp of the block is not a deadlock");
        bool ok = true;
        for (int l = 0; l < 32; ++l) ok &= out[l] == (float)(l ^ 1);
        check(ok, "the shuffle of warp 0 reads its partner lanes");
    }
    {
        std::vector<float> out(64);
        check(launch(divergent_shuffle, dim3{1, 1, 1}, dim3{64, 1, 1}, out.data()) != 0,
              "a shuffle in divergent code is reported");
        check(std::strstr(cactus_emu::rt.error, "deadlock") != nullptr,
              "the report says deadlock");
        std::vector<float> in(256, 1.0f), again(256);
        check(launch(reverse_block, dim3{1, 1, 1}, dim3{256, 1, 1}, (const float*)in.data(),
                     again.data()) == 0,
              "the emulator runs kernels after a deadlock");
    }
    {
        const dim3 grid{3, 2, 2}, block{4, 2, 3};
        std::vector<unsigned> out(12 * 24, 0xffffffffu);
        check(launch(indices, grid, block, out.data()) == 0, "indices runs");
        bool ok = true;
        for (unsigned b = 0; b < 12; ++b)
            for (unsigned t = 0; t < 24; ++t) ok &= out[b * 24 + t] == b * 1000 + t;
        check(ok, "3-D grid and block indices cover every thread once");
    }
    if (failures == 0) std::printf("cuda emulator selftest: ok\n");
    return failures == 0 ? 0 : 1;
}
