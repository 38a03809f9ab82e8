//! Launch wrappers for `norm.cu` (`ops::norm`, `nn::BatchNorm`): `channel_mean`, the biased
//! `channel_var` and their joint backward (`batch_stats_backward`), and the normalise-and-affine
//! map `y = x·scale + shift` (scale = γ/√(var + ε), shift = β − mean·scale) with the gradients
//! of x, γ, β, mean and var. Statistics are one block per channel with sums in double.

use crate::runtime::cuda::buffer::DeviceBuffer;
use crate::runtime::cuda::context::grid_1d;
use crate::runtime::cuda::launch::{as_i32, as_i64, check_len, launch, per_channel};
use crate::{Error, Result};

/// The kernel module these wrappers launch.
const MODULE: &str = "norm";

/// A tensor [batch, channels, ...] read as batch × channels × spatial (the product of the
/// trailing axes; 1 for [N, C]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelDims {
    pub batch: usize,
    pub channels: usize,
    pub spatial: usize,
}

impl ChannelDims {
    /// [N, C, ...] of `shape` (rank ≥ 2).
    pub fn of_shape(shape: &[usize]) -> Result<ChannelDims> {
        if shape.len() < 2 {
            return Err(Error::Shape(format!(
                "per-channel op needs [N, C, ...], got {shape:?}"
            )));
        }
        Ok(ChannelDims {
            batch: shape[0],
            channels: shape[1],
            spatial: shape[2..].iter().product(),
        })
    }

    /// batch·channels·spatial (saturating: an impossible size then fails the length checks
    /// instead of overflowing).
    pub fn numel(&self) -> usize {
        self.batch
            .saturating_mul(self.channels)
            .saturating_mul(self.spatial)
    }

    /// Values per channel.
    pub fn count(&self) -> usize {
        self.batch.saturating_mul(self.spatial)
    }

    /// (n as int, channels as int, spatial as long long) for the kernels, checking the sizes.
    pub(crate) fn kernel_args(&self, what: &str) -> Result<(i32, i32, i64)> {
        as_i64(self.numel())?;
        Ok((
            as_i32(&format!("{what}: batch"), self.batch)?,
            as_i32(&format!("{what}: channels"), self.channels)?,
            as_i64(self.spatial)?,
        ))
    }
}

/// Per-channel values (statistics, parameters) are `channels` long.
fn check_channel_vec(what: &str, buf: &DeviceBuffer, dims: ChannelDims) -> Result<()> {
    check_len(what, buf.len(), dims.channels)
}

/// Statistics of nothing are undefined: the CPU divides by zero (NaN); refuse instead.
fn check_nonempty(what: &str, dims: ChannelDims) -> Result<()> {
    if dims.count() == 0 || dims.channels == 0 {
        return Err(Error::Shape(format!(
            "{what}: no values per channel in {dims:?}"
        )));
    }
    Ok(())
}

/// Mean over every axis but the channel axis: [N, C, ...] -> [C].
pub fn channel_mean(x: &DeviceBuffer, dims: ChannelDims) -> Result<DeviceBuffer> {
    check_nonempty("channel_mean", dims)?;
    check_len("channel_mean input", x.len(), dims.numel())?;
    let (n, c, s) = dims.kernel_args("channel_mean")?;
    let mut mean = DeviceBuffer::uninit(dims.channels)?;
    launch!(
        MODULE,
        "channel_mean",
        per_channel(dims.channels)?,
        [x.slice(), &n, &c, &s, mean.slice_mut()]
    );
    Ok(mean)
}

/// Biased variance per channel about `mean` (`channel_mean` of the same x).
pub fn channel_var(
    x: &DeviceBuffer,
    mean: &DeviceBuffer,
    dims: ChannelDims,
) -> Result<DeviceBuffer> {
    check_nonempty("channel_var", dims)?;
    check_len("channel_var input", x.len(), dims.numel())?;
    check_channel_vec("channel_var mean", mean, dims)?;
    let (n, c, s) = dims.kernel_args("channel_var")?;
    let mut var = DeviceBuffer::uninit(dims.channels)?;
    launch!(
        MODULE,
        "channel_var",
        per_channel(dims.channels)?,
        [x.slice(), mean.slice(), &n, &c, &s, var.slice_mut()]
    );
    Ok(var)
}

/// The gradient with respect to x of `mean = channel_mean(x)` and `var = channel_var(x, mean)`
/// together, given the gradients of the loss with respect to both (zeros for one that the loss
/// does not use): the path through `mean` into `var` included.
pub fn batch_stats_backward(
    x: &DeviceBuffer,
    mean: &DeviceBuffer,
    grad_mean: &DeviceBuffer,
    grad_var: &DeviceBuffer,
    dims: ChannelDims,
) -> Result<DeviceBuffer> {
    check_nonempty("batch_stats_backward", dims)?;
    check_len("batch_stats_backward input", x.len(), dims.numel())?;
    check_channel_vec("batch_stats_backward mean", mean, dims)?;
    check_channel_vec("batch_stats_backward mean gradient", grad_mean, dims)?;
    check_channel_vec("batch_stats_backward variance gradient", grad_var, dims)?;
    let (n, c, s) = dims.kernel_args("batch_stats_backward")?;
    let total = as_i64(dims.numel())?;
    let mut dmean_total = DeviceBuffer::uninit(dims.channels)?;
    launch!(
        MODULE,
        "batch_stats_backward_mean",
        per_channel(dims.channels)?,
        [
            x.slice(),
            mean.slice(),
            grad_mean.slice(),
            grad_var.slice(),
            &n,
            &c,
            &s,
            dmean_total.slice_mut()
        ]
    );
    let mut dx = DeviceBuffer::uninit(dims.numel())?;
    launch!(
        MODULE,
        "batch_stats_backward",
        grid_1d(dims.numel()),
        [
            x.slice(),
            mean.slice(),
            dmean_total.slice(),
            grad_var.slice(),
            &total,
            &c,
            &s,
            dx.slice_mut()
        ]
    );
    Ok(dx)
}

