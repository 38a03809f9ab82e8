//! Files: crash-safe writes and safetensors checkpoints PyTorch can load.

pub mod atomic;
pub mod checkpoint;
pub mod train_state;

pub use atomic::write_atomic;
pub use checkpoint::{
    checkpoint_bytes, load_checkpoint, load_checkpoint_for, parse_checkpoint, save_checkpoint,
    save_compressed_checkpoint, Checkpoint,
};
pub use train_state::{load_train_state, save_train_state, TrainState};
