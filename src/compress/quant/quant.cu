// Fake quantization of weights (docs/design.md, "Quantization"): fp16 round trip, and
// asymmetric intN per tensor or per output channel with the straight-through estimator. Each
// kernel reproduces the CPU reference bit for bit (src/compress/quant/mod.rs): the same f64
// arithmetic, ties to even, and the same parameter rules.
//
// Launch order for intN: minmax_partial (grid-stride, one (min, max) per block), then
// minmax_rows over the partials (per tensor) or over the weight rows (per channel), then
// quant_params (one thread per channel), then fake_quant_int and, in backward, ste_backward.

#define BLOCK 256

__device__ __forceinline__ float next_up_f(float x) {
    if (x == 0.0f) return __uint_as_float(1u);
    unsigned int b = __float_as_uint(x);
    return x > 0.0f ? __uint_as_float(b + 1u) : __uint_as_float(b - 1u);
}

__device__ __forceinline__ float next_down_f(float x) { return -next_up_f(-x); }

// Block-wide min and max of (lo, hi) into thread 0's result.
__device__ void block_minmax(float& lo, float& hi) {
    __shared__ float s_lo[BLOCK];
    __shared__ float s_hi[BLOCK];
    s_lo[threadIdx.x] = lo;
    s_hi[threadIdx.x] = hi;
    __syncthreads();
    for (int stride = BLOCK / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) {
            s_lo[threadIdx.x] = fminf(s_lo[threadIdx.x], s_lo[threadIdx.x + stride]);
            s_hi[threadIdx.x] = fmaxf(s_hi[threadIdx.x], s_hi[threadIdx.x + stride]);
        }
        __syncthreads();
    }
    lo = s_lo[0];
    hi = s_hi[0];
}

// One (min, max) per block over a grid-stride walk of x[0..n). A NaN or infinite value sets
// *non_finite (the CPU refuses to quantize such a tensor; fminf/fmaxf alone would skip a NaN).
extern "C" __global__ void minmax_partial(const float* x, long long n, float* part_lo,
                                          float* part_hi, int* non_finite) {
    float lo = __int_as_float(0x7f800000);   // +inf
    float hi = __int_as_float(0xff800000);   // -inf
    for (long long i = blockIdx.x * (long long)BLOCK + threadIdx.x; i < n;
         i += (long long)gridDim.x * BLOCK) {
        float v = x[i];
        if (!(fabsf(v) <= 3.402823466e38f)) *non_finite = 1;
        lo = fminf(lo, v);
        hi = fmaxf(hi, v);
    }
    block_minmax(lo, hi);
    if (threadIdx.x == 0) {
        part_lo[blockIdx.x] = lo;
        part_hi[blockIdx.x] = hi;
    }
}

// (min, max) of each of `rows` rows of `row_len` values; one block per row. With lo_in/hi_in
// the rows are pairs of partial results (lo_in[r], hi_in[r]) instead of raw values.
extern "C" __global__ void minmax_rows(const float* lo_in, const float* hi_in, int rows,
                                       long long row_len, float* lo_out, float* hi_out,
                                       int* non_finite) {
    int r = blockIdx.x;
    if (r >= rows) return;
    float lo = __int_as_float(0x7f800000);
    float hi = __int_as_float(0xff800000);
    const float* a = lo_in + r * row_len;
    const float* b = hi_in + r * row_len;
    for (long long i = threadIdx.x; i < row_len; i += BLOCK) {
        if (!(fabsf(a[i]) <= 3.402823466e38f) || !(fabsf(b[i]) <= 3.402823466e38f))
            *non_finite = 1;
        lo = fminf(lo, a[i]);
        hi = fmaxf(hi, b[i]);
    }
    block_minmax(lo, hi);
    if (threadIdx.x == 0) {
        lo_out[r] = lo;
        hi_out[r] = hi;
    }
}

