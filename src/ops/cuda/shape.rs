//! Row gathers and concatenation on the GPU: device-to-device copies of whole rows.

use super::{buf, expect, filled, resident, tensor};
use crate::backend::cuda::profile;
use crate::backend::cuda::DeviceBuffer;
use crate::tensor::Tensor;

/// Gathers of at most this many rows are copies on the GPU (one copy per row); longer ones run
/// on host copies.
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

/// Concatenation along the first axis.
pub(crate) fn concat_rows(parts: &[&Tensor], shape: &[usize]) -> Tensor {
    let _p = profile::scope("concat_rows");
    let on_gpu: Vec<Tensor> = parts.iter().map(|t| resident(t)).collect();
    let total: usize = parts.iter().map(|t| t.numel()).sum();
    let mut out = expect("concat", DeviceBuffer::uninit(total));
    let mut at = 0;
    for t in &on_gpu {
        expect("concat", out.copy_from(at, buf(t), 0, t.numel()));
        at += t.numel();
    }
    let shapes: Vec<Vec<usize>> = parts.iter().map(|t| t.shape().to_vec()).collect();
    Tensor::from_device_op(out, shape, parts, move |g, needs| {
        let gs = resident(g);
        let mut at = 0;
        shapes
            .iter()
            .zip(needs)
            .map(|(s, &need)| {
                let len: usize = s.iter().product();
                let part = need.then(|| {
                    let mut d = expect("concat backward", DeviceBuffer::uninit(len));
                    expect("concat backward", d.copy_from(0, buf(&gs), at, len));
                    tensor(d, s)
                });
                at += len;
                part
            })
            .collect()
    })
}
