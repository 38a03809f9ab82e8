//! Interval arithmetic in centre/radius form, fused per layer.
//!
//! A box of N inputs is one tensor [2, N, ...]: the centres c at index 0 and the radii r ≥ 0 at
//! index 1, so that each layer is a single op (and a single node of the graph) whose backward
//! sees both halves. Affine layers map (c, r) to (W c + b, |W| r): the tightest box around the
//! image of the input box; ReLU maps [c − r, c + r] to [relu(c − r), relu(c + r)].

use crate::backend::cpu::conv::{conv2d_backward, conv2d_forward};
use crate::backend::cpu::gemm::{matmul_into, MatRef};
use crate::ops::Conv2dParams;
use crate::tensor::Tensor;

/// (half length, shape of one half) of a stacked interval tensor.
fn halves(s: &Tensor) -> (usize, Vec<usize>) {
    assert!(
        s.rank() >= 2 && s.dim(0) == 2,
        "interval tensors are [2, N, ...] (centre, radius), got {:?}",
        s.shape()
    );
    (s.numel() / 2, s.shape()[1..].to_vec())
}

fn stacked_shape(half: &[usize]) -> Vec<usize> {
    let mut shape = vec![2];
    shape.extend_from_slice(half);
    shape
}

impl Tensor {
    /// Stack centres and radii (same shape) into one interval tensor [2, ...].
    pub fn interval_stack(center: &Tensor, radius: &Tensor) -> Tensor {
        assert_eq!(
            center.shape(),
            radius.shape(),
            "interval_stack: shapes differ"
        );
        let mut s = vec![1];
        s.extend_from_slice(center.shape());
        Tensor::concat(&[&center.reshape(&s), &radius.reshape(&s)], 0)
    }

    /// The box [lo, hi] as an interval tensor.
    pub fn interval_from_bounds(lo: &Tensor, hi: &Tensor) -> Tensor {
        let c = lo.add(hi).mul_scalar(0.5);
        let r = hi.sub(lo).mul_scalar(0.5);
        Tensor::interval_stack(&c, &r)
    }

    /// The centres (index 0) or radii (index 1) of an interval tensor.
    pub fn interval_part(&self, which: usize) -> Tensor {
        let (_, half) = halves(self);
        self.reshape(&[2, self.numel() / 2])
            .index_rows(&[which])
            .reshape(&half)
    }

    /// (lower, upper) bounds of an interval tensor.
    pub fn interval_bounds(&self) -> (Tensor, Tensor) {
        let (c, r) = (self.interval_part(0), self.interval_part(1));
        (c.sub(&r), c.add(&r))
    }

