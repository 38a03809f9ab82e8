// What a training step needs on the device besides the bound propagation (kernels/bounds.cu):
// element-wise ops and their gradients, softmax cross-entropy, batch-norm statistics and the
// normalise-and-affine map, the global gradient norm, the Adam update and the PGD step. CPU
// references: src/ops/{elementwise,loss,norm}.rs, src/train/optim.rs, src/attack/pgd.rs.
//
// Where the CPU computes an element-wise formula in f32 with separately rounded products and
// sums, the kernels use the explicitly rounded intrinsics (__fmul_rn, __fadd_rn, ...), which
// NVRTC never contracts into FMAs, in the CPU's order: those results are bit-identical to the
// CPU's. Reductions accumulate in double and are deterministic (fixed launch shapes, no
// atomics), so the same input always gives the same bits.

#define BLOCK 256

#include "math.cuh"
#include "reduce.cuh"

#define ELEMENT                                                         \
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;     \
    if (i >= n) return;

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

// ---------------------------------------------------------------------------------------------
// Softmax cross-entropy of [rows, classes] logits against labels, mean over rows.
//
// softmax_xent_rows: one warp per row (classes are few; lanes stride over them): the row
// maximum m, lse = m + ln Σ exp(z − m) (stable: every exponent ≤ 0) and log p_y = z_y − lse.
// softmax_xent_mean: one block, loss = −(Σ log p_y)/rows in double, as the CPU sums.
// softmax_xent_backward: one thread per logit, (exp(z − lse) − [j = y])·g/rows, from the
// saved lse. A label out of range (the wrappers refuse them) gives NaN, not a wild read.
// ---------------------------------------------------------------------------------------------

