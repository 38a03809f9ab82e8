//! Convolution and matrix multiplication on the GPU: safe launch wrappers for `ops/conv/conv.cu`
//! and `ops/matmul/matmul.cu`, on [`DeviceBuffer`]s of f32, NCHW, weights `[O, C, KH, KW]`.
//!
//! Every kernel is one tiled SGEMM: 64 × 64, 128 × 64, 64 × 128 or 128 × 128 output tiles per
//! block of 256 threads, and 16 × 256 for the plain input gradient (an entry point per shape,
//! picked per launch by [`Tiles`]), each thread 1, 2 or 4 micro-tiles of 4 × 4 in registers, K
//! in steps of 16 through double-buffered shared memory (the next tile's global loads overlap
//! the current tile's FMAs). The convolutions are *implicit* GEMMs: the loaders gather the
//! im2col matrix tile by tile from the tensor, with zeros for padding, so no `C·KH·KW × N·OH·OW`
//! buffer is ever written or read.
//!
//! | wrapper | GEMM (M × N, inner K) |
//! |---|---|
//! | [`conv2d_forward`] | y = W · cols(x) + b: O × N·OH·OW, K = C·KH·KW |
//! | [`interval_conv2d_forward`] | the same on centres (W, b) and radii (\|W\|) in one kernel |
//! | [`conv2d_backward_weight`] | dW = gY · cols(x)ᵀ: O × C·KH·KW, K = N·OH·OW, split over K |
//! | [`interval_conv2d_backward_weight`] | gC · cols(c)ᵀ + sign(W) ⊙ gR · cols(r)ᵀ, one kernel |
//! | [`conv2d_backward_input`] | dX = Wᵀ ⋆ gY gathered per stride phase: C × N·H·W |
//! | [`interval_conv2d_backward_input`] | dC with W and dR with \|W\|, one kernel |
//! | [`conv2d_backward_bias`] | per-channel sums (`reduce::launch::channel_sum`) |
//!
//! Why these shapes: the weight gradient has few output tiles and a very long K (every pixel
//! of the batch), so it is split over K into partial sums added in a fixed order (no atomics:
//! deterministic). The input gradient is a gather, not a scatter: for stride s the input
//! pixels fall into s_h·s_w phases in which a fixed subset of the taps reaches the output
//! exactly, so each phase is a dense GEMM with no structural zeros, every dX element is written
//! once, and no zero fill or atomics are needed. The interval kernels read each tile of the
//! weight once for both halves (|W| on the fly) and the centre and radius tiles with the same
//! gathered indices.
//!
//! Shapes are checked and errors returned (never a panic); batch 0 or 0 output channels give
//! empty or zero results without a launch. Kernels index with 32-bit integers, so every tensor
//! must hold fewer than [`MAX_ELEMENTS`] values. The interval functions come in two layouts:
//! separate centre and radius buffers, and `_stacked` ones on `[2, N, …]` buffers (centres
//! then radii), the layout of `Tensor::interval_conv2d`.

use crate::ops::conv::cpu::ConvGeometry;
use crate::ops::conv::Conv2dParams;
use crate::ops::reduce::launch::{channel_sum, channel_sum_view};
use crate::runtime::cuda::buffer::DeviceBuffer;
use crate::runtime::cuda::context::{cuda, grid_1d, CudaBackend};
use crate::runtime::cuda::launch::check_len;
use crate::runtime::cuda::tiles::{
    config, multiprocessors, pick, view, view_mut, KernelShapes, Tiles, GRID_YZ, MAX_ELEMENTS,
    MIN_TILE, TILE, TILE_K,
};
use crate::{Error, Result};
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, LaunchConfig};

