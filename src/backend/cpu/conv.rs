//! Provisional conv (naive; replaced by the tuned im2col version).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub padding: (usize, usize),
}
impl ConvGeometry {
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.padding.0 - self.kh) / self.stride.0 + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.padding.1 - self.kw) / self.stride.1 + 1
    }
    pub fn input_len(&self) -> usize {
        self.n * self.c_in * self.h * self.w
    }
    pub fn weight_len(&self) -> usize {
        self.c_out * self.c_in * self.kh * self.kw
    }
    pub fn output_len(&self) -> usize {
        self.n * self.c_out * self.out_h() * self.out_w()
    }
}
pub struct ConvGrads {
    pub input: Option<Vec<f32>>,
    pub weight: Option<Vec<f32>>,
    pub bias: Option<Vec<f32>>,
}
pub fn conv2d_forward(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeometry,
) -> Vec<f32> {
    reference::conv2d_forward(x, weight, bias, g)
}
pub fn conv2d_backward(
    x: &[f32],
    weight: &[f32],
    grad_out: &[f32],
    g: &ConvGeometry,
    ni: bool,
    nw: bool,
    nb: bool,
) -> ConvGrads {
    reference::conv2d_backward(x, weight, grad_out, g, ni, nw, nb)
}
pub mod reference {
    use super::*;
    fn each(g: &ConvGeometry, mut f: impl FnMut(usize, usize, usize)) {
        let (oh, ow) = (g.out_h(), g.out_w());
        for n in 0..g.n {
            for o in 0..g.c_out {
                for y in 0..oh {
                    for xx in 0..ow {
                        let oi = ((n * g.c_out + o) * oh + y) * ow + xx;
                        for c in 0..g.c_in {
                            for i in 0..g.kh {
                                for j in 0..g.kw {
                                    let iy = (y * g.stride.0 + i) as isize - g.padding.0 as isize;
                                    let ix = (xx * g.stride.1 + j) as isize - g.padding.1 as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xi =
                                        ((n * g.c_in + c) * g.h + iy as usize) * g.w + ix as usize;
                                    let wi = ((o * g.c_in + c) * g.kh + i) * g.kw + j;
                                    f(oi, xi, wi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    pub fn conv2d_forward(
        x: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        g: &ConvGeometry,
    ) -> Vec<f32> {
        let mut out = vec![0.0; g.output_len()];
        let p = g.out_h() * g.out_w();
        if let Some(b) = bias {
            for (i, o) in out.iter_mut().enumerate() {
                *o = b[(i / p) % g.c_out];
            }
        }
        each(g, |oi, xi, wi| out[oi] += x[xi] * weight[wi]);
        out
    }
    pub fn conv2d_backward(
        x: &[f32],
        weight: &[f32],
        go: &[f32],
        g: &ConvGeometry,
        ni: bool,
        nw: bool,
        nb: bool,
    ) -> ConvGrads {
        let mut dx = vec![0.0; g.input_len()];
        let mut dw = vec![0.0; g.weight_len()];
        each(g, |oi, xi, wi| {
            dx[xi] += go[oi] * weight[wi];
            dw[wi] += go[oi] * x[xi];
        });
        let p = g.out_h() * g.out_w();
        let mut db = vec![0.0; g.c_out];
        for (i, v) in go.iter().enumerate() {
            db[(i / p) % g.c_out] += v;
        }
        ConvGrads {
            input: ni.then_some(dx),
            weight: nw.then_some(dw),
            bias: nb.then_some(db),
        }
    }
}
