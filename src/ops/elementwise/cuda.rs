//! Element-wise ops on the GPU: same-shape binary ops and the unary maps training uses, with
//! kernels of their own (`elementwise.cu`'s `ew_*`); broadcasting binary ops and the rarer maps (exp,
//! log, sqrt, clamp) through the shape-general map of `elementwise.cu`.

use crate::ops::elementwise::launch::MapOp;
use crate::ops::elementwise::launch::Reduce;
use crate::ops::gpu::{buf, expect, resident, tensor};
use crate::runtime::cuda::profile;
use crate::runtime::cuda::strided::Operand;
use crate::runtime::cuda::DeviceBuffer;
use crate::tensor::shape::broadcast_shapes;
use crate::tensor::Tensor;

fn operand(t: &Tensor) -> Option<Operand<'_>> {
    Some(Operand::new(buf(t), t.shape()))
}

/// `full` (of shape `from`, a gradient of a broadcast result) summed down to `to`'s shape.
fn sum_to(full: &DeviceBuffer, from: &[usize], to: &[usize]) -> Tensor {
    let reduced = expect(
        "broadcast gradient",
        crate::ops::elementwise::launch::reduce_to(full, from, to, Reduce::Sum),
    );
    tensor(reduced, to)
}

/// A binary op with NumPy broadcasting: `forward(a, b)`, and the gradients `grad_a(g, a, b)` and
/// `grad_b(g, a, b)` evaluated over the broadcast shape, then summed to each operand's shape.
pub(crate) fn broadcast_binary(
    name: &'static str,
    a: &Tensor,
    b: &Tensor,
    [forward, grad_a, grad_b]: [MapOp; 3],
) -> Tensor {
    let _p = profile::scope(name);
    let shape = broadcast_shapes(a.shape(), b.shape()).unwrap_or_else(|e| panic!("{e}"));
    let (sa, sb) = (resident(a), resident(b));
    let y = expect(
        name,
        crate::ops::elementwise::launch::map(
            forward,
            &shape,
            [None, operand(&sa), operand(&sb)],
            (0.0, 0.0),
        ),
    );
    let out_shape = shape.clone();
    Tensor::from_device_op(y, &out_shape, &[a, b], move |g, needs| {
        let gs = resident(g);
        let grad = |op: MapOp, target: &Tensor| {
            // g·1 needs no map: the gradient is g itself, summed down where it was broadcast.
            if op == MapOp::GOne {
                if target.shape() == shape.as_slice() {
                    return gs.clone();
                }
                return sum_to(buf(&gs), &shape, target.shape());
            }
            let operands = [operand(&gs), operand(&sa), operand(&sb)];
            let full = expect(
                name,
                crate::ops::elementwise::launch::map(op, &shape, operands, (0.0, 0.0)),
            );
            if target.shape() == shape.as_slice() {
                return tensor(full, &shape);
            }
            sum_to(&full, &shape, target.shape())
        };
        vec![
            needs[0].then(|| grad(grad_a, &sa)),
            needs[1].then(|| grad(grad_b, &sb)),
        ]
    })
}

/// A unary map `forward(x; p, q)` with gradient `grad(g, x; p, q)`.
pub(crate) fn unary_map(
    name: &'static str,
    x: &Tensor,
    [forward, grad]: [MapOp; 2],
    params: (f32, f32),
) -> Tensor {
    let _p = profile::scope(name);
    let xs = resident(x);
    let y = expect(
        name,
        crate::ops::elementwise::launch::map(
            forward,
            x.shape(),
            [None, operand(&xs), None],
            params,
        ),
    );
    Tensor::from_device_op(y, x.shape(), &[x], move |g, _| {
        let gs = resident(g);
        let operands = [operand(&gs), operand(&xs), None];
        let d = expect(
            name,
            crate::ops::elementwise::launch::map(grad, xs.shape(), operands, params),
        );
        vec![Some(tensor(d, xs.shape()))]
    })
}

pub(crate) fn relu(x: &Tensor) -> Tensor {
    let _p = profile::scope("relu");
    let xs = resident(x);
    let y = expect("relu", crate::ops::elementwise::launch::relu(buf(&xs)));
    Tensor::from_device_op(y, x.shape(), &[x], move |g, _| {
        let gs = resident(g);
        let d = expect(
            "relu backward",
            crate::ops::elementwise::launch::relu_backward(buf(&gs), buf(&xs)),
        );
        vec![Some(tensor(d, xs.shape()))]
    })
}

pub(crate) fn abs(x: &Tensor) -> Tensor {
    let _p = profile::scope("abs");
    let xs = resident(x);
    let y = expect("abs", crate::ops::elementwise::launch::abs(buf(&xs)));
    Tensor::from_device_op(y, x.shape(), &[x], move |g, _| {
        let gs = resident(g);
        let d = expect(
            "abs backward",
            crate::ops::elementwise::launch::abs_backward(buf(&gs), buf(&xs)),
        );
        vec![Some(tensor(d, xs.shape()))]
    })
}

