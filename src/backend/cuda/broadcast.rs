//! Launch wrappers for `kernels/broadcast.cu`: shape-general element-wise maps and reductions.
//!
//! - [`map`]: `y = op(g, a, b)` over an output shape, each operand broadcast to it (NumPy
//!   rules); the binary ops, the rarer unary maps and every gradient formula of
//!   `ops::elementwise` ([`MapOp`]);
//! - [`reduce_to`]: the sum or maximum of a tensor over the axes where a target shape has 1 (or
//!   lacks the axis): `sum_axes`, `max_axes` and the gradient of a broadcast;
//! - [`argmax_axis`], [`copy_blocks`] (concatenation along any axis), [`gather_rows`] and
//!   [`scatter_rows`] (row gathers with repeats, and their backward).
//!
//! Shapes are checked here (an operand must broadcast to the output; buffers must hold their
//! shapes), then simplified before launch: axes of size 1 dropped, and adjacent axes merged where
//! every operand's strides allow, so a kernel indexes over as few axes as the layout needs.

use crate::backend::cuda::buffer::{DeviceBuffer, DeviceVec};
use crate::backend::cuda::context::{cuda, grid_1d};
use crate::tensor::shape::{broadcast_shapes, broadcast_strides, numel, strides};
use crate::{Error, Result};
use cudarc::driver::{DeviceRepr, LaunchConfig};

/// The most axes a launch indexes over after simplification.
pub const MAX_RANK: usize = 8;

/// Launch `kernels/broadcast.cu`'s kernel `name` with the given arguments.
macro_rules! launch {
    ($name:expr, $cfg:expr, [$($arg:expr),* $(,)?]) => {{
        let mut b = cuda()?.launch("broadcast", $name)?;
        $( b.arg($arg); )*
        // SAFETY: the arguments match the kernel's signature in kernels/broadcast.cu, and the
        // wrappers checked every buffer against the sizes and strides the kernel is given.
        unsafe { b.launch($cfg) }?;
    }};
}

/// The kernels' operation codes (`MapOp` in kernels/broadcast.cu). Forward ops read `a` and
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

/// One operand of a map: its values and the shape they hold.
#[derive(Clone, Copy)]
pub struct Operand<'a> {
    pub values: &'a DeviceBuffer,
    pub shape: &'a [usize],
}

impl<'a> Operand<'a> {
    pub fn new(values: &'a DeviceBuffer, shape: &'a [usize]) -> Operand<'a> {
        Operand { values, shape }
    }
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

/// `dims` with the strides of each of `K` operands, simplified: axes of size 1 dropped, then
/// each axis merged into the one before it where, for every operand, stepping the earlier axis
/// equals running through the later one (`stride[i] == stride[i+1]·dims[i+1]`, also true of
/// broadcast axes, whose strides are 0).
fn simplify<const K: usize>(dims: &[usize], strides: [&[usize]; K]) -> (Vec<i64>, [Vec<i64>; K]) {
    let mut out_dims: Vec<i64> = Vec::new();
    let mut out_strides: [Vec<i64>; K] = std::array::from_fn(|_| Vec::new());
    for (ax, &d) in dims.iter().enumerate() {
        if d == 1 {
            continue;
        }
        let mergeable = !out_dims.is_empty()
            && (0..K).all(|k| {
                let last = out_strides[k].len() - 1;
                out_strides[k][last] == strides[k][ax] as i64 * d as i64
            });
        if mergeable {
            let last = out_dims.len() - 1;
            out_dims[last] *= d as i64;
            for (k, s) in out_strides.iter_mut().enumerate() {
                s[last] = strides[k][ax] as i64;
            }
        } else {
            out_dims.push(d as i64);
            for (k, s) in out_strides.iter_mut().enumerate() {
                s.push(strides[k][ax] as i64);
            }
        }
    }
    (out_dims, out_strides)
}

