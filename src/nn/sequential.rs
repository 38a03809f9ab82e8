//! A chain of layers, named like PyTorch's `nn.Sequential` (`0.weight`, `1.running_mean`, ...).

use crate::nn::{BatchStats, Layer, Mode};
use crate::tensor::Tensor;

#[derive(Clone, Default)]
pub struct Sequential {
    pub layers: Vec<Layer>,
}

impl Sequential {
    pub fn new(layers: Vec<Layer>) -> Sequential {
        Sequential { layers }
    }

    /// Forward pass. In `Mode::Train` batch norm uses batch statistics but leaves its running
    /// statistics alone (use `forward_train` to update them).
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        self.layers
            .iter()
            .fold(x.clone(), |h, layer| layer.forward(&h, mode))
    }

    /// Training-mode forward pass that also updates batch norm's running statistics.
    pub fn forward_train(&mut self, x: &Tensor) -> Tensor {
        self.forward_batch_stats(x, true).0
    }

    /// Training-mode forward pass that returns the batch statistics each batch-norm layer used
    /// (in layer order), so interval bounds can reuse the clean batch's affine maps. With
    /// `update_running`, the running statistics are updated too.
    pub fn forward_batch_stats(
        &mut self,
        x: &Tensor,
        update_running: bool,
    ) -> (Tensor, Vec<BatchStats>) {
        let mut h = x.clone();
        let mut all = Vec::new();
        for layer in &mut self.layers {
            h = match layer {
                Layer::BatchNorm(bn) => {
                    let (y, stats) = bn.forward_batch(&h);
                    if update_running {
                        bn.update_running_stats(&stats, stats.count);
                    }
                    all.push(stats);
                    y
                }
                other => other.forward(&h, Mode::Train),
            };
        }
        (h, all)
    }

    /// Trainable tensors with their PyTorch `state_dict` names, in a fixed order.
    pub fn named_parameters(&self) -> Vec<(String, &Tensor)> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| {
                l.parameters()
                    .into_iter()
                    .map(move |(n, t)| (format!("{i}.{n}"), t))
            })
            .collect()
    }

    /// The same tensors as `named_parameters`, in the same order, for the optimiser.
    pub fn parameters_mut(&mut self) -> Vec<&mut Tensor> {
        self.layers
            .iter_mut()
            .flat_map(|l| l.parameters_mut().into_iter().map(|(_, t)| t))
            .collect()
    }

    pub fn num_parameters(&self) -> usize {
        self.named_parameters().iter().map(|(_, t)| t.numel()).sum()
    }

    pub fn describe(&self) -> Vec<String> {
        self.layers.iter().map(Layer::describe).collect()
    }
}
