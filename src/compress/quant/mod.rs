//! Fake quantization of weights: fp16 and asymmetric intN (N = 2..=8), per tensor or per output
//! channel, differentiable with the straight-through estimator (the paper's eq. 14).
//!
//! # Formats
//! - `fp32`: the identity.
//! - `fp16`: every value is rounded to the nearest IEEE half (ties to even) through the `half`
//!   crate. Finite values beyond the half range are **clamped to ±65504** (the largest finite
//!   half) instead of overflowing to ±inf, so a quantized network never gains infinite weights;
//!   values that already are ±inf or NaN stay as they are. The gradient is the identity.
//! - `intN` (docs/design.md, "Quantization": a deviation from eq. 13's floor, which breaks the
//!   half-step error bound): with `[qmin, qmax] = [−2^(N−1), 2^(N−1)−1]` and `min`, `max` taken
//!   over the tensor (per tensor) or over each output channel (per channel, the first axis),
//!   `s = (max − min)/(qmax − qmin)`, `z = qmin − round(min/s)`,
//!   `q = clamp(round(w/s) + z, qmin, qmax)`, `ŵ = s·(q − z)`.
//!
//! # Decisions
//! - **Rounding** is round half to even (as PyTorch's `torch.round` and its fake-quantize ops),
//!   applied to the quotient `w/s` computed in f64. With the zero point above, the representable
//!   levels are `k·s` for the integers `k ∈ [round(min/s), round(min/s) + qmax − qmin]`, so every
//!   `w ∈ [min, max]` is within `s/2` of a level (ties included, whichever way they round) and
//!   `|ŵ − w| ≤ s/2` up to f32 rounding of the result.
//! - **Scale.** `s` is stored as f32, rounded up if needed so that `s·(qmax − qmin) ≥ max − min`
//!   holds exactly. In one degenerate case it is made larger than the formula: when the range is
//!   a few f32 ulps of the values themselves (`(max − min)/max(|min|, |max|) < (qmax − qmin)·2^−30`)
//!   the zero point would not fit an `i32`, so `s` is raised to `max(|min|, |max|)·2^−30` (and to
//!   at least the smallest positive f32). The bound `|ŵ − w| ≤ s/2` holds with that `s`.
//! - **Constant tensors / channels** (`max == min`, including all zeros): `ŵ = w` exactly (as a
//!   number: −0.0 comes back as +0.0), no division by zero. The exported integer form uses
//!   `s = |c|` (1 for `c = 0`), `z = −sign(c)`, `q = 0`, which dequantizes to `c`;
//!   [`quant_step`] reports 0 for them (the quantizer makes no error there).
//! - **STE** (eq. 14): the gradient is 1 where `qmin − ½ ≤ w/s + z ≤ qmax + ½` (the value lies in
//!   the rounding cell of a representable level, so the clamp does not move it further than half
//!   a step; the bounds on `w` are computed in f64, widened by a relative 2^−40 and rounded
//!   outwards to f32) and 0 elsewhere. For weights
//!   quantized with their own range ([`fake_quantize`]) this holds for every weight; the mask only
//!   matters for parameters calibrated on another tensor ([`QuantParams::apply`]).
//! - **Non-finite weights** (NaN, ±inf) give no integer range: the int functions that take the
//!   range from the tensor itself panic with a message saying so (a diverged network; callers
//!   should check before). [`QuantParams::apply`] with given parameters clamps ±inf to the extreme
//!   levels and keeps NaN.
//! - `−0.0` and `+0.0` are the same level.

pub(crate) mod cuda;
pub mod launch;

use crate::nn::{Layer, Model};
use crate::tensor::Tensor;
use crate::{Error, Result};
use rayon::prelude::*;
use std::fmt;
use std::str::FromStr;

/// Below this many elements the loops stay on one thread.
const PARALLEL_MIN: usize = 1 << 15;
const CHUNK: usize = 1 << 13;

