//! One layer of a sequential network. A closed set (an enum, not trait objects), so that bound
//! propagation, pruning and export can match on the layer kind.

use crate::nn::{BatchNorm, Conv2d, Linear, Mode};
use crate::tensor::Tensor;

#[derive(Clone)]
pub enum Layer {
    Linear(Linear),
    Conv2d(Conv2d),
    BatchNorm(BatchNorm),
    ReLU,
    Flatten,
}

impl Layer {
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        match self {
            Layer::Linear(l) => l.forward(x),
            Layer::Conv2d(c) => c.forward(x),
            Layer::BatchNorm(bn) => bn.forward(x, mode).0,
            Layer::ReLU => x.relu(),
            Layer::Flatten => x.flatten(),
        }
    }

    /// A one-line description, the same for two layers exactly when their parameters have the
    /// same shapes and meaning (used to check that a checkpoint fits an architecture).
    pub fn describe(&self) -> String {
        match self {
            Layer::Linear(l) => format!(
                "Linear({}, {}, bias={})",
                l.in_features(),
                l.out_features(),
                l.bias.is_some()
            ),
            Layer::Conv2d(c) => {
                let (kh, kw) = c.kernel();
                format!(
                    "Conv2d({}, {}, kernel={kh}x{kw}, stride={}x{}, padding={}x{}, bias={})",
                    c.in_channels(),
                    c.out_channels(),
                    c.params.stride.0,
                    c.params.stride.1,
                    c.params.padding.0,
                    c.params.padding.1,
                    c.bias.is_some()
                )
            }
            Layer::BatchNorm(bn) => format!("BatchNorm{}d({})", bn.spatial_dims, bn.channels()),
            Layer::ReLU => "ReLU".into(),
            Layer::Flatten => "Flatten".into(),
        }
    }

    /// The weight of a conv or linear layer: what pruning and quantization compress.
    pub fn weight(&self) -> Option<&Tensor> {
        match self {
            Layer::Linear(l) => Some(&l.weight),
            Layer::Conv2d(c) => Some(&c.weight),
            Layer::BatchNorm(_) | Layer::ReLU | Layer::Flatten => None,
        }
    }

    pub fn weight_mut(&mut self) -> Option<&mut Tensor> {
        match self {
            Layer::Linear(l) => Some(&mut l.weight),
            Layer::Conv2d(c) => Some(&mut c.weight),
            Layer::BatchNorm(_) | Layer::ReLU | Layer::Flatten => None,
        }
    }

    /// Trainable tensors with their PyTorch names within the layer.
    pub fn parameters(&self) -> Vec<(&'static str, &Tensor)> {
        match self {
            Layer::Linear(Linear { weight, bias }) | Layer::Conv2d(Conv2d { weight, bias, .. }) => {
                let mut p = vec![("weight", weight)];
                p.extend(bias.as_ref().map(|b| ("bias", b)));
                p
            }
            Layer::BatchNorm(bn) => vec![("weight", &bn.weight), ("bias", &bn.bias)],
            Layer::ReLU | Layer::Flatten => vec![],
        }
    }

    pub fn parameters_mut(&mut self) -> Vec<(&'static str, &mut Tensor)> {
        match self {
            Layer::Linear(Linear { weight, bias }) | Layer::Conv2d(Conv2d { weight, bias, .. }) => {
                let mut p = vec![("weight", weight)];
                p.extend(bias.as_mut().map(|b| ("bias", b)));
                p
            }
            Layer::BatchNorm(bn) => vec![("weight", &mut bn.weight), ("bias", &mut bn.bias)],
            Layer::ReLU | Layer::Flatten => vec![],
        }
    }
}
