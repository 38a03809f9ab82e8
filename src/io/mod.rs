//! Files: crash-safe writes, run folders (one commit point per epoch, one writer at a time)
//! and safetensors checkpoints PyTorch can load.

pub mod atomic;
pub mod canonical;
pub mod checkpoint;
pub mod lock;
pub mod run;
pub mod train_state;

pub use atomic::write_atomic;
pub use checkpoint::{
    checkpoint_bytes, load_checkpoint, load_checkpoint_for, parse_checkpoint, save_checkpoint,
    save_compressed_checkpoint, Checkpoint, StoredWeight,
};
pub use lock::RunLock;
pub use train_state::{
    load_train_state, parse_train_state, save_train_state, train_state_bytes, TrainState,
};
