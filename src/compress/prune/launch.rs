//! Pruning masks on the device (`compress/prune/prune.cu`), equal to
//! `compress::prune::magnitude_masks`.
//!
//! Unstructured methods select the threshold key by an 8-pass radix selection that stays on the
//! device: the masks equal the CPU's exactly. Structured methods score the units on the device,
//! bit for bit the CPU's scores (each row summed in f64 in the CPU's order), and rank those few
//! scores on the host with the CPU's rules (`select_units`): one copy of the scores down and one
//! of the pruned-unit flags up per call, so the masks equal the CPU's exactly too.

use crate::compress::check_ratio;
use crate::compress::prune::{count, select_units, Magnitude, Scope, Structure, UnitReport};
use crate::runtime::cuda::context::{cuda, grid_1d, CudaBackend};
use crate::runtime::cuda::{DeviceBuffer, DeviceVec};
use crate::{Error, Result};
use cudarc::driver::{CudaView, LaunchConfig};

/// One conv or linear weight on the device, in layer order.
pub struct DeviceWeight<'a> {
    pub values: &'a DeviceBuffer,
    /// `[out, ...]`: rows are output units.
    pub shape: &'a [usize],
    /// The classifier (last linear layer): never pruned by structured methods.
    pub classifier: bool,
}

/// Blocks for a grid-stride walk over `n` values.
fn stride_grid(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 1024) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A pruning computed on the device: one 0/1 mask per weight (same length), and for structured
/// methods the unit counts.
pub struct DevicePruning {
    pub masks: Vec<DeviceBuffer>,
    pub units: Option<UnitReport>,
}

