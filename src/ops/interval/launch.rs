//! Launch wrappers for `ops/interval/interval.cu`: interval bound propagation for a batch of boxes,
//! forward and backward, matching the CPU's `ops::interval` and `bounds::ibp`.
//!
//! Boxes are stacked buffers [2, N, ...]: the N centres, then the N radii (the CPU's interval
//! tensors), so that one launch maps both halves of a layer and its backward sees both.
//!
//! - `interval_linear`: (c, r) -> (c·Wᵀ + b, r·|W|ᵀ) as ONE tiled GEMM computing both products
//!   (each c/r tile and W tile loaded once, |W| taken on the fly), and its backward: the input
//!   gradient (gc·W, gr·|W|) and the weight gradient gcᵀc + sign(W)⊙grᵀr by the same kernel
//!   with other strides, the bias gradient by column sums;
//! - `interval_relu`: [c − r, c + r] -> [relu(c − r), relu(c + r)] in centre/radius form;
//! - `interval_channel_affine`: batch norm or input normalisation per channel, c' = a·c + b,
//!   r' = |a|·r, with the parameter gradients as one block per channel;
//! - `elided_margins`: last-layer elision, lb[n, j] = (W_y − W_j)·c_n + (b_y − b_j)
//!   − |W_y − W_j|·r_n (0 at j = y), the CPU's `margin_lower_bounds` after the hidden layers;
//!   the specification rows W_y − W_j are formed on the fly, never stored.
//!
//! Sizes are passed explicitly (`LinearDims`, `ChannelDims` of one half) and checked against
//! the buffers first: a mismatch is an `Error`, never a panic or an out-of-bounds launch.

use crate::ops::loss::launch::DeviceLabels;
use crate::ops::norm::launch::ChannelDims;
use crate::runtime::cuda::buffer::DeviceBuffer;
use crate::runtime::cuda::context::grid_1d;
use crate::runtime::cuda::launch::{as_i32, as_i64, check_len, launch, per_block, per_channel};
use crate::{Error, Result};
use cudarc::driver::LaunchConfig;

/// The kernel module these wrappers launch.
const MODULE: &str = "interval";

/// Sizes of a linear layer applied to a batch of boxes: input [2, batch, in_features], weight
/// [out_features, in_features], output [2, batch, out_features]. For `elided_margins`,
/// `out_features` is the number of classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearDims {
    pub batch: usize,
    pub in_features: usize,
    pub out_features: usize,
}

impl LinearDims {
    /// The sizes as the kernels' `int`s. Checked before any size arithmetic: with each below
    /// 2³¹ no product of them overflows.
    fn ints(&self, what: &str) -> Result<(i32, i32, i32)> {
        let sizes = (
            as_i32(&format!("{what}: batch"), self.batch)?,
            as_i32(&format!("{what}: in_features"), self.in_features)?,
            as_i32(&format!("{what}: out_features"), self.out_features)?,
        );
        // Offsets inside the kernels are 64-bit.
        as_i64(2 * self.batch * self.in_features.max(self.out_features))?;
        Ok(sizes)
    }
}