/// The GEMM-shaped kernels, by tile shape (see [`Tiles`]; in the order of [`Tiles::ALL`]).
const CONV2D_FWD: KernelShapes = KernelShapes::four(
    "conv",
    [
        "conv2d_fwd_128x128",
        "conv2d_fwd_128x64",
        "conv2d_fwd_64x128",
        "conv2d_fwd",
    ],
);
const INTERVAL_CONV2D_FWD: KernelShapes = KernelShapes {
    module: "conv",
    names: [
        None,
        Some("interval_conv2d_fwd_128x64"),
        Some("interval_conv2d_fwd_64x128"),
        Some("interval_conv2d_fwd"),
        None,
    ],
};
const CONV2D_BWD_WEIGHT: KernelShapes = KernelShapes::four(
    "conv",
    [
        "conv2d_bwd_weight_128x128",
        "conv2d_bwd_weight_128x64",
        "conv2d_bwd_weight_64x128",
        "conv2d_bwd_weight",
    ],
);
const INTERVAL_CONV2D_BWD_WEIGHT: KernelShapes = KernelShapes {
    module: "conv",
    names: [None, None, None, Some("interval_conv2d_bwd_weight"), None],
};
const CONV2D_BWD_INPUT: KernelShapes = KernelShapes {
    module: "conv",
    names: [
        Some("conv2d_bwd_input_128x128"),
        Some("conv2d_bwd_input_128x64"),
        Some("conv2d_bwd_input_64x128"),
        Some("conv2d_bwd_input"),
        Some("conv2d_bwd_input_16x256"),
    ],
};
const INTERVAL_CONV2D_BWD_INPUT: KernelShapes = KernelShapes {
    module: "conv",
    names: [
        None,
        Some("interval_conv2d_bwd_input_128x64"),
        Some("interval_conv2d_bwd_input_64x128"),
        Some("interval_conv2d_bwd_input"),
        None,
    ],
};
pub fn kernels() -> Vec<(&'static str, &'static str)> {
    let shaped = [
        CONV2D_FWD,
        INTERVAL_CONV2D_FWD,
        CONV2D_BWD_WEIGHT,
        INTERVAL_CONV2D_BWD_WEIGHT,
        CONV2D_BWD_INPUT,
        INTERVAL_CONV2D_BWD_INPUT,
    ];
    shaped
        .iter()
        .flat_map(|k| k.entries().map(move |e| (k.module, e)))
        .collect()
}

/// The geometry of a convolution: input `[n, c, h, w]`, weight `[o, c, kh, kw]`, symmetric zero
/// padding, no dilation or groups (the CPU's [`ConvGeometry`], with errors instead of panics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    /// (vertical, horizontal)
    pub stride: (usize, usize),
    /// (vertical, horizontal), added on both sides.
    pub padding: (usize, usize),
}

impl From<ConvGeometry> for ConvShape {
    fn from(g: ConvGeometry) -> ConvShape {
        ConvShape {
            n: g.n,
            c: g.c_in,
            h: g.h,
            w: g.w,
            o: g.c_out,
            kh: g.kh,
            kw: g.kw,
            stride: g.stride,
            padding: g.padding,
        }
    }
}

/// What the kernels receive by value: `struct ConvShape` of `ops/conv/conv.cu`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Dims {
    n: i32,
    c: i32,
    h: i32,
    w: i32,
    o: i32,
    kh: i32,
    kw: i32,
    sh: i32,
    sw: i32,
    ph: i32,
    pw: i32,
    oh: i32,
    ow: i32,
}

// SAFETY: a #[repr(C)] struct of i32s, which is the layout of the kernels' `ConvShape`.
unsafe impl DeviceRepr for Dims {}

/// A validated geometry with its sizes.
#[derive(Clone, Copy, Debug)]
struct Checked {
    dims: Dims,
    input_len: usize,
    weight_len: usize,
    output_len: usize,
    /// N·OH·OW
    pixels: usize,
    /// C·KH·KW
    taps: usize,
}

impl ConvShape {
    /// The geometry of convolving `input` `[n, c, h, w]` with `weight` `[o, c, kh, kw]`.
    pub fn new(input: [usize; 4], weight: [usize; 4], params: Conv2dParams) -> Result<ConvShape> {
        if input[1] != weight[1] {
            return Err(Error::Shape(format!(
                "conv2d: input {input:?} has {} channels, weight {weight:?} expects {}",
                input[1], weight[1]
            )));
        }
        let s = ConvShape {
            n: input[0],
            c: input[1],
            h: input[2],
            w: input[3],
            o: weight[0],
            kh: weight[2],
            kw: weight[3],
            stride: params.stride,
            padding: params.padding,
        };
        s.check()?;
        Ok(s)
    }

