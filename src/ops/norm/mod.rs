//! Per-channel statistics and the per-channel affine map: the pieces batch norm is built from.
//!
//! A tensor [N, C, ...] is read as N × C × S (S the product of the trailing axes). Batch norm is
//! `channel_affine(x, γ/√(var+ε), β − mean·γ/√(var+ε))` with `mean = channel_mean(x)` and
//! `var = channel_var(x, mean)`. Keeping the statistics as tensors of their own lets interval
//! bound propagation reuse the clean batch's affine map, with gradients through it.

pub(crate) mod cuda;
pub mod launch;

use crate::ops::gpu;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// (N, C, S) of a tensor laid out as [N, C, ...].
fn ncs(x: &Tensor) -> (usize, usize, usize) {
    assert!(
        x.rank() >= 2,
        "per-channel op needs [N, C, ...], got {:?}",
        x.shape()
    );
    let (n, c) = (x.dim(0), x.dim(1));
    (n, c, x.shape()[2..].iter().product())
}

/// Per-channel sums of f(value, channel) over N and S, computed in parallel over channels.
fn channel_sums(
    x: &[f32],
    n: usize,
    c: usize,
    s: usize,
    f: impl Fn(f32, usize) -> f32 + Sync,
) -> Vec<f32> {
    // f64 accumulation across samples: batch statistics over 10^5+ values stay accurate.
    let sum_channel = |ch: usize| {
        let mut acc = 0.0f64;
        for i in 0..n {
            let start = (i * c + ch) * s;
            acc += x[start..start + s].iter().map(|&v| f(v, ch)).sum::<f32>() as f64;
        }
        acc as f32
    };
    if n * c * s < crate::runtime::cpu::parallel::PARALLEL_MIN {
        (0..c).map(sum_channel).collect()
    } else {
        (0..c).into_par_iter().map(sum_channel).collect()
    }
}

/// Apply f(value, channel) to every element (parallel over (sample, channel) planes).
fn channel_map(
    x: &[f32],
    n: usize,
    c: usize,
    s: usize,
    f: impl Fn(f32, usize) -> f32 + Sync,
) -> Vec<f32> {
    let mut out = vec![0.0; n * c * s];
    if s == 0 {
        return out;
    }
    let body = |(plane, o): (usize, &mut [f32])| {
        let ch = plane % c;
        for (o, &v) in o.iter_mut().zip(&x[plane * s..(plane + 1) * s]) {
            *o = f(v, ch);
        }
    };
    if out.len() < crate::runtime::cpu::parallel::PARALLEL_MIN {
        out.chunks_mut(s).enumerate().for_each(body);
    } else {
        out.par_chunks_mut(s).enumerate().for_each(body);
    }
    out
}

impl Tensor {
    /// Mean over every axis but the channel axis 1: [N, C, ...] -> [C].
    pub fn channel_mean(&self) -> Tensor {
        let (n, c, s) = ncs(self);
        if self.is_cuda() {
            return cuda::channel_mean(self);
        }
        let count = (n * s) as f32;
        let mean: Vec<f32> = channel_sums(self.data(), n, c, s, |v, _| v)
            .into_iter()
            .map(|v| v / count)
            .collect();
        let shape = self.shape().to_vec();
        Tensor::from_op(mean, &[c], &[self], move |g, _| {
            let gd = g.data();
            let d = channel_map(&vec![0.0; n * c * s], n, c, s, |_, ch| gd[ch] / count);
            vec![Some(Tensor::from_vec(d, &shape))]
        })
    }

    /// Biased variance per channel, given that channel's mean (`channel_mean` of the same x).
    pub fn channel_var(&self, mean: &Tensor) -> Tensor {
        let (n, c, s) = ncs(self);
        assert_eq!(mean.shape(), &[c], "channel_var: mean shape");
        if gpu::on_cuda(&[self, mean]) {
            return cuda::channel_var(self, mean);
        }
        let count = (n * s) as f32;
        let m = mean.to_vec();
        let var: Vec<f32> = channel_sums(self.data(), n, c, s, |v, ch| (v - m[ch]) * (v - m[ch]))
            .into_iter()
            .map(|v| v / count)
            .collect();
        let x = self.detach();
        Tensor::from_op(var, &[c], &[self, mean], move |g, needs| {
            let gd = g.data();
            let dx = needs[0].then(|| {
                let d = channel_map(x.data(), n, c, s, |v, ch| {
                    gd[ch] * 2.0 * (v - m[ch]) / count
                });
                Tensor::from_vec(d, x.shape())
            });
            // ∂var/∂mean = −2·mean(x − mean): zero at the true mean, exact for any given mean.
            let dmean = needs[1].then(|| {
                let centred = channel_sums(x.data(), n, c, s, |v, ch| v - m[ch]);
                let d = centred
                    .iter()
                    .zip(gd)
                    .map(|(s, g)| -2.0 * g * s / count)
                    .collect();
                Tensor::from_vec(d, &[c])
            });
            vec![dx, dmean]
        })
    }

    /// y = x·scale[c] + shift[c] for every element of channel c.
    pub fn channel_affine(&self, scale: &Tensor, shift: &Tensor) -> Tensor {
        let (n, c, s) = ncs(self);
        assert!(
            scale.shape() == [c] && shift.shape() == [c],
            "channel_affine: scale {:?} / shift {:?} for {c} channels",
            scale.shape(),
            shift.shape()
        );
        if gpu::on_cuda(&[self, scale, shift]) {
            return cuda::channel_affine(self, scale, shift);
        }
        let (sc, sh) = (scale.data(), shift.data());
        let out = channel_map(self.data(), n, c, s, |v, ch| v * sc[ch] + sh[ch]);
        let (x, scale_saved) = (self.detach(), scale.detach());
        Tensor::from_op(out, self.shape(), &[self, scale, shift], move |g, needs| {
            let gd = g.data();
            let sc = scale_saved.data();
            let dx = needs[0].then(|| {
                let d = channel_map(gd, n, c, s, |g, ch| g * sc[ch]);
                Tensor::from_vec(d, x.shape())
            });
            let dscale = needs[1].then(|| {
                let xd = x.data();
                let sums = (0..c)
                    .into_par_iter()
                    .map(|ch| {
                        let mut acc = 0.0f64;
                        for i in 0..n {
                            let r = (i * c + ch) * s..(i * c + ch + 1) * s;
                            acc += gd[r.clone()]
                                .iter()
                                .zip(&xd[r])
                                .map(|(g, x)| g * x)
                                .sum::<f32>() as f64;
                        }
                        acc as f32
                    })
                    .collect();
                Tensor::from_vec(sums, &[c])
            });
            let dshift =
                needs[2].then(|| Tensor::from_vec(channel_sums(gd, n, c, s, |g, _| g), &[c]));
            vec![dx, dscale, dshift]
        })
    }
}
