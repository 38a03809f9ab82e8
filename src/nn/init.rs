//! Weight initialisation.

use crate::rng::Rng;
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// PyTorch's default for Linear and Conv2d: weight and bias uniform in ±1/√fan_in
    /// (kaiming_uniform with a = √5).
    #[default]
    Pytorch,
    /// Shi et al. 2021, "Fast certified robust training with short warm-up": weights
    /// N(0, 2π/fan_in²) so that interval widths neither grow nor shrink layer to layer at
    /// initialisation (the last layer keeps the default). Needed by batch-norm nets trained
    /// with interval losses.
    Ibp,
}

impl Init {
    /// PyTorch's default (weight, bias), both leaves that require gradients. Every layer is
    /// drawn this way first; the IBP scheme then redraws the weights it covers.
    pub fn pytorch_default(
        weight_shape: &[usize],
        fan_in: usize,
        rng: &mut Rng,
    ) -> (Tensor, Tensor) {
        let bound = 1.0 / (fan_in as f32).sqrt();
        let w = Tensor::rand_uniform(weight_shape, -bound, bound, rng);
        let b = Tensor::rand_uniform(&weight_shape[..1], -bound, bound, rng);
        (w.requires_grad(), b.requires_grad())
    }

    /// The IBP initialisation of one weight tensor with this fan-in.
    pub fn ibp_weight(weight_shape: &[usize], fan_in: usize, rng: &mut Rng) -> Tensor {
        let std = (2.0 * std::f32::consts::PI).sqrt() / fan_in as f32;
        Tensor::randn(weight_shape, 0.0, std, rng).requires_grad()
    }
}
