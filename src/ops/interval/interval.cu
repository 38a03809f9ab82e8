// Interval bound propagation on a batch of boxes (docs/design.md, "Bounds"), forward and
// backward, matching the CPU reference (src/ops/interval/mod.rs, src/bounds/ibp.rs).
//
// A batch of N boxes is one stacked buffer [2, N, ...]: the N centres c first, then the N radii
// r ≥ 0 (the CPU's interval tensor). Each layer reads and writes both halves in one launch, so
// that the centre and radius of a value are computed from the same loads. Every kernel takes
// its sizes explicitly: device buffers may be longer than their contents.
//
// Affine maps send (c, r) to (W c + b, |W| r), the tightest box around the image of the box;
// ReLU sends [c − r, c + r] to [relu(c − r), relu(c + r)]. The last linear layer is merged
// with the specification z_y − z_j ("last-layer elision", `elided_margins`).

#define BLOCK 256

#include "math.cuh"
#include "reduce.cuh"

// ---------------------------------------------------------------------------------------------
// interval_linear: one tiled GEMM that computes two products at once.
//
// C1 = A1·B1 and C2 = A2·B2, (M × K)·(K × N), with element (m, k) of A at a[m·sam + k·sak] and
// (k, n) of B at b[k·sbk + n·sbn], so that one kernel serves the forward and both backward
// products without transposed copies:
//   forward:        A1 = c, A2 = r (N × In), B1 = Wᵀ, B2 = |W|ᵀ    -> centre', radius'
//   d input:        A1 = gc, A2 = gr (N × Out), B1 = W, B2 = |W|   -> dc, dr
//   d weight:       A1 = gcᵀ, A2 = grᵀ (Out × N), B1 = c, B2 = r   -> gcᵀc + sign(W)⊙(grᵀr)
// In the first two B2 is never loaded: |W| is taken on the fly from the W tile in shared
// memory, so each c/r tile and each W tile is read from global memory once per block.
//
// A block computes a TM × TN tile of both outputs with 16 × 16 threads, each thread a 4 × 4
// micro-tile of each (rows ty + 16i, columns tx + 16j: reads of a shared row by a warp are
// either broadcasts or 16 consecutive words, so free of bank conflicts). Tiles are stored
// k-major with one word of padding so that the transposing stores conflict at most 2-way.
// ---------------------------------------------------------------------------------------------

#define TM 64
#define TN 64
#define TK 16

enum { LINEAR_FORWARD = 0, LINEAR_BACKWARD_INPUT = 1, LINEAR_BACKWARD_WEIGHT = 2 };

// Load the TM × TK tile of A at (m0, k0) into s[k][m], zero outside M × K. Consecutive threads
// walk the operand's contiguous axis (k when sak == 1, else m), so global reads coalesce.
__device__ __forceinline__ void load_a_tile(float (*s)[TM + 1], const float* a, long long sam,
                                            long long sak, int M, int K, int m0, int k0) {
    for (int p = 0; p < (TM * TK) / BLOCK; ++p) {
        int e = threadIdx.x + p * BLOCK;
        int row, col;
        if (sak == 1) { row = e / TK; col = e % TK; }
        else { row = e % TM; col = e / TM; }
        int m = m0 + row, k = k0 + col;
        s[col][row] = (m < M && k < K) ? a[m * sam + k * sak] : 0.0f;
    }
}

// Load the TK × TN tile of B at (k0, n0) into s[k][n], zero outside K × N.
__device__ __forceinline__ void load_b_tile(float (*s)[TN + 1], const float* b, long long sbk,
                                            long long sbn, int K, int N, int k0, int n0) {
    for (int p = 0; p < (TK * TN) / BLOCK; ++p) {
        int e = threadIdx.x + p * BLOCK;
        int row, col;
        if (sbn == 1) { row = e / TN; col = e % TN; }
        else { row = e % TK; col = e / TK; }
        int k = k0 + row, n = n0 + col;
        s[row][col] = (k < K && n < N) ? b[k * sbk + n * sbn] : 0.0f;
    }
}

