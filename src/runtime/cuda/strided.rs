//! Layout arithmetic for the shape-general kernels (element-wise maps, reductions, strided
//! copies): buffers with a shape ([`Operand`]), broadcast checks, and the simplification of an
//! index space before launch: axes of size 1 dropped, and adjacent axes merged where every
//! operand's strides allow, so a kernel indexes over as few axes as the layout needs.

use crate::runtime::cuda::buffer::DeviceBuffer;
use crate::runtime::cuda::context::grid_1d;
use crate::runtime::shape::{broadcast_shapes, numel};
use crate::{Error, Result};
use cudarc::driver::LaunchConfig;

/// The most axes a launch indexes over after simplification.
pub const MAX_RANK: usize = 8;

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

/// `dims` with the strides of each of `K` operands, simplified: axes of size 1 dropped, then
/// each axis merged into the one before it where, for every operand, stepping the earlier axis
/// equals running through the later one (`stride[i] == stride[i+1]·dims[i+1]`, also true of
/// broadcast axes, whose strides are 0).
pub fn simplify<const K: usize>(
    dims: &[usize],
    strides: [&[usize]; K],
) -> (Vec<i64>, [Vec<i64>; K]) {
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

pub fn too_many_axes(what: &str, dims: &[usize]) -> Error {
    Error::Shape(format!(
        "{what}: shape {dims:?} needs more than {MAX_RANK} axes on the GPU after merging"
    ))
}

pub fn padded<const N: usize>(v: &[i64]) -> [i64; N] {
    let mut out = [0; N];
    out[..v.len()].copy_from_slice(v);
    out
}

/// Check that `values` holds `shape` and that `shape` broadcasts to `out`.
pub fn check_operand(what: &str, op: Operand<'_>, out: &[usize]) -> Result<()> {
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
pub fn stride_grid(n: usize) -> LaunchConfig {
    let mut cfg = grid_1d(n);
    cfg.grid_dim.0 = cfg.grid_dim.0.min(65_535);
    cfg
}

/// `op(g, a, b)` element-wise over `out_shape`, each present operand broadcast to it; `p` and `q`
#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::shape::broadcast_strides;

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
