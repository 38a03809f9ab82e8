// Shape-general element-wise maps and reductions: NumPy-broadcasting binary ops and their
// gradients, the rarer unary maps (exp, log, sqrt, clamp), reductions of a tensor to a
// broadcast-compatible shape (sum and max over any set of axes), argmax along an axis, and
// strided copies (concatenation along any axis, row gathers and their backward). CPU references:
// src/ops/{elementwise,reduce,shape}.rs.
//
// Shapes arrive from the host already simplified (src/backend/cuda/broadcast.rs): axes of size 1
// dropped and adjacent axes merged wherever every operand allows, so most launches see rank 1 or
// 2. Index arithmetic is in 64 bits.
//
// Element-wise formulas use the explicitly rounded intrinsics where the CPU computes a product
// and a sum in f32, so that NVRTC cannot contract them into an FMA: those results are the CPU's
// bit for bit (exp, log and sqrt differ from the host's by an ulp or so). Sums accumulate in
// double in a fixed order (one block per output, fixed shapes): deterministic.

#include "math.cuh"
#include "reduce.cuh"

#define MAX_RANK 8

// An output shape and the strides of up to three operands over it (0 along broadcast axes).
struct Strided {
    int rank;
    long long dims[MAX_RANK];
    long long strides[3][MAX_RANK];
};

// The map's operation; operands are (g, a, b) and parameters (p, q). The forward ops read a and
// b; the gradient ops (G_*) return g times the derivative of the forward op at (a, b), as the CPU
// computes `g * d(a, b)`.
enum MapOp {
    ADD = 0, SUB = 1, MUL = 2, DIV = 3, MIN = 4, MAX = 5,
    COPY_B = 6,                   // b, broadcast: a gradient spread back over reduced axes
    EXP = 7, LOG = 8, SQRT = 9,   // of a
    CLAMP = 10,                   // a into [p, q]
    EQ = 11,                      // 1 where a == b, else 0
    G_ONE = 20, G_NEG = 21,       // g·1 (add, sub's a), g·(−1) (sub's b)
    G_MUL_A = 22, G_MUL_B = 23,   // g·b, g·a
    G_DIV_A = 24, G_DIV_B = 25,   // g·(1/b), g·(−a/(b·b))
    G_MIN_A = 26, G_MIN_B = 27,   // g·[a wins], a tie giving each half
    G_MAX_A = 28, G_MAX_B = 29,
    G_EXP = 30, G_LOG = 31, G_SQRT = 32,   // g·exp(a), g·(1/a), g·(0.5/sqrt(a))
    G_CLAMP = 33,                 // g·[p ≤ a ≤ q]
    G_EQ = 34,                    // g·[a == b]: a maximum's gradient to its maximal entries
};

__device__ __forceinline__ float tie_share(bool wins, bool tie) {
    return wins ? 1.0f : (tie ? 0.5f : 0.0f);
}

__device__ __forceinline__ float apply(int op, float g, float a, float b, float p, float q) {
    switch (op) {
        case ADD: return __fadd_rn(a, b);
        case SUB: return __fsub_rn(a, b);
        case MUL: return __fmul_rn(a, b);
        case DIV: return __fdiv_rn(a, b);
        case MIN: return fminf(a, b);   // NaN loses, as f32::min
        case MAX: return fmaxf(a, b);
        case COPY_B: return b;
        case EXP: return expf(a);
        case LOG: return logf(a);
        case SQRT: return __fsqrt_rn(a);
        case CLAMP: return a < p ? p : (a > q ? q : a);   // NaN stays NaN, as f32::clamp
        case EQ: return a == b ? 1.0f : 0.0f;
        case G_ONE: return g;
        case G_NEG: return __fmul_rn(g, -1.0f);
        case G_MUL_A: return __fmul_rn(g, b);
        case G_MUL_B: return __fmul_rn(g, a);
        case G_DIV_A: return __fmul_rn(g, __fdiv_rn(1.0f, b));
        case G_DIV_B: return __fmul_rn(g, __fdiv_rn(-a, __fmul_rn(b, b)));
        case G_MIN_A: return __fmul_rn(g, tie_share(a < b, a == b));
        case G_MIN_B: return __fmul_rn(g, tie_share(b < a, a == b));
        case G_MAX_A: return __fmul_rn(g, tie_share(a > b, a == b));
        case G_MAX_B: return __fmul_rn(g, tie_share(b > a, a == b));
        case G_EXP: return __fmul_rn(g, expf(a));
        case G_LOG: return __fmul_rn(g, __fdiv_rn(1.0f, a));
        case G_SQRT: return __fmul_rn(g, __fdiv_rn(0.5f, __fsqrt_rn(a)));
        case G_CLAMP: return __fmul_rn(g, (a >= p && a <= q) ? 1.0f : 0.0f);
        case G_EQ: return __fmul_rn(g, a == b ? 1.0f : 0.0f);
        default: return __int_as_float(0x7fc00000);   // unknown op: NaN, never silent
    }
}

// y[i] = apply(op, g[·], a[·], b[·]) over the n elements of s's shape, each operand read
// through its own strides (an unused operand is passed with zero strides).
extern "C" __global__ void broadcast_map(const float* g, const float* a, const float* b,
                                         Strided s, int op, float p, float q, long long n,
                                         float* y) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        long long rem = i, og = 0, oa = 0, ob = 0;
        for (int ax = s.rank - 1; ax >= 0; --ax) {
            long long d = s.dims[ax];
            long long k = rem % d;
            rem /= d;
            og += k * s.strides[0][ax];
            oa += k * s.strides[1][ax];
            ob += k * s.strides[2][ax];
        }
        y[i] = apply(op, g[og], a[oa], b[ob], p, q);
    }
}

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
