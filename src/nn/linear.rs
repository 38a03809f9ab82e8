//! Fully connected layer, weight [out, in] as in PyTorch.

use crate::nn::init::Init;
use crate::rng::Rng;
use crate::tensor::Tensor;

#[derive(Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(in_features: usize, out_features: usize, rng: &mut Rng) -> Linear {
        let (weight, bias) = Init::pytorch_default(&[out_features, in_features], in_features, rng);
        Linear {
            weight,
            bias: Some(bias),
        }
    }

    pub fn in_features(&self) -> usize {
        self.weight.dim(1)
    }

    pub fn out_features(&self) -> usize {
        self.weight.dim(0)
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}
