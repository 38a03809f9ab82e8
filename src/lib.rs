//! cactus: certified training of neural networks that stay certified after compression.
//!
//! Layers, bottom first (each imports only the ones below it; `tests/layering.rs` checks):
//! - `runtime`: what runs ops, knowing none of them (CPU threads and GEMM; the CUDA device,
//!   buffers, NVRTC and launches);
//! - `tensor`: the tensor, its storage and the graph it carries;
//! - `ops`: the operations, one folder per family with its CPU path, GPU path and kernels;
//! - `autodiff`: backward over the recorded graph;
//! - `nn` (layers and models), `data`, `bounds` (interval bound propagation);
//! - `io` (checkpoints PyTorch can load), `onnx` (networks for other verifiers and runtimes,
//!   written and read), `vnnlib` (VNN-LIB properties, read and written),
//!   `attack` (PGD, AWP), `compress` (pruning and quantization);
//! - `train` (IBP, SABR and CACTUS training), `verify` (CROWN, α-CROWN, branch and bound);
//! - `eval` (the evaluation grid and its reports).

pub mod attack;
pub mod autodiff;
pub mod bounds;
pub mod compress;
pub mod data;
pub mod error;
pub mod eval;
pub mod io;
pub mod nn;
pub mod onnx;
pub mod ops;
pub mod rng;
pub mod runtime;
pub mod tensor;
pub mod train;
pub mod verify;
pub mod vnnlib;

pub use error::{Error, Result};
pub use tensor::{Device, Tensor};
