// 2-D convolution (NCHW, f32; weight [O, C, KH, KW]; symmetric zero padding, any stride) as
// implicit GEMM: the im2col matrix is never stored. Every kernel is one tiled GEMM whose
// operand loaders gather their 64 × 16 tiles straight from the tensors, with zeros for
// padding and for anything past the edges, so any size works. The CPU reference is
// src/ops/conv/cpu.rs (im2col + GEMM) and src/ops/interval/mod.rs (centre/radius form).
//
// Notation: P = N·OH·OW output pixels, KK = C·KH·KW taps, p = (n, oy, ox), kk = (c, ky, kx).
//
//   conv2d_fwd            Y[o, p]   = Σ_kk W[o, kk] · X(kk, p) (+ b[o])       M=O  N=P   K=KK
//   interval_conv2d_fwd   the same for centres (W, b) and radii (|W|) at once
//   conv2d_bwd_weight     dW[o, kk] = Σ_p gY[o, p] · X(kk, p)                 M=O  N=KK  K=P
//   interval_..._weight   Σ gC·cols(c) + sign(W) ⊙ Σ gR·cols(r)
//   conv2d_bwd_input      dX[c, q]  = Σ_(o,ky,kx) W[o, c, ky, kx] · gY(...)    M=C  N=N·H·W
//   interval_..._input    dC with W and dR with |W| at once
//   (bias gradients: channel_sum, in reduce.cu)
//   (the split-K partials of the weight gradients are added by sum_splits, in matmul.cu)
//
// Tiling: tile_gemm.cuh (shared with matmul.cu): a block of 256 threads computes
// a 64 × 64, 128 × 64, 64 × 128 or 128 × 128 tile of the output, each thread 1, 2 or 4 register
// micro-tiles of 4 × 4, stepping through K 16 at a time with double-buffered shared tiles; this
// file supplies the operand loaders and epilogues, and an entry point per tile shape.
//
// Gathering: each loader keeps, per staged element, its position as mixed-radix digits, e.g.
// (c, ky, kx) for a tap or (n, oy, ox) for a pixel, and advances them by 16 with two compares
// instead of two integer divisions per element per K-step. Threads are laid out along the
// dimension that is contiguous in memory (output pixels, i.e. ox), so loads coalesce.
//
// The interval kernels share one A tile between centres and radii (|W| is taken on the fly
// from the same shared tile) and read c and r with the same gathered indices: one kernel, one
// pass over the weights, twice the FMAs per load.
//
// The input gradient is a gather, not a scatter: for stride s the input pixels split into
// s_h·s_w phases (iy mod s_h, ix mod s_w); in a phase exactly the taps ky ≡ (iy + ph) mod s_h
// (and likewise kx) reach an output pixel, at oy = (iy + ph − ky) / s_h exactly. Each phase is
// a dense implicit GEMM (blockIdx.z = phase) with no structural zeros in K, every dX element is
// written once (no atomics, no zero fill, deterministic), and taps that miss every phase
// (kernel smaller than the stride) give exact zeros.
//
// Indices are 32-bit: the Rust wrappers (src/ops/conv/launch.rs) refuse tensors of 2^31
// elements or more.

#include "tile_gemm.cuh"

// The geometry, passed by value (src/ops/conv/launch.rs: `Dims`, #[repr(C)], 13 × i32).
struct ConvShape {
    int n, c, h, w;   // input [n, c, h, w]
    int o, kh, kw;    // weight [o, c, kh, kw]
    int sh, sw;       // stride
    int ph, pw;       // padding, both sides
    int oh, ow;       // output size
};

// ---------------------------------------------------------------------------------------------
// Mixed-radix counters
// ---------------------------------------------------------------------------------------------

// (hi, mid, lo) with mid < r1 and lo < r0.
struct Digits {
    int hi, mid, lo;
};

__device__ __forceinline__ Digits split3(int v, int r1, int r0) {
    Digits d;
    const int per = r1 * r0;
    d.hi = v / per;
    const int rem = v - d.hi * per;
    d.mid = rem / r0;
    d.lo = rem - d.mid * r0;
    return d;
}

