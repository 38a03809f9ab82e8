//! Reductions along axes: sum, mean, max (with gradients) and argmax. On the GPU they run in
//! `ops::reduce::cuda`.

pub(crate) mod cuda;
pub mod launch;

use crate::ops::elementwise::broadcast_to;
use crate::tensor::shape::{numel, resolve_axis};
use crate::tensor::Tensor;

/// Reduce one axis of `data` (shape `shape`) with `combine`, starting from `init`.
fn reduce_axis(
    data: &[f32],
    shape: &[usize],
    axis: usize,
    init: f32,
    combine: impl Fn(f32, f32) -> f32 + Sync + Send,
) -> Vec<f32> {
    let outer: usize = shape[..axis].iter().product();
    let len = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    if inner == 1 && len > 0 {
        // The last axis: a fold over each contiguous row, in the same order as below, rows in
        // parallel when there is enough work (each output is one row's, so the result does not
        // depend on the split).
        let row = |r: &[f32]| r.iter().fold(init, |acc, &v| combine(acc, v));
        return if outer * len >= 1 << 16 {
            use rayon::prelude::*;
            data.par_chunks(len).map(row).collect()
        } else {
            data.chunks(len).map(row).collect()
        };
    }
    let mut out = vec![init; outer * inner];
    for o in 0..outer {
        let dst = &mut out[o * inner..(o + 1) * inner];
        for l in 0..len {
            let src = &data[(o * len + l) * inner..(o * len + l + 1) * inner];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = combine(*d, s);
            }
        }
    }
    out
}

/// Sorted, deduplicated, non-negative axes.
fn normalise_axes(axes: &[isize], rank: usize) -> Vec<usize> {
    let mut ax: Vec<usize> = axes.iter().map(|&a| resolve_axis(a, rank)).collect();
    ax.sort_unstable();
    ax.dedup();
    ax
}

/// Reduce several axes one at a time (last first, so earlier indices stay valid); the result
/// keeps reduced axes as size 1.
fn reduce_axes_keepdim(
    x: &Tensor,
    axes: &[usize],
    init: f32,
    combine: impl Fn(f32, f32) -> f32 + Copy + Sync + Send,
) -> (Vec<f32>, Vec<usize>) {
    let mut shape = x.shape().to_vec();
    let mut data = x.to_vec();
    for &a in axes.iter().rev() {
        data = reduce_axis(&data, &shape, a, init, combine);
        shape[a] = 1;
    }
    (data, shape)
}

/// The shape with `axes` (normalised) reduced to 1, and the result's shape (that, or without
/// those axes).
fn reduced_shapes(shape: &[usize], axes: &[usize], keepdim: bool) -> (Vec<usize>, Vec<usize>) {
    let mut kept = shape.to_vec();
    for &a in axes {
        kept[a] = 1;
    }
    let out = if keepdim {
        kept.clone()
    } else {
        drop_axes(shape, axes)
    };
    (kept, out)
}

fn drop_axes(shape: &[usize], axes: &[usize]) -> Vec<usize> {
    shape
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, &d)| d)
        .collect()
}

impl Tensor {
    /// Sum over `axes` (negative axes count from the end).
    pub fn sum_axes(&self, axes: &[isize], keepdim: bool) -> Tensor {
        let axes = normalise_axes(axes, self.rank());
        if self.is_cuda() {
            let (kept, out_shape) = reduced_shapes(self.shape(), &axes, keepdim);
            return crate::ops::reduce::cuda::sum_axes(self, &kept, &out_shape);
        }
        let (data, kept) = reduce_axes_keepdim(self, &axes, 0.0, |a, b| a + b);
        let out_shape = if keepdim {
            kept.clone()
        } else {
            drop_axes(self.shape(), &axes)
        };
        let in_shape = self.shape().to_vec();
        Tensor::from_op(data, &out_shape, &[self], move |g, _| {
            let g = g.detach().reshape(&kept);
            vec![Some(Tensor::from_vec(
                broadcast_to(&g, &in_shape),
                &in_shape,
            ))]
        })
    }

    pub fn mean_axes(&self, axes: &[isize], keepdim: bool) -> Tensor {
        let n: usize = normalise_axes(axes, self.rank())
            .iter()
            .map(|&a| self.dim(a))
            .product();
        self.sum_axes(axes, keepdim).mul_scalar(1.0 / n as f32)
    }

