//! Fake quantization on the device (`compress/quant/quant.cu`), equal to `compress::quant` value for
//! value: intN per tensor or per output channel (min/max reductions, then the parameters, the
//! rounding and the straight-through gradient, all on the device) and the fp16 round trip.

use crate::compress::quant::{int_range, Granularity};
use crate::runtime::cuda::context::{cuda, grid_1d, CudaBackend};
use crate::runtime::cuda::{DeviceBuffer, DeviceVec};
use crate::{Error, Result};
use cudarc::driver::LaunchConfig;

/// Scale, zero point and STE window of each channel (one for per-tensor), on the device.
pub struct DeviceQuantParams {
    pub scale: DeviceBuffer,
    pub zero_point: DeviceVec<i32>,
    pub ste_lo: DeviceBuffer,
    pub ste_hi: DeviceBuffer,
    /// Values per channel (the whole tensor for per-tensor).
    pub row_len: usize,
    pub len: usize,
    pub qmin: i32,
    pub qmax: i32,
}

fn check_bits(bits: u8) -> Result<(i32, i32)> {
    if !(2..=8).contains(&bits) {
        return Err(Error::Invalid(format!(
            "integer quantization needs 2..=8 bits, got {bits}"
        )));
    }
    Ok(int_range(bits))
}

/// `[lo; rows]`, `[hi; rows]` of the rows of `x` (`rows · row_len` values, or pairs of partial
/// results when `lo_in` differs from `hi_in`).
fn minmax_rows(
    backend: &CudaBackend,
    lo_in: &DeviceBuffer,
    hi_in: &DeviceBuffer,
    rows: usize,
    row_len: usize,
    non_finite: &mut DeviceVec<i32>,
) -> Result<(DeviceBuffer, DeviceBuffer)> {
    let (mut lo, mut hi) = (DeviceBuffer::uninit(rows)?, DeviceBuffer::uninit(rows)?);
    let (rows_i32, row_i64) = (rows as i32, row_len as i64);
    let mut b = backend.launch("quant", "minmax_rows")?;
    b.arg(lo_in.slice())
        .arg(hi_in.slice())
        .arg(&rows_i32)
        .arg(&row_i64)
        .arg(lo.slice_mut())
        .arg(hi.slice_mut())
        .arg(non_finite.slice_mut());
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match the kernel's signature; one block per row.
    unsafe { b.launch(cfg) }?;
    Ok((lo, hi))
}

/// The intN parameters of `w` (shape `shape`), computed from its own range. A tensor holding NaN
/// or infinities is an error, as on the CPU (one flag is copied back to check it).
pub fn quant_params(
    w: &DeviceBuffer,
    shape: &[usize],
    bits: u8,
    granularity: Granularity,
) -> Result<DeviceQuantParams> {
    let (qmin, qmax) = check_bits(bits)?;
    let n: usize = shape.iter().product();
    if n != w.len() || n == 0 {
        return Err(Error::Shape(format!(
            "tensor of shape {shape:?} holds {} values",
            w.len()
        )));
    }
    let backend = cuda()?;
    let (channels, row_len) = match granularity {
        Granularity::PerChannel => (shape[0], n / shape[0]),
        Granularity::PerTensor => (1, n),
    };
    let mut non_finite = DeviceVec::<i32>::zeros(1)?;
    let (lo, hi) = if channels == 1 {
        // Two stages: one (min, max) per block, then over the blocks.
        let blocks = n.div_ceil(256).clamp(1, 1024);
        let (mut plo, mut phi) = (DeviceBuffer::uninit(blocks)?, DeviceBuffer::uninit(blocks)?);
        let n64 = n as i64;
        let mut b = backend.launch("quant", "minmax_partial")?;
        b.arg(w.slice())
            .arg(&n64)
            .arg(plo.slice_mut())
            .arg(phi.slice_mut())
            .arg(non_finite.slice_mut());
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match the kernel's signature.
        unsafe { b.launch(cfg) }?;
        minmax_rows(backend, &plo, &phi, 1, blocks, &mut non_finite)?
    } else {
        minmax_rows(backend, w, w, channels, row_len, &mut non_finite)?
    };
    let flag = non_finite.to_host()?;
    if flag[0] != 0 {
        return Err(Error::Invalid(
            "cannot quantize weights to integers: the tensor holds NaN or infinite values (the \
             network has diverged)"
                .into(),
        ));
    }
    let mut scale = DeviceBuffer::uninit(channels)?;
    let mut zero_point = DeviceVec::<i32>::zeros(channels)?;
    let (mut ste_lo, mut ste_hi) = (
        DeviceBuffer::uninit(channels)?,
        DeviceBuffer::uninit(channels)?,
    );
    let c = channels as i32;
    let mut b = backend.launch("quant", "quant_params")?;
    b.arg(lo.slice())
        .arg(hi.slice())
        .arg(&c)
        .arg(&qmin)
        .arg(&qmax)
        .arg(scale.slice_mut())
        .arg(zero_point.slice_mut())
        .arg(ste_lo.slice_mut())
        .arg(ste_hi.slice_mut());
    // SAFETY: arguments match the kernel's signature.
    unsafe { b.launch(grid_1d(channels)) }?;
    Ok(DeviceQuantParams {
        scale,
        zero_point,
        ste_lo,
        ste_hi,
        row_len,
        len: n,
        qmin,
        qmax,
    })
}

