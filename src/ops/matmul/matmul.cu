// Single-precision GEMM, row-major: C = alpha·op(A)·op(B) + beta·C with op(A) M × K and op(B)
// K × N; op(X) = X, or Xᵀ when its trans flag is set (then X is stored K × M, or N × K).
// Any M, N, K ≥ 1 and any leading dimensions (lda, ldb, ldc: row pitches in floats).
//
// Tiling: runtime/cuda/tile_gemm.cuh (shared with the implicit-GEMM convolutions of ops/conv/conv.cu):
// a block of 256 threads computes a 64 × 64, 128 × 64, 64 × 128 or 128 × 128 tile of C (an
// entry point per shape), each thread 1, 2 or 4 register micro-tiles of 4 × 4, stepping through
// K 16 at a time with double-buffered shared tiles; this file supplies the operand loader
// (`Operand`) and the epilogue (alpha, beta).
//
// Staging: each operand is read along whichever of its axes is contiguous in memory (K for A
// untransposed and B transposed, M or N otherwise), 16 or 64 consecutive threads on
// consecutive addresses, so that loads coalesce for every combination of trans flags.
// Elements outside the matrix are staged as zeros, which is what makes ragged edges exact.
//
// beta = 0 does not read C (it may hold garbage or NaN), as BLAS specifies. Offsets are 32-bit:
// the wrapper (src/ops/matmul/launch.rs, `sgemm`) refuses operands of 2^31 floats or more.
// An offset may step past the end of its operand on the last K-step; it is never read then.

#include "tile_gemm.cuh"

// One operand as an (mn, k) matrix: element (mn, k) at src[mn·ld + k] when k is contiguous
// (`kcontig`), else at src[k·ld + mn]; mn < mn_len, k < k_len. Each thread stages W / 16 elements
// of every 16-deep tile W wide, in tile_gemm.cuh's K-minor layout when k is contiguous (a
// half warp on 16 consecutive k of one row), else in its K-major layout (64 threads on 64
// consecutive mn of one k).
template <int W>
struct Operand {
    const float* src;
    int off[W / 16];     // offset of the thread's element e in the current tile
    int kstep;          // offset change per K-step of 16
    int kcur[W / 16];    // k of element e in the current tile
    bool live[W / 16];   // mn < mn_len
    bool kcontig;
    int k_len;

    __device__ Operand(const float* s, int mn_len, int k_len_, int ld, bool kcontig_, int mn0)
        : src(s), kcontig(kcontig_), k_len(k_len_) {
#pragma unroll
        for (int e = 0; e < W / 16; ++e) {
            const int k_at = kcontig ? kminor_k() : kmajor_k(e & 3);
            const int mn = mn0 + (kcontig ? kminor_mn(e) : kmajor_mn(e >> 2));
            live[e] = mn < mn_len;
            kcur[e] = k_at;
            off[e] = kcontig ? mn * ld + k_at : k_at * ld + mn;
        }
        kstep = kcontig ? BK : BK * ld;
    }

    // tile_gemm's loader interface (one operand: the outer dimension is 1).
    __device__ __forceinline__ void fetch(float (&r)[1][W / 16]) {
#pragma unroll
        for (int e = 0; e < W / 16; ++e) {
            r[0][e] = (live[e] && kcur[e] < k_len) ? __ldg(src + off[e]) : 0.0f;
            off[e] += kstep;
            kcur[e] += BK;
        }
    }

    __device__ __forceinline__ void put(const float (&r)[1][W / 16],
                                        float (&t)[1][BK][PITCH(W)]) const {
        if (kcontig) put_kminor<1, W>(r, t);
        else put_kmajor<1, W>(r, t);
    }
};