extern "C" __global__ void softmax_xent_rows(const float* z, const int* labels, int rows,
                                             int classes, float* lse, float* logp_y) {
    int row = (int)((blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;   // whole warps leave together: rows are warp-aligned
    const float* zr = z + (long long)row * classes;
    float m = __int_as_float(0xff800000);   // -inf
    for (int j = lane; j < classes; j += 32) m = fmaxf(m, zr[j]);
    m = warp_max(m);
    float sum = 0.0f;
    for (int j = lane; j < classes; j += 32) sum += expf(zr[j] - m);
    sum = warp_sum(sum);
    if (lane == 0) {
        float l = m + logf(sum);
        int y = labels[row];
        lse[row] = l;
        logp_y[row] = (y >= 0 && y < classes) ? zr[y] - l : __int_as_float(0x7fc00000);
    }
}

extern "C" __global__ void softmax_xent_mean(const float* logp_y, int rows, float* loss) {
    double v[1] = {0.0};
    for (int i = threadIdx.x; i < rows; i += blockDim.x) v[0] += (double)logp_y[i];
    block_sum_d<1>(v);
    if (threadIdx.x == 0) loss[0] = (float)(-v[0] / (double)rows);
}

// g: the loss's gradient, one value on the device.
extern "C" __global__ void softmax_xent_backward(const float* z, const float* lse,
                                                 const int* labels, const float* g, int rows,
                                                 int classes, float* dz) {
    long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (t >= (long long)rows * classes) return;
    int row = (int)(t / classes), j = (int)(t % classes);
    int y = labels[row];
    float scale = g[0] / (float)rows;
    float d = __fmul_rn(expf(z[t] - lse[row]), scale);
    if (j == y) d -= scale;
    dz[t] = (y >= 0 && y < classes) ? d : __int_as_float(0x7fc00000);
}

// The per-sample losses' gradient (attacks: the loss of each sample, −log p_y, with its own
// upstream gradient g[row]): (exp(z − lse) − [j = y])·g[row].
extern "C" __global__ void softmax_xent_rows_backward(const float* z, const float* lse,
                                                      const int* labels, const float* g,
                                                      int rows, int classes, float* dz) {
    long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (t >= (long long)rows * classes) return;
    int row = (int)(t / classes), j = (int)(t % classes);
    int y = labels[row];
    float p = expf(z[t] - lse[row]);
    float d = __fmul_rn(g[row], p - (j == y ? 1.0f : 0.0f));
    dz[t] = (y >= 0 && y < classes) ? d : __int_as_float(0x7fc00000);
}

// Log-softmax of each row of [rows, classes] (one warp per row): z − lse with lse = m + ln Σ
// exp(z − m), as softmax_xent_rows; and its backward from the saved output y = log p,
// dz = g − exp(y)·Σ g (the product rounded before the difference, as the CPU).
extern "C" __global__ void log_softmax_rows(const float* z, int rows, int classes, float* y) {
    int row = (int)((blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;   // whole warps leave together: rows are warp-aligned
    const float* zr = z + (long long)row * classes;
    float m = NEG_INF;
    for (int j = lane; j < classes; j += 32) m = fmaxf(m, zr[j]);
    m = warp_max(m);
    float sum = 0.0f;
    for (int j = lane; j < classes; j += 32) sum += expf(zr[j] - m);
    float lse = m + logf(warp_sum(sum));
    for (int j = lane; j < classes; j += 32) y[(long long)row * classes + j] = zr[j] - lse;
}

extern "C" __global__ void log_softmax_rows_backward(const float* g, const float* y, int rows,
                                                     int classes, float* dz) {
    int row = (int)((blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    long long at = (long long)row * classes;
    float total = 0.0f;
    for (int j = lane; j < classes; j += 32) total += g[at + j];
    total = warp_sum(total);
    for (int j = lane; j < classes; j += 32)
        dz[at + j] = __fsub_rn(g[at + j], __fmul_rn(expf(y[at + j]), total));
}

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

// ---------------------------------------------------------------------------------------------
// Adam, one fused pass over (w, g, m, v), exactly the CPU's update (src/train/optim.rs):
//   g' = g·grad_scale + l2·w                  (grad_scale: global-norm clipping, else 1)
//   m ← β1·m + (1 − β1)·g',  v ← β2·v + (1 − β2)·g'·g'
//   w ← w·shrink − step_size·m / (√v / bias2_sqrt + ε)
// with step_size = lr/(1 − β1^t), bias2_sqrt = √(1 − β2^t) and (l2, shrink) = (wd, 1) for
// L2 decay (PyTorch Adam) or (0, 1 − lr·wd) for decoupled decay (AdamW), all computed on the
// host as the CPU computes them. Every operation is rounded separately in the CPU's order.
// ---------------------------------------------------------------------------------------------

extern "C" __global__ void adam_step(float* w, const float* g, float* m, float* v, long long n,
                                     float grad_scale, float l2, float shrink, float beta1,
                                     float one_minus_beta1, float beta2, float one_minus_beta2,
                                     float step_size, float bias2_sqrt, float eps) {
    ELEMENT
    float wi = w[i];
    float gi = __fadd_rn(__fmul_rn(g[i], grad_scale), __fmul_rn(l2, wi));
    float mi = __fadd_rn(__fmul_rn(beta1, m[i]), __fmul_rn(one_minus_beta1, gi));
    float vi = __fadd_rn(__fmul_rn(beta2, v[i]), __fmul_rn(__fmul_rn(one_minus_beta2, gi), gi));
    float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bias2_sqrt), eps);
    m[i] = mi;
    v[i] = vi;
    w[i] = __fsub_rn(__fmul_rn(wi, shrink), __fdiv_rn(__fmul_rn(step_size, mi), denom));
}

// ---------------------------------------------------------------------------------------------
// PGD: x ← min(max(x + step·sign(g), lo), hi) per element, in place. A zero or NaN gradient
// entry adds nothing (the CPU's `Region::step`).
// ---------------------------------------------------------------------------------------------

extern "C" __global__ void pgd_step(float* x, const float* g, const float* lo, const float* hi,
                                    float step, long long n) {
    ELEMENT
    float gi = g[i];
    float s = gi > 0.0f ? step : (gi < 0.0f ? -step : 0.0f);
    x[i] = fminf(fmaxf(x[i] + s, lo[i]), hi[i]);
}

// PGD's best points: for each sample i (one block each), pred = the first index of the row's
// maximum logit (the CPU's argmax: a NaN never wins); fooled[i] = 1 once pred ≠ label. When
// `keep` and loss[i] > best_loss[i] (false for NaN), best_loss[i] = loss[i] and the sample's row
// of x (row_len values) is copied to best_x. fooled holds 0 or 1 as floats.
extern "C" __global__ void pgd_keep_best(const float* __restrict__ x,
                                         const float* __restrict__ logits,
                                         const float* __restrict__ loss,
                                         const int* __restrict__ labels, int classes,
                                         long long row_len, int keep,
                                         float* __restrict__ best_x,
                                         float* __restrict__ best_loss,
                                         float* __restrict__ fooled) {
    __shared__ int better;
    const int i = blockIdx.x;
    if (threadIdx.x == 0) {
        const float* row = logits + (long long)i * classes;
        int pred = 0;
        for (int c = 1; c < classes; ++c)
            if (row[c] > row[pred]) pred = c;
        if (pred != labels[i]) fooled[i] = 1.0f;
        better = keep && loss[i] > best_loss[i];
        if (better) best_loss[i] = loss[i];
    }
    __syncthreads();
    if (!better) return;
    const long long base = (long long)i * row_len;
    for (long long j = threadIdx.x; j < row_len; j += blockDim.x) best_x[base + j] = x[base + j];
}

// ---------------------------------------------------------------------------------------------
// The margin attack loss max_{j≠y} z_j − z_y per row (src/attack/loss.rs `margin_loss`), one
// thread per row (a few classes). As on the CPU, the label's entry is z_y + (−∞) among the
// others, the maximum ignores NaN (f32::max), z_y is the row times its one-hot label (NaN if any
// logit is), and the gradient of the maximum is split evenly among the entries equal to it
// (g / count each); the label then gets −g.
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ float margin_other(const float* row, int j, int y) {
    return j == y ? __fadd_rn(row[j], NEG_INF) : row[j];
}

__device__ __forceinline__ float margin_max(const float* row, int y, int classes) {
    float m = NEG_INF;
    for (int j = 0; j < classes; ++j) m = fmaxf(m, margin_other(row, j, y));
    return m;
}

extern "C" __global__ void margin_rows(const float* __restrict__ logits,
                                       const int* __restrict__ labels, int rows, int classes,
                                       float* __restrict__ loss) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows) return;
    const float* row = logits + (long long)i * classes;
    const int y = labels[i];
    // z_y as the CPU forms it, Σ_j z_j·[j = y] from 0 in order: a NaN anywhere in the row
    // makes it NaN.
    float true_logit = 0.0f;
    for (int j = 0; j < classes; ++j)
        true_logit = __fadd_rn(true_logit, __fmul_rn(row[j], j == y ? 1.0f : 0.0f));
    loss[i] = __fsub_rn(margin_max(row, y, classes), true_logit);
}

extern "C" __global__ void margin_rows_backward(const float* __restrict__ logits,
                                                const int* __restrict__ labels,
                                                const float* __restrict__ g, int rows,
                                                int classes, float* __restrict__ dlogits) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows) return;
    const float* row = logits + (long long)i * classes;
    float* d = dlogits + (long long)i * classes;
    const int y = labels[i];
    const float m = margin_max(row, y, classes);
    float count = 0.0f;
    for (int j = 0; j < classes; ++j) count += margin_other(row, j, y) == m ? 1.0f : 0.0f;
    const float share = __fdiv_rn(g[i], count);
    for (int j = 0; j < classes; ++j) {
        const float hit = margin_other(row, j, y) == m ? share : 0.0f;
        // The true logit's path: −g at the label, −g·0 elsewhere (a signed zero, as on the CPU).
        d[j] = __fadd_rn(hit, __fmul_rn(-g[i], j == y ? 1.0f : 0.0f));
    }
}
