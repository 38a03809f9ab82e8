// Launch conventions shared by the kernel files: BLOCK threads per block for 1-D launches, and
// ELEMENT, the grid-stride-free guard of a kernel with one thread per element (index i < n).

#ifndef CACTUS_LAUNCH_CUH
#define CACTUS_LAUNCH_CUH

#define BLOCK 256

#define ELEMENT                                                         \
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;     \
    if (i >= n) return;

#endif   // CACTUS_LAUNCH_CUH
