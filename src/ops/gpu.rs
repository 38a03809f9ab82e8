//! The ops on the GPU. Every op in `ops` first asks [`on_cuda`] of its inputs; when one lives on
//! the GPU it runs here instead: the kernels of `kernels/*.cu` through `backend::cuda`, with the
//! result, its graph node and its backward all on the device. An op without a device version
//! here computes on host copies of its inputs and sends its result back to the GPU
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

/// `len` copies of `v` on the device.
pub(crate) fn filled(len: usize, v: f32) -> DeviceBuffer {
    // A kernel, not a copy from the host: a copy from pageable memory would wait for the
    // stream, and constants are made inside ops.
    expect("fill", crate::ops::elementwise::launch::fill(len, v))
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

/// PGD's step on the GPU: min(max(x + step·sign(g), lo), hi), a new constant tensor.
pub(crate) fn pgd_step(x: &Tensor, g: &Tensor, lo: &Tensor, hi: &Tensor, step: f32) -> Tensor {
    let _p = crate::runtime::cuda::profile::scope("pgd_step");
    let (xs, gs, ls, hs) = (resident(x), resident(g), resident(lo), resident(hi));
    let mut next = copy(buf(&xs));
    expect(
        "PGD step",
        crate::attack::pgd::launch::pgd_step(&mut next, buf(&gs), buf(&ls), buf(&hs), step),
    );
    tensor(next, x.shape())
}

/// PGD's best points kept on the GPU beside the iterates (`attack::pgd`), so that the attack
/// loop never copies a point, a loss or a prediction to the host.
pub(crate) struct DeviceBest {
    best: crate::attack::pgd::launch::PgdBest,
    labels: std::sync::Arc<crate::ops::loss::launch::DeviceLabels>,
}

impl DeviceBest {
    /// The host points `start` (one row per label) as the best points of samples labelled `y`
    /// among `classes`: uploaded once, straight into the best points' buffer.
    pub(crate) fn new(start: &[f32], y: &[usize], classes: usize) -> DeviceBest {
        let what = "PGD best points";
        crate::tensor::transfers::count_upload();
        let start = expect(what, DeviceBuffer::from_host(start));
        DeviceBest {
            best: expect(
                what,
                crate::attack::pgd::launch::PgdBest::new(start, y.len()),
            ),
            labels: expect(what, crate::ops::loss::launch::DeviceLabels::cached(y, classes)),
        }
    }

    /// `Best::offer` on the device.
    pub(crate) fn offer(&mut self, x: &Tensor, logits: &Tensor, loss: &Tensor, keep: bool) {
        let _p = crate::runtime::cuda::profile::scope("pgd_keep_best");
        let (xs, ls, ss) = (resident(x), resident(logits), resident(loss));
        expect(
            "PGD best points",
            crate::attack::pgd::launch::pgd_keep_best(
                &mut self.best,
                buf(&xs),
                buf(&ls),
                buf(&ss),
                &self.labels,
                keep,
            ),
        );
    }

    /// Whether every sample has been misclassified (copies the flags to the host).
    pub(crate) fn all_fooled(&self) -> bool {
        expect("PGD best points", self.best.fooled.to_host())
            .iter()
            .all(|&f| f != 0.0)
    }

    /// The best points (on the GPU, shaped `shape`), their losses and the fooled flags.
    pub(crate) fn finish(self, shape: &[usize]) -> (Tensor, Vec<f32>, Vec<bool>) {
        let what = "PGD best points";
        let loss = expect(what, self.best.loss.to_host());
        let fooled = expect(what, self.best.fooled.to_host())
            .iter()
            .map(|&f| f != 0.0)
            .collect();
        (tensor(self.best.x, shape), loss, fooled)
    }
}
