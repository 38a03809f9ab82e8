//! Compiled kernel modules kept on disk between processes. NVRTC takes seconds per module
//! (`conv.cu`, with an entry point per tile shape, about 4 s on a 2-core host), and every
//! `cactus train`, `cactus eval`, test and bench process used to pay it again for the same
//! source.
//!
//! An entry is the CUBIN of one module for one architecture, named by a hash of everything that
//! determines it: the expanded source, the architecture, NVRTC's options and NVRTC's version.
//! Editing a kernel, or another NVRTC, therefore misses the cache rather than loading stale code.
//! Entries are written to a temporary file and renamed, so a reader never sees half of one. An
//! entry the driver refuses to load (damaged on disk) is removed and the module compiled afresh.
//!
//! Where: `$CACTUS_KERNEL_CACHE` (`off` or empty: no cache), else `$XDG_CACHE_HOME/cactus/kernels`,
//! else `~/.cache/cactus/kernels`. A cache that cannot be read or written is skipped silently:
//! it only ever saves time.

use crate::runtime::cuda::nvrtc::{compile_module, compile_options, nvrtc_available, KernelModule};
use crate::Result;
use std::path::{Path, PathBuf};

/// The cache folder, or None when caching is off (or no home folder is known).
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os("CACTUS_KERNEL_CACHE") {
        return (!v.is_empty() && v != "off").then(|| PathBuf::from(v));
    }
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".cache"),
    };
    Some(base.join("cactus").join("kernels"))
}

/// FNV-1a, 64 bits: stable across Rust releases and platforms (the standard hasher is not
/// promised to be), which a file name on disk needs.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().chain(&[0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// NVRTC's (major, minor) version, or None where it cannot tell.
fn nvrtc_version() -> Option<(i32, i32)> {
    if !nvrtc_available() {
        return None;
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-parameters; called only after NVRTC was found loadable.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    (status == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
}

/// The file holding `module` compiled for `arch` by this NVRTC, under `dir`.
pub fn entry_path(dir: &Path, module: KernelModule, arch: &str) -> Result<PathBuf> {
    let source = module.expanded_source()?;
    let version = nvrtc_version().map_or_else(|| "unknown".to_string(), |v| format!("{v:?}"));
    let options = compile_options(arch).join(" ");
    let key = fnv1a(&[
        source.as_bytes(),
        arch.as_bytes(),
        options.as_bytes(),
        version.as_bytes(),
    ]);
    Ok(dir.join(format!("{}-{arch}-{key:016x}.cubin", module.name)))
}

/// Write `bytes` to `path` through a temporary file in the same folder and a rename.
fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id(),
        WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Where a module's code came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Read from the on-disk cache.
    Cache,
    /// Compiled by NVRTC in this call (and stored, where the cache is on).
    Compiled,
}

/// `module` compiled for `arch` and handed to `load` (the driver's module loader): from the
/// cache ([`cache_dir`]) where an entry exists and loads, else compiled by NVRTC and stored for
/// next time.
pub fn load_module<T>(
    module: KernelModule,
    arch: &str,
    load: impl Fn(Vec<u8>) -> Result<T>,
) -> Result<(T, Origin)> {
    load_module_in(cache_dir().as_deref(), module, arch, load)
}

/// [`load_module`] with the cache in `dir` (None: no cache).
pub fn load_module_in<T>(
    dir: Option<&Path>,
    module: KernelModule,
    arch: &str,
    load: impl Fn(Vec<u8>) -> Result<T>,
) -> Result<(T, Origin)> {
    let entry = match dir {
        Some(dir) => Some(entry_path(dir, module, arch)?),
        None => None,
    };
    if let Some(path) = &entry {
        if let Ok(bytes) = std::fs::read(path) {
            match load(bytes) {
                Ok(loaded) => return Ok((loaded, Origin::Cache)),
                // Damaged on disk (or written by another toolchain under the same key): drop it.
                Err(_) => {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
    let cubin = compile_module(module, arch)?;
    if let Some(path) = &entry {
        let _ = store(path, &cubin);
    }
    Ok((load(cubin)?, Origin::Compiled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_changes_with_every_part() {
        let base = fnv1a(&[b"source", b"sm_90", b"opts", b"(13, 0)"]);
        assert_eq!(base, fnv1a(&[b"source", b"sm_90", b"opts", b"(13, 0)"]));
        assert_ne!(base, fnv1a(&[b"sourcf", b"sm_90", b"opts", b"(13, 0)"]));
        assert_ne!(base, fnv1a(&[b"source", b"sm_80", b"opts", b"(13, 0)"]));
        assert_ne!(base, fnv1a(&[b"source", b"sm_90", b"opts", b"(13, 1)"]));
        // Part boundaries count: "ab" + "c" is not "a" + "bc".
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }

    #[test]
    fn entries_are_written_whole() {
        let dir = std::env::temp_dir().join(format!("cactus-cache-test-{}", std::process::id()));
        let path = dir.join("m-sm_90-0.cubin");
        store(&path, b"\x7fELF bytes").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"\x7fELF bytes");
        store(&path, b"replaced").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"replaced");
        let leftovers = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file stays behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
