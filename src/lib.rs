//! cactus: certified training of neural networks that stay certified after compression.
//!
//! The crate is a small tensor engine with reverse-mode autodiff (`runtime`, `tensor`, `ops`,
//! `autodiff`), neural-network layers and models (`nn`), the optimiser (`train`) and
//! checkpoints PyTorch can load (`io`).

pub mod attack;
pub mod autodiff;
pub mod bounds;
pub mod compress;
pub mod data;
pub mod error;
pub mod eval;
pub mod io;
pub mod nn;
pub mod ops;
pub mod rng;
pub mod runtime;
pub mod tensor;
pub mod train;
pub mod verify;

pub use error::{Error, Result};
pub use tensor::{Device, Tensor};
