//! Reductions on the GPU: whole-tensor sums (attack objectives sum their per-sample losses),
//! sums and maxima over axes, argmax along an axis (`reduce.cu`, and the broadcast's adjoint in `elementwise.cu`).

use crate::ops::elementwise::cuda::filled;
use crate::ops::elementwise::launch::map;
use crate::ops::elementwise::launch::reduce_to;
use crate::ops::elementwise::launch::MapOp;
use crate::ops::elementwise::launch::Reduce;
use crate::ops::gpu::{buf, expect, resident};
use crate::ops::reduce::launch::argmax_axis;
use crate::ops::reduce::launch::channel_sum;
use crate::runtime::cuda::profile;
use crate::runtime::cuda::strided::Operand;
use crate::tensor::Tensor;

/// Σ x, a scalar; its backward broadcasts the gradient to every element.
pub(crate) fn sum_all(x: &Tensor) -> Tensor {
    let _p = profile::scope("sum");
    let n = x.numel();
    let xs = resident(x);
    let total = if n == 0 {
        filled(1, 0.0)
    } else {
        expect("sum", channel_sum(buf(&xs), 1, 1, n))
    };
    let shape = x.shape().to_vec();
    Tensor::from_device_op(total, &[], &[x], move |g, _| {
        if n == 0 {
            return vec![Some(crate::ops::gpu::tensor(filled(0, 0.0), &shape))];
        }
        // g in every element: the scalar broadcast to the input's shape.
        let gs = resident(g);
        let spread = [None, None, Some(Operand::new(buf(&gs), &[]))];
        let d = expect(
            "sum backward",
            map(MapOp::CopyB, &shape, spread, (0.0, 0.0)),
        );
        vec![Some(crate::ops::gpu::tensor(d, &shape))]
    })
}

/// Σ over the axes where `kept` (the input's shape with reduced axes as 1) has 1, shaped
/// `out_shape` (`kept`, or `kept` without those axes); its backward spreads the gradient back
/// over the reduced axes.
pub(crate) fn sum_axes(x: &Tensor, kept: &[usize], out_shape: &[usize]) -> Tensor {
    let _p = profile::scope("sum_axes");
    let xs = resident(x);
    let y = expect(
        "sum_axes",
        reduce_to(buf(&xs), x.shape(), kept, Reduce::Sum),
    );
    let (in_shape, kept) = (x.shape().to_vec(), kept.to_vec());
    Tensor::from_device_op(y, out_shape, &[x], move |g, _| {
        let gs = resident(g);
        let spread = [None, None, Some(Operand::new(buf(&gs), &kept))];
        let d = expect(
            "sum_axes backward",
            map(MapOp::CopyB, &in_shape, spread, (0.0, 0.0)),
        );
        vec![Some(crate::ops::gpu::tensor(d, &in_shape))]
    })
}

/// The maximum over the axes where `kept` has 1 (as [`sum_axes`]); the gradient goes to the
/// maximal entries, split evenly among ties, as on the CPU.
pub(crate) fn max_axes(x: &Tensor, kept: &[usize], out_shape: &[usize]) -> Tensor {
    let _p = profile::scope("max_axes");
    let xs = resident(x);
    let y = expect(
        "max_axes",
        reduce_to(buf(&xs), x.shape(), kept, Reduce::Max),
    );
    let max = crate::ops::gpu::copy(&y);
    let kept = kept.to_vec();
    Tensor::from_device_op(y, out_shape, &[x], move |g, _| {
        let what = "max_axes backward";
        let gs = resident(g);
        let shape = xs.shape();
        let (x_op, max_op) = (Operand::new(buf(&xs), shape), Operand::new(&max, &kept));
        let none = (0.0, 0.0);
        let hits = expect(
            what,
            map(MapOp::Eq, shape, [None, Some(x_op), Some(max_op)], none),
        );
        let counts = expect(what, reduce_to(&hits, shape, &kept, Reduce::Sum));
        let per_hit = [
            None,
            Some(Operand::new(buf(&gs), &kept)),
            Some(Operand::new(&counts, &kept)),
        ];
        let share = expect(what, map(MapOp::Div, &kept, per_hit, none));
        let spread = [Some(Operand::new(&share, &kept)), Some(x_op), Some(max_op)];
        let d = expect(what, map(MapOp::GEq, shape, spread, none));
        vec![Some(crate::ops::gpu::tensor(d, shape))]
    })
}

/// The first index of the maximum along `axis`, as floats (not differentiable).
pub(crate) fn argmax(x: &Tensor, axis: usize, out_shape: &[usize]) -> Tensor {
    let _p = profile::scope("argmax");
    let xs = resident(x);
    let y = expect("argmax", argmax_axis(buf(&xs), x.shape(), axis));
    crate::ops::gpu::tensor(y, out_shape)
}
