//! What runs ops, knowing none of them: the CPU side (threads, the packed GEMM, the allocator)
//! and the CUDA side (device, buffers, NVRTC, the kernel cache, launching), with the shape
//! arithmetic both share, and the memory limit that every size read from a file is checked
//! against before it is allocated (`memory`). Nothing here imports from above: ops, losses,
//! optimisers and compressors build on it.

pub mod cpu;
pub mod cuda;
pub mod memory;
pub mod shape;
