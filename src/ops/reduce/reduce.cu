// Reductions besides the sum to a broadcast-compatible shape (that one is the adjoint of the
// broadcast, in elementwise.cu): the argmax along an axis, the per-channel sums of a batch, and
// the sum of squares over several buffers (the global gradient norm). CPU reference:
// src/ops/reduce/mod.rs, src/ops/conv/cpu.rs, src/train/optim/mod.rs.
//
// Sums accumulate in double in a fixed order (one block per output, fixed shapes, no atomics):
// the same input always gives the same bits.

#include "launch.cuh"
#include "math.cuh"
#include "reduce.cuh"

// The index of the maximum along an axis of length `len` for each of outer·inner positions:
// the first maximum (strict >, so a NaN never replaces the best and a leading NaN stays), as a
// float. The CPU's scan, one thread per output.
extern "C" __global__ void argmax_axis(const float* x, long long outer, long long len,
                                       long long inner, float* y) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= outer * inner) return;
    const float* p = x + (i / inner) * len * inner + i % inner;
    long long best = 0;
    for (long long l = 1; l < len; ++l)
        if (p[l * inner] > p[best * inner]) best = l;
    y[i] = (float)best;
}


// ---------------------------------------------------------------------------------------------
// Global gradient norm: Σ x² over several buffers, in double as the CPU. Each buffer gets
// `blocks` partial sums (a grid-stride loop, the block count fixed by its length), written at
// `offset` of one partial array; `sum_doubles` (one block) adds all partials. Deterministic.
// ---------------------------------------------------------------------------------------------

extern "C" __global__ void sum_squares_partial(const float* x, long long n, double* partial,
                                               int offset) {
    double v[1] = {0.0};
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        double d = (double)x[i];
        v[0] += d * d;
    }
    block_sum_d<1>(v);
    if (threadIdx.x == 0) partial[offset + blockIdx.x] = v[0];
}

extern "C" __global__ void sum_doubles(const double* x, int n, double* out) {
    double v[1] = {0.0};
    for (int i = threadIdx.x; i < n; i += blockDim.x) v[0] += x[i];
    block_sum_d<1>(v);
    if (threadIdx.x == 0) out[0] = v[0];
}

// Per-channel sums of [n, channels, hw] (bias gradients, sums over a batch):
// out[ch] = Σ_{i < n} Σ_{s < hw} x[(i·channels + ch)·hw + s]: one block of 256 per channel,
// a fixed-order tree at the end (deterministic).
extern "C" __global__ void __launch_bounds__(BLOCK)
    channel_sum(const float* __restrict__ x, int n, int channels, int hw,
                float* __restrict__ out) {
    __shared__ float part[BLOCK];
    const int ch = blockIdx.x;
    const int total = n * hw;
    float s = 0.0f;
    for (int i = threadIdx.x; i < total; i += BLOCK) {
        const int b = i / hw;
        s += x[(b * channels + ch) * hw + (i - b * hw)];
    }
    part[threadIdx.x] = s;
    __syncthreads();
    for (int half = BLOCK / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[ch] = part[0];
}
