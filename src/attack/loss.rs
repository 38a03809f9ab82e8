//! Per-sample attack objectives on [N, K] logits (the losses themselves are ops,
//! `ops::loss`), differentiable so that one backward pass of their sum gives every sample's
//! input gradient at once.

pub use crate::ops::loss::{margin_loss, per_sample_cross_entropy};
use crate::tensor::Tensor;

/// What an attack maximises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttackLoss {
    /// Cross-entropy against the true label.
    Ce,
    /// `max_{j≠y} z_j − z_y`: positive exactly when the point is misclassified, and free of
    /// softmax saturation, which makes it the stronger objective for finding adversarial points.
    Margin,
}

impl AttackLoss {
    /// The loss of each sample, shape [N].
    pub fn per_sample(self, logits: &Tensor, labels: &[usize]) -> Tensor {
        match self {
            AttackLoss::Ce => per_sample_cross_entropy(logits, labels),
            AttackLoss::Margin => margin_loss(logits, labels),
        }
    }
}
