//! Launch wrappers for `loss.cu`, each matching a CPU reference: `softmax_cross_entropy`, the
//! mean over rows of `lse − z_y`, one warp per row (classes are few), the per-row log-sum-exp
//! kept for the backward (`ops::loss::cross_entropy`), its per-row form for attacks,
//! `log_softmax` with its backward (`ops::loss::log_softmax`), and the margin attack loss
//! (`attack::loss`). Labels live on the device as [`DeviceLabels`], checked against the class
//! count when uploaded.

use crate::ops::elementwise::launch::scale;
use crate::runtime::cuda::buffer::{DeviceBuffer, DeviceVec};
use crate::runtime::cuda::context::grid_1d;
use crate::runtime::cuda::launch::{as_i32, check_len, launch, per_block};
use crate::{Error, Result};
use cudarc::driver::CudaSlice;

/// The kernel module these wrappers launch.
const MODULE: &str = "loss";

/// Class labels on the device (`int`), each checked to lie in `0..classes` when uploaded, so
/// that kernels indexing by label never read out of bounds.
pub struct DeviceLabels {
    pub(crate) values: DeviceVec<i32>,
    pub(crate) len: usize,
    pub(crate) classes: usize,
}

impl DeviceLabels {
    /// Upload `labels`, every one below `classes`.
    pub fn new(labels: &[usize], classes: usize) -> Result<DeviceLabels> {
        as_i32("classes", classes)?;
        if let Some(&bad) = labels.iter().find(|&&y| y >= classes) {
            return Err(Error::Invalid(format!(
                "label {bad} out of range for {classes} classes"
            )));
        }
        // A zero-length allocation is not allowed: an empty set keeps one unused value.
        let mut host: Vec<i32> = labels.iter().map(|&y| y as i32).collect();
        if host.is_empty() {
            host.push(0);
        }
        Ok(DeviceLabels {
            values: DeviceVec::from_host(&host)?,
            len: labels.len(),
            classes,
        })
    }

