//! Launch wrappers for `adam.cu`: the CPU's fused Adam update (`train::optim`), bit for bit
//! given the same clipping factor, and that factor from the global gradient norm.

use crate::runtime::cuda::buffer::DeviceBuffer;
use crate::runtime::cuda::context::grid_1d;
use crate::runtime::cuda::launch::{as_i64, check_len, launch};
use crate::train::optim::{AdamConfig, WeightDecay};
use crate::{Error, Result};

/// The kernel module these wrappers launch.
const MODULE: &str = "adam";

/// The factor that clips gradients of global norm `grad_norm` to `max_grad_norm` (1 when
/// within it), as the CPU optimiser; an error for a non-finite norm (the step must not run).
pub fn clip_scale(grad_norm: f32, max_grad_norm: Option<f32>) -> Result<f32> {
    if !grad_norm.is_finite() {
        return Err(Error::Invalid(
            "non-finite gradient (NaN or infinity): the step was not applied".into(),
        ));
    }
    Ok(match max_grad_norm {
        Some(max) if grad_norm > max => max / (grad_norm + 1e-6),
        _ => 1.0,
    })
}

/// One Adam update of `param` in place, with its moments `m` and `v` (zeros before the first
/// step), as the CPU's `Adam::step`: `step` is the 1-based count of this update and
/// `grad_scale` the clipping factor (`clip_scale`, or 1).
pub fn adam_step(
    param: &mut DeviceBuffer,
    grad: &DeviceBuffer,
    m: &mut DeviceBuffer,
    v: &mut DeviceBuffer,
    config: &AdamConfig,
    step: u64,
    grad_scale: f32,
) -> Result<()> {
    let len = param.len();
    check_len("adam_step gradient", grad.len(), len)?;
    check_len("adam_step first moment", m.len(), len)?;
    check_len("adam_step second moment", v.len(), len)?;
    if step == 0 {
        return Err(Error::Invalid("adam_step: steps count from 1".into()));
    }
    // As on the CPU: β^t is 0 in f32 long before t leaves i32.
    let t = step.min(i32::MAX as u64) as i32;
    if len == 0 {
        return Ok(());
    }
    let c = *config;
    // The host-side scalars exactly as `Adam::step` computes them.
    let step_size = c.lr / (1.0 - c.beta1.powi(t));
    let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
    let (l2, shrink) = match c.decay {
        WeightDecay::L2 => (c.weight_decay, 1.0f32),
        WeightDecay::Decoupled => (0.0, 1.0 - c.lr * c.weight_decay),
    };
    let (one_minus_b1, one_minus_b2) = (1.0 - c.beta1, 1.0 - c.beta2);
    let n = as_i64(len)?;
    launch!(
        MODULE,
        "adam_step",
        grid_1d(len),
        [
            param.slice_mut(),
            grad.slice(),
            m.slice_mut(),
            v.slice_mut(),
            &n,
            &grad_scale,
            &l2,
            &shrink,
            &c.beta1,
            &one_minus_b1,
            &c.beta2,
            &one_minus_b2,
            &step_size,
            &bias2_sqrt,
            &c.eps
        ]
    );
    Ok(())
}