fn too_many_axes(what: &str, dims: &[usize]) -> Error {
    Error::Shape(format!(
        "{what}: shape {dims:?} needs more than {MAX_RANK} axes on the GPU after merging"
    ))
}

fn padded<const N: usize>(v: &[i64]) -> [i64; N] {
    let mut out = [0; N];
    out[..v.len()].copy_from_slice(v);
    out
}

/// Check that `values` holds `shape` and that `shape` broadcasts to `out`.
fn check_operand(what: &str, op: Operand<'_>, out: &[usize]) -> Result<()> {
    if op.values.len() != numel(op.shape) {
        return Err(Error::Shape(format!(
            "{what}: a buffer of {} values for shape {:?}",
            op.values.len(),
            op.shape
        )));
    }
    if op.shape.len() > out.len() || broadcast_shapes(op.shape, out)? != out {
        return Err(Error::Shape(format!(
            "{what}: shape {:?} does not broadcast to {out:?}",
            op.shape
        )));
    }
    Ok(())
}

/// Blocks for a grid-stride walk over `n` elements (enough to fill the device, no more).
fn stride_grid(n: usize) -> LaunchConfig {
    let mut cfg = grid_1d(n);
    cfg.grid_dim.0 = cfg.grid_dim.0.min(65_535);
    cfg
}

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
            "argmax_axis",
            grid_1d(outer * inner),
            [x.slice(), &o, &l, &i, y.slice_mut()]
        );
    }
    Ok(y)
}

/// One side of a [`copy_blocks`]: `blocks` runs of `width` values, run `o` at `o·pitch + at`.
#[derive(Clone, Copy, Debug)]
pub struct Blocks {
    pub pitch: usize,
    pub at: usize,
}

/// Copy `blocks` runs of `width` values from `src` to `dst`, each laid out as its [`Blocks`]
/// says: a slab of a concatenation along an axis (and, reversed, its gradient).
pub fn copy_blocks(
    src: &DeviceBuffer,
    from: Blocks,
    dst: &mut DeviceBuffer,
    to: Blocks,
    blocks: usize,
    width: usize,
) -> Result<()> {
    if blocks == 0 || width == 0 {
        return Ok(());
    }
    let end = |b: Blocks| (blocks - 1) * b.pitch + b.at + width;
    if end(from) > src.len() || end(to) > dst.len() || from.pitch < width || to.pitch < width {
        return Err(Error::Shape(format!(
            "copy of {blocks} runs of {width}: from {from:?} of {} values to {to:?} of {}",
            src.len(),
            dst.len()
        )));
    }
    let [sp, sa, bl, wi, dp, da] =
        [from.pitch, from.at, blocks, width, to.pitch, to.at].map(|v| v as i64);
    launch!(
        "copy_blocks",
        stride_grid(blocks * width),
        [src.slice(), &sp, &sa, &bl, &wi, dst.slice_mut(), &dp, &da]
    );
    Ok(())
}

/// Upload `values` (indices below 2³¹) as i32, one counted copy.
fn upload_indices(what: &str, values: &[usize]) -> Result<DeviceVec<i32>> {
    let host = values
        .iter()
        .map(|&v| i32::try_from(v))
        .collect::<std::result::Result<Vec<i32>, _>>()
        .map_err(|_| Error::Invalid(format!("{what}: an index above 2^31")))?;
    let uploaded = DeviceVec::from_host(&host)?;
    crate::tensor::transfers::count_upload();
    Ok(uploaded)
}

/// Rows `index` of `x` (`rows` rows of `row` values), in that order; repeats allowed.
pub fn gather_rows(
    x: &DeviceBuffer,
    rows: usize,
    row: usize,
    index: &[usize],
) -> Result<DeviceBuffer> {
    if x.len() != rows * row {
        return Err(Error::Shape(format!(
            "gather: {} values for {rows} rows of {row}",
            x.len()
        )));
    }
    if let Some(&bad) = index.iter().find(|&&i| i >= rows) {
        return Err(Error::Shape(format!("gather: row {bad} of {rows}")));
    }
    let n = index.len() * row;
    let mut y = DeviceBuffer::uninit(n)?;
    if n > 0 {
        let (k, r) = (index.len() as i64, row as i64);
        let index = upload_indices("gather indices", index)?;
        launch!(
            "gather_rows",
            stride_grid(n),
            [x.slice(), index.slice(), &k, &r, y.slice_mut()]
        );
    }
    Ok(y)
}

