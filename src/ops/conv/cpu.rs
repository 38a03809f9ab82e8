//! 2-D convolution (NCHW, f32) forward and backward on the CPU.
//!
//! Everything is lowered to GEMM through im2col: for one sample the column
//! matrix `col[c_in*kh*kw, out_h*out_w]` holds, in row `(ci, ky, kx)`, the input
//! pixels that kernel tap meets at every output position, so that
//! `out_n = W[c_out, c_in*kh*kw] · col`. The backward pass recomputes `col`
//! instead of storing it (it is `kh*kw` times the input) and uses transposed
//! stride views rather than transposed copies:
//! `dcol = Wᵀ · g_n` (scattered back by col2im) and `dW = Σ_n g_n · col_nᵀ`.

use crate::runtime::cpu::gemm::{matmul_into, MatRef};
use rayon::prelude::*;
use std::ops::Range;

/// Shape of a 2-D convolution: input `[n, c_in, h, w]`, weight
/// `[c_out, c_in, kh, kw]`, symmetric zero padding, no dilation or groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    /// (vertical, horizontal)
    pub stride: (usize, usize),
    /// (vertical, horizontal), added on both sides.
    pub padding: (usize, usize),
}

impl ConvGeometry {
    /// Output height. Panics if the stride is 0 or the kernel is taller than
    /// the padded input.
    pub fn out_h(&self) -> usize {
        out_size(self.h, self.kh, self.stride.0, self.padding.0, "height")
    }

    /// Output width. Panics if the stride is 0 or the kernel is wider than
    /// the padded input.
    pub fn out_w(&self) -> usize {
        out_size(self.w, self.kw, self.stride.1, self.padding.1, "width")
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

    /// Rows of the im2col matrix (the GEMM inner dimension).
    fn col_rows(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// A 1×1 kernel with unit stride and no padding reads the input as-is:
    /// the sample `[c_in, h*w]` already is its column matrix.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == (1, 1) && self.padding == (0, 0)
    }

    /// Rejects degenerate geometries, so that the kernels never see a zero-sized
    /// per-sample input (a zero batch or zero output channels is fine).
    fn validate(&self) {
        assert!(
            self.c_in > 0 && self.h > 0 && self.w > 0 && self.kh > 0 && self.kw > 0,
            "conv2d: c_in, h, w, kh and kw must be positive, got {self:?}"
        );
        // Panics with its own message on a zero stride or oversized kernel.
        let _ = (self.out_h(), self.out_w());
    }
}

fn out_size(input: usize, kernel: usize, stride: usize, pad: usize, what: &str) -> usize {
    assert!(stride > 0, "conv2d: {what} stride must be positive");
    let padded = input + 2 * pad;
    assert!(
        padded >= kernel,
        "conv2d: kernel {what} {kernel} exceeds padded input {what} {padded}"
    );
    (padded - kernel) / stride + 1
}

fn assert_len(name: &str, got: usize, want: usize) {
    assert_eq!(
        got, want,
        "conv2d: `{name}` has {got} elements, the geometry needs {want}"
    );
}

/// The output positions `lo..hi` (along one axis) at which kernel offset `k`
/// lands inside the input, i.e. `0 <= o*stride + k - pad < input`.
#[inline]
fn valid_range(k: usize, pad: usize, stride: usize, input: usize, out: usize) -> (usize, usize) {
    let hi = if input + pad > k {
        ((input + pad - 1 - k) / stride + 1).min(out)
    } else {
        0
    };
    let lo = if k >= pad {
        0
    } else {
        (pad - k).div_ceil(stride)
    };
    (lo.min(hi), hi)
}

/// Intersects `lo..hi` with `rows`, keeping `rows.start <= lo <= hi <= rows.end`.
#[inline]
fn clamp_range((lo, hi): (usize, usize), rows: &Range<usize>) -> (usize, usize) {
    let lo = lo.clamp(rows.start, rows.end);
    (lo, hi.clamp(lo, rows.end))
}

/// Fills `col` (`[c_in*kh*kw, rows.len()*out_w]`) with the band of output
/// rows `rows` of one sample's im2col matrix; `x` is the sample `[c_in, h, w]`.
/// Padding bounds are computed once per kernel tap, so the inner loops are
/// plain copies (or strided gathers) with no per-element branches.
fn im2col(x: &[f32], g: &ConvGeometry, rows: Range<usize>, col: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let (sh, sw) = g.stride;
    let (ph, pw) = g.padding;
    let r0 = rows.start;
    let mut taps = col.chunks_exact_mut(rows.len() * ow);
    for plane in x.chunks_exact(g.h * g.w) {
        for ky in 0..g.kh {
            let (y_lo, y_hi) = clamp_range(valid_range(ky, ph, sh, g.h, oh), &rows);
            for kx in 0..g.kw {
                let (x_lo, x_hi) = valid_range(kx, pw, sw, g.w, ow);
                let dst = taps.next().expect("im2col: col too short");
                dst[..(y_lo - r0) * ow].fill(0.0);
                dst[(y_hi - r0) * ow..].fill(0.0);
                if x_lo == x_hi {
                    dst[(y_lo - r0) * ow..(y_hi - r0) * ow].fill(0.0);
                    continue;
                }
                let ix0 = x_lo * sw + kx - pw;
                if sw == 1 && sh == 1 && ow == g.w && y_lo < y_hi {
                    // "Same" stride-1 convolution: output and input rows have the
                    // same pitch, so the whole band is one shifted copy; only the
                    // few entries that wrapped around a row edge need zeroing.
                    let start = (y_lo - r0) * ow + x_lo;
                    let len = (y_hi - y_lo - 1) * ow + x_hi - x_lo;
                    let src0 = (y_lo + ky - ph) * g.w + ix0;
                    dst[start..start + len].copy_from_slice(&plane[src0..src0 + len]);
                    for d in dst[(y_lo - r0) * ow..(y_hi - r0) * ow].chunks_exact_mut(ow) {
                        d[..x_lo].fill(0.0);
                        d[x_hi..].fill(0.0);
                    }
                    continue;
                }
                for oy in y_lo..y_hi {
                    let iy = oy * sh + ky - ph;
                    let src = &plane[iy * g.w + ix0..(iy + 1) * g.w];
                    let d = &mut dst[(oy - r0) * ow..(oy - r0 + 1) * ow];
                    d[..x_lo].fill(0.0);
                    d[x_hi..].fill(0.0);
                    let d = &mut d[x_lo..x_hi];
                    if sw == 1 {
                        d.copy_from_slice(&src[..d.len()]);
                    } else {
                        for (d, s) in d.iter_mut().zip(src.iter().step_by(sw)) {
                            *d = *s;
                        }
                    }
                }
            }
        }
    }
}

/// Adjoint of [`im2col`]: adds every entry of the band `col` back onto the
/// input pixel it was read from. `dx` (`[c_in, h, w]`) must be initialised by
/// the caller. `col` is scratch: entries that map into the padding may be
/// zeroed.
fn col2im(col: &mut [f32], g: &ConvGeometry, rows: Range<usize>, dx: &mut [f32]) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let (sh, sw) = g.stride;
    let (ph, pw) = g.padding;
    let r0 = rows.start;
    let mut taps = col.chunks_exact_mut(rows.len() * ow);
    for plane in dx.chunks_exact_mut(g.h * g.w) {
        for ky in 0..g.kh {
            let (y_lo, y_hi) = clamp_range(valid_range(ky, ph, sh, g.h, oh), &rows);
            for kx in 0..g.kw {
                let (x_lo, x_hi) = valid_range(kx, pw, sw, g.w, ow);
                let src = taps.next().expect("col2im: col too short");
                if x_lo == x_hi {
                    continue;
                }
                let ix0 = x_lo * sw + kx - pw;
                if sw == 1 && sh == 1 && ow == g.w && y_lo < y_hi {
                    // As in im2col: one shifted span per tap. Entries that would
                    // wrap around a row edge belong to the padding; zero them in
                    // the (scratch) column buffer so the span add skips them.
                    let band = &mut src[(y_lo - r0) * ow..(y_hi - r0) * ow];
                    for d in band.chunks_exact_mut(ow) {
                        d[..x_lo].fill(0.0);
                        d[x_hi..].fill(0.0);
                    }
                    let len = (y_hi - y_lo - 1) * ow + x_hi - x_lo;
                    let dst0 = (y_lo + ky - ph) * g.w + ix0;
                    let d = &mut plane[dst0..dst0 + len];
                    for (d, s) in d.iter_mut().zip(&band[x_lo..x_lo + len]) {
                        *d += *s;
                    }
                    continue;
                }
                for oy in y_lo..y_hi {
                    let iy = oy * sh + ky - ph;
                    let d = &mut plane[iy * g.w + ix0..(iy + 1) * g.w];
                    let s = &src[(oy - r0) * ow + x_lo..(oy - r0) * ow + x_hi];
                    if sw == 1 {
                        for (d, s) in d.iter_mut().zip(s) {
                            *d += *s;
                        }
                    } else {
                        for (d, s) in d.iter_mut().step_by(sw).zip(s) {
                            *d += *s;
                        }
                    }
                }
            }
        }
    }
}