template <int MODE>
__device__ __forceinline__ void dual_gemm(const float* a1, const float* a2, long long sam,
                                          long long sak, const float* b1, const float* b2,
                                          long long sbk, long long sbn, int M, int N, int K,
                                          const float* bias, int has_bias, const float* w,
                                          float* out1, float* out2) {
    __shared__ float As1[TK][TM + 1];
    __shared__ float As2[TK][TM + 1];
    __shared__ float Bs1[TK][TN + 1];
    // The second B operand exists only for the weight gradient (r); elsewhere it is |B1|.
    __shared__ float Bs2[MODE == LINEAR_BACKWARD_WEIGHT ? TK : 1][TN + 1];

    int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    int m0 = blockIdx.y * TM, n0 = blockIdx.x * TN;
    float acc1[4][4], acc2[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) { acc1[i][j] = 0.0f; acc2[i][j] = 0.0f; }

    for (int k0 = 0; k0 < K; k0 += TK) {
        load_a_tile(As1, a1, sam, sak, M, K, m0, k0);
        load_a_tile(As2, a2, sam, sak, M, K, m0, k0);
        load_b_tile(Bs1, b1, sbk, sbn, K, N, k0, n0);
        if (MODE == LINEAR_BACKWARD_WEIGHT) load_b_tile(Bs2, b2, sbk, sbn, K, N, k0, n0);
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TK; ++kk) {
            float x1[4], x2[4], y1[4], y2[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                x1[i] = As1[kk][ty + 16 * i];
                x2[i] = As2[kk][ty + 16 * i];
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                y1[j] = Bs1[kk][tx + 16 * j];
                y2[j] = MODE == LINEAR_BACKWARD_WEIGHT ? Bs2[kk][tx + 16 * j] : fabsf(y1[j]);
            }
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    acc1[i][j] += x1[i] * y1[j];
                    acc2[i][j] += x2[i] * y2[j];
                }
        }
        __syncthreads();
    }

    for (int i = 0; i < 4; ++i) {
        int m = m0 + ty + 16 * i;
        if (m >= M) continue;
        for (int j = 0; j < 4; ++j) {
            int n = n0 + tx + 16 * j;
            if (n >= N) continue;
            long long o = (long long)m * N + n;
            if (MODE == LINEAR_FORWARD) {
                out1[o] = has_bias ? acc1[i][j] + bias[n] : acc1[i][j];
                out2[o] = acc2[i][j];
            } else if (MODE == LINEAR_BACKWARD_INPUT) {
                out1[o] = acc1[i][j];
                out2[o] = acc2[i][j];
            } else {
                // The radius path sees |W|: its gradient enters W through sign(W).
                out1[o] = acc1[i][j] + acc2[i][j] * sign_f(w[o]);
            }
        }
    }
}

// x: boxes [2, n, in]; w: [out, in]; bias: [out] when has_bias (else any pointer).
// y: [2, n, out] = (c·Wᵀ + b, r·|W|ᵀ). Grid (⌈out/64⌉, ⌈n/64⌉), 256 threads.
extern "C" __global__ void __launch_bounds__(BLOCK)
interval_linear(const float* x, const float* w, const float* bias, int has_bias, int n, int in,
                int out, float* y) {
    long long half_in = (long long)n * in, half_out = (long long)n * out;
    dual_gemm<LINEAR_FORWARD>(x, x + half_in, in, 1, w, w, 1, in, n, out, in, bias, has_bias, w,
                              y, y + half_out);
}

// g: output gradient [2, n, out]; dx: [2, n, in] = (gc·W, gr·|W|).
// Grid (⌈in/64⌉, ⌈n/64⌉), 256 threads.
extern "C" __global__ void __launch_bounds__(BLOCK)
interval_linear_backward_input(const float* g, const float* w, int n, int in, int out,
                               float* dx) {
    long long half_in = (long long)n * in, half_out = (long long)n * out;
    dual_gemm<LINEAR_BACKWARD_INPUT>(g, g + half_out, out, 1, w, w, in, 1, n, in, out, w, 0, w,
                                     dx, dx + half_in);
}

