//! MNIST and Fashion-MNIST in LeCun's IDX format (`train-images-idx3-ubyte` and friends,
//! plain or `.gz`).
//!
//! Every header is checked against the real size of the data and the memory limit before
//! anything is allocated (a gzipped file is inflated only as far as its header promises), so
//! a corrupt or hostile file gives an error naming the file and the problem, never a panic,
//! a huge allocation or a silently short dataset.
//!
//! Real Fashion-MNIST ships in Debian's package `dataset-fashion-mnist`
//! (`apt-get install dataset-fashion-mnist`; `dpkg -L dataset-fashion-mnist` lists it), which
//! installs the four `.gz` files under `/usr/share/datasets/fashion-mnist/`, so:
//! `cactus train --dataset fashion-mnist --data /usr/share/datasets/fashion-mnist`.

use super::{Dataset, Split};
use crate::runtime::memory;
use crate::{Error, Result};
use flate2::read::MultiGzDecoder;
use std::borrow::Cow;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Magic number of an IDX file of unsigned bytes with 3 dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with 1 dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// MNIST-style sets have 10 classes; a larger label means a wrong or corrupt file.
pub const NUM_CLASSES: usize = 10;
/// Decompressed files larger than this are refused (full MNIST training images are 47 MB),
/// so a gzip bomb cannot exhaust memory.
pub const MAX_DECOMPRESSED: u64 = 1 << 30;

/// Images decoded from an IDX file: `count` images of `rows`×`cols` bytes, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxImages {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

/// The file names tried for one split's images and labels, in order of preference: the
/// standard names, plain then gzipped, then the dotted spelling some mirrors use.
pub fn file_names(split: Split) -> ([String; 4], [String; 4]) {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let names = |what: &str, dims: &str| {
        [
            format!("{prefix}-{what}-{dims}-ubyte"),
            format!("{prefix}-{what}-{dims}-ubyte.gz"),
            format!("{prefix}-{what}.{dims}-ubyte"),
            format!("{prefix}-{what}.{dims}-ubyte.gz"),
        ]
    };
    (names("images", "idx3"), names("labels", "idx1"))
}

/// Loads one split from `dir` (or `dir/raw`, torchvision's layout).
pub fn load_dir(dir: &Path, split: Split, name: &str) -> Result<Dataset> {
    let (image_names, label_names) = file_names(split);
    let images_path = find(dir, &image_names)?;
    let labels_path = find(dir, &label_names)?;
    let images = memory::read_file(&images_path)?;
    let labels = memory::read_file(&labels_path)?;
    from_bytes(name, &images_path, &images, &labels_path, &labels)
}

/// Builds a dataset from the contents of an images file and a labels file (gzipped when the
/// name ends in `.gz`); the paths only name the files in errors.
///
/// What the data set will take in memory (the decompressed bytes and the f32 pixels) is
/// checked against the memory limit from the headers alone, before any of it is allocated,
/// and a gzipped file is decompressed only as far as its header promises.
pub fn from_bytes(
    name: &str,
    images_path: &Path,
    images: &[u8],
    labels_path: &Path,
    labels: &[u8],
) -> Result<Dataset> {
    let image_bytes = decompressed(images_path, images, 16, |head| {
        let (count, rows, cols) = images_header(images_path, head)?;
        let body = body_len(images_path, count, rows * cols, "images")?;
        check_memory(images_path, body, 4, "images")?;
        Ok(body)
    })?;
    let (count, rows, cols, pixels) = split_images(images_path, &image_bytes)?;
    check_memory(images_path, pixels.len() as u64, 4, "images")?;
    let labels = parse_labels(
        labels_path,
        &decompressed(labels_path, labels, 8, |head| {
            let count = labels_header(labels_path, head)?;
            let body = body_len(labels_path, count, 1, "labels")?;
            check_memory(
                labels_path,
                body,
                std::mem::size_of::<usize>() as u64,
                "labels",
            )?;
            Ok(body)
        })?,
    )?;
    if count != labels.len() {
        return Err(Error::bad_file(
            labels_path,
            format!(
                "holds {} labels but {} holds {} images; the two files must come from the same split",
                labels.len(),
                images_path.display(),
                count
            ),
        ));
    }
    Ok(Dataset {
        name: name.to_string(),
        images: pixels.iter().map(|&b| f32::from(b) / 255.0).collect(),
        labels,
        shape: [1, rows, cols],
        num_classes: NUM_CLASSES,
    })
}