// d += s, where s = split3(step, r1, r0): each digit of s is below its radix, so one carry per
// digit is enough.
__device__ __forceinline__ void advance3(Digits& d, const Digits& s, int r1, int r0) {
    d.lo += s.lo;
    d.mid += s.mid;
    d.hi += s.hi;
    if (d.lo >= r0) { d.lo -= r0; d.mid += 1; }
    if (d.mid >= r1) { d.mid -= r1; d.hi += 1; }
}

__device__ __forceinline__ bool in_range(int v, int n) { return (unsigned)v < (unsigned)n; }

// ---------------------------------------------------------------------------------------------
// Operand loaders (W: the staged tile's extent along the operand's m or n, see tile_gemm.cuh)
// ---------------------------------------------------------------------------------------------

// A(m, k) = src[m·ld + k], m < rows, k < kdim: the weight [O, KK] of the forward. K-minor.
template <int W>
struct WeightRows {
    const float* src;
    int row[W / 16];   // m·ld, or −1 past the last row
    int k, kdim;

    __device__ WeightRows(const float* s, int rows, int ld, int m0, int kdim_)
        : src(s), k(kminor_k()), kdim(kdim_) {
#pragma unroll
        for (int i = 0; i < W / 16; ++i) {
            const int m = m0 + kminor_mn(i);
            row[i] = m < rows ? m * ld : -1;
        }
    }
    __device__ __forceinline__ void fetch(float (&r)[1][W / 16]) {
#pragma unroll
        for (int i = 0; i < W / 16; ++i)
            r[0][i] = (k < kdim && row[i] >= 0) ? __ldg(src + row[i] + k) : 0.0f;
        k += BK;
    }
    __device__ __forceinline__ void put(const float (&r)[1][W / 16],
                                        float (&t)[1][BK][PITCH(W)]) const {
        put_kminor<1, W>(r, t);
    }
};

// B(kk, p) = X[n, c, oy·sh − ph + ky, ox·sw − pw + kx] (0 in the padding): the im2col matrix
// of the forward, for CNT inputs read at the same indices (centres and radii). K-major: the
// thread's output pixels p0 + 64·s are fixed, their 4 taps (shared) advance by 16.
template <int CNT, int W>
struct ColsByPixel {
    const float* src[CNT];
    int base[W / 64];         // n·C·H·W of the pixel's sample, or −1 past the last pixel
    int iy0[W / 64], ix0[W / 64];  // input position of tap (0, 0); may be negative
    int c, h, w, kh, kw;
    Digits tap[4];       // (c, ky, kx)
    Digits step;

    __device__ ColsByPixel(const float* s0, const float* s1, const ConvShape& g, int p0)
        : c(g.c), h(g.h), w(g.w), kh(g.kh), kw(g.kw) {
        src[0] = s0;
        if (CNT > 1) src[CNT - 1] = s1;
        const int npix = g.n * g.oh * g.ow;
#pragma unroll
        for (int s = 0; s < W / 64; ++s) {
            const int p = p0 + 64 * s;
            if (p < npix) {
                const Digits d = split3(p, g.oh, g.ow);
                base[s] = d.hi * g.c * g.h * g.w;
                iy0[s] = d.mid * g.sh - g.ph;
                ix0[s] = d.lo * g.sw - g.pw;
            } else {
                base[s] = -1;
                iy0[s] = ix0[s] = 0;
            }
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) tap[i] = split3(kmajor_k(i), kh, kw);
        step = split3(BK, kh, kw);
    }
    __device__ __forceinline__ void fetch(float (&r)[CNT][W / 16]) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int s = 0; s < W / 64; ++s) {
                const int iy = iy0[s] + tap[i].mid, ix = ix0[s] + tap[i].lo;
                const bool ok =
                    base[s] >= 0 && tap[i].hi < c && in_range(iy, h) && in_range(ix, w);
                const int at = base[s] + (tap[i].hi * h + iy) * w + ix;
#pragma unroll
                for (int q = 0; q < CNT; ++q) r[q][4 * s + i] = ok ? __ldg(src[q] + at) : 0.0f;
            }
            advance3(tap[i], step, kh, kw);
        }
    }
    __device__ __forceinline__ void put(const float (&r)[CNT][W / 16],
                                        float (&t)[CNT][BK][PITCH(W)]) const {
        put_kmajor<CNT, W>(r, t);
    }
};

