//! Run folders under failure, through the `cactus` binary: a run killed at every write step
//! (and one failing there, as on a full disk) resumes to the uninterrupted run's bytes, and at
//! every step the folder holds one complete, verifiable epoch; a folder from before manifests
//! resumes and is repaired; one writer per folder; work that could not be saved or evaluated is
//! refused before it starts; `cactus eval` of a run scores what its training reported.

use cactus::io::{load_checkpoint, load_train_state};
use cactus::nn::Model;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fs;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

fn cactus_env(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cactus"));
    cmd.args(args).env("RAYON_NUM_THREADS", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the cactus binary runs")
}

fn cactus(args: &[&str]) -> Output {
    cactus_env(args, &[])
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(args: &[&str]) -> Output {
    let out = cactus(args);
    assert!(
        out.status.success(),
        "cactus {args:?} failed:\n{}",
        stderr(&out)
    );
    out
}

/// A run that must fail cleanly (exit 1, no panic) with `needle` in its error.
fn fails(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "should fail with 1:\n{err}");
    assert!(!err.contains("panicked"), "panicked:\n{err}");
    assert!(err.contains(needle), "expected '{needle}' in:\n{err}");
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cactus-runs-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

/// A short, fast run (two epochs of 3 batches).
const RUN: &[&str] = &[
    "--model",
    "mlp",
    "--width",
    "0.25",
    "--method",
    "ibp",
    "--limit-train",
    "96",
    "--batch-size",
    "32",
    "--warmup-batches",
    "2",
    "--ramp-batches",
    "2",
    "--no-eval",
    "--quiet",
];

fn train_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["train", "--out", out];
    a.extend_from_slice(RUN);
    a.extend_from_slice(extra);
    a
}

fn same_weights(a: &Model, b: &Model) -> bool {
    let (pa, pb) = (a.net.named_parameters(), b.net.named_parameters());
    pa.len() == pb.len() && pa.iter().zip(&pb).all(|((_, x), (_, y))| x.bit_eq(y))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The epoch `dir`'s manifest commits (0 without one), after checking that every file it names
/// is whole (size and SHA-256), that its state is of that epoch, and that its model is
/// `reference[epoch - 1]`'s weights.
fn committed_epoch(dir: &Path, reference: &[Model]) -> u64 {
    let text = match fs::read_to_string(dir.join("manifest.json")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(e) => panic!("manifest unreadable: {e}"),
    };
    let m: Value = serde_json::from_str(&text).expect("the manifest is whole JSON");
    let epoch = m["epoch"].as_u64().unwrap();
    let mut model_file = None;
    for f in m["files"].as_array().unwrap() {
        let file = f["file"].as_str().unwrap();
        let bytes = fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(bytes.len() as u64, f["bytes"].as_u64().unwrap(), "{file}");
        assert_eq!(sha256_hex(&bytes), f["sha256"].as_str().unwrap(), "{file}");
        if f["name"] == "model.safetensors" {
            model_file = Some(file.to_string());
        }
        if f["name"] == "train_state.safetensors" {
            assert_eq!(load_train_state(&dir.join(file)).unwrap().epoch, epoch);
        }
    }
    let model = load_checkpoint(&dir.join(model_file.expect("a model"))).unwrap();
    assert!(
        same_weights(&model.model, &reference[epoch as usize - 1]),
        "the committed model is not epoch {epoch}'s"
    );
    epoch
}

/// A history without its timings (which differ between any two runs).
fn history_without_timings(dir: &Path) -> Value {
    let mut h: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("history.json")).unwrap()).unwrap();
    for r in h.as_array_mut().unwrap() {
        let r = r.as_object_mut().unwrap();
        r.remove("seconds");
        r.remove("samples_per_second");
    }
    h
}

