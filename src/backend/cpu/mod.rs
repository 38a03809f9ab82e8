//! The CPU backend: rayon threads, a packed GEMM, and im2col convolution.

pub mod allocator;
pub mod conv;
pub mod gemm;
pub mod parallel;
