//! `Tensor`: an immutable, cheaply cloned f32 array (contiguous, row-major / NCHW) that remembers
//! how it was computed, so gradients can flow back through it (see `autodiff`).

mod device;
pub mod graph;

pub use crate::runtime::shape;

pub use device::Device;

use crate::rng::Rng;
use crate::runtime::cuda::{profile, DeviceBuffer};
use crate::tensor::graph::{is_grad_enabled, Node};
use rand_distr::{Distribution, StandardNormal};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Identifies a tensor within a process, for gradient bookkeeping.
pub type TensorId = u64;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> TensorId {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// The memory behind a tensor. Views (reshape, detach) share it.
pub enum Storage {
    Cpu(Vec<f32>),
    /// Device memory. Tensors are immutable, so the host copy, made the first time the values
    /// are read on the host (metrics, checkpoints, ops without a device kernel), never goes
    /// stale.
    Cuda {
        buffer: DeviceBuffer,
        host: OnceLock<Vec<f32>>,
    },
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Storage::Cpu(v) => write!(f, "Cpu({} values)", v.len()),
            Storage::Cuda { buffer, .. } => write!(f, "Cuda({} values)", buffer.len()),
        }
    }
}

impl Storage {
    fn on_device(buffer: DeviceBuffer) -> Storage {
        Storage::Cuda {
            buffer,
            host: OnceLock::new(),
        }
    }

    /// Host values uploaded to the device (a driver failure mid-computation is fatal: ops have
    /// no error path, as on the CPU).
    fn upload(values: &[f32]) -> Storage {
        transfers::count_upload();
        let _p = profile::scope("upload");
        Storage::on_device(
            DeviceBuffer::from_host(values)
                .unwrap_or_else(|e| panic!("copying a tensor to the GPU: {e}")),
        )
    }
}

/// Host-device copies made by tensors: data in, metrics out, and ops that have no device
/// kernel yet. A training step on the GPU should make few (see `steps_cuda` benches).
pub mod transfers {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU64, Ordering};

    static UPLOADS: AtomicU64 = AtomicU64::new(0);
    static DOWNLOADS: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static THREAD: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }

    pub(crate) fn count_upload() {
        UPLOADS.fetch_add(1, Ordering::Relaxed);
        THREAD.with(|c| c.set((c.get().0 + 1, c.get().1)));
    }

    pub(crate) fn count_download() {
        DOWNLOADS.fetch_add(1, Ordering::Relaxed);
        THREAD.with(|c| c.set((c.get().0, c.get().1 + 1)));
    }

    /// (uploads, downloads) so far in this process.
    pub fn counts() -> (u64, u64) {
        (
            UPLOADS.load(Ordering::Relaxed),
            DOWNLOADS.load(Ordering::Relaxed),
        )
    }

    /// (uploads, downloads) so far made by this thread: what one computation costs while other
    /// threads (parallel tests) use the GPU too.
    pub fn thread_counts() -> (u64, u64) {
        THREAD.with(Cell::get)
    }
}

#[derive(Clone)]
pub struct Tensor(Arc<Inner>);

struct Inner {
    id: TensorId,
    shape: Vec<usize>,
    storage: Arc<Storage>,
    /// Leaf parameters and every value computed from one need gradients.
    requires_grad: bool,
    /// How this tensor was computed (None for leaves and for values computed without grad).
    node: Option<Node>,
}

impl Tensor {
    fn build(
        storage: Arc<Storage>,
        shape: Vec<usize>,
        requires_grad: bool,
        node: Option<Node>,
    ) -> Tensor {
        Tensor(Arc::new(Inner {
            id: next_id(),
            shape,
            storage,
            requires_grad,
            node,
        }))
    }

    /// A constant tensor. Panics if `data.len()` does not match the shape (a programming error).
    pub fn from_vec(data: Vec<f32>, shape: &[usize]) -> Tensor {
        assert_eq!(
            data.len(),
            shape::numel(shape),
            "Tensor::from_vec: {} values for shape {shape:?}",
            data.len()
        );
        Tensor::build(Arc::new(Storage::Cpu(data)), shape.to_vec(), false, None)
    }

    /// Like `from_vec`, for data that comes from outside (files, users): an error, not a panic.
    pub fn try_from_vec(data: Vec<f32>, shape: &[usize]) -> crate::Result<Tensor> {
        if data.len() != shape::numel(shape) {
            return Err(crate::Error::Shape(format!(
                "{} values do not fill shape {shape:?}",
                data.len()
            )));
        }
        Ok(Tensor::from_vec(data, shape))
    }

    pub fn scalar(v: f32) -> Tensor {
        Tensor::from_vec(vec![v], &[])
    }