/// The first of `names` that exists in `dir` or `dir/raw`.
fn find(dir: &Path, names: &[String]) -> Result<PathBuf> {
    let dirs = [dir.to_path_buf(), dir.join("raw")];
    for d in &dirs {
        for n in names {
            let p = d.join(n);
            if p.exists() {
                // Not only regular files: a FIFO or device of the right name is refused by
                // the reader with its own error rather than skipped.
                return Ok(p);
            }
        }
    }
    Err(Error::bad_file(
        dir,
        format!(
            "missing IDX file: looked for {} in this directory and in its raw/ subdirectory",
            names.join(", ")
        ),
    ))
}

fn is_gzip(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gz")
}

/// Refuses a data set whose `body` bytes (one per value, decompressed) and the `per_value`
/// bytes each value takes once loaded would not fit in the memory limit.
fn check_memory(path: &Path, body: u64, per_value: u64, what: &str) -> Result<()> {
    match memory::exceeds(body.saturating_mul(1 + per_value)) {
        None => Ok(()),
        Some(why) => Err(Error::bad_file(
            path,
            format!("its header promises {body} bytes of {what}; loading them {why}"),
        )),
    }
}

/// `data` itself, or for a `.gz` path its decompressed contents: the `header_len`-byte header
/// first, then no more than `promised(header)` bytes (which checks the header), so that a
/// small file cannot inflate beyond what its header declares. A header cut short comes back
/// as it is, for the parser's own message.
fn decompressed<'a>(
    path: &Path,
    data: &'a [u8],
    header_len: usize,
    promised: impl FnOnce(&[u8]) -> Result<u64>,
) -> Result<Cow<'a, [u8]>> {
    if !is_gzip(path) {
        return Ok(Cow::Borrowed(data));
    }
    let corrupt = |e: std::io::Error| Error::bad_file(path, format!("corrupt gzip data: {e}"));
    let mut decoder = MultiGzDecoder::new(data);
    let mut out = Vec::with_capacity(header_len);
    (&mut decoder)
        .take(header_len as u64)
        .read_to_end(&mut out)
        .map_err(corrupt)?;
    if out.len() < header_len {
        return Ok(Cow::Owned(out));
    }
    let body = promised(&out)?;
    out.reserve(body as usize);
    // One byte more than promised tells trailing data from an exact fit.
    (&mut decoder)
        .take(body.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(corrupt)?;
    if (out.len() - header_len) as u64 > body {
        return Err(Error::bad_file(
            path,
            format!(
                "corrupt gzip data or trailing garbage: it inflates beyond the {header_len}-byte \
                 header and the {body} bytes of data it declares"
            ),
        ));
    }
    Ok(Cow::Owned(out))
}

/// Decompresses `data` if `path` ends in `.gz` (all gzip members; trailing bytes are an
/// error), to at most `MAX_DECOMPRESSED` bytes and the memory limit.
pub fn maybe_gunzip(path: &Path, data: &[u8]) -> Result<Vec<u8>> {
    if !is_gzip(path) {
        return Ok(data.to_vec());
    }
    let cap = MAX_DECOMPRESSED.min(memory::limit());
    let mut out = Vec::new();
    MultiGzDecoder::new(data)
        .take(cap + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::bad_file(path, format!("corrupt gzip data: {e}")))?;
    if out.len() as u64 > cap {
        return Err(Error::bad_file(
            path,
            format!(
                "decompresses to more than {}; refusing it",
                memory::format_bytes(cap)
            ),
        ));
    }
    Ok(out)
}

fn be_u32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

