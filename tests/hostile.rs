//! Files and options crafted to break cactus: each must end in one clear error, never a panic,
//! an abort in the allocator, a hang or an answer computed from NaN.
//!
//! - training states whose optimiser state, counters or RNG do not fit their model;
//! - inputs whose shapes ask for more memory than the limit (gzip IDX, probes, model widths,
//!   non-regular files);
//! - checkpoints that load but would compute NaN, and NaN reached in evaluation;
//! - option and metadata edge cases (zero test points, control characters, a NaN ε).

use cactus::data::{idx, Dataset, DatasetKind};
use cactus::eval::{evaluate, EvalConfig};
use cactus::io::{load_checkpoint, save_checkpoint, save_compressed_checkpoint};
use cactus::nn::{Arch, Init, Layer, Model, ModelSpec};
use cactus::rng::Rng;
use cactus::runtime::memory;
use cactus::train::trainer::STATE_FILE;
use cactus::train::{Method, TrainConfig, Trainer};
use cactus::Tensor;
use flate2::write::GzEncoder;
use flate2::Compression;
use indicatif::ProgressBar;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cactus-hostile-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn cactus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cactus"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("the cactus binary runs")
}

/// The run must fail (exit 1, no panic, no signal) with `needle` in its error.
fn fails(args: &[&str], needle: &str) {
    let out = cactus(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "cactus {args:?} should fail with exit code 1, got {:?}:\n{err}",
        out.status
    );
    assert!(
        !err.contains("panicked"),
        "cactus {args:?} panicked:\n{err}"
    );
    assert!(
        err.contains(needle),
        "cactus {args:?}: expected '{needle}' in the error, got:\n{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "not one line:\n{err}");
}

type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

/// Rewrite a safetensors file's tensors and metadata through `edit`.
fn rewrite(path: &Path, edit: impl FnOnce(&mut Tensors, &mut HashMap<String, String>)) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap_or_default();
    let mut tensors: Tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors, &mut meta);
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

fn tensor<'a>(ts: &'a mut Tensors, name: &str) -> &'a mut (String, Dtype, Vec<usize>, Vec<u8>) {
    ts.iter_mut().find(|t| t.0 == name).unwrap()
}

/// Random 1x28x28 images of 10 classes (what an mlp of mnist-mini's shape takes).
fn digits(n: usize, seed: u64) -> Dataset {
    let mut rng = Rng::seed(seed);
    Dataset {
        name: "random".into(),
        images: (0..n * 784).map(|_| rng.uniform()).collect(),
        labels: (0..n).map(|_| rng.below(10)).collect(),
        shape: [1, 28, 28],
        num_classes: 10,
    }
}

fn small_run_config() -> TrainConfig {
    TrainConfig {
        model: Arch::Mlp,
        width: 0.0625,
        init: Init::Pytorch,
        dataset: DatasetKind::MnistMini,
        method: Method::Std,
        epochs: 3,
        batch_size: 16,
        ..TrainConfig::default()
    }
}

/// Resume the run in `dir` and train one more epoch; `Err` is the error's text, a panic fails.
fn resume_and_train(dir: &Path, data: &Dataset) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(|| {
        let mut t = Trainer::resume(dir, |c| Ok(c.clone())).map_err(|e| e.to_string())?;
        t.run_epoch(data, &ProgressBar::hidden())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }))
    .unwrap_or_else(|_| panic!("resuming the run in {} panicked", dir.display()))
}

