//! Element-wise ops: unary maps, scalar arithmetic, and binary ops with NumPy broadcasting.

pub(crate) mod cuda;
pub mod launch;

use crate::ops::elementwise::launch::MapOp;
use crate::ops::gpu;
use crate::runtime::cpu::parallel::{self, zip3_map, zip_map};
use crate::tensor::shape::{broadcast_shapes, broadcast_strides, numel, strides};
use crate::tensor::{Device, Tensor};

/// A unary op whose gradient is `g * dfdx(x)` (derivatives are recomputed from the input, which
/// is cheaper than keeping the output alive). `gpu`: the same map and derivative on the device,
/// with its parameters, for an input on the GPU (the ops with kernels of their own dispatch
/// before calling this).
fn unary_or_gpu(
    (name, gpu, params): (&'static str, [MapOp; 2], (f32, f32)),
    x: &Tensor,
    f: impl Fn(f32) -> f32 + Sync,
    dfdx: impl Fn(f32) -> f32 + Send + Sync + 'static,
) -> Tensor {
    if x.is_cuda() {
        return cuda::unary_map(name, x, gpu, params);
    }
    unary(x, f, dfdx)
}

/// [`unary_or_gpu`] on the CPU.
fn unary(
    x: &Tensor,
    f: impl Fn(f32) -> f32 + Sync,
    dfdx: impl Fn(f32) -> f32 + Send + Sync + 'static,
) -> Tensor {
    let out = parallel::map(x.data(), f);
    let saved = x.detach();
    Tensor::from_op(out, x.shape(), &[x], move |g, _| {
        let d = zip_map(g.data(), saved.data(), |g, x| g * dfdx(x));
        vec![Some(Tensor::from_vec(d, saved.shape()))]
    })
}

/// Evaluate `f` over the broadcast of `a` and `b`.
fn broadcast_eval(
    a: &Tensor,
    b: &Tensor,
    out_shape: &[usize],
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Vec<f32> {
    if a.shape() == b.shape() {
        return zip_map(a.data(), b.data(), f);
    }
    if b.numel() == 1 {
        let s = b.data()[0];
        return parallel::map(a.data(), |x| f(x, s));
    }
    if a.numel() == 1 {
        let s = a.data()[0];
        return parallel::map(b.data(), |y| f(s, y));
    }
    let sa = broadcast_strides(a.shape(), out_shape);
    let sb = broadcast_strides(b.shape(), out_shape);
    let (ad, bd) = (a.data(), b.data());
    let rank = out_shape.len();
    let last = out_shape[rank - 1];
    let outer_shape = &out_shape[..rank - 1];
    let outer_strides = strides(outer_shape);
    let mut out = vec![0.0; numel(out_shape)];
    parallel::for_each_row(&mut out, last, |row, o| {
        let (mut oa, mut ob) = (0, 0);
        let mut rem = row;
        for (ax, &st) in outer_strides.iter().enumerate() {
            let i = rem / st;
            rem %= st;
            oa += i * sa[ax];
            ob += i * sb[ax];
        }
        let (la, lb) = (sa[rank - 1], sb[rank - 1]);
        for (j, o) in o.iter_mut().enumerate() {
            *o = f(ad[oa + j * la], bd[ob + j * lb]);
        }
    });
    out
}

/// Sum a gradient of shape `from` down to `to` (the inverse of broadcasting `to` to `from`).
pub(crate) fn sum_to_shape(g: &[f32], from: &[usize], to: &[usize]) -> Vec<f32> {
    if from == to {
        return g.to_vec();
    }
    let mut out = vec![0.0; numel(to)];
    if numel(to) == 1 {
        out[0] = g.iter().sum();
        return out;
    }
    let st = broadcast_strides(to, from);
    let fs = strides(from);
    for (i, &v) in g.iter().enumerate() {
        let mut rem = i;
        let mut o = 0;
        for (ax, &s) in fs.iter().enumerate() {
            o += (rem / s) * st[ax];
            rem %= s;
        }
        out[o] += v;
    }
    out
}

/// Broadcast `x` to `shape` (materialised).
pub(crate) fn broadcast_to(x: &Tensor, shape: &[usize]) -> Vec<f32> {
    broadcast_eval(&Tensor::zeros(shape), x, shape, |_, v| v)
}

/// A binary op with broadcasting; `da`/`db` give ∂out/∂a and ∂out/∂b at (a, b). `gpu` names
/// the same op and derivatives for the device's map (`ops::elementwise::launch::map`), used when an
/// operand lives on the GPU.
fn binary(
    (name, gpu): (&'static str, [MapOp; 3]),
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(f32, f32) -> f32 + Sync,
    da: impl Fn(f32, f32) -> f32 + Send + Sync + 'static,
    db: impl Fn(f32, f32) -> f32 + Send + Sync + 'static,
) -> Tensor {
    if gpu::on_cuda(&[a, b]) {
        return cuda::broadcast_binary(name, a, b, gpu);
    }
    let out_shape = broadcast_shapes(a.shape(), b.shape()).unwrap_or_else(|e| panic!("{e}"));
    let out = broadcast_eval(a, b, &out_shape, f);
    let (sa, sb) = (a.detach(), b.detach());
    let shape = out_shape.clone();
    Tensor::from_op(out, &out_shape, &[a, b], move |g, needs| {
        let full_a = Tensor::from_vec(broadcast_to(&sa, &shape), &shape);
        let full_b = Tensor::from_vec(broadcast_to(&sb, &shape), &shape);
        let grad = |d: &(dyn Fn(f32, f32) -> f32 + Sync), target: &Tensor| {
            let full = zip3_map(g.data(), full_a.data(), full_b.data(), |g, x, y| {
                g * d(x, y)
            });
            Tensor::from_vec(sum_to_shape(&full, &shape, target.shape()), target.shape())
        };
        vec![
            needs[0].then(|| grad(&da, &sa)),
            needs[1].then(|| grad(&db, &sb)),
        ]
    })
}

/// Same-shape binary ops with an operand on the GPU have kernels of their own (broadcasts run
/// through the device's shape-general map).
fn same_shape_on_cuda(a: &Tensor, b: &Tensor) -> bool {
    a.shape() == b.shape() && gpu::on_cuda(&[a, b])
}

impl Tensor {
    pub fn add(&self, other: &Tensor) -> Tensor {
        if same_shape_on_cuda(self, other) {
            return cuda::add_scaled(self, other, 1.0);
        }
        let gpu = [MapOp::Add, MapOp::GOne, MapOp::GOne];
        binary(
            ("add", gpu),
            self,
            other,
            |a, b| a + b,
            |_, _| 1.0,
            |_, _| 1.0,
        )
    }

    pub fn sub(&self, other: &Tensor) -> Tensor {
        if same_shape_on_cuda(self, other) {
            return cuda::add_scaled(self, other, -1.0);
        }
        let gpu = [MapOp::Sub, MapOp::GOne, MapOp::GNeg];
        binary(
            ("sub", gpu),
            self,
            other,
            |a, b| a - b,
            |_, _| 1.0,
            |_, _| -1.0,
        )
    }

    pub fn mul(&self, other: &Tensor) -> Tensor {
        if same_shape_on_cuda(self, other) {
            return cuda::mul(self, other);
        }
        let gpu = [MapOp::Mul, MapOp::GMulA, MapOp::GMulB];
        binary(("mul", gpu), self, other, |a, b| a * b, |_, b| b, |a, _| a)
    }

    pub fn div(&self, other: &Tensor) -> Tensor {
        binary(
            ("div", [MapOp::Div, MapOp::GDivA, MapOp::GDivB]),
            self,
            other,
            |a, b| a / b,
            |_, b| 1.0 / b,
            |a, b| -a / (b * b),
        )
    }

    /// Element-wise minimum; on ties the gradient is split evenly (as in PyTorch).
    pub fn minimum(&self, other: &Tensor) -> Tensor {
        binary(
            ("minimum", [MapOp::Min, MapOp::GMinA, MapOp::GMinB]),
            self,
            other,
            f32::min,
            |a, b| tie_share(a < b, a == b),
            |a, b| tie_share(b < a, a == b),
        )
    }

    /// Element-wise maximum; on ties the gradient is split evenly (as in PyTorch).
    pub fn maximum(&self, other: &Tensor) -> Tensor {
        binary(
            ("maximum", [MapOp::Max, MapOp::GMaxA, MapOp::GMaxB]),
            self,
            other,
            f32::max,
            |a, b| tie_share(a > b, a == b),
            |a, b| tie_share(b > a, a == b),
        )
    }

    pub fn neg(&self) -> Tensor {
        if self.is_cuda() {
            return cuda::scale(self, -1.0);
        }
        unary(self, |x| -x, |_| -1.0)
    }

    pub fn abs(&self) -> Tensor {
        if self.is_cuda() {
            return cuda::abs(self);
        }
        unary(self, f32::abs, sign)
    }

    /// -1, 0 or 1. Piecewise constant: its gradient is zero.
    pub fn sign(&self) -> Tensor {
        if self.is_cuda() {
            return cuda::sign(self);
        }
        unary(self, sign, |_| 0.0)
    }

    pub fn relu(&self) -> Tensor {
        if self.is_cuda() {
            return cuda::relu(self);
        }
        unary(self, |x| x.max(0.0), |x| if x > 0.0 { 1.0 } else { 0.0 })
    }

    /// Clamp into [lo, hi]; the gradient passes where lo ≤ x ≤ hi.
    pub fn clamp(&self, lo: f32, hi: f32) -> Tensor {
        assert!(lo <= hi, "clamp: lo {lo} > hi {hi}");
        unary_or_gpu(
            ("clamp", [MapOp::Clamp, MapOp::GClamp], (lo, hi)),
            self,
            move |x| x.clamp(lo, hi),
            move |x| if (lo..=hi).contains(&x) { 1.0 } else { 0.0 },
        )
    }

    pub fn exp(&self) -> Tensor {
        let gpu = ("exp", [MapOp::Exp, MapOp::GExp], (0.0, 0.0));
        unary_or_gpu(gpu, self, f32::exp, f32::exp)
    }

    pub fn log(&self) -> Tensor {
        let gpu = ("log", [MapOp::Log, MapOp::GLog], (0.0, 0.0));
        unary_or_gpu(gpu, self, f32::ln, |x| 1.0 / x)
    }

    pub fn sqrt(&self) -> Tensor {
        let gpu = ("sqrt", [MapOp::Sqrt, MapOp::GSqrt], (0.0, 0.0));
        unary_or_gpu(gpu, self, f32::sqrt, |x| 0.5 / x.sqrt())
    }

    /// x^p for a constant exponent.
    pub fn powf(&self, p: f32) -> Tensor {
        if self.is_cuda() {
            return cuda::powf(self, p);
        }
        unary(self, move |x| x.powf(p), move |x| p * x.powf(p - 1.0))
    }

    pub fn add_scalar(&self, s: f32) -> Tensor {
        if self.is_cuda() {
            return cuda::add_scalar(self, s);
        }
        unary(self, move |x| x + s, |_| 1.0)
    }

    pub fn mul_scalar(&self, s: f32) -> Tensor {
        if self.is_cuda() {
            return cuda::scale(self, s);
        }
        unary(self, move |x| x * s, move |_| s)
    }
}

/// -1, 0 or 1 (0 at ±0, as PyTorch's `sign`).
pub(crate) fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

fn tie_share(wins: bool, tie: bool) -> f32 {
    if wins {
        1.0
    } else if tie {
        0.5
    } else {
        0.0
    }
}

impl Tensor {
    /// `self + other` for two gradients of one shape, with no graph: the accumulation step of
    /// backward, where `self` is consumed and its values are reused when not shared.
    pub(crate) fn accumulate(self, other: &Tensor) -> Tensor {
        if gpu::on_cuda(&[&self, other]) {
            return cuda::sum_detached(&self, other);
        }
        let shape = self.shape().to_vec();
        let mut sum = self.into_vec();
        for (s, x) in sum.iter_mut().zip(other.data()) {
            *s += x;
        }
        Tensor::from_vec(sum, &shape)
    }

    /// A constant of `values` on `device`. On the GPU, uploaded once per process and shared
    /// after that (tensors are immutable), since a copy from pageable host memory on every use
    /// would wait for the stream: for a handful of small per-model constants only (the input
    /// normalisation), as the cache never shrinks.
    pub fn constant_on(values: &[f32], shape: &[usize], device: Device) -> Tensor {
        match device {
            Device::Cpu => Tensor::from_vec(values.to_vec(), shape),
            Device::Cuda => gpu::constant(values, shape),
        }
    }

    /// [`Tensor::full`] made on `device` (on the GPU by a kernel, not copied from the host: a
    /// copy from pageable host memory would wait for the stream).
    pub fn full_on(shape: &[usize], v: f32, device: Device) -> crate::Result<Tensor> {
        match device {
            Device::Cpu => Ok(Tensor::full(shape, v)),
            Device::Cuda => Ok(Tensor::from_device(
                launch::fill(crate::tensor::shape::numel(shape), v)?,
                shape,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_binary_ops() {
        let a = Tensor::from_vec(vec![1., 2., 3., 4., 5., 6.], &[2, 3]);
        let b = Tensor::from_vec(vec![10., 20., 30.], &[3]);
        assert_eq!(a.add(&b).to_vec(), vec![11., 22., 33., 14., 25., 36.]);
        let c = Tensor::from_vec(vec![1., 2.], &[2, 1]);
        assert_eq!(a.mul(&c).to_vec(), vec![1., 2., 3., 8., 10., 12.]);
        assert_eq!(c.sub(&b).shape(), &[2, 3]);
        assert_eq!(c.sub(&b).to_vec(), vec![-9., -19., -29., -8., -18., -28.]);
    }

    #[test]
    fn sum_to_shape_inverts_broadcast() {
        let g = vec![1.0; 6];
        assert_eq!(sum_to_shape(&g, &[2, 3], &[3]), vec![2., 2., 2.]);
        assert_eq!(sum_to_shape(&g, &[2, 3], &[2, 1]), vec![3., 3.]);
        assert_eq!(sum_to_shape(&g, &[2, 3], &[]), vec![6.]);
    }
}
