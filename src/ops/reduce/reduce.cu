// Reductions: a tensor reduced to a broadcast-compatible shape (sum and max over any set of
// axes), the argmax along an axis, and the sum of squares over several buffers (the global
// gradient norm). CPU reference: src/ops/reduce/mod.rs, src/train/optim/mod.rs.
//
// Sums accumulate in double in a fixed order (one block per output, fixed shapes, no atomics):
// the same input always gives the same bits.

#include "launch.cuh"
#include "math.cuh"
#include "reduce.cuh"

#define MAX_RANK 8

// The reduction of a tensor to fewer elements: each output is indexed over the kept axes and
// reads the reduced axes at its offset.
struct Reduction {
    int kept_rank, reduced_rank;
    long long kept_dims[MAX_RANK], kept_strides[MAX_RANK];
    long long reduced_dims[MAX_RANK], reduced_strides[MAX_RANK];
    long long reduced;   // product of reduced_dims
};

__device__ __forceinline__ long long offset_of(long long i, int rank, const long long* dims,
                                               const long long* strides) {
    long long off = 0;
    for (int ax = rank - 1; ax >= 0; --ax) {
        off += (i % dims[ax]) * strides[ax];
        i /= dims[ax];
    }
    return off;
}

// One block per output (grid-stride over outputs): op 0 sums (in double, then rounded once),
// op 1 takes the maximum (fmaxf from −∞: NaN never wins, as the CPU's f32::max fold). The
// threads stride over the reduced elements, then the block reduces in a fixed order.
extern "C" __global__ void reduce_axes(const float* x, Reduction r, int op, long long outputs,
                                       float* y) {
    __shared__ float part_max[32];
    for (long long o = blockIdx.x; o < outputs; o += gridDim.x) {
        long long base = offset_of(o, r.kept_rank, r.kept_dims, r.kept_strides);
        if (op == 0) {
            double acc[1] = {0.0};
            for (long long j = threadIdx.x; j < r.reduced; j += blockDim.x)
                acc[0] += (double)x[base + offset_of(j, r.reduced_rank, r.reduced_dims,
                                                     r.reduced_strides)];
            block_sum_d<1>(acc);
            if (threadIdx.x == 0) y[o] = (float)acc[0];
        } else {
            float m = NEG_INF;
            for (long long j = threadIdx.x; j < r.reduced; j += blockDim.x)
                m = fmaxf(m, x[base + offset_of(j, r.reduced_rank, r.reduced_dims,
                                                r.reduced_strides)]);
            m = warp_max(m);
            int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
            if (lane == 0) part_max[warp] = m;
            __syncthreads();
            if (warp == 0) {
                int warps = blockDim.x >> 5;
                m = warp_max(lane < warps ? part_max[lane] : NEG_INF);
                if (lane == 0) y[o] = m;
            }
        }
        __syncthreads();   // the shared partials are reused by the next output
    }
}

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