    pub fn full(shape: &[usize], v: f32) -> Tensor {
        Tensor::from_vec(vec![v; shape::numel(shape)], shape)
    }

    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 0.0)
    }

    pub fn ones(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 1.0)
    }

    /// Uniform in [lo, hi).
    pub fn rand_uniform(shape: &[usize], lo: f32, hi: f32, rng: &mut Rng) -> Tensor {
        let data = (0..shape::numel(shape))
            .map(|_| lo + (hi - lo) * rng.uniform())
            .collect();
        Tensor::from_vec(data, shape)
    }

    /// Normal with the given mean and standard deviation.
    pub fn randn(shape: &[usize], mean: f32, std: f32, rng: &mut Rng) -> Tensor {
        let data = (0..shape::numel(shape))
            .map(|_| {
                let z: f32 = StandardNormal.sample(rng);
                mean + std * z
            })
            .collect();
        Tensor::from_vec(data, shape)
    }

    /// A fresh leaf that gradients are computed for (a parameter, or an input under attack).
    /// Shares storage with `self`.
    pub fn requires_grad(&self) -> Tensor {
        Tensor::build(self.0.storage.clone(), self.0.shape.clone(), true, None)
    }

    /// The same values, cut off from the graph: no gradient flows through the result.
    pub fn detach(&self) -> Tensor {
        Tensor::build(self.0.storage.clone(), self.0.shape.clone(), false, None)
    }

    /// Record the result of an op. The node (inputs + backward) is kept only when gradients are
    /// enabled and some input needs one, so inference builds no graph.
    pub(crate) fn from_op<F>(
        data: Vec<f32>,
        shape: &[usize],
        inputs: &[&Tensor],
        backward: F,
    ) -> Tensor
    where
        F: Fn(&Tensor, &[bool]) -> Vec<Option<Tensor>> + Send + Sync + 'static,
    {
        assert_eq!(data.len(), shape::numel(shape), "op output size");
        // An op without a device kernel computed on host copies: its result goes back to the
        // inputs' device, so values stay where the computation lives.
        let storage = if inputs.iter().any(|t| t.is_cuda()) {
            if profile::enabled() {
                let name = profile::short_name(std::any::type_name::<F>());
                profile::record(&format!("host op {name}"), Default::default());
            }
            Arc::new(Storage::upload(&data))
        } else {
            Arc::new(Storage::Cpu(data))
        };
        Tensor::record(storage, shape, inputs, backward)
    }

    /// Record the result of an op computed on the device.
    pub(crate) fn from_device_op<F>(
        buffer: DeviceBuffer,
        shape: &[usize],
        inputs: &[&Tensor],
        backward: F,
    ) -> Tensor
    where
        F: Fn(&Tensor, &[bool]) -> Vec<Option<Tensor>> + Send + Sync + 'static,
    {
        assert_eq!(buffer.len(), shape::numel(shape), "device op output size");
        Tensor::record(
            Arc::new(Storage::on_device(buffer)),
            shape,
            inputs,
            backward,
        )
    }

    /// A constant tensor holding a device buffer.
    pub(crate) fn from_device(buffer: DeviceBuffer, shape: &[usize]) -> Tensor {
        assert_eq!(buffer.len(), shape::numel(shape), "device tensor size");
        Tensor::build(
            Arc::new(Storage::on_device(buffer)),
            shape.to_vec(),
            false,
            None,
        )
    }

    fn record<F>(storage: Arc<Storage>, shape: &[usize], inputs: &[&Tensor], backward: F) -> Tensor
    where
        F: Fn(&Tensor, &[bool]) -> Vec<Option<Tensor>> + Send + Sync + 'static,
    {
        if is_grad_enabled() && inputs.iter().any(|t| t.tracks_grad()) {
            let node = Node::new(inputs.iter().map(|&t| t.clone()).collect(), backward);
            Tensor::build(storage, shape.to_vec(), true, Some(node))
        } else {
            Tensor::build(storage, shape.to_vec(), false, None)
        }
    }

    /// A view with a new shape over the same storage, recorded for autodiff.
    pub(crate) fn view_as(&self, shape: &[usize]) -> Tensor {
        assert_eq!(
            shape::numel(shape),
            self.numel(),
            "reshape {:?} -> {shape:?}",
            self.shape()
        );
        let storage = self.0.storage.clone();
        if is_grad_enabled() && self.tracks_grad() {
            let in_shape = self.shape().to_vec();
            let node = Node::new(vec![self.clone()], move |g: &Tensor, _: &[bool]| {
                vec![Some(g.reshape(&in_shape))]
            });
            Tensor::build(storage, shape.to_vec(), true, Some(node))
        } else {
            Tensor::build(storage, shape.to_vec(), false, None)
        }
    }

    pub fn id(&self) -> TensorId {
        self.0.id
    }

    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    pub fn rank(&self) -> usize {
        self.0.shape.len()
    }

    pub fn dim(&self, axis: usize) -> usize {
        self.0.shape[axis]
    }

    pub fn numel(&self) -> usize {
        shape::numel(&self.0.shape)
    }

    pub fn device(&self) -> Device {
        match *self.0.storage {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda { .. } => Device::Cuda,
        }
    }

    pub fn is_cuda(&self) -> bool {
        matches!(*self.0.storage, Storage::Cuda { .. })
    }

    /// The values, row-major (for a GPU tensor, its host copy, made on first use).
    pub fn data(&self) -> &[f32] {
        match &*self.0.storage {
            Storage::Cpu(v) => v,
            Storage::Cuda { buffer, host } => host.get_or_init(|| {
                transfers::count_download();
                let _p = profile::scope("download");
                buffer
                    .to_host()
                    .unwrap_or_else(|e| panic!("copying a tensor from the GPU: {e}"))
            }),
        }
    }

    /// The device buffer of a GPU tensor.
    pub(crate) fn cuda_buffer(&self) -> Option<&DeviceBuffer> {
        match &*self.0.storage {
            Storage::Cpu(_) => None,
            Storage::Cuda { buffer, .. } => Some(buffer),
        }
    }

    /// A constant GPU copy of this host tensor's values, for an op that runs on the GPU.
    pub(crate) fn upload_detached(&self) -> Tensor {
        Tensor::build(
            Arc::new(Storage::upload(self.data())),
            self.0.shape.clone(),
            false,
            None,
        )
    }

    /// The same values on `device`, as a new leaf that keeps `requires_grad` (a parameter moved
    /// to the GPU is still a parameter). No copy when already there.
    pub fn to_device(&self, device: Device) -> crate::Result<Tensor> {
        if self.device() == device {
            return Ok(self.clone());
        }
        let storage = match device {
            Device::Cpu => Storage::Cpu(self.data().to_vec()),
            // The host values stay as the tensor's host copy: batches are read on the host
            // too (input boxes, attack regions).
            Device::Cuda => {
                transfers::count_upload();
                Storage::Cuda {
                    buffer: DeviceBuffer::from_host(self.data())?,
                    host: OnceLock::from(self.data().to_vec()),
                }
            }
        };
        Ok(Tensor::build(
            Arc::new(storage),
            self.0.shape.clone(),
            self.0.requires_grad && self.is_leaf(),
            None,
        ))
    }

    pub fn to_vec(&self) -> Vec<f32> {
        self.data().to_vec()
    }

    /// Take the values out, copying only if the storage is shared.
    pub fn into_vec(self) -> Vec<f32> {
        match Arc::try_unwrap(self.0) {
            Ok(inner) => match Arc::try_unwrap(inner.storage) {
                Ok(Storage::Cpu(v)) => v,
                Ok(device @ Storage::Cuda { .. }) => Inner::host_values(&device),
                Err(shared) => Inner::host_values(&shared),
            },
            Err(shared) => shared.storage_vec(),
        }
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> f32 {
        assert_eq!(
            self.numel(),
            1,
            "item() of a tensor of shape {:?}",
            self.shape()
        );
        self.data()[0]
    }

    /// True for parameters and for every value computed from one while gradients are enabled.
    pub fn tracks_grad(&self) -> bool {
        self.0.requires_grad
    }

    pub fn is_leaf(&self) -> bool {
        self.0.node.is_none()
    }

    pub(crate) fn node(&self) -> Option<&Node> {
        self.0.node.as_ref()
    }

    /// Same shape and bit-identical values.
    pub fn bit_eq(&self, other: &Tensor) -> bool {
        self.shape() == other.shape()
            && self
                .data()
                .iter()
                .zip(other.data())
                .all(|(a, b)| a.to_bits() == b.to_bits())
    }
}

impl Inner {
    fn storage_vec(&self) -> Vec<f32> {
        Inner::host_values(&self.storage)
    }

    fn host_values(storage: &Storage) -> Vec<f32> {
        match storage {
            Storage::Cpu(v) => v.clone(),
            Storage::Cuda { buffer, host } => match host.get() {
                Some(v) => v.clone(),
                None => {
                    transfers::count_download();
                    buffer
                        .to_host()
                        .unwrap_or_else(|e| panic!("copying a tensor from the GPU: {e}"))
                }
            },
        }
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.data();
        write!(f, "Tensor{:?} ", self.shape())?;
        if d.len() <= 16 {
            write!(f, "{d:?}")
        } else {
            write!(f, "[{}, {}, {}, ..., {}]", d[0], d[1], d[2], d[d.len() - 1])
        }
    }
}
