//! Launch wrappers for `reduce.cu`: the argmax along an axis, per-channel sums of a batch
//! (bias gradients) and the sum of squares over several buffers (the global gradient norm).
//! The sum or maximum over axes is the broadcast's adjoint, `elementwise::launch::reduce_to`.

use crate::runtime::cuda::buffer::DeviceBuffer;
use crate::runtime::cuda::buffer::DeviceVec;
use crate::runtime::cuda::context::{cuda, grid_1d};
use crate::runtime::cuda::launch::check_len;
use crate::runtime::cuda::launch::launch;
use crate::runtime::cuda::launch::{as_i32, as_i64, per_block};
use crate::runtime::cuda::strided::{check_operand, Operand};
use crate::runtime::cuda::tiles::{config, view, view_mut, MAX_ELEMENTS};
use crate::{Error, Result};
use cudarc::driver::CudaView;

/// The kernel module these wrappers launch.
const MODULE: &str = "reduce";

/// The first index of the maximum along axis `axis` of `x` (shape `shape`), as floats, in the
/// shape with that axis removed.
pub fn argmax_axis(x: &DeviceBuffer, shape: &[usize], axis: usize) -> Result<DeviceBuffer> {
    check_operand("argmax", Operand::new(x, shape), shape)?;
    if axis >= shape.len() || shape[axis] == 0 {
        return Err(Error::Shape(format!(
            "argmax along axis {axis} of shape {shape:?}: no such axis, or it is empty"
        )));
    }
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let mut y = DeviceBuffer::uninit(outer * inner)?;
    if outer * inner > 0 {
        let (o, l, i) = (outer as i64, shape[axis] as i64, inner as i64);
        launch!(
            MODULE,
            "argmax_axis",
            grid_1d(outer * inner),
            [x.slice(), &o, &l, &i, y.slice_mut()]
        );
    }
    Ok(y)
}

/// Partial sums per buffer: one per 1024 values, at most 256 (a fixed count for a length, so
/// the sum is deterministic).
fn partial_blocks(len: usize) -> usize {
    len.div_ceil(1024).clamp(1, 256)
}

/// Σ x² over all the buffers, accumulated in double (waits for the result).
pub fn sum_squares(buffers: &[&DeviceBuffer]) -> Result<f64> {
    let live: Vec<&DeviceBuffer> = buffers.iter().copied().filter(|b| !b.is_empty()).collect();
    if live.is_empty() {
        return Ok(0.0);
    }
    let total: usize = live.iter().map(|b| partial_blocks(b.len())).sum();
    let total_i = as_i32("partial sums", total)?;
    let mut partial = DeviceVec::<f64>::zeros(total)?;
    let mut out = DeviceVec::<f64>::zeros(1)?;
    let mut offset = 0usize;
    for b in live {
        let blocks = partial_blocks(b.len());
        let n = as_i64(b.len())?;
        let off = as_i32("partial sums", offset)?;
        launch!(
            MODULE,
            "sum_squares_partial",
            per_block(blocks)?,
            [b.slice(), &n, partial.slice_mut(), &off]
        );
        offset += blocks;
    }
    launch!(
        MODULE,
        "sum_doubles",
        per_block(1)?,
        [partial.slice(), &total_i, out.slice_mut()]
    );
    Ok(out.to_host()?[0])
}

/// The global l2 norm of the buffers, as the CPU optimiser computes it (√ of the double sum).
pub fn global_norm(buffers: &[&DeviceBuffer]) -> Result<f32> {
    Ok(sum_squares(buffers)?.sqrt() as f32)
}

/// `[channels]`: the sum of `x` `[n, channels, hw]` over n and hw, per channel.
pub fn channel_sum(x: &DeviceBuffer, n: usize, channels: usize, hw: usize) -> Result<DeviceBuffer> {
    let len = n
        .checked_mul(channels)
        .and_then(|v| v.checked_mul(hw))
        .filter(|&v| v < MAX_ELEMENTS)
        .ok_or_else(|| {
            Error::Shape(format!(
                "channel_sum: [{n}, {channels}, {hw}] exceeds 2^30 values"
            ))
        })?;
    check_len("channel_sum input", x.len(), len)?;
    channel_sum_view(&view(x, len.max(1)), n, channels, hw)
}

/// [`channel_sum`] of a view holding n·channels·hw (< 2^30) values.
pub fn channel_sum_view(
    x: &CudaView<'_, f32>,
    n: usize,
    channels: usize,
    hw: usize,
) -> Result<DeviceBuffer> {
    if channels == 0 {
        return DeviceBuffer::uninit(0);
    }
    if n == 0 || hw == 0 {
        return DeviceBuffer::zeros(channels);
    }
    let mut out = DeviceBuffer::uninit(channels)?;
    let backend = cuda()?;
    // Each is at most n·channels·hw < 2^30.
    let (n_i, c_i, hw_i) = (n as i32, channels as i32, hw as i32);
    let mut ov = view_mut(&mut out, channels);
    let mut b = backend.launch(MODULE, "channel_sum")?;
    b.arg(x).arg(&n_i).arg(&c_i).arg(&hw_i).arg(&mut ov);
    // SAFETY: one block per channel; reads n·channels·hw values, writes `channels`.
    unsafe { b.launch(config((channels as u32, 1, 1))) }?;
    Ok(out)
}
