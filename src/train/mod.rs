//! Training: the optimiser, the losses (standard, IBP, SABR, CACTUS) and their schedule, and the
//! trainer loop with resumable state.

pub mod cactus;
pub mod losses;
pub mod optim;
pub mod schedule;
pub mod split;
pub mod step;
pub mod trainer;

pub use cactus::{
    cactus_loss, cactus_loss_cached, CactusConfig, CompressKind, CompressionSet, Progress,
    SetCache, Strategy,
};
pub use losses::{
    batch_loss, ibp_cert_loss, network_loss, sabr_box, sabr_centre, sabr_cert_loss,
    sabr_cert_loss_at, BatchLoss, Method,
};
pub use optim::{Adam, AdamConfig, StepInfo, WeightDecay};
pub use schedule::{Phase, Schedule};
pub use step::standard_step;
pub use trainer::{EpochRecord, TrainConfig, Trainer};
