//! The data layer on small files the tests write themselves: good files load exactly, bad ones
//! give errors naming the file and the problem (never a panic), the embedded mnist-mini is
//! what its README says, and batching is seeded and complete.

use cactus::data::{self, cifar, idx, mnist_mini, Dataset, DatasetKind, Split};
use cactus::rng::Rng;
use clap::ValueEnum;
use flate2::write::GzEncoder;
use flate2::Compression;
use rand::RngCore;
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "cactus-data-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn idx_images(count: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [0x803, count, rows, cols] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v.extend_from_slice(pixels);
    v
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [0x801, labels.len() as u32] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v.extend_from_slice(labels);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Three 2×3 images with pixels 0, 10, 20, … and labels 0, 9, 4.
fn sample_pixels() -> Vec<u8> {
    (0..18u8).map(|i| i * 10).collect()
}
const SAMPLE_LABELS: [u8; 3] = [0, 9, 4];

fn good_images() -> Vec<u8> {
    idx_images(3, 2, 3, &sample_pixels())
}

fn good_labels() -> Vec<u8> {
    idx_labels(&SAMPLE_LABELS)
}

/// Two CIFAR records with labels 3 and 7; pixel j of record r is (r + j) mod 256.
fn good_cifar() -> Vec<u8> {
    let mut v = Vec::new();
    for (r, label) in [3u8, 7].into_iter().enumerate() {
        v.push(label);
        v.extend((0..cifar::PIXELS).map(|j| ((r + j) % 256) as u8));
    }
    v
}

