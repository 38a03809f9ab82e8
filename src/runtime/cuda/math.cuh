// Scalar helpers shared by kernel files (the ops' and training's `.cu` files).

#ifndef CACTUS_MATH_CUH
#define CACTUS_MATH_CUH

// ±∞ by their bits: NVRTC has no math headers, so no INFINITY macro.
#define POS_INF __int_as_float(0x7f800000)
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float sign_f(float x) {
    // -1, 0 or 1, and 0 for NaN: the CPU's `sign` (PyTorch's).
    return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f);
}

#endif   // CACTUS_MATH_CUH
