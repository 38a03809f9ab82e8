//! Matrix multiplication on the GPU: safe launch wrappers for `matmul.cu` on [`DeviceBuffer`]s
//! of f32, row-major: [`matmul`] and [`sgemm`], C = α·op(A)·op(B) + β·C, one tiled SGEMM per
//! call (the tile shape per launch by [`Tiles`]), split over K into partial sums added in a
//! fixed order (`sum_splits`) when the output has few tiles: deterministic.

use crate::runtime::cuda::buffer::DeviceBuffer;
use crate::runtime::cuda::context::{cuda, grid_1d};
use crate::runtime::cuda::launch::check_len;
use crate::runtime::cuda::tiles::{
    config, multiprocessors, pick, KernelShapes, GRID_YZ, MAX_ELEMENTS, TILE, TILE_K,
};
use crate::runtime::cuda::tiles::{view, view_mut, MIN_TILE};
use crate::{Error, Result};

const SGEMM: KernelShapes = KernelShapes::four(
    "matmul",
    ["sgemm_128x128", "sgemm_128x64", "sgemm_64x128", "sgemm"],
);
const SGEMM_SPLIT: KernelShapes = KernelShapes::four(
    "matmul",
    [
        "sgemm_split_128x128",
        "sgemm_split_128x64",
        "sgemm_split_64x128",
        "sgemm_split",
    ],
);

/// Every (module, kernel) these wrappers launch: `tests/cuda_conv.rs` checks that each is in
/// Every kernel these wrappers launch: `tests/cuda_conv.rs` checks that each is in its compiled
/// module, on machines without a GPU too.
pub fn kernels() -> Vec<(&'static str, &'static str)> {
    let mut all: Vec<(&str, &str)> = [SGEMM, SGEMM_SPLIT]
        .iter()
        .flat_map(|k| k.entries().map(move |e| (k.module, e)))
        .collect();
    all.push(("matmul", "sum_splits"));
    all
}

// ---------------------------------------------------------------------------------------------
// Matrix multiplication
// ---------------------------------------------------------------------------------------------

/// One SGEMM, row-major: C (m × n, row pitch `ldc`) = alpha·op(A)·op(B) + beta·C, op(A) m × k
/// and op(B) k × n. `trans_a`: A is stored k × m (else m × k), row pitch `lda`; likewise B.
/// beta = 0 ignores C's previous values (NaN included).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmSpec {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub alpha: f32,
    pub beta: f32,
}

impl GemmSpec {
    /// C = op(A)·op(B) on densely stored matrices (every pitch is a row length).
    pub fn dense(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> GemmSpec {
        GemmSpec {
            m,
            n,
            k,
            trans_a,
            trans_b,
            lda: if trans_a { m } else { k },
            ldb: if trans_b { k } else { n },
            ldc: n,
            alpha: 1.0,
            beta: 0.0,
        }
    }
}

/// Values a row-major `rows × cols` matrix with row pitch `ld` spans, after checking that the
/// kernel's 32-bit offsets cannot wrap (they are formed, though never read, up to two K-steps
/// and a tile of rows past the end).
fn matrix_span(what: &str, rows: usize, cols: usize, ld: usize) -> Result<usize> {
    if ld < cols {
        return Err(Error::Shape(format!(
            "sgemm: {what} has rows of {cols} values but a pitch of {ld}"
        )));
    }
    let span = if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1)
            .checked_mul(ld)
            .and_then(|v| v.checked_add(cols))
            .ok_or_else(|| Error::Shape(format!("sgemm: {what} is too large")))?
    };
    let reach = (2 * TILE_K + TILE)
        .checked_mul(ld)
        .and_then(|v| v.checked_add(span + TILE));
    if reach.is_none_or(|v| v > i32::MAX as usize) {
        return Err(Error::Shape(format!(
            "sgemm: {what} ({rows} × {cols}, pitch {ld}) is too large for 32-bit offsets"
        )));
    }
    Ok(span)
}

/// C = alpha·op(A)·op(B) + beta·C as `spec` describes, in place on `c`.
pub fn sgemm(
    spec: &GemmSpec,
    a: &DeviceBuffer,
    b: &DeviceBuffer,
    c: &mut DeviceBuffer,
) -> Result<()> {
    sgemm_at(spec, (a, 0), (b, 0), (c, 0))
}

