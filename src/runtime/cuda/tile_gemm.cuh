// The tiled SGEMM main loop shared by ops/matmul/matmul.cu (plain SGEMM) and ops/conv/conv.cu
// (implicit-GEMM convolutions): the files differ only in their operand loaders (how a 16-deep
// tile of each operand is gathered from memory) and their epilogues.
//
// Tiling: a block of THREADS = 256 threads computes a WM × WN tile of the output, the threads
// laid out TY × TXN (TXN along N, TY = 256 / TXN along M). Each thread holds register
// micro-tiles of 4 × 4, WM / (4·TY) of them down and WN / (4·TXN) across, at rows ty·4 + 4·TY·qi
// and columns tx·4 + 4·TXN·qj (tx = thread % TXN, ty = thread / TXN). The shapes in use:
// TXN = 16 with WM, WN ∈ {64, 128} (1, 2 or 4 micro-tiles per thread), and TXN = 64 with
// 16 × 256 (one micro-tile; for a short M such as the 3 input channels of a first layer).
// K goes BK = 16 at a time. Tiles are staged in shared memory k-major ([16][W + 4]) so that a
// thread reads its rows of A and columns of B as float4s: per k, one float4 per micro-tile row
// and column feeds 16 FMAs per micro-tile (2 FMAs per loaded float with one micro-tile, 4 with
// 2 × 2 — shared-memory bandwidth, not the FMA units, bounds the small tiles). The pitch W + 4
// keeps the float4s aligned and spreads the transposed stores over the banks. Shared memory is
// double buffered and the next tile is read into registers while the current one is
// multiplied: one barrier per K-step, global latency hidden behind the FMAs.
//
// Bigger tiles need more registers and shared memory (2·(NA·(WM + 4) + NB·(WN + 4))·16 floats,
// at most 48 KiB) and give fewer blocks: the launch wrappers pick the shape per problem
// (src/runtime/cuda/tiles.rs).

#ifndef CACTUS_TILE_GEMM_CUH
#define CACTUS_TILE_GEMM_CUH

#define BK 16
#define THREADS 256

// Shared-memory pitch of a staged tile W values wide.
#define PITCH(W) ((W) + 4)
// Outputs per thread down and across a WM × WN tile with TXN threads across.
#define TM(TXN, WM) ((WM) * (TXN) / THREADS)
#define TN(TXN, WN) ((WN) / (TXN))

// ---------------------------------------------------------------------------------------------
// Thread layouts of a 16-deep staged tile W values wide: each thread stages W / 16 elements.
// ---------------------------------------------------------------------------------------------

// K-minor (operand contiguous along k): element e < W/16 is (k, mn) = (kminor_k(), kminor_mn(e));
// a half warp takes 16 consecutive k of one row.
__device__ __forceinline__ int kminor_k() { return threadIdx.x & 15; }
__device__ __forceinline__ int kminor_mn(int e) { return (threadIdx.x >> 4) + 16 * e; }
// K-major (operand contiguous along m or n; W a multiple of 64): element 4·s + i (slab s < W/64,
// i < 4) is (kmajor_k(i), kmajor_mn(s)); 64 consecutive threads take 64 consecutive m (or n).
__device__ __forceinline__ int kmajor_k(int i) { return (threadIdx.x >> 6) + 4 * i; }
__device__ __forceinline__ int kmajor_mn(int s = 0) { return (threadIdx.x & 63) + 64 * s; }

// Store the thread's fetched elements of each of CNT operands in their staged tiles, in the
// K-minor or the K-major layout (a loader's put()).
template <int CNT, int W>
__device__ __forceinline__ void put_kminor(const float (&r)[CNT][W / 16],
                                           float (&t)[CNT][BK][PITCH(W)]) {
#pragma unroll
    for (int q = 0; q < CNT; ++q)
#pragma unroll
        for (int e = 0; e < W / 16; ++e) t[q][kminor_k()][kminor_mn(e)] = r[q][e];
}

template <int CNT, int W>
__device__ __forceinline__ void put_kmajor(const float (&r)[CNT][W / 16],
                                           float (&t)[CNT][BK][PITCH(W)]) {
    static_assert(W % 64 == 0, "K-major staging covers slabs of 64");
#pragma unroll
    for (int q = 0; q < CNT; ++q)
#pragma unroll
        for (int s = 0; s < W / 64; ++s)
#pragma unroll
            for (int i = 0; i < 4; ++i) t[q][kmajor_k(i)][kmajor_mn(s)] = r[q][4 * s + i];
}

// Output row (or column) within the tile of the thread's micro-tile element e along that axis:
// micro-tile e / 4, element e % 4 within it.
template <int TXN>
__device__ __forceinline__ int tile_row(int e) {
    return (threadIdx.x / TXN) * 4 + 4 * (THREADS / TXN) * (e >> 2) + (e & 3);
}
template <int TXN>
__device__ __forceinline__ int tile_col(int e) {
    return (threadIdx.x % TXN) * 4 + 4 * TXN * (e >> 2) + (e & 3);
}