/// Target size (in floats) of one band of the im2col matrix. A band is
/// written by im2col and immediately read back by the GEMM's packing, so
/// keeping it near L2 size avoids a round trip through memory; it also bounds
/// the scratch memory per worker for large images. (Measured on a 2-core
/// EPYC with 1 MiB L2: 128K-256K floats and unbanded were within noise.)
#[cfg(not(test))]
const COL_TILE: usize = 1 << 18;
/// Tiny bands under test, so that the small test shapes cross band edges.
#[cfg(test)]
const COL_TILE: usize = 1 << 12;

/// Sum with eight independent accumulators, so that it vectorises (a plain
/// `iter().sum()` is one serial dependency chain).
fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += *v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Bands of output rows, each small enough for one L2-resident im2col tile
/// (at least one row per band).
fn bands(g: &ConvGeometry) -> impl Iterator<Item = Range<usize>> {
    let (oh, ow) = (g.out_h(), g.out_w());
    let per_band = (COL_TILE / (g.col_rows() * ow).max(1)).clamp(1, oh.max(1));
    (0..oh)
        .step_by(per_band)
        .map(move |r0| r0..(r0 + per_band).min(oh))
}

/// Length of the im2col buffer a worker needs (none for pointwise kernels).
fn col_buffer_len(g: &ConvGeometry) -> usize {
    if g.is_pointwise() {
        0
    } else {
        bands(g).map(|r| r.len()).max().unwrap_or(0) * g.out_w() * g.col_rows()
    }
}

/// Whether to spread samples over rayon workers (each running a serial GEMM)
/// rather than handing each sample's GEMM all the threads: per-sample
/// parallelism has no synchronisation inside the GEMM, but needs enough
/// samples to keep every thread busy.
fn parallel_over_samples(n: usize) -> bool {
    let threads = rayon::current_num_threads();
    threads > 1 && n >= threads
}

