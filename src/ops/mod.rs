//! Tensor operations, one folder per family: `mod.rs` holds the API, the checks, the CPU
//! path, the recorded backward and the one place that asks where the inputs live; `cuda.rs`
//! the GPU path of the same ops; `launch.rs` the safe launch wrappers of the family's kernels
//! (`<family>.cu`, beside them); `cpu.rs`, where a family has one, its CPU kernels. `gpu`
//! holds the device plumbing every family shares. Families import only lower ones
//! (`elementwise` is the lowest; `tests/layering.rs` checks there is no cycle); gradients are
//! checked against finite differences in `tests/gradcheck.rs` and every GPU path against the
//! CPU in `tests/cuda_*.rs`.

pub mod conv;
pub mod elementwise;
pub(crate) mod gpu;
pub mod interval;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod shape;

pub use conv::Conv2dParams;
pub use loss::{cross_entropy, log_softmax};
