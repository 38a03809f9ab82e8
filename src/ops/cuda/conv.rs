//! Convolution and interval convolution on the GPU (`kernels/conv.cu`).

use super::{buf, expect, resident, tensor};
use crate::backend::cpu::conv::ConvGeometry;
use crate::backend::cuda::conv::{self as kernels, ConvShape, DeviceConvGrads};
use crate::backend::cuda::profile;
use crate::tensor::Tensor;

/// The gradients as tensors shaped like the op's inputs (input, weight and, for 3 inputs, bias).
fn grads_as_tensors(
    grads: DeviceConvGrads,
    input: &[usize],
    weight: &[usize],
    inputs: usize,
) -> Vec<Option<Tensor>> {
    let mut out = vec![
        grads.input.map(|b| tensor(b, input)),
        grads.weight.map(|b| tensor(b, weight)),
    ];
    if inputs == 3 {
        out.push(grads.bias.map(|b| tensor(b, &[weight[0]])));
    }
    out
}

/// `x` [n, c, h, w] convolved with `weight` (+ `bias`).
pub(crate) fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geo: &ConvGeometry,
) -> Tensor {
    let _p = profile::scope("conv2d");
    let g = ConvShape::from(*geo);
    let (xs, ws) = (resident(x), resident(weight));
    let bs = bias.map(resident);
    let out = expect(
        "conv2d",
        kernels::conv2d_forward(buf(&xs), buf(&ws), bs.as_ref().map(buf), &g),
    );
    let shape = [geo.n, geo.c_out, geo.out_h(), geo.out_w()];
    let mut inputs = vec![x, weight];
    inputs.extend(bias);
    Tensor::from_device_op(out, &shape, &inputs, move |grad, needs| {
        let gs = resident(grad);
        let need_bias = needs.get(2).copied().unwrap_or(false);
        let grads = expect(
            "conv2d backward",
            kernels::conv2d_backward(
                buf(&xs),
                buf(&ws),
                buf(&gs),
                &g,
                needs[0],
                needs[1],
                need_bias,
            ),
        );
        grads_as_tensors(grads, xs.shape(), ws.shape(), needs.len())
    })
}

/// Boxes [2, n, c, h, w] through a convolution: centres with (W, b), radii with |W|, fused.
pub(crate) fn interval_conv2d(
    boxes: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geo: &ConvGeometry,
) -> Tensor {
    let _p = profile::scope("interval_conv2d");
    let g = ConvShape::from(*geo);
    let (xs, ws) = (resident(boxes), resident(weight));
    let bs = bias.map(resident);
    let out = expect(
        "interval_conv2d",
        kernels::interval_conv2d_forward_stacked(buf(&xs), buf(&ws), bs.as_ref().map(buf), &g),
    );
    let shape = [2, geo.n, geo.c_out, geo.out_h(), geo.out_w()];
    let mut inputs = vec![boxes, weight];
    inputs.extend(bias);
    Tensor::from_device_op(out, &shape, &inputs, move |grad, needs| {
        let gs = resident(grad);
        let need_bias = needs.get(2).copied().unwrap_or(false);
        let grads = expect(
            "interval_conv2d backward",
            kernels::interval_conv2d_backward_stacked(
                buf(&xs),
                buf(&ws),
                buf(&gs),
                &g,
                needs[0],
                needs[1],
                need_bias,
            ),
        );
        grads_as_tensors(grads, xs.shape(), ws.shape(), needs.len())
    })
}
