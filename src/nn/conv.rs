//! 2-D convolution layer, weight [out, in, kh, kw] as in PyTorch.

use crate::nn::init::Init;
use crate::ops::Conv2dParams;
use crate::rng::Rng;
use crate::tensor::Tensor;

#[derive(Clone)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub params: Conv2dParams,
}

impl Conv2d {
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        params: Conv2dParams,
        rng: &mut Rng,
    ) -> Conv2d {
        let fan_in = in_channels * kernel * kernel;
        let (weight, bias) =
            Init::pytorch_default(&[out_channels, in_channels, kernel, kernel], fan_in, rng);
        Conv2d {
            weight,
            bias: Some(bias),
            params,
        }
    }

    pub fn in_channels(&self) -> usize {
        self.weight.dim(1)
    }

    pub fn out_channels(&self) -> usize {
        self.weight.dim(0)
    }

    pub fn kernel(&self) -> (usize, usize) {
        (self.weight.dim(2), self.weight.dim(3))
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(&self.weight, self.bias.as_ref(), self.params)
    }
}
