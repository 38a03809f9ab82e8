//! The process-wide CUDA device: one context, one stream, the compiled kernel modules.

use crate::runtime::cuda::buffer::BufferPool;
use crate::runtime::cuda::kernel_cache;
use crate::runtime::cuda::nvrtc::{kernel_path, nvrtc_available, KernelModule};
use crate::{Error, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, LaunchArgs, LaunchConfig, PushKernelArg,
};
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
    /// Loaded once per process and kept for its rest (a few dozen), so launches can borrow them.
    functions: Mutex<HashMap<(&'static str, &'static str), &'static Kernel>>,
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
        // SAFETY: every buffer is used on the one stream below, so no cross-stream ordering
        // needs tracking; with tracking on, each allocation would also create two CUDA events.
        unsafe { context.disable_event_tracking() };
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

    /// The kernel `function` of the module `<module>.cu` (`src/**/<module>.cu`), compiling the module on first use.
    pub fn function(
        &self,
        module: &'static str,
        function: &'static str,
    ) -> Result<&'static Kernel> {
        if let Some(&k) = self
            .functions
            .lock()
            .expect("lock")
            .get(&(module, function))
        {
            return Ok(k);
        }
        let loaded = {
            let mut modules = self.modules.lock().expect("lock");
            match modules.get(module) {
                Some(m) => m.clone(),
                None => {
                    let load = |cubin: Vec<u8>| {
                        self.context
                            .load_module(Ptx::from_binary(cubin))
                            .map_err(|e| {
                                Error::Invalid(format!(
                                    "loading {}: {e:?}",
                                    kernel_path(&format!("{module}.cu"))
                                ))
                            })
                    };
                    let (m, _) =
                        kernel_cache::load_module(KernelModule::named(module)?, &self.arch, load)?;
                    modules.insert(module, m.clone());
                    m
                }
            }
        };
        let f = loaded.load_function(function).map_err(|e| {
            Error::Invalid(format!(
                "{} has no kernel '{function}': {e:?}",
                kernel_path(&format!("{module}.cu"))
            ))
        })?;
        let kernel: &'static Kernel = Box::leak(Box::new(Kernel {
            name: function,
            params: parameter_count(&f),
            function: f,
        }));
        self.functions
            .lock()
            .expect("lock")
            .insert((module, function), kernel);
        Ok(kernel)
    }

    /// A launch of the kernel `function` of the module `<module>.cu` (see [`Launch`]).
    pub fn launch(&self, module: &'static str, function: &'static str) -> Result<Launch<'_>> {
        Ok(self.launch_builder(self.function(module, function)?))
    }

    /// A launch of `kernel` on the stream, its arguments to be added in the kernel's order.
    pub fn launch_builder<'a>(&'a self, kernel: &'a Kernel) -> Launch<'a> {
        Launch {
            args: self.stream.launch_builder(&kernel.function),
            kernel,
            given: 0,
        }
    }

    /// Wait for the stream's work and surface an asynchronous kernel error.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| Error::Invalid(format!("CUDA: {e:?}")))
    }
}

/// A compiled kernel with the number of parameters it declares.
pub struct Kernel {
    pub name: &'static str,
    pub function: CudaFunction,
    /// From the driver; None where it cannot tell.
    params: Option<usize>,
}

/// How many parameters `f` declares: the driver's parameter info answers for each index up to
/// the last (CUDA 12.4+); None where it answers for none.
fn parameter_count(f: &CudaFunction) -> Option<usize> {
    let (mut offset, mut size) = (0usize, 0usize);
    let mut count = 0;
    // SAFETY: a loaded function's handle; the driver writes two integers.
    while unsafe {
        cudarc::driver::sys::cuFuncGetParamInfo(f.cu_function(), count, &mut offset, &mut size)
    } == cudarc::driver::sys::CUresult::CUDA_SUCCESS
    {
        count += 1;
    }
    (count > 0).then_some(count)
}

/// A kernel launch being put together: one `arg` per kernel parameter, in order, then `launch`.
/// The count of arguments is checked against the kernel's own, so a wrapper that passes too
/// few or too many gets an error naming the kernel instead of a crash in the driver.
pub struct Launch<'a> {
    args: LaunchArgs<'a>,
    kernel: &'a Kernel,
    given: usize,
}

impl<'a> Launch<'a> {
    pub fn arg<A>(&mut self, arg: A) -> &mut Self
    where
        LaunchArgs<'a>: PushKernelArg<A>,
    {
        self.args.arg(arg);
        self.given += 1;
        self
    }

    /// Launch with `cfg`.
    ///
    /// # Safety
    /// The arguments' types must be the kernel's parameters', and every buffer must hold what
    /// the kernel reads and writes for this configuration.
    pub unsafe fn launch(&mut self, cfg: LaunchConfig) -> Result<()> {
        if let Some(declared) = self.kernel.params {
            if declared != self.given {
                return Err(Error::Invalid(format!(
                    "CUDA kernel {}: {} arguments given, it declares {declared}",
                    self.kernel.name, self.given
                )));
            }
        }
        // SAFETY: as the caller promises.
        unsafe { self.args.launch(cfg) }
            .map(|_| ())
            .map_err(|e| driver_error(self.kernel.name, e))
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
/// device, no NVRTC). With `CACTUS_REQUIRE_CUDA` set (a GPU machine's test run, or the CPU
/// emulator's: `scripts/gpu/test_cuda_emulated.sh`) a missing device fails the test instead.
pub fn device_or_skip(test: &str) -> Option<&'static CudaBackend> {
    match cuda() {
        Ok(b) => Some(b),
        Err(e) if std::env::var_os("CACTUS_REQUIRE_CUDA").is_some() => {
            panic!("{test}: CACTUS_REQUIRE_CUDA is set but there is no device to run on: {e}")
        }
        Err(e) => {
            eprintln!("{test}: SKIPPED — no GPU to run on ({e})");
            None
        }
    }
}