    /// (OH, OW), or an error for a zero stride or a kernel larger than the padded input.
    pub fn output_hw(&self) -> Result<(usize, usize)> {
        let axis = |input: usize, k: usize, stride: usize, pad: usize, what: &str| {
            if stride == 0 {
                return Err(Error::Shape(format!("conv2d: {what} stride is 0")));
            }
            let padded = input
                .checked_add(pad.checked_mul(2).ok_or_else(|| too_large(self))?)
                .ok_or_else(|| too_large(self))?;
            if k == 0 || padded < k {
                return Err(Error::Shape(format!(
                    "conv2d: kernel {what} {k} does not fit the padded input {what} {padded}"
                )));
            }
            Ok((padded - k) / stride + 1)
        };
        Ok((
            axis(self.h, self.kh, self.stride.0, self.padding.0, "height")?,
            axis(self.w, self.kw, self.stride.1, self.padding.1, "width")?,
        ))
    }

    /// n·c·h·w
    pub fn input_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }

    /// o·c·kh·kw
    pub fn weight_len(&self) -> usize {
        self.o * self.c * self.kh * self.kw
    }

    /// n·o·oh·ow
    pub fn output_len(&self) -> Result<usize> {
        Ok(self.check()?.output_len)
    }

    /// Every check the kernels rely on, and the sizes.
    fn check(&self) -> Result<Checked> {
        if self.c == 0 || self.h == 0 || self.w == 0 {
            return Err(Error::Shape(format!(
                "conv2d: channels, height and width of the input must be positive, got {self:?}"
            )));
        }
        let (oh, ow) = self.output_hw()?;
        let product = |xs: &[usize]| {
            xs.iter()
                .try_fold(1usize, |acc, &x| acc.checked_mul(x))
                .filter(|&v| v < MAX_ELEMENTS)
                .ok_or_else(|| too_large(self))
        };
        let input_len = product(&[self.n, self.c, self.h, self.w])?;
        let weight_len = product(&[self.o, self.c, self.kh, self.kw])?;
        let output_len = product(&[self.n, self.o, oh, ow])?;
        let pixels = product(&[self.n, oh, ow])?;
        let taps = product(&[self.c, self.kh, self.kw])?;
        // The padded extents and strides enter the kernels' index arithmetic too.
        let _ = product(&[self.h + 2 * self.padding.0, self.w + 2 * self.padding.1])?;
        let _ = product(&[self.stride.0, self.stride.1, TILE])?;
        if self.o.div_ceil(MIN_TILE) > GRID_YZ || self.c.div_ceil(MIN_TILE) > GRID_YZ {
            return Err(too_large(self));
        }
        if self.stride.0 * self.stride.1 > GRID_YZ {
            return Err(Error::Shape(format!(
                "conv2d: stride {:?} has more than {GRID_YZ} phases",
                self.stride
            )));
        }
        let i = |v: usize| v as i32; // every value is below MAX_ELEMENTS < i32::MAX here
        Ok(Checked {
            dims: Dims {
                n: i(self.n),
                c: i(self.c),
                h: i(self.h),
                w: i(self.w),
                o: i(self.o),
                kh: i(self.kh),
                kw: i(self.kw),
                sh: i(self.stride.0),
                sw: i(self.stride.1),
                ph: i(self.padding.0),
                pw: i(self.padding.1),
                oh: i(oh),
                ow: i(ow),
            },
            input_len,
            weight_len,
            output_len,
            pixels,
            taps,
        })
    }
}

fn too_large(s: &ConvShape) -> Error {
    Error::Shape(format!(
        "conv2d: {s:?} is too large for the CUDA kernels (every tensor must hold fewer than \
         2^30 values)"
    ))
}

/// The two halves `[0, half)` and `[half, 2·half)` of a stacked buffer.
fn halves(b: &DeviceBuffer, half: usize) -> (CudaView<'_, f32>, CudaView<'_, f32>) {
    (b.slice().slice(0..half), b.slice().slice(half..2 * half))
}

