//! The process-wide CUDA device: one context, one stream, the compiled kernel modules.

use crate::backend::cuda::buffer::BufferPool;
use crate::backend::cuda::nvrtc::{compile_module, nvrtc_available, KernelModule};
use crate::{Error, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, LaunchConfig};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Whether the NVIDIA driver library (`libcuda.so`) can be loaded on this machine.
pub fn driver_available() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Device 0 with its stream, kernel modules (compiled once per process for its compute
/// capability) and buffer pool.
pub struct CudaBackend {
    pub context: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// `sm_XY` of the device.
    pub arch: String,
    pub name: String,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, &'static str), CudaFunction>>,
    pub(crate) pool: BufferPool,
}

static BACKEND: OnceLock<std::result::Result<CudaBackend, String>> = OnceLock::new();

/// The CUDA backend, started on first use; an error that says what is missing (driver, device,
/// NVRTC) on a machine that cannot run it.
pub fn cuda() -> Result<&'static CudaBackend> {
    BACKEND
        .get_or_init(|| CudaBackend::start().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::Invalid(e.clone()))
}

impl CudaBackend {
    fn start() -> Result<CudaBackend> {
        let unavailable = |why: String| Error::Invalid(format!("--device cuda: {why}"));
        if !driver_available() {
            return Err(unavailable(
                "no NVIDIA driver on this machine (libcuda.so cannot be loaded); use --device cpu"
                    .into(),
            ));
        }
        let count = CudaContext::device_count()
            .map_err(|e| unavailable(format!("the driver reports an error: {e:?}")))?;
        if count < 1 {
            return Err(unavailable("the driver sees no CUDA device".into()));
        }
        if !nvrtc_available() {
            return Err(unavailable(
                "NVRTC (libnvrtc.so.13) is not loadable, so the kernels cannot be compiled; put \
                 the CUDA toolkit's (or the nvidia-cuda-nvrtc wheel's) lib folder on \
                 LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let context = CudaContext::new(0).map_err(|e| unavailable(format!("{e:?}")))?;
        let (major, minor) = context
            .compute_capability()
            .map_err(|e| unavailable(format!("{e:?}")))?;
        let name = context.name().unwrap_or_else(|_| "CUDA device 0".into());
        let stream = context.default_stream();
        Ok(CudaBackend {
            context,
            stream,
            arch: format!("sm_{major}{minor}"),
            name,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            pool: BufferPool::default(),
        })
    }

    /// The kernel `function` of `kernels/<module>.cu`, compiling the module on first use.
    pub fn function(&self, module: &'static str, function: &'static str) -> Result<CudaFunction> {
        if let Some(f) = self
            .functions
            .lock()
            .expect("lock")
            .get(&(module, function))
        {
            return Ok(f.clone());
        }
        let loaded = {
            let mut modules = self.modules.lock().expect("lock");
            match modules.get(module) {
                Some(m) => m.clone(),
                None => {
                    let cubin = compile_module(KernelModule::named(module)?, &self.arch)?;
                    let m = self
                        .context
                        .load_module(Ptx::from_binary(cubin))
                        .map_err(|e| {
                            Error::Invalid(format!("loading kernels/{module}.cu: {e:?}"))
                        })?;
                    modules.insert(module, m.clone());
                    m
                }
            }
        };
        let f = loaded.load_function(function).map_err(|e| {
            Error::Invalid(format!(
                "kernels/{module}.cu has no kernel '{function}': {e:?}"
            ))
        })?;
        self.functions
            .lock()
            .expect("lock")
            .insert((module, function), f.clone());
        Ok(f)
    }

    /// Wait for the stream's work and surface an asynchronous kernel error.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| Error::Invalid(format!("CUDA: {e:?}")))
    }
}

/// A one-dimensional launch of `n` threads in blocks of 256.
pub fn grid_1d(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).max(1) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A driver error as ours.
pub fn driver_error(what: &str, e: cudarc::driver::DriverError) -> Error {
    Error::Invalid(format!("CUDA {what}: {e:?}"))
}

/// For parity tests: the backend, or `None` after printing why `test` is skipped (no driver, no
/// device, no NVRTC).
pub fn device_or_skip(test: &str) -> Option<&'static CudaBackend> {
    match cuda() {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("{test}: SKIPPED — no GPU to run on ({e})");
            None
        }
    }
}
