//! Matrix products and fully connected layers on the GPU: plain (`kernels/gemm.cu`) and on boxes
//! (`kernels/bounds.cu`).

use super::{buf, expect, filled, resident, tensor};
use crate::backend::cuda::bounds::{self, LinearDims};
use crate::backend::cuda::conv::{channel_sum, matmul, matmul_at, GemmSpec};
use crate::backend::cuda::profile;
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

/// a [m, k] · b [k, n].
pub(crate) fn matmul_op(a: &Tensor, b: &Tensor) -> Tensor {
    let _p = profile::scope("matmul");
    let (m, k, n) = (a.dim(0), a.dim(1), b.dim(1));
    let (sa, sb) = (resident(a), resident(b));
    let y = expect("matmul", matmul(buf(&sa), buf(&sb), m, n, k, false, false));
    Tensor::from_device_op(y, &[m, n], &[a, b], move |grad, needs| {
        let gs = resident(grad);
        let g = buf(&gs);
        vec![
            // g · bᵀ and aᵀ · g
            needs[0].then(|| {
                let d = matmul(g, buf(&sb), m, k, n, false, true);
                tensor(expect("matmul backward", d), &[m, k])
            }),
            needs[1].then(|| {
                let d = matmul(buf(&sa), g, k, n, m, true, false);
                tensor(expect("matmul backward", d), &[k, n])
            }),
        ]
    })
}

/// x [n, in] · weightᵀ + bias.
pub(crate) fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let _p = profile::scope("linear");
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

/// (W c + b, |W| r) as two GEMMs (split along K when the outputs are few: a wide flattened
/// feature map, the usual first linear layer), into one stacked [2, n, out] buffer.
fn interval_linear_forward(
    boxes: &DeviceBuffer,
    weight: &DeviceBuffer,
    bias: Option<&DeviceBuffer>,
    dims: LinearDims,
) -> crate::Result<DeviceBuffer> {
    let LinearDims {
        batch: n,
        in_features: inf,
        out_features: outf,
    } = dims;
    let spec = GemmSpec::dense(n, outf, inf, false, true);
    let mut centre = DeviceBuffer::uninit(n * outf)?;
    matmul_at((boxes, 0), (weight, 0), spec, (&mut centre, 0))?;
    if let Some(b) = bias {
        centre = add_row_bias(&centre, b, n, outf);
    }
    let mut y = DeviceBuffer::uninit(2 * n * outf)?;
    y.copy_from(0, &centre, 0, n * outf)?;
    let abs_w = crate::backend::cuda::train_ops::abs(weight)?;
    matmul_at((boxes, n * inf), (&abs_w, 0), spec, (&mut y, n * outf))?;
    Ok(y)
}

/// Boxes [2, n, in] through a linear layer: (W c + b, |W| r).
pub(crate) fn interval_linear(boxes: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let _p = profile::scope("interval_linear");
    let dims = LinearDims {
        batch: boxes.dim(1),
        in_features: boxes.dim(2),
        out_features: weight.dim(0),
    };
    let (xs, ws) = (resident(boxes), resident(weight));
    let bs = bias.map(resident);
    let y = expect(
        "interval_linear",
        interval_linear_forward(buf(&xs), buf(&ws), bs.as_ref().map(buf), dims),
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