    /// [`DeviceLabels::new`], shared with the last call that passed the same labels and class
    /// count. A step passes one batch's labels to many ops (the clean loss, every attack
    /// iteration, the certified loss), and each upload from pageable host memory waits for the
    /// stream; one copy per batch is enough.
    pub fn cached(labels: &[usize], classes: usize) -> Result<std::sync::Arc<DeviceLabels>> {
        type Last = Option<(Vec<usize>, usize, std::sync::Arc<DeviceLabels>)>;
        static LAST: std::sync::Mutex<Last> = std::sync::Mutex::new(None);
        let mut last = LAST.lock().expect("label cache lock");
        if let Some((l, c, d)) = last.as_ref() {
            if *c == classes && l.as_slice() == labels {
                return Ok(d.clone());
            }
        }
        let d = std::sync::Arc::new(DeviceLabels::new(labels, classes)?);
        crate::tensor::transfers::count_upload();
        *last = Some((labels.to_vec(), classes, d.clone()));
        Ok(d)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bound the labels were checked against (all are below it).
    pub fn classes(&self) -> usize {
        self.classes
    }

    pub fn slice(&self) -> &CudaSlice<i32> {
        self.values.slice()
    }

    /// These labels fit `rows` samples of `classes` classes.
    pub(crate) fn check(&self, what: &str, rows: usize, classes: usize) -> Result<()> {
        if self.len != rows {
            return Err(Error::Shape(format!(
                "{what}: {rows} samples but {} labels",
                self.len
            )));
        }
        if self.classes > classes {
            return Err(Error::Invalid(format!(
                "{what}: labels checked for {} classes, the data has {classes}",
                self.classes
            )));
        }
        Ok(())
    }
}
// ---------------------------------------------------------------------------------------------
// Margin loss
// ---------------------------------------------------------------------------------------------

/// Sizes of a margin-loss call, checked.
fn margin_dims(
    what: &str,
    logits: &DeviceBuffer,
    rows: usize,
    classes: usize,
    labels: &DeviceLabels,
) -> Result<(i32, i32)> {
    if rows == 0 || classes < 2 {
        return Err(Error::Shape(format!(
            "{what} needs rows and at least two classes, got {rows} × {classes}"
        )));
    }
    let dims = (as_i32("rows", rows)?, as_i32("classes", classes)?);
    check_len(&format!("{what} logits"), logits.len(), rows * classes)?;
    labels.check(what, rows, classes)?;
    Ok(dims)
}

/// max_{j≠y} z_j − z_y of each row of `logits` [rows, classes]: the margin attack loss.
pub fn margin_rows(
    logits: &DeviceBuffer,
    rows: usize,
    classes: usize,
    labels: &DeviceLabels,
) -> Result<DeviceBuffer> {
    let (rows_i, classes_i) = margin_dims("margin loss", logits, rows, classes, labels)?;
    let mut loss = DeviceBuffer::uninit(rows)?;
    launch!(
        MODULE,
        "margin_rows",
        grid_1d(rows),
        [
            logits.slice(),
            labels.slice(),
            &rows_i,
            &classes_i,
            loss.slice_mut()
        ]
    );
    Ok(loss)
}

/// The gradient of [`margin_rows`] for the per-row output gradient `g`: g split evenly among
/// the other classes' maximal logits, −g at the label.
pub fn margin_rows_backward(
    logits: &DeviceBuffer,
    labels: &DeviceLabels,
    g: &DeviceBuffer,
    rows: usize,
    classes: usize,
) -> Result<DeviceBuffer> {
    let (rows_i, classes_i) = margin_dims("margin loss backward", logits, rows, classes, labels)?;
    check_len("margin loss backward gradient", g.len(), rows)?;
    let mut d = DeviceBuffer::uninit(rows * classes)?;
    launch!(
        MODULE,
        "margin_rows_backward",
        grid_1d(rows),
        [
            logits.slice(),
            labels.slice(),
            g.slice(),
            &rows_i,
            &classes_i,
            d.slice_mut()
        ]
    );
    Ok(d)
}

// ---------------------------------------------------------------------------------------------
// Softmax cross-entropy
// ---------------------------------------------------------------------------------------------

/// The mean cross-entropy of a batch and what its backward needs.
pub struct CrossEntropy {
    /// One value: −mean over rows of log softmax(z)_y.
    pub loss: DeviceBuffer,
    /// The log-sum-exp of each row.
    pub lse: DeviceBuffer,
}

/// The row log-sum-exps and each row's log p_y of `logits` [rows, classes] (rows ≥ 1):
/// `softmax_xent_rows`, shared by the mean and the per-sample cross-entropy.
fn xent_rows(
    what: &str,
    logits: &DeviceBuffer,
    rows: usize,
    classes: usize,
    labels: &DeviceLabels,
) -> Result<(DeviceBuffer, DeviceBuffer)> {
    if rows == 0 || classes == 0 {
        return Err(Error::Shape(format!(
            "{what} of an empty batch ({rows} × {classes})"
        )));
    }
    // Sizes below 2³¹ first: then no product of them overflows.
    let (rows_i, classes_i) = warp_rows(what, rows, classes)?;
    check_len(&format!("{what} logits"), logits.len(), rows * classes)?;
    labels.check(what, rows, classes)?;
    let mut lse = DeviceBuffer::uninit(rows)?;
    let mut logp_y = DeviceBuffer::uninit(rows)?;
    launch!(
        MODULE,
        "softmax_xent_rows",
        grid_1d(rows * 32),
        [
            logits.slice(),
            labels.slice(),
            &rows_i,
            &classes_i,
            lse.slice_mut(),
            logp_y.slice_mut()
        ]
    );
    Ok((lse, logp_y))
}

/// Mean cross-entropy of `logits` [rows, classes] against `labels` (rows ≥ 1).
pub fn softmax_cross_entropy(
    logits: &DeviceBuffer,
    rows: usize,
    classes: usize,
    labels: &DeviceLabels,
) -> Result<CrossEntropy> {
    let (lse, logp_y) = xent_rows("softmax_cross_entropy", logits, rows, classes, labels)?;
    let rows_i = as_i32("rows", rows)?;
    let mut loss = DeviceBuffer::uninit(1)?;
    launch!(
        MODULE,
        "softmax_xent_mean",
        per_block(1)?,
        [logp_y.slice(), &rows_i, loss.slice_mut()]
    );
    Ok(CrossEntropy { loss, lse })
}

/// The gradient of the loss with respect to the logits, (softmax − onehot)·g/rows, where
/// `grad_loss` holds the loss's own gradient (one value, 1 for a loss minimised directly).
pub fn softmax_cross_entropy_backward(
    logits: &DeviceBuffer,
    forward: &CrossEntropy,
    labels: &DeviceLabels,
    grad_loss: &DeviceBuffer,
    rows: usize,
    classes: usize,
) -> Result<DeviceBuffer> {
    if rows == 0 || classes == 0 {
        return Err(Error::Shape(format!(
            "softmax_cross_entropy_backward of an empty batch ({rows} × {classes})"
        )));
    }
    let (rows_i, classes_i) = (as_i32("rows", rows)?, as_i32("classes", classes)?);
    check_len(
        "softmax_cross_entropy_backward logits",
        logits.len(),
        rows * classes,
    )?;
    check_len(
        "softmax_cross_entropy_backward lse",
        forward.lse.len(),
        rows,
    )?;
    check_len(
        "softmax_cross_entropy_backward loss gradient",
        grad_loss.len(),
        1,
    )?;
    labels.check("softmax_cross_entropy_backward", rows, classes)?;
    let mut dz = DeviceBuffer::uninit(rows * classes)?;
    launch!(
        MODULE,
        "softmax_xent_backward",
        grid_1d(rows * classes),
        [
            logits.slice(),
            forward.lse.slice(),
            labels.slice(),
            grad_loss.slice(),
            &rows_i,
            &classes_i,
            dz.slice_mut()
        ]
    );
    Ok(dz)
}

/// `(rows, classes)` as the kernels' ints, for one warp per row.
fn warp_rows(what: &str, rows: usize, classes: usize) -> Result<(i32, i32)> {
    let dims = (as_i32("rows", rows)?, as_i32("classes", classes)?);
    as_i32(&format!("{what}: rows × 32 threads"), rows * 32)?;
    Ok(dims)
}

/// The log-softmax of each row of `z` [rows, classes].
pub fn log_softmax(z: &DeviceBuffer, rows: usize, classes: usize) -> Result<DeviceBuffer> {
    let (rows_i, classes_i) = warp_rows("log_softmax", rows, classes)?;
    check_len("log_softmax input", z.len(), rows * classes)?;
    let mut y = DeviceBuffer::uninit(z.len())?;
    if !z.is_empty() {
        launch!(
            MODULE,
            "log_softmax_rows",
            grid_1d(rows * 32),
            [z.slice(), &rows_i, &classes_i, y.slice_mut()]
        );
    }
    Ok(y)
}

/// The gradient of [`log_softmax`] for upstream `g`, from its output `y`: g − softmax·Σg per row.
pub fn log_softmax_backward(
    g: &DeviceBuffer,
    y: &DeviceBuffer,
    rows: usize,
    classes: usize,
) -> Result<DeviceBuffer> {
    let (rows_i, classes_i) = warp_rows("log_softmax_backward", rows, classes)?;
    check_len("log_softmax_backward gradient", g.len(), rows * classes)?;
    check_len("log_softmax_backward output", y.len(), rows * classes)?;
    let mut dz = DeviceBuffer::uninit(y.len())?;
    if !y.is_empty() {
        launch!(
            MODULE,
            "log_softmax_rows_backward",
            grid_1d(rows * 32),
            [g.slice(), y.slice(), &rows_i, &classes_i, dz.slice_mut()]
        );
    }
    Ok(dz)
}

/// Each sample's cross-entropy −log softmax(z)_y ([rows]) with the row log-sum-exps its
/// backward needs.
pub fn softmax_cross_entropy_rows(
    logits: &DeviceBuffer,
    rows: usize,
    classes: usize,
    labels: &DeviceLabels,
) -> Result<(DeviceBuffer, DeviceBuffer)> {
    let (lse, logp_y) = xent_rows("softmax_cross_entropy_rows", logits, rows, classes, labels)?;
    Ok((scale(&logp_y, -1.0)?, lse))
}

/// The gradient of `softmax_cross_entropy_rows` for upstream gradients `grad_rows` ([rows]).
pub fn softmax_cross_entropy_rows_backward(
    logits: &DeviceBuffer,
    lse: &DeviceBuffer,
    labels: &DeviceLabels,
    grad_rows: &DeviceBuffer,
    rows: usize,
    classes: usize,
) -> Result<DeviceBuffer> {
    let (rows_i, classes_i) = (as_i32("rows", rows)?, as_i32("classes", classes)?);
    check_len(
        "softmax_cross_entropy_rows_backward logits",
        logits.len(),
        rows * classes,
    )?;
    check_len("softmax_cross_entropy_rows_backward lse", lse.len(), rows)?;
    check_len(
        "softmax_cross_entropy_rows_backward gradient",
        grad_rows.len(),
        rows,
    )?;
    labels.check("softmax_cross_entropy_rows_backward", rows, classes)?;
    let mut dz = DeviceBuffer::uninit(rows * classes)?;
    if rows * classes > 0 {
        launch!(
            MODULE,
            "softmax_xent_rows_backward",
            grid_1d(rows * classes),
            [
                logits.slice(),
                lse.slice(),
                labels.slice(),
                grad_rows.slice(),
                &rows_i,
                &classes_i,
                dz.slice_mut()
            ]
        );
    }
    Ok(dz)
}
