//! Device memory: `DeviceBuffer`s of f32 drawn from a caching pool. A buffer's capacity is its
//! length rounded up to a power of two (at least 256 values); a dropped buffer goes back to the
//! pool's free list for its capacity, so a training step that allocates the same sizes as the
//! last one does not call the driver's allocator.

use crate::backend::cuda::context::{cuda, driver_error, CudaBackend};
use crate::Result;
use cudarc::driver::CudaSlice;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub(crate) struct BufferPool {
    free: Mutex<HashMap<usize, Vec<CudaSlice<f32>>>>,
}

impl BufferPool {
    fn capacity(len: usize) -> usize {
        len.max(256).next_power_of_two()
    }

    fn take(&self, backend: &CudaBackend, len: usize) -> Result<CudaSlice<f32>> {
        let cap = Self::capacity(len);
        if let Some(s) = self
            .free
            .lock()
            .expect("lock")
            .get_mut(&cap)
            .and_then(Vec::pop)
        {
            return Ok(s);
        }
        // SAFETY: every kernel writes the values it later reads (callers zero where needed).
        unsafe { backend.stream.alloc::<f32>(cap) }.map_err(|e| driver_error("alloc", e))
    }

    fn give(&self, slice: CudaSlice<f32>) {
        let cap = slice.len();
        self.free
            .lock()
            .expect("lock")
            .entry(cap)
            .or_default()
            .push(slice);
    }
}

/// `len` f32 values on the device (the allocation may be larger; kernels get `len`).
pub struct DeviceBuffer {
    slice: Option<CudaSlice<f32>>,
    len: usize,
}

impl DeviceBuffer {
    /// An uninitialised buffer of `len` values.
    pub fn uninit(len: usize) -> Result<DeviceBuffer> {
        let backend = cuda()?;
        Ok(DeviceBuffer {
            slice: Some(backend.pool.take(backend, len)?),
            len,
        })
    }

    /// `len` zeros.
    pub fn zeros(len: usize) -> Result<DeviceBuffer> {
        let mut b = Self::uninit(len)?;
        let backend = cuda()?;
        backend
            .stream
            .memset_zeros(b.slice_mut())
            .map_err(|e| driver_error("memset", e))?;
        Ok(b)
    }

    /// A copy of host values.
    pub fn from_host(values: &[f32]) -> Result<DeviceBuffer> {
        let mut b = Self::uninit(values.len())?;
        let backend = cuda()?;
        let mut view = b.slice_mut().slice_mut(0..values.len());
        backend
            .stream
            .memcpy_htod(values, &mut view)
            .map_err(|e| driver_error("copy to device", e))?;
        Ok(b)
    }

    /// The values, copied to the host (waits for the stream).
    pub fn to_host(&self) -> Result<Vec<f32>> {
        let backend = cuda()?;
        let view = self.slice().slice(0..self.len);
        backend
            .stream
            .clone_dtoh(&view)
            .map_err(|e| driver_error("copy to host", e))
    }

    /// Copy `len` values of `src` from `src_at` into this buffer at `at` (on the stream).
    pub fn copy_from(
        &mut self,
        at: usize,
        src: &DeviceBuffer,
        src_at: usize,
        len: usize,
    ) -> Result<()> {
        if at + len > self.len || src_at + len > src.len {
            return Err(crate::Error::Shape(format!(
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
    pub fn slice(&self) -> &CudaSlice<f32> {
        self.slice.as_ref().expect("live buffer")
    }

    pub fn slice_mut(&mut self) -> &mut CudaSlice<f32> {
        self.slice.as_mut().expect("live buffer")
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if let (Some(slice), Ok(backend)) = (self.slice.take(), cuda()) {
            backend.pool.give(slice);
        }
    }
}
