// The tiled SGEMM main loop shared by kernels/gemm.cu (plain SGEMM) and kernels/conv.cu
// (implicit-GEMM convolutions): the files differ only in their operand loaders (how a 16-deep
// tile of each operand is gathered from memory) and their epilogues.
//
// Tiling: a block of THREADS = 256 threads computes a (64·RM) × (64·RN) tile of the output,
// RM, RN ∈ {1, 2}: each thread holds RM × RN register micro-tiles of 4 × 4, at rows
// ty·4 + 64·qi and columns tx·4 + 64·qj (tx = thread & 15, ty = thread >> 4, qi < RM, qj < RN),
// stepping through K BK = 16 at a time. Tiles are staged in shared memory k-major
// ([16][64·R + 4]) so that a thread reads its rows of A and columns of B as float4s: per k,
// RM + RN float4 loads feed 16·RM·RN FMAs (2 FMAs per loaded float at 64 × 64, 4 at 128 × 128 —
// shared-memory bandwidth, not the FMA units, bounds the small tile). The pitch 64·R + 4 keeps
// the float4s aligned and spreads the transposed stores over the banks. Shared memory is double
// buffered and the next tile is read into registers while the current one is multiplied: one
// barrier per K-step, global latency hidden behind the FMAs.
//
// Bigger tiles need more registers (acc: NP·16·RM·RN floats) and shared memory
// (2·(NA·RM + NB·RN)·16·(64·R + 4) floats, at most 48 KiB), and give fewer blocks: the launch
// wrappers pick the shape per problem (src/backend/cuda/conv.rs, `Tiles`).

#ifndef CACTUS_TILE_GEMM_CUH
#define CACTUS_TILE_GEMM_CUH

#define BK 16
#define THREADS 256

// Shared-memory pitch of a staged tile R slabs (64·R values) wide.
#define PITCH(R) (64 * (R) + 4)

// ---------------------------------------------------------------------------------------------
// Thread layouts of a 16-deep staged tile R slabs wide: each thread stages 4·R elements.
// ---------------------------------------------------------------------------------------------

// K-minor (operand contiguous along k): element i < 4R is (k, mn) = (kminor_k(), kminor_mn(i));
// a half warp takes 16 consecutive k of one row.
__device__ __forceinline__ int kminor_k() { return threadIdx.x & 15; }
__device__ __forceinline__ int kminor_mn(int i) { return (threadIdx.x >> 4) + 16 * i; }
// K-major (operand contiguous along m or n): element 4·s + i (slab s < R, i < 4) is
// (kmajor_k(i), kmajor_mn(s)); 64 consecutive threads take 64 consecutive m (or n).
__device__ __forceinline__ int kmajor_k(int i) { return (threadIdx.x >> 6) + 4 * i; }
__device__ __forceinline__ int kmajor_mn(int s = 0) { return (threadIdx.x & 63) + 64 * s; }

// Store the thread's fetched elements of each of CNT operands in their staged tiles, in the
// K-minor or the K-major layout (a loader's put()).
template <int CNT, int R>
__device__ __forceinline__ void put_kminor(const float (&r)[CNT][4 * R],
                                           float (&t)[CNT][BK][PITCH(R)]) {
#pragma unroll
    for (int q = 0; q < CNT; ++q)
#pragma unroll
        for (int i = 0; i < 4 * R; ++i) t[q][kminor_k()][kminor_mn(i)] = r[q][i];
}

template <int CNT, int R>
__device__ __forceinline__ void put_kmajor(const float (&r)[CNT][4 * R],
                                           float (&t)[CNT][BK][PITCH(R)]) {
#pragma unroll
    for (int q = 0; q < CNT; ++q)
#pragma unroll
        for (int s = 0; s < R; ++s)
#pragma unroll
            for (int i = 0; i < 4; ++i) t[q][kmajor_k(i)][kmajor_mn(s)] = r[q][4 * s + i];
}

// Output row (or column) of the thread's micro-tile element e < 4·R along that axis, within
// the tile: quad e / 4 sits 64 further per step, element e % 4 within it.
__device__ __forceinline__ int tile_row(int e) { return (threadIdx.x >> 4) * 4 + 64 * (e >> 2) + (e & 3); }
__device__ __forceinline__ int tile_col(int e) { return (threadIdx.x & 15) * 4 + 64 * (e >> 2) + (e & 3); }

// ---------------------------------------------------------------------------------------------
// The GEMM main loop
// ---------------------------------------------------------------------------------------------

// acc[p][e][f] (the thread's output at tile row tile_row(e), column tile_col(f)) =
// Σ_k A_p(m, k) B_p(k, n) over `ktiles` K-steps, for NP = max(NA, NB) products: A_p is
// A[min(p, NA − 1)] and B_p is B[min(p, NB − 1)], with |A| for p = 1 when ABS_SECOND (the radius
// path of interval layers). `la` / `lb` stage NA / NB operands RM / RN slabs wide:
// fetch(float (&)[N][4·R]) reads the thread's elements of the next tile of each into registers
// (zeros outside the operand, which is what makes ragged edges exact) and moves on by 16 in K;
// put(r, float (&)[N][BK][PITCH(R)]) stores them in shared memory. Every thread of the block
// must call this (it synchronises).
template <int NA, int NB, bool ABS_SECOND, int RM, int RN, class LoadA, class LoadB>
__device__ __forceinline__ void tile_gemm(LoadA& la, LoadB& lb, int ktiles,
                                          float (&acc)[NA > NB ? NA : NB][4 * RM][4 * RN]) {
    constexpr int NP = NA > NB ? NA : NB;
    __shared__ __align__(16) float sa[2][NA][BK][PITCH(RM)];
    __shared__ __align__(16) float sb[2][NB][BK][PITCH(RN)];
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
#pragma unroll
    for (int p = 0; p < NP; ++p)
#pragma unroll
        for (int i = 0; i < 4 * RM; ++i)
#pragma unroll
            for (int j = 0; j < 4 * RN; ++j) acc[p][i][j] = 0.0f;
    if (ktiles <= 0) return;   // uniform over the block

    float ra[NA][4 * RM], rb[NB][4 * RN];
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
            float a[NA][4 * RM], b[NB][4 * RN];
#pragma unroll
            for (int q = 0; q < NA; ++q)
#pragma unroll
                for (int s = 0; s < RM; ++s) {
                    const float4 v =
                        *reinterpret_cast<const float4*>(&sa[cur][q][k][ty * 4 + 64 * s]);
                    a[q][4 * s] = v.x; a[q][4 * s + 1] = v.y;
                    a[q][4 * s + 2] = v.z; a[q][4 * s + 3] = v.w;
                }
#pragma unroll
            for (int q = 0; q < NB; ++q)
#pragma unroll
                for (int s = 0; s < RN; ++s) {
                    const float4 v =
                        *reinterpret_cast<const float4*>(&sb[cur][q][k][tx * 4 + 64 * s]);
                    b[q][4 * s] = v.x; b[q][4 * s + 1] = v.y;
                    b[q][4 * s + 2] = v.z; b[q][4 * s + 3] = v.w;
                }
#pragma unroll
            for (int p = 0; p < NP; ++p) {
                const int qa = NA == 1 ? 0 : p, qb = NB == 1 ? 0 : p;
#pragma unroll
                for (int i = 0; i < 4 * RM; ++i) {
                    const float av = (ABS_SECOND && p == 1) ? fabsf(a[qa][i]) : a[qa][i];
#pragma unroll
                    for (int j = 0; j < 4 * RN; ++j)
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