/// x: `[n, c_in, h, w]`, weight: `[c_out, c_in, kh, kw]`, bias: `[c_out]`;
/// returns `[n, c_out, out_h, out_w]`.
pub fn conv2d_forward(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeometry,
) -> Vec<f32> {
    g.validate();
    assert_len("x", x.len(), g.input_len());
    assert_len("weight", weight.len(), g.weight_len());
    if let Some(b) = bias {
        assert_len("bias", b.len(), g.c_out);
    }
    let ohw = g.out_h() * g.out_w();
    let out_per = g.c_out * ohw;
    let mut out = vec![0.0f32; g.n * out_per];
    if out.is_empty() {
        return out;
    }
    let in_per = g.c_in * g.h * g.w;
    let kdim = g.col_rows();
    let wmat = MatRef::row_major(weight, g.c_out, kdim);
    let col_len = col_buffer_len(g);

    let sample = |x_n: &[f32], out_n: &mut [f32], col: &mut [f32], parallel: bool| {
        forward_sample(x_n, out_n, wmat, bias, g, col, parallel)
    };

    if parallel_over_samples(g.n) {
        out.par_chunks_mut(out_per)
            .zip(x.par_chunks(in_per))
            .for_each_init(
                || vec![0.0f32; col_len],
                |col, (out_n, x_n)| sample(x_n, out_n, col, false),
            );
    } else {
        let mut col = vec![0.0f32; col_len];
        for (out_n, x_n) in out.chunks_mut(out_per).zip(x.chunks(in_per)) {
            sample(x_n, out_n, &mut col, true);
        }
    }
    out
}

/// Gradients of conv2d; each is `Some` exactly when it was asked for.
#[derive(Clone, Debug, Default)]
pub struct ConvGrads {
    /// `[n, c_in, h, w]`
    pub input: Option<Vec<f32>>,
    /// `[c_out, c_in, kh, kw]`
    pub weight: Option<Vec<f32>>,
    /// `[c_out]`
    pub bias: Option<Vec<f32>>,
}