/// `dir` ends where the uninterrupted run `whole` ended: the same checkpoint bytes, history,
/// optimiser and RNG state; one verified commit of the last epoch; no leftovers.
fn assert_ends_like(dir: &Path, whole: &Path, reference: &[Model]) {
    assert_eq!(committed_epoch(dir, reference), reference.len() as u64);
    assert!(
        fs::read(dir.join("model.safetensors")).unwrap()
            == fs::read(whole.join("model.safetensors")).unwrap(),
        "{}: model.safetensors differs from the uninterrupted run's",
        dir.display()
    );
    assert_eq!(history_without_timings(dir), history_without_timings(whole));
    let (a, b) = (
        load_train_state(&dir.join("train_state.safetensors")).unwrap(),
        load_train_state(&whole.join("train_state.safetensors")).unwrap(),
    );
    assert_eq!(
        (a.epoch, a.step, a.rng, a.adam_step),
        (b.epoch, b.step, b.rng, b.adam_step)
    );
    assert!(
        a.adam_m == b.adam_m && a.adam_v == b.adam_v,
        "Adam moments differ"
    );
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let last = reference.len();
    let expected = [
        ".lock".to_string(),
        format!("history.e{last}.json"),
        "history.json".into(),
        "manifest.json".into(),
        format!("model.e{last}.safetensors"),
        "model.safetensors".into(),
        format!("train_state.e{last}.safetensors"),
        "train_state.safetensors".into(),
    ];
    assert_eq!(names, expected, "{}: leftovers", dir.display());
}

/// The reference: the run uninterrupted (2 epochs) and each epoch's weights.
fn reference(name: &str) -> (PathBuf, Vec<Model>) {
    let whole = scratch(&format!("{name}-whole"));
    ok(&train_args(whole.to_str().unwrap(), &["--epochs", "2"]));
    let one = scratch(&format!("{name}-one"));
    ok(&train_args(one.to_str().unwrap(), &["--epochs", "1"]));
    let models = vec![
        load_checkpoint(&one.join("model.safetensors"))
            .unwrap()
            .model,
        load_checkpoint(&whole.join("model.safetensors"))
            .unwrap()
            .model,
    ];
    fs::remove_dir_all(&one).unwrap();
    (whole, models)
}

/// Stop a 2-epoch run at its k-th write step for every k (`hook`: killed right after it, or the
/// step failing with "No space left on device"), check the folder, resume, and check the end.
/// Returns the number of write steps of the run.
fn interrupt_at_every_step(hook: &str, whole: &Path, reference: &[Model]) -> u64 {
    let mut last_epoch = 0;
    for k in 1u64.. {
        assert!(k < 500, "the run never finished: is {hook} read?");
        let dir = scratch(&format!("{hook}-{k}"));
        let d = dir.to_str().unwrap();
        let out = cactus_env(&train_args(d, &["--epochs", "2"]), &[(hook, k.to_string())]);
        if out.status.success() {
            assert_ends_like(&dir, whole, reference);
            fs::remove_dir_all(&dir).unwrap();
            assert_eq!(last_epoch, 2, "no step fell after the last commit");
            return k - 1;
        }
        let err = stderr(&out);
        if hook == "CACTUS_ABORT_AFTER_WRITES" {
            assert_eq!(out.status.signal(), Some(9), "step {k}: not killed:\n{err}");
        } else {
            fails(&out, "No space left on device");
        }
        // The folder holds one complete epoch, never older than at an earlier step.
        let epoch = committed_epoch(&dir, reference);
        assert!(epoch >= last_epoch, "step {k}: went back to epoch {epoch}");
        last_epoch = epoch;
        // A stable name, where there is one, is a whole checkpoint of some epoch.
        if let Ok(ckpt) = load_checkpoint(&dir.join("model.safetensors")) {
            assert!(reference.iter().any(|m| same_weights(m, &ckpt.model)));
        }
        let resume = cactus(&["train", "--out", d, "--resume", "--no-eval", "--quiet"]);
        if epoch == 0 {
            // Nothing was committed: --resume says so, and a fresh start is allowed.
            fails(&resume, "does not exist");
            ok(&train_args(d, &["--epochs", "2"]));
        } else {
            let err = stderr(&resume);
            assert!(resume.status.success(), "step {k}: resume failed:\n{err}");
            assert_eq!(
                err.contains("already has its 2 epochs"),
                epoch == 2,
                "step {k} (epoch {epoch} committed):\n{err}"
            );
        }
        assert_ends_like(&dir, whole, reference);
        fs::remove_dir_all(&dir).unwrap();
    }
    unreachable!()
}

