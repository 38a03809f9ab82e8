//! Files: crash-safe writes and safetensors checkpoints PyTorch can load.

pub mod atomic;
pub mod checkpoint;

pub use atomic::write_atomic;
pub use checkpoint::{load_checkpoint, load_checkpoint_for, save_checkpoint, Checkpoint};