/// The per-channel parameters of batch norm's affine map.
#[derive(Clone, Copy)]
pub struct BatchNormParams<'a> {
    pub mean: &'a DeviceBuffer,
    pub var: &'a DeviceBuffer,
    pub gamma: &'a DeviceBuffer,
    pub beta: &'a DeviceBuffer,
    pub eps: f32,
}

impl BatchNormParams<'_> {
    fn check(&self, what: &str, dims: ChannelDims) -> Result<()> {
        check_channel_vec(&format!("{what} mean"), self.mean, dims)?;
        check_channel_vec(&format!("{what} var"), self.var, dims)?;
        check_channel_vec(&format!("{what} weight"), self.gamma, dims)?;
        check_channel_vec(&format!("{what} bias"), self.beta, dims)?;
        if self.eps.is_nan() || self.eps < 0.0 {
            return Err(Error::Invalid(format!("{what}: eps {} < 0", self.eps)));
        }
        Ok(())
    }
}

/// Batch norm's map y = x·scale + shift per channel, scale = γ/√(var + ε) and
/// shift = β − mean·scale (the CPU's `BatchNorm::affine` then `channel_affine`).
pub fn batch_norm_affine(
    x: &DeviceBuffer,
    params: BatchNormParams<'_>,
    dims: ChannelDims,
) -> Result<DeviceBuffer> {
    check_len("batch_norm_affine input", x.len(), dims.numel())?;
    params.check("batch_norm_affine", dims)?;
    let mut y = DeviceBuffer::uninit(dims.numel())?;
    if dims.numel() == 0 {
        return Ok(y);
    }
    let (_, c, s) = dims.kernel_args("batch_norm_affine")?;
    let total = as_i64(dims.numel())?;
    launch!(
        MODULE,
        "batch_norm_affine",
        grid_1d(dims.numel()),
        [
            x.slice(),
            params.mean.slice(),
            params.var.slice(),
            params.gamma.slice(),
            params.beta.slice(),
            &params.eps,
            &total,
            &c,
            &s,
            y.slice_mut()
        ]
    );
    Ok(y)
}

/// Gradients of `batch_norm_affine` with respect to each of its inputs.
pub struct BatchNormAffineGrads {
    pub input: DeviceBuffer,
    pub gamma: DeviceBuffer,
    pub beta: DeviceBuffer,
    /// With respect to the statistics as inputs: feed them to `batch_stats_backward` when
    /// they are the batch's own.
    pub mean: DeviceBuffer,
    pub var: DeviceBuffer,
}

/// The input's gradient alone of `batch_norm_affine` (g·scale), for when the parameters and
/// statistics need none (attacks, whose weights are constants): no per-channel reductions.
pub fn batch_norm_affine_backward_input(
    grad: &DeviceBuffer,
    params: BatchNormParams<'_>,
    dims: ChannelDims,
) -> Result<DeviceBuffer> {
    check_nonempty("batch_norm_affine_backward", dims)?;
    check_len(
        "batch_norm_affine_backward gradient",
        grad.len(),
        dims.numel(),
    )?;
    params.check("batch_norm_affine_backward", dims)?;
    let (_, c, s) = dims.kernel_args("batch_norm_affine_backward")?;
    let total = as_i64(dims.numel())?;
    let mut input = DeviceBuffer::uninit(dims.numel())?;
    launch!(
        MODULE,
        "batch_norm_affine_backward_input",
        grid_1d(dims.numel()),
        [
            grad.slice(),
            params.var.slice(),
            params.gamma.slice(),
            &params.eps,
            &total,
            &c,
            &s,
            input.slice_mut()
        ]
    );
    Ok(input)
}

/// The backward of `batch_norm_affine` for the output gradient `grad`.
pub fn batch_norm_affine_backward(
    x: &DeviceBuffer,
    grad: &DeviceBuffer,
    params: BatchNormParams<'_>,
    dims: ChannelDims,
) -> Result<BatchNormAffineGrads> {
    check_nonempty("batch_norm_affine_backward", dims)?;
    check_len("batch_norm_affine_backward input", x.len(), dims.numel())?;
    check_len(
        "batch_norm_affine_backward gradient",
        grad.len(),
        dims.numel(),
    )?;
    params.check("batch_norm_affine_backward", dims)?;
    let (n, c, s) = dims.kernel_args("batch_norm_affine_backward")?;
    let input = batch_norm_affine_backward_input(grad, params, dims)?;
    let ch = dims.channels;
    let (mut gamma, mut beta) = (DeviceBuffer::uninit(ch)?, DeviceBuffer::uninit(ch)?);
    let (mut mean, mut var) = (DeviceBuffer::uninit(ch)?, DeviceBuffer::uninit(ch)?);
    launch!(
        MODULE,
        "batch_norm_affine_backward_params",
        per_channel(ch)?,
        [
            x.slice(),
            grad.slice(),
            params.mean.slice(),
            params.var.slice(),
            params.gamma.slice(),
            &params.eps,
            &n,
            &c,
            &s,
            gamma.slice_mut(),
            beta.slice_mut(),
            mean.slice_mut(),
            var.slice_mut()
        ]
    );
    Ok(BatchNormAffineGrads {
        input,
        gamma,
        beta,
        mean,
        var,
    })
}