    /// Fully connected layer on boxes: [2, N, in] -> [2, N, out].
    pub fn interval_linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
        let (half, hs) = halves(self);
        assert!(
            hs.len() == 2 && weight.rank() == 2 && hs[1] == weight.dim(1),
            "interval_linear: boxes {:?} with weight {:?}",
            self.shape(),
            weight.shape()
        );
        let (n, fin, fout) = (hs[0], hs[1], weight.dim(0));
        let abs_w: Vec<f32> = weight.data().iter().map(|w| w.abs()).collect();
        let mut out = vec![0.0; 2 * n * fout];
        let (oc, or) = out.split_at_mut(n * fout);
        if let Some(b) = bias {
            assert_eq!(b.shape(), &[fout], "interval_linear: bias shape");
            for row in oc.chunks_mut(fout) {
                row.copy_from_slice(b.data());
            }
        }
        let (c, r) = self.data().split_at(half);
        let w = MatRef::row_major(weight.data(), fout, fin).t();
        matmul_into(
            oc,
            fout,
            MatRef::row_major(c, n, fin),
            w,
            bias.is_some(),
            true,
        );
        let aw = MatRef::row_major(&abs_w, fout, fin).t();
        matmul_into(or, fout, MatRef::row_major(r, n, fin), aw, false, true);
        let (s, wt) = (self.detach(), weight.detach());
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        Tensor::from_op(out, &[2, n, fout], &inputs, move |g, needs| {
            let (gc, gr) = g.data().split_at(n * fout);
            let (gc, gr) = (
                MatRef::row_major(gc, n, fout),
                MatRef::row_major(gr, n, fout),
            );
            let w = MatRef::row_major(wt.data(), fout, fin);
            let abs_w: Vec<f32> = wt.data().iter().map(|w| w.abs()).collect();
            let ds = needs[0].then(|| {
                let mut d = vec![0.0; 2 * n * fin];
                let (dc, dr) = d.split_at_mut(n * fin);
                matmul_into(dc, fin, gc, w, false, true);
                matmul_into(
                    dr,
                    fin,
                    gr,
                    MatRef::row_major(&abs_w, fout, fin),
                    false,
                    true,
                );
                Tensor::from_vec(d, s.shape())
            });
            let dw = needs[1].then(|| {
                let (c, r) = s.data().split_at(n * fin);
                let mut dw = vec![0.0; fout * fin];
                matmul_into(
                    &mut dw,
                    fin,
                    gc.t(),
                    MatRef::row_major(c, n, fin),
                    false,
                    true,
                );
                // The radius path sees |W|: its gradient enters W through sign(W).
                let mut dabs = vec![0.0; fout * fin];
                matmul_into(
                    &mut dabs,
                    fin,
                    gr.t(),
                    MatRef::row_major(r, n, fin),
                    false,
                    true,
                );
                for ((d, a), w) in dw.iter_mut().zip(&dabs).zip(wt.data()) {
                    *d += a * sign(*w);
                }
                Tensor::from_vec(dw, wt.shape())
            });
            let mut grads = vec![ds, dw];
            if needs.len() == 3 {
                grads.push(needs[2].then(|| {
                    let mut db = vec![0.0; fout];
                    for row in g.data()[..n * fout].chunks(fout) {
                        for (d, v) in db.iter_mut().zip(row) {
                            *d += v;
                        }
                    }
                    Tensor::from_vec(db, &[fout])
                }));
            }
            grads
        })
    }

    /// 2-D convolution on boxes: [2, N, C, H, W] -> [2, N, O, H', W'].
    pub fn interval_conv2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        params: Conv2dParams,
    ) -> Tensor {
        let (half, hs) = halves(self);
        let geo = params.geometry(&hs, weight.shape());
        if let Some(b) = bias {
            assert_eq!(b.shape(), &[geo.c_out], "interval_conv2d: bias shape");
        }
        let abs_w: Vec<f32> = weight.data().iter().map(|w| w.abs()).collect();
        let (c, r) = self.data().split_at(half);
        let mut out = conv2d_forward(c, weight.data(), bias.map(Tensor::data), &geo);
        out.extend(conv2d_forward(r, &abs_w, None, &geo));
        let out_half = [geo.n, geo.c_out, geo.out_h(), geo.out_w()];
        let (s, wt) = (self.detach(), weight.detach());
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        Tensor::from_op(out, &stacked_shape(&out_half), &inputs, move |g, needs| {
            let need_bias = needs.get(2).copied().unwrap_or(false);
            let (gc, gr) = g.data().split_at(geo.output_len());
            let (c, r) = s.data().split_at(geo.input_len());
            let abs_w: Vec<f32> = wt.data().iter().map(|w| w.abs()).collect();
            let centre = conv2d_backward(c, wt.data(), gc, &geo, needs[0], needs[1], need_bias);
            let radius = conv2d_backward(r, &abs_w, gr, &geo, needs[0], needs[1], false);
            let ds = needs[0].then(|| {
                let mut d = centre.input.expect("asked for");
                d.extend(radius.input.expect("asked for"));
                Tensor::from_vec(d, s.shape())
            });
            let dw = needs[1].then(|| {
                let mut d = centre.weight.expect("asked for");
                for ((d, a), w) in d
                    .iter_mut()
                    .zip(radius.weight.expect("asked for"))
                    .zip(wt.data())
                {
                    *d += a * sign(*w);
                }
                Tensor::from_vec(d, wt.shape())
            });
            let mut grads = vec![ds, dw];
            if needs.len() == 3 {
                grads.push(centre.bias.map(|d| Tensor::from_vec(d, &[geo.c_out])));
            }
            grads
        })
    }

    /// Per-channel affine map y = x·scale[c] + shift[c] on boxes [2, N, C, ...] (batch norm,
    /// input normalisation): centres get the map, radii get |scale|.
    pub fn interval_channel_affine(&self, scale: &Tensor, shift: &Tensor) -> Tensor {
        let (half, hs) = halves(self);
        assert!(
            hs.len() >= 2,
            "interval_channel_affine needs [2, N, C, ...]"
        );
        let (n, ch) = (hs[0], hs[1]);
        let sp: usize = hs[2..].iter().product();
        assert!(
            scale.shape() == [ch] && shift.shape() == [ch],
            "interval_channel_affine: scale {:?} / shift {:?} for {ch} channels",
            scale.shape(),
            shift.shape()
        );
        let (sc, sh) = (scale.data(), shift.data());
        let mut out = vec![0.0; 2 * half];
        for (plane, (o, x)) in out
            .chunks_mut(sp.max(1))
            .zip(self.data().chunks(sp.max(1)))
            .enumerate()
        {
            let k = plane % ch;
            let is_radius = plane >= n * ch;
            for (o, &v) in o.iter_mut().zip(x) {
                *o = if is_radius {
                    v * sc[k].abs()
                } else {
                    v * sc[k] + sh[k]
                };
            }
        }
        let (s, scale_saved) = (self.detach(), scale.detach());
        Tensor::from_op(out, self.shape(), &[self, scale, shift], move |g, needs| {
            let sc = scale_saved.data();
            let (gd, xd) = (g.data(), s.data());
            let planes = 2 * n * ch;
            let step = sp.max(1);
            let mut ds = needs[0].then(|| vec![0.0; 2 * half]);
            let mut dscale = vec![0.0f64; ch];
            let mut dshift = vec![0.0f64; ch];
            for plane in 0..planes {
                let k = plane % ch;
                let is_radius = plane >= n * ch;
                let range = plane * step..(plane + 1) * step;
                let (gp, xp) = (&gd[range.clone()], &xd[range.clone()]);
                let factor = if is_radius { sc[k].abs() } else { sc[k] };
                if let Some(ds) = ds.as_mut() {
                    for (d, gv) in ds[range].iter_mut().zip(gp) {
                        *d = gv * factor;
                    }
                }
                let gx: f32 = gp.iter().zip(xp).map(|(a, b)| a * b).sum();
                if is_radius {
                    dscale[k] += (gx * sign(sc[k])) as f64;
                } else {
                    dscale[k] += gx as f64;
                    dshift[k] += gp.iter().sum::<f32>() as f64;
                }
            }
            let to_t =
                |v: Vec<f64>| Tensor::from_vec(v.into_iter().map(|x| x as f32).collect(), &[ch]);
            vec![
                ds.map(|d| Tensor::from_vec(d, s.shape())),
                needs[1].then(|| to_t(dscale)),
                needs[2].then(|| to_t(dshift)),
            ]
        })
    }

    /// ReLU on boxes, in one pass: [c − r, c + r] -> [relu(c − r), relu(c + r)].
    pub fn interval_relu(&self) -> Tensor {
        let (half, _) = halves(self);
        let (c, r) = self.data().split_at(half);
        let mut out = vec![0.0; 2 * half];
        let (oc, or) = out.split_at_mut(half);
        for i in 0..half {
            let lo = (c[i] - r[i]).max(0.0);
            let hi = (c[i] + r[i]).max(0.0);
            oc[i] = 0.5 * (hi + lo);
            or[i] = 0.5 * (hi - lo);
        }
        let s = self.detach();
        Tensor::from_op(out, self.shape(), &[self], move |g, _| {
            let (c, r) = s.data().split_at(half);
            let (gc, gr) = g.data().split_at(half);
            let mut d = vec![0.0; 2 * half];
            let (dc, dr) = d.split_at_mut(half);
            for i in 0..half {
                // a, b: whether the upper and the lower end are active.
                let a = if c[i] + r[i] > 0.0 { 1.0 } else { 0.0 };
                let b = if c[i] - r[i] > 0.0 { 1.0 } else { 0.0 };
                let (sum, diff) = (0.5 * (a + b), 0.5 * (a - b));
                dc[i] = gc[i] * sum + gr[i] * diff;
                dr[i] = gc[i] * diff + gr[i] * sum;
            }
            vec![Some(Tensor::from_vec(d, s.shape()))]
        })
    }

    /// Flatten each box: [2, N, ...] -> [2, N, rest].
    pub fn interval_flatten(&self) -> Tensor {
        let (half, hs) = halves(self);
        self.reshape(&[2, hs[0], half / hs[0].max(1)])
    }
}

fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}
