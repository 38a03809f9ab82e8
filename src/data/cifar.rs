//! CIFAR-10 in its binary format: `data_batch_1.bin` … `data_batch_5.bin` (train) and
//! `test_batch.bin` (test), each a run of 3073-byte records — one label byte, then the
//! 32×32 red, green and blue planes — exactly the NCHW layout the engine uses, so a record's
//! pixels are copied as they are.

use super::{Dataset, Split};
use crate::runtime::memory;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

pub const SIDE: usize = 32;
pub const CHANNELS: usize = 3;
pub const PIXELS: usize = CHANNELS * SIDE * SIDE;
/// One label byte followed by the pixels.
pub const RECORD: usize = 1 + PIXELS;
pub const NUM_CLASSES: usize = 10;
/// The folder the official archive unpacks to; `--data` may name it or its parent.
pub const SUBDIR: &str = "cifar-10-batches-bin";

/// The batch files of a split, in the order their records are concatenated.
pub fn file_names(split: Split) -> Vec<String> {
    match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".to_string()],
    }
}

/// Loads one split from `dir` or `dir/cifar-10-batches-bin`.
pub fn load_dir(dir: &Path, split: Split, name: &str) -> Result<Dataset> {
    let names = file_names(split);
    let base = [dir.join(SUBDIR), dir.to_path_buf()]
        .into_iter()
        .find(|d| d.join(&names[0]).exists())
        .unwrap_or_else(|| dir.to_path_buf());
    let missing: Vec<&str> = names
        .iter()
        .filter(|n| !base.join(n).exists())
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(Error::bad_file(
            &base,
            format!(
                "missing CIFAR-10 batch files {} (looked in this directory and in {SUBDIR}/)",
                missing.join(", ")
            ),
        ));
    }
    // The whole split, as its files' sizes say, before reading any of it: each byte becomes
    // an f32 pixel, and one file at a time is held as read.
    let sizes: Vec<u64> = names
        .iter()
        .map(|n| std::fs::metadata(base.join(n)).map_or(0, |m| m.len()))
        .collect();
    let total = sizes.iter().fold(0u64, |a, &b| a.saturating_add(b));
    let largest = sizes.iter().copied().max().unwrap_or(0);
    if let Some(why) = memory::exceeds(memory::f32_bytes(total).saturating_add(largest)) {
        return Err(Error::bad_file(
            &base,
            format!(
                "the CIFAR-10 {} batches hold {} bytes; loading them {why}",
                match split {
                    Split::Train => "training",
                    Split::Test => "test",
                },
                total
            ),
        ));
    }
    let mut dataset = empty(name);
    let mut first: Option<(PathBuf, usize)> = None;
    for n in &names {
        let path: PathBuf = base.join(n);
        let data = memory::read_file(&path)?;
        append(&mut dataset, &path, &data)?;
        // A file cut exactly at a record boundary is still well formed; the official training
        // batches all hold the same number of records, so a short one shows up here.
        let records = data.len() / RECORD;
        match &first {
            None => first = Some((path, records)),
            Some((p0, r0)) if *r0 != records => {
                return Err(Error::bad_file(
                    &path,
                    format!(
                        "holds {records} records but {} holds {r0}; the training batches all \
                         have the same size, so one of them is truncated",
                        p0.display()
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(dataset)
}

/// Parses the contents of one batch file into a dataset; `path` only names it in errors.
pub fn from_bytes(name: &str, path: &Path, data: &[u8]) -> Result<Dataset> {
    let mut dataset = empty(name);
    append(&mut dataset, path, data)?;
    Ok(dataset)
}

fn empty(name: &str) -> Dataset {
    Dataset {
        name: name.to_string(),
        images: Vec::new(),
        labels: Vec::new(),
        shape: [CHANNELS, SIDE, SIDE],
        num_classes: NUM_CLASSES,
    }
}

/// Checks every record of `data` before appending any of them.
fn append(dataset: &mut Dataset, path: &Path, data: &[u8]) -> Result<()> {
    if data.is_empty() || !data.len().is_multiple_of(RECORD) {
        return Err(Error::bad_file(
            path,
            format!(
                "size {} bytes is not a positive multiple of the {RECORD}-byte CIFAR-10 record \
                 (1 label byte + {PIXELS} pixel bytes): {} whole records and {} bytes left over; \
                 the file is truncated or not a CIFAR-10 binary batch",
                data.len(),
                data.len() / RECORD,
                data.len() % RECORD
            ),
        ));
    }
    if let Some((i, r)) = data
        .chunks_exact(RECORD)
        .enumerate()
        .find(|(_, r)| usize::from(r[0]) >= NUM_CLASSES)
    {
        return Err(Error::bad_file(
            path,
            format!(
                "label {} of record {i} is out of range: expected 0..={}",
                r[0],
                NUM_CLASSES - 1
            ),
        ));
    }
    let n = data.len() / RECORD;
    let pixels = dataset.images.len().saturating_add(n * PIXELS) as u64;
    if let Some(why) = memory::exceeds(memory::f32_bytes(pixels).saturating_add(data.len() as u64))
    {
        return Err(Error::bad_file(
            path,
            format!("{n} records as f32 pixels: loading them {why}"),
        ));
    }
    dataset.images.reserve(n * PIXELS);
    dataset.labels.reserve(n);
    for r in data.chunks_exact(RECORD) {
        dataset.labels.push(usize::from(r[0]));
        dataset
            .images
            .extend(r[1..].iter().map(|&b| f32::from(b) / 255.0));
    }
    Ok(())
}
