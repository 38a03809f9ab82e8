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

/// Fills `col` (`[c_in*kh*kw, rows.len()*out_w]`, row stride `ld`) with the band
/// of output rows `rows` of one sample's im2col matrix; `x` is the sample
/// `[c_in, h, w]`. A stride wider than the band places the sample's columns
/// inside a wider matrix, as batching several samples into one GEMM does.
/// Padding bounds are computed once per kernel tap, so the inner loops are
/// plain copies (or strided gathers) with no per-element branches.
fn im2col(x: &[f32], g: &ConvGeometry, rows: Range<usize>, col: &mut [f32], ld: usize) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let (sh, sw) = g.stride;
    let (ph, pw) = g.padding;
    let (r0, nt) = (rows.start, rows.len() * ow);
    let mut taps = col.chunks_mut(ld).map(|tap| &mut tap[..nt]);
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

/// Adjoint of [`im2col`]: adds every entry of the band `col` (row stride `ld`)
/// back onto the input pixel it was read from. `dx` (`[c_in, h, w]`) must be initialised by
/// the caller. `col` is scratch: entries that map into the padding may be
/// zeroed.
fn col2im(col: &mut [f32], g: &ConvGeometry, rows: Range<usize>, dx: &mut [f32], ld: usize) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let (sh, sw) = g.stride;
    let (ph, pw) = g.padding;
    let (r0, nt) = (rows.start, rows.len() * ow);
    let mut taps = col.chunks_mut(ld).map(|tap| &mut tap[..nt]);
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

// ---------------------------------------------------------------------------
// Batching small samples.
//
// A sample with few output pixels makes a GEMM too narrow to pay for its
// fixed costs (packing W, the call and its blocking). Such samples are handled
// in groups of G: their im2col matrices side by side form one `[kdim, G·ohw]`
// matrix, and each pass is one GEMM over the group; outputs and output
// gradients change layout between the tensors' `[G, c_out, ohw]` and the
// GEMM's `[c_out, G·ohw]` by one copy. Every pass can run grouped (the
// `*_grouped` entry points); by default only the forwards do, see
// [`GROUP_COLS`] and [`BACKWARD_GROUP`].

/// GEMM width (columns, i.e. output pixels) that a group of small samples is
/// sized to reach in the forward passes; see [`group_size`]. Measured on the
/// `small` network's layers (docs/performance.md, "Batched small
/// convolutions"): 1024 (6-7 samples of 13x13 or 14x14) and 2048 were among
/// the best settings, the first layer's interval forward 1.2-1.4x faster than
/// one GEMM per sample and the other forwards within 10%; wider groups gained
/// nothing.
const GROUP_COLS: usize = 1024;

/// Samples per GEMM in the backward passes ([`conv2d_backward`],
/// [`conv2d_backward_input`], [`interval_conv2d_backward`]): one. On the
/// `small` network's layers no group size beat one GEMM per sample beyond the
/// noise, most were a few percent slower, and some wide groups of the second
/// layer (a group's im2col matrix several MB) 3-4x slower, so the backward
/// keeps one banded GEMM per sample; [`conv2d_backward_grouped`] and
/// [`interval_conv2d_backward_grouped`] take a group size explicitly.
const BACKWARD_GROUP: usize = 1;

/// How many samples the forward entry points ([`conv2d_forward`],
/// [`interval_conv2d_forward`]) fold into one GEMM, given `items` samples of
/// geometry `g`: enough for `GROUP_COLS` columns, but no more than one
/// worker's run of samples, and evened out so that the groups in a run have
/// (nearly) equal sizes. 1 (one GEMM per sample, banded) for samples wide
/// enough on their own.
pub fn group_size(g: &ConvGeometry, items: usize) -> usize {
    group_size_for_columns(g, items, GROUP_COLS)
}

/// [`group_size`]'s rule for a GEMM width of `cols` columns instead of
/// `GROUP_COLS` (the sweep that chose `GROUP_COLS` times several).
pub fn group_size_for_columns(g: &ConvGeometry, items: usize, cols: usize) -> usize {
    let ohw = g.out_h() * g.out_w();
    let target = cols.div_ceil(ohw.max(1));
    let per_run = SampleRuns::per_run(items);
    if target <= 1 || per_run <= 1 {
        return 1;
    }
    per_run.div_ceil(per_run.div_ceil(target))
}

/// `run` cut into consecutive groups of at most `group` samples, none
/// straddling sample `split` (where the weight changes).
fn groups(run: Range<usize>, group: usize, split: usize) -> impl Iterator<Item = Range<usize>> {
    assert!(group > 0, "conv2d: group size must be positive");
    let mut start = run.start;
    std::iter::from_fn(move || {
        (start < run.end).then(|| {
            let end = if start < split { split } else { run.end };
            let end = (start + group).min(end).min(run.end);
            let grp = start..end;
            start = end;
            grp
        })
    })
}

/// Per-worker scratch, grown on first use: the group's im2col matrix, its
/// input-gradient columns, and its outputs or output gradients as one GEMM
/// operand.
#[derive(Default)]
struct Scratch {
    col: Vec<f32>,
    dcol: Vec<f32>,
    outs: Vec<f32>,
}

