//! What runs ops, knowing none of them: the CPU side (threads, the packed GEMM, the allocator)
//! and the CUDA side (device, buffers, NVRTC, the kernel cache, launching), with the shape
//! arithmetic both share. Nothing here imports from above: ops, losses, optimisers and
//! compressors build on it.

pub mod cpu;
pub mod cuda;
pub mod shape;
