//! `Tensor`: an immutable, cheaply cloned f32 array (contiguous, row-major / NCHW) that remembers
//! how it was computed, so gradients can flow back through it (see `autodiff`).

mod device;
pub mod shape;

pub use device::Device;

use crate::autodiff::{self, Node};
use crate::rng::Rng;
use rand_distr::{Distribution, StandardNormal};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Identifies a tensor within a process, for gradient bookkeeping.
pub type TensorId = u64;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> TensorId {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// The memory behind a tensor. Views (reshape, detach) share it.
#[derive(Debug)]
pub enum Storage {
    Cpu(Vec<f32>),
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
        let storage = Arc::new(Storage::Cpu(data));
        if autodiff::is_grad_enabled() && inputs.iter().any(|t| t.tracks_grad()) {
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
        if autodiff::is_grad_enabled() && self.tracks_grad() {
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
        }
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        match &*self.0.storage {
            Storage::Cpu(v) => v,
        }
    }

    pub fn to_vec(&self) -> Vec<f32> {
        self.data().to_vec()
    }

    /// Take the values out, copying only if the storage is shared.
    pub fn into_vec(self) -> Vec<f32> {
        match Arc::try_unwrap(self.0) {
            Ok(inner) => match Arc::try_unwrap(inner.storage) {
                Ok(Storage::Cpu(v)) => v,
                Err(shared) => match &*shared {
                    Storage::Cpu(v) => v.clone(),
                },
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
        match &*self.storage {
            Storage::Cpu(v) => v.clone(),
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
