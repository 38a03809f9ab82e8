//! Fully connected layers on the GPU: plain (`kernels/gemm.cu`) and on boxes
//! (`kernels/bounds.cu`).

use super::{buf, expect, filled, resident, tensor};
use crate::backend::cuda::bounds::{self, LinearDims};
use crate::backend::cuda::conv::{channel_sum, matmul};
use crate::backend::cuda::train_ops::{batch_norm_affine, BatchNormParams, ChannelDims};
use crate::backend::cuda::DeviceBuffer;
use crate::tensor::Tensor;

/// `y + bias` per row of `y` [n, out] (batch norm's affine map with scale 1 and shift `bias`:
/// exact, since 1/√(1 + 0) is 1).
fn add_row_bias(y: &DeviceBuffer, bias: &DeviceBuffer, n: usize, out: usize) -> DeviceBuffer {
    let (zeros, ones) = (filled(out, 0.0), filled(out, 1.0));
    let params = BatchNormParams {
        mean: &zeros,
        var: &ones,
        gamma: &ones,
        beta: bias,
        eps: 0.0,
    };
    let dims = ChannelDims {
        batch: n,
        channels: out,
        spatial: 1,
    };
    expect("linear bias", batch_norm_affine(y, params, dims))
}

/// x [n, in] · weightᵀ + bias.
pub(crate) fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let (n, inf, outf) = (x.dim(0), x.dim(1), weight.dim(0));
    let (xs, ws) = (resident(x), resident(weight));
    let mut y = expect(
        "linear",
        matmul(buf(&xs), buf(&ws), n, outf, inf, false, true),
    );
    if let Some(b) = bias {
        y = add_row_bias(&y, buf(&resident(b)), n, outf);
    }
    let mut inputs = vec![x, weight];
    inputs.extend(bias);
    Tensor::from_device_op(y, &[n, outf], &inputs, move |grad, needs| {
        let gs = resident(grad);
        let g = buf(&gs);
        let mut grads = vec![
            needs[0].then(|| {
                let d = expect(
                    "linear backward",
                    matmul(g, buf(&ws), n, inf, outf, false, false),
                );
                tensor(d, &[n, inf])
            }),
            needs[1].then(|| {
                let d = expect(
                    "linear backward",
                    matmul(g, buf(&xs), outf, inf, n, true, false),
                );
                tensor(d, &[outf, inf])
            }),
        ];
        if needs.len() == 3 {
            grads.push(needs[2].then(|| {
                tensor(
                    expect("linear backward", channel_sum(g, n, outf, 1)),
                    &[outf],
                )
            }));
        }
        grads
    })
}

/// Boxes [2, n, in] through a linear layer: (W c + b, |W| r).
pub(crate) fn interval_linear(boxes: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let dims = LinearDims {
        batch: boxes.dim(1),
        in_features: boxes.dim(2),
        out_features: weight.dim(0),
    };
    let (xs, ws) = (resident(boxes), resident(weight));
    let bs = bias.map(resident);
    let y = expect(
        "interval_linear",
        bounds::interval_linear(buf(&xs), buf(&ws), bs.as_ref().map(buf), dims),
    );
    let mut inputs = vec![boxes, weight];
    inputs.extend(bias);
    let shape = [2, dims.batch, dims.out_features];
    Tensor::from_device_op(y, &shape, &inputs, move |grad, needs| {
        let gs = resident(grad);
        let g = buf(&gs);
        let what = "interval_linear backward";
        let mut grads = vec![
            needs[0].then(|| {
                let d = bounds::interval_linear_backward_input(g, buf(&ws), dims);
                tensor(expect(what, d), xs.shape())
            }),
            needs[1].then(|| {
                let d = bounds::interval_linear_backward_weight(g, buf(&xs), buf(&ws), dims);
                tensor(expect(what, d), ws.shape())
            }),
        ];
        if needs.len() == 3 {
            grads.push(needs[2].then(|| {
                let d = bounds::interval_linear_backward_bias(g, dims);
                tensor(expect(what, d), &[dims.out_features])
            }));
        }
        grads
    })
}
