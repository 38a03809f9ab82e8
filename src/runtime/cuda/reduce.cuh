// Warp and block reductions shared by kernel files (the ops' and training's `.cu` files).
// A warp is 32 lanes, all active (full shuffle mask); the butterfly (xor) order is fixed, so a
// sum is deterministic and every lane ends with the same value.

#ifndef CACTUS_REDUCE_CUH
#define CACTUS_REDUCE_CUH

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum each of v[0..K) over the block (blockDim.x a multiple of 32, at most 1024); the totals
// are valid in thread 0. Double precision: per-channel sums run over N·H·W values. Every
// thread of the block must call it (it synchronises).
template <int K>
__device__ void block_sum_d(double (&v)[K]) {
    __shared__ double part[K][32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int i = 0; i < K; ++i) v[i] = warp_sum_d(v[i]);
    if (lane == 0)
        for (int i = 0; i < K; ++i) part[i][warp] = v[i];
    __syncthreads();
    if (warp == 0) {
        int warps = blockDim.x >> 5;
        for (int i = 0; i < K; ++i) v[i] = warp_sum_d(lane < warps ? part[i][lane] : 0.0);
    }
}

#endif   // CACTUS_REDUCE_CUH
