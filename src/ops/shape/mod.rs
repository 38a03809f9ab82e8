//! Shape ops: reshape and flatten (views, no copy), concatenation, and row indexing.

pub(crate) mod cuda;
pub mod launch;

use crate::ops::gpu;
use crate::tensor::shape::{numel, resolve_axis};
use crate::tensor::Tensor;

impl Tensor {
    /// The same values under a new shape with as many elements (a view: no copy).
    pub fn reshape(&self, shape: &[usize]) -> Tensor {
        self.view_as(shape)
    }

    /// Keep the first axis, merge the rest: [N, C, H, W] -> [N, C·H·W].
    pub fn flatten(&self) -> Tensor {
        assert!(self.rank() >= 1, "flatten of a scalar");
        self.reshape(&[self.dim(0), numel(&self.shape()[1..])])
    }

    /// Concatenate along `axis`; all other axes must agree.
    pub fn concat(tensors: &[&Tensor], axis: isize) -> Tensor {
        assert!(!tensors.is_empty(), "concat of no tensors");
        let first = tensors[0];
        let a = resolve_axis(axis, first.rank());
        for t in tensors {
            assert!(
                t.rank() == first.rank()
                    && t.shape()[..a] == first.shape()[..a]
                    && t.shape()[a + 1..] == first.shape()[a + 1..],
                "concat along axis {a}: shapes {:?} and {:?} differ elsewhere",
                first.shape(),
                t.shape()
            );
        }
        let outer: usize = first.shape()[..a].iter().product();
        let inner: usize = first.shape()[a + 1..].iter().product();
        let lens: Vec<usize> = tensors.iter().map(|t| t.dim(a)).collect();
        let total: usize = lens.iter().sum();
        let mut shape = first.shape().to_vec();
        shape[a] = total;
        if gpu::on_cuda(tensors) {
            return cuda::concat(tensors, a, &shape);
        }
        let mut out = Vec::with_capacity(outer * total * inner);
        for o in 0..outer {
            for (t, &l) in tensors.iter().zip(&lens) {
                out.extend_from_slice(&t.data()[o * l * inner..(o + 1) * l * inner]);
            }
        }
        let in_shapes: Vec<Vec<usize>> = tensors.iter().map(|t| t.shape().to_vec()).collect();
        Tensor::from_op(out, &shape, tensors, move |g, needs| {
            let gd = g.data();
            let mut grads: Vec<Vec<f32>> = lens
                .iter()
                .map(|&l| Vec::with_capacity(outer * l * inner))
                .collect();
            for o in 0..outer {
                let mut start = o * total * inner;
                for (gi, &l) in grads.iter_mut().zip(&lens) {
                    gi.extend_from_slice(&gd[start..start + l * inner]);
                    start += l * inner;
                }
            }
            grads
                .into_iter()
                .zip(&in_shapes)
                .zip(needs)
                .map(|((gi, s), &need)| need.then(|| Tensor::from_vec(gi, s)))
                .collect()
        })
    }

    /// Rows (entries along the first axis) at `indices`, in that order; repeats allowed.
    pub fn index_rows(&self, indices: &[usize]) -> Tensor {
        assert!(self.rank() >= 1, "index_rows of a scalar");
        let rows = self.dim(0);
        let row_len = self.numel().checked_div(rows).unwrap_or(0);
        if let Some(&bad) = indices.iter().find(|&&i| i >= rows) {
            panic!("index_rows: index {bad} out of range for {rows} rows");
        }
        if self.is_cuda() {
            return cuda::index_rows(self, indices);
        }
        let d = self.data();
        let mut out = Vec::with_capacity(indices.len() * row_len);
        for &i in indices {
            out.extend_from_slice(&d[i * row_len..(i + 1) * row_len]);
        }
        let mut shape = self.shape().to_vec();
        shape[0] = indices.len();
        let in_shape = self.shape().to_vec();
        let indices = indices.to_vec();
        Tensor::from_op(out, &shape, &[self], move |g, _| {
            // Scatter-add: repeated indices accumulate.
            let mut dx = vec![0.0; numel(&in_shape)];
            for (k, &i) in indices.iter().enumerate() {
                let src = &g.data()[k * row_len..(k + 1) * row_len];
                for (d, s) in dx[i * row_len..(i + 1) * row_len].iter_mut().zip(src) {
                    *d += s;
                }
            }
            vec![Some(Tensor::from_vec(dx, &in_shape))]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_and_index_rows() {
        let a = Tensor::from_vec(vec![1., 2., 3., 4.], &[2, 2]);
        let b = Tensor::from_vec(vec![5., 6.], &[2, 1]);
        let c = Tensor::concat(&[&a, &b], 1);
        assert_eq!(c.shape(), &[2, 3]);
        assert_eq!(c.to_vec(), vec![1., 2., 5., 3., 4., 6.]);
        let r = Tensor::concat(&[&a, &a], 0);
        assert_eq!(r.shape(), &[4, 2]);
        assert_eq!(
            a.index_rows(&[1, 1, 0]).to_vec(),
            vec![3., 4., 3., 4., 1., 2.]
        );
        assert_eq!(c.flatten().shape(), &[2, 3]);
        assert_eq!(c.reshape(&[3, 2]).to_vec(), c.to_vec());
    }
}
