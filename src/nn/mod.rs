//! Layers, the `Sequential` container and the named models (`mlp`, `small`, `cnn7`).

pub mod batchnorm;
pub mod conv;
pub mod fold;
pub mod init;
pub mod layer;
pub mod linear;
pub mod models;
pub mod sequential;

pub use batchnorm::{BatchNorm, BatchStats};
pub use conv::Conv2d;
pub use init::Init;
pub use layer::Layer;
pub use linear::Linear;
pub use models::{Arch, LayerPlan, Model, ModelSpec, Normalization};
pub use sequential::Sequential;

/// How a forward pass treats batch norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Normalise with the batch's statistics (and, through `forward_train`, update the running ones).
    Train,
    /// Normalise with the running statistics.
    Eval,
}
