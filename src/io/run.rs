//! A run folder's commit protocol: one commit point per epoch.
//!
//! An epoch's files are first written under names of their own (`model.e3.safetensors`, each
//! atomically), then `manifest.json` is replaced, atomically, by one naming them with their
//! sizes and SHA-256 hashes: that rename is the commit. Only then do the stable names
//! (`model.safetensors`, …) become hard links to the committed files (copies where the file
//! system has no hard links), and the previous epoch's files go. A crash at any moment leaves
//! a manifest that names a complete, verifiable epoch (the last committed one); readers trust
//! only what it names, and `publish` redoes the stable names after a crash.
//!
//! ```json
//! {"format": "cactus-run", "version": 1, "epoch": 3,
//!  "files": [{"name": "model.safetensors", "file": "model.e3.safetensors",
//!             "bytes": 107530, "sha256": "9f2c…"}, …]}
//! ```

use crate::io::atomic::{parent_of, step, sync_dir, temp_name, write_atomic};
use crate::runtime::memory;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// The commit point of a run folder.
pub const MANIFEST_FILE: &str = "manifest.json";
const FORMAT: &str = "cactus-run";
const VERSION: u32 = 1;

/// One committed file: its stable name, the name it was committed under, size and hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFile {
    /// The stable name readers know (`model.safetensors`).
    pub name: String,
    /// The file the commit wrote (`model.e3.safetensors`); the stable name is a link to it.
    pub file: String,
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the contents.
    pub sha256: String,
}

/// The contents of `manifest.json`: the last committed epoch and its files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub epoch: u64,
    pub files: Vec<RunFile>,
}

impl Manifest {
    /// The entry whose stable name is `name`.
    pub fn entry(&self, name: &str) -> Option<&RunFile> {
        self.files.iter().find(|f| f.name == name)
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The name an epoch's copy of `name` is committed under: `model.safetensors` at epoch 3 is
/// `model.e3.safetensors` (`NAME.e3` without an extension); `retry` > 0 (the epoch committed
/// again, while its first commit is in force) gives `model.e3-1.safetensors`, ….
pub fn generation_name(name: &str, epoch: u64, retry: u32) -> String {
    let tag = match retry {
        0 => format!("e{epoch}"),
        r => format!("e{epoch}-{r}"),
    };
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}.{tag}.{ext}"),
        _ => format!("{name}.{tag}"),
    }
}

/// Whether `candidate` is a generation name of `name` (`model.e3.safetensors`,
/// `model.e3-1.safetensors`).
fn is_generation_of(name: &str, candidate: &str) -> bool {
    let (stem, ext) = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem, Some(ext)),
        _ => (name, None),
    };
    let Some(rest) = candidate
        .strip_prefix(stem)
        .and_then(|r| r.strip_prefix(".e"))
    else {
        return false;
    };
    let tag = match ext {
        Some(ext) => rest.strip_suffix(ext).and_then(|r| r.strip_suffix('.')),
        None => Some(rest),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match tag.map(|t| t.split_once('-').unwrap_or((t, "0"))) {
        Some((epoch, retry)) => digits(epoch) && digits(retry),
        None => false,
    }
}

/// A plain file name inside the folder: one normal path component, not hidden.
fn is_plain_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!(
        (parts.next(), parts.next()),
        (Some(Component::Normal(_)), None)
    ) && !name.starts_with('.')
}

/// Read `DIR/manifest.json`: `None` where there is none (a fresh folder, or one written before
/// manifests); an error naming it when it is unreadable or malformed.
pub fn read_manifest(dir: &Path) -> Result<Option<Manifest>> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = match memory::read_file(&path) {
        Ok(b) => b,
        Err(Error::Io { cause, .. }) if cause.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |m: String| Error::bad_file(&path, m);
    let text = String::from_utf8(bytes)
        .map_err(|_| bad("not a readable run manifest: not UTF-8".into()))?;
    let m: Manifest = serde_json::from_str(&text)
        .map_err(|e| bad(format!("not a readable run manifest: {e}")))?;
    if m.format != FORMAT {
        return Err(bad(format!("'format' is '{}', not '{FORMAT}'", m.format)));
    }
    if m.version != VERSION {
        return Err(bad(format!(
            "version {} (this cactus reads version {VERSION}): written by another cactus",
            m.version
        )));
    }
    for f in &m.files {
        if !is_plain_name(&f.name) || !is_plain_name(&f.file) {
            return Err(bad(format!(
                "names a file outside the folder: '{}' / '{}'",
                f.name, f.file
            )));
        }
        if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("'{}' has no valid sha256", f.name)));
        }
    }
    Ok(Some(m))
}

/// Whether `dir` holds a run: a manifest, or the training state of a folder written before
/// manifests (`legacy_state`).
pub fn holds_run(dir: &Path, legacy_state: &str) -> bool {
    dir.join(MANIFEST_FILE).exists() || dir.join(legacy_state).exists()
}