/// The gradient of [`gather_rows`]: `rows` rows of `row` values, row r the sum (in increasing k,
/// from 0, as the CPU adds) of `g`'s rows k with `index[k] == r`; rows never gathered are 0.
pub fn scatter_rows(
    g: &DeviceBuffer,
    row: usize,
    index: &[usize],
    rows: usize,
) -> Result<DeviceBuffer> {
    if g.len() != index.len() * row {
        return Err(Error::Shape(format!(
            "scatter: {} values for {} rows of {row}",
            g.len(),
            index.len()
        )));
    }
    if let Some(&bad) = index.iter().find(|&&i| i >= rows) {
        return Err(Error::Shape(format!("scatter: row {bad} of {rows}")));
    }
    let n = rows * row;
    if index.is_empty() {
        return DeviceBuffer::zeros(n);
    }
    let mut dx = DeviceBuffer::uninit(n)?;
    if n == 0 {
        return Ok(dx);
    }
    // Per destination row, its sources in increasing k (counting sort), after the row starts:
    // one upload.
    let mut starts = vec![0usize; rows + 1];
    for &i in index {
        starts[i + 1] += 1;
    }
    for r in 0..rows {
        starts[r + 1] += starts[r];
    }
    let mut next = starts.clone();
    let mut table = starts.clone();
    table.resize(rows + 1 + index.len(), 0);
    for (k, &i) in index.iter().enumerate() {
        table[rows + 1 + next[i]] = k;
        next[i] += 1;
    }
    let table = upload_indices("scatter table", &table)?;
    let (head, sources) = (
        table.slice().slice(..rows + 1),
        table.slice().slice(rows + 1..table.len()),
    );
    let (r64, w64) = (rows as i64, row as i64);
    launch!(
        "scatter_rows",
        stride_grid(n),
        [g.slice(), &head, &sources, &r64, &w64, dx.slice_mut()]
    );
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simplify_merges_contiguous_and_broadcast_axes() {
        // [4, 5, 6] with a [5, 6] operand: one contiguous run of 30 repeated 4 times.
        let out = [4, 5, 6];
        let a = broadcast_strides(&[4, 5, 6], &out);
        let b = broadcast_strides(&[5, 6], &out);
        let (dims, [sa, sb]) = simplify(&out, [&a, &b]);
        assert_eq!(dims, vec![4, 30]);
        assert_eq!(sa, vec![30, 1]);
        assert_eq!(sb, vec![0, 1]);
        // A middle broadcast axis cannot merge with its neighbours for the operand that has it.
        let c = broadcast_strides(&[4, 1, 6], &out);
        let (dims, [sa, sc]) = simplify(&out, [&a, &c]);
        assert_eq!(dims, vec![4, 5, 6]);
        assert_eq!(sa, vec![30, 6, 1]);
        assert_eq!(sc, vec![6, 0, 1]);
        // Axes of size 1 vanish; a scalar operand broadcasts along everything.
        let out = [1, 3, 1, 2];
        let a = broadcast_strides(&out, &out);
        let s = broadcast_strides(&[], &out);
        let (dims, [sa, ss]) = simplify(&out, [&a, &s]);
        assert_eq!(dims, vec![6]);
        assert_eq!(sa, vec![1]);
        assert_eq!(ss, vec![0]);
        // A scalar output has no axes.
        let (dims, [sa]) = simplify(&[], [&[][..]]);
        assert!(dims.is_empty() && sa.is_empty());
    }
}
