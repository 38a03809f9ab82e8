// Batch normalisation: per-channel statistics (mean, biased variance) and their joint backward,
// and the normalise-and-affine map with the gradients of x, γ, β, mean and var. CPU reference:
// src/ops/norm/mod.rs, src/nn/batchnorm.rs. Sums in double, one block per channel:
// deterministic.

#include "launch.cuh"
#include "math.cuh"
#include "reduce.cuh"

// ---------------------------------------------------------------------------------------------
// Batch normalisation. A tensor [N, C, S...] is N × C × S (S the product of the trailing axes);
// element (s, c, p) sits at (s·C + c)·S + p. The per-channel statistics and parameter
// gradients are one block per channel, each thread striding over that channel's N·S values,
// sums in double (batches hold 10^5+ values per channel).
// ---------------------------------------------------------------------------------------------

// mean[c] = Σ x / (N·S).
extern "C" __global__ void channel_mean(const float* x, int n, int channels, long long spatial,
                                        float* mean) {
    int c = blockIdx.x;
    if (c >= channels) return;
    long long count = (long long)n * spatial;
    double v[1] = {0.0};
    for (long long j = threadIdx.x; j < count; j += blockDim.x) {
        long long s = j / spatial, p = j % spatial;
        v[0] += (double)x[(s * channels + c) * spatial + p];
    }
    block_sum_d<1>(v);
    if (threadIdx.x == 0) mean[c] = (float)v[0] / (float)count;
}

// Biased variance about the given mean: var[c] = Σ (x − mean)² / (N·S), as the CPU's
// `channel_var` (training-mode batch norm normalises with it).
extern "C" __global__ void channel_var(const float* x, const float* mean, int n, int channels,
                                       long long spatial, float* var) {
    int c = blockIdx.x;
    if (c >= channels) return;
    long long count = (long long)n * spatial;
    float m = mean[c];
    double v[1] = {0.0};
    for (long long j = threadIdx.x; j < count; j += blockDim.x) {
        long long s = j / spatial, p = j % spatial;
        float d = x[(s * channels + c) * spatial + p] - m;
        v[0] += (double)__fmul_rn(d, d);
    }
    block_sum_d<1>(v);
    if (threadIdx.x == 0) var[c] = (float)v[0] / (float)count;
}

// The backward of mean = channel_mean(x), var = channel_var(x, mean) together, given the
// gradients g_mean and g_var of both. var depends on x directly and through mean:
//   dmean_total[c] = g_mean[c] − 2·g_var[c]·Σ(x − mean)/(N·S)    (≈ g_mean: Σ(x − mean) ≈ 0)
// (this kernel, one block per channel), then per element (`batch_stats_backward`)
//   dx = dmean_total[c]/(N·S) + 2·g_var[c]·(x − mean[c])/(N·S).
extern "C" __global__ void batch_stats_backward_mean(const float* x, const float* mean,
                                                     const float* g_mean, const float* g_var,
                                                     int n, int channels, long long spatial,
                                                     float* dmean_total) {
    int c = blockIdx.x;
    if (c >= channels) return;
    long long count = (long long)n * spatial;
    float m = mean[c];
    double v[1] = {0.0};
    for (long long j = threadIdx.x; j < count; j += blockDim.x) {
        long long s = j / spatial, p = j % spatial;
        v[0] += (double)(x[(s * channels + c) * spatial + p] - m);
    }
    block_sum_d<1>(v);
    if (threadIdx.x == 0) {
        float centred = (float)v[0];
        dmean_total[c] = g_mean[c] + -2.0f * g_var[c] * centred / (float)count;
    }
}

extern "C" __global__ void batch_stats_backward(const float* x, const float* mean,
                                                const float* dmean_total, const float* g_var,
                                                long long n, int channels, long long spatial,
                                                float* dx) {
    ELEMENT
    int c = (int)((i / spatial) % channels);
    float count = (float)(n / channels);
    float from_mean = dmean_total[c] / count;
    float from_var = __fdiv_rn(__fmul_rn(__fmul_rn(g_var[c], 2.0f), x[i] - mean[c]), count);
    dx[i] = __fadd_rn(from_var, from_mean);
}

// The per-channel map of batch norm, with p = 1/√(var + ε), scale = γ·p, shift = β − mean·scale:
//   y = x·scale + shift,
// the CPU's `BatchNorm::affine` followed by `channel_affine` (the same map interval bound
// propagation applies to the boxes). Here mean and var are inputs: training passes the batch's
// statistics (channel_mean, channel_var), evaluation the running ones.
__device__ __forceinline__ void bn_scale_shift(const float* mean, const float* var,
                                               const float* gamma, const float* beta, float eps,
                                               int c, float& p, float& scale, float& shift) {
    p = __frsqrt_rn(var[c] + eps);
    scale = __fmul_rn(gamma[c], p);
    shift = __fsub_rn(beta[c], __fmul_rn(mean[c], scale));
}

extern "C" __global__ void batch_norm_affine(const float* x, const float* mean, const float* var,
                                             const float* gamma, const float* beta, float eps,
                                             long long n, int channels, long long spatial,
                                             float* y) {
    ELEMENT
    int c = (int)((i / spatial) % channels);
    float p, scale, shift;
    bn_scale_shift(mean, var, gamma, beta, eps, c, p, scale, shift);
    y[i] = __fadd_rn(__fmul_rn(x[i], scale), shift);
}

// dx = g·scale (mean and var held fixed; their gradients are the _params kernel's).
extern "C" __global__ void batch_norm_affine_backward_input(const float* g, const float* var,
                                                            const float* gamma, float eps,
                                                            long long n, int channels,
                                                            long long spatial, float* dx) {
    ELEMENT
    int c = (int)((i / spatial) % channels);
    float scale = __fmul_rn(gamma[c], __frsqrt_rn(var[c] + eps));
    dx[i] = g[i] * scale;
}

// One block per channel. With Σg and Σg·(x − mean) over the channel:
//   dβ = Σg,  dmean = −scale·Σg,  dγ = p·Σg(x − mean),  dvar = −½·γ·p³·Σg(x − mean)
// (the chain through shift = β − mean·scale and scale = γ·p, with Σg·x − mean·Σg summed as
// Σg·(x − mean) directly, which avoids the cancellation).
extern "C" __global__ void batch_norm_affine_backward_params(
    const float* x, const float* g, const float* mean, const float* var, const float* gamma,
    float eps, int n, int channels, long long spatial, float* dgamma, float* dbeta,
    float* dmean, float* dvar) {
    int c = blockIdx.x;
    if (c >= channels) return;
    long long count = (long long)n * spatial;
    float m = mean[c];
    double v[2] = {0.0, 0.0};   // Σ g, Σ g·(x − mean)
    for (long long j = threadIdx.x; j < count; j += blockDim.x) {
        long long s = j / spatial, p = j % spatial;
        long long idx = (s * channels + c) * spatial + p;
        float gi = g[idx];
        v[0] += (double)gi;
        v[1] += (double)gi * (double)(x[idx] - m);
    }
    block_sum_d<2>(v);
    if (threadIdx.x == 0) {
        double p = (double)__frsqrt_rn(var[c] + eps);
        double gm = (double)gamma[c];
        double scale = (double)__fmul_rn(gamma[c], (float)p);
        dbeta[c] = (float)v[0];
        dmean[c] = (float)(-scale * v[0]);
        dgamma[c] = (float)(p * v[1]);
        dvar[c] = (float)(-0.5 * gm * p * p * p * v[1]);
    }
}