// A(o, p) = gY[n, o, oy, ox] for p in [kbeg, kend): the output gradient as the M × K operand
// of the weight gradient. K-minor (a half warp reads 16 consecutive pixels of one channel).
template <int CNT, int W>
struct OutGradRows {
    const float* src[CNT];
    int row[W / 16];   // o·OH·OW, or −1 past the last channel
    int p, kend;
    int ohw, plane;   // OH·OW, O·OH·OW
    Digits pos;       // (n, 0, pixel)
    Digits step;

    __device__ OutGradRows(const float* s0, const float* s1, const ConvShape& g, int m0,
                           int kbeg, int kend_)
        : kend(kend_) {
        src[0] = s0;
        if (CNT > 1) src[CNT - 1] = s1;
        ohw = g.oh * g.ow;
        plane = g.o * ohw;
#pragma unroll
        for (int i = 0; i < W / 16; ++i) {
            const int o = m0 + kminor_mn(i);
            row[i] = o < g.o ? o * ohw : -1;
        }
        p = kbeg + kminor_k();
        pos = split3(p, 1, ohw);
        step = split3(BK, 1, ohw);
    }
    __device__ __forceinline__ void fetch(float (&r)[CNT][W / 16]) {
        const bool kin = p < kend;
        const int at = pos.hi * plane + pos.lo;
#pragma unroll
        for (int i = 0; i < W / 16; ++i)
#pragma unroll
            for (int q = 0; q < CNT; ++q)
                r[q][i] = (kin && row[i] >= 0) ? __ldg(src[q] + at + row[i]) : 0.0f;
        p += BK;
        advance3(pos, step, 1, ohw);
    }
    __device__ __forceinline__ void put(const float (&r)[CNT][W / 16],
                                        float (&t)[CNT][BK][PITCH(W)]) const {
        put_kminor<CNT, W>(r, t);
    }
};

// B(p, kk) = X(kk, p) for p in [kbeg, kend): the transposed im2col matrix of the weight
// gradient. K-minor: a half warp takes 16 consecutive output pixels (coalesced along ox); the
// thread's W / 16 taps kk are fixed, its pixel advances by 16.
template <int CNT, int W>
struct ColsByTap {
    const float* src[CNT];
    int off[W / 16];            // c·H·W of each tap
    int dy[W / 16], dx[W / 16];  // ky − ph, kx − pw
    bool live[W / 16];          // kk < KK
    int p, kend;
    int chw, h, w, sh, sw, oh, ow;
    Digits pos;                // (n, oy, ox)
    Digits step;

    __device__ ColsByTap(const float* s0, const float* s1, const ConvShape& g, int n0, int kbeg,
                         int kend_)
        : kend(kend_), h(g.h), w(g.w), sh(g.sh), sw(g.sw), oh(g.oh), ow(g.ow) {
        src[0] = s0;
        if (CNT > 1) src[CNT - 1] = s1;
        chw = g.c * g.h * g.w;
        const int kk_len = g.c * g.kh * g.kw;
#pragma unroll
        for (int i = 0; i < W / 16; ++i) {
            const int kk = n0 + kminor_mn(i);
            live[i] = kk < kk_len;
            const Digits t = split3(live[i] ? kk : 0, g.kh, g.kw);
            off[i] = t.hi * g.h * g.w;
            dy[i] = t.mid - g.ph;
            dx[i] = t.lo - g.pw;
        }
        p = kbeg + kminor_k();
        pos = split3(p, oh, ow);
        step = split3(BK, oh, ow);
    }
    __device__ __forceinline__ void fetch(float (&r)[CNT][W / 16]) {
        const bool kin = p < kend;
        const int at = pos.hi * chw;
        const int yb = pos.mid * sh, xb = pos.lo * sw;
#pragma unroll
        for (int i = 0; i < W / 16; ++i) {
            const int iy = yb + dy[i], ix = xb + dx[i];
            const bool ok = kin && live[i] && in_range(iy, h) && in_range(ix, w);
            const int idx = at + off[i] + iy * w + ix;
#pragma unroll
            for (int q = 0; q < CNT; ++q) r[q][i] = ok ? __ldg(src[q] + idx) : 0.0f;
        }
        p += BK;
        advance3(pos, step, oh, ow);
    }
    __device__ __forceinline__ void put(const float (&r)[CNT][W / 16],
                                        float (&t)[CNT][BK][PITCH(W)]) const {
        put_kminor<CNT, W>(r, t);
    }
};

