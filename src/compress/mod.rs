//! Compression of a trained network: magnitude pruning (`prune`) and fake quantization of
//! weights (`quant`). Conv and linear weights only; biases and batch norm stay as they are.

pub mod prune;
pub mod quant;
