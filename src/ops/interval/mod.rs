//! Interval arithmetic in centre/radius form, fused per layer.
//!
//! A box of N inputs is one tensor [2, N, ...]: the centres c at index 0 and the radii r ≥ 0 at
//! index 1, so that each layer is a single op (and a single node of the graph) whose backward
//! sees both halves. Affine layers map (c, r) to (W c + b, |W| r): the tightest box around the
//! image of the input box; ReLU maps [c − r, c + r] to [relu(c − r), relu(c + r)].

pub(crate) mod cuda;
pub mod launch;

use crate::ops::conv::cpu::{abs_weight, interval_conv2d_backward, interval_conv2d_forward};
use crate::ops::conv::grads_as_tensors;
use crate::ops::elementwise::sign;
use crate::ops::gpu;
use crate::ops::Conv2dParams;
use crate::runtime::cpu::gemm::{matmul_into, MatRef};
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
        if gpu::on_cuda(&[self, weight]) || bias.is_some_and(Tensor::is_cuda) {
            return cuda::interval_linear(self, weight, bias);
        }
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
        let (_, hs) = halves(self);
        let geo = params.geometry(&hs, weight.shape());
        if let Some(b) = bias {
            assert_eq!(b.shape(), &[geo.c_out], "interval_conv2d: bias shape");
        }
        if gpu::on_cuda(&[self, weight]) || bias.is_some_and(Tensor::is_cuda) {
            return crate::ops::conv::cuda::interval_conv2d(self, weight, bias, &geo);
        }
        // |W| once per call, shared by the forward and the backward.
        let abs_w = abs_weight(weight.data());
        let out = interval_conv2d_forward(
            self.data(),
            weight.data(),
            &abs_w,
            bias.map(Tensor::data),
            &geo,
        );
        let out_half = [geo.n, geo.c_out, geo.out_h(), geo.out_w()];
        let (s, wt) = (self.detach(), weight.detach());
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        Tensor::from_op(out, &stacked_shape(&out_half), &inputs, move |g, needs| {
            let need_bias = needs.get(2).copied().unwrap_or(false);
            let grads = interval_conv2d_backward(
                s.data(),
                wt.data(),
                &abs_w,
                g.data(),
                &geo,
                needs[0],
                needs[1],
                need_bias,
            );
            grads_as_tensors(grads, &s, &wt, needs.len())
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
        if gpu::on_cuda(&[self, scale, shift]) {
            return cuda::interval_channel_affine(self, scale, shift);
        }
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
        if self.is_cuda() {
            return cuda::interval_relu(self);
        }
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

impl Tensor {
    /// Last-layer elision: for boxes `self` ([2, N, F], the last hidden layer's) and the final
    /// linear layer (`weight` [K, F], `bias`), the lower bound of every margin z_y − z_j of
    /// sample n with label y, [N, K] (0 at j = y): the specification rows W_y − W_j are applied
    /// to the box directly, which is tighter than bounding the logits first.
    pub fn interval_elided_margins(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        labels: &[usize],
    ) -> Tensor {
        let hidden = self;
        if gpu::on_cuda(&[hidden]) {
            assert!(
                labels.iter().all(|&y| y < weight.dim(0)),
                "label out of range for {} classes",
                weight.dim(0)
            );
            return cuda::elided_margins(hidden, weight, bias, labels);
        }
        let (c, r) = (hidden.interval_part(0), hidden.interval_part(1));
        let k = weight.dim(0);
        assert_eq!(labels.len(), c.dim(0), "one label per box");
        let bias = bias.cloned().unwrap_or_else(|| Tensor::zeros(&[k]));
        // Group the boxes by label: each group shares one specification matrix (W_y − W_j).
        let mut parts = Vec::new();
        let mut order = Vec::with_capacity(labels.len());
        for y in 0..k {
            let idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == y).collect();
            if idx.is_empty() {
                continue;
            }
            let spec_w = weight.index_rows(&[y]).sub(weight);
            let spec_b = bias
                .reshape(&[k, 1])
                .index_rows(&[y])
                .reshape(&[1])
                .sub(&bias);
            let (cy, ry) = (c.index_rows(&idx), r.index_rows(&idx));
            parts.push(
                cy.linear(&spec_w, Some(&spec_b))
                    .sub(&ry.linear(&spec_w.abs(), None)),
            );
            order.extend(idx);
        }
        assert!(
            order.len() == labels.len(),
            "label out of range for {k} classes"
        );
        let grouped = Tensor::concat(&parts.iter().collect::<Vec<_>>(), 0);
        let mut inverse = vec![0; order.len()];
        for (pos, &i) in order.iter().enumerate() {
            inverse[i] = pos;
        }
        grouped.index_rows(&inverse)
    }
}

/// The interval tensor of the box [lo, hi] (constants), in centre/radius form rounded outward:
/// `(lo + hi)/2 ± (hi − lo)/2` can miss a corner by one rounding step, so the radius is
/// widened until `c − r ≤ lo` and `c + r ≥ hi` hold in f32. Attacks and samplers use the exact
/// corners; the bounds must contain them.
pub fn enclosing_box(lo: &[f32], hi: &[f32], shape: &[usize]) -> Tensor {
    assert_eq!(lo.len(), hi.len(), "box corners differ in length");
    let (c, r): (Vec<f32>, Vec<f32>) = lo
        .iter()
        .zip(hi)
        .map(|(&l, &h)| {
            let c = 0.5 * (l + h);
            let mut r = 0.5 * (h - l);
            while c - r > l || c + r < h {
                r = r.next_up();
            }
            (c, r)
        })
        .unzip();
    Tensor::interval_stack(&Tensor::from_vec(c, shape), &Tensor::from_vec(r, shape))
}

/// SABR's small boxes, stacked `[2, …]`: centre `x_adv` clamped to `[lo + τ, hi − τ]` (lo, hi:
/// the ε-box around `x` clipped to [0, 1]), then `[c − τ, c + τ] ∩ [lo, hi]`, enclosed in f32
/// ([`enclosing_box`]). A constant: no gradient flows into the attack.
pub fn sabr_box(x: &Tensor, x_adv: &Tensor, eps: f32, tau: f32) -> Tensor {
    if gpu::on_cuda(&[x, x_adv]) {
        return cuda::sabr_box(x, x_adv, eps, tau);
    }
    let mut lower = Vec::with_capacity(x.numel());
    let mut upper = Vec::with_capacity(x.numel());
    for (&v, &a) in x.data().iter().zip(x_adv.data()) {
        let (lo, hi) = ((v - eps).clamp(0.0, 1.0), (v + eps).clamp(0.0, 1.0));
        // min last, as torch.clamp does, should the interval be empty.
        let c = a.max(lo + tau).min(hi - tau);
        lower.push((c - tau).max(lo));
        upper.push((c + tau).min(hi));
    }
    enclosing_box(&lower, &upper, x.shape())
}

#[cfg(test)]
mod tests {
    //! The fused interval convolution against its definition: two plain convolutions, the
    //! centre with (W, b) and the radius with |W|, forward and every gradient.

    use crate::ops::Conv2dParams;
    use crate::rng::Rng;
    use crate::tensor::graph::with_no_grad;
    use crate::tensor::Tensor;

    fn random(shape: &[usize], lo: f32, hi: f32, rng: &mut Rng) -> Tensor {
        Tensor::rand_uniform(shape, lo, hi, rng)
    }

    /// Max abs difference at most `1e-5` of the larger magnitude (float rounding only).
    fn assert_close(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: lengths differ");
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(want)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= 1e-5 * scale,
            "{what}: max error {err} vs magnitude {scale}"
        );
    }

    fn cat(a: &Tensor, b: &Tensor) -> Vec<f32> {
        let mut v = a.to_vec();
        v.extend_from_slice(b.data());
        v
    }

    /// One geometry: input [n, ci, h, w], kernel [co, ci, k, k].
    struct Case {
        n: usize,
        ci: usize,
        co: usize,
        h: usize,
        w: usize,
        k: usize,
        stride: usize,
        pad: usize,
    }

    /// Which leaves ask for a gradient (every subset takes its own path).
    #[derive(Clone, Copy, Debug)]
    struct Needs {
        input: bool,
        weight: bool,
        bias: Option<bool>,
    }

    fn check(case: &Case, needs: Needs, rng: &mut Rng) {
        let &Case {
            n,
            ci,
            co,
            h,
            w,
            k,
            stride,
            pad,
        } = case;
        let what =
            format!("n {n} ci {ci} co {co} {h}x{w} k {k} stride {stride} pad {pad}, {needs:?}");
        let p = Conv2dParams::new(stride, pad);
        let (oh, ow) = p.output_hw(h, w, k, k);
        let half = [n, ci, h, w];
        let c = random(&half, -1.0, 1.0, rng);
        let r = random(&half, 0.0, 0.5, rng);
        // Some weights exactly 0, where the |W| path contributes no gradient.
        let mut wv = random(&[co, ci, k, k], -1.0, 1.0, rng).to_vec();
        for i in (0..wv.len()).step_by(7) {
            wv[i] = 0.0;
        }
        let wt = Tensor::from_vec(wv, &[co, ci, k, k]);
        let b = random(&[co], -1.0, 1.0, rng);
        let out_half = [n, co, oh, ow];
        let (gc, gr) = (
            random(&out_half, -1.0, 1.0, rng),
            random(&out_half, -1.0, 1.0, rng),
        );
        let leaf = |t: &Tensor, need: bool| if need { t.requires_grad() } else { t.clone() };

        // Fused: one stacked input, one op.
        let s = leaf(
            &Tensor::from_vec(cat(&c, &r), &[2, n, ci, h, w]),
            needs.input,
        );
        let (w1, b1) = (leaf(&wt, needs.weight), leaf(&b, needs.bias == Some(true)));
        let bias1 = needs.bias.map(|_| &b1);
        let out = s.interval_conv2d(&w1, bias1, p);
        assert_eq!(out.shape(), &[2, n, co, oh, ow], "{what}");
        let g_all = Tensor::from_vec(cat(&gc, &gr), out.shape());
        let grads = out.mul(&g_all).sum().backward();

        // Reference: two plain convolutions.
        let (c2, r2) = (leaf(&c, needs.input), leaf(&r, needs.input));
        let (w2, b2) = (leaf(&wt, needs.weight), leaf(&b, needs.bias == Some(true)));
        let bias2 = needs.bias.map(|_| &b2);
        let oc = c2.conv2d(&w2, bias2, p);
        let or = r2.conv2d(&w2.abs(), None, p);
        assert_close(&format!("forward, {what}"), out.data(), &cat(&oc, &or));
        let ref_grads = oc.mul(&gc).sum().add(&or.mul(&gr).sum()).backward();

        // The same forward without a graph.
        let plain = with_no_grad(|| s.interval_conv2d(&w1, bias1, p));
        assert!(!plain.tracks_grad());
        assert_close(
            &format!("no_grad forward, {what}"),
            plain.data(),
            out.data(),
        );

        if needs.input {
            let ds = grads.get(&s).expect("input gradient");
            let (dc, dr) = (
                ref_grads.get(&c2).expect("centre gradient"),
                ref_grads.get(&r2).expect("radius gradient"),
            );
            assert_close(&format!("d input, {what}"), ds.data(), &cat(dc, dr));
        }
        if needs.weight {
            let dw = grads.get(&w1).expect("weight gradient");
            let want = ref_grads.get(&w2).expect("reference weight gradient");
            assert_close(&format!("d weight, {what}"), dw.data(), want.data());
        } else {
            assert!(grads.get(&w1).is_none());
        }
        if needs.bias == Some(true) {
            let db = grads.get(&b1).expect("bias gradient");
            let want = ref_grads.get(&b2).expect("reference bias gradient");
            assert_close(&format!("d bias, {what}"), db.data(), want.data());
        }
    }

    fn cases(rng: &mut Rng) -> Vec<Case> {
        let mut cases = Vec::new();
        // Odd sizes, stride 1 and 2, padding 0/1/2, batch 1 and 3, kernel 1/3/4.
        for n in [1, 3] {
            for k in [1, 3, 4] {
                for stride in [1, 2] {
                    for pad in [0, 1, 2] {
                        let (h, w) = (k + 2 + 2 * rng.below(4), k + 1 + 2 * rng.below(5));
                        cases.push(Case {
                            n,
                            ci: 1 + rng.below(4),
                            co: 1 + rng.below(5),
                            h: h.max(k),
                            w: w.max(k),
                            k,
                            stride,
                            pad,
                        });
                    }
                }
            }
        }
        // Several column bands per sample (the test build's tile is small), among them
        // "same" convolutions, which im2col copies one tap at a time across band edges.
        cases.push(Case {
            n: 3,
            ci: 9,
            co: 5,
            h: 13,
            w: 11,
            k: 4,
            stride: 1,
            pad: 2,
        });
        cases.push(Case {
            n: 3,
            ci: 8,
            co: 6,
            h: 15,
            w: 17,
            k: 3,
            stride: 1,
            pad: 1,
        });
        cases.push(Case {
            n: 1,
            ci: 7,
            co: 3,
            h: 19,
            w: 9,
            k: 3,
            stride: 2,
            pad: 1,
        });
        cases
    }

    const ALL: Needs = Needs {
        input: true,
        weight: true,
        bias: Some(true),
    };

    #[test]
    fn fused_matches_two_convolutions() {
        let mut rng = Rng::seed(41);
        for case in cases(&mut rng) {
            check(&case, ALL, &mut rng);
        }
    }

    #[test]
    fn each_gradient_alone_and_no_bias() {
        let mut rng = Rng::seed(42);
        let subsets = [
            Needs {
                input: true,
                weight: false,
                bias: Some(false),
            },
            Needs {
                input: false,
                weight: true,
                bias: Some(false),
            },
            Needs {
                input: false,
                weight: false,
                bias: Some(true),
            },
            Needs {
                input: true,
                weight: true,
                bias: None,
            },
        ];
        for case in cases(&mut rng).iter().step_by(3) {
            for needs in subsets {
                check(case, needs, &mut rng);
            }
        }
    }

    /// The kernels split the 2n stacked samples over workers only when they cover every
    /// thread (and a worker's run of samples may then hold centres and radii), and run them
    /// one by one with threaded GEMMs otherwise: force each path with its own pool.
    #[test]
    fn serial_and_threaded_paths_agree() {
        let mut rng = Rng::seed(43);
        let cases = cases(&mut rng);
        for threads in [1, 2, 4] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                for case in cases.iter().step_by(4) {
                    check(case, ALL, &mut rng);
                }
            });
        }
    }
}