// One stride phase of the input gradient: input pixels iy = py + sh·jy, ix = px + sw·jx meet
// the taps ky = a + sh·ty, kx = b + sw·tx (a ≡ py + ph mod sh, b likewise), at output pixel
// oy = qy + jy − ty, ox = qx + jx − tx with qy = (py + ph) / sh, qx = (px + pw) / sw.
struct Phase {
    int py, px;     // phase
    int hp, wp;     // its input rows and columns
    int a, b;       // first tap of the phase
    int khp, kwp;   // its taps per axis (0 when the kernel is shorter than the offset)
    int qy, qx;

    __device__ Phase(const ConvShape& g, int z) {
        py = z / g.sw;
        px = z - py * g.sw;
        hp = py < g.h ? (g.h - py + g.sh - 1) / g.sh : 0;
        wp = px < g.w ? (g.w - px + g.sw - 1) / g.sw : 0;
        a = (py + g.ph) % g.sh;
        b = (px + g.pw) % g.sw;
        qy = (py + g.ph) / g.sh;
        qx = (px + g.pw) / g.sw;
        khp = a < g.kh ? (g.kh - a + g.sh - 1) / g.sh : 0;
        kwp = b < g.kw ? (g.kw - b + g.sw - 1) / g.sw : 0;
    }
};

// A(c, (o, ty, tx)) = W[o, c, a + sh·ty, b + sw·tx]: the phase's taps of the weight, as the
// M × K operand of the input gradient (M = C). K-minor. The weight is small and stays in
// L1/L2, so the strided reads cost little.
template <int W>
struct PhaseWeight {
    const float* src;
    int row[W / 16];   // c·KH·KW, or −1 past the last channel
    int o_len, ckk, kw, sh, sw, a, b, khp, kwp;
    Digits pos;       // (o, ty, tx)
    Digits step;

    __device__ PhaseWeight(const float* s, const ConvShape& g, const Phase& ph, int m0)
        : src(s), o_len(g.o), kw(g.kw), sh(g.sh), sw(g.sw), a(ph.a), b(ph.b) {
        khp = ph.khp > 0 ? ph.khp : 1;   // radix only; an empty phase never fetches
        kwp = ph.kwp > 0 ? ph.kwp : 1;
        ckk = g.c * g.kh * g.kw;
#pragma unroll
        for (int i = 0; i < W / 16; ++i) {
            const int c = m0 + kminor_mn(i);
            row[i] = c < g.c ? c * g.kh * g.kw : -1;
        }
        pos = split3(kminor_k(), khp, kwp);
        step = split3(BK, khp, kwp);
    }
    __device__ __forceinline__ void fetch(float (&r)[1][W / 16]) {
        const bool kin = pos.hi < o_len;
        const int at = pos.hi * ckk + (a + sh * pos.mid) * kw + b + sw * pos.lo;
#pragma unroll
        for (int i = 0; i < W / 16; ++i)
            r[0][i] = (kin && row[i] >= 0) ? __ldg(src + at + row[i]) : 0.0f;
        advance3(pos, step, khp, kwp);
    }
    __device__ __forceinline__ void put(const float (&r)[1][W / 16],
                                        float (&t)[1][BK][PITCH(W)]) const {
        put_kminor<1, W>(r, t);
    }
};

