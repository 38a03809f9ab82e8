// The PGD attack's per-step work: the signed, projected step and the best points kept per
// sample. CPU reference: src/attack/pgd/mod.rs.

#include "launch.cuh"
#include "math.cuh"
#include "reduce.cuh"

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
