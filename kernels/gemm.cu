// Single-precision GEMM, row-major: C = alpha·op(A)·op(B) + beta·C with op(A) M × K and op(B)
// K × N; op(X) = X, or Xᵀ when its trans flag is set (then X is stored K × M, or N × K).
// Any M, N, K ≥ 1 and any leading dimensions (lda, ldb, ldc: row pitches in floats).
//
// Tiling: kernels/tile_gemm.cuh (shared with the implicit-GEMM convolutions of kernels/conv.cu):
// a block of 256 threads computes a 64 × 64 tile of C, each thread a 4 × 4 micro-tile in
// registers, stepping through K 16 at a time with double-buffered shared tiles; this file
// supplies the operand loader (`Operand`) and the epilogue (alpha, beta).
//
// Staging: each operand is read along whichever of its axes is contiguous in memory (K for A
// untransposed and B transposed, M or N otherwise), 16 or 64 consecutive threads on
// consecutive addresses, so that loads coalesce for every combination of trans flags.
// Elements outside the matrix are staged as zeros, which is what makes ragged edges exact.
//
// beta = 0 does not read C (it may hold garbage or NaN), as BLAS specifies. Offsets are 32-bit:
// the wrapper (src/backend/cuda/conv.rs, `sgemm`) refuses operands of 2^31 floats or more.
// An offset may step past the end of its operand on the last K-step; it is never read then.

#include "tile_gemm.cuh"

// One operand as an (mn, k) matrix: element (mn, k) at src[mn·ld + k] when k is contiguous
// (`kcontig`), else at src[k·ld + mn]; mn < mn_len, k < k_len. Each thread stages 4 elements
// of every 16 × 64 tile, in tile_gemm.cuh's K-minor layout when k is contiguous (a half warp on
// 16 consecutive k of one row), else in its K-major layout (64 threads on 64 consecutive mn of
// one k). The tile positions are recomputed from threadIdx when staging rather than held in
// registers.
struct Operand {
    const float* src;
    int off[4];     // offset of the thread's element i in the current tile
    int kstep;      // offset change per K-step of 16
    int kcur[4];    // k of element i in the current tile
    bool live[4];   // mn < mn_len
    bool kcontig;
    int k_len;

    __device__ Operand(const float* s, int mn_len, int k_len_, int ld, bool kcontig_, int mn0)
        : src(s), kcontig(kcontig_), k_len(k_len_) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int k_at = kcontig ? kminor_k() : kmajor_k(i);
            const int mn = mn0 + (kcontig ? kminor_mn(i) : kmajor_mn());
            live[i] = mn < mn_len;
            kcur[i] = k_at;
            off[i] = kcontig ? mn * ld + k_at : k_at * ld + mn;
        }
        kstep = kcontig ? BK : BK * ld;
    }

    // tile_gemm's loader interface (one operand: the outer dimension is 1).
    __device__ __forceinline__ void fetch(float (&r)[1][4]) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            r[0][i] = (live[i] && kcur[i] < k_len) ? __ldg(src + off[i]) : 0.0f;
            off[i] += kstep;
            kcur[i] += BK;
        }
    }

    __device__ __forceinline__ void put(const float (&r)[1][4], float (&t)[1][BK][LDS]) const {
        if (kcontig) put_kminor<1>(r, t);
        else put_kmajor<1>(r, t);
    }
};

// One 64 × 64 tile of C (this block's) = alpha·op(A)·op(B) + beta·C.
__device__ __forceinline__ void gemm_tile(int M, int N, int K, float alpha, const float* A,
                                          int lda, int transA, const float* B, int ldb,
                                          int transB, float beta, float* C, int ldc) {
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    // A as (m, k): k contiguous unless transposed. B as (n, k): k contiguous when transposed.
    Operand la(A, M, K, lda, transA == 0, m0);
    Operand lb(B, N, K, ldb, transB != 0, n0);
    float acc[1][4][4];
    tile_gemm<1, 1, false>(la, lb, (K + BK - 1) / BK, acc);

#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty * 4 + i;
        if (m >= M) continue;
        float* row = C + m * ldc;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int n = n0 + tx * 4 + j;
            if (n >= N) continue;
            const float v = alpha * acc[0][i][j];
            row[n] = beta == 0.0f ? v : fmaf(beta, row[n], v);
        }
    }
}

// Grid (⌈N/64⌉, ⌈M/64⌉), 256 threads. transA/transB: 0 or 1.
extern "C" __global__ void __launch_bounds__(THREADS)
    sgemm(int M, int N, int K, float alpha, const float* __restrict__ A, int lda, int transA,
          const float* __restrict__ B, int ldb, int transB, float beta, float* __restrict__ C,
          int ldc) {
    gemm_tile(M, N, K, alpha, A, lda, transA, B, ldb, transB, beta, C, ldc);
}

// Split K, for products with few output tiles and a long K (a linear layer on a flattened
// feature map): grid (⌈N/64⌉, ⌈M/64⌉, splits); block z computes the partial product over
// k ∈ [z·kchunk, min(K, (z + 1)·kchunk)) into its own M × N slice C + z·M·N (dense), which
// `sum_splits` (kernels/conv.cu) adds in a fixed order. kchunk is a multiple of 16.
extern "C" __global__ void __launch_bounds__(THREADS)
    sgemm_split(int M, int N, int K, int kchunk, const float* __restrict__ A, int lda,
                int transA, const float* __restrict__ B, int ldb, int transB,
                float* __restrict__ C) {
    const int k0 = blockIdx.z * kchunk;
    const int klen = min(kchunk, K - k0);
    const float* a = A + (transA ? (size_t)k0 * lda : (size_t)k0);
    const float* b = B + (transB ? (size_t)k0 : (size_t)k0 * ldb);
    float* c = C + (size_t)blockIdx.z * M * N;
    gemm_tile(M, N, klen, 1.0f, a, lda, transA, b, ldb, transB, 0.0f, c, N);
}