// B((o, ty, tx), q) = gY[n, o, qy + jy − ty, qx + jx − tx] (0 outside the output) for the
// phase's input pixels q = q0 + 64·s = (n, jy, jx). K-major: q is fixed per thread (consecutive
// threads, consecutive jx, consecutive ox), the 4 taps (shared) advance by 16.
template <int CNT, int W>
struct PhaseOutGrad {
    const float* src[CNT];
    int base[W / 64];         // n·O·OH·OW, or −1 past the phase's last pixel
    int oy0[W / 64], ox0[W / 64];  // qy + jy, qx + jx
    int o_len, oh, ow, khp, kwp;
    Digits tap[4];       // (o, ty, tx)
    Digits step;

    __device__ PhaseOutGrad(const float* s0, const float* s1, const ConvShape& g,
                            const Phase& ph, int q0)
        : o_len(g.o), oh(g.oh), ow(g.ow) {
        src[0] = s0;
        if (CNT > 1) src[CNT - 1] = s1;
        khp = ph.khp > 0 ? ph.khp : 1;
        kwp = ph.kwp > 0 ? ph.kwp : 1;
#pragma unroll
        for (int s = 0; s < W / 64; ++s) {
            const int q = q0 + 64 * s;
            if (q < g.n * ph.hp * ph.wp) {
                const Digits d = split3(q, ph.hp, ph.wp);
                base[s] = d.hi * g.o * g.oh * g.ow;
                oy0[s] = ph.qy + d.mid;
                ox0[s] = ph.qx + d.lo;
            } else {
                base[s] = -1;
                oy0[s] = ox0[s] = 0;
            }
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) tap[i] = split3(kmajor_k(i), khp, kwp);
        step = split3(BK, khp, kwp);
    }
    __device__ __forceinline__ void fetch(float (&r)[CNT][W / 16]) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int s = 0; s < W / 64; ++s) {
                const int oy = oy0[s] - tap[i].mid, ox = ox0[s] - tap[i].lo;
                const bool ok =
                    base[s] >= 0 && tap[i].hi < o_len && in_range(oy, oh) && in_range(ox, ow);
                const int at = base[s] + (tap[i].hi * oh + oy) * ow + ox;
#pragma unroll
                for (int q = 0; q < CNT; ++q) r[q][4 * s + i] = ok ? __ldg(src[q] + at) : 0.0f;
            }
            advance3(tap[i], step, khp, kwp);
        }
    }
    __device__ __forceinline__ void put(const float (&r)[CNT][W / 16],
                                        float (&t)[CNT][BK][PITCH(W)]) const {
        put_kmajor<CNT, W>(r, t);
    }
};

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------

// CNT = 1: yc = conv(c, w) + bias; CNT = 2 also yr = conv(r, |w|) (centre/radius boxes, each
// tile of c, r and w loaded once). r and yr are not touched when CNT = 1. The block's tile is
// WM output channels × WN output pixels.
template <int CNT, int TXN, int WM, int WN>
__device__ __forceinline__ void conv_fwd(const float* c, const float* r, const float* w,
                                         const float* bias, int has_bias, const ConvShape& g,
                                         float* yc, float* yr) {
    const int kk_len = g.c * g.kh * g.kw, ohw = g.oh * g.ow, npix = g.n * ohw;
    const int m0 = blockIdx.y * WM, n0 = blockIdx.x * WN;
    WeightRows<WM> la(w, g.o, kk_len, m0, kk_len);
    ColsByPixel<CNT, WN> lb(c, r, g, n0 + kmajor_mn());
    float acc[CNT][TM(TXN, WM)][TN(TXN, WN)];
    tile_gemm<1, CNT, CNT == 2, TXN, WM, WN>(la, lb, (kk_len + BK - 1) / BK, acc);

    // Output offsets n·O·OH·OW + pixel of the thread's columns (−1 past the end).
    int col[TN(TXN, WN)];
#pragma unroll
    for (int f = 0; f < TN(TXN, WN); ++f) {
        const int p = n0 + tile_col<TXN>(f);
        col[f] = p < npix ? p + (p / ohw) * (g.o - 1) * ohw : -1;
    }
#pragma unroll
    for (int e = 0; e < TM(TXN, WM); ++e) {
        const int o = m0 + tile_row<TXN>(e);
        if (o >= g.o) continue;
        const float b = has_bias ? bias[o] : 0.0f;
#pragma unroll
        for (int f = 0; f < TN(TXN, WN); ++f) {
            if (col[f] < 0) continue;
            yc[col[f] + o * ohw] = acc[0][e][f] + b;
            if (CNT == 2) yr[col[f] + o * ohw] = acc[CNT - 1][e][f];
        }
    }
}