/// The largest finite IEEE half value.
pub const FP16_MAX: f32 = 65504.0;

/// The formats [`Format`] parses, for help texts and error messages.
pub const FORMAT_NAMES: &str = "fp32, fp16 or intN with N in 2..=8";

/// A number format that weights are (fake-)quantized to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Fp32,
    Fp16,
    /// Asymmetric integers of this many bits, 2..=8.
    Int(u8),
}

impl Format {
    pub const INT8: Format = Format::Int(8);
    pub const INT4: Format = Format::Int(4);

    /// True for the identity format (no quantization).
    pub fn is_identity(self) -> bool {
        self == Format::Fp32
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Format::Fp32 => f.write_str("fp32"),
            Format::Fp16 => f.write_str("fp16"),
            Format::Int(b) => write!(f, "int{b}"),
        }
    }
}

impl FromStr for Format {
    type Err = Error;

    /// `fp32`, `fp16`, or `intN` with N in 2..=8 (case-insensitive, surrounding space ignored).
    fn from_str(s: &str) -> Result<Format> {
        let t = s.trim().to_ascii_lowercase();
        let bad = || {
            Error::Invalid(format!(
                "unknown quantization format {s:?}: expected {FORMAT_NAMES} (int8, int4, ...)"
            ))
        };
        match t.as_str() {
            "fp32" => Ok(Format::Fp32),
            "fp16" => Ok(Format::Fp16),
            _ => {
                let digits = t.strip_prefix("int").ok_or_else(bad)?;
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                match digits.parse::<u8>() {
                    Ok(b) if (2..=8).contains(&b) => Ok(Format::Int(b)),
                    _ => Err(Error::Invalid(format!(
                        "quantization format {s:?}: integer width must be 2..=8 bits"
                    ))),
                }
            }
        }
    }
}

serde_as_name!(Format);

/// Over what the integer range (min, max) is taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// One scale and zero point for the whole tensor.
    #[default]
    PerTensor,
    /// One per output channel (the first axis: rows of a linear weight, filters of a conv).
    PerChannel,
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Granularity::PerTensor => "per-tensor",
            Granularity::PerChannel => "per-channel",
        })
    }
}

impl FromStr for Granularity {
    type Err = Error;

    /// `per-tensor` / `tensor` or `per-channel` / `channel`.
    fn from_str(s: &str) -> Result<Granularity> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "per-tensor" | "tensor" => Ok(Granularity::PerTensor),
            "per-channel" | "channel" => Ok(Granularity::PerChannel),
            _ => Err(Error::Invalid(format!(
                "unknown quantization granularity {s:?}: expected per-tensor or per-channel"
            ))),
        }
    }
}

serde_as_name!(Granularity);

/// `[qmin, qmax]` of signed N-bit integers. Panics unless `bits` is in 2..=8.
pub fn int_range(bits: u8) -> (i32, i32) {
    assert!(
        (2..=8).contains(&bits),
        "integer quantization needs 2..=8 bits, got {bits}"
    );
    let half = 1i32 << (bits - 1);
    (-half, half - 1)
}

/// Scale and zero point of one channel (or of the whole tensor).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChannelParams {
    /// `s` (positive).
    pub scale: f32,
    pub zero_point: i32,
    /// The quantization step: `scale`, or 0 for a constant channel (quantized exactly).
    pub step: f32,
}

/// The integer quantization parameters of a tensor: one [`ChannelParams`] per tensor or per
/// output channel.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantParams {
    pub bits: u8,
    pub granularity: Granularity,
    pub channels: Vec<ChannelParams>,
}

/// Number of channels and values per channel of `shape` under `granularity`.
fn layout(shape: &[usize], granularity: Granularity) -> (usize, usize) {
    let n: usize = shape.iter().product();
    match granularity {
        Granularity::PerChannel if !shape.is_empty() => {
            let c = shape[0];
            (c, n.checked_div(c).unwrap_or(0))
        }
        _ => (1, n),
    }
}

