//! Batch normalisation over the channel axis of [N, C] (BatchNorm1d) or [N, C, H, W]
//! (BatchNorm2d), with PyTorch's defaults (ε = 1e-5, momentum 0.1, unbiased running variance).

use crate::nn::Mode;
use crate::tensor::Tensor;

#[derive(Clone)]
pub struct BatchNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: u64,
    pub eps: f32,
    pub momentum: f32,
    /// 1 for [N, C] inputs, 2 for [N, C, H, W]: the PyTorch class it corresponds to.
    pub spatial_dims: usize,
}

/// A batch's per-channel statistics (differentiable), as used to normalise it.
#[derive(Clone)]
pub struct BatchStats {
    pub mean: Tensor,
    pub var: Tensor,
    /// Values per channel the statistics were taken over (N·H·W), for the unbiased variance.
    pub count: usize,
}

impl BatchNorm {
    pub fn new(channels: usize, spatial_dims: usize) -> BatchNorm {
        BatchNorm {
            weight: Tensor::ones(&[channels]).requires_grad(),
            bias: Tensor::zeros(&[channels]).requires_grad(),
            running_mean: Tensor::zeros(&[channels]),
            running_var: Tensor::ones(&[channels]),
            num_batches_tracked: 0,
            eps: 1e-5,
            momentum: 0.1,
            spatial_dims,
        }
    }

    pub fn channels(&self) -> usize {
        self.weight.dim(0)
    }

    /// The affine map (scale, shift) per channel that this layer applies, given statistics.
    /// Interval bound propagation applies the same map to centres (and |scale| to radii).
    pub fn affine(&self, mean: &Tensor, var: &Tensor) -> (Tensor, Tensor) {
        let scale = self.weight.mul(&var.add_scalar(self.eps).powf(-0.5));
        let shift = self.bias.sub(&mean.mul(&scale));
        (scale, shift)
    }

    /// The statistics of a batch, for training mode.
    pub fn batch_stats(&self, x: &Tensor) -> BatchStats {
        self.check_input(x);
        let mean = x.channel_mean();
        let var = x.channel_var(&mean);
        BatchStats {
            mean,
            var,
            count: x.numel() / x.dim(1).max(1),
        }
    }

    fn check_input(&self, x: &Tensor) {
        let rank_ok = match self.spatial_dims {
            2 => x.rank() == 4,
            _ => x.rank() == 2 || x.rank() == 3,
        };
        assert!(
            rank_ok && x.dim(1) == self.channels(),
            "BatchNorm{}d({}) got input {:?}",
            self.spatial_dims,
            self.channels(),
            x.shape()
        );
    }

    /// Normalise with batch statistics (returned, so callers can reuse or record them).
    pub fn forward_batch(&self, x: &Tensor) -> (Tensor, BatchStats) {
        let stats = self.batch_stats(x);
        let (scale, shift) = self.affine(&stats.mean, &stats.var);
        (x.channel_affine(&scale, &shift), stats)
    }

    /// Normalise with the running statistics.
    pub fn forward_eval(&self, x: &Tensor) -> Tensor {
        self.check_input(x);
        let (scale, shift) = self.affine(&self.running_mean, &self.running_var);
        x.channel_affine(&scale, &shift)
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> (Tensor, Option<BatchStats>) {
        match mode {
            Mode::Train => {
                let (y, s) = self.forward_batch(x);
                (y, Some(s))
            }
            Mode::Eval => (self.forward_eval(x), None),
        }
    }

    /// Fold a batch's statistics into the running ones, as PyTorch does (unbiased variance).
    pub fn update_running_stats(&mut self, stats: &BatchStats, batch_count: usize) {
        let m = self.momentum;
        let unbias = if batch_count > 1 {
            batch_count as f32 / (batch_count - 1) as f32
        } else {
            1.0
        };
        // (1 − m)·running + (m·batch)·factor, each product rounded as the CPU always has, on
        // whichever device the statistics live.
        let blend = |running: &Tensor, batch: &Tensor, factor: f32| {
            running
                .mul_scalar(1.0 - m)
                .add(&batch.detach().mul_scalar(m).mul_scalar(factor))
        };
        self.running_mean = blend(&self.running_mean, &stats.mean, 1.0);
        self.running_var = blend(&self.running_var, &stats.var, unbias);
        self.num_batches_tracked += 1;
    }
}