// Entry points come in tile shapes (M × N): NAME (64 × 64), NAME_128x64, NAME_64x128,
// NAME_128x128, and for the plain input gradient NAME_16x256 (a first layer's 3 input channels
// would fill 3 of 64 rows); the launch wrappers pick one per problem. Interval kernels with
// two operands on both sides have fewer shapes: their shared tiles must fit in 48 KiB.

// y [n, o, oh, ow] = conv(x, w) + bias (bias read only when has_bias ≠ 0; pass any pointer
// otherwise). Grid (⌈P/WN⌉, ⌈O/WM⌉), 256 threads.
#define CONV2D_FWD(NAME, TXN, WM, WN)                                                               \
    extern "C" __global__ void __launch_bounds__(THREADS)                                      \
        NAME(const float* __restrict__ x, const float* __restrict__ w,                         \
             const float* __restrict__ bias, int has_bias, ConvShape g, float* __restrict__ y) { \
        conv_fwd<1, TXN, WM, WN>(x, x, w, bias, has_bias, g, y, y);                                 \
    }
CONV2D_FWD(conv2d_fwd, 16, 64, 64)
CONV2D_FWD(conv2d_fwd_128x64, 16, 128, 64)
CONV2D_FWD(conv2d_fwd_64x128, 16, 64, 128)
CONV2D_FWD(conv2d_fwd_128x128, 16, 128, 128)

// Boxes in centre/radius form: yc = conv(c, w) + bias, yr = conv(r, |w|), in one pass (each
// tile of c, r and w loaded once). Grid and block as conv2d_fwd.
#define INTERVAL_CONV2D_FWD(NAME, TXN, WM, WN)                                                      \
    extern "C" __global__ void __launch_bounds__(THREADS)                                      \
        NAME(const float* __restrict__ c, const float* __restrict__ r,                         \
             const float* __restrict__ w, const float* __restrict__ bias, int has_bias,        \
             ConvShape g, float* __restrict__ yc, float* __restrict__ yr) {                    \
        conv_fwd<2, TXN, WM, WN>(c, r, w, bias, has_bias, g, yc, yr);                               \
    }
INTERVAL_CONV2D_FWD(interval_conv2d_fwd, 16, 64, 64)
INTERVAL_CONV2D_FWD(interval_conv2d_fwd_128x64, 16, 128, 64)
INTERVAL_CONV2D_FWD(interval_conv2d_fwd_64x128, 16, 64, 128)

// ---------------------------------------------------------------------------------------------
// Weight gradient (split-K)
// ---------------------------------------------------------------------------------------------