// dw: [out, in] = gcᵀ·c + sign(W) ⊙ (grᵀ·r). Grid (⌈in/64⌉, ⌈out/64⌉), 256 threads.
extern "C" __global__ void __launch_bounds__(BLOCK)
interval_linear_backward_weight(const float* g, const float* x, const float* w, int n, int in,
                                int out, float* dw) {
    long long half_in = (long long)n * in, half_out = (long long)n * out;
    dual_gemm<LINEAR_BACKWARD_WEIGHT>(g, g + half_out, 1, out, x, x + half_in, in, 1, out, in, n,
                                      w, 0, w, dw, dw);
}

// db[o] = Σ_s gc[s, o] (the radius half carries no bias). One thread per output feature:
// consecutive threads read consecutive columns of a row.
extern "C" __global__ void interval_linear_backward_bias(const float* g, int n, int out,
                                                         float* db) {
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= out) return;
    float acc = 0.0f;
    for (int s = 0; s < n; ++s) acc += g[(long long)s * out + o];
    db[o] = acc;
}

// ---------------------------------------------------------------------------------------------
// sabr_box: SABR's small box around an adversarial point, as an enclosing centre/radius box.
// ---------------------------------------------------------------------------------------------

// Rust's f32::clamp: a NaN stays NaN.
__device__ __forceinline__ float clamp_keep_nan(float v, float lo, float hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

// For each of the n values: the clipped ε-box [lo, hi] = clamp(x ∓ eps, 0, 1) around x, the
// centre c = min(max(adv, lo + tau), hi − tau), the corners (max(c − tau, lo), min(c + tau, hi)),
// and the box enclosing them: y[i] = (l + h)/2, y[n + i] = the smallest radius r ≥ (h − l)/2
// with c − r ≤ l and c + r ≥ h in f32 (src/train/losses.rs `sabr_box` and
// src/bounds/ibp.rs `enclosing_box`, operation for operation).
extern "C" __global__ void sabr_box(const float* x, const float* adv, float eps, float tau,
                                    long long n, float* y) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float v = x[i];
    const float lo = clamp_keep_nan(__fsub_rn(v, eps), 0.0f, 1.0f);
    const float hi = clamp_keep_nan(__fadd_rn(v, eps), 0.0f, 1.0f);
    const float c0 = fminf(fmaxf(adv[i], __fadd_rn(lo, tau)), __fsub_rn(hi, tau));
    const float l = fmaxf(__fsub_rn(c0, tau), lo);
    const float h = fminf(__fadd_rn(c0, tau), hi);
    const float c = __fmul_rn(0.5f, __fadd_rn(l, h));
    float r = __fmul_rn(0.5f, __fsub_rn(h, l));
    while (__fsub_rn(c, r) > l || __fadd_rn(c, r) < h) r = nextafterf(r, POS_INF);
    y[i] = c;
    y[n + i] = r;
}

// ---------------------------------------------------------------------------------------------
// interval_relu: element-wise on the half length `half` = N·(features).
// ---------------------------------------------------------------------------------------------

extern "C" __global__ void interval_relu(const float* x, long long half, float* y) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= half) return;
    float c = x[i], r = x[half + i];
    float lo = fmaxf(c - r, 0.0f);
    float hi = fmaxf(c + r, 0.0f);
    y[i] = 0.5f * (hi + lo);
    y[half + i] = 0.5f * (hi - lo);
}

// With a, b whether the upper and the lower end are active: dc = gc·(a+b)/2 + gr·(a−b)/2,
// dr = gc·(a−b)/2 + gr·(a+b)/2 (the CPU's backward; the subgradient at 0 is 0).
extern "C" __global__ void interval_relu_backward(const float* x, const float* g, long long half,
                                                  float* dx) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= half) return;
    float c = x[i], r = x[half + i];
    float gc = g[i], gr = g[half + i];
    float a = c + r > 0.0f ? 1.0f : 0.0f;
    float b = c - r > 0.0f ? 1.0f : 0.0f;
    float sum = 0.5f * (a + b), diff = 0.5f * (a - b);
    dx[i] = __fadd_rn(__fmul_rn(gc, sum), __fmul_rn(gr, diff));
    dx[half + i] = __fadd_rn(__fmul_rn(gc, diff), __fmul_rn(gr, sum));
}