fn err_text<T: std::fmt::Debug>(r: cactus::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

fn assert_err_names(r: cactus::Result<impl std::fmt::Debug>, file: &str, problem: &str) {
    let msg = err_text(r);
    assert!(msg.contains(file), "error does not name {file}: {msg}");
    assert!(
        msg.contains(problem),
        "error does not say {problem:?}: {msg}"
    );
}

fn check_sample(d: &Dataset) {
    assert_eq!(d.len(), 3);
    assert_eq!(d.shape, [1, 2, 3]);
    assert_eq!(d.num_classes, 10);
    assert_eq!(d.labels, vec![0, 9, 4]);
    let want: Vec<f32> = sample_pixels().iter().map(|&b| b as f32 / 255.0).collect();
    assert_eq!(d.images, want);
}

#[test]
fn idx_plain_and_gz_load_with_the_right_values() {
    let plain = TempDir::new();
    plain.write("train-images-idx3-ubyte", &good_images());
    plain.write("train-labels-idx1-ubyte", &good_labels());
    let d = data::load(DatasetKind::Mnist, Some(&plain.0), Split::Train).unwrap();
    check_sample(&d);
    assert_eq!(d.name, "mnist");

    let gzd = TempDir::new();
    gzd.write("t10k-images-idx3-ubyte.gz", &gz(&good_images()));
    gzd.write("t10k-labels-idx1-ubyte.gz", &gz(&good_labels()));
    let d = data::load(DatasetKind::FashionMnist, Some(&gzd.0), Split::Test).unwrap();
    check_sample(&d);
    assert_eq!(d.name, "fashion-mnist");

    // torchvision's layout: DIR/raw/.
    let raw = TempDir::new();
    raw.write("raw/train-images-idx3-ubyte.gz", &gz(&good_images()));
    raw.write("raw/train-labels-idx1-ubyte", &good_labels());
    check_sample(&data::load(DatasetKind::Mnist, Some(&raw.0), Split::Train).unwrap());

    let (x, y) = d.batch(&[2, 0]);
    assert_eq!(x.shape(), &[2, 1, 2, 3]);
    assert_eq!(y, vec![4, 0]);
    assert_eq!(x.data()[0], 120.0 / 255.0);
    assert_eq!(x.data()[6], 0.0);
    let small = d.limit(2);
    assert_eq!((small.len(), small.images.len()), (2, 12));
}

#[test]
fn cifar_loads_from_dir_or_subdir() {
    let t = TempDir::new();
    t.write("cifar-10-batches-bin/test_batch.bin", &good_cifar());
    let d = data::load(DatasetKind::Cifar10, Some(&t.0), Split::Test).unwrap();
    assert_eq!(
        (d.len(), d.shape, d.labels.clone()),
        (2, [3, 32, 32], vec![3, 7])
    );
    // Record 1, green plane, pixel (0, 5): byte (1 + 1024 + 5) mod 256.
    assert_eq!(d.image(1)[1024 + 5], ((1 + 1024 + 5) % 256) as f32 / 255.0);
    let (x, _) = d.batch(&[1]);
    assert_eq!(x.shape(), &[1, 3, 32, 32]);

    let train = TempDir::new();
    for i in 1..=5 {
        train.write(&format!("data_batch_{i}.bin"), &good_cifar());
    }
    let d = data::load(DatasetKind::Cifar10, Some(&train.0), Split::Train).unwrap();
    assert_eq!(d.len(), 10);
    assert_eq!(d.class_counts()[3], 5);
}

#[test]
fn idx_errors_name_the_file_and_the_problem() {
    let p = Path::new("dir/train-images-idx3-ubyte");
    let l = Path::new("dir/train-labels-idx1-ubyte");
    let ok_labels = good_labels();

    // Images file given the labels magic.
    let mut bad = good_images();
    bad[3] = 0x01;
    assert_err_names(
        idx::from_bytes("t", p, &bad, l, &ok_labels),
        "train-images-idx3-ubyte",
        "wrong magic number 0x00000801",
    );
    // Truncated pixels: says expected vs actual.
    let short = &good_images()[..good_images().len() - 1];
    let msg = err_text(idx::from_bytes("t", p, short, l, &ok_labels));
    assert!(
        msg.contains("train-images-idx3-ubyte") && msg.contains("truncated"),
        "{msg}"
    );
    assert!(
        msg.contains("18 bytes") && msg.contains("17 bytes"),
        "{msg}"
    );
    // Trailing garbage.
    let mut long = good_images();
    long.push(0);
    assert_err_names(
        idx::from_bytes("t", p, &long, l, &ok_labels),
        "train-images-idx3-ubyte",
        "trailing garbage",
    );
    // Image / label count mismatch.
    assert_err_names(
        idx::from_bytes("t", p, &good_images(), l, &idx_labels(&[1, 2])),
        "train-labels-idx1-ubyte",
        "holds 2 labels but",
    );
    // Label out of range.
    assert_err_names(
        idx::from_bytes("t", p, &good_images(), l, &idx_labels(&[1, 10, 2])),
        "train-labels-idx1-ubyte",
        "label 10 at index 1 is out of range",
    );
    // Truncated labels.
    assert_err_names(
        idx::from_bytes("t", p, &good_images(), l, &ok_labels[..ok_labels.len() - 1]),
        "train-labels-idx1-ubyte",
        "truncated",
    );
    // Absurd headers are refused before allocating anything.
    let huge = idx_images(u32::MAX, u32::MAX, u32::MAX, &[1, 2, 3]);
    assert_err_names(
        idx::parse_images(p, &huge),
        "train-images-idx3-ubyte",
        "impossible",
    );
    let many = idx_images(u32::MAX, 28, 28, &[0; 784]);
    assert_err_names(
        idx::parse_images(p, &many),
        "train-images-idx3-ubyte",
        "truncated",
    );
    assert_err_names(
        idx::parse_images(p, &idx_images(0, 28, 28, &[])),
        "train-images-idx3-ubyte",
        "no images",
    );
    // Corrupt gzip.
    let gp = Path::new("dir/train-images-idx3-ubyte.gz");
    let mut g = gz(&good_images());
    let mid = g.len() / 2;
    g[mid] ^= 0xff;
    g[mid + 1] ^= 0x55;
    assert_err_names(
        idx::from_bytes("t", gp, &g, l, &ok_labels),
        "train-images-idx3-ubyte.gz",
        "corrupt gzip",
    );
    assert_err_names(
        idx::from_bytes("t", gp, &good_images(), l, &ok_labels),
        "train-images-idx3-ubyte.gz",
        "corrupt gzip",
    );
}

#[test]
fn missing_files_are_listed() {
    let t = TempDir::new();
    assert_err_names(
        data::load(DatasetKind::Mnist, Some(&t.0), Split::Train),
        "train-images-idx3-ubyte.gz",
        "missing IDX file",
    );
    t.write("t10k-images-idx3-ubyte", &good_images());
    assert_err_names(
        data::load(DatasetKind::Mnist, Some(&t.0), Split::Test),
        "t10k-labels-idx1-ubyte",
        "missing IDX file",
    );
    t.write("data_batch_1.bin", &good_cifar());
    assert_err_names(
        data::load(DatasetKind::Cifar10, Some(&t.0), Split::Train),
        "data_batch_2.bin, data_batch_3.bin, data_batch_4.bin, data_batch_5.bin",
        "missing CIFAR-10 batch files",
    );
    // Only mnist-mini works without --data, and it refuses one.
    for kind in [
        DatasetKind::Mnist,
        DatasetKind::FashionMnist,
        DatasetKind::Cifar10,
    ] {
        assert!(err_text(data::load(kind, None, Split::Train)).contains("--data"));
    }
    assert!(
        err_text(data::load(DatasetKind::MnistMini, Some(&t.0), Split::Train))
            .contains("takes no --data")
    );
}

#[test]
fn cifar_errors_name_the_file_and_the_problem() {
    let p = Path::new("dir/data_batch_3.bin");
    let good = good_cifar();
    assert_err_names(
        cifar::from_bytes("c", p, &good[..good.len() - 100]),
        "data_batch_3.bin",
        "not a positive multiple of the 3073-byte CIFAR-10 record",
    );
    let mut bad = good.clone();
    bad[cifar::RECORD] = 10;
    assert_err_names(
        cifar::from_bytes("c", p, &bad),
        "data_batch_3.bin",
        "label 10 of record 1 is out of range",
    );
    let t = TempDir::new();
    for i in 1..=5 {
        let cut = if i == 4 { cifar::RECORD } else { good.len() };
        t.write(&format!("data_batch_{i}.bin"), &good[..cut]);
    }
    assert_err_names(
        data::load(DatasetKind::Cifar10, Some(&t.0), Split::Train),
        "data_batch_4.bin",
        "holds 1 records but",
    );
}

/// Feeds `bytes` to every reader; each must return (Ok or Err), never panic.
fn feed_all(bytes: &[u8]) -> [bool; 5] {
    let p = Path::new("f");
    let g = Path::new("f.gz");
    [
        idx::parse_images(p, bytes).is_ok(),
        idx::parse_labels(p, bytes).is_ok(),
        idx::maybe_gunzip(g, bytes).is_ok(),
        idx::from_bytes("t", g, bytes, p, &good_labels()).is_ok(),
        cifar::from_bytes("c", p, bytes).is_ok(),
    ]
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng::seed(11);
    for len in (0..64).chain([100, 1000, 3073, 6146, 10_000]) {
        for _ in 0..20 {
            let mut b = vec![0u8; len];
            rng.fill_bytes(&mut b);
            feed_all(&b);
            // Also with valid magic numbers, to reach the size checks.
            for magic in [0x803u32, 0x801] {
                if len >= 4 {
                    b[..4].copy_from_slice(&magic.to_be_bytes());
                    feed_all(&b);
                }
            }
            // And with a gzip header, to reach the inflater.
            if len >= 10 {
                b[..4].copy_from_slice(&[0x1f, 0x8b, 8, 0]);
                feed_all(&b);
            }
        }
    }
}

#[test]
fn every_truncation_of_a_good_file_is_an_error() {
    let p = Path::new("f");
    let g = Path::new("f.gz");
    let (images, labels, cifar_bytes) = (good_images(), good_labels(), good_cifar());
    let (gz_images, gz_labels) = (gz(&images), gz(&labels));
    assert!(idx::from_bytes("t", g, &gz_images, g, &gz_labels).is_ok());
    assert!(cifar::from_bytes("c", p, &cifar_bytes).is_ok());
    for n in 0..images.len() {
        assert!(
            idx::parse_images(p, &images[..n]).is_err(),
            "images cut at {n}"
        );
    }
    for n in 0..labels.len() {
        assert!(
            idx::parse_labels(p, &labels[..n]).is_err(),
            "labels cut at {n}"
        );
    }
    for n in 0..gz_images.len() {
        assert!(
            idx::from_bytes("t", g, &gz_images[..n], p, &labels).is_err(),
            "gz images cut at {n}"
        );
    }
    for n in 0..gz_labels.len() {
        assert!(
            idx::from_bytes("t", p, &images, g, &gz_labels[..n]).is_err(),
            "gz labels cut at {n}"
        );
    }
    // A cut at a record boundary leaves a smaller well-formed batch (caught across the five
    // training batches, see `cifar_errors_name_the_file_and_the_problem`).
    for n in (0..cifar_bytes.len()).filter(|n| n % cifar::RECORD != 0 || *n == 0) {
        assert!(
            cifar::from_bytes("c", p, &cifar_bytes[..n]).is_err(),
            "cifar cut at {n}"
        );
    }
}

#[test]
fn mnist_mini_is_as_documented() {
    let train = data::load(DatasetKind::MnistMini, None, Split::Train).unwrap();
    let test = data::load(DatasetKind::MnistMini, None, Split::Test).unwrap();
    assert_eq!(
        (train.len(), test.len()),
        (mnist_mini::TRAIN_LEN, mnist_mini::TEST_LEN)
    );
    assert_eq!(train.len() + test.len(), 10_000);
    for d in [&train, &test] {
        assert_eq!((d.shape, d.num_classes), ([1, 28, 28], 10));
        assert!(
            d.class_counts().iter().all(|&c| c > 0),
            "{:?}",
            d.class_counts()
        );
        let mean = d.images.iter().sum::<f32>() / d.images.len() as f32;
        assert!((mean - 0.1307).abs() < 0.01, "pixel mean {mean}");
        assert!(d.images.iter().all(|&v| (0.0..=1.0).contains(&v)));
    }
    // Per class, 80% (rounded down) went to train.
    for (tr, te) in train.class_counts().iter().zip(test.class_counts()) {
        assert_eq!(*tr, (tr + te) * 8 / 10);
    }
    // Shuffled across classes: a short prefix already holds every class.
    assert!(train
        .clone()
        .limit(200)
        .class_counts()
        .iter()
        .all(|&c| c > 0));
    // Train and test are disjoint.
    let key = |d: &Dataset, i: usize| -> Vec<u8> {
        d.image(i)
            .iter()
            .map(|&v| (v * 255.0).round() as u8)
            .collect()
    };
    let train_set: HashSet<Vec<u8>> = (0..train.len()).map(|i| key(&train, i)).collect();
    assert!((0..test.len()).all(|i| !train_set.contains(&key(&test, i))));
}

#[test]
fn epoch_order_is_seeded_complete_and_resumable() {
    let mut a = Rng::seed(3);
    let mut b = Rng::seed(3);
    let saved = a.state();
    let first = data::epoch_order(1000, &mut a);
    assert_eq!(first, data::epoch_order(1000, &mut b));
    let mut sorted = first.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    assert_ne!(first, sorted);
    // The next epoch differs; rebuilding from the saved state gives the first one again.
    assert_ne!(first, data::epoch_order(1000, &mut a));
    assert_eq!(first, data::epoch_order(1000, &mut Rng::from_state(saved)));

    let sizes: Vec<usize> = data::batches(&first, 64, false).map(|b| b.len()).collect();
    assert_eq!(sizes.len(), data::num_batches(1000, 64, false));
    assert_eq!((sizes.len(), *sizes.last().unwrap()), (16, 1000 - 15 * 64));
    let seen: Vec<usize> = data::batches(&first, 64, false)
        .flatten()
        .copied()
        .collect();
    assert_eq!(seen, first);
    let dropped: Vec<&[usize]> = data::batches(&first, 64, true).collect();
    assert_eq!(dropped.len(), data::num_batches(1000, 64, true));
    assert!(dropped.len() == 15 && dropped.iter().all(|b| b.len() == 64));
    assert_eq!(data::batches(&first[..128], 64, true).count(), 2);
}

#[test]
fn kinds_parse_and_carry_their_constants() {
    for (kind, name) in [
        (DatasetKind::MnistMini, "mnist-mini"),
        (DatasetKind::Mnist, "mnist"),
        (DatasetKind::FashionMnist, "fashion-mnist"),
        (DatasetKind::Cifar10, "cifar10"),
    ] {
        assert_eq!(DatasetKind::from_str(name, false).unwrap(), kind);
        assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{name}\""));
        assert_eq!(kind.to_string(), name);
        let n = kind.normalization();
        assert_eq!(
            (n.mean.len(), n.std.len()),
            (kind.shape()[0], kind.shape()[0])
        );
    }
    assert_eq!(DatasetKind::FashionMnist.normalization().mean, vec![0.2860]);
    assert_eq!(DatasetKind::Cifar10.normalization().std[2], 0.2616);
}