#[test]
fn hostile_training_states_are_refused_before_use() {
    let dir = scratch("state");
    let data = digits(32, 1);
    let mut trainer = Trainer::new(small_run_config(), &dir).unwrap();
    trainer.run_epoch(&data, &ProgressBar::hidden()).unwrap();
    drop(trainer);
    let path = dir.join(STATE_FILE);
    let good = std::fs::read(&path).unwrap();
    assert_eq!(resume_and_train(&dir, &data), Ok(()));

    type Edit = fn(&mut Tensors, &mut HashMap<String, String>);
    let cases: [(&str, Edit, &str); 10] = [
        (
            "moments shorter than their parameter",
            |ts, _| {
                for name in ["adam.m.0", "adam.v.0"] {
                    let t = tensor(ts, name);
                    t.3.truncate(t.3.len() - 8);
                    t.2 = vec![t.3.len() / 4];
                }
            },
            "tensor 'adam.m.0' holds",
        ),
        (
            "moments longer than their parameter",
            |ts, _| {
                for name in ["adam.m.1", "adam.v.1"] {
                    let t = tensor(ts, name);
                    t.3.extend_from_slice(&[0; 8]);
                    t.2 = vec![t.3.len() / 4];
                }
            },
            "tensor 'adam.m.1' holds",
        ),
        (
            "no optimiser buffers after a step",
            |ts, meta| {
                ts.retain(|t| !t.0.starts_with("adam."));
                meta.insert("adam.buffers".into(), "0".into());
            },
            "'adam.buffers' is 0",
        ),
        (
            "a step count about to wrap",
            |_, meta| {
                meta.insert("step".into(), u64::MAX.to_string());
                meta.insert("adam.step".into(), u64::MAX.to_string());
            },
            "'step' is 18446744073709551615",
        ),
        (
            "optimiser and run step counts that disagree",
            |_, meta| {
                meta.insert("adam.step".into(), "7".into());
            },
            "'adam.step' is 7",
        ),
        (
            "an epoch count beyond range",
            |_, meta| {
                meta.insert("epoch".into(), u64::MAX.to_string());
            },
            "'epoch' is 18446744073709551615",
        ),
        (
            "an all-zero generator",
            |_, meta| {
                meta.insert("rng".into(), "0,0,0,0".into());
            },
            "'rng' is all zeros",
        ),
        (
            "a negative second moment",
            |ts, _| {
                let t = tensor(ts, "adam.v.0");
                t.3[..4].copy_from_slice(&(-1.0f32).to_le_bytes());
            },
            "'adam.v.0' holds -1",
        ),
        (
            "a NaN first moment",
            |ts, _| {
                let t = tensor(ts, "adam.m.2");
                t.3[..4].copy_from_slice(&f32::NAN.to_le_bytes());
            },
            "'adam.m.2' holds NaN",
        ),
        (
            "a stray tensor",
            |ts, _| {
                let extra = tensor(ts, "adam.m.0").clone();
                ts.push(("adam.m.99".into(), extra.1, extra.2, extra.3));
            },
            "unexpected tensor 'adam.m.99'",
        ),
    ];
    for (what, edit, needle) in cases {
        // The state alone in its folder (as written before manifests), so that resuming reads
        // it as it is rather than refuse it for not matching the manifest.
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, &good).unwrap();
        rewrite(&path, edit);
        let e = resume_and_train(&dir, &data).expect_err(what);
        assert!(
            e.contains(STATE_FILE) && e.contains(needle),
            "{what}: expected '{needle}' in: {e}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// An IDX images header for `count` images of 28×28.
fn idx_header(count: u32) -> Vec<u8> {
    [0x803u32, count, 28, 28]
        .iter()
        .flat_map(|x| x.to_be_bytes())
        .collect()
}

#[test]
fn gzip_idx_is_inflated_no_further_than_its_header_and_the_limit() {
    // 100,000 blank digits: 78 MB that gzip packs into well under a megabyte.
    let mut bytes = idx_header(100_000);
    bytes.resize(16 + 100_000 * 784, 0);
    let bomb = gz(&bytes);
    assert!(bomb.len() < 1 << 20);
    let labels: Vec<u8> = [0x801u32, 100_000]
        .iter()
        .flat_map(|x| x.to_be_bytes())
        .chain(std::iter::repeat_n(0, 100_000))
        .collect();
    let (p, l) = (Path::new("bomb-idx3-ubyte.gz"), Path::new("labels"));
    // Loading it would take 78 MB of bytes and 314 MB of f32 pixels: refused under 64 MiB,
    // from the header alone.
    let e = memory::with_limit(64 << 20, || {
        idx::from_bytes("t", p, &bomb, l, &labels).expect_err("loaded past the limit")
    })
    .to_string();
    assert!(
        e.contains("bomb-idx3-ubyte.gz") && e.contains("memory limit of 64.0 MiB"),
        "{e}"
    );
    // A header that promises 10 images but inflates to 100,000 stops at the promise.
    let mut liar = bytes.clone();
    liar[..16].copy_from_slice(&idx_header(10));
    let e = idx::from_bytes("t", p, &gz(&liar), l, &labels)
        .expect_err("trailing data accepted")
        .to_string();
    assert!(e.contains("trailing garbage"), "{e}");
    // Under a limit that fits it, the same file loads.
    let d = memory::with_limit(1 << 30, || idx::from_bytes("t", p, &bomb, l, &labels)).unwrap();
    assert_eq!((d.len(), d.shape), (100_000, [1, 28, 28]));
}

/// Kill `child` if it runs past `limit`: a read that never ends is a failure, not a hang.
fn wait_at_most(mut child: std::process::Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("cactus ran for more than {limit:?} (reading a FIFO or a device?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn memory_is_estimated_from_shapes_before_allocating() {
    let dir = scratch("memory");
    let d = |name: &str| dir.join(name).to_str().unwrap().to_string();
    // Widths and inputs whose weights alone would take hundreds of GiB: refused, not aborted.
    fails(
        &[
            "init",
            "--model",
            "cnn7",
            "--width",
            "64",
            "--out",
            &d("w.st"),
        ],
        "more than the memory limit",
    );
    fails(
        &[
            "init",
            "--model",
            "cnn7",
            "--input",
            "4096x4096x4096",
            "--out",
            &d("i.st"),
        ],
        "more than the memory limit",
    );
    // A small checkpoint whose input shape makes the probe's activations huge.
    let mut spec = ModelSpec::new(Arch::Cnn7, [64, 1024, 1024], 10);
    spec.width = 1.0 / 512.0;
    let model = Model::new(spec, &mut Rng::seed(0)).unwrap();
    let big_input = d("big-input.safetensors");
    save_compressed_checkpoint(
        Path::new(&big_input),
        &model,
        cactus::compress::quant::Format::Int(8),
        cactus::compress::quant::Granularity::PerTensor,
        &BTreeMap::new(),
    )
    .unwrap();
    assert!(std::fs::metadata(&big_input).unwrap().len() < 2 << 20);
    fails(
        &[
            "inspect",
            &big_input,
            "--probe",
            "0.5",
            "--max-memory",
            "256M",
        ],
        "the probe through model cnn7",
    );
    // The same limit refuses the file itself once it is smaller than the file.
    fails(
        &["inspect", &big_input, "--max-memory", "100K"],
        "more than the memory limit of 100 KiB",
    );
    let usage = cactus(&["inspect", &big_input, "--max-memory", "lots"]);
    let err = String::from_utf8_lossy(&usage.stderr);
    assert!(
        usage.status.code() == Some(2) && err.contains("'lots' is not a memory size"),
        "{err}"
    );
    // Devices and FIFOs are refused, without reading (or waiting) for ever.
    let child = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cactus"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let out = wait_at_most(child(&["inspect", "/dev/zero"]), Duration::from_secs(20));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/dev/zero: is a character device"), "{err}");
    let fifo = d("fifo.safetensors");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let out = wait_at_most(
        child(&["eval", "--checkpoint", &fifo]),
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is a FIFO"), "{err}");
    assert_eq!(out.status.code(), Some(1));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A small cnn7 (batch norm and normalisation) saved in `dir`.
fn saved_cnn7(dir: &Path) -> PathBuf {
    let mut spec = ModelSpec::new(Arch::Cnn7, [1, 28, 28], 10);
    spec.width = 0.125;
    spec.normalization = Some(DatasetKind::MnistMini.normalization());
    let model = Model::new(spec, &mut Rng::seed(2)).unwrap();
    let path = dir.join("model.safetensors");
    let mut extra = BTreeMap::new();
    extra.insert("train.dataset".to_string(), "mnist-mini".to_string());
    extra.insert("train.eps".to_string(), "0.1".to_string());
    save_checkpoint(&path, &model, &extra).unwrap();
    path
}

#[test]
fn checkpoints_that_would_compute_nan_are_refused() {
    let dir = scratch("nan-load");
    let good = saved_cnn7(&dir);
    let bytes = std::fs::read(&good).unwrap();
    assert!(load_checkpoint(&good).is_ok());
    rewrite(&good, |ts, _| {
        tensor(ts, "1.running_var").3[4..8].copy_from_slice(&(-0.5f32).to_le_bytes());
    });
    let e = load_checkpoint(&good)
        .err()
        .expect("negative variance")
        .to_string();
    assert!(
        e.contains("'1.running_var' holds the negative variance -0.5"),
        "{e}"
    );
    for (mean, std) in [("1e30", "1e-30"), ("0.1", "1e-45"), ("0.1", "0.0")] {
        std::fs::write(&good, &bytes).unwrap();
        rewrite(&good, |_, meta| {
            let spec = meta["cactus.model"].replace(
                "\"normalization\":{\"mean\":[0.1307],\"std\":[0.3081]}",
                &format!("\"normalization\":{{\"mean\":[{mean}],\"std\":[{std}]}}"),
            );
            assert_ne!(spec, meta["cactus.model"], "normalisation not found");
            meta.insert("cactus.model".into(), spec);
        });
        let e = load_checkpoint(&good)
            .err()
            .expect("overflowing normalisation")
            .to_string();
        assert!(
            e.contains("model.safetensors") && e.contains("normalisation"),
            "{e}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nan_in_evaluation_is_an_error_not_a_class() {
    // Finite weights whose products overflow: ±∞ after the first layer, NaN (∞ − ∞) after the
    // second, which its ReLU would turn into 0, leaving finite logits.
    let mut model = Model::new(
        ModelSpec::new(Arch::Mlp, [1, 28, 28], 10),
        &mut Rng::seed(4),
    )
    .unwrap();
    if let Layer::Linear(l) = &mut model.net.layers[1] {
        let n = l.weight.numel();
        let w: Vec<f32> = (0..n)
            .map(|i| if i % 2 == 0 { 3e38 } else { -3e38 })
            .collect();
        l.weight = Tensor::from_vec(w, l.weight.shape());
    }
    let data = digits(20, 5);
    let result = catch_unwind(AssertUnwindSafe(|| {
        evaluate(&model, &data, &EvalConfig::new(0.1), |_| {})
    }))
    .expect("evaluation panicked");
    let e = result
        .expect_err("evaluated a network that computes NaN")
        .to_string();
    assert!(
        e.contains("test points 0..20") && e.contains("NaN or infinite"),
        "{e}"
    );
    let x = Tensor::full(&[1, 1, 28, 28], 0.5);
    assert!(model.forward_checked(&x, cactus::nn::Mode::Eval).is_err());
    // No test points: no accuracy.
    let none = digits(0, 6);
    let e = evaluate(&model, &none, &EvalConfig::new(0.1), |_| {})
        .err()
        .unwrap();
    assert!(e.to_string().contains("no test points"), "{e}");
    // The probe of a NaN input is refused rather than printed.
    let dir = scratch("nan-eval");
    let ckpt = saved_cnn7(&dir);
    fails(
        &["inspect", ckpt.to_str().unwrap(), "--probe", "NaN"],
        "--probe must be a finite number",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn options_and_metadata_edge_cases_get_clear_errors() {
    let dir = scratch("edges");
    let ckpt = saved_cnn7(&dir);
    let c = ckpt.to_str().unwrap();
    let out = dir.join("run");
    let out = out.to_str().unwrap();
    let zero = cactus(&[
        "train",
        "--out",
        out,
        "--eval-limit",
        "0",
        "--limit-train",
        "64",
    ]);
    let err = String::from_utf8_lossy(&zero.stderr);
    assert!(
        !zero.status.success() && err.contains("--eval-limit") && err.contains("at least 1"),
        "{err}"
    );
    assert!(
        !Path::new(out).exists(),
        "trained before refusing --eval-limit 0"
    );
    let zero = cactus(&["eval", "--checkpoint", c, "--limit", "0"]);
    let err = String::from_utf8_lossy(&zero.stderr);
    assert!(
        !zero.status.success() && err.contains("at least 1"),
        "{err}"
    );
    // Control characters from the metadata are shown escaped, never sent to the terminal.
    rewrite(&ckpt, |_, meta| {
        meta.insert(
            "note\x1b[2J".into(),
            "red\x1b[31m\nforged line\u{202e}".into(),
        );
    });
    let shown = cactus(&["inspect", c]);
    assert!(shown.status.success());
    let text = String::from_utf8(shown.stdout).unwrap();
    assert!(
        !text.contains('\x1b') && !text.contains('\u{202e}'),
        "{text:?}"
    );
    assert!(
        text.contains("meta         note\\u{1b}[2J = red\\u{1b}[31m\\nforged line\\u{202e}"),
        "{text}"
    );
    // A NaN ε in the metadata is named as the metadata's, not as an option's.
    rewrite(&ckpt, |_, meta| {
        meta.insert("train.eps".into(), "NaN".into());
    });
    fails(
        &["eval", "--checkpoint", c, "--limit", "5"],
        "'train.eps' = 'NaN'",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
