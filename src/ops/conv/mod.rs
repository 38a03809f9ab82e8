//! 2-D convolution (NCHW), forward and both gradients, on the CPU im2col + GEMM kernels.

pub mod cpu;
pub(crate) mod cuda;
pub mod launch;

use crate::ops::conv::cpu::{
    conv2d_backward, conv2d_backward_input, conv2d_forward, ConvGeometry, ConvGrads,
};
use crate::ops::gpu;
use crate::tensor::Tensor;

/// Stride and zero padding, per spatial axis (height, width).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: (usize, usize),
    pub padding: (usize, usize),
}

impl Conv2dParams {
    pub fn new(stride: usize, padding: usize) -> Self {
        Conv2dParams {
            stride: (stride, stride),
            padding: (padding, padding),
        }
    }

    /// The geometry of convolving `input` [n, c, h, w] with `weight` [o, c, kh, kw].
    pub fn geometry(&self, input: &[usize], weight: &[usize]) -> ConvGeometry {
        assert!(
            input.len() == 4 && weight.len() == 4 && input[1] == weight[1],
            "conv2d: input {input:?} with weight {weight:?}"
        );
        assert!(
            input[2] + 2 * self.padding.0 >= weight[2]
                && input[3] + 2 * self.padding.1 >= weight[3],
            "conv2d: kernel {:?} larger than padded input {input:?}",
            &weight[2..]
        );
        assert!(self.stride.0 > 0 && self.stride.1 > 0, "conv2d: stride 0");
        ConvGeometry {
            n: input[0],
            c_in: input[1],
            h: input[2],
            w: input[3],
            c_out: weight[0],
            kh: weight[2],
            kw: weight[3],
            stride: self.stride,
            padding: self.padding,
        }
    }

    /// Output spatial size for an input of `h × w` and a `kh × kw` kernel.
    pub fn output_hw(&self, h: usize, w: usize, kh: usize, kw: usize) -> (usize, usize) {
        (
            (h + 2 * self.padding.0 - kh) / self.stride.0 + 1,
            (w + 2 * self.padding.1 - kw) / self.stride.1 + 1,
        )
    }
}

impl Tensor {
    /// Convolve `self` [n, c, h, w] with `weight` [o, c, kh, kw] (+ `bias` [o]).
    pub fn conv2d(&self, weight: &Tensor, bias: Option<&Tensor>, params: Conv2dParams) -> Tensor {
        let geo = params.geometry(self.shape(), weight.shape());
        if let Some(b) = bias {
            assert_eq!(b.shape(), &[geo.c_out], "conv2d: bias shape");
        }
        if gpu::on_cuda(&[self, weight]) || bias.is_some_and(Tensor::is_cuda) {
            return cuda::conv2d(self, weight, bias, &geo);
        }
        let out = conv2d_forward(self.data(), weight.data(), bias.map(Tensor::data), &geo);
        let shape = [geo.n, geo.c_out, geo.out_h(), geo.out_w()];
        let (x, w) = (self.detach(), weight.detach());
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        Tensor::from_op(out, &shape, &inputs, move |g, needs| {
            let need_bias = needs.get(2).copied().unwrap_or(false);
            let grads = conv2d_backward(
                x.data(),
                w.data(),
                g.data(),
                &geo,
                needs[0],
                needs[1],
                need_bias,
            );
            grads_as_tensors(grads, &x, &w, needs.len())
        })
    }
}

impl Tensor {
    /// The adjoint (transpose) of a convolution: `self` [n, o, oh, ow] through `weight`
    /// [o, c, kh, kw] back to an input of `input_hw` = (h, w), giving [n, c, h, w]. It is the
    /// convolution's input gradient; linear bound propagation sends coefficients back through a
    /// convolution with it. `input_hw` settles the size a strided convolution leaves ambiguous
    /// (input positions no output reads get 0).
    pub fn conv2d_transpose(
        &self,
        weight: &Tensor,
        params: Conv2dParams,
        input_hw: (usize, usize),
    ) -> Tensor {
        assert!(
            self.rank() == 4 && weight.rank() == 4 && self.dim(1) == weight.dim(0),
            "conv2d_transpose: {:?} through weight {:?}",
            self.shape(),
            weight.shape()
        );
        let input = [self.dim(0), weight.dim(1), input_hw.0, input_hw.1];
        let geo = params.geometry(&input, weight.shape());
        assert!(
            self.shape()[2..] == [geo.out_h(), geo.out_w()],
            "conv2d_transpose: {:?} is not the output of a {input:?} input",
            self.shape()
        );
        if gpu::on_cuda(&[self, weight]) {
            return cuda::conv2d_transpose(self, weight, &geo);
        }
        let out = conv2d_backward_input(weight.data(), self.data(), &geo);
        let (a, w) = (self.detach(), weight.detach());
        Tensor::from_op(out, &input, &[self, weight], move |g, needs| {
            // y = Aᵀ(a; w) is linear in both: dL/da = conv(g, w), dL/dw = the weight gradient of
            // a convolution of g whose output gradient is a.
            let da = needs[0].then(|| {
                let out = conv2d_forward(g.data(), w.data(), None, &geo);
                Tensor::from_vec(out, a.shape())
            });
            let dw = needs[1].then(|| {
                let grads = conv2d_backward(g.data(), w.data(), a.data(), &geo, false, true, false);
                Tensor::from_vec(grads.weight.expect("asked for"), w.shape())
            });
            vec![da, dw]
        })
    }
}

/// The backward's gradients as tensors shaped like the op's inputs (input, weight and, when the
/// op had `inputs == 3`, the bias), for the op's backward closure.
pub(crate) fn grads_as_tensors(
    grads: ConvGrads,
    input: &Tensor,
    weight: &Tensor,
    inputs: usize,
) -> Vec<Option<Tensor>> {
    let mut out = vec![
        grads.input.map(|d| Tensor::from_vec(d, input.shape())),
        grads.weight.map(|d| Tensor::from_vec(d, weight.shape())),
    ];
    if inputs == 3 {
        out.push(grads.bias.map(|d| Tensor::from_vec(d, &[weight.dim(0)])));
    }
    out
}
