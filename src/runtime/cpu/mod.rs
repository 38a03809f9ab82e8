//! The CPU runtime: rayon threads (`parallel`), a packed GEMM (`gemm`) and the allocator
//! setting that keeps freed memory for reuse (`allocator`).

pub mod allocator;
pub mod gemm;
pub mod parallel;
