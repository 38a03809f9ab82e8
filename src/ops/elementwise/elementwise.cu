// Element-wise maps. The shape-general map: NumPy-broadcasting binary ops and their gradients and
// the rarer unary maps (exp, log, sqrt, clamp), each operand read through its own strides; its
// adjoint, the reduction of a tensor to a broadcast-compatible shape (sum, and max, over any set
// of axes; sums in double in a fixed order: deterministic); and
// the fast paths on equal-length buffers (ew_*: add, mul, relu, abs, sign, scale, powf, fill,
// add_scaled) with their gradients. CPU reference: src/ops/elementwise/mod.rs.
//
// Shapes arrive from the host already simplified (src/runtime/cuda/strided.rs): axes of size 1
// dropped and adjacent axes merged wherever every operand allows, so most launches see rank 1 or
// 2. Index arithmetic is in 64 bits.
//
// Where the CPU computes a product and a sum in f32, the kernels use the explicitly rounded
// intrinsics (__fmul_rn, __fadd_rn, ...), which NVRTC never contracts into FMAs, in the CPU's
// order: those results are the CPU's bit for bit (exp, log and sqrt differ from the host's by an
// ulp or so).

#include "launch.cuh"
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

// ---------------------------------------------------------------------------------------------
// Element-wise ops on equal-length buffers (no broadcasting). The gradient of a + b is g for
// both operands and that of s·x is s·g (`ew_scale`): no kernels of their own.
// ---------------------------------------------------------------------------------------------

extern "C" __global__ void ew_add(const float* a, const float* b, long long n, float* y) {
    ELEMENT
    y[i] = a[i] + b[i];
}

extern "C" __global__ void ew_mul(const float* a, const float* b, long long n, float* y) {
    ELEMENT
    y[i] = a[i] * b[i];
}

// d(a·b): da = g·b, db = g·a.
extern "C" __global__ void ew_mul_backward(const float* g, const float* a, const float* b,
                                           long long n, float* da, float* db) {
    ELEMENT
    float gi = g[i];
    da[i] = gi * b[i];
    db[i] = gi * a[i];
}

// max(x, 0); NaN gives 0, as the CPU's f32::max.
extern "C" __global__ void ew_relu(const float* x, long long n, float* y) {
    ELEMENT
    y[i] = fmaxf(x[i], 0.0f);
}

// g·[x > 0] as a product (so that an infinite or NaN g at x ≤ 0 gives NaN, as on the CPU).
extern "C" __global__ void ew_relu_backward(const float* g, const float* x, long long n,
                                            float* dx) {
    ELEMENT
    dx[i] = g[i] * (x[i] > 0.0f ? 1.0f : 0.0f);
}

extern "C" __global__ void ew_abs(const float* x, long long n, float* y) {
    ELEMENT
    y[i] = fabsf(x[i]);
}

// g·sign(x) (0 at x = 0).
extern "C" __global__ void ew_abs_backward(const float* g, const float* x, long long n,
                                           float* dx) {
    ELEMENT
    dx[i] = g[i] * sign_f(x[i]);
}

// sign(x) ∈ {-1, 0, 1} (its gradient is zero).
extern "C" __global__ void ew_sign(const float* x, long long n, float* y) {
    ELEMENT
    y[i] = sign_f(x[i]);
}

extern "C" __global__ void ew_scale(const float* x, float s, long long n, float* y) {
    ELEMENT
    y[i] = x[i] * s;
}

// x + s (add_scalar; its gradient is g).
extern "C" __global__ void ew_add_scalar(const float* x, float s, long long n, float* y) {
    ELEMENT
    y[i] = x[i] + s;
}

// x^p for a constant p, and its gradient g·p·x^(p−1).
extern "C" __global__ void ew_powf(const float* x, float p, long long n, float* y) {
    ELEMENT
    y[i] = powf(x[i], p);
}

extern "C" __global__ void ew_powf_backward(const float* g, const float* x, float p,
                                            long long n, float* dx) {
    ELEMENT
    dx[i] = g[i] * (p * powf(x[i], p - 1.0f));
}

// Every value set to v (constants without a host copy).
extern "C" __global__ void ew_fill(float* y, float v, long long n) {
    ELEMENT
    y[i] = v;
}

// y ← y + s·x in place (gradient accumulation, weight perturbations), rounded as y + (s·x).
extern "C" __global__ void ew_add_scaled(float* y, const float* x, float s, long long n) {
    ELEMENT
    y[i] = __fadd_rn(y[i], __fmul_rn(s, x[i]));
}
