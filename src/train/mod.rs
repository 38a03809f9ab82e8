//! Training: the optimiser (losses, schedules and the trainer loop come with certified training).

pub mod optim;

pub use optim::{Adam, AdamConfig, WeightDecay};
