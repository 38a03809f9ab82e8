//! Launch wrappers for `kernels/train.cu`: what a training step needs on the device besides the
//! bound propagation (`bounds`). Each matches a CPU reference:
//!
//! - element-wise ops on equal-length buffers (`add`, `mul`, `relu`, `abs`, `sign`, `scale`,
//!   `add_scaled`) and their gradients (`ops::elementwise`); no broadcasting;
//! - `softmax_cross_entropy`: the mean over rows of `lse − z_y`, one warp per row (classes are
//!   few), the per-row log-sum-exp kept for the backward (`ops::loss::cross_entropy`), and
//!   `log_softmax` with its backward (`ops::loss::log_softmax`);
//! - batch norm (`ops::norm`, `nn::BatchNorm`): `channel_mean`, the biased `channel_var` and
//!   their joint backward (`batch_stats_backward`), and the normalise-and-affine map
//!   `y = x·scale + shift` (scale = γ/√(var + ε), shift = β − mean·scale) with the gradients of
//!   x, γ, β, mean and var. Statistics are one block per channel with sums in double;
//! - `sum_squares`/`global_norm` (gradient clipping) and `adam_step`, the CPU's fused Adam
//!   update (`train::optim`), bit for bit given the same clipping factor;
//! - `pgd_step`, the signed, projected attack step (`attack::pgd`).
//!
//! Sizes are checked against the buffers before any launch: a mismatch is an `Error::Shape`,
//! never a panic or an out-of-bounds kernel. Labels live on the device as `DeviceLabels`,
//! checked against the class count when uploaded.

use crate::backend::cuda::buffer::{DeviceBuffer, DeviceVec};
use crate::backend::cuda::context::{cuda, grid_1d};
use crate::train::{AdamConfig, WeightDecay};
use crate::{Error, Result};
use cudarc::driver::{CudaSlice, LaunchConfig};

/// Launch `kernels/train.cu`'s kernel `name` on the backend's stream with the given arguments.
macro_rules! launch {
    ($backend:expr, $name:expr, $cfg:expr, [$($arg:expr),* $(,)?]) => {{
        let mut b = $backend.launch("train", $name)?;
        $( b.arg($arg); )*
        // SAFETY: the arguments match the kernel's signature in kernels/train.cu, and the
        // wrappers checked every buffer against the sizes the kernel is given.
        unsafe { b.launch($cfg) }?;
    }};
}

/// `buf` holds exactly `len` values.
pub(crate) fn check_len(what: &str, buf: &DeviceBuffer, len: usize) -> Result<()> {
    if buf.len() != len {
        return Err(Error::Shape(format!(
            "{what}: expected {len} values, the buffer holds {}",
            buf.len()
        )));
    }
    Ok(())
}

/// A size as the kernels' `int`.
pub(crate) fn as_i32(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Shape(format!("{what} = {v} exceeds the kernels' limit")))
}

/// An element count as the kernels' `long long`.
pub(crate) fn as_i64(v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Shape(format!("{v} elements exceed the kernels' limit")))
}

/// One block of 1,024 threads per channel, for the per-channel reductions: with a few dozen
/// channels there are fewer blocks than multiprocessors, and each block's loads are what hides
/// the memory latency (4× as many in flight as with 256 threads).
pub(crate) fn per_channel(channels: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        block_dim: (1024, 1, 1),
        ..per_block(channels)?
    })
}

