//! Interval ops on the GPU (`ops/interval/interval.cu`): ReLU and the per-channel affine map on boxes
//! [2, N, ...], and the last layer's elided margins.

use crate::ops::gpu::{buf, expect, resident, tensor};
use crate::ops::interval::launch::LinearDims;
use crate::ops::loss::launch::DeviceLabels;
use crate::ops::matmul::cuda::add_row_bias;
use crate::ops::matmul::launch::{matmul_at, GemmSpec};
use crate::ops::norm::launch::ChannelDims;
use crate::runtime::cuda::profile;
use crate::runtime::cuda::DeviceBuffer;
use crate::tensor::Tensor;

/// SABR's small boxes around `adv` inside the clipped ε-boxes of `x`, stacked `[2, …]` (a
/// constant: no gradient flows into the attack).
pub(crate) fn sabr_box(x: &Tensor, adv: &Tensor, eps: f32, tau: f32) -> Tensor {
    let _p = profile::scope("sabr_box");
    let (xs, advs) = (resident(x), resident(adv));
    let y = expect(
        "sabr_box",
        crate::ops::interval::launch::sabr_box(buf(&xs), buf(&advs), eps, tau),
    );
    let mut shape = vec![2];
    shape.extend_from_slice(x.shape());
    tensor(y, &shape)
}

pub(crate) fn interval_relu(boxes: &Tensor) -> Tensor {
    let _p = profile::scope("interval_relu");
    let xs = resident(boxes);
    let y = expect(
        "interval_relu",
        crate::ops::interval::launch::interval_relu(buf(&xs)),
    );
    Tensor::from_device_op(y, boxes.shape(), &[boxes], move |g, _| {
        let gs = resident(g);
        let d = crate::ops::interval::launch::interval_relu_backward(buf(&xs), buf(&gs));
        vec![Some(tensor(
            expect("interval_relu backward", d),
            xs.shape(),
        ))]
    })
}

/// Per-channel affine map on boxes [2, N, C, ...]: centres get it, radii get |scale|.
pub(crate) fn interval_channel_affine(boxes: &Tensor, scale: &Tensor, shift: &Tensor) -> Tensor {
    let _p = profile::scope("interval_channel_affine");
    let (xs, ss, hs) = (resident(boxes), resident(scale), resident(shift));
    let d = expect(
        "interval_channel_affine",
        ChannelDims::of_shape(&boxes.shape()[1..]),
    );
    let y = expect(
        "interval_channel_affine",
        crate::ops::interval::launch::interval_channel_affine(buf(&xs), buf(&ss), buf(&hs), d),
    );
    Tensor::from_device_op(y, boxes.shape(), &[boxes, scale, shift], move |g, needs| {
        let gs = resident(g);
        let grads = expect(
            "interval_channel_affine backward",
            crate::ops::interval::launch::interval_channel_affine_backward(
                buf(&xs),
                buf(&ss),
                buf(&gs),
                d,
            ),
        );
        vec![
            needs[0].then(|| tensor(grads.boxes, xs.shape())),
            needs[1].then(|| tensor(grads.scale, &[d.channels])),
            needs[2].then(|| tensor(grads.shift, &[d.channels])),
        ]
    })
}

/// Lower bounds of z_y − z_j over the boxes `hidden` [2, N, in] through the last linear layer
/// merged with the specification: [N, classes], 0 at each label.
pub(crate) fn elided_margins(
    hidden: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    labels: &[usize],
) -> Tensor {
    let _p = profile::scope("elided_margins");
    let dims = LinearDims {
        batch: hidden.dim(1),
        in_features: hidden.dim(2),
        out_features: weight.dim(0),
    };
    let device_labels = expect(
        "elided margins",
        DeviceLabels::cached(labels, dims.out_features),
    );
    let (hs, ws) = (resident(hidden), resident(weight));
    let bs = bias.map(resident);
    let lb = expect(
        "elided margins",
        crate::ops::interval::launch::elided_margins(
            buf(&hs),
            buf(&ws),
            bs.as_ref().map(buf),
            &device_labels,
            dims,
        ),
    );
    let mut inputs = vec![hidden, weight];
    inputs.extend(bias);
    let shape = [dims.batch, dims.out_features];
    Tensor::from_device_op(lb, &shape, &inputs, move |g, needs| {
        let gs = resident(g);
        let grads = expect(
            "elided margins backward",
            crate::ops::interval::launch::elided_margins_backward(
                buf(&hs),
                buf(&ws),
                &device_labels,
                buf(&gs),
                dims,
            ),
        );
        let mut out = vec![
            needs[0].then(|| tensor(grads.hidden, hs.shape())),
            needs[1].then(|| tensor(grads.weight, ws.shape())),
        ];
        if needs.len() == 3 {
            out.push(needs[2].then(|| tensor(grads.bias, &[dims.out_features])));
        }
        out
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
    let abs_w = crate::ops::elementwise::launch::abs(weight)?;
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
                let d =
                    crate::ops::interval::launch::interval_linear_backward_input(g, buf(&ws), dims);
                tensor(expect(what, d), xs.shape())
            }),
            needs[1].then(|| {
                let d = crate::ops::interval::launch::interval_linear_backward_weight(
                    g,
                    buf(&xs),
                    buf(&ws),
                    dims,
                );
                tensor(expect(what, d), ws.shape())
            }),
        ];
        if needs.len() == 3 {
            grads.push(needs[2].then(|| {
                let d = crate::ops::interval::launch::interval_linear_backward_bias(g, dims);
                tensor(expect(what, d), &[dims.out_features])
            }));
        }
        grads
    })
}
