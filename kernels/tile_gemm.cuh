// The 64 × 64 × 16 tiled SGEMM main loop shared by kernels/gemm.cu (plain SGEMM) and
// kernels/conv.cu (implicit-GEMM convolutions): the files differ only in their operand loaders
// (how a 16 × 64 tile of each operand is gathered from memory) and their epilogues.
//
// Tiling: a block of THREADS = 256 threads computes a BM × BN = 64 × 64 tile of the output,
// each thread a 4 × 4 micro-tile in registers (rows ty·4.., columns tx·4.., tx = thread & 15,
// ty = thread >> 4), stepping through K BK = 16 at a time. Tiles are staged in shared memory
// k-major ([16][64 + 4]) so that a thread reads its 4 rows of A and 4 columns of B as two
// float4s per k (16 FMAs per 2 shared loads); the pitch LDS = 68 keeps those float4s aligned
// and spreads the transposed stores over the banks. Shared memory is double buffered and the
// next tile is read into registers while the current one is multiplied: one barrier per
// K-step, global latency hidden behind the FMAs.

#ifndef CACTUS_TILE_GEMM_CUH
#define CACTUS_TILE_GEMM_CUH

#define BM 64
#define BN 64
#define BK 16
#define THREADS 256
#define LDS 68

// ---------------------------------------------------------------------------------------------
// Thread layouts of a 16 × 64 staged tile: each thread stages 4 elements, i = 0..3.
// ---------------------------------------------------------------------------------------------

// K-minor: a half warp takes 16 consecutive k of one row (operand contiguous along k).
__device__ __forceinline__ int kminor_k() { return threadIdx.x & 15; }
__device__ __forceinline__ int kminor_mn(int i) { return (threadIdx.x >> 4) + 16 * i; }
// K-major: 64 consecutive threads take 64 consecutive m (or n) (operand contiguous along it).
__device__ __forceinline__ int kmajor_k(int i) { return (threadIdx.x >> 6) + 4 * i; }
__device__ __forceinline__ int kmajor_mn() { return threadIdx.x & 63; }

// Store the thread's 4 fetched elements of each of CNT operands in their staged tiles, in the
// K-minor or the K-major layout (a loader's put()).
template <int CNT>
__device__ __forceinline__ void put_kminor(const float (&r)[CNT][4], float (&t)[CNT][BK][LDS]) {
#pragma unroll
    for (int q = 0; q < CNT; ++q)
#pragma unroll
        for (int i = 0; i < 4; ++i) t[q][kminor_k()][kminor_mn(i)] = r[q][i];
}

template <int CNT>
__device__ __forceinline__ void put_kmajor(const float (&r)[CNT][4], float (&t)[CNT][BK][LDS]) {
#pragma unroll
    for (int q = 0; q < CNT; ++q)
#pragma unroll
        for (int i = 0; i < 4; ++i) t[q][kmajor_k(i)][kmajor_mn()] = r[q][i];
}

// ---------------------------------------------------------------------------------------------
// The GEMM main loop
// ---------------------------------------------------------------------------------------------

// acc[p] (the thread's 4 × 4 micro-tile at rows ty·4.., columns tx·4..) = Σ_k A_p(m, k) B_p(k, n)
// over `ktiles` K-steps, for NP = max(NA, NB) products: A_p is A[min(p, NA − 1)] and B_p is
// B[min(p, NB − 1)], with |A| for p = 1 when ABS_SECOND (the radius path of interval layers).
// `la` / `lb` stage NA / NB operands: fetch(float (&)[N][4]) reads the thread's 4 elements of
// the next tile of each into registers (zeros outside the operand, which is what makes ragged
// edges exact) and moves on by 16 in K; put(r, float (&)[N][BK][LDS]) stores them in shared
// memory. Every thread of the block must call this (it synchronises).
template <int NA, int NB, bool ABS_SECOND, class LoadA, class LoadB>
__device__ __forceinline__ void tile_gemm(LoadA& la, LoadB& lb, int ktiles,
                                          float (&acc)[NA > NB ? NA : NB][4][4]) {
    constexpr int NP = NA > NB ? NA : NB;
    __shared__ __align__(16) float sa[2][NA][BK][LDS];
    __shared__ __align__(16) float sb[2][NB][BK][LDS];
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
#pragma unroll
    for (int p = 0; p < NP; ++p)
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[p][i][j] = 0.0f;
    if (ktiles <= 0) return;   // uniform over the block

    float ra[NA][4], rb[NB][4];
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
            float a[NA][4], b[NB][4];
#pragma unroll
            for (int q = 0; q < NA; ++q) {
                const float4 v = *reinterpret_cast<const float4*>(&sa[cur][q][k][ty * 4]);
                a[q][0] = v.x; a[q][1] = v.y; a[q][2] = v.z; a[q][3] = v.w;
            }
#pragma unroll
            for (int q = 0; q < NB; ++q) {
                const float4 v = *reinterpret_cast<const float4*>(&sb[cur][q][k][tx * 4]);
                b[q][0] = v.x; b[q][1] = v.y; b[q][2] = v.z; b[q][3] = v.w;
            }
#pragma unroll
            for (int p = 0; p < NP; ++p) {
                const int qa = NA == 1 ? 0 : p, qb = NB == 1 ? 0 : p;
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const float av = (ABS_SECOND && p == 1) ? fabsf(a[qa][i]) : a[qa][i];
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[p][i][j] = fmaf(av, b[qb][j], acc[p][i][j]);
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
