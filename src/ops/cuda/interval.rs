//! Interval ops on the GPU (`kernels/bounds.cu`): ReLU and the per-channel affine map on boxes
//! [2, N, ...], and the last layer's elided margins.

use super::{buf, expect, resident, tensor};
use crate::backend::cuda::bounds::{self, LinearDims};
use crate::backend::cuda::profile;
use crate::backend::cuda::train_ops::{ChannelDims, DeviceLabels};
use crate::tensor::Tensor;

/// SABR's small boxes around `adv` inside the clipped ε-boxes of `x`, stacked `[2, …]` (a
/// constant: no gradient flows into the attack).
pub(crate) fn sabr_box(x: &Tensor, adv: &Tensor, eps: f32, tau: f32) -> Tensor {
    let _p = profile::scope("sabr_box");
    let (xs, advs) = (resident(x), resident(adv));
    let y = expect("sabr_box", bounds::sabr_box(buf(&xs), buf(&advs), eps, tau));
    let mut shape = vec![2];
    shape.extend_from_slice(x.shape());
    tensor(y, &shape)
}

pub(crate) fn interval_relu(boxes: &Tensor) -> Tensor {
    let _p = profile::scope("interval_relu");
    let xs = resident(boxes);
    let y = expect("interval_relu", bounds::interval_relu(buf(&xs)));
    Tensor::from_device_op(y, boxes.shape(), &[boxes], move |g, _| {
        let gs = resident(g);
        let d = bounds::interval_relu_backward(buf(&xs), buf(&gs));
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
        bounds::interval_channel_affine(buf(&xs), buf(&ss), buf(&hs), d),
    );
    Tensor::from_device_op(y, boxes.shape(), &[boxes, scale, shift], move |g, needs| {
        let gs = resident(g);
        let grads = expect(
            "interval_channel_affine backward",
            bounds::interval_channel_affine_backward(buf(&xs), buf(&ss), buf(&gs), d),
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
        bounds::elided_margins(
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
            bounds::elided_margins_backward(buf(&hs), buf(&ws), &device_labels, buf(&gs), dims),
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
