//! Compute backends. `cpu` is the reference implementation of every op; `cuda` runs our
//! NVRTC-compiled kernels on an NVIDIA GPU.

pub mod cpu;
pub mod cuda;

include!(concat!(env!("OUT_DIR"), "/kernel_sources.rs"));