/// The kill suite: the run killed (SIGKILL) after each of its write steps — temporary created,
/// half written, written, fsynced, renamed, folder fsynced, links, removals — and failing at
/// each (a full disk), then resumed.
#[test]
fn a_run_stopped_at_any_write_step_resumes_to_the_same_bytes() {
    let start = Instant::now();
    let (whole, reference) = reference("kill");
    let killed = interrupt_at_every_step("CACTUS_ABORT_AFTER_WRITES", &whole, &reference);
    let failed = interrupt_at_every_step("CACTUS_FAIL_AFTER_WRITES", &whole, &reference);
    assert_eq!(killed, failed);
    assert!(killed >= 60, "only {killed} write steps in two epochs");
    eprintln!(
        "kill suite: {killed} kill points and {failed} failure points, {:.0}s",
        start.elapsed().as_secs_f64()
    );
    fs::remove_dir_all(&whole).unwrap();
}

/// Runs killed again and again — while training, and while a resume repairs what the last
/// kill left — still end like the uninterrupted run.
#[test]
fn a_run_killed_again_and_again_still_ends_like_the_uninterrupted_one() {
    let (whole, reference) = reference("chain");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        1 + (seed >> 33) % n
    };
    for chain in 0..8 {
        let dir = scratch(&format!("chain-{chain}"));
        let d = dir.to_str().unwrap();
        let mut kills = 0;
        loop {
            // Every other run is stopped early, most often inside the previous stop's repairs.
            let k = if kills % 2 == 1 { next(12) } else { next(45) };
            let args = if dir.join("manifest.json").exists() {
                vec!["train", "--out", d, "--resume", "--no-eval", "--quiet"]
            } else {
                train_args(d, &["--epochs", "2"])
            };
            let out = cactus_env(&args, &[("CACTUS_ABORT_AFTER_WRITES", k.to_string())]);
            if out.status.success() {
                break;
            }
            assert_eq!(out.status.signal(), Some(9), "{}", stderr(&out));
            committed_epoch(&dir, &reference);
            kills += 1;
            assert!(kills < 100, "chain {chain} makes no progress");
        }
        assert_ends_like(&dir, &whole, &reference);
        eprintln!("chain {chain}: {kills} kills before the run ended");
        fs::remove_dir_all(&dir).unwrap();
    }
    fs::remove_dir_all(&whole).unwrap();
}

/// A folder written before manifests whose save was cut short (its state at epoch 2, its
/// checkpoint and history still at epoch 1) resumes from the state and is repaired; so does
/// one stopped cleanly after epoch 1.
#[test]
fn a_folder_from_before_manifests_resumes_and_is_repaired() {
    let (whole, reference) = reference("legacy");
    let old = scratch("legacy-one");
    ok(&train_args(old.to_str().unwrap(), &["--epochs", "1"]));
    let legacy_copy = |from_state: &Path, to: &Path| {
        fs::create_dir_all(to).unwrap();
        for f in ["model.safetensors", "history.json"] {
            fs::copy(old.join(f), to.join(f)).unwrap();
        }
        fs::copy(
            from_state.join("train_state.safetensors"),
            to.join("train_state.safetensors"),
        )
        .unwrap();
    };
    let torn = scratch("legacy-torn");
    legacy_copy(&whole, &torn);
    let out = ok(&[
        "train",
        "--out",
        torn.to_str().unwrap(),
        "--resume",
        "--no-eval",
    ]);
    let err = stderr(&out);
    assert!(
        err.contains("repaired") && err.contains("already has its 2 epochs"),
        "{err}"
    );
    assert_ends_like(&torn, &whole, &reference);

    let stopped = scratch("legacy-stopped");
    legacy_copy(&old, &stopped);
    ok(&[
        "train",
        "--out",
        stopped.to_str().unwrap(),
        "--resume",
        "--epochs",
        "2",
        "--no-eval",
        "--quiet",
    ]);
    assert_ends_like(&stopped, &whole, &reference);
    for d in [&whole, &old, &torn, &stopped] {
        fs::remove_dir_all(d).unwrap();
    }
}

