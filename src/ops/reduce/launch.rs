//! Launch wrappers for `reduce.cu`: the sum or maximum of a tensor over the axes where a
//! target shape has 1 (or lacks the axis) — `sum_axes`, `max_axes` and the gradient of a
//! broadcast — and the argmax along an axis.

use crate::runtime::cuda::buffer::DeviceBuffer;
use crate::runtime::cuda::context::grid_1d;
use crate::runtime::cuda::launch::launch;
use crate::runtime::cuda::strided::{check_operand, padded, simplify, too_many_axes, Operand, MAX_RANK};
use crate::runtime::shape::{broadcast_shapes, numel, strides};
use crate::{Error, Result};
use cudarc::driver::{DeviceRepr, LaunchConfig};
use crate::runtime::cuda::buffer::DeviceVec;
use crate::runtime::cuda::launch::{as_i32, as_i64, per_block};

/// The kernel module these wrappers launch.
const MODULE: &str = "reduce";

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Reduction {
    kept_rank: i32,
    reduced_rank: i32,
    kept_dims: [i64; MAX_RANK],
    kept_strides: [i64; MAX_RANK],
    reduced_dims: [i64; MAX_RANK],
    reduced_strides: [i64; MAX_RANK],
    reduced: i64,
}

// SAFETY: #[repr(C)] of i32s and i64 arrays: the layout of the kernel's `Reduction`.
unsafe impl DeviceRepr for Reduction {}

/// What [`reduce_to`] computes over the reduced axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    /// Summed in double, rounded once.
    Sum = 0,
    /// The maximum (NaN never wins; −∞ over no elements).
    Max = 1,
}

/// `x` (of shape `from`) reduced to `to`, a shape that broadcasts to `from`: every axis where
/// `to` has 1 (or which `to` lacks, leading) is reduced. One block per output.
pub fn reduce_to(
    x: &DeviceBuffer,
    from: &[usize],
    to: &[usize],
    op: Reduce,
) -> Result<DeviceBuffer> {
    let what = format!("reduce ({op:?})");
    check_operand(&what, Operand::new(x, from), from)?;
    if to.len() > from.len() || broadcast_shapes(to, from)? != from {
        return Err(Error::Shape(format!(
            "{what}: {to:?} is not a reduction of {from:?}"
        )));
    }
    let outputs = numel(to);
    let mut y = DeviceBuffer::uninit(outputs)?;
    if outputs == 0 {
        return Ok(y);
    }
    let own = strides(from);
    let lead = from.len() - to.len();
    let (mut kept, mut kept_st, mut red, mut red_st) = (vec![], vec![], vec![], vec![]);
    for (ax, &d) in from.iter().enumerate() {
        let reduced = ax < lead || to[ax - lead] == 1;
        let (dims, st) = if reduced {
            (&mut red, &mut red_st)
        } else {
            (&mut kept, &mut kept_st)
        };
        dims.push(d);
        st.push(own[ax]);
    }
    let (kept, [kept_st]) = simplify(&kept, [&kept_st]);
    let (red, [red_st]) = simplify(&red, [&red_st]);
    if kept.len() > MAX_RANK || red.len() > MAX_RANK {
        return Err(too_many_axes(&what, from));
    }
    let reduced: i64 = red.iter().product();
    let r = Reduction {
        kept_rank: kept.len() as i32,
        reduced_rank: red.len() as i32,
        kept_dims: padded(&kept),
        kept_strides: padded(&kept_st),
        reduced_dims: padded(&red),
        reduced_strides: padded(&red_st),
        reduced,
    };
    // A warp for short reductions, up to 256 threads for long ones.
    let threads = (reduced.max(1) as u64).next_power_of_two().clamp(32, 256) as u32;
    let cfg = LaunchConfig {
        grid_dim: (outputs.min(1 << 20) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    let (code, outputs64) = (op as i32, outputs as i64);
    launch!(
        MODULE,
        "reduce_axes",
        cfg,
        [x.slice(), &r, &code, &outputs64, y.slice_mut()]
    );
    Ok(y)
}

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