/// `sgemm` on matrices that start `offset` values into their buffers.
pub fn sgemm_at(
    spec: &GemmSpec,
    (a, a_at): (&DeviceBuffer, usize),
    (b, b_at): (&DeviceBuffer, usize),
    (c, c_at): (&mut DeviceBuffer, usize),
) -> Result<()> {
    let s = spec;
    let (a_rows, a_cols) = if s.trans_a { (s.k, s.m) } else { (s.m, s.k) };
    let (b_rows, b_cols) = if s.trans_b { (s.n, s.k) } else { (s.k, s.n) };
    let a_span = matrix_span("A", a_rows, a_cols, s.lda)?;
    let b_span = matrix_span("B", b_rows, b_cols, s.ldb)?;
    let c_span = matrix_span("C", s.m, s.n, s.ldc)?;
    for (what, have, need) in [
        ("A", a.len().saturating_sub(a_at), a_span),
        ("B", b.len().saturating_sub(b_at), b_span),
        ("C", c.len().saturating_sub(c_at), c_span),
    ] {
        if have < need || (need > 0 && have == 0) {
            return Err(Error::Shape(format!(
                "sgemm: {what} has {have} values, {}×{}×{} needs {need}",
                s.m, s.k, s.n
            )));
        }
    }
    if s.m == 0 || s.n == 0 {
        return Ok(());
    }
    if s.m.div_ceil(MIN_TILE) > GRID_YZ || s.k > i32::MAX as usize {
        return Err(Error::Shape(format!(
            "sgemm: {} × {} × {} is too large",
            s.m, s.k, s.n
        )));
    }
    let backend = cuda()?;
    let i = |v: usize| v as i32; // bounded by the span checks above
    let (m, n, k) = (i(s.m), i(s.n), i(s.k));
    let (lda, ldb, ldc) = (i(s.lda), i(s.ldb), i(s.ldc));
    let (ta, tb) = (i32::from(s.trans_a), i32::from(s.trans_b));
    // A K of 0 reads neither operand (its span is 0; the allocation holds at least 256).
    let av = a.slice().slice(a_at..a_at + a_span.max(1));
    let bv = b.slice().slice(b_at..b_at + b_span.max(1));
    let mut cv = c.slice_mut().slice_mut(c_at..c_at + c_span);
    let (name, shape) = pick(backend, &SGEMM, s.m, s.n, 1)?;
    let mut l = backend.launch("matmul", name)?;
    l.arg(&m)
        .arg(&n)
        .arg(&k)
        .arg(&s.alpha)
        .arg(&av)
        .arg(&lda)
        .arg(&ta)
        .arg(&bv)
        .arg(&ldb)
        .arg(&tb)
        .arg(&s.beta)
        .arg(&mut cv);
    l.arg(&ldc);
    let (gx, gy) = shape.grid(s.m, s.n);
    // SAFETY: arguments as the kernel declares them; the spans checked above cover every
    // element it reads or writes.
    unsafe { l.launch(config((gx, gy, 1))) }?;
    Ok(())
}

/// op(A)·op(B) `[m, n]` of dense row-major matrices: A is `[m, k]` (`[k, m]` when `trans_a`),
/// B is `[k, n]` (`[n, k]` when `trans_b`).
pub fn matmul(
    a: &DeviceBuffer,
    b: &DeviceBuffer,
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
) -> Result<DeviceBuffer> {
    let len = m
        .checked_mul(n)
        .ok_or_else(|| Error::Shape(format!("matmul: {m} × {n} is too large")))?;
    let ak = m.checked_mul(k);
    let bk = k.checked_mul(n);
    check_len("matmul A", a.len(), ak.unwrap_or(usize::MAX))?;
    check_len("matmul B", b.len(), bk.unwrap_or(usize::MAX))?;
    if k == 0 {
        return DeviceBuffer::zeros(len);
    }
    let mut c = DeviceBuffer::uninit(len)?;
    matmul_at(
        (a, 0),
        (b, 0),
        GemmSpec::dense(m, n, k, trans_a, trans_b),
        (&mut c, 0),
    )?;
    Ok(c)
}

