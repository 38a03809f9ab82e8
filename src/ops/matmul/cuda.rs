//! Matrix products and fully connected layers on the GPU: plain (`ops/matmul/matmul.cu`) and on boxes
//! (`ops/interval/interval.cu`).

use crate::ops::elementwise::cuda::filled;
use crate::ops::gpu::{buf, expect, resident, tensor};
use crate::ops::matmul::launch::matmul;
use crate::ops::norm::launch::batch_norm_affine;
use crate::ops::norm::launch::BatchNormParams;
use crate::ops::norm::launch::ChannelDims;
use crate::ops::reduce::launch::channel_sum;
use crate::runtime::cuda::profile;
use crate::runtime::cuda::DeviceBuffer;
use crate::tensor::Tensor;

/// `y + bias` per row of `y` [n, out] (batch norm's affine map with scale 1 and shift `bias`:
/// exact, since 1/√(1 + 0) is 1).
pub(crate) fn add_row_bias(
    y: &DeviceBuffer,
    bias: &DeviceBuffer,
    n: usize,
    out: usize,
) -> DeviceBuffer {
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
