//! Batch norm folded into the layer before it, for inference-mode passes that run many times
//! on fixed weights (PGD's steps). In eval mode a batch norm is the per-channel affine map
//! `y = s·x + t` with `s = γ/√(var + eps)` and `t = β − s·mean`; after a conv or linear layer
//! `x = W·h + b` it becomes the layer `(s·W)·h + (s·b + t)`: one pass instead of two, forward
//! and backward. The folded network computes the same function up to f32 rounding (the scale
//! is applied to the weights instead of the outputs), so it is used where rounding-level
//! changes are harmless (an attack's search) and never for bounds or reported logits.

use crate::autodiff;
use crate::nn::{BatchNorm, Layer, Model};
use crate::tensor::Tensor;

impl Model {
    /// A detached copy in which every batch norm that directly follows a conv or linear layer
    /// is folded into it (with its running statistics, i.e. for `Mode::Eval` only); other
    /// batch norms are kept. The copy's `forward(_, Mode::Eval)` equals this model's up to
    /// rounding; its layers no longer match the architecture (do not save or certify it).
    pub fn with_batchnorm_folded(&self) -> Model {
        let _guard = autodiff::no_grad();
        let mut folded = self.detached();
        let mut layers: Vec<Layer> = Vec::with_capacity(folded.net.layers.len());
        for layer in folded.net.layers.drain(..) {
            match (layers.last_mut(), layer) {
                (Some(prev @ (Layer::Conv2d(_) | Layer::Linear(_))), Layer::BatchNorm(bn)) => {
                    fold_into(prev, &bn)
                }
                (_, layer) => layers.push(layer),
            }
        }
        folded.net.layers = layers;
        folded
    }
}

/// `prev` (a conv or linear layer) followed by `bn` in eval mode, as one layer.
fn fold_into(prev: &mut Layer, bn: &BatchNorm) {
    let (scale, shift) = bn.affine(&bn.running_mean, &bn.running_var);
    let (scale, shift) = (scale.to_vec(), shift.to_vec());
    let (weight, bias) = match prev {
        Layer::Conv2d(c) => (&mut c.weight, &mut c.bias),
        Layer::Linear(l) => (&mut l.weight, &mut l.bias),
        _ => unreachable!("only conv and linear layers take a batch norm"),
    };
    let device = weight.device();
    let out = weight.dim(0);
    assert_eq!(
        out,
        scale.len(),
        "batch norm's channels and the layer's outputs differ"
    );
    let mut w = weight.to_vec();
    for (row, &s) in w.chunks_exact_mut(weight.numel() / out).zip(&scale) {
        row.iter_mut().for_each(|v| *v *= s);
    }
    let b_old = bias.as_ref().map_or_else(|| vec![0.0; out], |b| b.to_vec());
    let b: Vec<f32> = b_old
        .iter()
        .zip(scale.iter().zip(&shift))
        .map(|(&b, (&s, &t))| s * b + t)
        .collect();
    let on_device = |t: Tensor| {
        t.to_device(device)
            .unwrap_or_else(|e| panic!("folding batch norm: copying to {device:?}: {e}"))
    };
    *weight = on_device(Tensor::from_vec(w, weight.shape()));
    *bias = Some(on_device(Tensor::from_vec(b, &[out])));
}

#[cfg(test)]
mod tests {
    use crate::nn::{Arch, Layer, Mode, Model, ModelSpec};
    use crate::rng::Rng;
    use crate::tensor::Tensor;

    /// cnn7 (conv and linear layers followed by batch norm) with running statistics and
    /// affine parameters away from their initial values.
    fn trained_looking_cnn7() -> Model {
        let mut rng = Rng::seed(4);
        let mut spec = ModelSpec::new(Arch::Cnn7, [1, 12, 12], 10);
        spec.width = 0.25;
        let mut model = Model::new(spec, &mut rng).unwrap();
        for layer in &mut model.net.layers {
            if let Layer::BatchNorm(bn) = layer {
                let c = bn.channels();
                let mut draw = |lo: f32, hi: f32| {
                    let v: Vec<f32> = (0..c).map(|_| lo + (hi - lo) * rng.uniform()).collect();
                    Tensor::from_vec(v, &[c])
                };
                bn.weight = draw(-2.0, 2.0);
                bn.bias = draw(-1.0, 1.0);
                bn.running_mean = draw(-0.5, 0.5);
                bn.running_var = draw(0.05, 3.0);
            }
        }
        model
    }

    #[test]
    fn the_folded_network_computes_the_eval_mode_function() {
        let model = trained_looking_cnn7();
        let folded = model.with_batchnorm_folded();
        let bns = |m: &Model| {
            m.net
                .layers
                .iter()
                .filter(|l| matches!(l, Layer::BatchNorm(_)))
                .count()
        };
        assert!(bns(&model) > 0);
        assert_eq!(
            bns(&folded),
            0,
            "every batch norm follows a conv or linear layer"
        );
        let x = Tensor::rand_uniform(&[5, 1, 12, 12], 0.0, 1.0, &mut Rng::seed(9));
        let a = model.forward(&x, Mode::Eval).to_vec();
        let b = folded.forward(&x, Mode::Eval).to_vec();
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            // Rounding only: the scale multiplies the weights instead of the outputs.
            assert!((p - q).abs() <= 1e-4 * scale, "logit {i}: {p} vs {q}");
        }
        // The original is untouched.
        assert_eq!(bns(&model), bns(&trained_looking_cnn7()));
    }

    #[test]
    fn a_batch_norm_without_a_layer_before_it_is_kept() {
        let mut model = trained_looking_cnn7();
        let first_bn = model
            .net
            .layers
            .iter()
            .position(|l| matches!(l, Layer::BatchNorm(_)))
            .unwrap();
        // Put a ReLU between the first conv and its batch norm.
        model.net.layers.insert(first_bn, Layer::ReLU);
        let folded = model.with_batchnorm_folded();
        assert!(matches!(
            folded.net.layers[first_bn + 1],
            Layer::BatchNorm(_)
        ));
        let x = Tensor::rand_uniform(&[3, 1, 12, 12], 0.0, 1.0, &mut Rng::seed(2));
        let a = model.forward(&x, Mode::Eval).to_vec();
        let b = folded.forward(&x, Mode::Eval).to_vec();
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() <= 1e-4 * scale));
    }
}
