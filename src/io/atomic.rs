//! Write a file so that readers see either the old contents or the new, never a torn file:
//! write a temporary file beside it, flush it to disk, rename it over the target, then flush the
//! folder so that the rename itself survives a power cut.
//!
//! The temporary file has a random name and is created exclusively (`O_CREAT | O_EXCL |
//! O_NOFOLLOW`): a file or symlink planted at that name makes the open fail instead of being
//! written through, so nothing outside the target's folder is ever written.
//!
//! Every step that changes the disk goes through [`step`], which counts it. Two environment
//! variables, read only here and meant for the crash tests, act on the k-th step of a process:
//! `CACTUS_ABORT_AFTER_WRITES=k` kills the process (SIGKILL, as `kill -9` would) right after it,
//! and `CACTUS_FAIL_AFTER_WRITES=k` makes it fail with "No space left on device" instead of
//! happening.

use crate::{Error, Result};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// What temporary names contain, between the target's name and the random suffix.
const TEMP_MARK: &str = ".tmp-";

/// The test hooks' settings: (kill after step k, fail step k).
fn faults() -> (Option<u64>, Option<u64>) {
    static FAULTS: OnceLock<(Option<u64>, Option<u64>)> = OnceLock::new();
    *FAULTS.get_or_init(|| {
        let read = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse().ok());
        (
            read("CACTUS_ABORT_AFTER_WRITES"),
            read("CACTUS_FAIL_AFTER_WRITES"),
        )
    })
}

static STEPS: AtomicU64 = AtomicU64::new(0);

/// Run one disk-changing step (create, write, fsync, rename, link, remove), counted for the
/// crash tests' hooks.
pub(crate) fn step<T>(what: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let (abort_after, fail_at) = faults();
    if abort_after.is_none() && fail_at.is_none() {
        return what();
    }
    let n = STEPS.fetch_add(1, Ordering::SeqCst) + 1;
    if fail_at == Some(n) {
        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
    }
    let result = what()?;
    if abort_after == Some(n) {
        eprintln!("cactus: killed after write step {n} (CACTUS_ABORT_AFTER_WRITES)");
        // SAFETY: signalling our own process; SIGKILL ends it without unwinding, as a crash would.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        std::process::abort();
    }
    Ok(result)
}

/// The folder `path` lives in (`.` for a bare file name).
pub(crate) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Flush a folder's entries (renames, new and removed files) to disk.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    match File::open(dir).and_then(|d| d.sync_all()) {
        // Some file systems cannot sync a folder; their renames are as durable as they get.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        other => other,
    }
}

/// Whether `name` is one of the temporary names this module makes (`.NAME.tmp-…`).
pub fn is_temporary_name(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with('.') && name.contains(TEMP_MARK)
}

/// A random temporary name for `name` in `dir`, not yet created: `.NAME.tmp-<pid>-<16 hex
/// digits>`, the writer's process id first so that a stale one can be told from one in use.
pub(crate) fn temp_name(dir: &Path, name: &OsStr) -> PathBuf {
    dir.join(format!(
        ".{}{TEMP_MARK}{}-{:016x}",
        name.to_string_lossy(),
        std::process::id(),
        rand::random::<u64>()
    ))
}

/// Whether the process that made the temporary file `name` may still be writing it (its pid,
/// when the name has one, is alive).
fn writer_alive(name: &str) -> bool {
    let Some((_, tail)) = name.rsplit_once(TEMP_MARK) else {
        return false;
    };
    let pid = tail.split('-').next().unwrap_or("");
    match pid.parse::<libc::pid_t>() {
        // SAFETY: signal 0 only asks whether the process exists.
        Ok(pid) if pid > 0 => unsafe {
            libc::kill(pid, 0) == 0
                || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
        },
        _ => false,
    }
}

