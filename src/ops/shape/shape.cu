// Strided copies: one operand's slab of a concatenation along any axis (and, reversed, its
// gradient), row gathers with repeats and their backward. CPU reference: src/ops/shape/mod.rs.

#include "launch.cuh"
#include "math.cuh"
#include "reduce.cuh"

// dst[o·dst_pitch + dst_at + j] = src[o·src_pitch + src_at + j] for o < blocks, j < width: one
// operand's slab of a concatenation along an axis (and, reversed, its gradient).
extern "C" __global__ void copy_blocks(const float* src, long long src_pitch, long long src_at,
                                       long long blocks, long long width, float* dst,
                                       long long dst_pitch, long long dst_at) {
    long long n = blocks * width;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        long long o = i / width, j = i % width;
        dst[o * dst_pitch + dst_at + j] = src[o * src_pitch + src_at + j];
    }
}

// y's row k = x's row index[k] (rows of `row` values).
extern "C" __global__ void gather_rows(const float* x, const int* index, long long rows,
                                       long long row, float* y) {
    long long n = rows * row;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        y[i] = x[(long long)index[i / row] * row + i % row];
}

// The gradient of a gather: dx's row r = Σ of g's rows k with index[k] = r, listed (in
// increasing k) at sources[starts[r] .. starts[r + 1]]; added in that order from 0, as the
// CPU adds them. Rows never gathered get 0.
extern "C" __global__ void scatter_rows(const float* g, const int* starts, const int* sources,
                                        long long rows, long long row, float* dx) {
    long long n = rows * row;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        long long r = i / row, j = i % row;
        float acc = 0.0f;
        for (int s = starts[r]; s < starts[r + 1]; ++s)
            acc = __fadd_rn(acc, g[(long long)sources[s] * row + j]);
        dx[i] = acc;
    }
}
