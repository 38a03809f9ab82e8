//! Launch wrappers for `elementwise.cu`:
//! - [`map`]: `y = op(g, a, b)` over an output shape, each operand broadcast to it (NumPy
//!   rules); the binary ops, the rarer unary maps and every gradient formula of
//!   `ops::elementwise` ([`MapOp`]);
//! - [`reduce_to`]: its adjoint, the sum (or maximum) of a tensor over the axes where a target
//!   shape has 1 or lacks the axis (`sum_axes`, `max_axes`, the gradient of a broadcast);
//! - equal-length fast paths (`add`, `mul`, `relu`, …, `fill`, `add_scaled`) and their gradients.
//!
//! Shapes are checked here (an operand must broadcast to the output; buffers must hold their
//! shapes), then simplified before launch (`runtime::cuda::strided`).

use crate::runtime::cuda::buffer::DeviceBuffer;
use crate::runtime::cuda::context::grid_1d;
use crate::runtime::cuda::launch::launch;
use crate::runtime::cuda::launch::{as_i64, check_len};
use crate::runtime::cuda::strided::{
    check_operand, padded, simplify, stride_grid, too_many_axes, Operand, MAX_RANK,
};
use crate::runtime::shape::{broadcast_shapes, broadcast_strides, numel, strides};
use crate::{Error, Result};
use cudarc::driver::{DeviceRepr, LaunchConfig};

/// The kernel module these wrappers launch.
const MODULE: &str = "elementwise";

/// The kernels' operation codes (`MapOp` in elementwise.cu). Forward ops read `a` and
/// `b`; gradient ops (`G…`) give `g` times the forward op's derivative at `(a, b)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum MapOp {
    Add = 0,
    Sub = 1,
    Mul = 2,
    Div = 3,
    /// NaN loses, as `f32::min`.
    Min = 4,
    Max = 5,
    /// `b`, broadcast to the output.
    CopyB = 6,
    Exp = 7,
    Log = 8,
    Sqrt = 9,
    /// `a` clamped into `[p, q]`.
    Clamp = 10,
    /// 1 where `a == b`, else 0.
    Eq = 11,
    GOne = 20,
    GNeg = 21,
    GMulA = 22,
    GMulB = 23,
    GDivA = 24,
    GDivB = 25,
    /// A tie gives each operand half, as the CPU.
    GMinA = 26,
    GMinB = 27,
    GMaxA = 28,
    GMaxB = 29,
    GExp = 30,
    GLog = 31,
    GSqrt = 32,
    /// `g·[p ≤ a ≤ q]`.
    GClamp = 33,
    /// `g·[a == b]`.
    GEq = 34,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Strided {
    rank: i32,
    dims: [i64; MAX_RANK],
    strides: [[i64; MAX_RANK]; 3],
}

// SAFETY: #[repr(C)] of an i32 and i64 arrays: the layout of the kernel's `Strided`.
unsafe impl DeviceRepr for Strided {}