/// sign(x) (0 at 0), whose gradient is 0.
pub(crate) fn sign(x: &Tensor) -> Tensor {
    let _p = profile::scope("sign");
    let y = expect(
        "sign",
        crate::ops::elementwise::launch::sign(buf(&resident(x))),
    );
    let shape = x.shape().to_vec();
    Tensor::from_device_op(y, x.shape(), &[x], move |_, _| {
        vec![Some(tensor(filled(shape.iter().product(), 0.0), &shape))]
    })
}

/// s·x.
pub(crate) fn scale(x: &Tensor, s: f32) -> Tensor {
    let _p = profile::scope("scale");
    let y = expect(
        "scale",
        crate::ops::elementwise::launch::scale(buf(&resident(x)), s),
    );
    Tensor::from_device_op(y, x.shape(), &[x], move |g, _| {
        let d = expect(
            "scale backward",
            crate::ops::elementwise::launch::scale(buf(&resident(g)), s),
        );
        vec![Some(tensor(d, g.shape()))]
    })
}

/// a + s·b for tensors of one shape (s = 1: add, s = −1: subtract).
pub(crate) fn add_scaled(a: &Tensor, b: &Tensor, s: f32) -> Tensor {
    let _p = profile::scope("add_scaled");
    let (sa, sb) = (resident(a), resident(b));
    let mut y = crate::ops::gpu::copy(buf(&sa));
    expect(
        "add",
        crate::ops::elementwise::launch::add_scaled(&mut y, buf(&sb), s),
    );
    Tensor::from_device_op(y, a.shape(), &[a, b], move |g, needs| {
        let gs = resident(g);
        vec![
            needs[0].then(|| gs.clone()),
            needs[1].then(|| {
                if s == 1.0 {
                    gs.clone()
                } else {
                    tensor(
                        expect(
                            "add backward",
                            crate::ops::elementwise::launch::scale(buf(&gs), s),
                        ),
                        gs.shape(),
                    )
                }
            }),
        ]
    })
}

/// a·b for tensors of one shape.
pub(crate) fn mul(a: &Tensor, b: &Tensor) -> Tensor {
    let _p = profile::scope("mul");
    let (sa, sb) = (resident(a), resident(b));
    let y = expect(
        "mul",
        crate::ops::elementwise::launch::mul(buf(&sa), buf(&sb)),
    );
    Tensor::from_device_op(y, a.shape(), &[a, b], move |g, needs| {
        let gs = resident(g);
        let (da, db) = expect(
            "mul backward",
            crate::ops::elementwise::launch::mul_backward(buf(&gs), buf(&sa), buf(&sb)),
        );
        vec![
            needs[0].then(|| tensor(da, sa.shape())),
            needs[1].then(|| tensor(db, sb.shape())),
        ]
    })
}

/// a + b of one shape, with no graph (gradient accumulation).
pub(crate) fn sum_detached(a: &Tensor, b: &Tensor) -> Tensor {
    let _p = profile::scope("sum_detached");
    let (sa, sb) = (resident(a), resident(b));
    let mut y = crate::ops::gpu::copy(buf(&sa));
    expect(
        "gradient accumulation",
        crate::ops::elementwise::launch::add_scaled(&mut y, buf(&sb), 1.0),
    );
    tensor(y, a.shape())
}

/// x + s.
pub(crate) fn add_scalar(x: &Tensor, s: f32) -> Tensor {
    let _p = profile::scope("add_scalar");
    let y = expect(
        "add_scalar",
        crate::ops::elementwise::launch::add_scalar(buf(&resident(x)), s),
    );
    Tensor::from_device_op(y, x.shape(), &[x], |g, _| vec![Some(g.clone())])
}

/// x^p for a constant p.
pub(crate) fn powf(x: &Tensor, p: f32) -> Tensor {
    let _p = profile::scope("powf");
    let xs = resident(x);
    let y = expect("powf", crate::ops::elementwise::launch::powf(buf(&xs), p));
    Tensor::from_device_op(y, x.shape(), &[x], move |g, _| {
        let gs = resident(g);
        let d = expect(
            "powf backward",
            crate::ops::elementwise::launch::powf_backward(buf(&gs), buf(&xs), p),
        );
        vec![Some(tensor(d, xs.shape()))]
    })
}

/// `len` copies of `v` on the device.
pub(crate) fn filled(len: usize, v: f32) -> DeviceBuffer {
    // A kernel, not a copy from the host: a copy from pageable memory would wait for the
    // stream, and constants are made inside ops.
    expect("fill", super::launch::fill(len, v))
}