// ---------------------------------------------------------------------------------------------
// interval_channel_affine: per-channel y = a·x + b on boxes [2, N, C, S...] (batch norm, input
// normalisation); centres get the map, radii |a|. The channel of element i (of either half) is
// (i / spatial) % C. Products and sums are rounded separately (no FMA contraction), as the CPU
// computes them, so forward and input gradient agree with it exactly.
// ---------------------------------------------------------------------------------------------

extern "C" __global__ void interval_channel_affine(const float* x, const float* scale,
                                                   const float* shift, long long half, int channels,
                                                   long long spatial, float* y) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= 2 * half) return;
    int k = (int)((i / spatial) % channels);
    float v = x[i];
    y[i] = i >= half ? __fmul_rn(v, fabsf(scale[k])) : __fadd_rn(__fmul_rn(v, scale[k]), shift[k]);
}

extern "C" __global__ void interval_channel_affine_backward_input(const float* g,
                                                                  const float* scale,
                                                                  long long half, int channels,
                                                                  long long spatial, float* dx) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= 2 * half) return;
    int k = (int)((i / spatial) % channels);
    dx[i] = g[i] * (i >= half ? fabsf(scale[k]) : scale[k]);
}

// One block per channel k: dscale[k] = Σ gc·c + sign(a_k)·Σ gr·r, dshift[k] = Σ gc, the sums
// over the N samples and the spatial positions of channel k (in double).
extern "C" __global__ void interval_channel_affine_backward_params(const float* x, const float* g,
                                                                   const float* scale, int n,
                                                                   int channels, long long spatial,
                                                                   float* dscale, float* dshift) {
    int k = blockIdx.x;
    if (k >= channels) return;
    long long half = (long long)n * channels * spatial;
    long long per_channel = (long long)n * spatial;
    double v[3] = {0.0, 0.0, 0.0};   // Σ gc·c, Σ gr·r, Σ gc
    for (long long j = threadIdx.x; j < per_channel; j += blockDim.x) {
        long long s = j / spatial, p = j % spatial;
        long long idx = (s * channels + k) * spatial + p;
        float gc = g[idx], gr = g[half + idx];
        v[0] += (double)(gc * x[idx]);
        v[1] += (double)(gr * x[half + idx]);
        v[2] += (double)gc;
    }
    block_sum_d<3>(v);
    if (threadIdx.x == 0) {
        dscale[k] = (float)(v[0] + (double)sign_f(scale[k]) * v[1]);
        dshift[k] = (float)v[2];
    }
}

// ---------------------------------------------------------------------------------------------
// elided_margins: last-layer elision. For sample s with label y and class j,
//   lb[s, j] = (W_y − W_j)·c_s + (b_y − b_j) − |W_y − W_j|·r_s,    lb[s, y] = 0,
// the lower bound of z_y − z_j over the box (the CPU's `margin_lower_bounds`). The difference
// rows W_y − W_j are formed on the fly (rounded as the CPU rounds them) and never stored.
// A label outside [0, classes) (the wrappers refuse them) yields NaN rather than a wild read.
// ---------------------------------------------------------------------------------------------