    /// Sum of all elements, as a scalar (shape []).
    pub fn sum(&self) -> Tensor {
        if self.is_cuda() {
            return crate::ops::reduce::cuda::sum_all(self);
        }
        let all: Vec<isize> = (0..self.rank() as isize).collect();
        self.sum_axes(&all, false)
    }

    pub fn mean(&self) -> Tensor {
        self.sum().mul_scalar(1.0 / self.numel().max(1) as f32)
    }

    /// Maximum over `axes`; the gradient goes to the maximal entries, split evenly among ties.
    pub fn max_axes(&self, axes: &[isize], keepdim: bool) -> Tensor {
        assert!(self.numel() > 0, "max of an empty tensor");
        let axes = normalise_axes(axes, self.rank());
        if self.is_cuda() {
            let (kept, out_shape) = reduced_shapes(self.shape(), &axes, keepdim);
            return crate::ops::reduce::cuda::max_axes(self, &kept, &out_shape);
        }
        let (data, kept) = reduce_axes_keepdim(self, &axes, f32::NEG_INFINITY, f32::max);
        let out_shape = if keepdim {
            kept.clone()
        } else {
            drop_axes(self.shape(), &axes)
        };
        let x = self.detach();
        let max_kept = Tensor::from_vec(data.clone(), &kept);
        Tensor::from_op(data, &out_shape, &[self], move |g, _| {
            let in_shape = x.shape();
            let m = broadcast_to(&max_kept, in_shape);
            let hits: Vec<f32> = x
                .data()
                .iter()
                .zip(&m)
                .map(|(a, b)| if a == b { 1.0 } else { 0.0 })
                .collect();
            let hits_t = Tensor::from_vec(hits.clone(), in_shape);
            let (counts, _) = reduce_axes_keepdim(&hits_t, &axes, 0.0, |a, b| a + b);
            let share = Tensor::from_vec(
                g.data().iter().zip(&counts).map(|(g, c)| g / c).collect(),
                &kept,
            );
            let share = broadcast_to(&share, in_shape);
            let d = hits.iter().zip(&share).map(|(h, s)| h * s).collect();
            vec![Some(Tensor::from_vec(d, in_shape))]
        })
    }

    /// Index of the maximum along `axis` (the first one on ties), as a tensor of indices
    /// stored in f32 (exact below 2^24). Not differentiable.
    pub fn argmax(&self, axis: isize, keepdim: bool) -> Tensor {
        let a = resolve_axis(axis, self.rank());
        let shape = self.shape();
        let outer: usize = shape[..a].iter().product();
        let len = shape[a];
        let inner: usize = shape[a + 1..].iter().product();
        assert!(len > 0, "argmax over an empty axis");
        let mut out_shape = shape.to_vec();
        if keepdim {
            out_shape[a] = 1;
        } else {
            out_shape.remove(a);
        }
        if self.is_cuda() {
            return crate::ops::reduce::cuda::argmax(self, a, &out_shape);
        }
        let d = self.data();
        let mut out = vec![0.0; outer * inner];
        for o in 0..outer {
            for i in 0..inner {
                let mut best = 0;
                for l in 1..len {
                    if d[(o * len + l) * inner + i] > d[(o * len + best) * inner + i] {
                        best = l;
                    }
                }
                out[o * inner + i] = best as f32;
            }
        }
        debug_assert_eq!(numel(&out_shape), out.len());
        Tensor::from_vec(out, &out_shape)
    }

    /// For a [rows, classes] tensor: the argmax of each row.
    pub fn argmax_rows(&self) -> Vec<usize> {
        assert_eq!(self.rank(), 2, "argmax_rows needs a matrix");
        self.argmax(1, false)
            .data()
            .iter()
            .map(|&v| v as usize)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_match_hand_computation() {
        let x = Tensor::from_vec((0..24).map(|v| v as f32).collect(), &[2, 3, 4]);
        let s = x.sum_axes(&[0, 2], false);
        assert_eq!(s.shape(), &[3]);
        // channel 0: 0+1+2+3 + 12+13+14+15 = 60
        assert_eq!(s.to_vec(), vec![60., 92., 124.]);
        assert_eq!(x.sum_axes(&[1], true).shape(), &[2, 1, 4]);
        assert_eq!(
            x.max_axes(&[-1], false).to_vec(),
            vec![3., 7., 11., 15., 19., 23.]
        );
        assert_eq!(x.mean().item(), 11.5);
        let m = Tensor::from_vec(vec![1., 5., 5., 0., -1., -3.], &[2, 3]);
        assert_eq!(m.argmax_rows(), vec![1, 0]);
    }
}