/// A fresh temporary file beside `name` in `dir`, created exclusively under a random name.
pub(crate) fn create_temp(dir: &Path, name: &OsStr) -> io::Result<(PathBuf, File)> {
    let mut last = None;
    for _ in 0..8 {
        let tmp = temp_name(dir, name);
        let opened = step(|| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)
        });
        match opened {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("at least one try"))
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_of(path);
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{}: not a file path", path.display())))?;
    let (tmp, mut f) = create_temp(dir, name).map_err(|e| Error::io(path, e))?;
    let mut renamed = false;
    let result = (|| {
        // Two halves, so that the crash tests also stop inside a write.
        let (first, second) = bytes.split_at(bytes.len() / 2);
        step(|| f.write_all(first))?;
        step(|| f.write_all(second))?;
        step(|| f.sync_all())?;
        step(|| fs::rename(&tmp, path))?;
        renamed = true;
        step(|| sync_dir(dir))
    })();
    if let Err(e) = result {
        if !renamed {
            let _ = fs::remove_file(&tmp);
        }
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Remove the temporary files that writers which no longer run left in `dir` (those of a live
/// process, such as a `cactus eval` writing its reports there, stay). Returns how many were
/// removed.
pub fn remove_stale_temporaries(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        if !is_temporary_name(&name) || writer_alive(&name.to_string_lossy()) {
            continue;
        }
        // `file_type` does not follow symlinks: a planted link is removed, not its target.
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(true);
        if !is_dir && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Fail unless a file can be created in `dir` (checked before long work whose results go there).
pub fn check_writable(dir: &Path) -> Result<()> {
    let (tmp, f) = create_temp(dir, OsStr::new("write-check")).map_err(|e| {
        Error::Invalid(format!(
            "{}: cannot write files in this folder ({e})",
            dir.display()
        ))
    })?;
    drop(f);
    fs::remove_file(&tmp).map_err(|e| Error::io(&tmp, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cactus-atomic-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn replaces_contents_and_leaves_no_temporary() {
        let dir = scratch("replace");
        let p = dir.join("sub").join("f.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let entries: Vec<_> = fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(entries.len(), 1, "temporary file left behind");
        fs::remove_dir_all(dir).unwrap();
    }

    /// A symlink planted at any name a writer could predict (the old `.NAME.tmp-<pid>`
    /// included) is never written through.
    #[test]
    fn temporary_files_never_follow_a_planted_symlink() {
        let dir = scratch("symlink");
        let outside = scratch("symlink-outside");
        fs::create_dir_all(&dir).unwrap();
        fs::create_dir_all(&outside).unwrap();
        let victim = outside.join("victim");
        fs::write(&victim, b"untouched").unwrap();
        let planted = dir.join(format!(".f.bin.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let target = dir.join("f.bin");
        write_atomic(&target, b"new contents").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"untouched", "wrote outside");
        assert_eq!(fs::read(&target).unwrap(), b"new contents");
        assert!(!fs::symlink_metadata(&target).unwrap().is_symlink());
        fs::remove_dir_all(dir).unwrap();
        fs::remove_dir_all(outside).unwrap();
    }

    /// Temporaries a killed writer left (and links planted at such names) are removed; their
    /// targets and every other file stay.
    #[test]
    fn stale_temporaries_are_removed() {
        let dir = scratch("stale");
        fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("kept");
        fs::write(&victim, b"kept").unwrap();
        // Process ids above Linux's largest pid_max belong to no process.
        std::os::unix::fs::symlink(&victim, dir.join(".f.bin.tmp-4194399")).unwrap();
        fs::write(dir.join(".f.bin.tmp-4194400-0123456789abcdef"), b"partial").unwrap();
        fs::write(dir.join(".g.bin.tmp-x"), b"no pid").unwrap();
        fs::create_dir(dir.join(".d.tmp-1")).unwrap();
        // A live writer's (this process's) temporary stays.
        let live = temp_name(&dir, OsStr::new("h.bin"));
        fs::write(&live, b"in use").unwrap();
        assert_eq!(remove_stale_temporaries(&dir).unwrap(), 3);
        let mut left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let live = live.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(left, [".d.tmp-1".to_string(), live, "kept".into()]);
        assert_eq!(fs::read(&victim).unwrap(), b"kept");
        fs::remove_dir_all(dir).unwrap();
    }
}
