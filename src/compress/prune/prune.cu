// Magnitude pruning masks (docs/design.md, "Unstructured pruning" and "Structured pruning"; CPU reference
// src/compress/prune/mod.rs).
//
// Unstructured (GUL1/LUL1): the k-th smallest key of all weights, found by radix selection
// without sorting. A weight's key is (bits of |w|) << 32 | position, position being its index in
// the ranking's concatenation (layer order, then flat index): keys are distinct and order by
// (|w|, layer, index), the CPU's deterministic tie rule. Eight passes of 8 bits, most significant
// first; each pass histograms the digit of the keys that match the prefix found so far
// (radix_histogram, once per weight tensor into one shared histogram), then one thread picks the
// digit holding the k-th key and narrows the prefix (radix_pick). Everything stays on the device:
// no host round trip per pass. Then threshold_mask zeroes every weight whose key ≤ the k-th key.
//
// Structured (GSL/LSL): row_norms scores each output unit (l1 or l2 of its weight row, in f64,
// bit for bit the CPU's scores); the ranking of those few scores happens on the host (one copy
// of all layers' scores), and row_mask expands the pruned units to masks.
//
// The mask multiplies the weight (apply_mask) and its gradient (the masked-gradient rule: the
// gradient of w·m is g·m).

#define BLOCK 256

__device__ __forceinline__ unsigned long long weight_key(float w, unsigned long long pos) {
    return ((unsigned long long)__float_as_uint(fabsf(w)) << 32) | pos;
}

// state = {prefix, prefix mask, k}: the selection so far and the rank (1-based) sought among the
// keys that match the prefix.
extern "C" __global__ void radix_histogram(const float* w, long long n, long long pos_offset,
                                           const unsigned long long* state, int shift,
                                           unsigned int* hist) {
    __shared__ unsigned int local[256];
    local[threadIdx.x] = 0;
    __syncthreads();
    unsigned long long prefix = state[0], mask = state[1];
    for (long long i = blockIdx.x * (long long)BLOCK + threadIdx.x; i < n;
         i += (long long)gridDim.x * BLOCK) {
        unsigned long long key = weight_key(w[i], (unsigned long long)(pos_offset + i));
        if ((key & mask) == prefix) atomicAdd(&local[(key >> shift) & 255ull], 1u);
    }
    __syncthreads();
    if (local[threadIdx.x] != 0) atomicAdd(&hist[threadIdx.x], local[threadIdx.x]);
}

// One thread: find the digit whose bucket holds the k-th key, fix it in the prefix, make k the
// rank within that bucket, and clear the histogram for the next pass.
extern "C" __global__ void radix_pick(unsigned int* hist, unsigned long long* state, int shift) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    unsigned long long k = state[2];
    unsigned long long below = 0;
    int digit = 255;
    for (int d = 0; d < 256; ++d) {
        if (below + hist[d] >= k) { digit = d; break; }
        below += hist[d];
    }
    state[0] |= (unsigned long long)digit << shift;
    state[1] |= 255ull << shift;
    state[2] = k - below;
    for (int d = 0; d < 256; ++d) hist[d] = 0;
}

// mask[i] = 0 where key(w[i]) ≤ threshold (state[0] after the eight passes), else 1.
extern "C" __global__ void threshold_mask(const float* w, long long n, long long pos_offset,
                                          const unsigned long long* state, float* mask) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned long long key = weight_key(w[i], (unsigned long long)(pos_offset + i));
    mask[i] = key <= state[0] ? 0.0f : 1.0f;
}

// Score of each of `rows` weight rows of `row_len` values: Σ|w| (p = 1) or sqrt(Σw²) (p = 2), in
// f64, one thread per row summing in row order: the CPU's sequential f64 sum, bit for bit (|w|
// and w² of an f32 are exact in f64, so the only roundings are the sums', in the same order),
// so units rank exactly as on the CPU, near-ties included. Rows are few (output channels) and
// f64 adds cheap; a layer's rows take tens of microseconds.
extern "C" __global__ void row_norms(const float* w, int rows, long long row_len, int p,
                                     double* scores) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const float* row = w + r * row_len;
    double acc = 0.0;
    for (long long i = 0; i < row_len; ++i) {
        double v = (double)row[i];
        acc = __dadd_rn(acc, p == 1 ? fabs(v) : __dmul_rn(v, v));
    }
    scores[r] = p == 1 ? acc : sqrt(acc);
}

// mask[i] = 0 for every value of a pruned row (pruned[row] != 0), else 1.
extern "C" __global__ void row_mask(const int* pruned, long long n, long long row_len,
                                    float* mask) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    mask[i] = pruned[i / row_len] ? 0.0f : 1.0f;
}

// y = x·mask: the pruned weight in the forward pass, and the masked gradient in the backward.
extern "C" __global__ void apply_mask(const float* x, const float* mask, long long n, float* y) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    y[i] = x[i] * mask[i];
}