// CNT = 1: out = Σ_p gc · cols(c); CNT = 2: out = Σ gc · cols(c) + sign(w) ⊙ Σ gr · cols(r), the
// two products accumulated side by side over the same pixels (r, gr and w are not read when
// CNT = 1). Pixels [z·kchunk, (z + 1)·kchunk) of chunk z = blockIdx.z, written to out + z·O·KK.
template <int CNT, int TXN, int WM, int WN>
__device__ __forceinline__ void conv_bwd_weight(const float* c, const float* r, const float* gc,
                                                const float* gr, const float* w,
                                                const ConvShape& g, int kchunk, float* out) {
    const int kk_len = g.c * g.kh * g.kw, npix = g.n * g.oh * g.ow;
    const int m0 = blockIdx.y * WM, n0 = blockIdx.x * WN;
    const int kbeg = blockIdx.z * kchunk;
    const int kend = min(npix, kbeg + kchunk);
    OutGradRows<CNT, WM> la(gc, gr, g, m0, kbeg, kend);
    ColsByTap<CNT, WN> lb(c, r, g, n0, kbeg, kend);
    float acc[CNT][TM(TXN, WM)][TN(TXN, WN)];
    tile_gemm<CNT, CNT, false, TXN, WM, WN>(la, lb, (kend - kbeg + BK - 1) / BK, acc);

    float* dst = out + (size_t)blockIdx.z * g.o * kk_len;
#pragma unroll
    for (int e = 0; e < TM(TXN, WM); ++e) {
        const int o = m0 + tile_row<TXN>(e);
        if (o >= g.o) continue;
#pragma unroll
        for (int f = 0; f < TN(TXN, WN); ++f) {
            const int kk = n0 + tile_col<TXN>(f);
            if (kk >= kk_len) continue;
            float v = acc[0][e][f];
            if (CNT == 2) {
                const float wv = w[o * kk_len + kk];
                if (wv > 0.0f) v += acc[CNT - 1][e][f];
                else if (wv < 0.0f) v -= acc[CNT - 1][e][f];
            }
            dst[o * kk_len + kk] = v;
        }
    }
}

// dW [o, kk] = Σ_p gy[n, o, oy, ox] · x(kk, p). The pixels are split into gridDim.z chunks of
// `kchunk` (a multiple of 16); chunk z writes its partial sums to out + z·O·KK (the wrapper
// adds them with sum_splits when there are several, in a fixed order: deterministic). The
// weight gradient has few output tiles (O × KK) and a long K (every pixel of the batch), so
// splitting K is what fills the GPU. Grid (⌈KK/WN⌉, ⌈O/WM⌉, splits).
#define CONV2D_BWD_WEIGHT(NAME, TXN, WM, WN)                                                        \
    extern "C" __global__ void __launch_bounds__(THREADS)                                      \
        NAME(const float* __restrict__ x, const float* __restrict__ gy, ConvShape g,           \
             int kchunk, float* __restrict__ out) {                                            \
        conv_bwd_weight<1, TXN, WM, WN>(x, x, gy, gy, nullptr, g, kchunk, out);                     \
    }
CONV2D_BWD_WEIGHT(conv2d_bwd_weight, 16, 64, 64)
CONV2D_BWD_WEIGHT(conv2d_bwd_weight_128x64, 16, 128, 64)
CONV2D_BWD_WEIGHT(conv2d_bwd_weight_64x128, 16, 64, 128)
CONV2D_BWD_WEIGHT(conv2d_bwd_weight_128x128, 16, 128, 128)

// Interval weight gradient: dW = Σ gc · cols(c) + sign(w) ⊙ Σ gr · cols(r) (the radius path
// multiplies by |w|; sign(0) = 0 as on the CPU). One kernel: both products accumulate side by
// side over the same pixels. Split-K as conv2d_bwd_weight (the sign is applied per chunk,
// which is exact since it is linear in the chunk's sums). 64 × 64 only (two operands on
// each side).
extern "C" __global__ void __launch_bounds__(THREADS)
    interval_conv2d_bwd_weight(const float* __restrict__ c, const float* __restrict__ r,
                               const float* __restrict__ gc, const float* __restrict__ gr,
                               const float* __restrict__ w, ConvShape g, int kchunk,
                               float* __restrict__ out) {
    conv_bwd_weight<2, 16, 64, 64>(c, r, gc, gr, w, g, kchunk, out);
}

// ---------------------------------------------------------------------------------------------
// Input gradient (gather by stride phase)
// ---------------------------------------------------------------------------------------------