/// Checks the header length and magic number; returns the declared dimensions.
fn header(path: &Path, data: &[u8], magic: u32, dims: usize, what: &str) -> Result<Vec<usize>> {
    let len = 4 + 4 * dims;
    if data.len() < len {
        return Err(Error::bad_file(
            path,
            format!(
                "truncated: {} bytes, shorter than the {len}-byte IDX {what} header",
                data.len()
            ),
        ));
    }
    let found = be_u32(data, 0);
    if found != magic {
        let hint = match found {
            IMAGES_MAGIC => " (this is an IDX images file)",
            LABELS_MAGIC => " (this is an IDX labels file)",
            _ => "",
        };
        return Err(Error::bad_file(
            path,
            format!(
                "wrong magic number 0x{found:08x}{hint}, expected 0x{magic:08x} for IDX {what}"
            ),
        ));
    }
    Ok((0..dims)
        .map(|i| be_u32(data, 4 + 4 * i) as usize)
        .collect())
}

/// The images header's (count, rows, cols), none of them zero.
fn images_header(path: &Path, data: &[u8]) -> Result<(usize, usize, usize)> {
    let dims = header(path, data, IMAGES_MAGIC, 3, "images")?;
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    if count == 0 || rows == 0 || cols == 0 {
        return Err(Error::bad_file(
            path,
            format!("header claims {count} images of {rows}×{cols}; the file holds no images"),
        ));
    }
    // Each is below 2^32, so the product fits in 64 bits.
    Ok((count, rows, cols))
}

/// The labels header's count, not zero.
fn labels_header(path: &Path, data: &[u8]) -> Result<usize> {
    let count = header(path, data, LABELS_MAGIC, 1, "labels")?[0];
    if count == 0 {
        return Err(Error::bad_file(
            path,
            "header claims 0 labels; the file holds no labels",
        ));
    }
    Ok(count)
}

/// `count × item` bytes of data, or an error for a product that no file could hold.
fn body_len(path: &Path, count: usize, item: usize, what: &str) -> Result<u64> {
    (count as u64)
        .checked_mul(item as u64)
        .filter(|&n| n <= isize::MAX as u64)
        .ok_or_else(|| {
            Error::bad_file(
                path,
                format!("header claims {count} {what} of {item} bytes, an impossible size"),
            )
        })
}

/// Checks that the body after a `header_len`-byte header is exactly `count × item` bytes.
fn check_body(
    path: &Path,
    data: &[u8],
    header_len: usize,
    count: usize,
    item: usize,
    what: &str,
) -> Result<()> {
    let body = (data.len() - header_len) as u64;
    let expected = body_len(path, count, item, what)?;
    if body < expected {
        return Err(Error::bad_file(
            path,
            format!(
                "truncated: header claims {count} {what} ({expected} bytes of data) but the file \
                 holds {body} bytes of data"
            ),
        ));
    }
    if body > expected {
        return Err(Error::bad_file(
            path,
            format!(
                "{} bytes of trailing garbage after {count} {what} ({expected} bytes of data)",
                body - expected
            ),
        ));
    }
    Ok(())
}

/// A decompressed images file's (count, rows, cols) and its pixels, checked.
fn split_images<'a>(path: &Path, data: &'a [u8]) -> Result<(usize, usize, usize, &'a [u8])> {
    let (count, rows, cols) = images_header(path, data)?;
    let item = rows.checked_mul(cols).ok_or_else(|| {
        Error::bad_file(
            path,
            format!("impossible image size {rows}×{cols} in header"),
        )
    })?;
    check_body(path, data, 16, count, item, "images")?;
    Ok((count, rows, cols, &data[16..]))
}

/// Parses a decompressed IDX images file (magic 0x00000803: u8, 3-D).
pub fn parse_images(path: &Path, data: &[u8]) -> Result<IdxImages> {
    let (count, rows, cols, pixels) = split_images(path, data)?;
    Ok(IdxImages {
        count,
        rows,
        cols,
        pixels: pixels.to_vec(),
    })
}

/// Parses a decompressed IDX labels file (magic 0x00000801: u8, 1-D); labels must be < 10.
pub fn parse_labels(path: &Path, data: &[u8]) -> Result<Vec<usize>> {
    let count = labels_header(path, data)?;
    check_body(path, data, 8, count, 1, "labels")?;
    let labels = &data[8..];
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| usize::from(l) >= NUM_CLASSES)
    {
        return Err(Error::bad_file(
            path,
            format!(
                "label {l} at index {i} is out of range: expected 0..={}",
                NUM_CLASSES - 1
            ),
        ));
    }
    Ok(labels.iter().map(|&l| usize::from(l)).collect())
}
