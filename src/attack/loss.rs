//! Per-sample attack objectives on [N, K] logits, built from differentiable ops so that one
//! backward pass of their sum gives every sample's input gradient at once.

use crate::ops::log_softmax;
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

/// Row-wise one-hot of `labels` with `hit` at the label and `miss` elsewhere, [N, K].
fn label_mask(logits: &Tensor, labels: &[usize], hit: f32, miss: f32) -> Tensor {
    assert_eq!(
        logits.rank(),
        2,
        "attack losses need [batch, classes] logits, got {:?}",
        logits.shape()
    );
    let (n, k) = (logits.dim(0), logits.dim(1));
    assert_eq!(
        labels.len(),
        n,
        "{n} rows of logits, {} labels",
        labels.len()
    );
    let mut mask = vec![miss; n * k];
    for (row, &y) in mask.chunks_mut(k).zip(labels) {
        assert!(y < k, "label {y} out of range for {k} classes");
        row[y] = hit;
    }
    Tensor::from_vec(mask, &[n, k])
}

/// `z_y` of each row, [N].
fn true_logit(logits: &Tensor, labels: &[usize]) -> Tensor {
    logits
        .mul(&label_mask(logits, labels, 1.0, 0.0))
        .sum_axes(&[1], false)
}

/// Cross-entropy of each sample, [N] (its mean is `ops::cross_entropy`).
pub fn per_sample_cross_entropy(logits: &Tensor, labels: &[usize]) -> Tensor {
    if logits.is_cuda() {
        assert!(
            logits.rank() == 2 && labels.len() == logits.dim(0),
            "attack losses need [batch, classes] logits and one label per row, got {:?} and {}",
            logits.shape(),
            labels.len()
        );
        if let Some(&bad) = labels.iter().find(|&&y| y >= logits.dim(1)) {
            panic!("label {bad} out of range for {} classes", logits.dim(1));
        }
        return crate::ops::loss::cuda::per_sample_cross_entropy(logits, labels);
    }
    true_logit(&log_softmax(logits), labels).neg()
}

/// `max_{j≠y} z_j − z_y` of each sample, [N]. Needs at least two classes.
pub fn margin_loss(logits: &Tensor, labels: &[usize]) -> Tensor {
    assert!(
        logits.rank() == 2 && logits.dim(1) >= 2,
        "margin loss needs at least two classes, got logits {:?}",
        logits.shape()
    );
    if logits.is_cuda() {
        assert_eq!(
            labels.len(),
            logits.dim(0),
            "{} rows of logits, {} labels",
            logits.dim(0),
            labels.len()
        );
        if let Some(&bad) = labels.iter().find(|&&y| y >= logits.dim(1)) {
            panic!("label {bad} out of range for {} classes", logits.dim(1));
        }
        return crate::ops::loss::cuda::margin_loss(logits, labels);
    }
    // −∞ at the label (added, not multiplied, so no 0·∞ NaN) removes it from the max.
    let others = logits.add(&label_mask(logits, labels, f32::NEG_INFINITY, 0.0));
    others
        .max_axes(&[1], false)
        .sub(&true_logit(logits, labels))
}
