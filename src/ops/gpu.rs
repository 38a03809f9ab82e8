//! What the GPU paths of every op family share. Every op first asks [`on_cuda`] of its inputs;
//! when one lives on the GPU it runs in its family's `cuda.rs`: the family's kernels through its
//! `launch.rs`, with the result, its graph node and its backward all on the device. An op
//! without a device path computes on host copies of its inputs and sends its result back to the GPU
//! (`Tensor::from_op`), so every op works on either device; `tensor::transfers` counts what that
//! costs.
//!
//! A driver error in the middle of an op is fatal (a panic naming the op), as a failed
//! allocation is on the CPU: ops have no error path.

use crate::runtime::cuda::DeviceBuffer;
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

/// A GPU tensor of the constants `values`, uploaded once per process and shared after that
/// (tensors are immutable): per-call constants such as the input normalisation would otherwise
/// be copied from pageable host memory on every forward pass, and each such copy waits for the
/// stream. For a handful of small constant vectors only: the cache never shrinks.
pub(crate) fn constant(values: &[f32], shape: &[usize]) -> Tensor {
    use std::collections::HashMap;
    use std::sync::Mutex;
    /// Keyed by the values' bits and the shape.
    type Constants = HashMap<(Vec<u32>, Vec<usize>), Tensor>;
    static CACHE: Mutex<Option<Constants>> = Mutex::new(None);
    let key = (
        values.iter().map(|v| v.to_bits()).collect::<Vec<u32>>(),
        shape.to_vec(),
    );
    let mut cache = CACHE.lock().expect("constant cache lock");
    cache
        .get_or_insert_with(HashMap::new)
        .entry(key)
        .or_insert_with(|| Tensor::from_vec(values.to_vec(), shape).upload_detached())
        .clone()
}
