//! Launching our kernels: the one `launch!` macro every launch wrapper uses, and the checks and
//! launch shapes they share. Sizes are checked against the buffers before any launch: a
//! mismatch is an `Error::Shape`, never a panic or an out-of-bounds kernel.

use crate::{Error, Result};
use cudarc::driver::LaunchConfig;

/// Launch kernel `name` of the kernel module `module` (a `.cu` file's stem) on the process's
/// stream, with the given arguments in order.
macro_rules! launch {
    ($module:expr, $name:expr, $cfg:expr, [$($arg:expr),* $(,)?]) => {{
        let mut b = $crate::runtime::cuda::context::cuda()?.launch($module, $name)?;
        $( b.arg($arg); )*
        // SAFETY: every wrapper passes the arguments of the kernel's signature in its `.cu`
        // file, after checking each buffer against the sizes the kernel is given.
        unsafe { b.launch($cfg) }?;
    }};
}
pub(crate) use launch;

/// A buffer of `got` values is the `want` values a kernel will be given.
pub fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::Shape(format!(
            "{what}: expected {want} values, the buffer holds {got}"
        )));
    }
    Ok(())
}

/// A size as the kernels' `int`.
pub(crate) fn as_i32(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Shape(format!("{what} = {v} exceeds the kernels' limit")))
}

/// An element count as the kernels' `long long`.
pub(crate) fn as_i64(v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Shape(format!("{v} elements exceed the kernels' limit")))
}

/// One block of 1,024 threads per channel, for the per-channel reductions: with a few dozen
/// channels there are fewer blocks than multiprocessors, and each block's loads are what hides
/// the memory latency (4× as many in flight as with 256 threads).
pub(crate) fn per_channel(channels: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        block_dim: (1024, 1, 1),
        ..per_block(channels)?
    })
}

/// One block of 256 threads per channel (or row).
pub(crate) fn per_block(blocks: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (as_i32("blocks", blocks)? as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    })
}
