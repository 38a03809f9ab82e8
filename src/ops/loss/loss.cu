// Losses on [rows, classes] logits: softmax cross-entropy (mean and per row) with its gradient,
// log-softmax with its backward, and the margin attack loss. CPU references:
// src/ops/loss/mod.rs, src/attack/loss.rs.
//
// Reductions accumulate in double and are deterministic; element-wise formulas are rounded in
// the CPU's order (explicitly rounded intrinsics, never contracted into FMAs).

#include "launch.cuh"
#include "math.cuh"
#include "reduce.cuh"

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