/// C = op(A)·op(B) for dense matrices at offsets into their buffers (`spec` from
/// [`GemmSpec::dense`]). Few output tiles and a long K (a linear layer on a flattened feature
/// map: 128 × 512 outputs, K = 32,768) would leave most multiprocessors idle, so K is split
/// into chunks whose partial products `sum_splits` adds in a fixed order (deterministic).
pub fn matmul_at(
    a: (&DeviceBuffer, usize),
    b: (&DeviceBuffer, usize),
    spec: GemmSpec,
    c: (&mut DeviceBuffer, usize),
) -> Result<()> {
    let (m, n, k) = (spec.m, spec.n, spec.k);
    let backend = cuda()?;
    let ktiles = k.div_ceil(TILE_K).max(1);
    let most = (ktiles / 16)
        .min(GRID_YZ)
        .min((MAX_ELEMENTS - 1) / (m * n).max(1))
        .max(1);
    let (split_name, shape) = pick(backend, &SGEMM_SPLIT, m, n, most)?;
    let (gx, gy) = shape.grid(m, n);
    let tiles = gx as usize * gy as usize;
    let wanted = (4 * multiprocessors(backend)).div_ceil(tiles.max(1));
    let splits = wanted.min(most).max(1);
    if splits == 1 || spec.ldc != n {
        return sgemm_at(&spec, a, b, c);
    }
    let chunk = ktiles.div_ceil(splits) * TILE_K;
    let splits = k.div_ceil(chunk);
    // The whole operands must lie in their buffers (the spans of the unsplit product).
    let (a_rows, a_cols) = if spec.trans_a { (k, m) } else { (m, k) };
    let (b_rows, b_cols) = if spec.trans_b { (n, k) } else { (k, n) };
    let a_span = matrix_span("A", a_rows, a_cols, spec.lda)?;
    let b_span = matrix_span("B", b_rows, b_cols, spec.ldb)?;
    if a.0.len() < a.1 + a_span || b.0.len() < b.1 + b_span {
        return Err(Error::Shape(format!(
            "matmul: operands of {m} × {k} × {n} do not fit their buffers"
        )));
    }
    let mut parts = DeviceBuffer::uninit(splits * m * n)?;
    {
        let i = |v: usize| v as i32; // bounded by the span checks
        let (mi, ni, ki, chunk_i) = (i(m), i(n), i(k), i(chunk));
        let (lda, ldb) = (i(spec.lda), i(spec.ldb));
        let (ta, tb) = (i32::from(spec.trans_a), i32::from(spec.trans_b));
        let av = a.0.slice().slice(a.1..a.1 + a_span);
        let bv = b.0.slice().slice(b.1..b.1 + b_span);
        let mut pv = view_mut(&mut parts, splits * m * n);
        let mut l = backend.launch("matmul", split_name)?;
        l.arg(&mi)
            .arg(&ni)
            .arg(&ki)
            .arg(&chunk_i)
            .arg(&av)
            .arg(&lda)
            .arg(&ta)
            .arg(&bv)
            .arg(&ldb)
            .arg(&tb)
            .arg(&mut pv);
        let grid = (gx, gy, splits as u32);
        // SAFETY: arguments as the kernel declares them; block z reads K-columns (or rows)
        // [z·chunk, (z + 1)·chunk) of the checked operands and writes the z-th M × N slice.
        unsafe { l.launch(config(grid)) }?;
    }
    let (dst, at) = c;
    if dst.len() < at + m * n {
        return Err(Error::Shape(format!(
            "matmul: C holds {} values, {m} × {n} at {at} needs more",
            dst.len()
        )));
    }
    let (splits_i, len_i) = (splits as i32, (m * n) as i32);
    let pv = view(&parts, splits * m * n);
    let mut out = dst.slice_mut().slice_mut(at..at + m * n);
    let mut l = backend.launch("matmul", "sum_splits")?;
    l.arg(&pv).arg(&splits_i).arg(&len_i).arg(&mut out);
    // SAFETY: reads splits·len values, writes len.
    unsafe { l.launch(grid_1d(m * n)) }?;
    Ok(())
}