/// One block of 256 threads per channel (or row).
pub(crate) fn per_block(blocks: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (as_i32("blocks", blocks)? as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Class labels on the device (`int`), each checked to lie in `0..classes` when uploaded, so
/// that kernels indexing by label never read out of bounds.
pub struct DeviceLabels {
    values: DeviceVec<i32>,
    len: usize,
    classes: usize,
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
// Element-wise
// ---------------------------------------------------------------------------------------------

fn same_len(what: &str, a: &DeviceBuffer, b: &DeviceBuffer) -> Result<()> {
    check_len(what, b, a.len())
}

/// f(a, b) element-wise into a new buffer.
fn binary(name: &'static str, a: &DeviceBuffer, b: &DeviceBuffer) -> Result<DeviceBuffer> {
    same_len(name, a, b)?;
    let mut y = DeviceBuffer::uninit(a.len())?;
    if a.is_empty() {
        return Ok(y);
    }
    let backend = cuda()?;
    let n = as_i64(a.len())?;
    launch!(
        backend,
        name,
        grid_1d(a.len()),
        [a.slice(), b.slice(), &n, y.slice_mut()]
    );
    Ok(y)
}

/// f(x) element-wise into a new buffer.
fn unary(name: &'static str, x: &DeviceBuffer) -> Result<DeviceBuffer> {
    let mut y = DeviceBuffer::uninit(x.len())?;
    if x.is_empty() {
        return Ok(y);
    }
    let backend = cuda()?;
    let n = as_i64(x.len())?;
    launch!(
        backend,
        name,
        grid_1d(x.len()),
        [x.slice(), &n, y.slice_mut()]
    );
    Ok(y)
}

/// a + b. Its gradient is the output gradient, for both.
pub fn add(a: &DeviceBuffer, b: &DeviceBuffer) -> Result<DeviceBuffer> {
    binary("ew_add", a, b)
}

/// a · b.
pub fn mul(a: &DeviceBuffer, b: &DeviceBuffer) -> Result<DeviceBuffer> {
    binary("ew_mul", a, b)
}

/// (g·b, g·a): the gradients of a·b.
pub fn mul_backward(
    g: &DeviceBuffer,
    a: &DeviceBuffer,
    b: &DeviceBuffer,
) -> Result<(DeviceBuffer, DeviceBuffer)> {
    same_len("mul_backward a", g, a)?;
    same_len("mul_backward b", g, b)?;
    let (mut da, mut db) = (
        DeviceBuffer::uninit(g.len())?,
        DeviceBuffer::uninit(g.len())?,
    );
    if !g.is_empty() {
        let backend = cuda()?;
        let n = as_i64(g.len())?;
        launch!(
            backend,
            "ew_mul_backward",
            grid_1d(g.len()),
            [
                g.slice(),
                a.slice(),
                b.slice(),
                &n,
                da.slice_mut(),
                db.slice_mut()
            ]
        );
    }
    Ok((da, db))
}

/// max(x, 0).
pub fn relu(x: &DeviceBuffer) -> Result<DeviceBuffer> {
    unary("ew_relu", x)
}

/// g·[x > 0].
pub fn relu_backward(g: &DeviceBuffer, x: &DeviceBuffer) -> Result<DeviceBuffer> {
    binary("ew_relu_backward", g, x)
}

/// |x|.
pub fn abs(x: &DeviceBuffer) -> Result<DeviceBuffer> {
    unary("ew_abs", x)
}

/// g·sign(x).
pub fn abs_backward(g: &DeviceBuffer, x: &DeviceBuffer) -> Result<DeviceBuffer> {
    binary("ew_abs_backward", g, x)
}

/// sign(x) ∈ {−1, 0, 1} (0 for 0 and NaN); its gradient is zero.
pub fn sign(x: &DeviceBuffer) -> Result<DeviceBuffer> {
    unary("ew_sign", x)
}

/// s·x (also the gradient of s·x).
pub fn scale(x: &DeviceBuffer, s: f32) -> Result<DeviceBuffer> {
    unary_with("ew_scale", x, s)
}

/// f(x, s) element-wise for a kernel `name(x, s, n, y)`.
fn unary_with(name: &'static str, x: &DeviceBuffer, s: f32) -> Result<DeviceBuffer> {
    let mut y = DeviceBuffer::uninit(x.len())?;
    if !x.is_empty() {
        let backend = cuda()?;
        let n = as_i64(x.len())?;
        launch!(
            backend,
            name,
            grid_1d(x.len()),
            [x.slice(), &s, &n, y.slice_mut()]
        );
    }
    Ok(y)
}

/// x + s.
pub fn add_scalar(x: &DeviceBuffer, s: f32) -> Result<DeviceBuffer> {
    unary_with("ew_add_scalar", x, s)
}

/// x^p.
pub fn powf(x: &DeviceBuffer, p: f32) -> Result<DeviceBuffer> {
    unary_with("ew_powf", x, p)
}

/// g·p·x^(p−1): the gradient of x^p.
pub fn powf_backward(g: &DeviceBuffer, x: &DeviceBuffer, p: f32) -> Result<DeviceBuffer> {
    same_len("powf_backward", g, x)?;
    let mut dx = DeviceBuffer::uninit(x.len())?;
    if !x.is_empty() {
        let backend = cuda()?;
        let n = as_i64(x.len())?;
        launch!(
            backend,
            "ew_powf_backward",
            grid_1d(x.len()),
            [g.slice(), x.slice(), &p, &n, dx.slice_mut()]
        );
    }
    Ok(dx)
}

/// `len` copies of `v`.
pub fn fill(len: usize, v: f32) -> Result<DeviceBuffer> {
    let mut y = DeviceBuffer::uninit(len)?;
    if len > 0 {
        let backend = cuda()?;
        let n = as_i64(len)?;
        launch!(backend, "ew_fill", grid_1d(len), [y.slice_mut(), &v, &n]);
    }
    Ok(y)
}

/// y ← y + s·x in place.
pub fn add_scaled(y: &mut DeviceBuffer, x: &DeviceBuffer, s: f32) -> Result<()> {
    check_len("add_scaled", x, y.len())?;
    if !x.is_empty() {
        let backend = cuda()?;
        let n = as_i64(x.len())?;
        launch!(
            backend,
            "ew_add_scaled",
            grid_1d(x.len()),
            [y.slice_mut(), x.slice(), &s, &n]
        );
    }
    Ok(())
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
    check_len(&format!("{what} logits"), logits, rows * classes)?;
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
    let backend = cuda()?;
    let mut loss = DeviceBuffer::uninit(rows)?;
    launch!(
        backend,
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
    check_len("margin loss backward gradient", g, rows)?;
    let backend = cuda()?;
    let mut d = DeviceBuffer::uninit(rows * classes)?;
    launch!(
        backend,
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
    check_len(&format!("{what} logits"), logits, rows * classes)?;
    labels.check(what, rows, classes)?;
    let backend = cuda()?;
    let mut lse = DeviceBuffer::uninit(rows)?;
    let mut logp_y = DeviceBuffer::uninit(rows)?;
    launch!(
        backend,
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
    let backend = cuda()?;
    let mut loss = DeviceBuffer::uninit(1)?;
    launch!(
        backend,
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
        logits,
        rows * classes,
    )?;
    check_len("softmax_cross_entropy_backward lse", &forward.lse, rows)?;
    check_len("softmax_cross_entropy_backward loss gradient", grad_loss, 1)?;
    labels.check("softmax_cross_entropy_backward", rows, classes)?;
    let backend = cuda()?;
    let mut dz = DeviceBuffer::uninit(rows * classes)?;
    launch!(
        backend,
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
    check_len("log_softmax input", z, rows * classes)?;
    let mut y = DeviceBuffer::uninit(z.len())?;
    if !z.is_empty() {
        let backend = cuda()?;
        launch!(
            backend,
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
    check_len("log_softmax_backward gradient", g, rows * classes)?;
    check_len("log_softmax_backward output", y, rows * classes)?;
    let mut dz = DeviceBuffer::uninit(y.len())?;
    if !y.is_empty() {
        let backend = cuda()?;
        launch!(
            backend,
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
        logits,
        rows * classes,
    )?;
    check_len("softmax_cross_entropy_rows_backward lse", lse, rows)?;
    check_len(
        "softmax_cross_entropy_rows_backward gradient",
        grad_rows,
        rows,
    )?;
    labels.check("softmax_cross_entropy_rows_backward", rows, classes)?;
    let backend = cuda()?;
    let mut dz = DeviceBuffer::uninit(rows * classes)?;
    if rows * classes > 0 {
        launch!(
            backend,
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

// ---------------------------------------------------------------------------------------------
// Batch norm
// ---------------------------------------------------------------------------------------------

/// A tensor [batch, channels, ...] read as batch × channels × spatial (the product of the
/// trailing axes; 1 for [N, C]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelDims {
    pub batch: usize,
    pub channels: usize,
    pub spatial: usize,
}

impl ChannelDims {
    /// [N, C, ...] of `shape` (rank ≥ 2).
    pub fn of_shape(shape: &[usize]) -> Result<ChannelDims> {
        if shape.len() < 2 {
            return Err(Error::Shape(format!(
                "per-channel op needs [N, C, ...], got {shape:?}"
            )));
        }
        Ok(ChannelDims {
            batch: shape[0],
            channels: shape[1],
            spatial: shape[2..].iter().product(),
        })
    }

    /// batch·channels·spatial (saturating: an impossible size then fails the length checks
    /// instead of overflowing).
    pub fn numel(&self) -> usize {
        self.batch
            .saturating_mul(self.channels)
            .saturating_mul(self.spatial)
    }

    /// Values per channel.
    pub fn count(&self) -> usize {
        self.batch.saturating_mul(self.spatial)
    }

    /// (n as int, channels as int, spatial as long long) for the kernels, checking the sizes.
    pub(crate) fn kernel_args(&self, what: &str) -> Result<(i32, i32, i64)> {
        as_i64(self.numel())?;
        Ok((
            as_i32(&format!("{what}: batch"), self.batch)?,
            as_i32(&format!("{what}: channels"), self.channels)?,
            as_i64(self.spatial)?,
        ))
    }
}

/// Per-channel values (statistics, parameters) are `channels` long.
fn check_channel_vec(what: &str, buf: &DeviceBuffer, dims: ChannelDims) -> Result<()> {
    check_len(what, buf, dims.channels)
}

/// Statistics of nothing are undefined: the CPU divides by zero (NaN); refuse instead.
fn check_nonempty(what: &str, dims: ChannelDims) -> Result<()> {
    if dims.count() == 0 || dims.channels == 0 {
        return Err(Error::Shape(format!(
            "{what}: no values per channel in {dims:?}"
        )));
    }
    Ok(())
}

/// Mean over every axis but the channel axis: [N, C, ...] -> [C].
pub fn channel_mean(x: &DeviceBuffer, dims: ChannelDims) -> Result<DeviceBuffer> {
    check_nonempty("channel_mean", dims)?;
    check_len("channel_mean input", x, dims.numel())?;
    let (n, c, s) = dims.kernel_args("channel_mean")?;
    let backend = cuda()?;
    let mut mean = DeviceBuffer::uninit(dims.channels)?;
    launch!(
        backend,
        "channel_mean",
        per_channel(dims.channels)?,
        [x.slice(), &n, &c, &s, mean.slice_mut()]
    );
    Ok(mean)
}

/// Biased variance per channel about `mean` (`channel_mean` of the same x).
pub fn channel_var(
    x: &DeviceBuffer,
    mean: &DeviceBuffer,
    dims: ChannelDims,
) -> Result<DeviceBuffer> {
    check_nonempty("channel_var", dims)?;
    check_len("channel_var input", x, dims.numel())?;
    check_channel_vec("channel_var mean", mean, dims)?;
    let (n, c, s) = dims.kernel_args("channel_var")?;
    let backend = cuda()?;
    let mut var = DeviceBuffer::uninit(dims.channels)?;
    launch!(
        backend,
        "channel_var",
        per_channel(dims.channels)?,
        [x.slice(), mean.slice(), &n, &c, &s, var.slice_mut()]
    );
    Ok(var)
}

/// The gradient with respect to x of `mean = channel_mean(x)` and `var = channel_var(x, mean)`
/// together, given the gradients of the loss with respect to both (zeros for one that the loss
/// does not use): the path through `mean` into `var` included.
pub fn batch_stats_backward(
    x: &DeviceBuffer,
    mean: &DeviceBuffer,
    grad_mean: &DeviceBuffer,
    grad_var: &DeviceBuffer,
    dims: ChannelDims,
) -> Result<DeviceBuffer> {
    check_nonempty("batch_stats_backward", dims)?;
    check_len("batch_stats_backward input", x, dims.numel())?;
    check_channel_vec("batch_stats_backward mean", mean, dims)?;
    check_channel_vec("batch_stats_backward mean gradient", grad_mean, dims)?;
    check_channel_vec("batch_stats_backward variance gradient", grad_var, dims)?;
    let (n, c, s) = dims.kernel_args("batch_stats_backward")?;
    let total = as_i64(dims.numel())?;
    let backend = cuda()?;
    let mut dmean_total = DeviceBuffer::uninit(dims.channels)?;
    launch!(
        backend,
        "batch_stats_backward_mean",
        per_channel(dims.channels)?,
        [
            x.slice(),
            mean.slice(),
            grad_mean.slice(),
            grad_var.slice(),
            &n,
            &c,
            &s,
            dmean_total.slice_mut()
        ]
    );
    let mut dx = DeviceBuffer::uninit(dims.numel())?;
    launch!(
        backend,
        "batch_stats_backward",
        grid_1d(dims.numel()),
        [
            x.slice(),
            mean.slice(),
            dmean_total.slice(),
            grad_var.slice(),
            &total,
            &c,
            &s,
            dx.slice_mut()
        ]
    );
    Ok(dx)
}

/// The per-channel parameters of batch norm's affine map.
#[derive(Clone, Copy)]
pub struct BatchNormParams<'a> {
    pub mean: &'a DeviceBuffer,
    pub var: &'a DeviceBuffer,
    pub gamma: &'a DeviceBuffer,
    pub beta: &'a DeviceBuffer,
    pub eps: f32,
}

impl BatchNormParams<'_> {
    fn check(&self, what: &str, dims: ChannelDims) -> Result<()> {
        check_channel_vec(&format!("{what} mean"), self.mean, dims)?;
        check_channel_vec(&format!("{what} var"), self.var, dims)?;
        check_channel_vec(&format!("{what} weight"), self.gamma, dims)?;
        check_channel_vec(&format!("{what} bias"), self.beta, dims)?;
        if self.eps.is_nan() || self.eps < 0.0 {
            return Err(Error::Invalid(format!("{what}: eps {} < 0", self.eps)));
        }
        Ok(())
    }
}

/// Batch norm's map y = x·scale + shift per channel, scale = γ/√(var + ε) and
/// shift = β − mean·scale (the CPU's `BatchNorm::affine` then `channel_affine`).
pub fn batch_norm_affine(
    x: &DeviceBuffer,
    params: BatchNormParams<'_>,
    dims: ChannelDims,
) -> Result<DeviceBuffer> {
    check_len("batch_norm_affine input", x, dims.numel())?;
    params.check("batch_norm_affine", dims)?;
    let mut y = DeviceBuffer::uninit(dims.numel())?;
    if dims.numel() == 0 {
        return Ok(y);
    }
    let (_, c, s) = dims.kernel_args("batch_norm_affine")?;
    let total = as_i64(dims.numel())?;
    let backend = cuda()?;
    launch!(
        backend,
        "batch_norm_affine",
        grid_1d(dims.numel()),
        [
            x.slice(),
            params.mean.slice(),
            params.var.slice(),
            params.gamma.slice(),
            params.beta.slice(),
            &params.eps,
            &total,
            &c,
            &s,
            y.slice_mut()
        ]
    );
    Ok(y)
}

/// Gradients of `batch_norm_affine` with respect to each of its inputs.
pub struct BatchNormAffineGrads {
    pub input: DeviceBuffer,
    pub gamma: DeviceBuffer,
    pub beta: DeviceBuffer,
    /// With respect to the statistics as inputs: feed them to `batch_stats_backward` when
    /// they are the batch's own.
    pub mean: DeviceBuffer,
    pub var: DeviceBuffer,
}

/// The input's gradient alone of `batch_norm_affine` (g·scale), for when the parameters and
/// statistics need none (attacks, whose weights are constants): no per-channel reductions.
pub fn batch_norm_affine_backward_input(
    grad: &DeviceBuffer,
    params: BatchNormParams<'_>,
    dims: ChannelDims,
) -> Result<DeviceBuffer> {
    check_nonempty("batch_norm_affine_backward", dims)?;
    check_len("batch_norm_affine_backward gradient", grad, dims.numel())?;
    params.check("batch_norm_affine_backward", dims)?;
    let (_, c, s) = dims.kernel_args("batch_norm_affine_backward")?;
    let total = as_i64(dims.numel())?;
    let backend = cuda()?;
    let mut input = DeviceBuffer::uninit(dims.numel())?;
    launch!(
        backend,
        "batch_norm_affine_backward_input",
        grid_1d(dims.numel()),
        [
            grad.slice(),
            params.var.slice(),
            params.gamma.slice(),
            &params.eps,
            &total,
            &c,
            &s,
            input.slice_mut()
        ]
    );
    Ok(input)
}

/// The backward of `batch_norm_affine` for the output gradient `grad`.
pub fn batch_norm_affine_backward(
    x: &DeviceBuffer,
    grad: &DeviceBuffer,
    params: BatchNormParams<'_>,
    dims: ChannelDims,
) -> Result<BatchNormAffineGrads> {
    check_nonempty("batch_norm_affine_backward", dims)?;
    check_len("batch_norm_affine_backward input", x, dims.numel())?;
    check_len("batch_norm_affine_backward gradient", grad, dims.numel())?;
    params.check("batch_norm_affine_backward", dims)?;
    let (n, c, s) = dims.kernel_args("batch_norm_affine_backward")?;
    let backend = cuda()?;
    let input = batch_norm_affine_backward_input(grad, params, dims)?;
    let ch = dims.channels;
    let (mut gamma, mut beta) = (DeviceBuffer::uninit(ch)?, DeviceBuffer::uninit(ch)?);
    let (mut mean, mut var) = (DeviceBuffer::uninit(ch)?, DeviceBuffer::uninit(ch)?);
    launch!(
        backend,
        "batch_norm_affine_backward_params",
        per_channel(ch)?,
        [
            x.slice(),
            grad.slice(),
            params.mean.slice(),
            params.var.slice(),
            params.gamma.slice(),
            &params.eps,
            &n,
            &c,
            &s,
            gamma.slice_mut(),
            beta.slice_mut(),
            mean.slice_mut(),
            var.slice_mut()
        ]
    );
    Ok(BatchNormAffineGrads {
        input,
        gamma,
        beta,
        mean,
        var,
    })
}

// ---------------------------------------------------------------------------------------------
// Gradient norm and Adam
// ---------------------------------------------------------------------------------------------

/// Partial sums per buffer: one per 1024 values, at most 256 (a fixed count for a length, so
/// the sum is deterministic).
fn partial_blocks(len: usize) -> usize {
    len.div_ceil(1024).clamp(1, 256)
}

/// Σ x² over all the buffers, accumulated in double (waits for the result).
pub fn sum_squares(buffers: &[&DeviceBuffer]) -> Result<f64> {
    let live: Vec<&DeviceBuffer> = buffers.iter().copied().filter(|b| !b.is_empty()).collect();
    if live.is_empty() {
        return Ok(0.0);
    }
    let total: usize = live.iter().map(|b| partial_blocks(b.len())).sum();
    let total_i = as_i32("partial sums", total)?;
    let backend = cuda()?;
    let mut partial = DeviceVec::<f64>::zeros(total)?;
    let mut out = DeviceVec::<f64>::zeros(1)?;
    let mut offset = 0usize;
    for b in live {
        let blocks = partial_blocks(b.len());
        let n = as_i64(b.len())?;
        let off = as_i32("partial sums", offset)?;
        launch!(
            backend,
            "sum_squares_partial",
            per_block(blocks)?,
            [b.slice(), &n, partial.slice_mut(), &off]
        );
        offset += blocks;
    }
    launch!(
        backend,
        "sum_doubles",
        per_block(1)?,
        [partial.slice(), &total_i, out.slice_mut()]
    );
    Ok(out.to_host()?[0])
}

/// The global l2 norm of the buffers, as the CPU optimiser computes it (√ of the double sum).
pub fn global_norm(buffers: &[&DeviceBuffer]) -> Result<f32> {
    Ok(sum_squares(buffers)?.sqrt() as f32)
}

/// The factor that clips gradients of global norm `grad_norm` to `max_grad_norm` (1 when
/// within it), as the CPU optimiser; an error for a non-finite norm (the step must not run).
pub fn clip_scale(grad_norm: f32, max_grad_norm: Option<f32>) -> Result<f32> {
    if !grad_norm.is_finite() {
        return Err(Error::Invalid(
            "non-finite gradient (NaN or infinity): the step was not applied".into(),
        ));
    }
    Ok(match max_grad_norm {
        Some(max) if grad_norm > max => max / (grad_norm + 1e-6),
        _ => 1.0,
    })
}

/// One Adam update of `param` in place, with its moments `m` and `v` (zeros before the first
/// step), as the CPU's `Adam::step`: `step` is the 1-based count of this update and
/// `grad_scale` the clipping factor (`clip_scale`, or 1).
pub fn adam_step(
    param: &mut DeviceBuffer,
    grad: &DeviceBuffer,
    m: &mut DeviceBuffer,
    v: &mut DeviceBuffer,
    config: &AdamConfig,
    step: u64,
    grad_scale: f32,
) -> Result<()> {
    let len = param.len();
    check_len("adam_step gradient", grad, len)?;
    check_len("adam_step first moment", m, len)?;
    check_len("adam_step second moment", v, len)?;
    let t = i32::try_from(step)
        .ok()
        .filter(|&t| t >= 1)
        .ok_or_else(|| Error::Invalid(format!("adam_step: step {step} is not in 1..2^31")))?;
    if len == 0 {
        return Ok(());
    }
    let c = *config;
    // The host-side scalars exactly as `Adam::step` computes them.
    let step_size = c.lr / (1.0 - c.beta1.powi(t));
    let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
    let (l2, shrink) = match c.decay {
        WeightDecay::L2 => (c.weight_decay, 1.0f32),
        WeightDecay::Decoupled => (0.0, 1.0 - c.lr * c.weight_decay),
    };
    let (one_minus_b1, one_minus_b2) = (1.0 - c.beta1, 1.0 - c.beta2);
    let n = as_i64(len)?;
    let backend = cuda()?;
    launch!(
        backend,
        "adam_step",
        grid_1d(len),
        [
            param.slice_mut(),
            grad.slice(),
            m.slice_mut(),
            v.slice_mut(),
            &n,
            &grad_scale,
            &l2,
            &shrink,
            &c.beta1,
            &one_minus_b1,
            &c.beta2,
            &one_minus_b2,
            &step_size,
            &bias2_sqrt,
            &c.eps
        ]
    );
    Ok(())
}

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
    check_len("pgd_step gradient", grad, len)?;
    check_len("pgd_step lower bounds", lo, len)?;
    check_len("pgd_step upper bounds", hi, len)?;
    if len == 0 {
        return Ok(());
    }
    let n = as_i64(len)?;
    let backend = cuda()?;
    launch!(
        backend,
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
    check_len("pgd_keep_best points", x, best.x.len())?;
    check_len("pgd_keep_best logits", logits, rows * classes)?;
    check_len("pgd_keep_best losses", loss, rows)?;
    labels.check("pgd_keep_best", rows, classes)?;
    let backend = cuda()?;
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
        backend,
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
