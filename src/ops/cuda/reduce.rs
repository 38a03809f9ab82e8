//! Whole-tensor sums on the GPU (attack objectives sum their per-sample losses).

use super::{buf, expect, filled, resident};
use crate::backend::cuda::conv::channel_sum;
use crate::backend::cuda::profile;
use crate::backend::cuda::train_ops::{batch_norm_affine, BatchNormParams, ChannelDims};
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
            return vec![Some(super::tensor(filled(0, 0.0), &shape))];
        }
        // g in every element: batch norm's map of zeros with scale 0 and shift g.
        let gs = resident(g);
        let (zeros, zero, one) = (filled(n, 0.0), filled(1, 0.0), filled(1, 1.0));
        let params = BatchNormParams {
            mean: &zero,
            var: &one,
            gamma: &zero,
            beta: buf(&gs),
            eps: 0.0,
        };
        let dims = ChannelDims {
            batch: 1,
            channels: 1,
            spatial: n,
        };
        let d = expect("sum backward", batch_norm_affine(&zeros, params, dims));
        vec![Some(super::tensor(d, &shape))]
    })
}
