//! Datasets: MNIST and Fashion-MNIST (IDX), CIFAR-10 (binary batches), the embedded
//! `mnist-mini`, and seeded batching.
//!
//! Every dataset is held in memory as f32 pixels in [0, 1] (NCHW); normalisation is not applied
//! here but by the model's first layer (docs/design.md, "Epsilon and input normalisation"), so ε stays in pixel space.

pub mod batches;
pub mod cifar;
pub mod idx;
pub mod mnist_mini;

pub use batches::{batches, epoch_order, num_batches};

use crate::nn::Normalization;
use crate::{Error, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Images with labels, all in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub name: String,
    /// N×C×H×W, values in [0, 1].
    pub images: Vec<f32>,
    pub labels: Vec<usize>,
    /// [C, H, W] of one image.
    pub shape: [usize; 3],
    pub num_classes: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values in one image (C·H·W).
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The pixels of image `i`. Panics if `i` is out of range.
    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// The images at `indices` as a `[b, C, H, W]` tensor, with their labels.
    /// Panics on an index out of range (indices come from `epoch_order`, not from users).
    pub fn batch(&self, indices: &[usize]) -> (Tensor, Vec<usize>) {
        let n = self.image_len();
        let mut data = Vec::with_capacity(indices.len() * n);
        for &i in indices {
            data.extend_from_slice(self.image(i));
        }
        let [c, h, w] = self.shape;
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        (Tensor::from_vec(data, &[indices.len(), c, h, w]), labels)
    }

    /// Only the points `start..end` (clamped to the set), in order.
    pub fn slice(self, start: usize, end: usize) -> Dataset {
        let mut kept = self.limit(end);
        let start = start.min(kept.len());
        let per = kept.image_len();
        kept.labels.drain(..start);
        kept.images.drain(..start * per);
        kept
    }

    /// Keeps the first `n` images (all of them if there are fewer), for quick runs.
    pub fn limit(mut self, n: usize) -> Dataset {
        if n < self.len() {
            self.labels.truncate(n);
            self.images.truncate(n * self.image_len());
        }
        self
    }

    /// How many images each class has.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in &self.labels {
            counts[l] += 1;
        }
        counts
    }
}

/// The datasets `--dataset` can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize)]
pub enum DatasetKind {
    /// 10,000 real MNIST digits embedded in the binary (no `--data` needed).
    #[value(name = "mnist-mini")]
    #[serde(rename = "mnist-mini")]
    MnistMini,
    #[value(name = "mnist")]
    #[serde(rename = "mnist")]
    Mnist,
    #[value(name = "fashion-mnist")]
    #[serde(rename = "fashion-mnist")]
    FashionMnist,
    #[value(name = "cifar10")]
    #[serde(rename = "cifar10")]
    Cifar10,
}

impl DatasetKind {
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::MnistMini => "mnist-mini",
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Cifar10 => "cifar10",
        }
    }

    /// [C, H, W] of one image.
    pub fn shape(self) -> [usize; 3] {
        match self {
            DatasetKind::Cifar10 => [cifar::CHANNELS, cifar::SIDE, cifar::SIDE],
            _ => [1, 28, 28],
        }
    }

    pub fn num_classes(self) -> usize {
        10
    }

    /// The customary per-channel mean and std of the training set, for the model's input layer.
    /// mnist-mini uses MNIST's, since it is a subset of MNIST.
    pub fn normalization(self) -> Normalization {
        let (mean, std) = match self {
            DatasetKind::MnistMini | DatasetKind::Mnist => (vec![0.1307], vec![0.3081]),
            DatasetKind::FashionMnist => (vec![0.2860], vec![0.3530]),
            DatasetKind::Cifar10 => (vec![0.4914, 0.4822, 0.4465], vec![0.2470, 0.2435, 0.2616]),
        };
        Normalization { mean, std }
    }
}

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Split {
    Train,
    Test,
}

/// Loads one split of a dataset. `dir` (the `--data` option) is required for every kind except
/// the embedded mnist-mini, which refuses one rather than silently ignore it.
pub fn load(kind: DatasetKind, dir: Option<&Path>, split: Split) -> Result<Dataset> {
    let name = kind.name();
    match (kind, dir) {
        (DatasetKind::MnistMini, None) => mnist_mini::load(split),
        (DatasetKind::MnistMini, Some(d)) => Err(Error::Invalid(format!(
            "mnist-mini is embedded and takes no --data (got {}); drop --data, or pass \
             --dataset mnist to read MNIST files from that directory",
            d.display()
        ))),
        (_, None) => Err(Error::Invalid(format!(
            "dataset {name} needs --data DIR, the directory holding its files{}",
            match kind {
                DatasetKind::Cifar10 => " (data_batch_1.bin … test_batch.bin)",
                DatasetKind::FashionMnist => {
                    " (IDX files; Debian's dataset-fashion-mnist installs them in \
                     /usr/share/datasets/fashion-mnist)"
                }
                _ => " (train-images-idx3-ubyte[.gz] and the other IDX files)",
            }
        ))),
        (DatasetKind::Cifar10, Some(d)) => cifar::load_dir(d, split, name),
        (_, Some(d)) => idx::load_dir(d, split, name),
    }
}
