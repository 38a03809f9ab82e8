// Single-precision GEMM, row-major: C = alpha·op(A)·op(B) + beta·C with op(A) M × K and op(B)
// K × N; op(X) = X, or Xᵀ when its trans flag is set (then X is stored K × M, or N × K).
// Any M, N, K ≥ 1 and any leading dimensions (lda, ldb, ldc: row pitches in floats).
//
// Tiling, as the implicit-GEMM convolutions of kernels/conv.cu (which need their own copy of
// this loop: NVRTC compiles each file alone): a block of 256 threads computes a 64 × 64 tile
// of C, each thread a 4 × 4 micro-tile in registers, stepping through K 16 at a time. Tiles
// are staged in shared memory k-major ([16][64 + 4]) so that each thread reads its 4 rows of A
// and 4 columns of B as two float4s per k (16 FMAs per 2 shared loads); the pitch of 68 keeps
// those float4s aligned and spreads the transposed stores over the banks. Shared memory is
// double buffered and the next tile is read into registers while the current one is
// multiplied: one barrier per K-step, global latency hidden behind the FMAs.
//
// Staging: each operand is read along whichever of its axes is contiguous in memory (K for A
// untransposed and B transposed, M or N otherwise), 16 or 64 consecutive threads on
// consecutive addresses, so that loads coalesce for every combination of trans flags.
// Elements outside the matrix are staged as zeros, which is what makes ragged edges exact.
//
// beta = 0 does not read C (it may hold garbage or NaN), as BLAS specifies. Offsets are 32-bit:
// the wrapper (src/backend/cuda/conv.rs, `sgemm`) refuses operands of 2^31 floats or more.
// An offset may step past the end of its operand on the last K-step; it is never read then.

#define BM 64
#define BN 64
#define BK 16
#define THREADS 256
#define LDS 68

// One operand as an (mn, k) matrix: element (mn, k) at src[mn·ld + k] when k is contiguous
// (`kcontig`), else at src[k·ld + mn]; mn < mn_len, k < k_len. Each thread stages 4 elements
// of every 16 × 64 tile, at tile positions (k_at[i], mn_at[i]).
struct Operand {
    const float* src;
    int off[4];   // offset of the thread's element i in the current tile
    int kstep;    // offset change per K-step of 16
    int k_at[4], mn_at[4];
    int kcur[4];        // k of element i in the current tile
    bool live[4];       // mn < mn_len
    int k_len;

    __device__ Operand(const float* s, int mn_len, int k_len_, int ld, bool kcontig, int mn0)
        : src(s), k_len(k_len_) {
        const int t = threadIdx.x;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            if (kcontig) {   // a half warp on 16 consecutive k of one row
                k_at[i] = t & 15;
                mn_at[i] = (t >> 4) + 16 * i;
            } else {         // 64 threads on 64 consecutive mn of one k
                k_at[i] = (t >> 6) + 4 * i;
                mn_at[i] = t & 63;
            }
            const int mn = mn0 + mn_at[i];
            live[i] = mn < mn_len;
            kcur[i] = k_at[i];
            off[i] = kcontig ? mn * ld + k_at[i] : k_at[i] * ld + mn;
        }
        kstep = kcontig ? BK : BK * ld;
    }

    __device__ __forceinline__ void fetch(float (&r)[4]) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            r[i] = (live[i] && kcur[i] < k_len) ? __ldg(src + off[i]) : 0.0f;
            off[i] += kstep;
            kcur[i] += BK;
        }
    }

    __device__ __forceinline__ void put(const float (&r)[4], float (&t)[BK][LDS]) const {
#pragma unroll
        for (int i = 0; i < 4; ++i) t[k_at[i]][mn_at[i]] = r[i];
    }
};

// Grid (⌈N/64⌉, ⌈M/64⌉), 256 threads. transA/transB: 0 or 1.
extern "C" __global__ void __launch_bounds__(THREADS)
    sgemm(int M, int N, int K, float alpha, const float* __restrict__ A, int lda, int transA,
          const float* __restrict__ B, int ldb, int transB, float beta, float* __restrict__ C,
          int ldc) {
    __shared__ __align__(16) float sa[2][BK][LDS];
    __shared__ __align__(16) float sb[2][BK][LDS];
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    // A as (m, k): k contiguous unless transposed. B as (n, k): k contiguous when transposed.
    Operand la(A, M, K, lda, transA == 0, m0);
    Operand lb(B, N, K, ldb, transB != 0, n0);

    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    const int ktiles = (K + BK - 1) / BK;
    float ra[4], rb[4];
    if (ktiles > 0) {
        la.fetch(ra);
        lb.fetch(rb);
        la.put(ra, sa[0]);
        lb.put(rb, sb[0]);
    }
    __syncthreads();
    for (int kt = 0; kt < ktiles; ++kt) {
        const int cur = kt & 1;
        const bool more = kt + 1 < ktiles;
        if (more) {   // next tile's global loads in flight during this tile's FMAs
            la.fetch(ra);
            lb.fetch(rb);
        }
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            const float4 a = *reinterpret_cast<const float4*>(&sa[cur][k][ty * 4]);
            const float4 b = *reinterpret_cast<const float4*>(&sb[cur][k][tx * 4]);
            const float av[4] = {a.x, a.y, a.z, a.w};
            const float bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        // The other buffer was last read before the previous barrier: safe to overwrite.
        if (more) {
            la.put(ra, sa[cur ^ 1]);
            lb.put(rb, sb[cur ^ 1]);
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty * 4 + i;
        if (m >= M) continue;
        float* row = C + m * ldc;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int n = n0 + tx * 4 + j;
            if (n >= N) continue;
            const float v = alpha * acc[i][j];
            row[n] = beta == 0.0f ? v : fmaf(beta, row[n], v);
        }
    }
}
