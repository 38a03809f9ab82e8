// N:M sparsity masks (docs/design.md, "N:M sparsity"; CPU reference src/compress/nm/mod.rs).
//
// One thread per group of m consecutive weights of a row (rows of row_len values; the last group
// of a row is shorter when m does not divide row_len). A weight is pruned when fewer than
// len − min(n, len) weights of its group rank below it by (bits of |w|, position): the bits of
// |w| order like the magnitudes, NaN above +inf, -0.0 equal to 0.0, and among equal magnitudes
// the lower position ranks lower, so it goes first. The CPU makes the same comparisons, so the
// masks are bit-identical. m ≤ 64: the quadratic count is a few thousand comparisons at most.

__device__ __forceinline__ bool ranks_below(unsigned int a, int i, unsigned int b, int j) {
    return a < b || (a == b && i < j);
}

extern "C" __global__ void nm_mask(const float* w, long long row_len, int n, int m,
                                   long long groups, float* mask) {
    long long g = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (g >= groups) return;
    long long per_row = (row_len + m - 1) / m;
    long long row = g / per_row, first = (g % per_row) * m;
    long long rest = row_len - first;
    int len = rest < m ? (int)rest : m;
    int prune = len - (n < len ? n : len);
    const float* x = w + row * row_len + first;
    float* out = mask + row * row_len + first;
    for (int i = 0; i < len; ++i) {
        unsigned int key = __float_as_uint(x[i]) & 0x7fffffffu;
        int below = 0;
        for (int j = 0; j < len; ++j) {
            below += ranks_below(__float_as_uint(x[j]) & 0x7fffffffu, j, key, i) ? 1 : 0;
        }
        out[i] = below < prune ? 0.0f : 1.0f;
    }
}