/// The bytes of `path`, checked against a manifest entry (size and hash).
fn read_verified(path: &Path, entry: &RunFile, epoch: u64) -> Result<Vec<u8>> {
    let bytes = memory::read_file(path)?;
    if bytes.len() as u64 != entry.bytes || sha256_hex(&bytes) != entry.sha256 {
        return Err(Error::bad_file(
            path,
            format!(
                "does not match {MANIFEST_FILE} (epoch {epoch}: {} bytes, sha256 {}); the file \
                 changed after it was committed",
                entry.bytes,
                &entry.sha256[..12]
            ),
        ));
    }
    Ok(bytes)
}

/// The committed bytes of the stable name `name` (read from the file the commit wrote, size and
/// hash checked), with that file's path.
pub fn read_committed(dir: &Path, manifest: &Manifest, name: &str) -> Result<(PathBuf, Vec<u8>)> {
    let entry = manifest.entry(name).ok_or_else(|| {
        Error::bad_file(
            dir.join(MANIFEST_FILE),
            format!("names no '{name}' (epoch {})", manifest.epoch),
        )
    })?;
    let path = dir.join(&entry.file);
    let bytes = read_verified(&path, entry, manifest.epoch)?;
    Ok((path, bytes))
}

/// Commit an epoch: write each `(stable name, contents)` under its generation name, then the
/// manifest (the commit point), then point the stable names at them and remove older epochs'
/// files. An error before the manifest's rename leaves the previous commit in force; one after
/// it leaves this epoch committed, and `publish` finishes the stable names.
pub fn commit(dir: &Path, epoch: u64, files: &[(&str, &[u8])]) -> Result<Manifest> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let previous = read_manifest(dir).ok().flatten();
    let mut entries = Vec::with_capacity(files.len());
    for (name, bytes) in files {
        // Never overwrite a file the manifest in force names (the same epoch saved again).
        let taken = |file: &str| {
            previous
                .as_ref()
                .is_some_and(|p| p.files.iter().any(|f| f.file == file))
        };
        let file = (0..)
            .map(|retry| generation_name(name, epoch, retry))
            .find(|file| !taken(file))
            .expect("a free name");
        write_atomic(&dir.join(&file), bytes)?;
        entries.push(RunFile {
            name: name.to_string(),
            file,
            bytes: bytes.len() as u64,
            sha256: sha256_hex(bytes),
        });
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        epoch,
        files: entries,
    };
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises") + "\n";
    write_atomic(&dir.join(MANIFEST_FILE), text.as_bytes())?;
    publish(dir, &manifest)?;
    remove_uncommitted(dir, &manifest)?;
    Ok(manifest)
}

/// Whether `alias` is already the committed file (the same inode, or the same bytes).
fn alias_is_current(dir: &Path, entry: &RunFile) -> bool {
    let (alias, file) = (dir.join(&entry.name), dir.join(&entry.file));
    match (fs::symlink_metadata(&alias), fs::metadata(&file)) {
        (Ok(a), Ok(f)) if a.is_file() => {
            (a.dev(), a.ino()) == (f.dev(), f.ino())
                || (a.len() == entry.bytes
                    && memory::read_file(&alias).is_ok_and(|b| sha256_hex(&b) == entry.sha256))
        }
        _ => false,
    }
}

/// Make every stable name of the manifest the committed file (a hard link, or a copy where the
/// file system has none); returns the names it had to change. Idempotent: run after a commit
/// and again on resume, to finish what a crash interrupted.
pub fn publish(dir: &Path, manifest: &Manifest) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    for entry in &manifest.files {
        if alias_is_current(dir, entry) {
            continue;
        }
        let (alias, file) = (dir.join(&entry.name), dir.join(&entry.file));
        // link(2) creates the new name exclusively and does not follow symlinks.
        let tmp = temp_name(dir, entry.name.as_ref());
        match step(|| fs::hard_link(&file, &tmp)) {
            Ok(()) => {
                let renamed = step(|| fs::rename(&tmp, &alias));
                // rename(2) between two links of one file does nothing: drop the spare name.
                let _ = fs::remove_file(&tmp);
                renamed.map_err(|e| Error::io(&alias, e))?;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return Err(Error::io(&alias, e)),
            // No hard links here (or a name clash): a copy, written atomically, serves as well.
            Err(_) => {
                let bytes = read_verified(&file, entry, manifest.epoch)?;
                write_atomic(&alias, &bytes)?;
            }
        }
        changed.push(entry.name.clone());
    }
    if !changed.is_empty() {
        step(|| sync_dir(dir)).map_err(|e| Error::io(dir, e))?;
    }
    Ok(changed)
}