/// `cactus eval` of a run folder, or of its model.safetensors, scores what the training
/// reported; a stable name a crash left stale is refused (the folder still evaluates), and
/// `--resume` repairs it.
#[test]
fn eval_of_a_run_scores_what_its_training_reported() {
    let dir = scratch("eval");
    let d = dir.to_str().unwrap();
    let mut args = train_args(d, &["--epochs", "2"]);
    args.retain(|a| *a != "--no-eval");
    args.extend([
        "--eval-limit",
        "40",
        "--eval-prune",
        "none",
        "--eval-quant",
        "fp32",
    ]);
    ok(&args);
    let trained: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let scores = |report: &Value| -> Vec<Value> {
        ["clean", "pgd", "certified"]
            .iter()
            .map(|k| report["rows"][0][*k].clone())
            .collect()
    };
    let eval = |checkpoint: &Path| -> Output {
        cactus(&[
            "eval",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--limit",
            "40",
            "--json",
            "--out",
            dir.join("eval").to_str().unwrap(),
        ])
    };
    let report = |out: &Output| -> Value {
        assert!(out.status.success(), "{}", stderr(out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    for checkpoint in [dir.clone(), dir.join("model.safetensors")] {
        let r = report(&eval(&checkpoint));
        assert_eq!(scores(&r), scores(&trained), "{}", checkpoint.display());
        assert_eq!(r["checkpoint"], trained["checkpoint"]);
    }
    // The stable name left at another network, as a crash between commit and link leaves it.
    let model = dir.join("model.safetensors");
    let stale = fs::read(dir.join("model.e2.safetensors")).unwrap();
    let mut other = load_checkpoint(&model).unwrap();
    for t in other.model.net.parameters_mut() {
        let halved: Vec<f32> = t.data().iter().map(|v| 0.5 * v).collect();
        *t = cactus::Tensor::from_vec(halved, t.shape());
    }
    fs::remove_file(&model).unwrap();
    cactus::io::save_checkpoint(&model, &other.model, &other.extra).unwrap();
    fails(&eval(&model), "--resume");
    let r = report(&eval(&dir));
    assert_eq!(scores(&r), scores(&trained));
    let out = ok(&["train", "--out", d, "--resume", "--no-eval"]);
    assert!(stderr(&out).contains("repaired"), "{}", stderr(&out));
    assert_eq!(fs::read(&model).unwrap(), stale);
    assert_eq!(scores(&report(&eval(&model))), scores(&trained));
    fs::remove_dir_all(&dir).unwrap();
}

/// Committed files damaged after the fact: the checkpoint and history are rebuilt from the
/// training state (the same bytes), a damaged state is an error naming it.
#[test]
fn damaged_committed_files_are_rebuilt_from_the_state_or_named() {
    let dir = scratch("damage");
    let d = dir.to_str().unwrap();
    ok(&train_args(d, &["--epochs", "2"]));
    let (model, history) = (
        fs::read(dir.join("model.safetensors")).unwrap(),
        fs::read(dir.join("history.json")).unwrap(),
    );
    // history.json edited in place (which edits the committed file it links to), the
    // committed checkpoint deleted.
    fs::write(dir.join("history.json"), b"[]").unwrap();
    fs::remove_file(dir.join("model.e2.safetensors")).unwrap();
    let out = ok(&["train", "--out", d, "--resume", "--no-eval"]);
    let err = stderr(&out);
    assert!(
        err.contains("history.e2.json") && err.contains("model.e2.safetensors"),
        "{err}"
    );
    assert_eq!(fs::read(dir.join("model.safetensors")).unwrap(), model);
    assert_eq!(fs::read(dir.join("history.json")).unwrap(), history);
    assert_eq!(fs::read(dir.join("history.e2.json")).unwrap(), history);
    // A damaged training state cannot be rebuilt: named, and the folder left as it is.
    let state = dir.join("train_state.e2.safetensors");
    let mut bytes = fs::read(&state).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&state, &bytes).unwrap();
    let out = cactus(&["train", "--out", d, "--resume", "--no-eval"]);
    fails(
        &out,
        "train_state.e2.safetensors: does not match manifest.json",
    );
    fs::remove_dir_all(&dir).unwrap();
}

/// Two identical runs write identical files (the metadata's order is fixed).
#[test]
fn identical_runs_write_identical_checkpoints() {
    let (a, b) = (scratch("same-a"), scratch("same-b"));
    for d in [&a, &b] {
        ok(&train_args(d.to_str().unwrap(), &["--epochs", "1"]));
    }
    assert!(
        fs::read(a.join("model.safetensors")).unwrap()
            == fs::read(b.join("model.safetensors")).unwrap(),
        "model.safetensors differs between identical runs"
    );
    fs::remove_dir_all(&a).unwrap();
    fs::remove_dir_all(&b).unwrap();
}

/// A second run into a folder whose lock is held fails at once, naming the holder, and
/// touches nothing; once free, a run clears the temporaries a killed writer left. The same
/// with two real runs.
#[test]
fn a_second_run_into_a_locked_folder_fails_at_once() {
    let dir = scratch("lock");
    fs::create_dir_all(&dir).unwrap();
    // A killed writer's temporary (no process has a pid above Linux's largest pid_max).
    let stale = dir.join(".model.safetensors.tmp-4194399-00000000deadbeef");
    fs::write(&stale, b"partial").unwrap();
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(dir.join(".lock"))
        .unwrap();
    use std::io::Write;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file this test owns.
    assert_eq!(
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    write!(&lock, "{}", std::process::id()).unwrap();
    let d = dir.to_str().unwrap();
    let start = Instant::now();
    let out = cactus(&train_args(d, &["--epochs", "1"]));
    fails(&out, "in use");
    assert!(stderr(&out).contains(&std::process::id().to_string()));
    assert!(start.elapsed().as_secs() < 30);
    assert!(!dir.join("manifest.json").exists() && !dir.join("model.safetensors").exists());
    assert!(stale.exists(), "the refused run changed the folder");
    drop(lock);
    ok(&train_args(d, &["--epochs", "1"]));
    assert!(!stale.exists(), "stale temporary left");

    // Two real runs: while one trains, the other is refused by its pid; killed, the first
    // leaves a folder that resumes.
    let busy = dir.join("busy");
    let b = busy.to_str().unwrap();
    let mut first = Command::new(env!("CARGO_BIN_EXE_cactus"))
        .args(train_args(b, &["--epochs", "10000"]))
        .env("RAYON_NUM_THREADS", "1")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = first.id().to_string();
    let waited = Instant::now();
    while !dir.join("busy/manifest.json").exists() {
        assert!(
            waited.elapsed().as_secs() < 60,
            "the first run never committed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let second = cactus(&train_args(b, &["--epochs", "1"]));
    fails(&second, "in use");
    assert!(stderr(&second).contains(&pid), "{}", stderr(&second));
    first.kill().unwrap();
    first.wait().unwrap();
    let resumed = cactus(&[
        "train",
        "--out",
        b,
        "--resume",
        "--epochs",
        "1",
        "--no-eval",
        "--quiet",
    ]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    fs::remove_dir_all(&dir).unwrap();
}

/// The `cactus` command run without the right to write in a root-owned folder (as `nobody`
/// when the tests run as root), or `None` where this cannot be arranged.
fn run_unprivileged(dir: &Path, args: &[&str]) -> Option<Output> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cactus"));
    cmd.args(args).env("RAYON_NUM_THREADS", "1");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.uid(65534).gid(65534);
    } else {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).ok()?;
    }
    let out = cmd.output().ok();
    if let Some(o) = &out {
        // The binary itself may be out of the unprivileged user's reach (a private target/).
        if o.status.code() == Some(126) || stderr(o).contains("cannot execute") {
            return None;
        }
    }
    out
}

/// Output that cannot be written, and a test split that does not load, are errors before the
/// first batch (not after the last epoch); a read-only run folder loses nothing.
#[test]
fn unwritable_output_or_a_broken_test_split_fails_before_training() {
    let dir = scratch("early");
    fs::create_dir_all(&dir).unwrap();
    let started = |out: &Output| stderr(out).contains("epochs of batch");
    // --out below a regular file.
    let file = dir.join("file");
    fs::write(&file, b"x").unwrap();
    let below = file.join("run");
    let mut args = train_args(below.to_str().unwrap(), &["--epochs", "3"]);
    args.retain(|a| *a != "--quiet");
    let out = cactus(&args);
    fails(&out, &below.display().to_string());
    assert!(!started(&out), "trained first:\n{}", stderr(&out));

    // A test split that does not load (MNIST files with a truncated test image file).
    let data = dir.join("data");
    fs::create_dir_all(&data).unwrap();
    let idx = |magic: u32, dims: &[u32], body: Vec<u8>| {
        let mut b = magic.to_be_bytes().to_vec();
        for d in dims {
            b.extend(d.to_be_bytes());
        }
        b.extend(body);
        b
    };
    let n = 64u32;
    let images = idx(
        0x803,
        &[n, 28, 28],
        (0..n * 784).map(|i| (i % 251) as u8).collect(),
    );
    let labels = idx(0x801, &[n], (0..n).map(|i| (i % 10) as u8).collect());
    fs::write(data.join("train-images-idx3-ubyte"), &images).unwrap();
    fs::write(data.join("train-labels-idx1-ubyte"), &labels).unwrap();
    fs::write(
        data.join("t10k-images-idx3-ubyte"),
        &images[..images.len() / 2],
    )
    .unwrap();
    fs::write(data.join("t10k-labels-idx1-ubyte"), &labels).unwrap();
    let run = dir.join("mnist");
    let out = cactus(&[
        "train",
        "--out",
        run.to_str().unwrap(),
        "--dataset",
        "mnist",
        "--data",
        data.to_str().unwrap(),
        "--model",
        "mlp",
        "--width",
        "0.25",
        "--batch-size",
        "32",
        "--epochs",
        "3",
    ]);
    fails(&out, "t10k-images-idx3-ubyte");
    assert!(!started(&out), "trained first:\n{}", stderr(&out));
    assert!(!run.join("manifest.json").exists() && !run.join("model.safetensors").exists());

    // A run folder this process may not write: refused before training, nothing changed.
    let ro = dir.join("read-only");
    ok(&train_args(ro.to_str().unwrap(), &["--epochs", "1"]));
    let snapshot = |d: &Path| -> Vec<(String, Vec<u8>)> {
        // .lock holds the last holder's pid: the one file a refused run may rewrite.
        let mut v: Vec<_> = fs::read_dir(d)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() != ".lock")
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = snapshot(&ro);
    let r = ro.to_str().unwrap();
    let args = [
        "train",
        "--out",
        r,
        "--resume",
        "--epochs",
        "2",
        "--no-eval",
    ];
    match run_unprivileged(&ro, &args) {
        Some(out) => {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
            fails(&out, r);
            assert!(!started(&out), "trained first:\n{}", stderr(&out));
            assert!(
                snapshot(&ro) == before,
                "the refused run changed the folder"
            );
            ok(&[
                "train",
                "--out",
                r,
                "--resume",
                "--epochs",
                "2",
                "--no-eval",
                "--quiet",
            ]);
        }
        None => eprintln!("read-only folder: SKIPPED (no unprivileged user can run the binary)"),
    }
    fs::remove_dir_all(&dir).unwrap();
}

/// A folder given where a file is expected: the cause is said once.
#[test]
fn a_directory_given_as_a_file_is_reported_once() {
    let dir = scratch("isdir");
    fs::create_dir_all(&dir).unwrap();
    let d = dir.to_str().unwrap();
    for args in [
        vec!["inspect", d],
        vec![
            "compress",
            "--checkpoint",
            d,
            "--quant",
            "int8",
            "--out",
            "x.safetensors",
        ],
    ] {
        let out = cactus(&args);
        fails(&out, "Is a directory");
        assert_eq!(
            stderr(&out).matches("Is a directory").count(),
            1,
            "{}",
            stderr(&out)
        );
    }
    fs::remove_dir_all(&dir).unwrap();
}
