//! Row gathers and concatenation on the GPU: short gathers of distinct rows as device-to-device
//! copies, others through `kernels/broadcast.cu`'s gather and strided copies.

use super::{buf, expect, filled, resident, tensor};
use crate::backend::cuda::broadcast::{self as bc, Blocks};
use crate::backend::cuda::profile;
use crate::backend::cuda::DeviceBuffer;
use crate::tensor::Tensor;

/// Gathers of at most this many distinct rows are copies on the GPU (one copy per row, nothing
/// uploaded); others are one gather kernel, whose indices are uploaded.
pub(crate) const MAX_COPIED_ROWS: usize = 16;

/// Rows `indices` (distinct) of `x`, in that order.
pub(crate) fn index_rows(x: &Tensor, indices: &[usize]) -> Tensor {
    let _p = profile::scope("index_rows");
    let rows = x.dim(0);
    let row = x.numel().checked_div(rows).unwrap_or(0);
    let xs = resident(x);
    let mut out = expect("index_rows", DeviceBuffer::uninit(indices.len() * row));
    for (k, &i) in indices.iter().enumerate() {
        assert!(i < rows, "index_rows: row {i} of {rows}");
        expect("index_rows", out.copy_from(k * row, buf(&xs), i * row, row));
    }
    let mut shape = x.shape().to_vec();
    shape[0] = indices.len();
    let indices = indices.to_vec();
    let in_shape = x.shape().to_vec();
    Tensor::from_device_op(out, &shape, &[x], move |g, _| {
        let gs = resident(g);
        let mut d = filled(rows * row, 0.0);
        for (k, &i) in indices.iter().enumerate() {
            expect(
                "index_rows backward",
                d.copy_from(i * row, buf(&gs), k * row, row),
            );
        }
        vec![Some(tensor(d, &in_shape))]
    })
}

/// Rows `indices` of `x` in that order, repeats allowed: one gather (the indices uploaded once);
/// the backward adds repeated rows' gradients in index order, as the CPU.
pub(crate) fn gather_rows(x: &Tensor, indices: &[usize]) -> Tensor {
    let _p = profile::scope("index_rows");
    let rows = x.dim(0);
    let row = x.numel().checked_div(rows).unwrap_or(0);
    let xs = resident(x);
    let out = expect("index_rows", bc::gather_rows(buf(&xs), rows, row, indices));
    let mut shape = x.shape().to_vec();
    shape[0] = indices.len();
    let indices = indices.to_vec();
    let in_shape = x.shape().to_vec();
    Tensor::from_device_op(out, &shape, &[x], move |g, _| {
        let gs = resident(g);
        let d = bc::scatter_rows(buf(&gs), row, &indices, rows);
        vec![Some(tensor(expect("index_rows backward", d), &in_shape))]
    })
}

/// Concatenation along axis `axis` of parts that agree on every other axis, into `shape`: each
/// part's slab copied into place (one launch per part), and back in the backward.
pub(crate) fn concat(parts: &[&Tensor], axis: usize, shape: &[usize]) -> Tensor {
    let _p = profile::scope("concat");
    let on_gpu: Vec<Tensor> = parts.iter().map(|t| resident(t)).collect();
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let pitch = shape[axis] * inner;
    let mut out = expect("concat", DeviceBuffer::uninit(outer * pitch));
    // Each part's run: its own rows are contiguous; in the output they start at `at`.
    let mut runs = Vec::with_capacity(parts.len());
    let mut at = 0;
    for t in &on_gpu {
        let width = t.dim(axis) * inner;
        let own = Blocks {
            pitch: width,
            at: 0,
        };
        let place = Blocks { pitch, at };
        expect(
            "concat",
            bc::copy_blocks(buf(t), own, &mut out, place, outer, width),
        );
        runs.push((own, place, width, t.shape().to_vec()));
        at += width;
    }
    Tensor::from_device_op(out, shape, parts, move |g, needs| {
        let gs = resident(g);
        runs.iter()
            .zip(needs)
            .map(|((own, place, width, s), &need)| {
                need.then(|| {
                    let mut d = expect("concat backward", DeviceBuffer::uninit(outer * width));
                    let copied = bc::copy_blocks(buf(&gs), *place, &mut d, *own, outer, *width);
                    expect("concat backward", copied);
                    tensor(d, s)
                })
            })
            .collect()
    })
}