/// The first `len` floats of `buf`, grown to fit. Callers overwrite what they
/// read.
fn prefix(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// Sample-major `[G, c, hw]` from the channel-major `[c, G·hw]` that a group's
/// GEMM produces (sample `j` in columns `j·hw..`).
fn to_samples(mat: &[f32], samples: &mut [f32], c: usize, hw: usize) {
    let ld = samples.len() / c;
    for (j, sample) in samples.chunks_exact_mut(c * hw).enumerate() {
        for (row, dst) in sample.chunks_exact_mut(hw).enumerate() {
            dst.copy_from_slice(&mat[row * ld + j * hw..][..hw]);
        }
    }
}

/// The inverse of [`to_samples`].
fn from_samples(samples: &[f32], mat: &mut [f32], c: usize, hw: usize) {
    let ld = samples.len() / c;
    for (j, sample) in samples.chunks_exact(c * hw).enumerate() {
        for (row, src) in sample.chunks_exact(hw).enumerate() {
            mat[row * ld + j * hw..][..hw].copy_from_slice(src);
        }
    }
}

/// The group's im2col matrices side by side: sample `j`'s in columns
/// `j·ohw..` of `col` (`[kdim, ld]`, `ld = G·ohw`).
fn im2col_group(x_grp: &[f32], g: &ConvGeometry, col: &mut [f32], ld: usize) {
    let ohw = g.out_h() * g.out_w();
    for (j, x_n) in x_grp.chunks_exact(g.c_in * g.h * g.w).enumerate() {
        im2col(x_n, g, 0..g.out_h(), &mut col[j * ohw..], ld);
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

/// A batch of `items` samples cut into contiguous runs: one per worker when the batch is wide
/// enough to parallelise over samples, else a single run whose GEMMs parallelise inside. Each
/// run is its range of samples and, when given a per-sample buffer (`dx`, or the output), its
/// slice of it. Contiguous runs keep a worker on one weight matrix in the interval stack.
struct SampleRuns<'a> {
    by_samples: bool,
    runs: Vec<(Range<usize>, Option<&'a mut [f32]>)>,
}

impl<'a> SampleRuns<'a> {
    /// Samples per run (the last may have fewer).
    fn per_run(items: usize) -> usize {
        let n_runs = if parallel_over_samples(items) {
            rayon::current_num_threads()
        } else {
            1
        };
        items.div_ceil(n_runs).max(1)
    }

    /// `buf`, when given, holds `per` floats per sample.
    fn new(items: usize, per: usize, buf: Option<&'a mut [f32]>) -> SampleRuns<'a> {
        let per_run = Self::per_run(items);
        let range = |i: usize| i * per_run..((i + 1) * per_run).min(items);
        let runs = match buf {
            Some(buf) => buf
                .chunks_mut(per_run * per)
                .enumerate()
                .map(|(i, chunk)| (range(i), Some(chunk)))
                .collect(),
            None => (0..items.div_ceil(per_run))
                .map(|i| (range(i), None))
                .collect(),
        };
        SampleRuns {
            by_samples: parallel_over_samples(items),
            runs,
        }
    }

    /// `run` over every run, in parallel when the batch is split over workers; `run` gets
    /// whether its GEMMs should parallelise themselves.
    fn map<T: Send>(
        self,
        run: impl Fn((Range<usize>, Option<&'a mut [f32]>), bool) -> T + Sync + Send,
    ) -> Vec<T> {
        if self.by_samples {
            self.runs.into_par_iter().map(|r| run(r, false)).collect()
        } else {
            self.runs.into_iter().map(|r| run(r, true)).collect()
        }
    }
}

// ---------------------------------------------------------------------------
// Forward.

/// One sample of a forward convolution: `out_n = weight · im2col(x_n) (+ bias)`, band by band.
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
        im2col(x_n, g, rows, col, nt);
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

/// Several samples' forward as one GEMM: `W · [col_1 … col_G]` (+ bias), then
/// back to per-sample outputs. The bias is laid down first and accumulated
/// onto, as in [`forward_sample`].
fn forward_batched(
    x_grp: &[f32],
    out_grp: &mut [f32],
    wmat: MatRef<'_>,
    bias: Option<&[f32]>,
    g: &ConvGeometry,
    s: &mut Scratch,
    parallel: bool,
) {
    let (ohw, kdim) = (g.out_h() * g.out_w(), g.col_rows());
    let ld = out_grp.len() / g.c_out;
    let col = prefix(&mut s.col, kdim * ld);
    im2col_group(x_grp, g, col, ld);
    let y = prefix(&mut s.outs, g.c_out * ld);
    if let Some(b) = bias {
        for (row, &bv) in y.chunks_exact_mut(ld).zip(b) {
            row.fill(bv);
        }
    }
    let rhs = MatRef::row_major(col, kdim, ld);
    matmul_into(y, ld, wmat, rhs, bias.is_some(), parallel);
    to_samples(y, out_grp, g.c_out, ohw);
}

/// The forward of a group of consecutive samples (`x_grp`, `out_grp`): one
/// sample alone by [`forward_sample`], several by [`forward_batched`].
fn forward_group(
    x_grp: &[f32],
    out_grp: &mut [f32],
    wmat: MatRef<'_>,
    bias: Option<&[f32]>,
    g: &ConvGeometry,
    s: &mut Scratch,
    parallel: bool,
) {
    if out_grp.len() == g.c_out * g.out_h() * g.out_w() {
        let col = prefix(&mut s.col, col_buffer_len(g));
        forward_sample(x_grp, out_grp, wmat, bias, g, col, parallel);
    } else {
        forward_batched(x_grp, out_grp, wmat, bias, g, s, parallel);
    }
}

/// The forward over a stack of `items` samples into `out`: contiguous runs per
/// worker, each cut into groups of at most `group` samples that do not straddle
/// sample `split`; `weights(s)` is the weight and bias of sample `s`.
fn forward_runs<'w>(
    x: &[f32],
    out: &mut [f32],
    g: &ConvGeometry,
    (items, split, group): (usize, usize, usize),
    weights: impl Fn(usize) -> (MatRef<'w>, Option<&'w [f32]>) + Sync,
) {
    if out.is_empty() {
        return;
    }
    let (in_per, out_per) = (g.c_in * g.h * g.w, g.c_out * g.out_h() * g.out_w());
    let runs = SampleRuns::new(items, out_per, Some(out));
    runs.map(|(run, out_run), parallel| {
        let out_run = out_run.expect("forward runs carry their outputs");
        let mut s = Scratch::default();
        for grp in groups(run.clone(), group, split) {
            let (wmat, bias) = weights(grp.start);
            let local = (grp.start - run.start) * out_per..(grp.end - run.start) * out_per;
            let x_grp = &x[grp.start * in_per..grp.end * in_per];
            forward_group(x_grp, &mut out_run[local], wmat, bias, g, &mut s, parallel);
        }
    });
}

/// x: `[n, c_in, h, w]`, weight: `[c_out, c_in, kh, kw]`, bias: `[c_out]`;
/// returns `[n, c_out, out_h, out_w]`.
pub fn conv2d_forward(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeometry,
) -> Vec<f32> {
    conv2d_forward_grouped(x, weight, bias, g, group_size(g, g.n))
}

/// [`conv2d_forward`] with at most `group` samples per GEMM instead of the
/// [`group_size`] rule (1: one banded GEMM per sample). Groups never span two
/// workers' runs, so a group may be smaller.
pub fn conv2d_forward_grouped(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeometry,
    group: usize,
) -> Vec<f32> {
    g.validate();
    assert_len("x", x.len(), g.input_len());
    assert_len("weight", weight.len(), g.weight_len());
    if let Some(b) = bias {
        assert_len("bias", b.len(), g.c_out);
    }
    let mut out = vec![0.0f32; g.output_len()];
    let wmat = MatRef::row_major(weight, g.c_out, g.col_rows());
    forward_runs(x, &mut out, g, (g.n, g.n, group), |_| (wmat, bias));
    out
}

// ---------------------------------------------------------------------------
// Backward.

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

/// Which gradients a backward computes.
#[derive(Clone, Copy)]
struct Needs {
    input: bool,
    weight: bool,
    bias: bool,
}

/// One sample of a convolution's backward, band by band: adds `g_n · im2col(x_n)ᵀ` to `dw` and
/// writes `col2im(wt · g_n)` into `dx_n`, each only when given (`wt` is the transposed weight
/// the input gradient goes through: W, or |W| for radii).
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
            im2col(x_n, g, rows.clone(), col, nt);
            let cols = MatRef::row_major(col, kdim, nt);
            matmul_into(dw, kdim, g_band, cols.t(), true, parallel);
        }
        if let Some(dx_n) = dx_n.as_deref_mut() {
            let dcol = &mut dcol[..kdim * nt];
            matmul_into(dcol, nt, wt, g_band, false, parallel);
            col2im(dcol, g, rows, dx_n, nt);
        }
    }
}

/// Several samples' backward with one GEMM per gradient: with `G = [g_1 … g_G]`
/// (`[c_out, G·ohw]`), `dw += G · [col_1 … col_G]ᵀ` and `[dcol_1 … dcol_G] = wt · G`,
/// each `dcol_j` scattered into `dx_j` by col2im.
#[allow(clippy::too_many_arguments)]
fn backward_batched(
    x_grp: &[f32],
    gout_grp: &[f32],
    wt: MatRef<'_>,
    g: &ConvGeometry,
    dw: Option<&mut [f32]>,
    dx_grp: Option<&mut [f32]>,
    s: &mut Scratch,
    parallel: bool,
) {
    let (oh, ohw, kdim) = (g.out_h(), g.out_h() * g.out_w(), g.col_rows());
    let ld = gout_grp.len() / g.c_out;
    let gcat = prefix(&mut s.outs, g.c_out * ld);
    from_samples(gout_grp, gcat, g.c_out, ohw);
    let gcat = MatRef::row_major(gcat, g.c_out, ld);
    if let Some(dw) = dw {
        let col = prefix(&mut s.col, kdim * ld);
        im2col_group(x_grp, g, col, ld);
        let cols = MatRef::row_major(col, kdim, ld);
        matmul_into(dw, kdim, gcat, cols.t(), true, parallel);
    }
    if let Some(dx_grp) = dx_grp {
        let dcol = prefix(&mut s.dcol, kdim * ld);
        matmul_into(dcol, ld, wt, gcat, false, parallel);
        for (j, dx_n) in dx_grp.chunks_exact_mut(g.c_in * g.h * g.w).enumerate() {
            col2im(&mut dcol[j * ohw..], g, 0..oh, dx_n, ld);
        }
    }
}

/// The backward of a group of consecutive samples: one sample alone by
/// [`backward_sample`], several by [`backward_batched`]. `x_grp` may be empty
/// when no weight gradient is asked for.
#[allow(clippy::too_many_arguments)]
fn backward_group(
    x_grp: &[f32],
    gout_grp: &[f32],
    wt: MatRef<'_>,
    g: &ConvGeometry,
    dw: Option<&mut [f32]>,
    dx_grp: Option<&mut [f32]>,
    s: &mut Scratch,
    parallel: bool,
) {
    let ohw = g.out_h() * g.out_w();
    if gout_grp.len() != g.c_out * ohw {
        backward_batched(x_grp, gout_grp, wt, g, dw, dx_grp, s, parallel);
        return;
    }
    let len = col_buffer_len(g);
    let col = prefix(&mut s.col, if dw.is_some() { len } else { 0 });
    let dcol = prefix(&mut s.dcol, if dx_grp.is_some() { len } else { 0 });
    let g_mat = MatRef::row_major(gout_grp, g.c_out, ohw);
    backward_sample(x_grp, g_mat, wt, g, dw, dx_grp, col, dcol, parallel);
}

/// Per-worker partial sums of the parameter gradients: `weight[h]` over the
/// worker's samples in half `h` of the stack (before / from the split), `bias`
/// over the first half. Only the halves a worker touches are allocated.
struct Partial {
    weight: [Vec<f32>; 2],
    bias: Vec<f32>,
}

/// `acc += part` element-wise (an untouched, empty `part` adds nothing).
fn add_into(acc: &mut [f32], part: &[f32]) {
    for (a, b) in acc.iter_mut().zip(part) {
        *a += *b;
    }
}

/// The backward over a stack of `items` samples whose weight changes at sample
/// `split` (`wt[h]`: the transposed weight of half `h`), given `grad_out`:
/// contiguous runs of samples per worker, each with its own parameter
/// accumulators and slice of dx, cut into groups of at most `group` samples.
/// Returns dx (empty unless asked for) and the summed [`Partial`]s (each part
/// empty unless asked for; `weight[1]` also unless the stack has a second half).
fn backward_runs(
    x: &[f32],
    grad_out: &[f32],
    wt: [MatRef<'_>; 2],
    g: &ConvGeometry,
    (items, split, group): (usize, usize, usize),
    need: Needs,
) -> (Vec<f32>, Partial) {
    let (in_per, ohw) = (g.c_in * g.h * g.w, g.out_h() * g.out_w());
    let out_per = g.c_out * ohw;
    let dw_len = if need.weight { g.weight_len() } else { 0 };
    let mut dx = vec![0.0f32; if need.input { items * in_per } else { 0 }];
    let mut total = Partial {
        weight: [
            vec![0.0; dw_len],
            vec![0.0; if split < items { dw_len } else { 0 }],
        ],
        bias: vec![0.0; if need.bias { g.c_out } else { 0 }],
    };
    if items == 0 || g.c_out == 0 {
        // No output, so every gradient is zero.
        return (dx, total);
    }
    let runs = SampleRuns::new(items, in_per, need.input.then_some(&mut dx[..]));
    let run = |(run, mut dx_run): (Range<usize>, Option<&mut [f32]>), parallel: bool| {
        let halves = [run.start < split, run.end > split];
        let mut part = Partial {
            weight: halves.map(|h| vec![0.0f32; if h { dw_len } else { 0 }]),
            bias: vec![0.0f32; if halves[0] && need.bias { g.c_out } else { 0 }],
        };
        let mut s = Scratch::default();
        for grp in groups(run.clone(), group, split) {
            let h = usize::from(grp.start >= split);
            let gout_grp = &grad_out[grp.start * out_per..grp.end * out_per];
            if h == 0 && need.bias {
                for (i, row) in gout_grp.chunks_exact(ohw).enumerate() {
                    part.bias[i % g.c_out] += sum(row);
                }
            }
            let x_grp = if need.weight {
                &x[grp.start * in_per..grp.end * in_per]
            } else {
                &[]
            };
            let local = (grp.start - run.start) * in_per..(grp.end - run.start) * in_per;
            let dx_grp = dx_run.as_deref_mut().map(|d| &mut d[local]);
            let dw = need.weight.then_some(&mut part.weight[h][..]);
            backward_group(x_grp, gout_grp, wt[h], g, dw, dx_grp, &mut s, parallel);
        }
        part
    };
    for p in runs.map(run) {
        add_into(&mut total.weight[0], &p.weight[0]);
        add_into(&mut total.weight[1], &p.weight[1]);
        add_into(&mut total.bias, &p.bias);
    }
    (dx, total)
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
    let group = BACKWARD_GROUP;
    conv2d_backward_grouped(
        x,
        weight,
        grad_out,
        g,
        [need_input, need_weight, need_bias],
        group,
    )
}

/// [`conv2d_backward`] with at most `group` samples per GEMM (see
/// [`conv2d_forward_grouped`]); `need` is (input, weight, bias).
pub fn conv2d_backward_grouped(
    x: &[f32],
    weight: &[f32],
    grad_out: &[f32],
    g: &ConvGeometry,
    need: [bool; 3],
    group: usize,
) -> ConvGrads {
    assert_len("x", x.len(), g.input_len());
    let [input, weight_, bias] = need;
    backward_with(
        Some(x),
        weight,
        grad_out,
        g,
        Needs {
            input,
            weight: weight_,
            bias,
        },
        group,
    )
}

/// The adjoint of the convolution applied to `grad_out` `[n, c_out, out_h, out_w]`: the input
/// gradient alone, `[n, c_in, h, w]` (a transposed convolution), without an input tensor.
pub fn conv2d_backward_input(weight: &[f32], grad_out: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let need = Needs {
        input: true,
        weight: false,
        bias: false,
    };
    let grads = backward_with(None, weight, grad_out, g, need, BACKWARD_GROUP);
    grads.input.expect("the input gradient was asked for")
}

/// `conv2d_backward` with an optional input (needed only for the weight gradient).
fn backward_with(
    x: Option<&[f32]>,
    weight: &[f32],
    grad_out: &[f32],
    g: &ConvGeometry,
    need: Needs,
    group: usize,
) -> ConvGrads {
    g.validate();
    assert!(
        x.is_some() || !need.weight,
        "the weight gradient needs the input"
    );
    assert_len("weight", weight.len(), g.weight_len());
    assert_len("grad_out", grad_out.len(), g.output_len());
    let wt = MatRef::row_major(weight, g.c_out, g.col_rows()).t();
    let stack = (g.n, g.n, group);
    let (dx, sums) = backward_runs(x.unwrap_or(&[]), grad_out, [wt, wt], g, stack, need);
    let [dw, _] = sums.weight;
    ConvGrads {
        input: need.input.then_some(dx),
        weight: need.weight.then_some(dw),
        bias: need.bias.then_some(sums.bias),
    }
}

// ---------------------------------------------------------------------------
// Interval convolution in centre/radius form.
//
// Bound propagation through a convolution computes `c' = W * c + b` and
// `r' = |W| * r` on the two halves of a stacked box `[2, n, c_in, h, w]`. The
// kernels below treat the stack as `2n` samples of one geometry, each with its
// weight (`W` and the bias for centres, `|W|` for radii), in a single parallel
// loop that reads and writes the stacked tensors in place; groups of batched
// samples never mix the halves.
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
    let group = group_size(g, 2 * g.n);
    interval_conv2d_forward_grouped(x, weight, abs_weight, bias, g, group)
}

/// [`interval_conv2d_forward`] with at most `group` samples per GEMM (see
/// [`conv2d_forward_grouped`]).
pub fn interval_conv2d_forward_grouped(
    x: &[f32],
    weight: &[f32],
    abs_weight: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeometry,
    group: usize,
) -> Vec<f32> {
    g.validate();
    assert_len("x", x.len(), 2 * g.input_len());
    assert_len("weight", weight.len(), g.weight_len());
    assert_len("abs_weight", abs_weight.len(), g.weight_len());
    if let Some(b) = bias {
        assert_len("bias", b.len(), g.c_out);
    }
    let mut out = vec![0.0f32; 2 * g.output_len()];
    let kdim = g.col_rows();
    let (w_c, w_r) = (
        MatRef::row_major(weight, g.c_out, kdim),
        MatRef::row_major(abs_weight, g.c_out, kdim),
    );
    // Sample s of the stack: a centre (W and bias) for s < n, else a radius (|W|).
    let weights = |s: usize| if s < g.n { (w_c, bias) } else { (w_r, None) };
    forward_runs(x, &mut out, g, (2 * g.n, g.n, group), weights);
    out
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
    let need = [need_input, need_weight, need_bias];
    let group = BACKWARD_GROUP;
    interval_conv2d_backward_grouped(x, weight, abs_weight, grad_out, g, need, group)
}

/// [`interval_conv2d_backward`] with at most `group` samples per GEMM (see
/// [`conv2d_forward_grouped`]); `need` is (input, weight, bias).
pub fn interval_conv2d_backward_grouped(
    x: &[f32],
    weight: &[f32],
    abs_weight: &[f32],
    grad_out: &[f32],
    g: &ConvGeometry,
    need: [bool; 3],
    group: usize,
) -> ConvGrads {
    g.validate();
    assert_len("x", x.len(), 2 * g.input_len());
    assert_len("weight", weight.len(), g.weight_len());
    assert_len("abs_weight", abs_weight.len(), g.weight_len());
    assert_len("grad_out", grad_out.len(), 2 * g.output_len());
    let [input, weight_, bias] = need;
    let need = Needs {
        input,
        weight: weight_,
        bias,
    };
    let kdim = g.col_rows();
    let wt = [
        MatRef::row_major(weight, g.c_out, kdim).t(),
        MatRef::row_major(abs_weight, g.c_out, kdim).t(),
    ];
    let stack = (2 * g.n, g.n, group);
    let (dx, sums) = backward_runs(x, grad_out, wt, g, stack, need);
    let [mut dw, dabs] = sums.weight;
    // The radius path multiplies by |W|: its gradient enters W through sign(W).
    for ((d, a), w) in dw.iter_mut().zip(&dabs).zip(weight) {
        if *w > 0.0 {
            *d += *a;
        } else if *w < 0.0 {
            *d -= *a;
        }
    }
    ConvGrads {
        input: need.input.then_some(dx),
        weight: need.weight.then_some(dw),
        bias: need.bias.then_some(sums.bias),
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

    // -----------------------------------------------------------------------
    // Grouped (several samples per GEMM) against per-sample (G = 1).

    /// Grouped against per-sample results, relative to the per-sample result's
    /// largest magnitude. Both compute the same sums of the same products; only
    /// the order of accumulation differs (the weight gradient sums over `G·ohw`
    /// columns in one GEMM rather than `ohw` per sample, and the GEMM blocks a
    /// wider matrix differently), so they differ by f32 rounding: about
    /// `sqrt(K)·2⁻²⁴` of the magnitude for sums of `K` terms, under 3e-6 for
    /// the `K ≤ 2·10⁴` here. 1e-5 leaves room for that, while a term missed,
    /// doubled or taken from the wrong sample or weight moves a result by far
    /// more.
    fn assert_same(what: &str, g: &ConvGeometry, group: usize, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: length, G={group}, {g:?}");
        let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(want)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= 1e-5 * scale,
            "{what}: G={group}: max error {err} vs magnitude {scale}, {g:?}"
        );
    }

    /// Batches that G = 2, 3 and 5 do not divide (and one that 5 does), over
    /// strides, paddings and kernels: the `small` network's two layers,
    /// pointwise kernels (no im2col per sample), padding wider than the kernel
    /// reach, a single output pixel, and rows wide enough to band at G = 1.
    fn grouped_shapes() -> Vec<ConvGeometry> {
        vec![
            geom(7, 3, 7, 9, 4, (3, 3), (1, 1), (1, 1)),
            geom(7, 2, 11, 10, 3, (3, 3), (2, 2), (0, 0)),
            geom(5, 1, 28, 28, 16, (4, 4), (2, 2), (1, 1)),
            geom(7, 16, 14, 14, 32, (4, 4), (1, 1), (1, 1)),
            geom(7, 6, 5, 7, 3, (1, 1), (1, 1), (0, 0)),
            geom(5, 4, 9, 9, 2, (1, 1), (2, 2), (1, 1)),
            geom(7, 5, 8, 13, 6, (2, 5), (1, 2), (0, 2)),
            geom(4, 2, 3, 4, 3, (2, 2), (1, 1), (2, 2)),
            geom(7, 2, 3, 3, 2, (5, 5), (1, 1), (1, 1)),
            geom(6, 16, 33, 31, 4, (3, 3), (1, 1), (1, 1)),
        ]
    }

    /// Group sizes to try on `items` samples: 2, 3, 5 and all of them.
    fn group_sizes(items: usize) -> [usize; 4] {
        [2, 3, 5, items]
    }

    /// `f` in pools of 1 thread (one run, GEMMs threaded inside) and 3 threads
    /// (runs of samples per worker, groups cut at run edges, and in the
    /// interval stack a run straddling the centre/radius split).
    fn in_pools(f: impl Fn() + Send + Sync) {
        for threads in [1, 3] {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(&f);
        }
    }

    #[test]
    fn groups_cover_the_run_without_crossing_the_split() {
        for (run, group, split) in [
            (0..14, 3, 7),
            (5..10, 2, 7),
            (5..10, 5, 7),
            (0..7, 5, 7),
            (8..14, 4, 7),
            (0..1, 1, 0),
            (3..3, 2, 1),
        ] {
            let grps: Vec<_> = groups(run.clone(), group, split).collect();
            let mut next = run.start;
            for grp in &grps {
                assert_eq!(grp.start, next, "{run:?} {group} {split}: {grps:?}");
                assert!(!grp.is_empty() && grp.len() <= group, "{grps:?}");
                assert!(grp.end <= split || grp.start >= split, "{grps:?}");
                next = grp.end;
            }
            assert_eq!(next, run.end, "{run:?} {group} {split}: {grps:?}");
        }
        // A run crossing the split restarts its groups there.
        let grps: Vec<_> = groups(5..12, 3, 7).collect();
        assert_eq!(grps, vec![5..7, 7..10, 10..12]);
    }

    #[test]
    fn group_size_rule() {
        in_pools(|| {
            // Wide samples: one GEMM per sample.
            let wide = geom(64, 3, 40, 40, 8, (3, 3), (1, 1), (1, 1));
            assert_eq!(group_size(&wide, 64), 1);
            for items in [1, 2, 7, 32, 64, 128, 256] {
                for g in grouped_shapes() {
                    let group = group_size(&g, items);
                    let ohw = g.out_h() * g.out_w();
                    assert!(group >= 1 && group <= SampleRuns::per_run(items));
                    // Never much past GROUP_COLS columns.
                    assert!(
                        group == 1 || (group - 1) * ohw < GROUP_COLS,
                        "{group} {g:?}"
                    );
                }
            }
        });
    }

    #[test]
    fn grouped_forward_matches_per_sample() {
        let mut rng = StdRng::seed_from_u64(21);
        for g in grouped_shapes() {
            let x = random(&mut rng, g.input_len());
            let w = random(&mut rng, g.weight_len());
            let b = random(&mut rng, g.c_out);
            for bias in [None, Some(&b[..])] {
                let want = reference::conv2d_forward(&x, &w, bias, &g);
                let one = conv2d_forward_grouped(&x, &w, bias, &g, 1);
                assert_close("forward G=1", &g, &one, &want);
                in_pools(|| {
                    for group in group_sizes(g.n) {
                        let got = conv2d_forward_grouped(&x, &w, bias, &g, group);
                        assert_same("forward", &g, group, &got, &one);
                    }
                    assert_same(
                        "forward (rule)",
                        &g,
                        0,
                        &conv2d_forward(&x, &w, bias, &g),
                        &one,
                    );
                });
            }
        }
    }

    #[test]
    fn grouped_backward_matches_per_sample() {
        let mut rng = StdRng::seed_from_u64(22);
        for g in grouped_shapes() {
            let x = random(&mut rng, g.input_len());
            let w = random(&mut rng, g.weight_len());
            let go = random(&mut rng, g.output_len());
            let want = reference::conv2d_backward(&x, &w, &go, &g, true, true, true);
            let one = conv2d_backward_grouped(&x, &w, &go, &g, [true; 3], 1);
            let (dx1, dw1, db1) = (
                one.input.as_ref().unwrap(),
                one.weight.as_ref().unwrap(),
                one.bias.as_ref().unwrap(),
            );
            assert_close("dx G=1", &g, dx1, want.input.as_ref().unwrap());
            assert_close("dw G=1", &g, dw1, want.weight.as_ref().unwrap());
            assert_close("db G=1", &g, db1, want.bias.as_ref().unwrap());
            in_pools(|| {
                for group in group_sizes(g.n) {
                    let all = conv2d_backward_grouped(&x, &w, &go, &g, [true; 3], group);
                    assert_same("dx", &g, group, all.input.as_ref().unwrap(), dx1);
                    assert_same("dw", &g, group, all.weight.as_ref().unwrap(), dw1);
                    assert_same("db", &g, group, all.bias.as_ref().unwrap(), db1);
                    // Each gradient alone (the input gradient alone reads no input).
                    let dx = conv2d_backward_grouped(&x, &w, &go, &g, [true, false, false], group);
                    assert!(dx.weight.is_none() && dx.bias.is_none());
                    assert_same("dx only", &g, group, &dx.input.unwrap(), dx1);
                    let dw = conv2d_backward_grouped(&x, &w, &go, &g, [false, true, false], group);
                    assert!(dw.input.is_none() && dw.bias.is_none());
                    assert_same("dw only", &g, group, &dw.weight.unwrap(), dw1);
                    let db = conv2d_backward_grouped(&x, &w, &go, &g, [false, false, true], group);
                    assert_same("db only", &g, group, &db.bias.unwrap(), db1);
                }
                let rule = conv2d_backward(&x, &w, &go, &g, true, true, true);
                assert_same("dx (rule)", &g, 0, &rule.input.unwrap(), dx1);
                assert_same("dw (rule)", &g, 0, &rule.weight.unwrap(), dw1);
                assert_same("db (rule)", &g, 0, &rule.bias.unwrap(), db1);
                let adj = conv2d_backward_input(&w, &go, &g);
                assert_same("backward_input (rule)", &g, 0, &adj, dx1);
            });
        }
    }

    /// A stacked box `[2, n, c, h, w]`: random centres, then radii in [0, 1).
    fn random_box(rng: &mut StdRng, g: &ConvGeometry) -> Vec<f32> {
        let mut x = random(rng, g.input_len());
        x.extend((0..g.input_len()).map(|_| rng.random::<f32>()));
        x
    }

    /// Lower and upper ends `c ∓ r` of a stacked centre/radius tensor.
    fn ends(stack: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (c, r) = stack.split_at(stack.len() / 2);
        let lo = c.iter().zip(r).map(|(c, r)| c - r).collect();
        let hi = c.iter().zip(r).map(|(c, r)| c + r).collect();
        (lo, hi)
    }

    /// The interval stack holds `2n` samples whose weight changes at sample
    /// `n` (W and the bias for centres, |W| for radii); groups must not mix
    /// the halves. G = 2n would span both if they did.
    #[test]
    fn grouped_interval_forward_matches_per_sample() {
        let mut rng = StdRng::seed_from_u64(23);
        for g in grouped_shapes() {
            let x = random_box(&mut rng, &g);
            let w = random(&mut rng, g.weight_len());
            let aw = abs_weight(&w);
            let b = random(&mut rng, g.c_out);
            for bias in [None, Some(&b[..])] {
                let one = interval_conv2d_forward_grouped(&x, &w, &aw, bias, &g, 1);
                // G = 1 is the plain convolution of each half.
                let (xc, xr) = x.split_at(g.input_len());
                let (oc, or) = one.split_at(g.output_len());
                let want_c = reference::conv2d_forward(xc, &w, bias, &g);
                assert_close("centre G=1", &g, oc, &want_c);
                assert_close(
                    "radius G=1",
                    &g,
                    or,
                    &reference::conv2d_forward(xr, &aw, None, &g),
                );
                let (lo1, hi1) = ends(&one);
                in_pools(|| {
                    for group in group_sizes(g.n).into_iter().chain([2 * g.n]) {
                        let got = interval_conv2d_forward_grouped(&x, &w, &aw, bias, &g, group);
                        let (lo, hi) = ends(&got);
                        assert_same("interval lower", &g, group, &lo, &lo1);
                        assert_same("interval upper", &g, group, &hi, &hi1);
                        let (c, r) = got.split_at(g.output_len());
                        assert_same("interval centre", &g, group, c, oc);
                        assert_same("interval radius", &g, group, r, or);
                    }
                    let rule = interval_conv2d_forward(&x, &w, &aw, bias, &g);
                    assert_same("interval (rule)", &g, 0, &rule, &one);
                });
            }
        }
    }

    #[test]
    fn grouped_interval_backward_matches_per_sample() {
        let mut rng = StdRng::seed_from_u64(24);
        for g in grouped_shapes() {
            let x = random_box(&mut rng, &g);
            let w = random(&mut rng, g.weight_len());
            let aw = abs_weight(&w);
            let go = random(&mut rng, 2 * g.output_len());
            let one = interval_conv2d_backward_grouped(&x, &w, &aw, &go, &g, [true; 3], 1);
            let (dx1, dw1, db1) = (
                one.input.as_ref().unwrap(),
                one.weight.as_ref().unwrap(),
                one.bias.as_ref().unwrap(),
            );
            // G = 1 against the plain backward of each half: the centre path
            // through W (and the bias), the radius path through |W|, whose
            // weight gradient enters W through sign(W).
            let (xc, xr) = x.split_at(g.input_len());
            let (gc, gr) = go.split_at(g.output_len());
            let c = reference::conv2d_backward(xc, &w, gc, &g, true, true, true);
            let r = reference::conv2d_backward(xr, &aw, gr, &g, true, true, false);
            let mut want_dx = c.input.unwrap();
            want_dx.extend(r.input.unwrap());
            let want_dw: Vec<f32> = (c.weight.unwrap().iter())
                .zip(r.weight.unwrap())
                .zip(&w)
                .map(|((dc, dr), w)| dc + w.signum() * dr)
                .collect();
            assert_close("interval dx G=1", &g, dx1, &want_dx);
            assert_close("interval dw G=1", &g, dw1, &want_dw);
            assert_close("interval db G=1", &g, db1, &c.bias.unwrap());
            let (dc1, dr1) = dx1.split_at(g.input_len());
            in_pools(|| {
                for group in group_sizes(g.n).into_iter().chain([2 * g.n]) {
                    let all =
                        interval_conv2d_backward_grouped(&x, &w, &aw, &go, &g, [true; 3], group);
                    // The gradients reaching the centres and the radii.
                    let (dc, dr) = all.input.as_ref().unwrap().split_at(g.input_len());
                    assert_same("interval dx centre", &g, group, dc, dc1);
                    assert_same("interval dx radius", &g, group, dr, dr1);
                    assert_same("interval dw", &g, group, all.weight.as_ref().unwrap(), dw1);
                    assert_same("interval db", &g, group, all.bias.as_ref().unwrap(), db1);
                    for need in [
                        [true, false, false],
                        [false, true, false],
                        [false, false, true],
                    ] {
                        let part =
                            interval_conv2d_backward_grouped(&x, &w, &aw, &go, &g, need, group);
                        let [input, weight, bias] = need;
                        assert_eq!(part.input.is_some(), input);
                        assert_eq!(part.weight.is_some(), weight);
                        assert_eq!(part.bias.is_some(), bias);
                        let pairs = [(part.input, dx1), (part.weight, dw1), (part.bias, db1)];
                        for (got, want) in pairs {
                            if let Some(got) = got {
                                assert_same("interval single gradient", &g, group, &got, want);
                            }
                        }
                    }
                }
                let rule = interval_conv2d_backward(&x, &w, &aw, &go, &g, true, true, true);
                assert_same("interval dx (rule)", &g, 0, &rule.input.unwrap(), dx1);
                assert_same("interval dw (rule)", &g, 0, &rule.weight.unwrap(), dw1);
                assert_same("interval db (rule)", &g, 0, &rule.bias.unwrap(), db1);
            });
        }
    }

    /// Central differences of the grouped forward against the grouped backward,
    /// along random directions in x, in the weight and in the bias, one at a
    /// time. The convolution is linear in each, so a central difference is the
    /// directional derivative exactly, up to f32 rounding of the forward
    /// (relative 1e-6 or so of the loss): no step-size error to allow for.
    #[test]
    fn grouped_backward_matches_finite_differences() {
        let mut rng = StdRng::seed_from_u64(25);
        let dot = |a: &[f32], b: &[f32]| -> f64 {
            a.iter()
                .zip(b)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum()
        };
        let shift = |p: &[f32], v: &[f32], t: f32| -> Vec<f32> {
            p.iter().zip(v).map(|(p, v)| p + t * v).collect()
        };
        for g in [
            geom(7, 16, 14, 14, 32, (4, 4), (1, 1), (1, 1)),
            geom(7, 3, 7, 9, 4, (3, 3), (2, 1), (1, 2)),
        ] {
            let x = random(&mut rng, g.input_len());
            let w = random(&mut rng, g.weight_len());
            let b = random(&mut rng, g.c_out);
            let go = random(&mut rng, g.output_len());
            let v = [
                random(&mut rng, x.len()),
                random(&mut rng, w.len()),
                random(&mut rng, b.len()),
            ];
            for group in [3, g.n] {
                let gr = conv2d_backward_grouped(&x, &w, &go, &g, [true; 3], group);
                let grads = [gr.input.unwrap(), gr.weight.unwrap(), gr.bias.unwrap()];
                for (k, what) in ["x", "weight", "bias"].into_iter().enumerate() {
                    // ⟨conv(x, w, b), go⟩ with parameter k moved by t·v[k].
                    let loss = |t: f32| {
                        let mut p = [x.clone(), w.clone(), b.clone()];
                        p[k] = shift(&p[k], &v[k], t);
                        dot(
                            &conv2d_forward_grouped(&p[0], &p[1], Some(&p[2]), &g, group),
                            &go,
                        )
                    };
                    let fd = loss(0.5) - loss(-0.5);
                    let analytic = dot(&grads[k], &v[k]);
                    assert!(
                        (fd - analytic).abs() <= 1e-4 * analytic.abs().max(1.0),
                        "G={group}, d/d{what}: finite difference {fd} vs gradient {analytic}, {g:?}"
                    );
                }
            }
        }
    }
}
