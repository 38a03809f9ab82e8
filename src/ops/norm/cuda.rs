//! Per-channel statistics and the per-channel affine map on the GPU (`norm.cu`), with
//! the same graph as the CPU's: `channel_mean`, `channel_var(x, mean)`, `channel_affine`.

use crate::ops::elementwise::cuda::filled;
use crate::ops::gpu::{buf, expect, resident, tensor};
use crate::ops::norm::launch::BatchNormParams;
use crate::ops::norm::launch::ChannelDims;
use crate::runtime::cuda::profile;
use crate::runtime::cuda::DeviceBuffer;
use crate::tensor::Tensor;

fn dims(x: &Tensor) -> ChannelDims {
    expect("per-channel op", ChannelDims::of_shape(x.shape()))
}

/// Mean over every axis but 1: [N, C, ...] -> [C].
pub(crate) fn channel_mean(x: &Tensor) -> Tensor {
    let _p = profile::scope("channel_mean");
    let (xs, d) = (resident(x), dims(x));
    let mean = expect(
        "channel_mean",
        crate::ops::norm::launch::channel_mean(buf(&xs), d),
    );
    Tensor::from_device_op(mean, &[d.channels], &[x], move |g, _| {
        // batch_stats_backward with a zero variance gradient: dx = g[c] / count.
        let gs = resident(g);
        let zeros = filled(d.channels, 0.0);
        let dx =
            crate::ops::norm::launch::batch_stats_backward(buf(&xs), &zeros, buf(&gs), &zeros, d);
        vec![Some(tensor(
            expect("channel_mean backward", dx),
            xs.shape(),
        ))]
    })
}

/// Biased variance per channel about `mean`.
pub(crate) fn channel_var(x: &Tensor, mean: &Tensor) -> Tensor {
    let _p = profile::scope("channel_var");
    let (xs, ms, d) = (resident(x), resident(mean), dims(x));
    let var = expect(
        "channel_var",
        crate::ops::norm::launch::channel_var(buf(&xs), buf(&ms), d),
    );
    Tensor::from_device_op(var, &[d.channels], &[x, mean], move |g, _| {
        let what = "channel_var backward";
        let gs = resident(g);
        // ∂var/∂mean = −2·g·(mean(x) − mean): zero at the batch's own mean, exact for any.
        let own = expect(what, crate::ops::norm::launch::channel_mean(buf(&xs), d));
        let mut offset = crate::ops::gpu::copy(&own);
        expect(
            what,
            crate::ops::elementwise::launch::add_scaled(&mut offset, buf(&ms), -1.0),
        );
        let dmean = expect(
            what,
            crate::ops::elementwise::launch::scale(
                &expect(
                    what,
                    crate::ops::elementwise::launch::mul(buf(&gs), &offset),
                ),
                -2.0,
            ),
        );
        // The kernel adds the path through the mean, −dmean_direct; passing −dmean as the mean's
        // gradient cancels it, which leaves the direct 2·g·(x − mean)/count.
        let cancel = expect(what, crate::ops::elementwise::launch::scale(&dmean, -1.0));
        let dx = crate::ops::norm::launch::batch_stats_backward(
            buf(&xs),
            buf(&ms),
            &cancel,
            buf(&gs),
            d,
        );
        vec![
            Some(tensor(expect(what, dx), xs.shape())),
            Some(tensor(dmean, &[d.channels])),
        ]
    })
}

/// Statistics that make batch norm's map the plain per-channel affine map: mean 0, variance 1,
/// ε = 0 (so its 1/√(var + ε) is exactly 1).
struct IdentityStats {
    zeros: DeviceBuffer,
    ones: DeviceBuffer,
}

impl IdentityStats {
    fn new(channels: usize) -> IdentityStats {
        IdentityStats {
            zeros: filled(channels, 0.0),
            ones: filled(channels, 1.0),
        }
    }

    fn with<'a>(&'a self, scale: &'a DeviceBuffer, shift: &'a DeviceBuffer) -> BatchNormParams<'a> {
        BatchNormParams {
            mean: &self.zeros,
            var: &self.ones,
            gamma: scale,
            beta: shift,
            eps: 0.0,
        }
    }
}

/// y = x·scale[c] + shift[c]: batch norm's kernel with `IdentityStats`.
pub(crate) fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Tensor {
    let _p = profile::scope("channel_affine");
    let (xs, ss, hs, d) = (resident(x), resident(scale), resident(shift), dims(x));
    let identity = IdentityStats::new(d.channels);
    let params = identity.with(buf(&ss), buf(&hs));
    let y = expect(
        "channel_affine",
        crate::ops::norm::launch::batch_norm_affine(buf(&xs), params, d),
    );
    Tensor::from_device_op(y, x.shape(), &[x, scale, shift], move |g, needs| {
        let gs = resident(g);
        let params = identity.with(buf(&ss), buf(&hs));
        if !needs[1] && !needs[2] {
            let dx =
                crate::ops::norm::launch::batch_norm_affine_backward_input(buf(&gs), params, d);
            return vec![
                Some(tensor(expect("channel_affine backward", dx), xs.shape())),
                None,
                None,
            ];
        }
        let grads = expect(
            "channel_affine backward",
            crate::ops::norm::launch::batch_norm_affine_backward(buf(&xs), buf(&gs), params, d),
        );
        vec![
            needs[0].then(|| tensor(grads.input, xs.shape())),
            needs[1].then(|| tensor(grads.gamma, &[d.channels])),
            needs[2].then(|| tensor(grads.beta, &[d.channels])),
        ]
    })
}
