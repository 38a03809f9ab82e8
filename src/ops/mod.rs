//! Tensor operations, one module per family. Each op computes its result on the CPU backend and
//! records its backward (see `autodiff`); gradients are checked against finite differences in
//! `tests/gradcheck.rs`.

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
