//! A model as the verifiers see it: a chain of affine steps and ReLUs on pixel inputs, with the
//! classifier kept apart so that the specification `z_y − z_j` can be merged into it.
//!
//! The input normalisation and batch norm (evaluation form, running statistics) are per-channel
//! affine steps; linear and convolution layers keep their weights. Every step knows the
//! per-sample shape of its input, which the backward (linear-bound) pass needs to undo flatten
//! and strided convolutions.

use crate::nn::{Layer, Model};
use crate::ops::Conv2dParams;
use crate::tensor::{Device, Tensor};
use crate::{Error, Result};

/// One step of the chain.
#[derive(Clone)]
pub(crate) enum Step {
    /// `y = x·scale[c] + shift[c]` along the channel axis (normalisation, batch norm).
    ChannelAffine {
        scale: Tensor,
        shift: Tensor,
    },
    Linear {
        weight: Tensor,
        bias: Option<Tensor>,
    },
    Conv {
        weight: Tensor,
        bias: Option<Tensor>,
        params: Conv2dParams,
    },
    Flatten,
    Relu,
}

impl Step {
    fn is_affine_layer(&self) -> bool {
        matches!(self, Step::Linear { .. } | Step::Conv { .. })
    }
}

/// The chain of a model, up to (not including) its classifier.
#[derive(Clone)]
pub struct BoundNet {
    pub(crate) steps: Vec<Step>,
    /// Per-sample shape of each step's input; `shapes[steps.len()]` is the classifier's input.
    pub(crate) shapes: Vec<Vec<usize>>,
    /// Step indices of the ReLUs, in order.
    pub(crate) relus: Vec<usize>,
    /// The classifier `[classes, hidden]` and its bias `[classes]`.
    pub(crate) last_weight: Tensor,
    pub(crate) last_bias: Tensor,
    pub(crate) device: Device,
}

impl BoundNet {
    /// The chain of `model` (batch norm with its running statistics). An error for a network
    /// that does not end with a linear classifier.
    pub fn new(model: &Model) -> Result<BoundNet> {
        let layers = &model.net.layers;
        let Some(Layer::Linear(last)) = layers.last() else {
            return Err(Error::Invalid(
                "verification needs a network that ends with a linear layer".into(),
            ));
        };
        let device = last.weight.device();
        let mut steps = Vec::new();
        if let Some(n) = &model.spec.normalization {
            let (scale, shift) = n.affine(device);
            steps.push(Step::ChannelAffine { scale, shift });
        }
        for layer in &layers[..layers.len() - 1] {
            steps.push(match layer {
                Layer::Linear(l) => Step::Linear {
                    weight: l.weight.detach(),
                    bias: l.bias.as_ref().map(Tensor::detach),
                },
                Layer::Conv2d(c) => Step::Conv {
                    weight: c.weight.detach(),
                    bias: c.bias.as_ref().map(Tensor::detach),
                    params: c.params,
                },
                Layer::BatchNorm(b) => {
                    let (scale, shift) = b.affine(&b.running_mean, &b.running_var);
                    Step::ChannelAffine {
                        scale: scale.detach(),
                        shift: shift.detach(),
                    }
                }
                Layer::ReLU => Step::Relu,
                Layer::Flatten => Step::Flatten,
            });
        }
        let mut shapes = vec![model.spec.input_shape.to_vec()];
        for step in &steps {
            let s = shapes.last().expect("starts with the input shape");
            let next = match step {
                Step::ChannelAffine { .. } | Step::Relu => s.clone(),
                Step::Flatten => vec![s.iter().product()],
                Step::Linear { weight, .. } => {
                    if s.len() != 1 || s[0] != weight.dim(1) {
                        return Err(Error::Shape(format!(
                            "a linear layer of {} inputs after a {s:?} activation",
                            weight.dim(1)
                        )));
                    }
                    vec![weight.dim(0)]
                }
                Step::Conv { weight, params, .. } => {
                    if s.len() != 3 || s[0] != weight.dim(1) {
                        return Err(Error::Shape(format!(
                            "a convolution of {} channels after a {s:?} activation",
                            weight.dim(1)
                        )));
                    }
                    let (oh, ow) = params.output_hw(s[1], s[2], weight.dim(2), weight.dim(3));
                    vec![weight.dim(0), oh, ow]
                }
            };
            shapes.push(next);
        }
        let hidden = shapes.last().expect("non-empty");
        if hidden.len() != 1 || hidden[0] != last.in_features() {
            return Err(Error::Shape(format!(
                "the classifier takes {} inputs, the layers before it give {hidden:?}",
                last.in_features()
            )));
        }
        let relus = (0..steps.len())
            .filter(|&i| matches!(steps[i], Step::Relu))
            .collect();
        let classes = last.out_features();
        Ok(BoundNet {
            steps,
            shapes,
            relus,
            last_weight: last.weight.detach(),
            last_bias: last
                .bias
                .as_ref()
                .map_or_else(|| Tensor::zeros(&[classes]), Tensor::detach)
                .to_device(device)?,
            device,
        })
    }

    pub fn classes(&self) -> usize {
        self.last_weight.dim(0)
    }

    /// Per-sample input shape `[c, h, w]`.
    pub fn input_shape(&self) -> &[usize] {
        &self.shapes[0]
    }

    /// Number of ReLU layers.
    pub fn relu_count(&self) -> usize {
        self.relus.len()
    }

    /// Neurons of the `k`-th ReLU layer (per sample).
    pub fn relu_size(&self, k: usize) -> usize {
        self.shapes[self.relus[k]].iter().product()
    }

    /// Per-sample shape at the `k`-th ReLU's input.
    pub fn relu_shape(&self, k: usize) -> &[usize] {
        &self.shapes[self.relus[k]]
    }

    /// The largest per-sample activation anywhere in the chain (sizes the memory of a row of
    /// linear-bound coefficients).
    pub fn widest(&self) -> usize {
        self.shapes
            .iter()
            .map(|s| s.iter().product::<usize>())
            .max()
            .unwrap_or(1)
    }

    /// Sum of the per-sample activation sizes (the memory of a row through the whole chain).
    pub fn total_width(&self) -> usize {
        self.shapes
            .iter()
            .map(|s| s.iter().product::<usize>())
            .sum()
    }

    /// Whether the `k`-th ReLU's input is a single affine layer of the input (up to per-channel
    /// affine maps and flatten): then interval propagation is already its exact range and a
    /// linear bound adds nothing.
    pub fn relu_input_is_one_layer(&self, k: usize) -> bool {
        let end = self.relus[k];
        let start = if k == 0 { 0 } else { self.relus[k - 1] + 1 };
        k == 0
            && self.steps[start..end]
                .iter()
                .filter(|s| s.is_affine_layer())
                .count()
                <= 1
    }

    /// `t` on this network's device.
    pub(crate) fn on_device(&self, t: Tensor) -> Tensor {
        t.to_device(self.device)
            .unwrap_or_else(|e| panic!("uploading verification constants failed: {e}"))
    }
}