/// The same for writing; the second view runs on to the end of the allocation (kernels are
/// given their lengths by the geometry, and write `half` values into it).
fn halves_mut(b: &mut DeviceBuffer, half: usize) -> (CudaViewMut<'_, f32>, CudaViewMut<'_, f32>) {
    b.slice_mut().split_at_mut(half)
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------

fn check_forward(
    x_len: usize,
    w: &DeviceBuffer,
    bias: Option<&DeviceBuffer>,
    g: &ConvShape,
    stacked: usize,
) -> Result<Checked> {
    let k = g.check()?;
    check_len("conv2d input", x_len, stacked * k.input_len)?;
    check_len("conv2d weight", w.len(), k.weight_len)?;
    if let Some(b) = bias {
        check_len("conv2d bias", b.len(), g.o)?;
    }
    Ok(k)
}

/// The forward's entry point of `kernel` and its grid: M = O channels, N = N·OH·OW pixels.
fn forward_launch(
    backend: &CudaBackend,
    kernel: &KernelShapes,
    k: &Checked,
) -> Result<(&'static str, LaunchConfig)> {
    let (name, t) = pick(backend, kernel, k.dims.o as usize, k.pixels, 1)?;
    let (x, y) = t.grid(k.dims.o as usize, k.pixels);
    Ok((name, config((x, y, 1))))
}

/// y `[n, o, oh, ow]` = conv(x `[n, c, h, w]`, w `[o, c, kh, kw]`) + bias `[o]`.
pub fn conv2d_forward(
    x: &DeviceBuffer,
    w: &DeviceBuffer,
    bias: Option<&DeviceBuffer>,
    g: &ConvShape,
) -> Result<DeviceBuffer> {
    let k = check_forward(x.len(), w, bias, g, 1)?;
    let mut y = DeviceBuffer::uninit(k.output_len)?;
    if k.output_len == 0 {
        return Ok(y);
    }
    let backend = cuda()?;
    let (xv, wv) = (view(x, k.input_len), view(w, k.weight_len));
    // Without a bias the kernel never reads the pointer; the weight stands in.
    let bv = bias.map_or_else(|| view(w, k.weight_len), |b| view(b, g.o));
    let has_bias = i32::from(bias.is_some());
    let mut yv = view_mut(&mut y, k.output_len);
    let (name, cfg) = forward_launch(backend, &CONV2D_FWD, &k)?;
    let mut b = backend.launch("conv", name)?;
    b.arg(&xv)
        .arg(&wv)
        .arg(&bv)
        .arg(&has_bias)
        .arg(&k.dims)
        .arg(&mut yv);
    // SAFETY: the arguments match the kernel's signature; every index it forms is below the
    // lengths checked above.
    unsafe { b.launch(cfg) }?;
    Ok(y)
}

#[allow(clippy::too_many_arguments)]
fn interval_forward_views(
    backend: &CudaBackend,
    c: &CudaView<'_, f32>,
    r: &CudaView<'_, f32>,
    w: &DeviceBuffer,
    bias: Option<&DeviceBuffer>,
    k: &Checked,
    yc: &mut CudaViewMut<'_, f32>,
    yr: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    let wv = view(w, k.weight_len);
    let bv = bias.map_or_else(|| view(w, k.weight_len), |b| view(b, k.dims.o as usize));
    let has_bias = i32::from(bias.is_some());
    let (name, cfg) = forward_launch(backend, &INTERVAL_CONV2D_FWD, k)?;
    let mut b = backend.launch("conv", name)?;
    b.arg(c)
        .arg(r)
        .arg(&wv)
        .arg(&bv)
        .arg(&has_bias)
        .arg(&k.dims)
        .arg(yc)
        .arg(yr);
    // SAFETY: as in conv2d_forward; c, r, yc and yr hold input_len / output_len values.
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// Boxes in centre/radius form: (conv(c, w) + bias, conv(r, |w|)), one kernel. `c` and `r` are
/// `[n, c, h, w]` each; the radii are taken as given (the caller keeps them ≥ 0).
pub fn interval_conv2d_forward(
    c: &DeviceBuffer,
    r: &DeviceBuffer,
    w: &DeviceBuffer,
    bias: Option<&DeviceBuffer>,
    g: &ConvShape,
) -> Result<(DeviceBuffer, DeviceBuffer)> {
    let k = check_forward(c.len(), w, bias, g, 1)?;
    check_len("interval conv2d radii", r.len(), k.input_len)?;
    let mut yc = DeviceBuffer::uninit(k.output_len)?;
    let mut yr = DeviceBuffer::uninit(k.output_len)?;
    if k.output_len == 0 {
        return Ok((yc, yr));
    }
    let backend = cuda()?;
    interval_forward_views(
        backend,
        &view(c, k.input_len),
        &view(r, k.input_len),
        w,
        bias,
        &k,
        &mut view_mut(&mut yc, k.output_len),
        &mut view_mut(&mut yr, k.output_len),
    )?;
    Ok((yc, yr))
}

/// [`interval_conv2d_forward`] on a stacked box `x` `[2, n, c, h, w]` (centres, then radii),
/// returning the stacked `[2, n, o, oh, ow]`.
pub fn interval_conv2d_forward_stacked(
    x: &DeviceBuffer,
    w: &DeviceBuffer,
    bias: Option<&DeviceBuffer>,
    g: &ConvShape,
) -> Result<DeviceBuffer> {
    let k = check_forward(x.len(), w, bias, g, 2)?;
    let mut y = DeviceBuffer::uninit(2 * k.output_len)?;
    if k.output_len == 0 {
        return Ok(y);
    }
    let backend = cuda()?;
    let (c, r) = halves(x, k.input_len);
    let (mut yc, mut yr) = halves_mut(&mut y, k.output_len);
    interval_forward_views(backend, &c, &r, w, bias, &k, &mut yc, &mut yr)?;
    Ok(y)
}

// ---------------------------------------------------------------------------------------------
// Weight gradient
// ---------------------------------------------------------------------------------------------

/// How the weight gradient's K (= N·OH·OW pixels) is split: `(splits, chunk)` with `chunk` a
/// multiple of 16 and `splits = ⌈pixels / chunk⌉`. Aims at four blocks per multiprocessor
/// while giving every block at least 16 K-steps (256 pixels), so that the partial sums cost
/// little next to the products, and keeps the partials below [`MAX_ELEMENTS`].
/// `shape` is the output tile shape the kernel runs with.
pub fn weight_gradient_splits(
    g: &ConvShape,
    multiprocessors: usize,
    shape: Tiles,
) -> Result<(usize, usize)> {
    let k = g.check()?;
    Ok(splits_for(&k, multiprocessors, shape))
}

/// The most splits the weight gradient may use (16 K-steps each, partials below
/// [`MAX_ELEMENTS`]).
fn most_splits(k: &Checked) -> usize {
    (k.pixels.div_ceil(TILE_K).max(1) / 16)
        .min(GRID_YZ)
        .min((MAX_ELEMENTS - 1) / k.weight_len.max(1))
        .max(1)
}

fn splits_for(k: &Checked, multiprocessors: usize, shape: Tiles) -> (usize, usize) {
    let (x, y) = shape.grid(k.dims.o as usize, k.taps);
    let tiles = x as usize * y as usize;
    let ktiles = k.pixels.div_ceil(TILE_K).max(1);
    let wanted = (4 * multiprocessors.max(1)).div_ceil(tiles.max(1));
    let splits = wanted.min(most_splits(k)).max(1);
    let chunk = ktiles.div_ceil(splits) * TILE_K;
    (k.pixels.div_ceil(chunk).max(1), chunk)
}

/// Sources of a weight-gradient launch: plain (x, gy) or interval (c, r, gc, gr, w).
enum WeightGradArgs<'a> {
    Plain {
        x: CudaView<'a, f32>,
        gy: CudaView<'a, f32>,
    },
    Interval {
        c: CudaView<'a, f32>,
        r: CudaView<'a, f32>,
        gc: CudaView<'a, f32>,
        gr: CudaView<'a, f32>,
        w: CudaView<'a, f32>,
    },
}

/// Runs the split-K weight-gradient kernel (partials straight into dW when there is one
/// split, else into a scratch buffer added up by `sum_splits`).
fn weight_gradient(k: &Checked, args: WeightGradArgs<'_>) -> Result<DeviceBuffer> {
    if k.weight_len == 0 {
        return DeviceBuffer::uninit(0);
    }
    if k.pixels == 0 {
        return DeviceBuffer::zeros(k.weight_len);
    }
    let backend = cuda()?;
    let kernel = match args {
        WeightGradArgs::Plain { .. } => &CONV2D_BWD_WEIGHT,
        WeightGradArgs::Interval { .. } => &INTERVAL_CONV2D_BWD_WEIGHT,
    };
    // M = O channels, N = C·KH·KW taps, as deep as the splits may go.
    let (name, shape) = pick(backend, kernel, k.dims.o as usize, k.taps, most_splits(k))?;
    let (splits, chunk) = splits_for(k, multiprocessors(backend), shape);
    let mut dw = DeviceBuffer::uninit(k.weight_len)?;
    let mut scratch = if splits > 1 {
        Some(DeviceBuffer::uninit(splits * k.weight_len)?)
    } else {
        None
    };
    let (gx, gy) = shape.grid(k.dims.o as usize, k.taps);
    let grid = (gx, gy, splits as u32);
    let chunk_i = chunk as i32;
    {
        let mut out = match scratch.as_mut() {
            Some(s) => view_mut(s, splits * k.weight_len),
            None => view_mut(&mut dw, k.weight_len),
        };
        let mut b = backend.launch("conv", name)?;
        match &args {
            WeightGradArgs::Plain { x, gy } => {
                b.arg(x).arg(gy);
            }
            WeightGradArgs::Interval { c, r, gc, gr, w } => {
                b.arg(c).arg(r).arg(gc).arg(gr).arg(w);
            }
        }
        b.arg(&k.dims).arg(&chunk_i).arg(&mut out);
        // SAFETY: arguments as the kernel declares them; chunk z writes only the z-th
        // weight-sized slice of `out`, which holds `splits` of them.
        unsafe { b.launch(config(grid)) }?;
    }
    if let Some(parts) = &scratch {
        let (splits_i, len_i) = (splits as i32, k.weight_len as i32);
        let pv = view(parts, splits * k.weight_len);
        let mut out = view_mut(&mut dw, k.weight_len);
        let mut b = backend.launch("matmul", "sum_splits")?;
        b.arg(&pv).arg(&splits_i).arg(&len_i).arg(&mut out);
        // SAFETY: reads splits·len values, writes len.
        unsafe { b.launch(grid_1d(k.weight_len)) }?;
    }
    Ok(dw)
}

/// dW `[o, c, kh, kw]` = Σ over the batch of grad_out ⊗ im2col(x).
pub fn conv2d_backward_weight(
    x: &DeviceBuffer,
    grad_out: &DeviceBuffer,
    g: &ConvShape,
) -> Result<DeviceBuffer> {
    let k = g.check()?;
    check_len("conv2d input", x.len(), k.input_len)?;
    check_len("conv2d output gradient", grad_out.len(), k.output_len)?;
    weight_gradient(
        &k,
        WeightGradArgs::Plain {
            x: view(x, k.input_len),
            gy: view(grad_out, k.output_len),
        },
    )
}

/// The weight gradient of [`interval_conv2d_forward`]: Σ grad_c ⊗ cols(c) + sign(w) ⊙
/// Σ grad_r ⊗ cols(r) (sign(0) = 0), one kernel.
pub fn interval_conv2d_backward_weight(
    c: &DeviceBuffer,
    r: &DeviceBuffer,
    grad_c: &DeviceBuffer,
    grad_r: &DeviceBuffer,
    w: &DeviceBuffer,
    g: &ConvShape,
) -> Result<DeviceBuffer> {
    let k = g.check()?;
    check_len("interval conv2d centres", c.len(), k.input_len)?;
    check_len("interval conv2d radii", r.len(), k.input_len)?;
    check_len(
        "interval conv2d centre gradient",
        grad_c.len(),
        k.output_len,
    )?;
    check_len(
        "interval conv2d radius gradient",
        grad_r.len(),
        k.output_len,
    )?;
    check_len("interval conv2d weight", w.len(), k.weight_len)?;
    weight_gradient(
        &k,
        WeightGradArgs::Interval {
            c: view(c, k.input_len),
            r: view(r, k.input_len),
            gc: view(grad_c, k.output_len),
            gr: view(grad_r, k.output_len),
            w: view(w, k.weight_len),
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Input gradient
// ---------------------------------------------------------------------------------------------

/// The input gradient's entry point of `kernel` and its grid: M = C channels, N = the pixels
/// of the biggest stride phase, one phase per grid z.
fn input_launch(
    backend: &CudaBackend,
    kernel: &KernelShapes,
    k: &Checked,
) -> Result<(&'static str, LaunchConfig)> {
    let d = &k.dims;
    // Phase 0 has the most input pixels: ⌈H/sh⌉·⌈W/sw⌉ per sample.
    let most = (d.n as usize)
        * (d.h as usize).div_ceil(d.sh as usize)
        * (d.w as usize).div_ceil(d.sw as usize);
    let phases = (d.sh * d.sw) as usize;
    let (name, t) = pick(backend, kernel, d.c as usize, most, phases)?;
    let (x, y) = t.grid(d.c as usize, most);
    Ok((name, config((x, y, phases as u32))))
}

/// dX `[n, c, h, w]`: grad_out `[n, o, oh, ow]` through the adjoint of the convolution.
pub fn conv2d_backward_input(
    grad_out: &DeviceBuffer,
    w: &DeviceBuffer,
    g: &ConvShape,
) -> Result<DeviceBuffer> {
    let k = g.check()?;
    check_len("conv2d output gradient", grad_out.len(), k.output_len)?;
    check_len("conv2d weight", w.len(), k.weight_len)?;
    let mut dx = DeviceBuffer::uninit(k.input_len)?;
    if k.input_len == 0 {
        return Ok(dx);
    }
    let backend = cuda()?;
    let (gv, wv) = (view(grad_out, k.output_len), view(w, k.weight_len));
    let mut dv = view_mut(&mut dx, k.input_len);
    let (name, cfg) = input_launch(backend, &CONV2D_BWD_INPUT, &k)?;
    let mut b = backend.launch("conv", name)?;
    b.arg(&gv).arg(&wv).arg(&k.dims).arg(&mut dv);
    // SAFETY: arguments as declared; the phases partition dX, each element written once.
    unsafe { b.launch(cfg) }?;
    Ok(dx)
}

fn interval_input_views(
    backend: &CudaBackend,
    gc: &CudaView<'_, f32>,
    gr: &CudaView<'_, f32>,
    w: &DeviceBuffer,
    k: &Checked,
    dc: &mut CudaViewMut<'_, f32>,
    dr: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    let wv = view(w, k.weight_len);
    let (name, cfg) = input_launch(backend, &INTERVAL_CONV2D_BWD_INPUT, k)?;
    let mut b = backend.launch("conv", name)?;
    b.arg(gc).arg(gr).arg(&wv).arg(&k.dims).arg(dc).arg(dr);
    // SAFETY: as conv2d_backward_input, for both halves.
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// The input gradients of [`interval_conv2d_forward`]: (adjoint of w applied to grad_c,
/// adjoint of |w| applied to grad_r), one kernel.
pub fn interval_conv2d_backward_input(
    grad_c: &DeviceBuffer,
    grad_r: &DeviceBuffer,
    w: &DeviceBuffer,
    g: &ConvShape,
) -> Result<(DeviceBuffer, DeviceBuffer)> {
    let k = g.check()?;
    check_len(
        "interval conv2d centre gradient",
        grad_c.len(),
        k.output_len,
    )?;
    check_len(
        "interval conv2d radius gradient",
        grad_r.len(),
        k.output_len,
    )?;
    check_len("interval conv2d weight", w.len(), k.weight_len)?;
    let mut dc = DeviceBuffer::uninit(k.input_len)?;
    let mut dr = DeviceBuffer::uninit(k.input_len)?;
    if k.input_len == 0 {
        return Ok((dc, dr));
    }
    interval_input_views(
        cuda()?,
        &view(grad_c, k.output_len),
        &view(grad_r, k.output_len),
        w,
        &k,
        &mut view_mut(&mut dc, k.input_len),
        &mut view_mut(&mut dr, k.input_len),
    )?;
    Ok((dc, dr))
}

// ---------------------------------------------------------------------------------------------
// Bias gradient
// ---------------------------------------------------------------------------------------------

/// The bias gradient `[o]`: grad_out `[n, o, oh, ow]` summed per channel.
pub fn conv2d_backward_bias(grad_out: &DeviceBuffer, g: &ConvShape) -> Result<DeviceBuffer> {
    let k = g.check()?;
    let d = &k.dims;
    channel_sum(grad_out, g.n, g.o, (d.oh * d.ow) as usize)
}

// ---------------------------------------------------------------------------------------------
// All gradients at once
// ---------------------------------------------------------------------------------------------

/// Gradients of a convolution on the device; each is `Some` exactly when it was asked for.
#[derive(Default)]
pub struct DeviceConvGrads {
    /// `[n, c, h, w]` (stacked `[2, n, c, h, w]` for the interval convolution)
    pub input: Option<DeviceBuffer>,
    /// `[o, c, kh, kw]`
    pub weight: Option<DeviceBuffer>,
    /// `[o]`
    pub bias: Option<DeviceBuffer>,
}

/// Gradients of [`conv2d_forward`] given `grad_out` `[n, o, oh, ow]`: the device counterpart
/// of the CPU's `conv2d_backward`.
pub fn conv2d_backward(
    x: &DeviceBuffer,
    w: &DeviceBuffer,
    grad_out: &DeviceBuffer,
    g: &ConvShape,
    need_input: bool,
    need_weight: bool,
    need_bias: bool,
) -> Result<DeviceConvGrads> {
    let k = g.check()?;
    check_len("conv2d input", x.len(), k.input_len)?;
    check_len("conv2d weight", w.len(), k.weight_len)?;
    check_len("conv2d output gradient", grad_out.len(), k.output_len)?;
    Ok(DeviceConvGrads {
        input: need_input
            .then(|| conv2d_backward_input(grad_out, w, g))
            .transpose()?,
        weight: need_weight
            .then(|| conv2d_backward_weight(x, grad_out, g))
            .transpose()?,
        bias: need_bias
            .then(|| conv2d_backward_bias(grad_out, g))
            .transpose()?,
    })
}

/// Gradients of [`interval_conv2d_forward_stacked`]: `x` is the stacked box `[2, n, c, h, w]`,
/// `grad_out` the stacked `[2, n, o, oh, ow]` (centre gradients, then radius gradients); the
/// input gradient comes back stacked, the bias gradient is the centre gradient's channel sum.
/// The device counterpart of the CPU's `interval_conv2d_backward`.
pub fn interval_conv2d_backward_stacked(
    x: &DeviceBuffer,
    w: &DeviceBuffer,
    grad_out: &DeviceBuffer,
    g: &ConvShape,
    need_input: bool,
    need_weight: bool,
    need_bias: bool,
) -> Result<DeviceConvGrads> {
    let k = g.check()?;
    check_len("interval conv2d input", x.len(), 2 * k.input_len)?;
    check_len("interval conv2d weight", w.len(), k.weight_len)?;
    check_len(
        "interval conv2d output gradient",
        grad_out.len(),
        2 * k.output_len,
    )?;
    let mut grads = DeviceConvGrads::default();
    if need_input {
        let mut dx = DeviceBuffer::uninit(2 * k.input_len)?;
        if k.input_len > 0 {
            let (gc, gr) = halves(grad_out, k.output_len);
            let (mut dc, mut dr) = halves_mut(&mut dx, k.input_len);
            interval_input_views(cuda()?, &gc, &gr, w, &k, &mut dc, &mut dr)?;
        }
        grads.input = Some(dx);
    }
    if need_weight {
        let (c, r) = halves(x, k.input_len);
        let (gc, gr) = halves(grad_out, k.output_len);
        grads.weight = Some(weight_gradient(
            &k,
            WeightGradArgs::Interval {
                c,
                r,
                gc,
                gr,
                w: view(w, k.weight_len),
            },
        )?);
    }
    if need_bias {
        let d = &k.dims;
        let (gc, _) = halves(grad_out, k.output_len.max(1));
        grads.bias = Some(channel_sum_view(&gc, g.n, g.o, (d.oh * d.ow) as usize)?);
    }
    Ok(grads)
}
