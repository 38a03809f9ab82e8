//! Launch wrappers for `shape.cu`: strided copies — a slab of a concatenation along any axis
//! ([`copy_blocks`]), row gathers with repeats ([`gather_rows`]) and their backward
//! ([`scatter_rows`]).

use crate::runtime::cuda::buffer::{DeviceBuffer, DeviceVec};
use crate::runtime::cuda::launch::launch;
use crate::runtime::cuda::strided::stride_grid;
use crate::{Error, Result};

/// The kernel module these wrappers launch.
const MODULE: &str = "shape";

/// One side of a [`copy_blocks`]: `blocks` runs of `width` values, run `o` at `o·pitch + at`.
#[derive(Clone, Copy, Debug)]
pub struct Blocks {
    pub pitch: usize,
    pub at: usize,
}

/// Copy `blocks` runs of `width` values from `src` to `dst`, each laid out as its [`Blocks`]
/// says: a slab of a concatenation along an axis (and, reversed, its gradient).
pub fn copy_blocks(
    src: &DeviceBuffer,
    from: Blocks,
    dst: &mut DeviceBuffer,
    to: Blocks,
    blocks: usize,
    width: usize,
) -> Result<()> {
    if blocks == 0 || width == 0 {
        return Ok(());
    }
    let end = |b: Blocks| (blocks - 1) * b.pitch + b.at + width;
    if end(from) > src.len() || end(to) > dst.len() || from.pitch < width || to.pitch < width {
        return Err(Error::Shape(format!(
            "copy of {blocks} runs of {width}: from {from:?} of {} values to {to:?} of {}",
            src.len(),
            dst.len()
        )));
    }
    let [sp, sa, bl, wi, dp, da] =
        [from.pitch, from.at, blocks, width, to.pitch, to.at].map(|v| v as i64);
    launch!(
        MODULE,
        "copy_blocks",
        stride_grid(blocks * width),
        [src.slice(), &sp, &sa, &bl, &wi, dst.slice_mut(), &dp, &da]
    );
    Ok(())
}

/// Upload `values` (indices below 2³¹) as i32, one counted copy.
fn upload_indices(what: &str, values: &[usize]) -> Result<DeviceVec<i32>> {
    let host = values
        .iter()
        .map(|&v| i32::try_from(v))
        .collect::<std::result::Result<Vec<i32>, _>>()
        .map_err(|_| Error::Invalid(format!("{what}: an index above 2^31")))?;
    let uploaded = DeviceVec::from_host(&host)?;
    crate::tensor::transfers::count_upload();
    Ok(uploaded)
}

/// Rows `index` of `x` (`rows` rows of `row` values), in that order; repeats allowed.
pub fn gather_rows(
    x: &DeviceBuffer,
    rows: usize,
    row: usize,
    index: &[usize],
) -> Result<DeviceBuffer> {
    if x.len() != rows * row {
        return Err(Error::Shape(format!(
            "gather: {} values for {rows} rows of {row}",
            x.len()
        )));
    }
    if let Some(&bad) = index.iter().find(|&&i| i >= rows) {
        return Err(Error::Shape(format!("gather: row {bad} of {rows}")));
    }
    let n = index.len() * row;
    let mut y = DeviceBuffer::uninit(n)?;
    if n > 0 {
        let (k, r) = (index.len() as i64, row as i64);
        let index = upload_indices("gather indices", index)?;
        launch!(
            MODULE,
            "gather_rows",
            stride_grid(n),
            [x.slice(), index.slice(), &k, &r, y.slice_mut()]
        );
    }
    Ok(y)
}

/// The gradient of [`gather_rows`]: `rows` rows of `row` values, row r the sum (in increasing k,
/// from 0, as the CPU adds) of `g`'s rows k with `index[k] == r`; rows never gathered are 0.
pub fn scatter_rows(
    g: &DeviceBuffer,
    row: usize,
    index: &[usize],
    rows: usize,
) -> Result<DeviceBuffer> {
    if g.len() != index.len() * row {
        return Err(Error::Shape(format!(
            "scatter: {} values for {} rows of {row}",
            g.len(),
            index.len()
        )));
    }
    if let Some(&bad) = index.iter().find(|&&i| i >= rows) {
        return Err(Error::Shape(format!("scatter: row {bad} of {rows}")));
    }
    let n = rows * row;
    if index.is_empty() {
        return DeviceBuffer::zeros(n);
    }
    let mut dx = DeviceBuffer::uninit(n)?;
    if n == 0 {
        return Ok(dx);
    }
    // Per destination row, its sources in increasing k (counting sort), after the row starts:
    // one upload.
    let mut starts = vec![0usize; rows + 1];
    for &i in index {
        starts[i + 1] += 1;
    }
    for r in 0..rows {
        starts[r + 1] += starts[r];
    }
    let mut next = starts.clone();
    let mut table = starts.clone();
    table.resize(rows + 1 + index.len(), 0);
    for (k, &i) in index.iter().enumerate() {
        table[rows + 1 + next[i]] = k;
        next[i] += 1;
    }
    let table = upload_indices("scatter table", &table)?;
    let (head, sources) = (
        table.slice().slice(..rows + 1),
        table.slice().slice(rows + 1..table.len()),
    );
    let (r64, w64) = (rows as i64, row as i64);
    launch!(
        MODULE,
        "scatter_rows",
        stride_grid(n),
        [g.slice(), &head, &sources, &r64, &w64, dx.slice_mut()]
    );
    Ok(dx)
}