/// Per-worker partial sums of the parameter gradients.
struct Partial {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

/// One sample of a convolution's backward, band by band: adds `g_n · im2col(x_n)ᵀ` to `dw` and
/// writes `col2im(wt · g_n)` into `dx_n`, each only when given; the per-sample body of
/// [`conv2d_backward`] and [`interval_conv2d_backward`] (`wt` is the transposed weight the input
/// gradient goes through: W, or |W| for radii).
#[allow(clippy::too_many_arguments)]
fn backward_sample(
    x_n: &[f32],
    g_mat: MatRef<'_>,
    wt: MatRef<'_>,
    g: &ConvGeometry,
    mut dw: Option<&mut [f32]>,
    mut dx_n: Option<&mut [f32]>,
    col: &mut [f32],
    dcol: &mut [f32],
    parallel: bool,
) {
    let (ow, ohw, kdim) = (g.out_w(), g.out_h() * g.out_w(), g.col_rows());
    if g.is_pointwise() {
        if let Some(dw) = dw {
            let cols = MatRef::row_major(x_n, kdim, ohw);
            matmul_into(dw, kdim, g_mat, cols.t(), true, parallel);
        }
        if let Some(dx_n) = dx_n {
            matmul_into(dx_n, ohw, wt, g_mat, false, parallel);
        }
        return;
    }
    for rows in bands(g) {
        let nt = rows.len() * ow;
        // This band's columns of g_n: a [c_out, nt] view with row stride ohw.
        let g_band = MatRef {
            data: &g_mat.data[rows.start * ow..],
            rows: g.c_out,
            cols: nt,
            row_stride: ohw,
            col_stride: 1,
        };
        if let Some(dw) = dw.as_deref_mut() {
            let col = &mut col[..kdim * nt];
            im2col(x_n, g, rows.clone(), col);
            let cols = MatRef::row_major(col, kdim, nt);
            matmul_into(dw, kdim, g_band, cols.t(), true, parallel);
        }
        if let Some(dx_n) = dx_n.as_deref_mut() {
            let dcol = &mut dcol[..kdim * nt];
            matmul_into(dcol, nt, wt, g_band, false, parallel);
            col2im(dcol, g, rows, dx_n);
        }
    }
}

/// A batch of `items` samples cut into contiguous runs: one per worker when the batch is wide
/// enough to parallelise over samples, else a single run whose GEMMs parallelise inside. Each
/// run is its first sample and, when the input gradient is wanted, its slice of `dx`.
struct SampleRuns<'a> {
    by_samples: bool,
    /// Samples per run (the last may have fewer).
    per_run: usize,
    runs: Vec<(usize, Option<&'a mut [f32]>)>,
}

impl<'a> SampleRuns<'a> {
    fn new(items: usize, in_per: usize, dx: Option<&'a mut [f32]>) -> SampleRuns<'a> {
        let by_samples = parallel_over_samples(items);
        let n_runs = if by_samples {
            rayon::current_num_threads()
        } else {
            1
        };
        let per_run = items.div_ceil(n_runs).max(1);
        let runs = match dx {
            Some(dx) => dx
                .chunks_mut(per_run * in_per)
                .enumerate()
                .map(|(i, chunk)| (i * per_run, Some(chunk)))
                .collect(),
            None => (0..items).step_by(per_run).map(|s| (s, None)).collect(),
        };
        SampleRuns {
            by_samples,
            per_run,
            runs,
        }
    }

    /// `run` over every run, in parallel when the batch is split over workers.
    fn map<T: Send>(
        self,
        run: impl Fn((usize, Option<&'a mut [f32]>)) -> T + Sync + Send,
    ) -> Vec<T> {
        if self.by_samples {
            self.runs.into_par_iter().map(run).collect()
        } else {
            self.runs.into_iter().map(run).collect()
        }
    }
}

/// Gradients of conv2d given `grad_out` `[n, c_out, out_h, out_w]`. Each is
/// computed only when asked for; input and weight gradients share one pass
/// over the samples (and one im2col per sample).
pub fn conv2d_backward(
    x: &[f32],
    weight: &[f32],
    grad_out: &[f32],
    g: &ConvGeometry,
    need_input: bool,
    need_weight: bool,
    need_bias: bool,
) -> ConvGrads {
    assert_len("x", x.len(), g.input_len());
    backward_with(
        Some(x),
        weight,
        grad_out,
        g,
        need_input,
        need_weight,
        need_bias,
    )
}

/// The adjoint of the convolution applied to `grad_out` `[n, c_out, out_h, out_w]`: the input
/// gradient alone, `[n, c_in, h, w]` (a transposed convolution), without an input tensor.
pub fn conv2d_backward_input(weight: &[f32], grad_out: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let grads = backward_with(None, weight, grad_out, g, true, false, false);
    grads.input.expect("the input gradient was asked for")
}

/// `conv2d_backward` with an optional input (needed only for the weight gradient).
fn backward_with(
    x: Option<&[f32]>,
    weight: &[f32],
    grad_out: &[f32],
    g: &ConvGeometry,
    need_input: bool,
    need_weight: bool,
    need_bias: bool,
) -> ConvGrads {
    g.validate();
    assert!(
        x.is_some() || !need_weight,
        "the weight gradient needs the input"
    );
    let x = x.unwrap_or(&[]);
    assert_len("weight", weight.len(), g.weight_len());
    assert_len("grad_out", grad_out.len(), g.output_len());
    let ohw = g.out_h() * g.out_w();
    let in_per = g.c_in * g.h * g.w;
    let out_per = g.c_out * ohw;
    let kdim = g.col_rows();

    let mut dx = if need_input {
        vec![0.0f32; g.input_len()]
    } else {
        Vec::new()
    };
    let (dw_len, db_len) = (
        if need_weight { weight.len() } else { 0 },
        if need_bias { g.c_out } else { 0 },
    );
    if g.n == 0 || g.c_out == 0 {
        // No output, so every gradient is zero.
        return ConvGrads {
            input: need_input.then_some(dx),
            weight: need_weight.then(|| vec![0.0; dw_len]),
            bias: need_bias.then(|| vec![0.0; db_len]),
        };
    }

    // Contiguous sample ranges, one per worker, each with its own dW/db
    // accumulator (summed at the end) and its own slice of dx.
    let runs = SampleRuns::new(g.n, in_per, need_input.then_some(&mut dx[..]));
    let (by_samples, per_chunk) = (runs.by_samples, runs.per_run);

    let wt = MatRef::row_major(weight, g.c_out, kdim).t();
    let run = |(first, mut dx_chunk): (usize, Option<&mut [f32]>)| -> Partial {
        let parallel = !by_samples;
        let last = (first + per_chunk).min(g.n);
        let mut part = Partial {
            weight: vec![0.0f32; dw_len],
            bias: vec![0.0f32; db_len],
        };
        let col_len = col_buffer_len(g);
        let mut col = vec![0.0f32; if need_weight { col_len } else { 0 }];
        let mut dcol = vec![0.0f32; if need_input { col_len } else { 0 }];
        for s in first..last {
            let x_n = if need_weight {
                &x[s * in_per..(s + 1) * in_per]
            } else {
                &[]
            };
            let g_mat = MatRef::row_major(&grad_out[s * out_per..(s + 1) * out_per], g.c_out, ohw);
            if need_bias {
                for (db, row) in part.bias.iter_mut().zip(g_mat.data.chunks_exact(ohw)) {
                    *db += sum(row);
                }
            }
            let dx_n = dx_chunk
                .as_deref_mut()
                .map(|d| &mut d[(s - first) * in_per..(s - first + 1) * in_per]);
            let dw = need_weight.then_some(&mut part.weight[..]);
            backward_sample(x_n, g_mat, wt, g, dw, dx_n, &mut col, &mut dcol, parallel);
        }
        part
    };

    let partials: Vec<Partial> = runs.map(run);
    let mut dw = vec![0.0f32; dw_len];
    let mut db = vec![0.0f32; db_len];
    for p in &partials {
        for (a, b) in dw.iter_mut().zip(&p.weight) {
            *a += *b;
        }
        for (a, b) in db.iter_mut().zip(&p.bias) {
            *a += *b;
        }
    }
    ConvGrads {
        input: need_input.then_some(dx),
        weight: need_weight.then_some(dw),
        bias: need_bias.then_some(db),
    }
}

// ---------------------------------------------------------------------------
// Interval convolution in centre/radius form.
//
// Bound propagation through a convolution computes `c' = W * c + b` and
// `r' = |W| * r` on the two halves of a stacked box `[2, n, c_in, h, w]`. The
// kernels below treat the stack as `2n` samples of one geometry, each with its
// weight (`W` and the bias for centres, `|W|` for radii), in a single parallel
// loop that reads and writes the stacked tensors in place.
//
// The convolutions are GEMM-bound (the 32x64x28x28 forward runs near the
// 2-core Zen4 peak), so what fusing can save is overhead: one parallel region
// instead of two, no concatenation of the halves, |W| once, and two busy
// threads for a batch of one box. Measured alternative (Zen4, 1 thread, CPU
// time): building the centre and radius im2col bands in one pass into two
// buffers and running the two GEMMs on them was 5-10% slower than this,
// forward and backward, probably because the second band and the alternating
// weights and gradient accumulators crowd the L2 that the GEMM's packing
// needs. Contiguous runs of samples per worker keep each worker on one weight
// matrix (on 2 threads: one takes the centres, the other the radii).

/// `|w|` element-wise: the radius weight of interval layers.
pub fn abs_weight(weight: &[f32]) -> Vec<f32> {
    weight.iter().map(|w| w.abs()).collect()
}

/// One sample of a forward convolution: `out_n = weight · im2col(x_n) (+ bias)`, band by band;
/// the per-sample body of [`conv2d_forward`], with the weight chosen by the caller.
fn forward_sample(
    x_n: &[f32],
    out_n: &mut [f32],
    wmat: MatRef<'_>,
    bias: Option<&[f32]>,
    g: &ConvGeometry,
    col: &mut [f32],
    parallel: bool,
) {
    let (ow, ohw, kdim) = (g.out_w(), g.out_h() * g.out_w(), g.col_rows());
    if let Some(b) = bias {
        for (row, &bv) in out_n.chunks_exact_mut(ohw).zip(b) {
            row.fill(bv);
        }
    }
    if g.is_pointwise() {
        let rhs = MatRef::row_major(x_n, kdim, ohw);
        matmul_into(out_n, ohw, wmat, rhs, bias.is_some(), parallel);
        return;
    }
    for rows in bands(g) {
        let nt = rows.len() * ow;
        let col = &mut col[..kdim * nt];
        let r0 = rows.start;
        im2col(x_n, g, rows, col);
        let rhs = MatRef::row_major(col, kdim, nt);
        matmul_into(
            &mut out_n[r0 * ow..],
            ohw,
            wmat,
            rhs,
            bias.is_some(),
            parallel,
        );
    }
}

/// Interval convolution forward in centre/radius form.
///
/// `x` is the stacked box `[2, n, c_in, h, w]` (centres, then radii), `weight`
/// `[c_out, c_in, kh, kw]`, `abs_weight` its element-wise absolute value (see
/// [`abs_weight`]; passed in so that a caller computes it once per step), `bias`
/// `[c_out]` (centres only). Returns the stacked `[2, n, c_out, out_h, out_w]`:
/// `W * c + b`, then `|W| * r`, each equal to [`conv2d_forward`] on its half.
///
/// The stack is walked as `2n` samples in one parallel loop that writes both
/// halves of the output in place, so a batch of one box still keeps two threads
/// busy.
pub fn interval_conv2d_forward(
    x: &[f32],
    weight: &[f32],
    abs_weight: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeometry,
) -> Vec<f32> {
    g.validate();
    assert_len("x", x.len(), 2 * g.input_len());
    assert_len("weight", weight.len(), g.weight_len());
    assert_len("abs_weight", abs_weight.len(), g.weight_len());
    if let Some(b) = bias {
        assert_len("bias", b.len(), g.c_out);
    }
    let out_per = g.c_out * g.out_h() * g.out_w();
    let mut out = vec![0.0f32; 2 * g.n * out_per];
    if out.is_empty() {
        return out;
    }
    let in_per = g.c_in * g.h * g.w;
    let kdim = g.col_rows();
    let (w_c, w_r) = (
        MatRef::row_major(weight, g.c_out, kdim),
        MatRef::row_major(abs_weight, g.c_out, kdim),
    );
    let col_len = col_buffer_len(g);
    // Sample i of the stack: a centre (W and bias) for i < n, else a radius (|W|).
    let sample = |i: usize, x_n: &[f32], out_n: &mut [f32], col: &mut [f32], parallel: bool| {
        let (wmat, b) = if i < g.n { (w_c, bias) } else { (w_r, None) };
        forward_sample(x_n, out_n, wmat, b, g, col, parallel);
    };
    if parallel_over_samples(2 * g.n) {
        out.par_chunks_mut(out_per)
            .zip(x.par_chunks(in_per))
            .enumerate()
            .for_each_init(
                || vec![0.0f32; col_len],
                |col, (i, (out_n, x_n))| sample(i, x_n, out_n, col, false),
            );
    } else {
        let mut col = vec![0.0f32; col_len];
        for (i, (out_n, x_n)) in out.chunks_mut(out_per).zip(x.chunks(in_per)).enumerate() {
            sample(i, x_n, out_n, &mut col, true);
        }
    }
    out
}

/// Per-worker partial sums of the interval convolution's parameter gradients.
struct IntervalPartial {
    /// Σ g_c · col_cᵀ over the worker's centre samples: the gradient of W.
    weight: Vec<f32>,
    /// Σ g_r · col_rᵀ over its radius samples: the gradient of |W|.
    abs_weight: Vec<f32>,
    bias: Vec<f32>,
}

/// Gradients of [`interval_conv2d_forward`] given `grad_out`
/// `[2, n, c_out, out_h, out_w]` (centre gradients, then radius gradients).
///
/// `input` is the stacked `[2, n, c_in, h, w]` (`Wᵀ` applied to the centre
/// gradient, `|W|ᵀ` to the radius gradient), `weight` is
/// `Σ g_c · col_cᵀ + sign(W) ⊙ Σ g_r · col_rᵀ` (the radius path sees `|W|`),
/// `bias` the sums of the centre gradient. Each is computed only when asked
/// for. As in the forward, the stack is one parallel loop over `2n` samples
/// (input and weight gradients share each sample's im2col), with contiguous
/// runs of samples per worker.
#[allow(clippy::too_many_arguments)]
pub fn interval_conv2d_backward(
    x: &[f32],
    weight: &[f32],
    abs_weight: &[f32],
    grad_out: &[f32],
    g: &ConvGeometry,
    need_input: bool,
    need_weight: bool,
    need_bias: bool,
) -> ConvGrads {
    g.validate();
    assert_len("x", x.len(), 2 * g.input_len());
    assert_len("weight", weight.len(), g.weight_len());
    assert_len("abs_weight", abs_weight.len(), g.weight_len());
    assert_len("grad_out", grad_out.len(), 2 * g.output_len());
    let ohw = g.out_h() * g.out_w();
    let in_per = g.c_in * g.h * g.w;
    let out_per = g.c_out * ohw;
    let kdim = g.col_rows();
    let items = 2 * g.n;

    let mut dx = if need_input {
        vec![0.0f32; x.len()]
    } else {
        Vec::new()
    };
    let (dw_len, db_len) = (
        if need_weight { weight.len() } else { 0 },
        if need_bias { g.c_out } else { 0 },
    );
    if g.n == 0 || g.c_out == 0 {
        return ConvGrads {
            input: need_input.then_some(dx),
            weight: need_weight.then(|| vec![0.0; dw_len]),
            bias: need_bias.then(|| vec![0.0; db_len]),
        };
    }

    // Contiguous runs of the 2n samples, one per worker, each with its own
    // parameter accumulators and its own slice of dx.
    let runs = SampleRuns::new(items, in_per, need_input.then_some(&mut dx[..]));
    let (by_samples, per_chunk) = (runs.by_samples, runs.per_run);

    let (wt_c, wt_r) = (
        MatRef::row_major(weight, g.c_out, kdim).t(),
        MatRef::row_major(abs_weight, g.c_out, kdim).t(),
    );
    let run = |(first, mut dx_chunk): (usize, Option<&mut [f32]>)| -> IntervalPartial {
        let parallel = !by_samples;
        let last = (first + per_chunk).min(items);
        // Accumulators only for the halves this run touches.
        let (has_c, has_r) = (first < g.n, last > g.n);
        let mut part = IntervalPartial {
            weight: vec![0.0f32; if has_c { dw_len } else { 0 }],
            abs_weight: vec![0.0f32; if has_r { dw_len } else { 0 }],
            bias: vec![0.0f32; if has_c { db_len } else { 0 }],
        };
        let col_len = col_buffer_len(g);
        let mut col = vec![0.0f32; if need_weight { col_len } else { 0 }];
        let mut dcol = vec![0.0f32; if need_input { col_len } else { 0 }];
        for s in first..last {
            let centre = s < g.n;
            let x_n = &x[s * in_per..(s + 1) * in_per];
            let g_mat = MatRef::row_major(&grad_out[s * out_per..(s + 1) * out_per], g.c_out, ohw);
            if need_bias && centre {
                for (db, row) in part.bias.iter_mut().zip(g_mat.data.chunks_exact(ohw)) {
                    *db += sum(row);
                }
            }
            let (wt, dw) = if centre {
                (wt_c, &mut part.weight)
            } else {
                (wt_r, &mut part.abs_weight)
            };
            let dx_n = dx_chunk
                .as_deref_mut()
                .map(|d| &mut d[(s - first) * in_per..(s - first + 1) * in_per]);
            let dw = need_weight.then_some(&mut dw[..]);
            backward_sample(x_n, g_mat, wt, g, dw, dx_n, &mut col, &mut dcol, parallel);
        }
        part
    };

    let partials: Vec<IntervalPartial> = runs.map(run);
    let mut dw = vec![0.0f32; dw_len];
    let mut dabs = vec![0.0f32; dw_len];
    let mut db = vec![0.0f32; db_len];
    for p in &partials {
        for (a, b) in dw.iter_mut().zip(&p.weight) {
            *a += *b;
        }
        for (a, b) in dabs.iter_mut().zip(&p.abs_weight) {
            *a += *b;
        }
        for (a, b) in db.iter_mut().zip(&p.bias) {
            *a += *b;
        }
    }
    // The radius path multiplies by |W|: its gradient enters W through sign(W).
    for ((d, a), w) in dw.iter_mut().zip(&dabs).zip(weight) {
        if *w > 0.0 {
            *d += *a;
        } else if *w < 0.0 {
            *d -= *a;
        }
    }
    ConvGrads {
        input: need_input.then_some(dx),
        weight: need_weight.then_some(dw),
        bias: need_bias.then_some(db),
    }
}

/// Naive direct loops: slow, obviously correct, and the reference that the
/// fast kernels (and other tests in the crate) are checked against.
pub mod reference {
    use super::{assert_len, ConvGeometry, ConvGrads};

    /// Calls `f(x_index, w_index, out_index)` for every multiply-add of the
    /// convolution, skipping taps that fall into the padding.
    fn for_each_tap(g: &ConvGeometry, mut f: impl FnMut(usize, usize, usize)) {
        let (oh, ow) = (g.out_h(), g.out_w());
        for n in 0..g.n {
            for co in 0..g.c_out {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let o = ((n * g.c_out + co) * oh + oy) * ow + ox;
                        for ci in 0..g.c_in {
                            for ky in 0..g.kh {
                                let iy = (oy * g.stride.0 + ky) as isize - g.padding.0 as isize;
                                if iy < 0 || iy >= g.h as isize {
                                    continue;
                                }
                                for kx in 0..g.kw {
                                    let ix = (ox * g.stride.1 + kx) as isize - g.padding.1 as isize;
                                    if ix < 0 || ix >= g.w as isize {
                                        continue;
                                    }
                                    let xi =
                                        ((n * g.c_in + ci) * g.h + iy as usize) * g.w + ix as usize;
                                    let wi = ((co * g.c_in + ci) * g.kh + ky) * g.kw + kx;
                                    f(xi, wi, o);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Same contract as [`super::conv2d_forward`].
    pub fn conv2d_forward(
        x: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        g: &ConvGeometry,
    ) -> Vec<f32> {
        g.validate();
        assert_len("x", x.len(), g.input_len());
        assert_len("weight", weight.len(), g.weight_len());
        let ohw = g.out_h() * g.out_w();
        let mut acc = vec![0.0f64; g.output_len()];
        if let Some(b) = bias {
            assert_len("bias", b.len(), g.c_out);
            for (i, a) in acc.iter_mut().enumerate() {
                *a = b[(i / ohw) % g.c_out] as f64;
            }
        }
        for_each_tap(g, |xi, wi, o| acc[o] += x[xi] as f64 * weight[wi] as f64);
        acc.into_iter().map(|v| v as f32).collect()
    }

    /// Same contract as [`super::conv2d_backward`].
    pub fn conv2d_backward(
        x: &[f32],
        weight: &[f32],
        grad_out: &[f32],
        g: &ConvGeometry,
        need_input: bool,
        need_weight: bool,
        need_bias: bool,
    ) -> ConvGrads {
        g.validate();
        assert_len("x", x.len(), g.input_len());
        assert_len("weight", weight.len(), g.weight_len());
        assert_len("grad_out", grad_out.len(), g.output_len());
        let ohw = g.out_h() * g.out_w();
        let mut dx = vec![0.0f64; x.len()];
        let mut dw = vec![0.0f64; weight.len()];
        let mut db = vec![0.0f64; g.c_out];
        for_each_tap(g, |xi, wi, o| {
            let go = grad_out[o] as f64;
            dx[xi] += weight[wi] as f64 * go;
            dw[wi] += x[xi] as f64 * go;
        });
        for (i, &go) in grad_out.iter().enumerate() {
            db[(i / ohw) % g.c_out] += go as f64;
        }
        let to_f32 = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
        ConvGrads {
            input: need_input.then(|| to_f32(dx)),
            weight: need_weight.then(|| to_f32(dw)),
            bias: need_bias.then(|| to_f32(db)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random(rng: &mut StdRng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
    }

    /// Max abs error relative to the reference's magnitude.
    fn assert_close(what: &str, g: &ConvGeometry, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: length, {g:?}");
        let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(want)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= 1e-4 * scale,
            "{what}: max error {err} vs magnitude {scale}, {g:?}"
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn geom(
        n: usize,
        c_in: usize,
        h: usize,
        w: usize,
        c_out: usize,
        k: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> ConvGeometry {
        ConvGeometry {
            n,
            c_in,
            h,
            w,
            c_out,
            kh: k.0,
            kw: k.1,
            stride,
            padding,
        }
    }

    fn shapes() -> Vec<ConvGeometry> {
        let mut rng = StdRng::seed_from_u64(9);
        let mut pick = |lo: usize, hi: usize| lo + (rng.random::<u32>() as usize) % (hi - lo + 1);
        let mut random_shapes = Vec::new();
        // Random small geometries: kernels up to 5, strides up to 3, padding up to 2.
        while random_shapes.len() < 12 {
            let (kh, kw, ph, pw) = (pick(1, 5), pick(1, 5), pick(0, 2), pick(0, 2));
            let (h, w) = (pick(1, 10), pick(1, 10));
            if h + 2 * ph < kh || w + 2 * pw < kw {
                continue;
            }
            let (n, c_in, c_out) = (pick(1, 5), pick(1, 4), pick(1, 5));
            let stride = (pick(1, 3), pick(1, 3));
            random_shapes.push(geom(n, c_in, h, w, c_out, (kh, kw), stride, (ph, pw)));
        }
        let fixed = vec![
            geom(1, 3, 7, 9, 4, (3, 3), (1, 1), (1, 1)),
            geom(5, 3, 7, 9, 4, (3, 3), (1, 1), (1, 1)),
            geom(5, 2, 11, 10, 3, (3, 3), (2, 2), (0, 0)),
            geom(1, 4, 9, 7, 5, (5, 5), (2, 2), (2, 2)),
            geom(5, 3, 8, 13, 6, (2, 5), (1, 2), (0, 2)),
            geom(2, 5, 6, 6, 7, (1, 3), (2, 1), (1, 0)),
            geom(5, 6, 5, 7, 3, (1, 1), (1, 1), (0, 0)),
            geom(1, 6, 5, 7, 3, (1, 1), (1, 1), (0, 0)),
            geom(3, 4, 9, 9, 2, (1, 1), (2, 2), (1, 1)),
            // Padding wider than the kernel reach: whole rows/cols of zeros.
            geom(2, 2, 3, 4, 3, (2, 2), (1, 1), (2, 2)),
            geom(5, 8, 12, 12, 16, (3, 3), (1, 1), (1, 1)),
            // Wide rows: one output row per band even at the test COL_TILE.
            geom(2, 16, 33, 31, 4, (3, 3), (1, 1), (1, 1)),
            geom(2, 16, 70, 61, 3, (3, 3), (2, 2), (1, 1)),
            geom(1, 16, 40, 40, 2, (5, 3), (1, 1), (0, 1)),
            geom(2, 2, 5, 8, 3, (2, 5), (1, 3), (2, 0)),
            // Kernel as large as the padded input: a single output pixel.
            geom(2, 2, 3, 3, 2, (5, 5), (1, 1), (1, 1)),
        ];
        fixed.into_iter().chain(random_shapes).collect()
    }

    #[test]
    fn forward_matches_reference() {
        let mut rng = StdRng::seed_from_u64(1);
        for g in shapes() {
            let x = random(&mut rng, g.input_len());
            let w = random(&mut rng, g.weight_len());
            let b = random(&mut rng, g.c_out);
            for bias in [None, Some(&b[..])] {
                let got = conv2d_forward(&x, &w, bias, &g);
                let want = reference::conv2d_forward(&x, &w, bias, &g);
                assert_close("forward", &g, &got, &want);
            }
        }
    }

    #[test]
    fn backward_matches_reference() {
        let mut rng = StdRng::seed_from_u64(2);
        for g in shapes() {
            let x = random(&mut rng, g.input_len());
            let w = random(&mut rng, g.weight_len());
            let go = random(&mut rng, g.output_len());
            let want = reference::conv2d_backward(&x, &w, &go, &g, true, true, true);
            let all = conv2d_backward(&x, &w, &go, &g, true, true, true);
            assert_close(
                "dx",
                &g,
                all.input.as_ref().unwrap(),
                want.input.as_ref().unwrap(),
            );
            assert_close(
                "dw",
                &g,
                all.weight.as_ref().unwrap(),
                want.weight.as_ref().unwrap(),
            );
            assert_close(
                "db",
                &g,
                all.bias.as_ref().unwrap(),
                want.bias.as_ref().unwrap(),
            );
            // Each gradient alone takes a different path through the pass.
            let dx = conv2d_backward(&x, &w, &go, &g, true, false, false);
            assert!(dx.weight.is_none() && dx.bias.is_none());
            assert_close(
                "dx only",
                &g,
                &dx.input.unwrap(),
                want.input.as_ref().unwrap(),
            );
            let dw = conv2d_backward(&x, &w, &go, &g, false, true, false);
            assert!(dw.input.is_none() && dw.bias.is_none());
            assert_close(
                "dw only",
                &g,
                &dw.weight.unwrap(),
                want.weight.as_ref().unwrap(),
            );
            let db = conv2d_backward(&x, &w, &go, &g, false, false, true);
            assert!(db.input.is_none() && db.weight.is_none());
            assert_close(
                "db only",
                &g,
                &db.bias.unwrap(),
                want.bias.as_ref().unwrap(),
            );
        }
    }

    /// The sample-parallel path only runs when the batch covers every thread;
    /// force both paths with dedicated pools.
    #[test]
    fn serial_and_threaded_paths_agree() {
        let mut rng = StdRng::seed_from_u64(3);
        let g = geom(6, 3, 9, 8, 5, (3, 2), (2, 1), (1, 1));
        let x = random(&mut rng, g.input_len());
        let w = random(&mut rng, g.weight_len());
        let go = random(&mut rng, g.output_len());
        let want_y = reference::conv2d_forward(&x, &w, None, &g);
        let want = reference::conv2d_backward(&x, &w, &go, &g, true, true, true);
        for threads in [1, 4] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                assert_close("forward", &g, &conv2d_forward(&x, &w, None, &g), &want_y);
                let got = conv2d_backward(&x, &w, &go, &g, true, true, true);
                assert_close("dx", &g, &got.input.unwrap(), want.input.as_ref().unwrap());
                assert_close(
                    "dw",
                    &g,
                    &got.weight.unwrap(),
                    want.weight.as_ref().unwrap(),
                );
            });
        }
    }

    #[test]
    fn empty_batch_and_channels() {
        let g = geom(0, 2, 4, 4, 3, (3, 3), (1, 1), (1, 1));
        assert!(conv2d_forward(&[], &vec![0.0; g.weight_len()], None, &g).is_empty());
        let gr = conv2d_backward(&[], &vec![0.5; g.weight_len()], &[], &g, true, true, true);
        assert_eq!(gr.weight.unwrap(), vec![0.0; g.weight_len()]);
        assert_eq!(gr.bias.unwrap(), vec![0.0; 3]);
        let g = geom(2, 2, 4, 4, 0, (3, 3), (1, 1), (1, 1));
        let x = vec![1.0; g.input_len()];
        assert!(conv2d_forward(&x, &[], None, &g).is_empty());
        let gr = conv2d_backward(&x, &[], &[], &g, true, true, true);
        assert_eq!(gr.input.unwrap(), vec![0.0; g.input_len()]);
    }

    #[test]
    #[should_panic(expected = "`weight` has 5 elements")]
    fn rejects_wrong_weight_length() {
        let g = geom(1, 1, 3, 3, 1, (2, 2), (1, 1), (0, 0));
        conv2d_forward(&[0.0; 9], &[0.0; 5], None, &g);
    }

    #[test]
    #[should_panic(expected = "exceeds padded input")]
    fn rejects_oversized_kernel() {
        let g = geom(1, 1, 3, 3, 1, (6, 2), (1, 1), (1, 0));
        conv2d_forward(&[0.0; 9], &[0.0; 12], None, &g);
    }
}
