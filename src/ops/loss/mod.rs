//! Log-softmax and cross-entropy over the last axis of [batch, classes] logits, fused and
//! numerically stable (max-shifted).

pub(crate) mod cuda;
pub mod launch;

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
