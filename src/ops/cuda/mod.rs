//! The ops on the GPU. Every op in `ops` first asks [`on_cuda`] of its inputs; when one lives on
//! the GPU it runs here instead: the kernels of `kernels/*.cu` through `backend::cuda`, with the
//! result, its graph node and its backward all on the device. An op without a device version
//! here computes on host copies of its inputs and sends its result back to the GPU
//! (`Tensor::from_op`), so every op works on either device; `tensor::transfers` counts what that
//! costs.
//!
//! A driver error in the middle of an op is fatal (a panic naming the op), as a failed
//! allocation is on the CPU: ops have no error path.

pub(crate) mod conv;
pub(crate) mod elementwise;
pub(crate) mod interval;
pub(crate) mod linear;
pub(crate) mod loss;
pub(crate) mod norm;
pub(crate) mod quant;
pub(crate) mod reduce;
pub(crate) mod shape;

use crate::backend::cuda::DeviceBuffer;
use crate::tensor::Tensor;

/// Whether an op with these inputs runs on the GPU.
pub(crate) fn on_cuda(inputs: &[&Tensor]) -> bool {
    inputs.iter().any(|t| t.is_cuda())
}

/// The value of a device call, or a panic naming the op.
pub(crate) fn expect<T>(op: &str, r: crate::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{op} on the GPU failed: {e}"))
}

/// `t` as a detached GPU tensor: itself, or a device copy of its host values (kept by backward
/// closures, which need the values on the device again).
pub(crate) fn resident(t: &Tensor) -> Tensor {
    if t.is_cuda() {
        t.detach()
    } else {
        t.upload_detached()
    }
}

/// The device buffer of a GPU tensor (see `resident`).
pub(crate) fn buf(t: &Tensor) -> &DeviceBuffer {
    t.cuda_buffer()
        .expect("a GPU op's operand lives on the GPU (made resident first)")
}

/// A device copy of a device buffer.
pub(crate) fn copy(b: &DeviceBuffer) -> DeviceBuffer {
    let mut out = expect("copy", DeviceBuffer::uninit(b.len()));
    expect("copy", out.copy_from(0, b, 0, b.len()));
    out
}

/// A GPU tensor of the given shape holding `b`.
pub(crate) fn tensor(b: DeviceBuffer, shape: &[usize]) -> Tensor {
    Tensor::from_device(b, shape)
}

/// `len` copies of `v` on the device.
pub(crate) fn filled(len: usize, v: f32) -> DeviceBuffer {
    // A kernel, not a copy from the host: a copy from pageable memory would wait for the
    // stream, and constants are made inside ops.
    expect("fill", crate::backend::cuda::train_ops::fill(len, v))
}

/// PGD's step on the GPU: min(max(x + step·sign(g), lo), hi), a new constant tensor.
pub(crate) fn pgd_step(x: &Tensor, g: &Tensor, lo: &Tensor, hi: &Tensor, step: f32) -> Tensor {
    let _p = crate::backend::cuda::profile::scope("pgd_step");
    let (xs, gs, ls, hs) = (resident(x), resident(g), resident(lo), resident(hi));
    let mut next = copy(buf(&xs));
    expect(
        "PGD step",
        crate::backend::cuda::train_ops::pgd_step(&mut next, buf(&gs), buf(&ls), buf(&hs), step),
    );
    tensor(next, x.shape())
}
