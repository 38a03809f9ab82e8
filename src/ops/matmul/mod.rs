//! Matrix products on the packed GEMM: `matmul` and the fused `linear` layer (x·Wᵀ + b).
//! Backward products read transposed operands through strides, never through copies.

pub(crate) mod cuda;
pub mod launch;

use crate::ops::gpu;
use crate::runtime::cpu::gemm::{matmul_into, MatRef};
use crate::tensor::Tensor;

fn mat(t: &Tensor) -> MatRef<'_> {
    MatRef::row_major(t.data(), t.dim(0), t.dim(1))
}

/// out[m×n] = a · b for any strided views.
fn product(a: MatRef<'_>, b: MatRef<'_>) -> Vec<f32> {
    let mut out = vec![0.0; a.rows * b.cols];
    matmul_into(&mut out, b.cols, a, b, false, true);
    out
}

impl Tensor {
    /// [m, k] · [k, n] -> [m, n].
    pub fn matmul(&self, other: &Tensor) -> Tensor {
        assert!(
            self.rank() == 2 && other.rank() == 2 && self.dim(1) == other.dim(0),
            "matmul: {:?} · {:?}",
            self.shape(),
            other.shape()
        );
        if gpu::on_cuda(&[self, other]) {
            return cuda::matmul_op(self, other);
        }
        let out = product(mat(self), mat(other));
        let (a, b) = (self.detach(), other.detach());
        Tensor::from_op(
            out,
            &[self.dim(0), other.dim(1)],
            &[self, other],
            move |g, needs| {
                let gm = mat(g);
                vec![
                    needs[0].then(|| Tensor::from_vec(product(gm, mat(&b).t()), a.shape())),
                    needs[1].then(|| Tensor::from_vec(product(mat(&a).t(), gm), b.shape())),
                ]
            },
        )
    }

    /// A fully connected layer: x [n, in] · weightᵀ [in, out] + bias [out].
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
        assert!(
            self.rank() == 2 && weight.rank() == 2 && self.dim(1) == weight.dim(1),
            "linear: input {:?} with weight {:?}",
            self.shape(),
            weight.shape()
        );
        let (n, out_features) = (self.dim(0), weight.dim(0));
        if let Some(b) = bias {
            assert_eq!(b.shape(), &[out_features], "linear: bias shape");
        }
        if gpu::on_cuda(&[self, weight]) || bias.is_some_and(Tensor::is_cuda) {
            return cuda::linear(self, weight, bias);
        }
        let mut out = vec![0.0; n * out_features];
        if let Some(b) = bias {
            assert_eq!(b.shape(), &[out_features], "linear: bias shape");
            for row in out.chunks_mut(out_features) {
                row.copy_from_slice(b.data());
            }
        }
        matmul_into(
            &mut out,
            out_features,
            mat(self),
            mat(weight).t(),
            bias.is_some(),
            true,
        );
        let (x, w) = (self.detach(), weight.detach());
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        Tensor::from_op(out, &[n, out_features], &inputs, move |g, needs| {
            let gm = mat(g);
            let mut grads = vec![
                needs[0].then(|| Tensor::from_vec(product(gm, mat(&w)), x.shape())),
                needs[1].then(|| Tensor::from_vec(product(gm.t(), mat(&x)), w.shape())),
            ];
            if needs.len() == 3 {
                grads.push(needs[2].then(|| {
                    let mut db = vec![0.0; out_features];
                    for row in g.data().chunks(out_features) {
                        for (d, v) in db.iter_mut().zip(row) {
                            *d += v;
                        }
                    }
                    Tensor::from_vec(db, &[out_features])
                }));
            }
            grads
        })
    }
}
