// The Adam update, one fused pass over (w, g, m, v), exactly the CPU's update
// (src/train/optim/mod.rs), every operation rounded separately in the CPU's order.

#include "launch.cuh"
#include "math.cuh"
#include "reduce.cuh"

// ---------------------------------------------------------------------------------------------
// Adam, one fused pass over (w, g, m, v), exactly the CPU's update (src/train/optim/mod.rs):
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
