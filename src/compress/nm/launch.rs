//! N:M masks on the device (`compress/nm/nm.cu`), bit-identical to the CPU's
//! (`compress::nm::nm_mask`).

use crate::compress::nm::MAX_M;
use crate::runtime::cuda::buffer::DeviceBuffer;
use crate::runtime::cuda::context::grid_1d;
use crate::runtime::cuda::launch::{as_i32, as_i64, check_len, launch};
use crate::{Error, Result};

/// The kernel module these wrappers launch.
const MODULE: &str = "nm";

/// The 0/1 N:M mask of `values` (`rows` rows of `row_len`), one thread per group.
pub fn nm_mask(
    values: &DeviceBuffer,
    rows: usize,
    row_len: usize,
    n: usize,
    m: usize,
) -> Result<DeviceBuffer> {
    if !((1..m).contains(&n) && m <= MAX_M) {
        return Err(Error::Invalid(format!(
            "N:M sparsity needs 1 ≤ N < M ≤ {MAX_M}, got {n}:{m}"
        )));
    }
    let len = rows
        .checked_mul(row_len)
        .ok_or_else(|| Error::Shape(format!("{rows} rows of {row_len} weights")))?;
    check_len("nm_mask weights", values.len(), len)?;
    let mut mask = DeviceBuffer::uninit(len)?;
    let groups = rows * row_len.div_ceil(m);
    if groups == 0 {
        return Ok(mask);
    }
    let (row_len, n, m, groups64) = (
        as_i64(row_len)?,
        as_i32("N", n)?,
        as_i32("M", m)?,
        as_i64(groups)?,
    );
    launch!(
        MODULE,
        "nm_mask",
        grid_1d(groups),
        [
            values.slice(),
            &row_len,
            &n,
            &m,
            &groups64,
            mask.slice_mut()
        ]
    );
    Ok(mask)
}
