//! Log-softmax and cross-entropy over the last axis of [batch, classes] logits, fused and
//! numerically stable (max-shifted).

pub(crate) mod cuda;
pub mod launch;

use crate::ops::gpu;
use crate::tensor::Tensor;

fn check_logits(x: &Tensor) -> (usize, usize) {
    assert_eq!(
        x.rank(),
        2,
        "expected [batch, classes] logits, got {:?}",
        x.shape()
    );
    (x.dim(0), x.dim(1))
}

/// log-softmax of each row.
fn log_softmax_rows(x: &[f32], k: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for (o, row) in out.chunks_mut(k).zip(x.chunks(k)) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
        for (o, v) in o.iter_mut().zip(row) {
            *o = v - lse;
        }
    }
    out
}

/// log-softmax over the classes of each row of [batch, classes].
pub fn log_softmax(x: &Tensor) -> Tensor {
    let (_, k) = check_logits(x);
    if x.is_cuda() {
        return cuda::log_softmax(x);
    }
    let out = log_softmax_rows(x.data(), k);
    let saved = Tensor::from_vec(out.clone(), x.shape());
    Tensor::from_op(out, x.shape(), &[x], move |g, _| {
        // d/dx = g − softmax · Σ g (per row)
        let mut d = vec![0.0; g.numel()];
        for ((d, g), ls) in d
            .chunks_mut(k)
            .zip(g.data().chunks(k))
            .zip(saved.data().chunks(k))
        {
            let total: f32 = g.iter().sum();
            for ((d, g), l) in d.iter_mut().zip(g).zip(ls) {
                *d = g - l.exp() * total;
            }
        }
        vec![Some(Tensor::from_vec(d, saved.shape()))]
    })
}

/// Mean cross-entropy of [batch, classes] logits against class labels.
pub fn cross_entropy(logits: &Tensor, labels: &[usize]) -> Tensor {
    let (n, k) = check_logits(logits);
    assert_eq!(
        labels.len(),
        n,
        "cross_entropy: {n} rows, {} labels",
        labels.len()
    );
    assert!(n > 0, "cross_entropy of an empty batch");
    if let Some(&bad) = labels.iter().find(|&&y| y >= k) {
        panic!("cross_entropy: label {bad} out of range for {k} classes");
    }
    if logits.is_cuda() {
        return cuda::cross_entropy(logits, labels);
    }
    let logp = log_softmax_rows(logits.data(), k);
    let loss = -labels
        .iter()
        .enumerate()
        .map(|(i, &y)| logp[i * k + y] as f64)
        .sum::<f64>()
        / n as f64;
    let labels = labels.to_vec();
    let shape = logits.shape().to_vec();
    Tensor::from_op(vec![loss as f32], &[], &[logits], move |g, _| {
        // d/dz = (softmax − onehot) · g / n
        let scale = g.item() / n as f32;
        let mut d: Vec<f32> = logp.iter().map(|l| l.exp() * scale).collect();
        for (i, &y) in labels.iter().enumerate() {
            d[i * k + y] -= scale;
        }
        vec![Some(Tensor::from_vec(d, &shape))]
    })
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

/// Cross-entropy of each sample, [N] (its mean is [`cross_entropy`]): an attack objective.
pub fn per_sample_cross_entropy(logits: &Tensor, labels: &[usize]) -> Tensor {
    if gpu::on_cuda(&[logits]) {
        assert!(
            logits.rank() == 2 && labels.len() == logits.dim(0),
            "attack losses need [batch, classes] logits and one label per row, got {:?} and {}",
            logits.shape(),
            labels.len()
        );
        if let Some(&bad) = labels.iter().find(|&&y| y >= logits.dim(1)) {
            panic!("label {bad} out of range for {} classes", logits.dim(1));
        }
        return cuda::per_sample_cross_entropy(logits, labels);
    }
    true_logit(&log_softmax(logits), labels).neg()
}

/// `max_{j≠y} z_j − z_y` of each sample, [N]: the margin attack objective, positive exactly
/// when the point is misclassified. Needs at least two classes.
pub fn margin_loss(logits: &Tensor, labels: &[usize]) -> Tensor {
    assert!(
        logits.rank() == 2 && logits.dim(1) >= 2,
        "margin loss needs at least two classes, got logits {:?}",
        logits.shape()
    );
    if gpu::on_cuda(&[logits]) {
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
        return cuda::margin_loss(logits, labels);
    }
    // −∞ at the label (added, not multiplied, so no 0·∞ NaN) removes it from the max.
    let others = logits.add(&label_mask(logits, labels, f32::NEG_INFINITY, 0.0));
    others
        .max_axes(&[1], false)
        .sub(&true_logit(logits, labels))
}
