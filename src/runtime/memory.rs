//! The memory limit, and reading input files within it.
//!
//! Whatever sizes an allocation from what a file or an option says (a data set's header, a
//! checkpoint's input shape and width, a probe's activations) first estimates the bytes from
//! those shapes and asks [`check`], which refuses with the estimate and the limit: a small
//! hostile file can then never make the process allocate without end, nor abort in the
//! allocator. The limit is `--max-memory` (the binary calls [`set_limit`]); by default 3/4 of
//! the machine's memory (physical RAM, or the cgroup's limit when that is lower).
//!
//! [`read_file`] reads only regular files (a FIFO or a device is refused, never opened in a
//! way that blocks), and only up to the limit.

use crate::{Error, Result};
use std::cell::Cell;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The process's limit in bytes; 0 until `set_limit` is called (then the default applies).
static LIMIT: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// A limit for this thread only (`with_limit`), over the process's.
    static SCOPED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Used when the machine's memory cannot be read at all.
const FALLBACK_MEMORY: u64 = 16 << 30;

/// The machine's memory in bytes: `MemTotal` of /proc/meminfo (or sysconf), lowered to a
/// cgroup v2 `memory.max` when one is set, since a container is killed at its own limit.
pub fn machine_memory() -> u64 {
    static MEMORY: OnceLock<u64> = OnceLock::new();
    *MEMORY.get_or_init(|| {
        let physical = meminfo_total()
            .or_else(sysconf_total)
            .unwrap_or(FALLBACK_MEMORY);
        match cgroup_limit() {
            Some(c) if c < physical => c,
            _ => physical,
        }
    })
}

fn meminfo_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

fn sysconf_total() -> Option<u64> {
    #[cfg(unix)]
    {
        // SAFETY: sysconf only reads system constants.
        let (pages, size) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if pages > 0 && size > 0 {
            return (pages as u64).checked_mul(size as u64);
        }
    }
    None
}

fn cgroup_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()?;
    text.trim().parse().ok()
}

/// The default limit: 3/4 of [`machine_memory`], leaving room for the rest of the system.
pub fn default_limit() -> u64 {
    machine_memory() / 4 * 3
}

/// The limit in force on this thread.
pub fn limit() -> u64 {
    if let Some(l) = SCOPED.with(Cell::get) {
        return l;
    }
    match LIMIT.load(Ordering::Relaxed) {
        0 => default_limit(),
        l => l,
    }
}

/// Set the process's limit (`--max-memory`); at least one byte.
pub fn set_limit(bytes: u64) {
    LIMIT.store(bytes.max(1), Ordering::Relaxed);
}

/// Run `f` with `bytes` as this thread's limit (library callers and tests that must not change
/// the limit of other threads).
pub fn with_limit<T>(bytes: u64, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<u64>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SCOPED.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SCOPED.with(|s| s.replace(Some(bytes.max(1)))));
    f()
}

/// `None` when `bytes` fit in the limit, else the reason: "needs about …, more than the
/// memory limit of … (--max-memory)". Callers put what needs it in front.
pub fn exceeds(bytes: u64) -> Option<String> {
    let limit = limit();
    (bytes > limit).then(|| {
        format!(
            "needs about {}, more than the memory limit of {} (--max-memory)",
            format_bytes(bytes),
            format_bytes(limit)
        )
    })
}

/// An error naming `what` when `bytes` exceed the limit.
pub fn check(what: impl FnOnce() -> String, bytes: u64) -> Result<()> {
    match exceeds(bytes) {
        None => Ok(()),
        Some(why) => Err(Error::Invalid(format!("{} {why}", what()))),
    }
}

/// Bytes of `values` f32 values, saturating (a size estimate never wraps to something small).
pub fn f32_bytes(values: u64) -> u64 {
    values.saturating_mul(4)
}

/// `1536` → "1.5 KiB"; binary units, three significant digits.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let digits = if value < 10.0 {
        2
    } else if value < 100.0 {
        1
    } else {
        0
    };
    format!("{value:.digits$} {}", UNITS[unit])
}

/// A size such as `4G`, `512M`, `1.5GiB`, `800k` or `1000000` (bytes), units binary
/// (K = 1024), case-insensitive.
pub fn parse_size(text: &str) -> Result<u64> {
    let bad = || {
        Error::Invalid(format!(
            "'{text}' is not a memory size such as 4G, 512M or 1000000 (bytes)"
        ))
    };
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    let bytes = value * (1u64 << shift) as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// What a non-regular file is, for the error that refuses it.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    "not a regular file"
}

/// The whole of the regular file `path`, refused (with an error naming it) when it is a FIFO,
/// a device or a directory, or larger than the limit.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        // Opening a FIFO for reading waits for a writer; non-blocking, it returns at once and
        // the type check below refuses it. Regular files ignore the flag.
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    #[cfg(unix)]
    if meta.is_dir() {
        // The system's own words, as a plain read would report it.
        return Err(Error::io(
            path,
            std::io::Error::from_raw_os_error(libc::EISDIR),
        ));
    }
    if !meta.is_file() {
        return Err(Error::bad_file(
            path,
            format!("is {}; cactus reads only regular files", kind_of(&meta)),
        ));
    }
    let size = meta.len();
    if let Some(why) = exceeds(size) {
        return Err(Error::bad_file(
            path,
            format!("is {} long; reading it {why}", format_bytes(size)),
        ));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // `take`: a file that grows while it is read stays within the limit.
    file.take(limit().saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if let Some(why) = exceeds(bytes.len() as u64) {
        return Err(Error::bad_file(path, format!("grew while read; {why}")));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        for bad in ["", "0", "-1G", "4Q", "G", "NaN", "1e400"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(format_bytes(100), "100 B");
        assert_eq!(format_bytes(3 << 29), "1.50 GiB");
        assert_eq!(format_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn scoped_limit_applies_to_this_thread_only() {
        let outer = limit();
        with_limit(1000, || {
            assert_eq!(limit(), 1000);
            assert!(check(|| "x".into(), 1001).is_err());
            assert!(check(|| "x".into(), 1000).is_ok());
            assert_eq!(std::thread::spawn(limit).join().unwrap(), outer);
        });
        assert_eq!(limit(), outer);
        assert!(default_limit() > 0);
    }
}