/// (min, max) of a slice; None when it is empty. Panics on non-finite values.
fn min_max(x: &[f32]) -> Option<(f32, f32)> {
    if x.is_empty() {
        return None;
    }
    let fold = |x: &[f32]| {
        x.iter().fold(
            (f32::INFINITY, f32::NEG_INFINITY, true),
            |(lo, hi, ok), &v| (lo.min(v), hi.max(v), ok && v.is_finite()),
        )
    };
    let (lo, hi, finite) = if x.len() < PARALLEL_MIN {
        fold(x)
    } else {
        x.par_chunks(CHUNK).map(fold).reduce(
            || (f32::INFINITY, f32::NEG_INFINITY, true),
            |a, b| (a.0.min(b.0), a.1.max(b.1), a.2 && b.2),
        )
    };
    assert!(
        finite,
        "cannot quantize weights to integers: the tensor holds NaN or infinite values \
         (the network has diverged)"
    );
    Some((lo, hi))
}

/// Scale and zero point for values in `[lo, hi]` (see the module docs).
fn channel_params(lo: f32, hi: f32, bits: u8) -> ChannelParams {
    let (qmin, qmax) = int_range(bits);
    if lo == hi {
        // Constant: s = |c|, z = −sign(c), q = 0 dequantizes to c exactly.
        let (scale, zero_point) = if lo == 0.0 {
            (1.0, 0)
        } else {
            (lo.abs(), if lo > 0.0 { -1 } else { 1 })
        };
        return ChannelParams {
            scale,
            zero_point,
            step: 0.0,
        };
    }
    let levels = f64::from(qmax - qmin);
    let range = f64::from(hi) - f64::from(lo); // exact for two f32 values
    let mut s = (range / levels) as f32;
    if f64::from(s) * levels < range {
        s = f32::from_bits(s.to_bits() + 1); // round up: s·(qmax − qmin) ≥ max − min
    }
    // Keep |min/s| ≤ 2^30 so that the zero point fits an i32 (see the module docs).
    let magnitude = f64::from(lo.abs().max(hi.abs()));
    let mut floor = (magnitude / f64::from(1u32 << 30)) as f32;
    if f64::from(floor) * f64::from(1u32 << 30) < magnitude {
        floor = f32::from_bits(floor.to_bits() + 1);
    }
    let s = s.max(floor).max(f32::from_bits(1));
    let r = (f64::from(lo) / f64::from(s)).round_ties_even();
    let zero_point = i32::try_from(i64::from(qmin) - r as i64)
        .expect("zero point within i32 by construction of the scale");
    ChannelParams {
        scale: s,
        zero_point,
        step: s,
    }
}

impl QuantParams {
    /// Parameters from the range of `w` itself (per tensor or per output channel).
    ///
    /// # Panics
    /// If `bits` is not in 2..=8 or `w` holds NaN or infinite values.
    pub fn from_tensor(w: &Tensor, bits: u8, granularity: Granularity) -> QuantParams {
        int_range(bits);
        let (c, row) = layout(w.shape(), granularity);
        let data = w.data();
        let one = |x: &[f32]| match min_max(x) {
            Some((lo, hi)) => channel_params(lo, hi, bits),
            None => channel_params(0.0, 0.0, bits),
        };
        let channels = if c <= 1 || row == 0 {
            (0..c).map(|i| one(&data[i * row..(i + 1) * row])).collect()
        } else {
            data.par_chunks(row).map(one).collect()
        };
        QuantParams {
            bits,
            granularity,
            channels,
        }
    }

    /// Check that these parameters fit a tensor of `shape`.
    fn check(&self, shape: &[usize]) {
        let (c, _) = layout(shape, self.granularity);
        assert_eq!(
            c,
            self.channels.len(),
            "quantization parameters for {} channels applied to a tensor of shape {shape:?} ({})",
            self.channels.len(),
            self.granularity
        );
    }

