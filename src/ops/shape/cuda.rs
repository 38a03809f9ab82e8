//! Row gathers and concatenation on the GPU: short gathers of distinct rows as device-to-device
//! copies, others through `shape.cu`'s gather and strided copies.

use crate::ops::elementwise::cuda::filled;
use crate::ops::gpu::{buf, expect, resident, tensor};
use crate::ops::shape::launch::Blocks;
use crate::runtime::cuda::profile;
use crate::runtime::cuda::DeviceBuffer;
use crate::tensor::Tensor;

/// Gathers of at most this many distinct rows are copies on the GPU (one copy per row, nothing
/// uploaded); others are one gather kernel, whose indices are uploaded.
const MAX_COPIED_ROWS: usize = 16;

/// No index repeats (a gather whose backward is a plain scatter).
fn distinct(indices: &[usize]) -> bool {
    let mut sorted = indices.to_vec();
    sorted.sort_unstable();
    sorted.windows(2).all(|w| w[0] != w[1])
}

/// Rows `indices` of `x` (each below `x.dim(0)`, checked by the caller) in that order, repeats
/// allowed. The backward adds repeated rows' gradients in index order, as the CPU.
pub(crate) fn index_rows(x: &Tensor, indices: &[usize]) -> Tensor {
    let _p = profile::scope("index_rows");
    let rows = x.dim(0);
    let row = x.numel().checked_div(rows).unwrap_or(0);
    let xs = resident(x);
    let copies = indices.len() <= MAX_COPIED_ROWS && distinct(indices);
    let out = if copies {
        let mut out = expect("index_rows", DeviceBuffer::uninit(indices.len() * row));
        for (k, &i) in indices.iter().enumerate() {
            expect("index_rows", out.copy_from(k * row, buf(&xs), i * row, row));
        }
        out
    } else {
        expect(
            "index_rows",
            crate::ops::shape::launch::gather_rows(buf(&xs), rows, row, indices),
        )
    };
    let mut shape = x.shape().to_vec();
    shape[0] = indices.len();
    let indices = indices.to_vec();
    let in_shape = x.shape().to_vec();
    Tensor::from_device_op(out, &shape, &[x], move |g, _| {
        let what = "index_rows backward";
        let gs = resident(g);
        let d = if copies {
            let mut d = filled(rows * row, 0.0);
            for (k, &i) in indices.iter().enumerate() {
                expect(what, d.copy_from(i * row, buf(&gs), k * row, row));
            }
            d
        } else {
            expect(
                what,
                crate::ops::shape::launch::scatter_rows(buf(&gs), row, &indices, rows),
            )
        };
        vec![Some(tensor(d, &in_shape))]
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
            crate::ops::shape::launch::copy_blocks(buf(t), own, &mut out, place, outer, width),
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
                    let copied = crate::ops::shape::launch::copy_blocks(
                        buf(&gs),
                        *place,
                        &mut d,
                        *own,
                        outer,
                        *width,
                    );
                    expect("concat backward", copied);
                    tensor(d, s)
                })
            })
            .collect()
    })
}
