//! Launch wrappers for `pgd.cu`: the signed, projected attack step and the best points kept
//! per sample on the device (`attack::pgd`).

use crate::ops::elementwise::launch::fill;
use crate::ops::loss::launch::DeviceLabels;
use crate::runtime::cuda::buffer::DeviceBuffer;
use crate::runtime::cuda::context::grid_1d;
use crate::runtime::cuda::launch::{as_i32, as_i64, check_len, launch};
use crate::{Error, Result};
use cudarc::driver::LaunchConfig;

/// The kernel module these wrappers launch.
const MODULE: &str = "pgd";

// ---------------------------------------------------------------------------------------------
// PGD
// ---------------------------------------------------------------------------------------------

/// x ← clamp(x + step·sign(g), lo, hi) in place; a zero or NaN gradient entry adds nothing.
pub fn pgd_step(
    x: &mut DeviceBuffer,
    grad: &DeviceBuffer,
    lo: &DeviceBuffer,
    hi: &DeviceBuffer,
    step: f32,
) -> Result<()> {
    let len = x.len();
    check_len("pgd_step gradient", grad.len(), len)?;
    check_len("pgd_step lower bounds", lo.len(), len)?;
    check_len("pgd_step upper bounds", hi.len(), len)?;
    if len == 0 {
        return Ok(());
    }
    let n = as_i64(len)?;
    launch!(
        MODULE,
        "pgd_step",
        grid_1d(len),
        [
            x.slice_mut(),
            grad.slice(),
            lo.slice(),
            hi.slice(),
            &step,
            &n
        ]
    );
    Ok(())
}

/// PGD's best points so far, on the device: per sample the highest attack loss seen, the point
/// that reached it, and whether any point was misclassified (see [`pgd_keep_best`]).
pub struct PgdBest {
    pub x: DeviceBuffer,
    pub loss: DeviceBuffer,
    /// 0 or 1 per sample.
    pub fooled: DeviceBuffer,
    rows: usize,
    row_len: usize,
}

impl PgdBest {
    /// `start` (`rows` samples, taken over as the best points' buffer), with losses −∞ and
    /// nothing fooled yet.
    pub fn new(start: DeviceBuffer, rows: usize) -> Result<PgdBest> {
        if rows == 0 || !start.len().is_multiple_of(rows) {
            return Err(Error::Shape(format!(
                "PGD best points: {} values in {rows} rows",
                start.len()
            )));
        }
        Ok(PgdBest {
            row_len: start.len() / rows,
            x: start,
            loss: fill(rows, f32::NEG_INFINITY)?,
            fooled: fill(rows, 0.0)?,
            rows,
        })
    }
}

/// Offer the points `x` (the best's shape) with their `logits` `[rows, classes]` and per-sample
/// attack `loss`: every misclassified sample is marked fooled; with `keep`, a sample whose loss
/// beats its best takes the point. The CPU's `Best::offer` (first-maximum argmax, strict `>`).
pub fn pgd_keep_best(
    best: &mut PgdBest,
    x: &DeviceBuffer,
    logits: &DeviceBuffer,
    loss: &DeviceBuffer,
    labels: &DeviceLabels,
    keep: bool,
) -> Result<()> {
    let rows = best.rows;
    let classes = labels.classes;
    check_len("pgd_keep_best points", x.len(), best.x.len())?;
    check_len("pgd_keep_best logits", logits.len(), rows * classes)?;
    check_len("pgd_keep_best losses", loss.len(), rows)?;
    labels.check("pgd_keep_best", rows, classes)?;
    let cfg = LaunchConfig {
        grid_dim: (as_i32("PGD samples", rows)? as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let (classes_i, row_len, keep_i) = (
        as_i32("classes", classes)?,
        as_i64(best.row_len)?,
        i32::from(keep),
    );
    launch!(
        MODULE,
        "pgd_keep_best",
        cfg,
        [
            x.slice(),
            logits.slice(),
            loss.slice(),
            labels.slice(),
            &classes_i,
            &row_len,
            &keep_i,
            best.x.slice_mut(),
            best.loss.slice_mut(),
            best.fooled.slice_mut(),
        ]
    );
    Ok(())
}