    /// Fake-quantize `w` with these parameters: `ŵ = s·(clamp(round(w/s) + z, qmin, qmax) − z)`,
    /// differentiable with the straight-through estimator (gradient 1 where
    /// `qmin − ½ ≤ w/s + z ≤ qmax + ½`, else 0). Values outside the calibration range, ±inf
    /// included, are clamped to the extreme levels; NaN stays NaN (with gradient 0).
    pub fn apply(&self, w: &Tensor) -> Tensor {
        self.check(w.shape());
        let (qmin, qmax) = int_range(self.bits);
        let (_, row) = layout(w.shape(), self.granularity);
        let ch = &self.channels;
        let out = map_channels(w.data(), row, |c, x| {
            if x.is_nan() {
                return x; // NaN stays NaN (±inf clamp to the extreme levels)
            }
            let p = ch[c];
            dequantize_value(quantize_value(x, p, qmin, qmax), p)
        });
        let saved = w.detach();
        let bounds: Vec<(f32, f32)> = self
            .channels
            .iter()
            .map(|&p| ste_bounds(p, qmin, qmax))
            .collect();
        let shape = w.shape().to_vec();
        Tensor::from_op(out, w.shape(), &[w], move |g, _| {
            let (gd, x) = (g.data(), saved.data());
            let mut d = vec![0.0f32; x.len()];
            for_each_channel_chunk(&mut d, row, |c, start, o| {
                let (lo, hi) = bounds[c];
                for (j, o) in o.iter_mut().enumerate() {
                    let v = x[start + j];
                    *o = if v >= lo && v <= hi {
                        gd[start + j]
                    } else {
                        0.0
                    };
                }
            });
            vec![Some(Tensor::from_vec(d, &shape))]
        })
    }

    /// The integers `q` of `w` under these parameters (row-major, as `w`).
    pub fn quantize(&self, w: &Tensor) -> Vec<i8> {
        self.check(w.shape());
        let (qmin, qmax) = int_range(self.bits);
        let (_, row) = layout(w.shape(), self.granularity);
        let data = w.data();
        let mut out = vec![0i8; data.len()];
        for_each_channel_chunk(&mut out, row, |c, start, o| {
            let p = self.channels[c];
            for (j, o) in o.iter_mut().enumerate() {
                *o = quantize_value(data[start + j], p, qmin, qmax) as i8;
            }
        });
        out
    }
}

/// `clamp(round(x/s) + z, qmin, qmax)`, with the quotient in f64, ties to even.
#[inline]
fn quantize_value(x: f32, p: ChannelParams, qmin: i32, qmax: i32) -> i32 {
    let r = round_ties_even_fast(f64::from(x) / f64::from(p.scale));
    let q = r + f64::from(p.zero_point);
    q.clamp(f64::from(qmin), f64::from(qmax)) as i32
}

/// `x.round_ties_even()` for the values that matter here, without a library call (the default
/// x86-64 target has no rounding instruction): |x| is first limited to 2^40, which changes no
/// quantized value (|z| ≤ 2^30 + 128, so anything that large is clamped anyway), and then
/// `(x + 1.5·2^52) − 1.5·2^52` rounds to an integer, ties to even, in the default rounding mode.
#[inline]
fn round_ties_even_fast(x: f64) -> f64 {
    const LIMIT: f64 = (1u64 << 40) as f64;
    const MAGIC: f64 = (3u64 << 51) as f64;
    let x = x.clamp(-LIMIT, LIMIT);
    (x + MAGIC) - MAGIC
}

/// `s·(q − z)`, computed in f64 and rounded once to f32.
#[inline]
fn dequantize_value(q: i32, p: ChannelParams) -> f32 {
    (f64::from(p.scale) * (i64::from(q) - i64::from(p.zero_point)) as f64) as f32
}

