//! End-to-end runs of the `cactus` binary with tiny limits: the files a run writes, the report's
//! fields, resume, and clear errors on bad input.

use cactus::io::load_checkpoint;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cactus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cactus"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("the cactus binary runs")
}

fn ok(args: &[&str]) -> String {
    let out = cactus(args);
    assert!(
        out.status.success(),
        "cactus {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs that must fail with a message containing `needle` (and no panic).
fn fails(args: &[&str], needle: &str) {
    let out = cactus(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "cactus {args:?} should fail");
    assert!(
        !err.contains("panicked"),
        "cactus {args:?} panicked:\n{err}"
    );
    assert!(
        err.contains(needle),
        "cactus {args:?}: expected '{needle}' in the error, got:\n{err}"
    );
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cactus-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

const TINY: &[&str] = &[
    "--limit-train",
    "192",
    "--batch-size",
    "32",
    "--warmup-batches",
    "3",
    "--ramp-batches",
    "4",
    "--quiet",
];

fn train_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["train", "--out", out];
    a.extend_from_slice(TINY);
    a.extend_from_slice(extra);
    a
}

fn check_report(dir: &Path, n: usize) -> Value {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    for key in ["checkpoint", "dataset", "eps", "n", "rows"] {
        assert!(json.get(key).is_some(), "report.json lacks '{key}': {json}");
    }
    assert_eq!(json["n"], n);
    let row = &json["rows"][0];
    assert_eq!(row["compression"], "none");
    assert_eq!(row["ratio"], 0.0);
    assert_eq!(row["format"], "fp32");
    assert_eq!(row["certifier"], "ibp");
    let acc = |k: &str| {
        row[k]
            .as_f64()
            .unwrap_or_else(|| panic!("row lacks {k}: {row}"))
    };
    let (clean, pgd, cert) = (acc("clean"), acc("pgd"), acc("certified"));
    assert!(
        (0.0..=1.0).contains(&clean) && cert <= pgd && pgd <= clean,
        "accuracies out of order: {row}"
    );
    let csv = std::fs::read_to_string(dir.join("report.csv")).unwrap();
    assert!(csv.starts_with("compression,ratio,format,certifier,clean,pgd,certified\n"));
    assert_eq!(csv.lines().count(), 2, "{csv}");
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("| none |"), "{md}");
    json
}

#[test]
fn train_writes_model_state_history_and_reports() {
    let dir = scratch("train");
    let d = dir.to_str().unwrap();
    let stdout = ok(&train_args(
        d,
        &["--method", "ibp", "--epochs", "2", "--eval-limit", "40"],
    ));
    assert!(stdout.contains("certified"), "no table printed:\n{stdout}");
    for f in [
        "model.safetensors",
        "train_state.safetensors",
        "history.json",
        "report.json",
        "report.csv",
        "report.md",
    ] {
        assert!(dir.join(f).is_file(), "{f} was not written");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    let report = check_report(&dir, 40);
    assert_eq!(report["dataset"], "mnist-mini");
    assert!((report["eps"].as_f64().unwrap() - 0.1).abs() < 1e-6);
    let history: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("history.json")).unwrap()).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 2);
    assert_eq!(history[1]["steps"], 12); // 192 / 32 batches per epoch, 2 epochs

    // The checkpoint evaluates on its own: dataset and ε come from its metadata.
    let eval_dir = dir.join("eval");
    let json = ok(&[
        "eval",
        "--checkpoint",
        &format!("{d}/model.safetensors"),
        "--limit",
        "30",
        "--out",
        eval_dir.to_str().unwrap(),
        "--json",
    ]);
    let printed: Value = serde_json::from_str(&json).expect("--json prints the report");
    assert_eq!(printed, check_report(&eval_dir, 30));

    // Running into a directory that holds a run needs --resume.
    fails(&train_args(d, &["--epochs", "2"]), "--resume");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_ends_where_an_uninterrupted_run_ends() {
    let (a, b) = (scratch("whole"), scratch("parts"));
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    let common = ["--method", "sabr", "--seed", "7", "--no-eval"];
    let mut whole = common.to_vec();
    whole.extend(["--epochs", "3"]);
    ok(&train_args(a_s, &whole));

    let mut first = common.to_vec();
    first.extend(["--epochs", "1"]);
    ok(&train_args(b_s, &first));
    // Resume with only --out and --epochs: the rest comes from the saved run.
    ok(&[
        "train",
        "--out",
        b_s,
        "--resume",
        "--epochs",
        "3",
        "--no-eval",
        "--quiet",
    ]);

    let (ma, mb) = (
        load_checkpoint(&a.join("model.safetensors")).unwrap().model,
        load_checkpoint(&b.join("model.safetensors")).unwrap().model,
    );
    for ((name, x), (_, y)) in ma
        .net
        .named_parameters()
        .iter()
        .zip(mb.net.named_parameters())
    {
        assert!(x.bit_eq(y), "parameter {name} differs after resume");
    }
    let ha = std::fs::read_to_string(a.join("history.json")).unwrap();
    let hb = std::fs::read_to_string(b.join("history.json")).unwrap();
    let strip = |h: &str| -> Vec<(Value, Value)> {
        let v: Value = serde_json::from_str(h).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| (r["loss"].clone(), r["steps"].clone()))
            .collect()
    };
    assert_eq!(strip(&ha), strip(&hb), "histories differ");

    // Options that contradict the saved run are refused by name.
    fails(
        &["train", "--out", b_s, "--resume", "--lr", "0.01", "--quiet"],
        "--lr",
    );
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = scratch("bad");
    let d = dir.to_str().unwrap();
    fails(&["train", "--out", d, "--resume"], "does not exist");
    fails(&["train", "--out", d, "--eps=-0.1"], "--eps");
    fails(&["train", "--out", d, "--batch-size", "1"], "--batch-size");
    fails(&["train", "--out", d, "--method", "magic"], "magic");
    fails(&["train", "--out", d, "--dataset", "mnist"], "--data");
    fails(&["train", "--out", d, "--device", "tpu"], "tpu");
    fails(
        &[
            "train",
            "--out",
            d,
            "--dataset",
            "fashion-mnist",
            "--data",
            "/nonexistent/dir",
        ],
        "/nonexistent/dir",
    );
    fails(
        &["eval", "--checkpoint", "/nonexistent/model.safetensors"],
        "no such file",
    );
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"not a checkpoint at all").unwrap();
    fails(
        &["eval", "--checkpoint", junk.to_str().unwrap()],
        "junk.safetensors",
    );
    let state = dir.join("train_state.safetensors");
    std::fs::write(&state, b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage").unwrap();
    fails(
        &["train", "--out", d, "--resume"],
        "train_state.safetensors",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
