//! Interval bound propagation through a `Model`, differentiable (the certified losses train
//! through it).
//!
//! Boxes are interval tensors [2, N, ...] (centres, radii; see `ops::interval`) in pixel space;
//! the model's input normalisation is applied to them as its first affine map. Batch norm is
//! the affine map of either the clean batch's statistics (training, Shi et al. 2021) or the
//! running statistics (evaluation). The last linear layer is merged with the specification
//! `z_y − z_j` before bounding ("last-layer elision"), which is tighter than bounding the
//! logits and subtracting.

use crate::nn::{BatchStats, Layer, Model};
use crate::ops::cross_entropy;
pub use crate::ops::interval::enclosing_box;
use crate::tensor::Tensor;

/// Which statistics batch norm uses on boxes.
#[derive(Clone, Copy)]
pub enum BnSource<'a> {
    /// Running statistics (evaluation).
    Running,
    /// The statistics of a clean batch, one per batch-norm layer in order (training).
    Batch(&'a [BatchStats]),
}

/// The box [x − ε, x + ε] ∩ [0, 1] around each input, as an interval tensor.
pub fn input_box(x: &Tensor, eps: f32) -> Tensor {
    let (lo, hi) = box_corners(x, eps);
    enclosing_box(&lo, &hi, x.shape())
}

/// The corners (lower, upper) of the box [x − ε, x + ε] ∩ [0, 1] around each input.
pub fn box_corners(x: &Tensor, eps: f32) -> (Vec<f32>, Vec<f32>) {
    assert!(eps >= 0.0, "negative epsilon {eps}");
    x.data()
        .iter()
        .map(|&v| ((v - eps).clamp(0.0, 1.0), (v + eps).clamp(0.0, 1.0)))
        .unzip()
}

/// Propagate boxes through the normalisation and the first `layers` layers of the network.
pub fn propagate(model: &Model, boxes: &Tensor, bn: BnSource<'_>, layers: usize) -> Tensor {
    let mut s = match &model.spec.normalization {
        None => boxes.clone(),
        Some(n) => {
            let (scale, shift) = n.affine(boxes.device());
            boxes.interval_channel_affine(&scale, &shift)
        }
    };
    let mut bn_index = 0;
    for layer in &model.net.layers[..layers] {
        s = match layer {
            Layer::Linear(l) => s.interval_linear(&l.weight, l.bias.as_ref()),
            Layer::Conv2d(c) => s.interval_conv2d(&c.weight, c.bias.as_ref(), c.params),
            Layer::BatchNorm(b) => {
                let (scale, shift) = match bn {
                    BnSource::Running => b.affine(&b.running_mean, &b.running_var),
                    BnSource::Batch(stats) => {
                        let st = stats.get(bn_index).unwrap_or_else(|| {
                            panic!(
                                "BnSource::Batch has {} statistics, the model needs more",
                                stats.len()
                            )
                        });
                        b.affine(&st.mean, &st.var)
                    }
                };
                bn_index += 1;
                s.interval_channel_affine(&scale, &shift)
            }
            Layer::ReLU => s.interval_relu(),
            Layer::Flatten => s.interval_flatten(),
        };
    }
    s
}

/// Lower bounds of `z_y − z_j` over each box, for every class j ([N, classes], 0 at j = y):
/// the box is certified for label y when every other entry is positive.
pub fn margin_lower_bounds(
    model: &Model,
    boxes: &Tensor,
    labels: &[usize],
    bn: BnSource<'_>,
) -> Tensor {
    let layers = &model.net.layers;
    let Some(Layer::Linear(last)) = layers.last() else {
        panic!("last-layer elision needs a network that ends with a linear layer");
    };
    let hidden = propagate(model, boxes, bn, layers.len() - 1);
    hidden.interval_elided_margins(&last.weight, last.bias.as_ref(), labels)
}

/// The certified loss: cross-entropy over the worst-case logits `−lb(z_y − z_j)` (0 for y).
pub fn ibp_loss(margins: &Tensor, labels: &[usize]) -> Tensor {
    cross_entropy(&margins.neg(), labels)
}

/// Whether each box is certified: every margin lower bound but the label's own is positive.
pub fn certified(margins: &Tensor, labels: &[usize]) -> Vec<bool> {
    certified_rows(margins.data(), labels)
}

/// `certified` on host values: `margins` holds one row of classes per label.
pub fn certified_rows(margins: &[f32], labels: &[usize]) -> Vec<bool> {
    let k = margins.len() / labels.len().max(1);
    margins
        .chunks(k.max(1))
        .zip(labels)
        .map(|(row, &y)| row.iter().enumerate().all(|(j, &m)| j == y || m > 0.0))
        .collect()
}