/// The tiled GEMM's launch for an `m × n` output: 64 × 64 tiles, 256 threads each.
fn gemm_grid(what: &str, m: usize, n: usize) -> Result<LaunchConfig> {
    let (bx, by) = (n.div_ceil(64), m.div_ceil(64));
    if by > 65535 {
        return Err(Error::Shape(format!(
            "{what}: {m} rows exceed the kernel's grid (at most {} rows)",
            65535 * 64
        )));
    }
    Ok(LaunchConfig {
        grid_dim: (as_i32(what, bx)? as u32, by as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    })
}

// ---------------------------------------------------------------------------------------------
// interval_linear
// ---------------------------------------------------------------------------------------------

/// Boxes [2, batch, in] through a linear layer: [2, batch, out] = (c·Wᵀ + b, r·|W|ᵀ).
pub fn interval_linear(
    boxes: &DeviceBuffer,
    weight: &DeviceBuffer,
    bias: Option<&DeviceBuffer>,
    dims: LinearDims,
) -> Result<DeviceBuffer> {
    let LinearDims {
        batch,
        in_features: fin,
        out_features: fout,
    } = dims;
    let (n, i, o) = dims.ints("interval_linear")?;
    check_len("interval_linear boxes", boxes.len(), 2 * batch * fin)?;
    check_len("interval_linear weight", weight.len(), fout * fin)?;
    if let Some(b) = bias {
        check_len("interval_linear bias", b.len(), fout)?;
    }
    let mut y = DeviceBuffer::uninit(2 * batch * fout)?;
    if batch == 0 || fout == 0 {
        return Ok(y);
    }
    let cfg = gemm_grid("interval_linear", batch, fout)?;
    let has_bias = i32::from(bias.is_some());
    // Without a bias the kernel never reads it: any valid pointer will do.
    let b = bias.unwrap_or(weight);
    launch!(
        MODULE,
        "interval_linear",
        cfg,
        [
            boxes.slice(),
            weight.slice(),
            b.slice(),
            &has_bias,
            &n,
            &i,
            &o,
            y.slice_mut()
        ]
    );
    Ok(y)
}

/// The gradient with respect to the boxes: [2, batch, in] = (gc·W, gr·|W|) for the output
/// gradient `grad` [2, batch, out].
pub fn interval_linear_backward_input(
    grad: &DeviceBuffer,
    weight: &DeviceBuffer,
    dims: LinearDims,
) -> Result<DeviceBuffer> {
    let LinearDims {
        batch,
        in_features: fin,
        out_features: fout,
    } = dims;
    let (n, i, o) = dims.ints("interval_linear_backward_input")?;
    check_len(
        "interval_linear_backward_input gradient",
        grad.len(),
        2 * batch * fout,
    )?;
    check_len(
        "interval_linear_backward_input weight",
        weight.len(),
        fout * fin,
    )?;
    let mut dx = DeviceBuffer::uninit(2 * batch * fin)?;
    if batch == 0 || fin == 0 {
        return Ok(dx);
    }
    let cfg = gemm_grid("interval_linear_backward_input", batch, fin)?;
    launch!(
        MODULE,
        "interval_linear_backward_input",
        cfg,
        [grad.slice(), weight.slice(), &n, &i, &o, dx.slice_mut()]
    );
    Ok(dx)
}

/// The gradient with respect to the weight: [out, in] = gcᵀ·c + sign(W)⊙(grᵀ·r) (the radius
/// path sees |W|).
pub fn interval_linear_backward_weight(
    grad: &DeviceBuffer,
    boxes: &DeviceBuffer,
    weight: &DeviceBuffer,
    dims: LinearDims,
) -> Result<DeviceBuffer> {
    let LinearDims {
        batch,
        in_features: fin,
        out_features: fout,
    } = dims;
    let (n, i, o) = dims.ints("interval_linear_backward_weight")?;
    check_len(
        "interval_linear_backward_weight gradient",
        grad.len(),
        2 * batch * fout,
    )?;
    check_len(
        "interval_linear_backward_weight boxes",
        boxes.len(),
        2 * batch * fin,
    )?;
    check_len(
        "interval_linear_backward_weight weight",
        weight.len(),
        fout * fin,
    )?;
    let mut dw = DeviceBuffer::uninit(fout * fin)?;
    if fout == 0 || fin == 0 {
        return Ok(dw);
    }
    let cfg = gemm_grid("interval_linear_backward_weight", fout, fin)?;
    launch!(
        MODULE,
        "interval_linear_backward_weight",
        cfg,
        [
            grad.slice(),
            boxes.slice(),
            weight.slice(),
            &n,
            &i,
            &o,
            dw.slice_mut()
        ]
    );
    Ok(dw)
}

/// The gradient with respect to the bias: [out], the centre gradient summed over the batch.
pub fn interval_linear_backward_bias(
    grad: &DeviceBuffer,
    dims: LinearDims,
) -> Result<DeviceBuffer> {
    let LinearDims {
        batch,
        out_features: fout,
        ..
    } = dims;
    let (n, _, o) = dims.ints("interval_linear_backward_bias")?;
    check_len(
        "interval_linear_backward_bias gradient",
        grad.len(),
        2 * batch * fout,
    )?;
    let mut db = DeviceBuffer::uninit(fout)?;
    if fout == 0 {
        return Ok(db);
    }
    launch!(
        MODULE,
        "interval_linear_backward_bias",
        grid_1d(fout),
        [grad.slice(), &n, &o, db.slice_mut()]
    );
    Ok(db)
}

// ---------------------------------------------------------------------------------------------
// interval_relu
// ---------------------------------------------------------------------------------------------

/// Half the length of a stacked buffer.
fn half_of(what: &str, boxes: &DeviceBuffer) -> Result<usize> {
    if !boxes.len().is_multiple_of(2) {
        return Err(Error::Shape(format!(
            "{what}: boxes are [2, N, ...] (centres, radii), got {} values",
            boxes.len()
        )));
    }
    Ok(boxes.len() / 2)
}

/// SABR's small boxes (`train::losses::sabr_box`): around each value of `x` the clipped ε-box,
/// in it the box of radius `tau` centred as near `adv` as fits, returned stacked `[2, …]` as the
/// box enclosing those corners in f32 (centres, then radii; `bounds::ibp::enclosing_box`).
pub fn sabr_box(x: &DeviceBuffer, adv: &DeviceBuffer, eps: f32, tau: f32) -> Result<DeviceBuffer> {
    check_len("sabr_box adversarial points", adv.len(), x.len())?;
    let n = x.len();
    let mut y = DeviceBuffer::uninit(2 * n)?;
    if n == 0 {
        return Ok(y);
    }
    let len = as_i64(n)?;
    launch!(
        MODULE,
        "sabr_box",
        grid_1d(n),
        [x.slice(), adv.slice(), &eps, &tau, &len, y.slice_mut()]
    );
    Ok(y)
}

/// ReLU on boxes [2, ...]: [c − r, c + r] -> [relu(c − r), relu(c + r)], in centre/radius form.
pub fn interval_relu(boxes: &DeviceBuffer) -> Result<DeviceBuffer> {
    let half = half_of("interval_relu", boxes)?;
    let mut y = DeviceBuffer::uninit(boxes.len())?;
    if half == 0 {
        return Ok(y);
    }
    let h = as_i64(half)?;
    launch!(
        MODULE,
        "interval_relu",
        grid_1d(half),
        [boxes.slice(), &h, y.slice_mut()]
    );
    Ok(y)
}

/// The gradient of `interval_relu` with respect to its boxes, for the output gradient `grad`.
pub fn interval_relu_backward(boxes: &DeviceBuffer, grad: &DeviceBuffer) -> Result<DeviceBuffer> {
    let half = half_of("interval_relu_backward", boxes)?;
    check_len("interval_relu_backward gradient", grad.len(), boxes.len())?;
    let mut dx = DeviceBuffer::uninit(boxes.len())?;
    if half == 0 {
        return Ok(dx);
    }
    let h = as_i64(half)?;
    launch!(
        MODULE,
        "interval_relu_backward",
        grid_1d(half),
        [boxes.slice(), grad.slice(), &h, dx.slice_mut()]
    );
    Ok(dx)
}

// ---------------------------------------------------------------------------------------------
// interval_channel_affine
// ---------------------------------------------------------------------------------------------

fn check_affine(
    what: &str,
    boxes: &DeviceBuffer,
    scale: &DeviceBuffer,
    dims: ChannelDims,
) -> Result<()> {
    check_len(
        &format!("{what} boxes"),
        boxes.len(),
        dims.numel().saturating_mul(2),
    )?;
    check_len(&format!("{what} scale"), scale.len(), dims.channels)
}

/// Per-channel y = scale·x + shift on boxes [2, N, C, ...] (`dims` is one half): centres get
/// the map, radii |scale|.
pub fn interval_channel_affine(
    boxes: &DeviceBuffer,
    scale: &DeviceBuffer,
    shift: &DeviceBuffer,
    dims: ChannelDims,
) -> Result<DeviceBuffer> {
    check_affine("interval_channel_affine", boxes, scale, dims)?;
    check_len("interval_channel_affine shift", shift.len(), dims.channels)?;
    let mut y = DeviceBuffer::uninit(boxes.len())?;
    if dims.numel() == 0 {
        return Ok(y);
    }
    let (_, c, s) = dims.kernel_args("interval_channel_affine")?;
    let half = as_i64(dims.numel())?;
    launch!(
        MODULE,
        "interval_channel_affine",
        grid_1d(boxes.len()),
        [
            boxes.slice(),
            scale.slice(),
            shift.slice(),
            &half,
            &c,
            &s,
            y.slice_mut()
        ]
    );
    Ok(y)
}

/// Gradients of `interval_channel_affine`.
pub struct IntervalAffineGrads {
    /// [2, N, C, ...]: (gc·scale, gr·|scale|).
    pub boxes: DeviceBuffer,
    /// [C]: Σ gc·c + sign(scale)·Σ gr·r per channel.
    pub scale: DeviceBuffer,
    /// [C]: Σ gc per channel.
    pub shift: DeviceBuffer,
}

/// The backward of `interval_channel_affine` for the output gradient `grad`.
pub fn interval_channel_affine_backward(
    boxes: &DeviceBuffer,
    scale: &DeviceBuffer,
    grad: &DeviceBuffer,
    dims: ChannelDims,
) -> Result<IntervalAffineGrads> {
    check_affine("interval_channel_affine_backward", boxes, scale, dims)?;
    check_len(
        "interval_channel_affine_backward gradient",
        grad.len(),
        boxes.len(),
    )?;
    let mut dx = DeviceBuffer::uninit(boxes.len())?;
    let mut dscale = DeviceBuffer::zeros(dims.channels)?;
    let mut dshift = DeviceBuffer::zeros(dims.channels)?;
    if dims.numel() == 0 {
        // No values: the parameter gradients are zero sums.
        return Ok(IntervalAffineGrads {
            boxes: dx,
            scale: dscale,
            shift: dshift,
        });
    }
    let (n, c, s) = dims.kernel_args("interval_channel_affine_backward")?;
    let half = as_i64(dims.numel())?;
    launch!(
        MODULE,
        "interval_channel_affine_backward_input",
        grid_1d(boxes.len()),
        [grad.slice(), scale.slice(), &half, &c, &s, dx.slice_mut()]
    );
    launch!(
        MODULE,
        "interval_channel_affine_backward_params",
        per_channel(dims.channels)?,
        [
            boxes.slice(),
            grad.slice(),
            scale.slice(),
            &n,
            &c,
            &s,
            dscale.slice_mut(),
            dshift.slice_mut()
        ]
    );
    Ok(IntervalAffineGrads {
        boxes: dx,
        scale: dscale,
        shift: dshift,
    })
}

// ---------------------------------------------------------------------------------------------
// elided_margins
// ---------------------------------------------------------------------------------------------

fn check_margins(
    what: &str,
    hidden: &DeviceBuffer,
    weight: &DeviceBuffer,
    labels: &DeviceLabels,
    dims: LinearDims,
) -> Result<(i32, i32, i32)> {
    let ints = dims.ints(what)?;
    check_len(
        &format!("{what} boxes"),
        hidden.len(),
        2 * dims.batch * dims.in_features,
    )?;
    check_len(
        &format!("{what} weight"),
        weight.len(),
        dims.out_features * dims.in_features,
    )?;
    labels.check(what, dims.batch, dims.out_features)?;
    Ok(ints)
}

/// Lower bounds of z_y − z_j over each box of the hidden layer [2, batch, in] through the last
/// linear layer (`weight` [classes, in], `bias`): [batch, classes], 0 at each sample's label.
pub fn elided_margins(
    hidden: &DeviceBuffer,
    weight: &DeviceBuffer,
    bias: Option<&DeviceBuffer>,
    labels: &DeviceLabels,
    dims: LinearDims,
) -> Result<DeviceBuffer> {
    let (n, i, k) = check_margins("elided_margins", hidden, weight, labels, dims)?;
    if let Some(b) = bias {
        check_len("elided_margins bias", b.len(), dims.out_features)?;
    }
    let mut lb = DeviceBuffer::uninit(dims.batch * dims.out_features)?;
    if lb.is_empty() {
        return Ok(lb);
    }
    let has_bias = i32::from(bias.is_some());
    let b = bias.unwrap_or(weight);
    launch!(
        MODULE,
        "elided_margins",
        per_block(dims.batch)?,
        [
            hidden.slice(),
            weight.slice(),
            b.slice(),
            &has_bias,
            labels.slice(),
            &n,
            &i,
            &k,
            lb.slice_mut()
        ]
    );
    Ok(lb)
}

/// Gradients of `elided_margins`.
pub struct ElidedMarginGrads {
    /// [2, batch, in].
    pub hidden: DeviceBuffer,
    /// [classes, in].
    pub weight: DeviceBuffer,
    /// [classes] (of the bias, if the layer has one).
    pub bias: DeviceBuffer,
}

/// The backward of `elided_margins` for the gradient `grad` [batch, classes] of its output.
pub fn elided_margins_backward(
    hidden: &DeviceBuffer,
    weight: &DeviceBuffer,
    labels: &DeviceLabels,
    grad: &DeviceBuffer,
    dims: LinearDims,
) -> Result<ElidedMarginGrads> {
    let (n, i, k) = check_margins("elided_margins_backward", hidden, weight, labels, dims)?;
    check_len(
        "elided_margins_backward gradient",
        grad.len(),
        dims.batch * dims.out_features,
    )?;
    let LinearDims {
        batch,
        in_features: fin,
        out_features: classes,
    } = dims;
    let threads_params = classes * (fin + 1);
    as_i64(threads_params)?;
    let mut dx = DeviceBuffer::uninit(2 * batch * fin)?;
    let mut dw = DeviceBuffer::uninit(classes * fin)?;
    let mut db = DeviceBuffer::uninit(classes)?;
    if batch * fin > 0 {
        launch!(
            MODULE,
            "elided_margins_backward_input",
            grid_1d(batch * fin),
            [
                grad.slice(),
                weight.slice(),
                labels.slice(),
                &n,
                &i,
                &k,
                dx.slice_mut()
            ]
        );
    }
    if classes > 0 {
        launch!(
            MODULE,
            "elided_margins_backward_params",
            grid_1d(threads_params),
            [
                grad.slice(),
                hidden.slice(),
                weight.slice(),
                labels.slice(),
                &n,
                &i,
                &k,
                dw.slice_mut(),
                db.slice_mut()
            ]
        );
    }
    Ok(ElidedMarginGrads {
        hidden: dx,
        weight: dw,
        bias: db,
    })
}