/// `op(g, a, b)` element-wise over `out_shape`, each present operand broadcast to it; `p` and `q`
/// are the op's scalar parameters (`Clamp`'s bounds). An absent operand is never read.
pub fn map(
    op: MapOp,
    out_shape: &[usize],
    operands: [Option<Operand<'_>>; 3],
    (p, q): (f32, f32),
) -> Result<DeviceBuffer> {
    let what = format!("{op:?}");
    let present: Vec<Operand<'_>> = operands.iter().flatten().copied().collect();
    let Some(&first) = present.first() else {
        return Err(Error::Invalid(format!("{what}: a map of no operands")));
    };
    for &o in &present {
        check_operand(&what, o, out_shape)?;
    }
    let n = numel(out_shape);
    let mut y = DeviceBuffer::uninit(n)?;
    if n == 0 {
        return Ok(y);
    }
    let zeros = vec![0; out_shape.len()];
    let own: Vec<Vec<usize>> = operands
        .iter()
        .map(|o| o.map_or_else(|| zeros.clone(), |o| broadcast_strides(o.shape, out_shape)))
        .collect();
    let (dims, st) = simplify(out_shape, [&own[0], &own[1], &own[2]]);
    if dims.len() > MAX_RANK {
        return Err(too_many_axes(&what, out_shape));
    }
    let s = Strided {
        rank: dims.len() as i32,
        dims: padded(&dims),
        strides: [padded(&st[0]), padded(&st[1]), padded(&st[2])],
    };
    // An absent operand is read at offset 0 of a present one and ignored.
    let value = |i: usize| operands[i].map_or(first.values, |o| o.values).slice();
    let (code, n64) = (op as i32, n as i64);
    launch!(
        MODULE,
        "broadcast_map",
        stride_grid(n),
        [
            value(0),
            value(1),
            value(2),
            &s,
            &code,
            &p,
            &q,
            &n64,
            y.slice_mut()
        ]
    );
    Ok(y)
}

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

// Equal-length fast paths (no broadcasting).

fn same_len(what: &str, a: &DeviceBuffer, b: &DeviceBuffer) -> Result<()> {
    check_len(what, b.len(), a.len())
}

/// f(a, b) element-wise into a new buffer.
fn binary(name: &'static str, a: &DeviceBuffer, b: &DeviceBuffer) -> Result<DeviceBuffer> {
    same_len(name, a, b)?;
    let mut y = DeviceBuffer::uninit(a.len())?;
    if a.is_empty() {
        return Ok(y);
    }
    let n = as_i64(a.len())?;
    launch!(
        MODULE,
        name,
        grid_1d(a.len()),
        [a.slice(), b.slice(), &n, y.slice_mut()]
    );
    Ok(y)
}

/// f(x) element-wise into a new buffer.
fn unary(name: &'static str, x: &DeviceBuffer) -> Result<DeviceBuffer> {
    let mut y = DeviceBuffer::uninit(x.len())?;
    if x.is_empty() {
        return Ok(y);
    }
    let n = as_i64(x.len())?;
    launch!(
        MODULE,
        name,
        grid_1d(x.len()),
        [x.slice(), &n, y.slice_mut()]
    );
    Ok(y)
}

/// a + b. Its gradient is the output gradient, for both.
pub fn add(a: &DeviceBuffer, b: &DeviceBuffer) -> Result<DeviceBuffer> {
    binary("ew_add", a, b)
}

/// a · b.
pub fn mul(a: &DeviceBuffer, b: &DeviceBuffer) -> Result<DeviceBuffer> {
    binary("ew_mul", a, b)
}

/// (g·b, g·a): the gradients of a·b.
pub fn mul_backward(
    g: &DeviceBuffer,
    a: &DeviceBuffer,
    b: &DeviceBuffer,
) -> Result<(DeviceBuffer, DeviceBuffer)> {
    same_len("mul_backward a", g, a)?;
    same_len("mul_backward b", g, b)?;
    let (mut da, mut db) = (
        DeviceBuffer::uninit(g.len())?,
        DeviceBuffer::uninit(g.len())?,
    );
    if !g.is_empty() {
        let n = as_i64(g.len())?;
        launch!(
            MODULE,
            "ew_mul_backward",
            grid_1d(g.len()),
            [
                g.slice(),
                a.slice(),
                b.slice(),
                &n,
                da.slice_mut(),
                db.slice_mut()
            ]
        );
    }
    Ok((da, db))
}

/// max(x, 0).
pub fn relu(x: &DeviceBuffer) -> Result<DeviceBuffer> {
    unary("ew_relu", x)
}

/// g·[x > 0].
pub fn relu_backward(g: &DeviceBuffer, x: &DeviceBuffer) -> Result<DeviceBuffer> {
    binary("ew_relu_backward", g, x)
}

/// |x|.
pub fn abs(x: &DeviceBuffer) -> Result<DeviceBuffer> {
    unary("ew_abs", x)
}

/// g·sign(x).
pub fn abs_backward(g: &DeviceBuffer, x: &DeviceBuffer) -> Result<DeviceBuffer> {
    binary("ew_abs_backward", g, x)
}

/// sign(x) ∈ {−1, 0, 1} (0 for 0 and NaN); its gradient is zero.
pub fn sign(x: &DeviceBuffer) -> Result<DeviceBuffer> {
    unary("ew_sign", x)
}

/// s·x (also the gradient of s·x).
pub fn scale(x: &DeviceBuffer, s: f32) -> Result<DeviceBuffer> {
    unary_with("ew_scale", x, s)
}

/// f(x, s) element-wise for a kernel `name(x, s, n, y)`.
fn unary_with(name: &'static str, x: &DeviceBuffer, s: f32) -> Result<DeviceBuffer> {
    let mut y = DeviceBuffer::uninit(x.len())?;
    if !x.is_empty() {
        let n = as_i64(x.len())?;
        launch!(
            MODULE,
            name,
            grid_1d(x.len()),
            [x.slice(), &s, &n, y.slice_mut()]
        );
    }
    Ok(y)
}

/// x + s.
pub fn add_scalar(x: &DeviceBuffer, s: f32) -> Result<DeviceBuffer> {
    unary_with("ew_add_scalar", x, s)
}

/// x^p.
pub fn powf(x: &DeviceBuffer, p: f32) -> Result<DeviceBuffer> {
    unary_with("ew_powf", x, p)
}

/// g·p·x^(p−1): the gradient of x^p.
pub fn powf_backward(g: &DeviceBuffer, x: &DeviceBuffer, p: f32) -> Result<DeviceBuffer> {
    same_len("powf_backward", g, x)?;
    let mut dx = DeviceBuffer::uninit(x.len())?;
    if !x.is_empty() {
        let n = as_i64(x.len())?;
        launch!(
            MODULE,
            "ew_powf_backward",
            grid_1d(x.len()),
            [g.slice(), x.slice(), &p, &n, dx.slice_mut()]
        );
    }
    Ok(dx)
}

/// `len` copies of `v`.
pub fn fill(len: usize, v: f32) -> Result<DeviceBuffer> {
    let mut y = DeviceBuffer::uninit(len)?;
    if len > 0 {
        let n = as_i64(len)?;
        launch!(MODULE, "ew_fill", grid_1d(len), [y.slice_mut(), &v, &n]);
    }
    Ok(y)
}

/// y ← y + s·x in place.
pub fn add_scaled(y: &mut DeviceBuffer, x: &DeviceBuffer, s: f32) -> Result<()> {
    check_len("add_scaled", x.len(), y.len())?;
    if !x.is_empty() {
        let n = as_i64(x.len())?;
        launch!(
            MODULE,
            "ew_add_scaled",
            grid_1d(x.len()),
            [y.slice_mut(), x.slice(), &s, &n]
        );
    }
    Ok(())
}
