// Scalar helpers shared by kernel files (kernels/bounds.cu, kernels/train.cu).

#ifndef CACTUS_MATH_CUH
#define CACTUS_MATH_CUH

__device__ __forceinline__ float sign_f(float x) {
    // -1, 0 or 1, and 0 for NaN: the CPU's `sign` (PyTorch's).
    return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f);
}

#endif   // CACTUS_MATH_CUH
