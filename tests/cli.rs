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

/// Check report.json/.csv/.md/.svg in `dir`: `n` points, `rows` rows, the first the
/// uncompressed network, accuracies ordered in every row.
fn check_report(dir: &Path, n: usize, rows: usize) -> Value {
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
    assert_eq!(json["rows"].as_array().unwrap().len(), rows, "{json}");
    for row in json["rows"].as_array().unwrap() {
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
        assert!((0.0..1.0).contains(&acc("sparsity")), "{row}");
    }
    let _ = acc;
    let csv = std::fs::read_to_string(dir.join("report.csv")).unwrap();
    assert!(csv
        .starts_with("compression,ratio,sparsity,format,certifier,clean,pgd,certified,seconds\n"));
    assert_eq!(csv.lines().count(), rows + 1, "{csv}");
    let svg = std::fs::read_to_string(dir.join("report.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
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
    // The default grid: unpruned in fp32/fp16/int8/int4, gul1/lul1/gsl2 at 0.5/0.7/0.9.
    let report = check_report(&dir, 40, 13);
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
    assert_eq!(printed, check_report(&eval_dir, 30, 1));

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

/// A short CACTUS run for every set strategy and compression kind: it trains, saves, and its
/// settings are in the checkpoint.
#[test]
fn cactus_runs_with_every_strategy_and_kind() {
    let cases: &[&[&str]] = &[
        &["--strategy", "sampling"],
        &[
            "--strategy",
            "sampling",
            "--samples",
            "2",
            "--ratios",
            "0.3,0.6",
        ],
        &["--strategy", "fixed", "--ratios", "0.4"],
        &["--strategy", "progressive"],
        &["--strategy", "dense", "--prune-method", "lsl2"],
        &["--strategy", "adaptive", "--prune-method", "GSL1"],
        &["--compress", "quant", "--awp-eta", "1", "--awp-steps", "2"],
        &["--compress", "prune+quant"],
    ];
    for (i, extra) in cases.iter().enumerate() {
        let dir = scratch(&format!("cactus-{i}"));
        let d = dir.to_str().unwrap();
        let mut args = vec!["--method", "cactus", "--epochs", "1", "--no-eval"];
        args.extend_from_slice(extra);
        ok(&train_args(d, &args));
        let ckpt = load_checkpoint(&dir.join("model.safetensors")).unwrap();
        assert_eq!(ckpt.extra["train.method"], "cactus", "{extra:?}");
        let config: Value = serde_json::from_str(&ckpt.extra["train.config"]).unwrap();
        if let Some(pos) = extra.iter().position(|a| *a == "--strategy") {
            assert_eq!(config["cactus"]["strategy"], extra[pos + 1], "{config}");
        }
        let history: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("history.json")).unwrap())
                .unwrap();
        assert!(history[0]["cert_loss"].as_f64().unwrap().is_finite());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// `eval`'s grid: rows in order (uncompressed, formats, then each method × ratio, with --joint
/// in each format), sparsity as pruned, and a compressed checkpoint written by `compress`
/// evaluates exactly like the same setting of the grid.
#[test]
fn eval_grid_and_compressed_checkpoints_agree() {
    let dir = scratch("grid");
    let d = dir.to_str().unwrap();
    ok(&train_args(
        d,
        &["--method", "sabr", "--epochs", "1", "--no-eval"],
    ));
    let model = format!("{d}/model.safetensors");
    let json = ok(&[
        "eval",
        "--checkpoint",
        &model,
        "--limit",
        "40",
        "--prune",
        "none,lul1,gsl2",
        "--ratios",
        "0,0.5,0.9",
        "--quant",
        "fp32,int8,fp16",
        "--joint",
        "--json",
        "--out",
        d,
    ]);
    let report: Value = serde_json::from_str(&json).unwrap();
    check_report(&dir, 40, 3 + 2 * 2 * 3);
    let rows = report["rows"].as_array().unwrap();
    let key = |r: &Value| {
        format!(
            "{} {} {}",
            r["compression"].as_str().unwrap(),
            r["ratio"],
            r["format"].as_str().unwrap()
        )
    };
    let keys: Vec<String> = rows.iter().map(key).collect();
    assert_eq!(
        keys[..6],
        [
            "none 0.0 fp32",
            "none 0.0 int8",
            "none 0.0 fp16",
            "lul1 0.5 fp32",
            "lul1 0.5 int8",
            "lul1 0.5 fp16"
        ]
    );
    let lul1 = &rows[3];
    assert!(
        (lul1["sparsity"].as_f64().unwrap() - 0.5).abs() < 0.01,
        "{lul1}"
    );
    let gsl2 = rows.iter().find(|r| key(r) == "gsl2 0.9 fp32").unwrap();
    assert!(gsl2["sparsity"].as_f64().unwrap() > 0.5, "{gsl2}");

    // The same settings as stand-alone checkpoints.
    for (compress_args, setting) in [
        (vec!["--quant", "int8"], "none 0.0 int8"),
        (vec!["--prune", "lul1", "--ratio", "0.5"], "lul1 0.5 fp32"),
        (
            vec!["--prune", "lul1", "--ratio", "0.5", "--quant", "fp16"],
            "lul1 0.5 fp16",
        ),
    ] {
        let file = format!("{d}/compressed.safetensors");
        let mut args = vec!["compress", "--checkpoint", &model, "--out", &file];
        args.extend(compress_args.iter());
        let said = ok(&args);
        assert!(said.contains("wrote"), "{said}");
        let sub = dir.join("c");
        let json = ok(&[
            "eval",
            "--checkpoint",
            &file,
            "--limit",
            "40",
            "--json",
            "--out",
            sub.to_str().unwrap(),
        ]);
        let alone: Value = serde_json::from_str(&json).unwrap();
        let expected = rows.iter().find(|r| key(r) == setting).unwrap();
        for k in ["clean", "pgd", "certified"] {
            assert_eq!(alone["rows"][0][k], expected[k], "{setting}: {k}");
        }
        let meta = load_checkpoint(Path::new(&file)).unwrap().extra;
        assert_eq!(meta["train.method"], "sabr", "training notes are kept");
        assert_eq!(
            meta["compress.format"],
            setting.split(' ').nth(2).unwrap(),
            "{meta:?}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn compression_options_are_checked() {
    let dir = scratch("bad-compress");
    let d = dir.to_str().unwrap();
    fails(
        &train_args(d, &["--method", "sabr", "--compress", "quant"]),
        "--compress",
    );
    fails(
        &train_args(d, &["--method", "cactus", "--ratios", "0.5,1.5"]),
        "1.5",
    );
    fails(
        &train_args(
            d,
            &[
                "--method",
                "cactus",
                "--strategy",
                "dense",
                "--ratios",
                "0.5",
            ],
        ),
        "--ratios",
    );
    fails(
        &train_args(d, &["--prune-method", "xyz"]),
        "unknown pruning method",
    );
    fails(&train_args(d, &["--eval-quant", "int9"]), "2..=8");
    fails(&train_args(d, &["--compress", "both"]), "prune+quant");
    ok(&train_args(
        d,
        &["--method", "ibp", "--epochs", "1", "--no-eval"],
    ));
    let model = format!("{d}/model.safetensors");
    fails(
        &["eval", "--checkpoint", &model, "--ratios", "1"],
        "not in [0, 1)",
    );
    fails(
        &["eval", "--checkpoint", &model, "--prune", "gul3"],
        "unknown pruning method",
    );
    fails(
        &["compress", "--checkpoint", &model, "--out", "x.safetensors"],
        "nothing to do",
    );
    fails(
        &[
            "compress",
            "--checkpoint",
            &model,
            "--prune",
            "gul1",
            "--out",
            "x",
        ],
        "--ratio",
    );
    fails(
        &[
            "compress",
            "--checkpoint",
            "missing.safetensors",
            "--quant",
            "int8",
            "--out",
            "x",
        ],
        "no such file",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--device cuda` on a machine that cannot run it is an error naming what is missing (on a
/// GPU machine, tests/cuda_steps.rs trains there instead); unknown devices are refused.
#[test]
fn device_cuda_without_a_gpu_is_an_error_with_a_reason() {
    if cactus::runtime::cuda::cuda().is_ok() {
        eprintln!(
            "device_cuda_without_a_gpu_is_an_error_with_a_reason: SKIPPED — this machine has a GPU"
        );
    } else {
        let dir = scratch("cuda");
        fails(
            &train_args(dir.to_str().unwrap(), &["--device", "cuda"]),
            "--device cuda:",
        );
        fails(
            &["eval", "--checkpoint", "x", "--device", "cuda"],
            "--device cuda:",
        );
    }
    fails(
        &["eval", "--checkpoint", "x", "--device", "gpu"],
        "unknown device",
    );
}

/// `eval --recalibrate-bn N` on a batch-norm network: recorded in the report; 0 is refused.
#[test]
fn eval_recalibrates_batch_norm_on_request() {
    let dir = scratch("recal");
    let d = dir.to_str().unwrap();
    ok(&train_args(
        d,
        &[
            "--model",
            "cnn7",
            "--width",
            "0.125",
            "--method",
            "std",
            "--epochs",
            "1",
            "--no-eval",
        ],
    ));
    let model = format!("{d}/model.safetensors");
    let json = ok(&[
        "eval",
        "--checkpoint",
        &model,
        "--limit",
        "30",
        "--prune",
        "gul1",
        "--ratios",
        "0.5",
        "--recalibrate-bn",
        "2",
        "--batch-size",
        "16",
        "--json",
        "--out",
        d,
    ]);
    let report: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["bn_recalibration_batches"], 2);
    assert_eq!(report["rows"].as_array().unwrap().len(), 2);
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("re-estimated on 2 training batches"), "{md}");
    fails(
        &["eval", "--checkpoint", &model, "--recalibrate-bn", "0"],
        "at least 1 batch",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The certifier cascade: one row per certifier, certified accuracy growing along the cascade
/// and bounded by PGD; the per-point file names each row, point and certifier, with bounds
/// consistent with the verdicts; shards merge into the whole evaluation.
#[test]
fn eval_runs_a_certifier_cascade_with_per_point_records_and_shards() {
    let dir = scratch("cascade");
    let d = dir.to_str().unwrap();
    ok(&train_args(
        d,
        &[
            "--method",
            "ibp",
            "--epochs",
            "1",
            "--eps",
            "0.02",
            "--no-eval",
        ],
    ));
    let model = format!("{d}/model.safetensors");
    let points = format!("{d}/points.jsonl");
    let common = [
        "eval",
        "--checkpoint",
        &model,
        "--eps",
        "0.02",
        "--limit",
        "24",
        "--batch-size",
        "10",
        "--prune",
        "none,gul1",
        "--ratios",
        "0.5",
        "--alpha-iters",
        "3",
        "--bab-timeout",
        "2",
        // Branch and bound runs only with the bounds as computed.
        "--unsound",
        "--quiet",
    ];
    let mut args = common.to_vec();
    args.extend([
        "--certifier",
        "ibp,crown,alpha-crown,bab",
        "--per-point",
        &points,
        "--out",
        d,
    ]);
    ok(&args);
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 8, "2 settings × 4 certifiers: {json}");
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["certifier"].as_str().unwrap())
        .collect();
    assert_eq!(&names[..4], ["ibp", "crown", "alpha-crown", "bab"]);
    for setting in rows.chunks(4) {
        let cert: Vec<f64> = setting
            .iter()
            .map(|r| r["certified"].as_f64().unwrap())
            .collect();
        assert!(cert.windows(2).all(|w| w[0] <= w[1]), "{setting:?}");
        for r in setting {
            assert!(r["certified"].as_f64() <= r["pgd"].as_f64(), "{r}");
            assert!(r["seconds"].as_f64().unwrap() >= 0.0);
        }
    }
    let text = std::fs::read_to_string(&points).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The first certifier sees every point of every setting.
    let ibp: Vec<&Value> = records.iter().filter(|r| r["certifier"] == "ibp").collect();
    assert_eq!(ibp.len(), 2 * 24);
    for r in &records {
        let row = r["row"].as_u64().unwrap() as usize;
        assert_eq!(rows[row]["certifier"], r["certifier"], "{r}");
        assert_eq!(rows[row]["compression"], r["compression"], "{r}");
        let y = r["label"].as_u64().unwrap() as usize;
        let lower = r["lower"].as_array().unwrap();
        assert_eq!(lower.len(), 10);
        assert!(lower[y].is_null(), "{r}");
        let verdict = r["verdict"].as_str().unwrap();
        assert!(
            ["verified", "falsified", "attacked", "unknown"].contains(&verdict),
            "{r}"
        );
        if r["certifier"] != "bab" {
            let all_positive = lower
                .iter()
                .enumerate()
                .all(|(j, v)| j == y || v.as_f64().unwrap() > 0.0);
            if verdict == "verified" {
                assert!(all_positive, "verified with a non-positive bound: {r}");
            }
        }
    }
    // Each stronger certifier ran only on points left open before it.
    for r in records.iter().filter(|r| r["certifier"] == "crown") {
        let earlier = records
            .iter()
            .find(|e| {
                e["certifier"] == "ibp"
                    && e["index"] == r["index"]
                    && e["compression"] == r["compression"]
            })
            .unwrap();
        assert_eq!(earlier["verdict"], "unknown", "{r} after {earlier}");
    }

    // Three shards, merged, give the whole evaluation's report.
    let whole = scratch("cascade-whole");
    let mut args = common.to_vec();
    args.extend(["--certifier", "ibp,crown", "--out", whole.to_str().unwrap()]);
    ok(&args);
    let mut shard_dirs = Vec::new();
    for k in 0..3 {
        let sd = dir.join(format!("shard{k}"));
        let spec = format!("{k}/3");
        let mut args = common.to_vec();
        args.extend([
            "--certifier",
            "ibp,crown",
            "--shard",
            &spec,
            "--out",
            sd.to_str().unwrap(),
        ]);
        ok(&args);
        shard_dirs.push(sd);
    }
    let merged = dir.join("merged");
    let mut margs = vec!["merge", "--out", merged.to_str().unwrap()];
    margs.extend(shard_dirs.iter().map(|p| p.to_str().unwrap()));
    ok(&margs);
    let read = |p: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(p.join("report.json")).unwrap()).unwrap()
    };
    let (m, w) = (read(&merged), read(&whole));
    assert_eq!(m["n"], w["n"]);
    for (a, b) in m["rows"]
        .as_array()
        .unwrap()
        .iter()
        .zip(w["rows"].as_array().unwrap())
    {
        for key in ["clean", "certified"] {
            let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
            assert!((x - y).abs() < 1e-9, "{key}: merged {x}, whole {y}");
        }
    }
    // A missing shard, a repeated one, a bad cascade and a bad shard are clear errors.
    fails(
        &[
            "merge",
            "--out",
            d,
            shard_dirs[0].to_str().unwrap(),
            shard_dirs[1].to_str().unwrap(),
        ],
        "shard 2/3 is missing",
    );
    fails(
        &[
            "merge",
            "--out",
            d,
            shard_dirs[0].to_str().unwrap(),
            shard_dirs[0].to_str().unwrap(),
        ],
        "given twice",
    );
    fails(
        &["eval", "--checkpoint", &model, "--certifier", "crown,ibp"],
        "weakest to the strongest",
    );
    fails(
        &["eval", "--checkpoint", &model, "--certifier", "deeppoly"],
        "unknown certifier",
    );
    fails(&["eval", "--checkpoint", &model, "--shard", "3/3"], "K/N");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&whole).unwrap();
}

/// The commands that take pruning methods list every method of the registry in their help, and
/// name them all when one is unknown.
#[test]
fn help_and_errors_list_every_pruning_method() {
    let names: Vec<String> = cactus::compress::PruneMethod::listed()
        .map(|m| m.to_string())
        .collect();
    for command in ["train", "eval", "compress"] {
        let help = ok(&[command, "--help"]);
        for name in &names {
            assert!(
                help.contains(name.as_str()),
                "{command} --help lacks {name}"
            );
        }
    }
    let out = cactus(&["eval", "--checkpoint", "x", "--prune", "nope"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for name in &names {
        assert!(err.contains(name.as_str()), "the error lacks {name}: {err}");
    }
}

/// N:M sparsity on the command line: CACTUS with a 2:4 set, the evaluation grid (one row at the
/// ratio 2:4 fixes, in every format with --joint), a 2:4 checkpoint from `compress` that
/// evaluates like its grid row and holds at most two nonzero weights in every group of four,
/// and the ratio options that disagree with it refused.
#[test]
fn n_m_sparsity_trains_evaluates_and_compresses() {
    let dir = scratch("nm");
    let d = dir.to_str().unwrap();
    fails(
        &train_args(d, &["--prune-method", "2:4", "--strategy", "dense"]),
        "--strategy",
    );
    fails(
        &train_args(d, &["--prune-method", "2:4", "--ratios", "0.5"]),
        "--ratios",
    );
    fails(&train_args(d, &["--prune-method", "5:4"]), "1 ≤ N < M ≤ 64");
    ok(&train_args(
        d,
        &[
            "--method",
            "cactus",
            "--prune-method",
            "2:4",
            "--epochs",
            "1",
            "--eval-limit",
            "20",
            "--eval-prune",
            "none,2:4",
            "--eval-quant",
            "fp32",
        ],
    ));
    let model = format!("{d}/model.safetensors");
    let ckpt = load_checkpoint(Path::new(&model)).unwrap();
    let config: Value = serde_json::from_str(&ckpt.extra["train.config"]).unwrap();
    assert_eq!(config["cactus"]["prune_method"], "2:4", "{config}");
    let report = check_report(&dir, 20, 2);
    assert_eq!(report["rows"][1]["compression"], "2:4");
    assert_eq!(report["rows"][1]["ratio"], 0.5);

    let json = ok(&[
        "eval",
        "--checkpoint",
        &model,
        "--limit",
        "40",
        "--prune",
        "none,2:4,gul1",
        "--ratios",
        "0.7",
        "--quant",
        "fp32,int8",
        "--joint",
        "--json",
        "--out",
        d,
    ]);
    let report: Value = serde_json::from_str(&json).unwrap();
    check_report(&dir, 40, 6);
    let rows = report["rows"].as_array().unwrap();
    let key = |r: &Value| {
        format!(
            "{} {} {}",
            r["compression"].as_str().unwrap(),
            r["ratio"],
            r["format"].as_str().unwrap()
        )
    };
    let keys: Vec<String> = rows.iter().map(key).collect();
    assert_eq!(
        keys,
        [
            "none 0.0 fp32",
            "none 0.0 int8",
            "2:4 0.5 fp32",
            "2:4 0.5 int8",
            "gul1 0.7 fp32",
            "gul1 0.7 int8"
        ]
    );
    // small's rows are multiples of four: exactly half the weights go.
    assert_eq!(rows[2]["sparsity"], 0.5);

    for (compress_args, setting) in [
        (vec!["--prune", "2:4"], "2:4 0.5 fp32"),
        (
            vec!["--prune", "2:4", "--ratio", "0.5", "--quant", "int8"],
            "2:4 0.5 int8",
        ),
    ] {
        let file = format!("{d}/nm.safetensors");
        let mut args = vec!["compress", "--checkpoint", &model, "--out", &file];
        args.extend(compress_args.iter());
        let said = ok(&args);
        assert!(said.contains("2:4 at ratio 0.5"), "{said}");
        let json = ok(&[
            "eval",
            "--checkpoint",
            &file,
            "--limit",
            "40",
            "--json",
            "--out",
            dir.join("c").to_str().unwrap(),
        ]);
        let alone: Value = serde_json::from_str(&json).unwrap();
        let expected = rows.iter().find(|r| key(r) == setting).unwrap();
        for k in ["clean", "pgd", "certified"] {
            assert_eq!(alone["rows"][0][k], expected[k], "{setting}: {k}");
        }
        let saved = load_checkpoint(Path::new(&file)).unwrap();
        assert_eq!(saved.extra["compress.prune"], "2:4");
        assert_eq!(saved.extra["compress.ratio"], "0.5");
        assert_eq!(saved.extra["compress.sparsity"], "0.500000");
        // Every group of four consecutive weights of a row holds at most two nonzeros.
        for layer in &saved.model.net.layers {
            if let Some(w) = layer.weight() {
                for group in w.data().chunks(4) {
                    assert!(group.iter().filter(|&&v| v != 0.0).count() <= 2);
                }
            }
        }
    }
    fails(
        &[
            "compress",
            "--checkpoint",
            &model,
            "--prune",
            "2:4",
            "--ratio",
            "0.7",
            "--out",
            "x",
        ],
        "fixed ratio of 0.5",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn export_and_verify_round_trip_through_onnx_and_vnnlib() {
    let dir = scratch("export");
    let run = dir.join("run");
    let run_s = run.to_str().unwrap();
    ok(&train_args(
        run_s,
        &[
            "--method",
            "ibp",
            "--epochs",
            "1",
            "--no-eval",
            "--model",
            "mlp",
        ],
    ));
    let bench = dir.join("bench");
    let onnx = bench.join("net.onnx");
    let (bench_s, onnx_s) = (bench.to_str().unwrap(), onnx.to_str().unwrap());
    let out = ok(&[
        "export",
        "--checkpoint",
        run_s,
        "--onnx",
        onnx_s,
        "--vnnlib",
        bench_s,
        "--limit",
        "6",
        "--eps",
        "0.02",
        "--test-data",
        "2",
    ]);
    assert!(out.contains("6 VNN-LIB properties"), "{out}");
    for f in [
        "instances.csv",
        "abcrown.yaml",
        "test_data_set_1/output_0.pb",
    ] {
        assert!(bench.join(f).exists(), "{f} written");
    }
    let csv = std::fs::read_to_string(bench.join("instances.csv")).unwrap();
    assert_eq!(csv.lines().count(), 6);
    assert!(csv.starts_with("net.onnx,vnnlib/"), "{csv}");
    let results = dir.join("results");
    let out = ok(&[
        "verify",
        "--instances",
        bench.join("instances.csv").to_str().unwrap(),
        "--out",
        results.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(out.contains("6 instances"), "{out}");
    let table = std::fs::read_to_string(results.join("results.csv")).unwrap();
    assert_eq!(table.lines().next(), Some("onnx,vnnlib,result,time_s"));
    // The same answers as `cactus eval` gives the checkpoint: certified points are unsat, and
    // every sat has its counterexample file.
    let report: Value = serde_json::from_str(&ok(&[
        "eval",
        "--checkpoint",
        run_s,
        "--limit",
        "6",
        "--eps",
        "0.02",
        "--json",
        "--quiet",
        "--out",
        dir.join("eval").to_str().unwrap(),
    ]))
    .unwrap();
    let certified = report["rows"][0]["certified"].as_f64().unwrap();
    let unsat = table.lines().filter(|l| l.contains(",unsat,")).count();
    assert!(
        unsat as f64 >= certified * 6.0 - 1e-9,
        "unsat {unsat} < certified {certified}"
    );
    for (row, line) in table.lines().skip(1).enumerate() {
        if line.contains(",sat,") {
            let cex = std::fs::read_to_string(results.join(format!("counterexamples/{row}.txt")))
                .unwrap();
            assert!(cex.starts_with("sat\n((X_0 "), "{cex}");
        }
    }
    // One instance by hand, with the result file.
    let prop = bench
        .join("vnnlib")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let result = dir.join("one.txt");
    ok(&[
        "verify",
        "--onnx",
        onnx_s,
        "--vnnlib",
        prop.to_str().unwrap(),
        "--timeout",
        "10",
        "--result",
        result.to_str().unwrap(),
    ]);
    let first = std::fs::read_to_string(&result).unwrap();
    assert!(["sat", "unsat", "unknown", "timeout"].contains(&first.lines().next().unwrap()));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn export_and_verify_refuse_bad_input_clearly() {
    let dir = scratch("export-bad");
    std::fs::create_dir_all(&dir).unwrap();
    let ckpt = dir.join("m.safetensors");
    let ckpt_s = ckpt.to_str().unwrap();
    ok(&[
        "init", "--model", "mlp", "--input", "1x4x4", "--out", ckpt_s,
    ]);
    let onnx = dir.join("m.onnx");
    let onnx_s = onnx.to_str().unwrap();
    fails(
        &["export", "--checkpoint", ckpt_s, "--onnx", onnx_s, "--qdq"],
        "stores no compressed weights",
    );
    ok(&["export", "--checkpoint", ckpt_s, "--onnx", onnx_s]);
    let prop = dir.join("p.vnnlib");
    let prop_s = prop.to_str().unwrap();
    std::fs::write(&prop, "(declare-const X_0 Real)\n(assert (<= X_0 1)\n").unwrap();
    fails(
        &["verify", "--onnx", onnx_s, "--vnnlib", prop_s],
        "p.vnnlib",
    );
    // 16 inputs declared, one bounded.
    let mut text = String::new();
    for i in 0..16 {
        text.push_str(&format!("(declare-const X_{i} Real)\n"));
    }
    for j in 0..10 {
        text.push_str(&format!("(declare-const Y_{j} Real)\n"));
    }
    text.push_str("(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= Y_1 Y_0))\n");
    std::fs::write(&prop, &text).unwrap();
    fails(&["verify", "--onnx", onnx_s, "--vnnlib", prop_s], "X_1");
    fails(
        &[
            "verify",
            "--onnx",
            dir.join("none.onnx").to_str().unwrap(),
            "--vnnlib",
            prop_s,
        ],
        "none.onnx",
    );
    std::fs::write(dir.join("junk.onnx"), b"junk").unwrap();
    fails(
        &[
            "verify",
            "--onnx",
            dir.join("junk.onnx").to_str().unwrap(),
            "--vnnlib",
            prop_s,
        ],
        "not a readable ONNX model",
    );
    fails(
        &[
            "verify",
            "--onnx",
            onnx_s,
            "--vnnlib",
            prop_s,
            "--certifier",
            "bab",
        ],
        "--unsound",
    );
    let csv = dir.join("instances.csv");
    std::fs::write(&csv, "m.onnx,p.vnnlib\n").unwrap();
    fails(
        &["verify", "--instances", csv.to_str().unwrap()],
        "expected onnx,vnnlib,timeout",
    );
    let out = cactus(&["verify", "--onnx", onnx_s]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap refuses --onnx without --vnnlib"
    );
    std::fs::remove_dir_all(&dir).ok();
}