fn check_params_len(w: &DeviceBuffer, p: &DeviceQuantParams) -> Result<()> {
    if w.len() != p.len {
        return Err(Error::Shape(format!(
            "quantization parameters for {} values applied to {}",
            p.len,
            w.len()
        )));
    }
    Ok(())
}

/// `ŵ = s·(clamp(round(w/s) + z, qmin, qmax) − z)` with `p`'s parameters.
pub fn fake_quantize_int(w: &DeviceBuffer, p: &DeviceQuantParams) -> Result<DeviceBuffer> {
    check_params_len(w, p)?;
    let backend = cuda()?;
    let mut y = DeviceBuffer::uninit(w.len())?;
    let (n, row) = (w.len() as i64, p.row_len as i64);
    let mut b = backend.launch("quant", "fake_quant_int")?;
    b.arg(w.slice())
        .arg(&n)
        .arg(&row)
        .arg(p.scale.slice())
        .arg(p.zero_point.slice())
        .arg(&p.qmin)
        .arg(&p.qmax)
        .arg(y.slice_mut());
    // SAFETY: arguments match the kernel's signature.
    unsafe { b.launch(grid_1d(w.len())) }?;
    Ok(y)
}

/// The integer codes `q` of `w` (copied to the host, for export).
pub fn quantize_codes(w: &DeviceBuffer, p: &DeviceQuantParams) -> Result<Vec<i8>> {
    check_params_len(w, p)?;
    let backend = cuda()?;
    let mut q = DeviceVec::<i8>::zeros(w.len())?;
    let (n, row) = (w.len() as i64, p.row_len as i64);
    let mut b = backend.launch("quant", "quantize_int")?;
    b.arg(w.slice())
        .arg(&n)
        .arg(&row)
        .arg(p.scale.slice())
        .arg(p.zero_point.slice())
        .arg(&p.qmin)
        .arg(&p.qmax)
        .arg(q.slice_mut());
    // SAFETY: arguments match the kernel's signature.
    unsafe { b.launch(grid_1d(w.len())) }?;
    q.to_host()
}

/// The straight-through gradient of `fake_quantize_int` at `w`: `g` inside the window, else 0.
pub fn ste_backward(
    w: &DeviceBuffer,
    g: &DeviceBuffer,
    p: &DeviceQuantParams,
) -> Result<DeviceBuffer> {
    check_params_len(w, p)?;
    check_params_len(g, p)?;
    let backend = cuda()?;
    let mut dx = DeviceBuffer::uninit(w.len())?;
    let (n, row) = (w.len() as i64, p.row_len as i64);
    let mut b = backend.launch("quant", "ste_backward")?;
    b.arg(w.slice())
        .arg(g.slice())
        .arg(&n)
        .arg(&row)
        .arg(p.ste_lo.slice())
        .arg(p.ste_hi.slice())
        .arg(dx.slice_mut());
    // SAFETY: arguments match the kernel's signature.
    unsafe { b.launch(grid_1d(w.len())) }?;
    Ok(dx)
}

/// The fp16 round trip of every value (ties to even; finite values clamped to ±65504).
pub fn fake_quantize_fp16(w: &DeviceBuffer) -> Result<DeviceBuffer> {
    let backend = cuda()?;
    let mut y = DeviceBuffer::uninit(w.len())?;
    let n = w.len() as i64;
    let mut b = backend.launch("quant", "fake_quant_fp16")?;
    b.arg(w.slice()).arg(&n).arg(y.slice_mut());
    // SAFETY: arguments match the kernel's signature.
    unsafe { b.launch(grid_1d(w.len())) }?;
    Ok(y)
}
