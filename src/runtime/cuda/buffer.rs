//! Device memory: [`DeviceVec`]s (f32 tensors' [`DeviceBuffer`]s, and the integer and f64
//! buffers of labels, indices, selection states and partial sums) drawn from a caching pool. A
//! buffer's capacity is its length rounded up to a power of two (at least 256 values; exactly
//! its length with `CACTUS_EXACT_BUFFERS`, for memory checking); a
//! dropped buffer goes back to the pool's free list for its element type and capacity, so a
//! training step that allocates the same sizes as the last one does not call the driver's
//! allocator ([`allocations`] counts the calls).
//!
//! When the driver has no memory left, the pool releases every cached buffer and tries once
//! more before reporting the failure: memory held for one phase's sizes (training) must not
//! starve the next (evaluation at another batch size).

use crate::runtime::cuda::context::{cuda, driver_error, CudaBackend};
use crate::{Error, Result};
use cudarc::driver::{CudaSlice, CudaView, DeviceRepr, ValidAsZeroBits};
use std::any::{Any, TypeId};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A cached allocation: its size in bytes and the `CudaSlice<T>` itself.
type Cached = (usize, Box<dyn Any + Send>);

#[derive(Default)]
pub(crate) struct BufferPool {
    free: Mutex<HashMap<(TypeId, usize), Vec<Cached>>>,
}

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
thread_local! {
    static THREAD_ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// Calls to the driver's allocator so far: (this process, this thread). A steady training step
/// adds none.
pub fn allocations() -> (u64, u64) {
    (
        ALLOCATIONS.load(Ordering::Relaxed),
        THREAD_ALLOCATIONS.with(Cell::get),
    )
}

/// `CACTUS_EXACT_BUFFERS` set (and not `0`): allocations are exactly as long as asked, so that a
/// memory checker (the CPU emulator's guard pages) sees every access past a buffer's end; the
/// pool still reuses buffers of equal length. Read once.
fn exact_sizes() -> bool {
    static EXACT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *EXACT.get_or_init(|| std::env::var_os("CACTUS_EXACT_BUFFERS").is_some_and(|v| v != "0"))
}

impl BufferPool {
    fn capacity(len: usize) -> usize {
        if exact_sizes() {
            len.max(1)
        } else {
            len.max(256).next_power_of_two()
        }
    }

    fn take<T: DeviceRepr + Send + 'static>(
        &self,
        backend: &CudaBackend,
        len: usize,
    ) -> Result<CudaSlice<T>> {
        let cap = Self::capacity(len);
        let cached = self
            .free
            .lock()
            .expect("lock")
            .get_mut(&(TypeId::of::<T>(), cap))
            .and_then(Vec::pop);
        if let Some((_, slice)) = cached {
            return Ok(*slice
                .downcast::<CudaSlice<T>>()
                .expect("pool entries are keyed by their element type"));
        }
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        THREAD_ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY (both calls): every kernel writes the values it later reads (callers zero where
        // needed).
        match unsafe { backend.stream.alloc::<T>(cap) } {
            Ok(slice) => Ok(slice),
            Err(_) => {
                let released = self.release();
                unsafe { backend.stream.alloc::<T>(cap) }.map_err(|e| {
                    Error::Invalid(format!(
                        "CUDA: allocating {} bytes failed, also after releasing the {released} \
                         bytes the buffer pool held (out of device memory?): {e:?}",
                        cap * std::mem::size_of::<T>()
                    ))
                })
            }
        }
    }

    fn give<T: DeviceRepr + Send + 'static>(&self, slice: CudaSlice<T>) {
        let cap = slice.len();
        let bytes = cap * std::mem::size_of::<T>();
        self.free
            .lock()
            .expect("lock")
            .entry((TypeId::of::<T>(), cap))
            .or_default()
            .push((bytes, Box::new(slice)));
    }

    /// Free every cached buffer (back to the driver); the bytes released.
    fn release(&self) -> usize {
        let drained: Vec<Cached> = self
            .free
            .lock()
            .expect("lock")
            .drain()
            .flat_map(|(_, v)| v)
            .collect();
        drained.iter().map(|(bytes, _)| bytes).sum()
    }
}

/// `len` values of `T` on the device, from the pool (the allocation may be larger; kernels get
/// `len`).
pub struct DeviceVec<T: DeviceRepr + Send + 'static> {
    slice: Option<CudaSlice<T>>,
    len: usize,
}

/// The f32 buffer behind every GPU tensor.
pub type DeviceBuffer = DeviceVec<f32>;

impl<T: DeviceRepr + Send + 'static> DeviceVec<T> {
    /// An uninitialised buffer of `len` values.
    pub fn uninit(len: usize) -> Result<DeviceVec<T>> {
        let backend = cuda()?;
        Ok(DeviceVec {
            slice: Some(backend.pool.take(backend, len)?),
            len,
        })
    }

    /// A copy of host values (from pageable memory: the copy waits for the stream).
    pub fn from_host(values: &[T]) -> Result<DeviceVec<T>> {
        let mut b = Self::uninit(values.len())?;
        if !values.is_empty() {
            let backend = cuda()?;
            let mut view = b.slice_mut().slice_mut(0..values.len());
            backend
                .stream
                .memcpy_htod(values, &mut view)
                .map_err(|e| driver_error("copy to device", e))?;
        }
        Ok(b)
    }

    /// The values, copied to the host (waits for the stream).
    pub fn to_host(&self) -> Result<Vec<T>> {
        if self.len == 0 {
            return Ok(Vec::new());
        }
        let backend = cuda()?;
        backend
            .stream
            .clone_dtoh(&self.view())
            .map_err(|e| driver_error("copy to host", e))
    }

    /// Copy `len` values of `src` from `src_at` into this buffer at `at` (on the stream).
    pub fn copy_from(
        &mut self,
        at: usize,
        src: &DeviceVec<T>,
        src_at: usize,
        len: usize,
    ) -> Result<()> {
        if at + len > self.len || src_at + len > src.len {
            return Err(Error::Shape(format!(
                "device copy of {len} values from {src_at} of {} to {at} of {}",
                src.len, self.len
            )));
        }
        if len == 0 {
            return Ok(());
        }
        let backend = cuda()?;
        let from = src.slice().slice(src_at..src_at + len);
        let mut to = self.slice_mut().slice_mut(at..at + len);
        backend
            .stream
            .memcpy_dtod(&from, &mut to)
            .map_err(|e| driver_error("device copy", e))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole allocation (kernels are told the length separately).
    pub fn slice(&self) -> &CudaSlice<T> {
        self.slice.as_ref().expect("live buffer")
    }

    pub fn slice_mut(&mut self) -> &mut CudaSlice<T> {
        self.slice.as_mut().expect("live buffer")
    }

    /// The `len` values (not the rest of the allocation).
    pub fn view(&self) -> CudaView<'_, T> {
        self.slice().slice(0..self.len)
    }
}

impl<T: DeviceRepr + ValidAsZeroBits + Send + 'static> DeviceVec<T> {
    /// `len` zeros.
    pub fn zeros(len: usize) -> Result<DeviceVec<T>> {
        let mut b = Self::uninit(len)?;
        let backend = cuda()?;
        backend
            .stream
            .memset_zeros(b.slice_mut())
            .map_err(|e| driver_error("memset", e))?;
        Ok(b)
    }
}

impl<T: DeviceRepr + Send + 'static> Drop for DeviceVec<T> {
    fn drop(&mut self) {
        if let (Some(slice), Ok(backend)) = (self.slice.take(), cuda()) {
            backend.pool.give(slice);
        }
    }
}