// Scale, zero point and the STE window of each channel from its (min, max): CPU's
// `channel_params` and `ste_bounds`. A constant channel c gets s = |c|, z = -sign(c) (exact).
extern "C" __global__ void quant_params(const float* lo_in, const float* hi_in, int channels,
                                        int qmin, int qmax, float* scale, int* zero_point,
                                        float* ste_lo, float* ste_hi) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels) return;
    float lo = lo_in[c], hi = hi_in[c];
    float s;
    int z;
    if (lo == hi) {
        if (lo == 0.0f) { s = 1.0f; z = 0; }
        else { s = fabsf(lo); z = lo > 0.0f ? -1 : 1; }
    } else {
        double levels = (double)(qmax - qmin);
        double range = (double)hi - (double)lo;
        s = (float)(range / levels);
        if ((double)s * levels < range) s = __uint_as_float(__float_as_uint(s) + 1u);
        double magnitude = fmax(fabs((double)lo), fabs((double)hi));
        double limit = (double)(1u << 30);
        float floor_s = (float)(magnitude / limit);
        if ((double)floor_s * limit < magnitude)
            floor_s = __uint_as_float(__float_as_uint(floor_s) + 1u);
        s = fmaxf(fmaxf(s, floor_s), __uint_as_float(1u));
        double r = rint((double)lo / (double)s);
        z = (int)((long long)qmin - (long long)r);
    }
    scale[c] = s;
    zero_point[c] = z;
    double sd = (double)s, zd = (double)z;
    double a = sd * ((double)qmin - zd - 0.5);
    double b = sd * ((double)qmax - zd + 0.5);
    a -= (fabs(a) + sd) * 9.094947017729282e-13;   // 2^-40
    b += (fabs(b) + sd) * 9.094947017729282e-13;
    float a32 = (float)a, b32 = (float)b;
    if ((double)a32 > a) a32 = next_down_f(a32);
    if ((double)b32 < b) b32 = next_up_f(b32);
    ste_lo[c] = a32;
    ste_hi[c] = b32;
}

// y = s·(clamp(round(x/s) + z, qmin, qmax) − z) per value, the channel being i / row_len
// (row_len = n for per tensor). Quotient and product in f64, ties to even; NaN stays NaN.
extern "C" __global__ void fake_quant_int(const float* x, long long n, long long row_len,
                                          const float* scale, const int* zero_point, int qmin,
                                          int qmax, float* y) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    if (v != v) { y[i] = v; return; }
    long long c = i / row_len;
    double s = (double)scale[c];
    long long z = zero_point[c];
    double r = rint(fmin(fmax((double)v / s, -1099511627776.0), 1099511627776.0));
    double q = fmin(fmax(r + (double)z, (double)qmin), (double)qmax);
    y[i] = (float)(s * (double)((long long)q - z));
}

// The integer codes q (for export), as fake_quant_int computes them.
extern "C" __global__ void quantize_int(const float* x, long long n, long long row_len,
                                        const float* scale, const int* zero_point, int qmin,
                                        int qmax, signed char* q_out) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    long long c = i / row_len;
    float v = x[i];
    if (v != v) { q_out[i] = 0; return; }   // as the CPU (a NaN code is 0)
    double s = (double)scale[c];
    double r = rint(fmin(fmax((double)v / s, -1099511627776.0), 1099511627776.0));
    double q = fmin(fmax(r + (double)zero_point[c], (double)qmin), (double)qmax);
    q_out[i] = (signed char)(int)q;
}

// Straight-through gradient: g where ste_lo ≤ x ≤ ste_hi of x's channel, else 0.
extern "C" __global__ void ste_backward(const float* x, const float* g, long long n,
                                        long long row_len, const float* ste_lo,
                                        const float* ste_hi, float* dx) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    long long c = i / row_len;
    float v = x[i];
    dx[i] = (v >= ste_lo[c] && v <= ste_hi[c]) ? g[i] : 0.0f;
}

// Round to the nearest fp16, ties to even (PTX cvt.rn), and back; finite values beyond the
// half range are clamped to ±65504 first, ±inf and NaN pass through.
extern "C" __global__ void fake_quant_fp16(const float* x, long long n, float* y) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    if (fabsf(v) <= 3.402823466e38f) v = fminf(fmaxf(v, -65504.0f), 65504.0f);
#ifdef CACTUS_EMULATED
    // The CPU emulator (tools/cuda_emulator): the host's IEEE half, also round-to-nearest-even.
    const float back = (float)(_Float16)v;
#else
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    float back;
    asm("cvt.f32.f16 %0, %1;" : "=f"(back) : "h"(h));
#endif
    y[i] = back;
}