/// The interval of `w` where the STE of eq. 14 passes the gradient,
/// `qmin − ½ ≤ w/s + z ≤ qmax + ½`, i.e. `w ∈ [s·(qmin − z − ½), s·(qmax − z + ½)]`: computed in
/// f64, widened by a relative 2^−40 and rounded outwards to f32 (so rounding never cuts off a
/// weight of the calibration range).
fn ste_bounds(p: ChannelParams, qmin: i32, qmax: i32) -> (f32, f32) {
    let s = f64::from(p.scale);
    let z = f64::from(p.zero_point);
    let lo = s * (f64::from(qmin) - z - 0.5);
    let hi = s * (f64::from(qmax) - z + 0.5);
    let tol = |b: f64| (b.abs() + s) * f64::powi(2.0, -40);
    let (lo, hi) = (lo - tol(lo), hi + tol(hi));
    let mut lo32 = lo as f32;
    if f64::from(lo32) > lo {
        lo32 = next_down(lo32);
    }
    let mut hi32 = hi as f32;
    if f64::from(hi32) < hi {
        hi32 = next_up(hi32);
    }
    (lo32, hi32)
}

/// The next f32 above a finite `x`.
fn next_up(x: f32) -> f32 {
    if x == 0.0 {
        f32::from_bits(1)
    } else if x > 0.0 {
        f32::from_bits(x.to_bits() + 1)
    } else {
        f32::from_bits(x.to_bits() - 1)
    }
}

/// The next f32 below a finite `x`.
fn next_down(x: f32) -> f32 {
    -next_up(-x)
}

/// Run `f(channel, first_index, chunk)` over `out` cut into pieces that each lie in one channel
/// (channels of `row` values), in parallel for large buffers.
fn for_each_channel_chunk<T: Send>(
    out: &mut [T],
    row: usize,
    f: impl Fn(usize, usize, &mut [T]) + Sync,
) {
    if row == 0 || out.is_empty() {
        return;
    }
    let run = |start: usize, o: &mut [T]| {
        let end = start + o.len();
        let mut i = start;
        while i < end {
            let c = i / row;
            let seg_end = end.min((c + 1) * row);
            f(c, i, &mut o[i - start..seg_end - start]);
            i = seg_end;
        }
    };
    if out.len() < PARALLEL_MIN {
        run(0, out);
    } else {
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(k, o)| run(k * CHUNK, o));
    }
}

/// `f(channel, x)` over `data` (channels of `row` values).
fn map_channels(data: &[f32], row: usize, f: impl Fn(usize, f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0.0f32; data.len()];
    for_each_channel_chunk(&mut out, row, |c, start, o| {
        for (j, o) in o.iter_mut().enumerate() {
            *o = f(c, data[start + j]);
        }
    });
    out
}

/// Round one value to the nearest fp16 (ties to even), clamping finite values beyond the half
/// range to ±65504 (±inf and NaN are kept).
#[inline]
pub fn round_fp16(x: f32) -> f32 {
    let x = if x.is_finite() {
        x.clamp(-FP16_MAX, FP16_MAX)
    } else {
        x
    };
    half::f16::from_f32(x).to_f32()
}

fn fake_quantize_fp16(w: &Tensor) -> Tensor {
    let out = if w.numel() < PARALLEL_MIN {
        w.data().iter().map(|&x| round_fp16(x)).collect()
    } else {
        let mut out = vec![0.0f32; w.numel()];
        out.par_chunks_mut(CHUNK)
            .zip(w.data().par_chunks(CHUNK))
            .for_each(|(o, x)| o.iter_mut().zip(x).for_each(|(o, &x)| *o = round_fp16(x)));
        out
    };
    // Straight-through: the gradient passes unchanged.
    Tensor::from_op(out, w.shape(), &[w], |g, _| vec![Some(g.clone())])
}

