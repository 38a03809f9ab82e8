//! Training: the optimiser and the training step (certified losses and the trainer loop build
//! on these).

pub mod optim;
pub mod step;

pub use optim::{Adam, AdamConfig, StepInfo, WeightDecay};
pub use step::standard_step;
