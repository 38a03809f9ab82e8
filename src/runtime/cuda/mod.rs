//! The CUDA runtime: our kernels (the `.cu` files beside each op, embedded at build time),
//! compiled at run time by NVRTC for the device's compute capability and launched through
//! `cudarc`'s driver API.
//!
//! - `nvrtc`: compile one kernel module to a CUBIN for an `sm_XX` architecture, with NVRTC's log
//!   on failure (also used without a GPU, to check every kernel in CI).
//! - `context`: the process-wide device (one context and stream), probed before use so that a
//!   machine without a driver gets a clear error; each module compiled once and cached with its
//!   functions.
//! - `kernel_cache`: compiled modules kept on disk, so that later processes skip NVRTC.
//! - `buffer`: device buffers of any element type from a caching pool, so steady-state work does
//!   not call the driver's allocator.
//! - `launch`: the one launch macro and the size checks every launch wrapper shares;
//!   `strided`: the layout arithmetic of shape-general kernels; `tiles`: the output tile shape
//!   of each GEMM-shaped launch; `profile`: per-scope GPU timings.
//!
//! Nothing here is needed on a CPU-only machine: every entry point checks for the driver (and
//! NVRTC) first and returns an error naming what is missing.

pub mod buffer;
pub mod context;
pub mod kernel_cache;
pub mod launch;
pub mod nvrtc;
pub mod profile;
pub mod strided;
pub mod tiles;

pub use buffer::{DeviceBuffer, DeviceVec};
pub use context::{cuda, device_or_skip, driver_available, grid_1d, CudaBackend};
pub use nvrtc::{compile_module, nvrtc_available, KernelModule};
pub use tiles::{KernelShapes, Tiles};

include!(concat!(env!("OUT_DIR"), "/kernel_sources.rs"));
