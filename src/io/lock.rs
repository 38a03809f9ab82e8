//! One writer per run folder: an advisory lock (`flock`) on `DIR/.lock`, held for as long as the
//! [`RunLock`] lives, with the holder's process id written in the file so that a second writer
//! can say who is in the way. The kernel drops the lock when its holder exits, however it exits,
//! so a crash never leaves a folder locked.

use crate::io::atomic::{check_writable, remove_stale_temporaries};
use crate::{Error, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The lock file inside a run folder.
pub const LOCK_FILE: &str = ".lock";

/// The held lock of a run folder; released on drop (or when the process ends).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Create `dir` if needed and lock it for this process: fails at once, naming the holder,
    /// if another process holds it, and fails if files cannot be written there. Once held,
    /// the temporary files a killed writer left are removed.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        // O_NOFOLLOW: a symlink planted at .lock is an error, never a write elsewhere.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| {
                Error::Invalid(format!(
                    "{}: cannot open the run folder's lock file ({e}); is the folder writable?",
                    path.display()
                ))
            })?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(Error::io(&path, err));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "another process".to_string(),
                pid => format!("process {pid}"),
            };
            return Err(Error::Invalid(format!(
                "{} is in use by another cactus run ({holder} holds {}): wait for it to end, or \
                 choose another --out",
                dir.display(),
                path.display()
            )));
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()))
            .map_err(|e| Error::io(&path, e))?;
        check_writable(dir)?;
        remove_stale_temporaries(dir)?;
        Ok(RunLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_by_pid_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("cactus-lock-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let first = RunLock::acquire(&dir).unwrap();
        assert_eq!(
            fs::read_to_string(first.path()).unwrap().trim(),
            std::process::id().to_string()
        );
        let e = RunLock::acquire(&dir).unwrap_err().to_string();
        assert!(
            e.contains("in use") && e.contains(&std::process::id().to_string()),
            "{e}"
        );
        drop(first);
        RunLock::acquire(&dir).unwrap();
        fs::remove_dir_all(dir).unwrap();
    }
}