// CNT = 1: dc = adjoint(w)(gc); CNT = 2 also dr = adjoint(|w|)(gr) in the same pass (gr and dr
// are not touched when CNT = 1). The phase is blockIdx.z.
template <int CNT, int TXN, int WM, int WN>
__device__ __forceinline__ void conv_bwd_input(const float* gc, const float* gr, const float* w,
                                               const ConvShape& g, float* dc, float* dr) {
    const Phase ph(g, blockIdx.z);
    const int m0 = blockIdx.y * WM, n0 = blockIdx.x * WN;
    const int q_len = g.n * ph.hp * ph.wp;
    if (n0 >= q_len) return;   // uniform over the block
    const int k_len = g.o * ph.khp * ph.kwp;
    PhaseWeight<WM> la(w, g, ph, m0);
    PhaseOutGrad<CNT, WN> lb(gc, gr, g, ph, n0 + kmajor_mn());
    float acc[CNT][TM(TXN, WM)][TN(TXN, WN)];
    tile_gemm<1, CNT, CNT == 2, TXN, WM, WN>(la, lb, (k_len + BK - 1) / BK, acc);

    // The dx offsets n·C·H·W + iy·W + ix of the thread's phase columns (the channel's c·H·W
    // is added per row), −1 past the phase's last pixel.
    int col[TN(TXN, WN)];
#pragma unroll
    for (int f = 0; f < TN(TXN, WN); ++f) {
        const int q = n0 + tile_col<TXN>(f);
        if (q < q_len) {
            const Digits d = split3(q, ph.hp, ph.wp);
            col[f] = d.hi * g.c * g.h * g.w + (ph.py + g.sh * d.mid) * g.w + ph.px + g.sw * d.lo;
        } else {
            col[f] = -1;
        }
    }
    const int hw = g.h * g.w;
#pragma unroll
    for (int e = 0; e < TM(TXN, WM); ++e) {
        const int c = m0 + tile_row<TXN>(e);
        if (c >= g.c) continue;
#pragma unroll
        for (int f = 0; f < TN(TXN, WN); ++f) {
            if (col[f] < 0) continue;
            dc[col[f] + c * hw] = acc[0][e][f];
            if (CNT == 2) dr[col[f] + c * hw] = acc[CNT - 1][e][f];
        }
    }
}

// dx [n, c, h, w] = the adjoint of conv2d_fwd applied to gy. Grid
// (⌈N·⌈H/sh⌉·⌈W/sw⌉ / WN⌉, ⌈C/WM⌉, sh·sw): blockIdx.z is the phase; blocks past
// their phase's pixels return at once.
#define CONV2D_BWD_INPUT(NAME, TXN, WM, WN)                                                         \
    extern "C" __global__ void __launch_bounds__(THREADS)                                      \
        NAME(const float* __restrict__ gy, const float* __restrict__ w, ConvShape g,           \
             float* __restrict__ dx) {                                                         \
        conv_bwd_input<1, TXN, WM, WN>(gy, gy, w, g, dx, dx);                                       \
    }
CONV2D_BWD_INPUT(conv2d_bwd_input, 16, 64, 64)
CONV2D_BWD_INPUT(conv2d_bwd_input_128x64, 16, 128, 64)
CONV2D_BWD_INPUT(conv2d_bwd_input_64x128, 16, 64, 128)
CONV2D_BWD_INPUT(conv2d_bwd_input_128x128, 16, 128, 128)
CONV2D_BWD_INPUT(conv2d_bwd_input_16x256, 64, 16, 256)

// Interval input gradient: dc = adjoint(w)(gc), dr = adjoint(|w|)(gr), one pass. Grid and
// block as conv2d_bwd_input.
#define INTERVAL_CONV2D_BWD_INPUT(NAME, TXN, WM, WN)                                                \
    extern "C" __global__ void __launch_bounds__(THREADS)                                      \
        NAME(const float* __restrict__ gc, const float* __restrict__ gr,                       \
             const float* __restrict__ w, ConvShape g, float* __restrict__ dc,                 \
             float* __restrict__ dr) {                                                         \
        conv_bwd_input<2, TXN, WM, WN>(gc, gr, w, g, dc, dr);                                       \
    }
INTERVAL_CONV2D_BWD_INPUT(interval_conv2d_bwd_input, 16, 64, 64)
INTERVAL_CONV2D_BWD_INPUT(interval_conv2d_bwd_input_128x64, 16, 128, 64)
INTERVAL_CONV2D_BWD_INPUT(interval_conv2d_bwd_input_64x128, 16, 64, 128)
