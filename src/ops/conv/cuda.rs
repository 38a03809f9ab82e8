//! Convolution and interval convolution on the GPU (`ops/conv/conv.cu`).

use crate::ops::conv::cpu::ConvGeometry;
use crate::ops::conv::launch::{self as kernels, ConvShape, DeviceConvGrads};
use crate::ops::gpu::{buf, expect, resident, tensor};
use crate::runtime::cuda::profile;
use crate::runtime::cuda::DeviceBuffer;
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

/// A device convolution's forward and backward (`ops::conv::launch`).
type Forward = fn(
    &DeviceBuffer,
    &DeviceBuffer,
    Option<&DeviceBuffer>,
    &ConvShape,
) -> crate::Result<DeviceBuffer>;
type Backward = fn(
    &DeviceBuffer,
    &DeviceBuffer,
    &DeviceBuffer,
    &ConvShape,
    bool,
    bool,
    bool,
) -> crate::Result<DeviceConvGrads>;

/// The op around a device convolution: `lead` is prepended to the output's [n, o, oh, ow]
/// ([2] for stacked boxes).
fn device_conv(
    name: &'static str,
    (forward, backward): (Forward, Backward),
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geo: &ConvGeometry,
    lead: &[usize],
) -> Tensor {
    let _p = profile::scope(name);
    let g = ConvShape::from(*geo);
    let (xs, ws) = (resident(x), resident(weight));
    let bs = bias.map(resident);
    let out = expect(name, forward(buf(&xs), buf(&ws), bs.as_ref().map(buf), &g));
    let mut shape = lead.to_vec();
    shape.extend([geo.n, geo.c_out, geo.out_h(), geo.out_w()]);
    let mut inputs = vec![x, weight];
    inputs.extend(bias);
    Tensor::from_device_op(out, &shape, &inputs, move |grad, needs| {
        let gs = resident(grad);
        let need_bias = needs.get(2).copied().unwrap_or(false);
        let grads = expect(
            &format!("{name} backward"),
            backward(
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

/// `x` [n, c, h, w] convolved with `weight` (+ `bias`).
pub(crate) fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geo: &ConvGeometry,
) -> Tensor {
    let kernels = (
        kernels::conv2d_forward as Forward,
        kernels::conv2d_backward as Backward,
    );
    device_conv("conv2d", kernels, x, weight, bias, geo, &[])
}

/// Boxes [2, n, c, h, w] through a convolution: centres with (W, b), radii with |W|, fused.
pub(crate) fn interval_conv2d(
    boxes: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geo: &ConvGeometry,
) -> Tensor {
    let kernels = (
        kernels::interval_conv2d_forward_stacked as Forward,
        kernels::interval_conv2d_backward_stacked as Backward,
    );
    device_conv("interval_conv2d", kernels, boxes, weight, bias, geo, &[2])
}

/// The adjoint of a convolution on the device: `a` [n, o, oh, ow] back to [n, c, h, w]
/// (`Tensor::conv2d_transpose`).
pub(crate) fn conv2d_transpose(a: &Tensor, weight: &Tensor, geo: &ConvGeometry) -> Tensor {
    let name = "conv2d_transpose";
    let _p = profile::scope(name);
    let g = ConvShape::from(*geo);
    let (as_, ws) = (resident(a), resident(weight));
    let out = expect(
        name,
        kernels::conv2d_backward_input(buf(&as_), buf(&ws), &g),
    );
    let shape = [geo.n, geo.c_in, geo.h, geo.w];
    Tensor::from_device_op(out, &shape, &[a, weight], move |grad, needs| {
        let gs = resident(grad);
        let da = needs[0].then(|| {
            let y = expect(
                &format!("{name} backward"),
                kernels::conv2d_forward(buf(&gs), buf(&ws), None, &g),
            );
            tensor(y, as_.shape())
        });
        let dw = needs[1].then(|| {
            let d = expect(
                &format!("{name} backward"),
                kernels::conv2d_backward_weight(buf(&gs), buf(&as_), &g),
            );
            tensor(d, ws.shape())
        });
        vec![da, dw]
    })
}