// ---------------------------------------------------------------------------------------------
// The GEMM main loop
// ---------------------------------------------------------------------------------------------

// acc[p][e][f] (the thread's output at tile row tile_row<TXN>(e), column tile_col<TXN>(f)) =
// Σ_k A_p(m, k) B_p(k, n) over `ktiles` K-steps, for NP = max(NA, NB) products: A_p is
// A[min(p, NA − 1)] and B_p is B[min(p, NB − 1)], with |A| for p = 1 when ABS_SECOND (the radius
// path of interval layers). `la` / `lb` stage NA / NB operands WM / WN wide:
// fetch(float (&)[N][W / 16]) reads the thread's elements of the next tile of each into
// registers (zeros outside the operand, which is what makes ragged edges exact) and moves on by
// 16 in K; put(r, float (&)[N][BK][PITCH(W)]) stores them in shared memory. Every thread of the
// block must call this (it synchronises).
template <int NA, int NB, bool ABS_SECOND, int TXN, int WM, int WN, class LoadA, class LoadB>
__device__ __forceinline__ void tile_gemm(LoadA& la, LoadB& lb, int ktiles,
                                          float (&acc)[NA > NB ? NA : NB][TM(TXN, WM)]
                                                      [TN(TXN, WN)]) {
    constexpr int NP = NA > NB ? NA : NB;
    constexpr int TY = THREADS / TXN;
    constexpr int QM = TM(TXN, WM) / 4, QN = TN(TXN, WN) / 4;
    static_assert(QM >= 1 && QN >= 1 && QM * 4 * TY == WM && QN * 4 * TXN == WN,
                  "the tile is whole micro-tiles of every thread");
    __shared__ __align__(16) float sa[2][NA][BK][PITCH(WM)];
    __shared__ __align__(16) float sb[2][NB][BK][PITCH(WN)];
    const int tx = threadIdx.x % TXN, ty = threadIdx.x / TXN;
#pragma unroll
    for (int p = 0; p < NP; ++p)
#pragma unroll
        for (int i = 0; i < 4 * QM; ++i)
#pragma unroll
            for (int j = 0; j < 4 * QN; ++j) acc[p][i][j] = 0.0f;
    if (ktiles <= 0) return;   // uniform over the block

    float ra[NA][WM / 16], rb[NB][WN / 16];
    la.fetch(ra);
    lb.fetch(rb);
    la.put(ra, sa[0]);
    lb.put(rb, sb[0]);
    __syncthreads();
    for (int kt = 0; kt < ktiles; ++kt) {
        const int cur = kt & 1;
        const bool more = kt + 1 < ktiles;
        // Issue the next tile's global loads before this tile's FMAs.
        if (more) {
            la.fetch(ra);
            lb.fetch(rb);
        }
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            float a[NA][4 * QM], b[NB][4 * QN];
#pragma unroll
            for (int q = 0; q < NA; ++q)
#pragma unroll
                for (int s = 0; s < QM; ++s) {
                    const float4 v =
                        *reinterpret_cast<const float4*>(&sa[cur][q][k][ty * 4 + 4 * TY * s]);
                    a[q][4 * s] = v.x; a[q][4 * s + 1] = v.y;
                    a[q][4 * s + 2] = v.z; a[q][4 * s + 3] = v.w;
                }
#pragma unroll
            for (int q = 0; q < NB; ++q)
#pragma unroll
                for (int s = 0; s < QN; ++s) {
                    const float4 v =
                        *reinterpret_cast<const float4*>(&sb[cur][q][k][tx * 4 + 4 * TXN * s]);
                    b[q][4 * s] = v.x; b[q][4 * s + 1] = v.y;
                    b[q][4 * s + 2] = v.z; b[q][4 * s + 3] = v.w;
                }
#pragma unroll
            for (int p = 0; p < NP; ++p) {
                const int qa = NA == 1 ? 0 : p, qb = NB == 1 ? 0 : p;
#pragma unroll
                for (int i = 0; i < 4 * QM; ++i) {
                    const float av = (ABS_SECOND && p == 1) ? fabsf(a[qa][i]) : a[qa][i];
#pragma unroll
                    for (int j = 0; j < 4 * QN; ++j)
                        acc[p][i][j] = fmaf(av, b[qb][j], acc[p][i][j]);
                }
            }
        }
        // The other buffer was last read before the previous barrier: safe to overwrite.
        if (more) {
            la.put(ra, sa[cur ^ 1]);
            lb.put(rb, sb[cur ^ 1]);
        }
        __syncthreads();
    }
}

#endif   // CACTUS_TILE_GEMM_CUH