/// 0/1 masks (one per weight, same length) pruning the fraction `ratio` with `method`: the CPU's
/// masks (`compress::prune::magnitude_masks`) exactly.
pub fn prune_masks(
    weights: &[DeviceWeight<'_>],
    method: Magnitude,
    ratio: f64,
) -> Result<DevicePruning> {
    check_ratio(ratio)?;
    for w in weights {
        let n: usize = w.shape.iter().product();
        if n != w.values.len() || w.shape.is_empty() {
            return Err(Error::Shape(format!(
                "weight of shape {:?} holds {} values",
                w.shape,
                w.values.len()
            )));
        }
    }
    let backend = cuda()?;
    match method.structure {
        Structure::Unstructured => Ok(DevicePruning {
            masks: unstructured(backend, weights, method.scope, ratio)?,
            units: None,
        }),
        Structure::Structured => structured(backend, weights, method, ratio),
    }
}

/// The state {prefix, mask, k} of a selection of the `k`-th smallest key.
fn selection_state(k: usize) -> Result<DeviceVec<u64>> {
    DeviceVec::from_host(&[0u64, 0, k as u64])
}

/// Select the `k`-th smallest key over `group` (weights with their position offsets) into
/// `state` by eight 8-bit radix passes.
fn radix_select(
    backend: &CudaBackend,
    group: &[(&DeviceBuffer, u64)],
    state: &mut DeviceVec<u64>,
) -> Result<()> {
    let histogram = backend.function("prune", "radix_histogram")?;
    let mut hist = DeviceVec::<u32>::zeros(256)?;
    for pass in 0..8i32 {
        let shift = 56 - 8 * pass;
        for &(w, offset) in group {
            let (n, offset) = (w.len() as i64, offset as i64);
            let mut b = backend.launch_builder(histogram);
            b.arg(w.slice())
                .arg(&n)
                .arg(&offset)
                .arg(state.slice())
                .arg(&shift)
                .arg(hist.slice_mut());
            // SAFETY: arguments match the kernel's signature; lengths are passed explicitly.
            unsafe { b.launch(stride_grid(w.len())) }?;
        }
        let mut b = backend.launch("prune", "radix_pick")?;
        b.arg(hist.slice_mut()).arg(state.slice_mut()).arg(&shift);
        // SAFETY: as above; one thread.
        unsafe { b.launch(LaunchConfig::for_num_elems(1)) }?;
    }
    Ok(())
}

fn threshold_masks(
    backend: &CudaBackend,
    group: &[(&DeviceBuffer, u64)],
    state: Option<&DeviceVec<u64>>,
) -> Result<Vec<DeviceBuffer>> {
    let kernel = backend.function("prune", "threshold_mask")?;
    group
        .iter()
        .map(|&(w, offset)| {
            let Some(state) = state else {
                return ones(backend, w.len());
            };
            let mut mask = DeviceBuffer::uninit(w.len())?;
            let (n, offset) = (w.len() as i64, offset as i64);
            let mut b = backend.launch_builder(kernel);
            b.arg(w.slice())
                .arg(&n)
                .arg(&offset)
                .arg(state.slice())
                .arg(mask.slice_mut());
            // SAFETY: arguments match the kernel's signature.
            unsafe { b.launch(grid_1d(w.len())) }?;
            Ok(mask)
        })
        .collect()
}

fn ones(backend: &CudaBackend, n: usize) -> Result<DeviceBuffer> {
    let flags = DeviceVec::<i32>::zeros(1)?;
    row_mask(backend, &flags.view(), n, n.max(1))
}

fn row_mask(
    backend: &CudaBackend,
    pruned: &CudaView<'_, i32>,
    n: usize,
    row_len: usize,
) -> Result<DeviceBuffer> {
    let kernel = backend.function("prune", "row_mask")?;
    let mut mask = DeviceBuffer::uninit(n)?;
    let (n64, row) = (n as i64, row_len as i64);
    let mut b = backend.launch_builder(kernel);
    b.arg(pruned).arg(&n64).arg(&row).arg(mask.slice_mut());
    // SAFETY: arguments match the kernel's signature.
    unsafe { b.launch(grid_1d(n)) }?;
    Ok(mask)
}

fn unstructured(
    backend: &CudaBackend,
    weights: &[DeviceWeight<'_>],
    scope: Scope,
    ratio: f64,
) -> Result<Vec<DeviceBuffer>> {
    let total: usize = weights.iter().map(|w| w.values.len()).sum();
    if total as u64 > u32::MAX as u64 {
        return Err(Error::Invalid(format!(
            "pruning supports at most {} weights, the model has {total}",
            u32::MAX
        )));
    }
    match scope {
        Scope::Global => {
            let mut offset = 0u64;
            let group: Vec<(&DeviceBuffer, u64)> = weights
                .iter()
                .map(|w| {
                    let g = (w.values, offset);
                    offset += w.values.len() as u64;
                    g
                })
                .collect();
            let k = count(ratio, total);
            if k == 0 {
                return threshold_masks(backend, &group, None);
            }
            let mut state = selection_state(k)?;
            radix_select(backend, &group, &mut state)?;
            threshold_masks(backend, &group, Some(&state))
        }
        Scope::Local => weights
            .iter()
            .map(|w| {
                let group = [(w.values, 0u64)];
                let k = count(ratio, w.values.len());
                let mut masks = if k == 0 {
                    threshold_masks(backend, &group, None)?
                } else {
                    let mut state = selection_state(k)?;
                    radix_select(backend, &group, &mut state)?;
                    threshold_masks(backend, &group, Some(&state))?
                };
                Ok(masks.remove(0))
            })
            .collect(),
    }
}

fn structured(
    backend: &CudaBackend,
    weights: &[DeviceWeight<'_>],
    method: Magnitude,
    ratio: f64,
) -> Result<DevicePruning> {
    let p: i32 = match method.norm {
        crate::compress::prune::Norm::L1 => 1,
        crate::compress::prune::Norm::L2 => 2,
    };
    let rows: Vec<usize> = weights.iter().map(|w| w.shape[0]).collect();
    // Every layer's unit scores in one buffer (at `starts`), so that they come back in one copy.
    let mut starts = Vec::with_capacity(rows.len() + 1);
    starts.push(0);
    for &r in &rows {
        starts.push(starts.last().copied().unwrap_or(0) + r);
    }
    let total_rows = starts[rows.len()];
    let mut scores = DeviceVec::<f64>::zeros(total_rows)?;
    let kernel = backend.function("prune", "row_norms")?;
    for (t, w) in weights.iter().enumerate() {
        if w.classifier || rows[t] == 0 {
            continue;
        }
        let row_len = (w.values.len() / rows[t]) as i64;
        let n_rows = i32::try_from(rows[t])
            .map_err(|_| Error::Invalid(format!("{} units in one layer", rows[t])))?;
        let mut out = scores.slice_mut().slice_mut(starts[t]..starts[t + 1]);
        let mut b = backend.launch_builder(kernel);
        b.arg(w.values.slice())
            .arg(&n_rows)
            .arg(&row_len)
            .arg(&p)
            .arg(&mut out);
        // SAFETY: arguments match the kernel's signature; one thread per row, `rows` of them.
        unsafe { b.launch(grid_1d(rows[t])) }?;
    }
    let host = scores.to_host()?;
    crate::tensor::transfers::count_download();
    let per_layer: Vec<Option<Vec<f64>>> = weights
        .iter()
        .enumerate()
        .map(|(t, w)| (!w.classifier).then(|| host[starts[t]..starts[t + 1]].to_vec()))
        .collect();
    let (pruned_rows, report) = select_units(&per_layer, &rows, method.scope, ratio);
    // Every layer's pruned-unit flags in one upload, then one mask per layer.
    let flags: Vec<i32> = pruned_rows
        .iter()
        .flatten()
        .map(|&p| i32::from(p))
        .collect();
    let flags = DeviceVec::from_host(&flags)?;
    crate::tensor::transfers::count_upload();
    let masks = weights
        .iter()
        .enumerate()
        .map(|(t, w)| {
            let row_len = w.values.len() / rows[t].max(1);
            let layer_flags = flags
                .slice()
                .slice(starts[t]..starts[t + 1].max(starts[t] + 1));
            row_mask(backend, &layer_flags, w.values.len(), row_len.max(1))
        })
        .collect::<Result<_>>()?;
    Ok(DevicePruning {
        masks,
        units: Some(report),
    })
}

/// `x·mask` elementwise: a pruned weight, or a masked gradient.
pub fn apply_mask(x: &DeviceBuffer, mask: &DeviceBuffer) -> Result<DeviceBuffer> {
    if x.len() != mask.len() {
        return Err(Error::Shape(format!(
            "mask of {} values for a tensor of {}",
            mask.len(),
            x.len()
        )));
    }
    let backend = cuda()?;
    let kernel = backend.function("prune", "apply_mask")?;
    let mut y = DeviceBuffer::uninit(x.len())?;
    let n = x.len() as i64;
    let mut b = backend.launch_builder(kernel);
    b.arg(x.slice())
        .arg(mask.slice())
        .arg(&n)
        .arg(y.slice_mut());
    // SAFETY: arguments match the kernel's signature.
    unsafe { b.launch(grid_1d(x.len())) }?;
    Ok(y)
}