// This block's WM × WN tile of C = alpha·op(A)·op(B) + beta·C.
template <int TXN, int WM, int WN>
__device__ __forceinline__ void gemm_tile(int M, int N, int K, float alpha, const float* A,
                                          int lda, int transA, const float* B, int ldb,
                                          int transB, float beta, float* C, int ldc) {
    const int m0 = blockIdx.y * WM, n0 = blockIdx.x * WN;
    // A as (m, k): k contiguous unless transposed. B as (n, k): k contiguous when transposed.
    Operand<WM> la(A, M, K, lda, transA == 0, m0);
    Operand<WN> lb(B, N, K, ldb, transB != 0, n0);
    float acc[1][TM(TXN, WM)][TN(TXN, WN)];
    tile_gemm<1, 1, false, TXN, WM, WN>(la, lb, (K + BK - 1) / BK, acc);

#pragma unroll
    for (int e = 0; e < TM(TXN, WM); ++e) {
        const int m = m0 + tile_row<TXN>(e);
        if (m >= M) continue;
        float* row = C + m * ldc;
#pragma unroll
        for (int f = 0; f < TN(TXN, WN); ++f) {
            const int n = n0 + tile_col<TXN>(f);
            if (n >= N) continue;
            const float v = alpha * acc[0][e][f];
            row[n] = beta == 0.0f ? v : fmaf(beta, row[n], v);
        }
    }
}

// Entry points per tile shape: NAME (64 × 64), NAME_128x64, NAME_64x128, NAME_128x128 (M × N).

// Grid (⌈N/WN⌉, ⌈M/WM⌉), 256 threads. transA/transB: 0 or 1.
#define SGEMM(NAME, TXN, WM, WN)                                                                    \
    extern "C" __global__ void __launch_bounds__(THREADS)                                      \
        NAME(int M, int N, int K, float alpha, const float* __restrict__ A, int lda,           \
             int transA, const float* __restrict__ B, int ldb, int transB, float beta,         \
             float* __restrict__ C, int ldc) {                                                 \
        gemm_tile<TXN, WM, WN>(M, N, K, alpha, A, lda, transA, B, ldb, transB, beta, C, ldc);       \
    }
SGEMM(sgemm, 16, 64, 64)
SGEMM(sgemm_128x64, 16, 128, 64)
SGEMM(sgemm_64x128, 16, 64, 128)
SGEMM(sgemm_128x128, 16, 128, 128)

// Split K, for products with few output tiles and a long K (a linear layer on a flattened
// feature map): grid (⌈N/WN⌉, ⌈M/WM⌉, splits); block z computes the partial product
// over k ∈ [z·kchunk, min(K, (z + 1)·kchunk)) into its own M × N slice C + z·M·N (dense), which
// `sum_splits` (below) adds in a fixed order. kchunk is a multiple of 16.
#define SGEMM_SPLIT(NAME, TXN, WM, WN)                                                              \
    extern "C" __global__ void __launch_bounds__(THREADS)                                      \
        NAME(int M, int N, int K, int kchunk, const float* __restrict__ A, int lda,            \
             int transA, const float* __restrict__ B, int ldb, int transB,                     \
             float* __restrict__ C) {                                                          \
        const int k0 = blockIdx.z * kchunk;                                                    \
        const int klen = min(kchunk, K - k0);                                                  \
        const float* a = A + (transA ? (size_t)k0 * lda : (size_t)k0);                         \
        const float* b = B + (transB ? (size_t)k0 : (size_t)k0 * ldb);                         \
        float* c = C + (size_t)blockIdx.z * M * N;                                             \
        gemm_tile<TXN, WM, WN>(M, N, klen, 1.0f, a, lda, transA, b, ldb, transB, 0.0f, c, N);       \
    }
SGEMM_SPLIT(sgemm_split, 16, 64, 64)
SGEMM_SPLIT(sgemm_split_128x64, 16, 128, 64)
SGEMM_SPLIT(sgemm_split_64x128, 16, 64, 128)
SGEMM_SPLIT(sgemm_split_128x128, 16, 128, 128)

// out[i] = Σ_s parts[s·len + i], s = 0..splits−1 in order.
extern "C" __global__ void sum_splits(const float* __restrict__ parts, int splits, int len,
                                      float* __restrict__ out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) return;
    float s = 0.0f;
    for (int z = 0; z < splits; ++z) s += parts[(size_t)z * len + i];
    out[i] = s;
}