// x: hidden boxes [2, n, in]; w: [classes, in]; lb: [n, classes]. One block per sample, one
// warp per class at a time; lanes stride over the features (coalesced rows of W, c and r).
extern "C" __global__ void elided_margins(const float* x, const float* w, const float* bias,
                                          int has_bias, const int* labels, int n, int in,
                                          int classes, float* lb) {
    int s = blockIdx.x;
    if (s >= n) return;
    int y = labels[s];
    bool bad = y < 0 || y >= classes;
    const float* c = x + (long long)s * in;
    const float* r = x + (long long)n * in + (long long)s * in;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int j = warp; j < classes; j += warps) {
        float out;
        if (bad) {
            out = __int_as_float(0x7fc00000);
        } else if (j == y) {
            out = 0.0f;
        } else {
            const float* wy = w + (long long)y * in;
            const float* wj = w + (long long)j * in;
            float sc = 0.0f, sr = 0.0f;
            for (int i = lane; i < in; i += 32) {
                float d = wy[i] - wj[i];
                sc += d * c[i];
                sr += fabsf(d) * r[i];
            }
            sc = warp_sum(sc);
            sr = warp_sum(sr);
            float db = has_bias ? bias[y] - bias[j] : 0.0f;
            out = (sc + db) - sr;
        }
        if (lane == 0) lb[(long long)s * classes + j] = out;
    }
}

// dx: [2, n, in]: dc[s, i] = Σ_j g[s, j]·(W_y − W_j)_i, dr[s, i] = −Σ_j g[s, j]·|W_y − W_j|_i.
// One thread per (s, i).
extern "C" __global__ void elided_margins_backward_input(const float* g, const float* w,
                                                         const int* labels, int n, int in,
                                                         int classes, float* dx) {
    long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    long long half = (long long)n * in;
    if (t >= half) return;
    int s = (int)(t / in), i = (int)(t % in);
    int y = labels[s];
    float dc = 0.0f, dr = 0.0f;
    if (y < 0 || y >= classes) {
        dc = dr = __int_as_float(0x7fc00000);
    } else {
        float wy = w[(long long)y * in + i];
        const float* gs = g + (long long)s * classes;
        for (int j = 0; j < classes; ++j) {
            if (j == y) continue;   // a zero row of the specification
            float d = wy - w[(long long)j * in + i];
            dc += gs[j] * d;
            dr -= gs[j] * fabsf(d);
        }
    }
    dx[t] = dc;
    dx[half + t] = dr;
}

// dw: [classes, in] and db: [classes]. With D = W_y − W_j (y = label of s), ∂lb[s, j]/∂D_i =
// c_si − sign(D_i)·r_si and ∂lb[s, j]/∂(b_y − b_j) = 1; D enters W_y with + and W_j with −:
//   dW[k, i] = Σ_s ( [k = y_s]·Σ_{j≠y_s} g[s, j]·(c_si − sign(D_ji) r_si)
//                   − [k ≠ y_s]·g[s, k]·(c_si − sign(D_ki) r_si) ).
// One thread per (k, i) with i ∈ [0, in]; column i = in is the bias (c = 1, r = 0). Threads of
// a warp share k, so the k = y_s branch is (nearly) uniform; rows of c and r coalesce over i.
extern "C" __global__ void elided_margins_backward_params(const float* g, const float* x,
                                                          const float* w, const int* labels,
                                                          int n, int in, int classes, float* dw,
                                                          float* db) {
    long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    long long cols = (long long)in + 1;
    if (t >= (long long)classes * cols) return;
    int k = (int)(t / cols), i = (int)(t % cols);
    bool is_bias = i == in;
    const float* c = x;
    const float* r = x + (long long)n * in;
    float wk = is_bias ? 0.0f : w[(long long)k * in + i];
    float acc = 0.0f;
    for (int s = 0; s < n; ++s) {
        int y = labels[s];
        if (y < 0 || y >= classes) { acc = __int_as_float(0x7fc00000); break; }
        float cv = is_bias ? 1.0f : c[(long long)s * in + i];
        float rv = is_bias ? 0.0f : r[(long long)s * in + i];
        float wy = is_bias ? 0.0f : w[(long long)y * in + i];
        const float* gs = g + (long long)s * classes;
        if (k != y) {
            acc -= gs[k] * (cv - sign_f(wy - wk) * rv);
        } else {
            for (int j = 0; j < classes; ++j) {
                if (j == y) continue;
                float wj = is_bias ? 0.0f : w[(long long)j * in + i];
                acc += gs[j] * (cv - sign_f(wy - wj) * rv);
            }
        }
    }
    if (is_bias) db[k] = acc;
    else dw[(long long)k * in + i] = acc;
}