/// Fake-quantize `w` to `format`: the tensor of dequantized values, differentiable with the
/// straight-through estimator (identity for fp32 and fp16; for intN gradient 1 where
/// `qmin − ½ ≤ w/s + z ≤ qmax + ½`, which is every weight when the range is `w`'s own).
/// `granularity` matters for intN only; per channel means per slice along the first axis.
///
/// # Panics
/// If `format` is `Int(b)` with `b` outside 2..=8, or (intN) `w` holds NaN or infinities.
pub fn fake_quantize(w: &Tensor, format: Format, granularity: Granularity) -> Tensor {
    if w.is_cuda() && format != Format::Fp32 {
        return crate::compress::quant::cuda::fake_quantize(w, format, granularity);
    }
    match format {
        Format::Fp32 => w.clone(),
        Format::Fp16 => fake_quantize_fp16(w),
        Format::Int(bits) => QuantParams::from_tensor(w, bits, granularity).apply(w),
    }
}

/// The per-tensor intN quantization step `s` of `w` (0 for a constant tensor, which is quantized
/// exactly). AWP measures its radius in this unit.
pub fn quant_step(w: &Tensor, bits: u8) -> f32 {
    QuantParams::from_tensor(w, bits, Granularity::PerTensor).channels[0].step
}

/// The integer form of `w` for export: `q` (row-major, as `w`), and one scale and zero point per
/// tensor or per output channel, such that [`dequantize_int`] gives exactly
/// `fake_quantize(w, Format::Int(bits), granularity)`.
pub fn quantize_int(
    w: &Tensor,
    bits: u8,
    granularity: Granularity,
) -> (Vec<i8>, Vec<f32>, Vec<i32>) {
    let p = QuantParams::from_tensor(w, bits, granularity);
    let q = p.quantize(w);
    let scales = p.channels.iter().map(|c| c.scale).collect();
    let zero_points = p.channels.iter().map(|c| c.zero_point).collect();
    (q, scales, zero_points)
}

/// `ŵ = s·(q − z)` for the integer form of a tensor of `shape` (one scale and zero point, or one
/// per output channel): computed in f64 and rounded once to f32, as the fake quantizer does.
pub fn dequantize_int(
    q: &[i8],
    scales: &[f32],
    zero_points: &[i32],
    shape: &[usize],
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    if q.len() != n {
        return Err(Error::Shape(format!(
            "{} quantized values for shape {shape:?}",
            q.len()
        )));
    }
    if scales.len() != zero_points.len() {
        return Err(Error::Shape(format!(
            "{} scales but {} zero points",
            scales.len(),
            zero_points.len()
        )));
    }
    let granularity = if scales.len() == 1 {
        Granularity::PerTensor
    } else {
        Granularity::PerChannel
    };
    let (c, row) = layout(shape, granularity);
    if c != scales.len() {
        return Err(Error::Shape(format!(
            "{} scales for shape {shape:?}: expected 1 or one per output channel",
            scales.len()
        )));
    }
    if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(Error::Invalid(format!(
            "quantization scale {s} is not a positive finite number"
        )));
    }
    let mut out = vec![0.0f32; n];
    for_each_channel_chunk(&mut out, row, |ch, start, o| {
        let p = ChannelParams {
            scale: scales[ch],
            zero_point: zero_points[ch],
            step: scales[ch],
        };
        for (j, o) in o.iter_mut().enumerate() {
            *o = dequantize_value(i32::from(q[start + j]), p);
        }
    });
    Ok(Tensor::from_vec(out, shape))
}

/// A copy of `model` whose conv and linear weights are fake-quantized to `format` (biases, batch
/// norm and everything else shared unchanged). The new weights are computed from the original
/// parameter tensors, so a loss on the copy sends gradients back to `model`'s weights through
/// the straight-through estimator (when gradients are enabled).
pub fn quantize_model(model: &Model, format: Format, granularity: Granularity) -> Model {
    let mut copy = model.clone();
    if format.is_identity() {
        return copy;
    }
    for w in copy.net.layers.iter_mut().filter_map(Layer::weight_mut) {
        *w = fake_quantize(w, format, granularity);
    }
    copy
}