/// Remove the generation files of the manifest's names that it does not name: the previous
/// epoch's, and those of a commit a crash cut short. Returns how many went.
pub fn remove_uncommitted(dir: &Path, manifest: &Manifest) -> Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let Some(candidate) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let stale = manifest
            .files
            .iter()
            .any(|f| is_generation_of(&f.name, &candidate))
            && !manifest.files.iter().any(|f| f.file == candidate);
        if stale && entry.file_type().is_ok_and(|t| !t.is_dir()) {
            step(|| fs::remove_file(entry.path())).map_err(|e| Error::io(entry.path(), e))?;
            removed += 1;
        }
    }
    if removed > 0 {
        step(|| sync_dir(dir)).map_err(|e| Error::io(dir, e))?;
    }
    Ok(removed)
}

/// Read the checkpoint `cactus eval --checkpoint PATH` names. A folder is a run folder: its
/// committed `name` (with a manifest; the stable name itself in a folder written before
/// manifests). A file that a manifest beside it names (by its stable or its committed name)
/// must match it: a stable name left behind by a crash is an error that says how to repair it.
/// Returns the path read (the stable name where it holds the committed file) and the bytes.
pub fn read_checkpoint(path: &Path, name: &str) -> Result<(PathBuf, Vec<u8>)> {
    // A training run may be committing its next epoch while we read (a file named by the
    // manifest we read is gone, or the stable name is not yet the new epoch's): try again a
    // moment later before calling the folder inconsistent.
    const TRIES: usize = 3;
    let mut attempt = 1;
    loop {
        let result = read_checkpoint_once(path, name);
        let transient = match &result {
            Err(Error::Io { cause, .. }) => cause.kind() == io::ErrorKind::NotFound,
            Err(Error::BadFile { .. }) => true,
            _ => false,
        };
        if !transient || attempt == TRIES {
            return result;
        }
        attempt += 1;
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn read_checkpoint_once(path: &Path, name: &str) -> Result<(PathBuf, Vec<u8>)> {
    if path.is_dir() {
        return match read_manifest(path)? {
            Some(m) => {
                let (file, bytes) = read_committed(path, &m, name)?;
                let alias = path.join(name);
                let current = m.entry(name).is_some_and(|e| alias_is_current(path, e));
                Ok((if current { alias } else { file }, bytes))
            }
            None => {
                let alias = path.join(name);
                if !alias.is_file() {
                    return Err(Error::bad_file(
                        path,
                        format!("not a run folder: no {MANIFEST_FILE} and no {name}"),
                    ));
                }
                let bytes = memory::read_file(&alias)?;
                Ok((alias, bytes))
            }
        };
    }
    let bytes = memory::read_file(path)?;
    let dir = parent_of(path);
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let Ok(Some(m)) = read_manifest(dir) else {
        return Ok((path.to_path_buf(), bytes));
    };
    let Some(entry) = m
        .files
        .iter()
        .find(|f| f.name == file_name || f.file == file_name)
    else {
        return Ok((path.to_path_buf(), bytes));
    };
    if bytes.len() as u64 != entry.bytes || sha256_hex(&bytes) != entry.sha256 {
        return Err(Error::bad_file(
            path,
            format!(
                "is not the checkpoint {} commits (epoch {}): the run stopped while saving. \
                 `cactus train --out {} --resume` repairs it; `--checkpoint {}` reads the \
                 committed one",
                dir.join(MANIFEST_FILE).display(),
                m.epoch,
                dir.display(),
                dir.display()
            ),
        ));
    }
    Ok((path.to_path_buf(), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_names_are_recognised() {
        assert_eq!(
            generation_name("model.safetensors", 3, 0),
            "model.e3.safetensors"
        );
        assert_eq!(
            generation_name("model.safetensors", 3, 2),
            "model.e3-2.safetensors"
        );
        assert_eq!(generation_name("history.json", 12, 0), "history.e12.json");
        assert_eq!(generation_name("notes", 1, 0), "notes.e1");
        for (name, retry) in [("model.safetensors", 0), ("history.json", 4), ("notes", 0)] {
            assert!(is_generation_of(name, &generation_name(name, 7, retry)));
        }
        for other in [
            "model.safetensors",
            "model.e.safetensors",
            "model.e3x.safetensors",
            "model.e3-.safetensors",
            "model.e3.json",
            "modelx.e3.safetensors",
            "model-lul1.safetensors",
            ".model.e3.safetensors.tmp-00ff",
        ] {
            assert!(!is_generation_of("model.safetensors", other), "{other}");
        }
    }

    #[test]
    fn manifests_naming_files_outside_the_folder_are_refused() {
        assert!(is_plain_name("model.e3.safetensors"));
        for bad in ["../x", "/etc/passwd", "a/b", ".lock", "", ".."] {
            assert!(!is_plain_name(bad), "{bad}");
        }
    }
}
